"""Where the configs are, and the config-group entries made from the registries.

`teacher/NAME` and `student/NAME` exist for every registered model, made here from the model
registry (so the registry is the one place names come from); a user's own `teacher/*.yaml` in a
`--config-dir` joins them.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from hydra.core.config_store import ConfigStore

from kdrun.models import MODELS


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
    from hydra_plugins.kdrun_launchers.packed import PackedLauncher
    from hydra_plugins.kdrun_launchers.sweeper import KdrunSweeper  # also stores hydra/sweeper=kdrun

    Plugins.instance().register(LocalGpusLauncher)
    Plugins.instance().register(PackedLauncher)
    Plugins.instance().register(KdrunSweeper)


def register_configs() -> None:
    """Every schema into Hydra's ConfigStore: the root (`kdrun_schema`), `schema/method/NAME`,
    `schema/dataset/NAME`, `schema/schedule/NAME`, `schema/launcher/NAME` and `schema/logger/NAME` (a group
    file names its schema in its defaults list, `/schema/method/kd@_here_`), and `teacher/NAME`,
    `student/NAME` for every model."""
    global _registered
    if _registered:
        return
    from kdrun.data.config import SCHEMAS as DATASET_SCHEMAS
    from kdrun.methods import METHODS
    from kdrun.schedules.config import SCHEMAS as SCHEDULE_SCHEMAS
    from kdrun.schema.models import model_schema
    from kdrun.schema.root import Config
    from kdrun.schema.launchers import LocalGpusConf, PackedConf
    from kdrun.tracking import TRACKERS

    register_launchers()
    cs = ConfigStore.instance()
    cs.store(name="kdrun_schema", node=Config, provider="kdrun")
    for name in METHODS.names():
        cs.store(group="schema/method", name=name, node=METHODS.get(name).Config, provider="kdrun")
    for name, schema in DATASET_SCHEMAS.items():
        cs.store(group="schema/dataset", name=name, node=schema, provider="kdrun")
    for name, schema in SCHEDULE_SCHEMAS.items():
        cs.store(group="schema/schedule", name=name, node=schema, provider="kdrun")
    cs.store(group="schema/launcher", name="local_gpus", node=LocalGpusConf, provider="kdrun")
    cs.store(group="schema/launcher", name="packed", node=PackedConf, provider="kdrun")
    try:
        from kdrun.schema.slurm import SlurmConf
    except ImportError:  # hydra-submitit-launcher is optional: kdrun.cli_args says how to get it
        pass
    else:
        cs.store(group="schema/launcher", name="slurm", node=SlurmConf, provider="kdrun")
    for name in TRACKERS.names():
        cs.store(group="schema/logger", name=name, node=TRACKERS.get(name).Config, provider="kdrun")
    for name in MODELS.names():
        cs.store(group="student", name=name, node=model_schema(name), provider="kdrun")
        cs.store(group="teacher", name=name, node=model_schema(name), provider="kdrun")
    _registered = True
