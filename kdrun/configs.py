"""Where the configs are, and the config-group entries made from the registries.

`teacher/NAME` and `student/NAME` exist for every registered model, made here from the model
registry (so the registry is the one place names come from); a user's own `teacher/*.yaml` in a
`--config-dir` joins them.
"""
from __future__ import annotations

import importlib.util
from importlib.resources import files
from pathlib import Path

from hydra.core.config_store import ConfigStore

from kdrun.errors import UserError
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


def register_launchers() -> None:
    """kdrun's Hydra launcher and sweeper. Hydra finds plugins by scanning the `hydra_plugins` folders on sys.path,
    which misses them in an editable install (setuptools maps packages there with an import hook)."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.kdrun_launchers.local_gpus import LocalGpusLauncher
    from hydra_plugins.kdrun_launchers.sweeper import KdrunSweeper  # also stores hydra/sweeper=kdrun

    Plugins.instance().register(LocalGpusLauncher)
    Plugins.instance().register(KdrunSweeper)


def check_launcher(argv: list[str]) -> None:
    """`hydra/launcher=slurm` needs the optional hydra-submitit-launcher: say how to get it."""
    if any(a.startswith("hydra/launcher=slurm") for a in argv) and \
            importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        raise UserError("hydra/launcher=slurm submits the jobs through hydra-submitit-launcher, which is not "
                        "installed here. Install it with pip install -e \".[slurm]\" in your kdrun checkout "
                        "(or pip install hydra-submitit-launcher).")


def register_configs() -> None:
    global _registered
    if _registered:
        return
    register_launchers()
    cs = ConfigStore.instance()
    for name in MODELS.names():
        node = {"name": name, **model_defaults(name)}
        cs.store(group="student", name=name, node=node, provider="kdrun")
        cs.store(group="teacher", name=name, node={**node, "checkpoint": None, "seed": None}, provider="kdrun")
    _registered = True
