"""A run directory belongs to one configuration, its identity (`config_id`).

The identity is a digest of the resolved config without the keys that change speed or rounding only
(`NOT_IN_IDENTITY`, the recipes' `RUNTIME_KEYS`): a run may resume with `progress=false` or fp32.
A directory is held by the configuration whose work it holds (a completed run, an epoch in its
history, a checkpoint); `claim` compares identities before anything in the directory is written, so
a run of another configuration is refused with the directory left exactly as it was. A directory
that holds no work (an attempt that failed before its first epoch) is free for any configuration.

Everything kdrun reads back carries the identity it was made under: metrics.json (`config_id`) and
each stage checkpoint (`config_id`, see `kdrun.training.loop.fit`).

Kept free of torch: the sweeper and the report import it (torch is imported only to read the stamp
of a checkpoint whose metrics.json is gone).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from kdrun.data.config import identity_of
from kdrun.errors import UserError
from kdrun.training.speed import RUNTIME_KEYS  # a recipe's speed keys

KEPT_KEYS = ("keep_epochs", "keep_every")  # teacher.train's: which epochs the cache keeps, not what is trained

NOT_IN_IDENTITY = ("progress", "cache_dir", "device", "per_pair", "logger")  # keys that do not change what a run
# computes (per_pair acts only through the method keys that read it, which are in the identity resolved; logger
# only records what the run computes)
# Keys added after runs were made (logit standardisation, ESKD; ban's ensemble_teacher; fsp's projection; DDP's
# sync_bn, null in a stage's recipe delta; data_seed): left out of the identity at their default, wherever a node
# holds them (method, schedule.kd_loss, schedule, recipes), so the runs made before keep theirs.
KEYS_ADDED = {"logit_stand": False, "stop_epoch": None, "ensemble_teacher": False, "projection": "none",
              "sync_bn": (False, None), "data_seed": None}


def at_default_added_later(key: str, value: Any) -> bool:
    if key not in KEYS_ADDED:
        return False
    default = KEYS_ADDED[key]
    if isinstance(default, tuple):
        return any(value is d for d in default)
    return value is default or (isinstance(value, Enum) and value.value == default) or \
        (isinstance(default, str) and value == default)
CONFIG_DIR = ".hydra"  # config.yaml, hydra.yaml, overrides.yaml: written by kdrun (hydra.output_subdir is null)
METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"


def identity_part(config: dict) -> dict:
    """The resolved config as plain data, without the keys that are not part of the identity."""
    def strip(node: dict) -> dict:
        out = {}
        for k, v in node.items():
            if at_default_added_later(k, v):
                continue
            if isinstance(v, dict):
                v = strip(v)
                if k == "train":
                    v = {kk: vv for kk, vv in v.items() if kk not in RUNTIME_KEYS and kk not in KEPT_KEYS}
            out[k] = v
        return out

    config = {**config, "dataset": identity_of(config["dataset"])} if isinstance(config.get("dataset"), dict) else config
    teacher = config.get("teacher")
    if isinstance(teacher, dict):  # teacher.epoch, teacher.pretrained: added later, left out at their default (null)
        config = {**config, "teacher": {k: v for k, v in teacher.items()
                                        if not (k in ("epoch", "pretrained") and v is None)}}
    if isinstance(config.get("eval"), dict) and all(v is None for v in config["eval"].values()):
        config = {k: v for k, v in config.items() if k != "eval"}  # added later: left out at its defaults (null)
    schedule = config.get("schedule")
    if isinstance(schedule, dict) and schedule.get("strategy") == "equal":  # rco's, added later: the greedy
        config = {**config, "schedule": {k: v for k, v in schedule.items()  # search's keys change nothing then
                                         if k not in ("strategy", "greedy")}}
    return strip({k: v for k, v in config.items() if k not in NOT_IN_IDENTITY})


def config_identity(cfg: Any) -> str:
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return hashlib.sha256(json.dumps(identity_part(plain), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Held:
    """What a directory holds: the identity of its work, its status, and where the identity was read."""
    identity: Optional[str]  # None: work whose configuration nobody recorded
    status: str
    source: str
    metrics: dict


def _read_metrics(run_dir: Path) -> dict:
    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def checkpoint_files(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / CHECKPOINTS
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


def held_by(run_dir: Path) -> Optional[Held]:
    """The work `run_dir` holds, or None when it holds none (any configuration may use it)."""
    run_dir = Path(run_dir)
    metrics = _read_metrics(run_dir)
    checkpoints = checkpoint_files(run_dir)
    status = str(metrics.get("status") or "unrecorded")
    if not (status == "completed" or metrics.get("history") or checkpoints):
        return None
    if metrics.get("config_id"):
        return Held(str(metrics["config_id"]), status, str(run_dir / METRICS_FILE), metrics)
    for path in checkpoints:  # metrics.json lost: the checkpoints say whose they are
        stamp = checkpoint_identity(path)
        if stamp:
            return Held(stamp, status, str(path), metrics)
    return Held(None, status, str(checkpoints[0] if checkpoints else run_dir / METRICS_FILE), metrics)


def checkpoint_identity(path: Path) -> Optional[str]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: the stage that reads it says so
        return None
    return state.get("config_id") if isinstance(state, dict) else None


class RunDirTaken(UserError):
    """The run directory holds the work of another configuration; nothing in it was written."""


def differences(run_dir: Path, config: dict, limit: int = 4) -> list[str]:
    """`key: old there, new here` for the identity keys that differ from the directory's recorded config."""
    from kdrun.results.runs import _load_yaml, flatten

    old = _load_yaml(Path(run_dir) / CONFIG_DIR / "config.yaml")
    if not isinstance(old, (dict, DictConfig)):
        return []
    try:
        old_flat = flatten(OmegaConf.create(identity_part(OmegaConf.to_container(OmegaConf.create(old), resolve=True))))
    except Exception:  # a config that no longer resolves here
        return []
    new_flat = flatten(OmegaConf.create(identity_part(config)))
    keys = sorted(k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k, "∅") != new_flat.get(k, "∅"))
    shown = [f"{k}={_show(old_flat.get(k))} there, {_show(new_flat.get(k))} here" for k in keys[:limit]]
    return shown + ([f"{len(keys) - limit} more"] if len(keys) > limit else [])


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def what_it_holds(run_dir: Path, held: Held, config: dict, identity: str) -> str:
    """'a completed run of another configuration (train.lr=0.05 there, 0.1 here)'"""
    diff = differences(run_dir, config)
    what = f"a {held.status} run" if held.status != "unrecorded" else "a run"
    if held.identity is None:
        return f"{what} whose configuration was not recorded ({held.source} carries no config_id)"
    if diff:
        return f"{what} of another configuration ({'; '.join(diff)})"
    return f"{what} of another configuration (config_id {held.identity} there, {identity} here)"


