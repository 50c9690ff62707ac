"""`kdrun --help`: the config groups a user chooses from, the composed config, examples.

Hydra's own help lists every group of the config store (kdrun's internal `schema/*` and `preset_*` ones
too) and copies the whole store once per group listed, seconds with kdrun's schemas; this one composes the
config once, with the command's overrides and `-cd` folder, and lists the user's groups. The header and
footer are `hydra.help`'s (conf/hydra/help/kdrun.yaml); `kdrun --hydra-help` is Hydra's own.
"""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from kdrun.configs import CONFIG_DIR

GROUPS = ("dataset", "teacher", "student", "method", "schedule", "experiment", "pair", "sweep", "logger",
          "hydra/launcher")


def help_text(overrides: list[str], config_dir: str | None = None) -> str:
    """The help for a command line's overrides (and its `-cd` folder, searched before kdrun's own)."""
    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose("config", overrides=[*extra, *overrides], return_hydra_config=True)
            loader = GlobalHydra.instance().config_loader()
            own = Path(config_dir) if config_dir else None  # its files join each group's options
            lines = [f"{group}: " + ", ".join(sorted(set(loader.get_group_options(group)) | (
                {p.stem for p in (own / group).glob("*.yaml")} if own else set()))) for group in GROUPS]
    finally:
        GlobalHydra.instance().clear()
    job = OmegaConf.to_container(cfg, resolve=False)
    job.pop("hydra", None)
    return "\n".join([cfg.hydra.help.header, "", "== Config groups (choose with GROUP=OPTION) ==", *lines, "",
                      "== Config (override with KEY=VALUE) ==", OmegaConf.to_yaml(job).rstrip(), "",
                      cfg.hydra.help.footer, ""])
