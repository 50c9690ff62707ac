"""Where the configs are, and the config-group entries made from the registries.

`teacher/NAME` and `student/NAME` exist for every registered model, made here from the model
registry (so the registry is the one place names come from); a user's own `teacher/*.yaml` in a
`--config-dir` joins them.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from hydra.core.config_store import ConfigStore

from kdrun.models import MODELS, model_defaults



def _config_dir() -> str:
    # In a checkout (or a worktree) the top-level conf/ next to the package is the source of truth;
    # an installed wheel carries it as the package kdrun.conf.
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if (checkout / "config.yaml").is_file():
        return str(checkout)
    return str(Path(str(files("kdrun.conf"))).resolve())


CONFIG_DIR = _config_dir()

_registered = False


def register_configs() -> None:
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    for name in MODELS.names():
        node = {"name": name, **model_defaults(name)}
        cs.store(group="student", name=name, node=node, provider="kdrun")
        cs.store(group="teacher", name=name, node={**node, "checkpoint": None}, provider="kdrun")
    _registered = True