def refusal(run_dir: Path, held: Held, config: dict, identity: str, dir_key: str) -> RunDirTaken:
    taken = RunDirTaken(
        f"{run_dir} already holds {what_it_holds(run_dir, held, config, identity)}. Nothing in it was changed. "
        f"To keep that run, give this one a directory of its own ({dir_key}=NEW_DIR); to replace it, delete "
        f"{run_dir} and run again. Running that run's own command again resumes or reports it.")
    taken.held, taken.identity = held, identity
    return taken


def claim(run_dir: Path, cfg: Any, dir_key: str = "hydra.run.dir") -> tuple[str, Optional[Held]]:
    """Check that `run_dir` is free for `cfg` or already this configuration's. Returns the identity and
    what the directory holds; raises RunDirTaken (nothing written) when it holds another's work."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    identity = config_identity(plain)
    held = held_by(run_dir)
    if held is not None and held.identity != identity:
        raise refusal(Path(run_dir), held, plain, identity, dir_key)
    return identity, held


def write_config(run_dir: Path, task_cfg: DictConfig, hydra_node: DictConfig, overrides: list) -> None:
    """The run's record of its config, as Hydra writes it (unresolved YAML): `.hydra/config.yaml`,
    `hydra.yaml`, `overrides.yaml`. Written once the directory is claimed, each file atomically."""
    from kdrun.training.checkpoint import atomic_write

    out = Path(run_dir) / CONFIG_DIR
    for name, node in (("config.yaml", task_cfg), ("hydra.yaml", OmegaConf.create({"hydra": hydra_node})),
                       ("overrides.yaml", OmegaConf.create(list(overrides)))):
        text = OmegaConf.to_yaml(node).encode()
        atomic_write(out / name, lambda f: f.write(text))
