"""Keys that a schema lacks but OmegaConf let in: Hydra opens a node for `+KEY=VALUE`, so an added key
is refused here, after composition, with the node's keys (once per run, and by the sweeper once per job)."""
from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, ListConfig, OmegaConf

from kdrun.errors import UserError
from kdrun.schema.errors import unknown_key
from kdrun.schema.models import TEACHER_KEYS


def check_keys(cfg: DictConfig, path: str = "") -> None:
    """Raise a UserError for the first key of a typed node that its schema does not declare."""
    schema = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(schema):
        declared = [f.name for f in dataclasses.fields(schema)]
        if path == "teacher":
            declared += TEACHER_KEYS
        for key in cfg.keys():
            if key not in declared and not str(key).startswith("_") and not (path == "" and key == "hydra"):
                if path in ("teacher", "student"):
                    raise UserError(model_argument(path, cfg, str(key), declared))
                raise UserError(unknown_key(f"{path}.{key}" if path else str(key), path, declared))
    for key in cfg.keys():
        if path == "" and key == "hydra":
            continue
        if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            continue
        child = cfg[key]
        where = f"{path}.{key}" if path else str(key)
        if isinstance(child, DictConfig):
            check_keys(child, where)
        elif isinstance(child, ListConfig):
            for i in range(len(child)):
                if not (OmegaConf.is_missing(child, i) or OmegaConf.is_interpolation(child, i)) \
                        and isinstance(child[i], DictConfig):
                    check_keys(child[i], f"{where}[{i}]")


def model_argument(role: str, node: DictConfig, arg: str, declared: list) -> str:
    """A key added with + to a zoo model's node: the model's constructor does not take it."""
    from kdrun.models import DATASET_KEYS

    key, value = f"{role}.{arg}", node[arg]
    if arg in DATASET_KEYS:
        return (f"{key}={value}: the dataset sets {arg}, not the model's config (kdrun builds {role}={node.name} for "
                f"the dataset's shape). Leave out +{key}=...; for another shape choose a dataset that has it "
                f"(dataset=synthetic takes {DATASET_KEYS[arg]}=N).")
    arguments = ", ".join(k for k in declared if k != "name") or "none"
    return (f"{key}={value}: {role}={node.name} takes no argument {arg!r} (its arguments: {arguments}). "
            f"Leave out +{key}=...; `kdrun --cfg job {role}={node.name}` prints its keys.")
