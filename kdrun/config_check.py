"""Values of the wrong type, keys that do not exist and broken interpolations, named before a run starts.

Hydra refuses unknown group options (`student=nope`), override_check unknown keys in overrides
(`method.Tx=3`), but Hydra passes values through untyped: `train.epochs=abc` arrives as the string
"abc". So every value of the composed config is compared with the defaults of the same group choices
(the config the user would get without value overrides): an integer stays an integer, a number a
number, a flag a flag, a list a list. `null` is taken where the default is null, a list or a group, and
for the keys in NULLABLE (documented as "N or null"); elsewhere it is refused. Keys added with `+` that
the defaults lack are refused as well, except in the model nodes, whose extra keys are constructor
arguments (the model then says whether it takes them), and in `dataset.augment` (the augmentation then
says).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue, OmegaConfBaseException

from kdrun.configs import CONFIG_DIR
from kdrun.errors import UserError
from kdrun.override_check import unknown_key

log = logging.getLogger("kdrun")
OPEN_NODES = ("teacher", "student")  # their extra keys are model constructor arguments
CLOSED_SUBNODES = ("teacher.train",)  # ... but a teacher's recipe has fixed keys
OPEN_KEYS = ("dataset.augment",)  # a dataset lists the augmentations it uses; build_augment judges the rest
NULLABLE = ("ce_weight", "train_size", "test_size")  # numbers whose null means something (see their configs)


def resolved(cfg: DictConfig) -> dict:
    """The config as plain values, interpolations resolved; a broken one is the user's to fix."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as e:
        key = getattr(e, "full_key", None) or str(e).strip().splitlines()[0]
        raise UserError(f"The config leaves {key} open (`???`): set it on the command line, e.g. {key}=VALUE "
                        f"(the config file of its group says what it means).") from None
    except OmegaConfBaseException as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"The config cannot be resolved: {first}. Check the ${{...}} "
                        f"interpolations in your overrides and config files.") from None


_defaults: dict = {}  # per process: a sweep's jobs share their group choices


def default_config(choices: Mapping[str, Optional[str]], config_name: str = "config") -> Optional[dict]:
    """The config of these group choices without value overrides, or None when it cannot be composed.
    The caller must not modify it (it is shared)."""
    overrides = tuple(f"{group}={option}" for group, option in choices.items()
                      if option is not None and not group.startswith("hydra"))
    in_app = GlobalHydra.instance().is_initialized()  # inside the app: its search path (-cd included)
    try:
        sources = tuple(s.path for s in GlobalHydra.instance().config_loader().get_sources()) if in_app \
            else (CONFIG_DIR,)
        key = (config_name, overrides, sources)
        if key not in _defaults:
            if in_app:
                cfg = compose(config_name, overrides=list(overrides))
            else:
                with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
                    cfg = compose(config_name, overrides=list(overrides))
            _defaults[key] = plain_values(cfg)
        return _defaults[key]
    except Exception as e:  # a check that cannot be made must not stop a run
        log.debug("No default config to check types against (%s).", e)
        return None


def plain_values(node: Any) -> Any:
    """Resolved where possible: a default that is left open (`???`, and what points to it) becomes None,
    which the check treats as "any type"."""
    try:
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except OmegaConfBaseException:
        if isinstance(node, ListConfig):
            return OmegaConf.to_container(node, resolve=False)
        out = {}
        for key in node:
            try:
                out[key] = plain_values(node[key])
            except OmegaConfBaseException:
                out[key] = None
        return out


def check_config(cfg: DictConfig, choices: Mapping[str, Optional[str]], config_name: str = "config") -> None:
    """Raise a UserError naming the first key whose value has the wrong type or that does not exist."""
    values = resolved(cfg)
    defaults = default_config(choices, config_name)
    if defaults is not None:
        _compare(values, defaults, "")
    if not _is_int(values.get("seed")):
        _wrong("seed", values.get("seed"), 0, "an integer")


def _compare(value: Any, default: Any, key: str) -> None:
    if value is None and (default is None or isinstance(default, (dict, list))
                          or key.rsplit(".", 1)[-1] in NULLABLE):
        return
    if isinstance(default, dict):
        if not isinstance(value, dict):
            _wrong(key, value, default, "a group of keys")
        open_node = key.split(".")[0] in OPEN_NODES and key not in CLOSED_SUBNODES or key in OPEN_KEYS
        for k, v in value.items():
            sub = f"{key}.{k}" if key else str(k)
            if k in default:
                _compare(v, default[k], sub)
            elif not open_node:
                raise UserError(unknown_key(sub, key, list(default)))
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            _wrong(key, value, default, "true or false")
    elif isinstance(default, int):  # configs write real-valued keys as floats (`beta: 1000.0`)
        if not _is_int(value):
            _wrong(key, value, default, "an integer")
    elif isinstance(default, float):
        if not _is_number(value):
            _wrong(key, value, default, "a number")
        if not math.isfinite(value):
            _wrong(key, value, default, "a finite number")
    elif isinstance(default, list):
        if not isinstance(value, list):
            _wrong(key, value, default, "a list, e.g. [1,2]")
        kinds = {type(d) for d in default}
        if len(kinds) == 1 and kinds <= {bool, int, float}:
            for i, item in enumerate(value):
                _compare(item, default[0], f"{key}[{i}]")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v: Any) -> str:
    return "null" if v is None else str(v).replace("'", "") if isinstance(v, (list, dict)) else str(v)


def _wrong(key: str, value: Any, default: Any, expected: str) -> None:
    raise UserError(f"{key}={_show(value)}: expected {expected} (the default is {_show(default)}). "
                    f"Give {key} a value of that type.")
