"""What Hydra and OmegaConf raise for a config, said in kdrun's one-paragraph form.

OmegaConf's errors carry the key (`full_key`), the value, the node that refused it (`parent_node`) and
that node's schema (`object_type`): the message names the key, what the schema expects there, the
default, and for an unknown key the node's keys and the closest of them. Nothing is composed for it.
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import typing
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError, InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException, ValidationError
)

from kdrun.errors import UserError

ADDED_WITH_PLUS = {  # untyped nodes whose other keys are added with +
    "teacher": "A constructor argument of your own model (_target_)",
    "student": "A constructor argument of your own model (_target_)",
    "dataset.augment": "An augmentation that the dataset's config does not list (crop_padding, padding_mode, "
                       "flip, translate)",
}


def user_error(error: BaseException, prefix: str = "") -> Exception:
    """`error` as a UserError where it is about the config (else `error` itself). `prefix` is the path of
    the node the error's keys are relative to (a recipe checked on its own, e.g. `schedule.hint`)."""
    if isinstance(error, UserError):
        return error
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    cause = error
    while isinstance(cause, ConfigCompositionException) and isinstance(cause.__cause__ or cause.__context__,
                                                                       OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__
    override = _override_of(error)
    if isinstance(cause, OmegaConfBaseException):
        inside = re.match(r"In '([^']+)/([^']+)':", str(error))  # an error inside a group's file
        where = f" (This comes from {inside.group(1)}={inside.group(2)}.)" if inside else ""
        return UserError(omegaconf_message(cause, prefix, override) + where)
    if isinstance(error, ConfigCompositionException) and override and "=" in override:
        # OmegaConf fails without a message of its own where a key is set below a null or a plain value
        key, _, value = override.partition("=")
        parent = key.lstrip("+~").rpartition(".")[0]
        if parent:
            return UserError(not_a_group(parent, key.lstrip("+~"), value))
    if isinstance(error, MissingConfigException):
        return UserError(missing_config_message(str(error)))
    if isinstance(error, OverrideParseException):
        return UserError(f"{str(error).strip().splitlines()[0]} (see "
                         f"https://hydra.cc/docs/advanced/override_grammar/basic/).")
    if isinstance(error, ConfigCompositionException):
        return UserError(" ".join(str(error).split()))
    return error


def typed(schema: type, values: dict, where: str) -> Any:
    """`values` as an instance of a dataclass schema, checked as composition checks (types, unknown keys):
    a mistake is a UserError in kdrun's words, its keys under `where` (for nodes the schema did not type as
    Hydra composed: a stage recipe of your own schedule, a method of your own)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except OmegaConfBaseException as e:
        raise user_error(e, prefix=where) from None


def _override_of(error: BaseException) -> Optional[str]:
    """The override Hydra was applying: its key ("Could not override 'train.epochz'") or, where Hydra
    names it whole ("Error merging override train.epochs.x=2"), KEY=VALUE."""
    text = str(error)
    match = (re.search(r"use \+(\S+=.*)$", text, re.M) or re.search(r"merging override (\S+=.*)$", text, re.M)
             or re.search(r"override '([^']+)'", text))
    return match.group(1).strip() if match else None


def not_a_group(parent: str, key: str, value: str) -> str:
    """`key` set below `parent`, which is null: the node is set as a whole."""
    leaf = key[len(parent) + 1:]
    if parent == "logger":  # a config group, null until a tracker is chosen
        from hydra.core.config_store import ConfigStore

        trackers = sorted(n.removesuffix(".yaml") for n in ConfigStore.instance().list("schema/logger"))
        name = leaf.split(".")[0]
        choose = f"logger={name} {key}={value}" if name in trackers else f"logger=NAME ({', '.join(trackers)})"
        return (f"logger is null (no tracker is chosen), so {key} cannot be set on its own: choose the tracker "
                f"too, {choose}.")
    return (f"{parent} is null, not a group of keys, so {key} cannot be set on its own: set {parent} as a whole, "
            f"e.g. {parent}='{{{leaf}: {value}}}'.")


def single_value(node: str, key: str) -> str:
    return (f"{node} is a single value, not a group of keys, so {key} does not exist. Give {node} itself a "
            f"value ({node}=VALUE); `kdrun --cfg job` prints every key.")


def omegaconf_message(e: OmegaConfBaseException, prefix: str = "", override: Optional[str] = None) -> str:
    key = _join(prefix, str(getattr(e, "full_key", "") or ""))
    if isinstance(e, MissingMandatoryValue):
        return open_key_message(key)
    if isinstance(e, InterpolationResolutionError):
        first = str(e).strip().splitlines()[0]
        return (f"The config cannot be resolved{f' at {key}' if key else ''}: {first}. Check the ${{...}} "
                f"interpolations in your overrides and config files.")
    parent = getattr(e, "parent_node", None)
    override_key = override.partition("=")[0].lstrip("+~") if override else None
    if override_key and key and override_key.startswith(key + ".") and not isinstance(e, ConfigKeyError):
        return single_value(key, override_key)
    if isinstance(e, ConfigKeyError) or "not in struct" in str(e) or re.search(r"Key '.*' not in '", str(e)):
        wanted = _join(prefix, override_key) if override_key and override_key.startswith(key) else key
        keys = list(parent.keys()) if isinstance(parent, DictConfig) else []
        node = key.rpartition(".")[0]
        if not keys and node and node not in ADDED_WITH_PLUS and override and "=" in override:
            return not_a_group(node, wanted.lstrip("+~"), override.partition("=")[2])
        return unknown_key(wanted.lstrip("+~"), node, keys)
    if isinstance(e, ValidationError):
        return wrong_value_message(e, key, parent)
    first = str(e).strip().splitlines()[0]
    return f"{key}: {first}." if key else f"{first}."


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}" if key else prefix


def open_key_message(key: str) -> str:
    return (f"The config leaves {key} open (`???`): set it on the command line, e.g. {key}=VALUE "
            f"(e.g. schedule.assistants=[resnet20] for schedule=takd; `kdrun --cfg job` shows the config).")


def unknown_key(key: str, parent: str, valid: list) -> str:
    """The message for a key that the config lacks below `parent`: that node's keys, and the key with the
    closest of them."""
    parts = key.split(".")
    depth = len(parent.split(".")) if parent else 0
    close = difflib.get_close_matches(parts[depth], [str(v) for v in valid], n=1) if depth < len(parts) else []
    hint = f" Did you mean {'.'.join(parts[:depth] + close + parts[depth + 1:])}?" if close else ""
    listed = ", ".join(str(v) for v in valid) or "none"
    printed = "`kdrun --cfg hydra` (with the same hydra/launcher=...) prints" if key.startswith("hydra.") \
        else "`kdrun --cfg job` prints"
    message = (f"{key} is not a key of this config ({parent or 'the top level'} has: {listed}).{hint} "
               f"Check its spelling; {printed} every key.")
    if parent in ADDED_WITH_PLUS and not (parent == "dataset.augment" and "crop_scale" in valid):
        # (the image-folder datasets list every augmentation key they take: kdrun.data.folder_config)
        message += f" {ADDED_WITH_PLUS[parent]} is added with +: +{key}=VALUE."
    if parent == "hydra.launcher" and not close:
        others = [name for name, keys in launcher_keys().items() if parts[depth] in keys]
        if others:
            message += f" It is a key of {', '.join('hydra/launcher=' + n for n in others)}."
    return message


def launcher_keys() -> dict[str, list[str]]:
    """The keys of each launcher option kdrun ships (slurm's where hydra-submitit-launcher is installed)."""
    from kdrun.schema.launchers import LocalGpusConf

    out = {"local_gpus": [f.name for f in dataclasses.fields(LocalGpusConf)]}
    try:
        from kdrun.schema.slurm import SlurmConf
    except ImportError:
        return out
    out["slurm"] = [f.name for f in dataclasses.fields(SlurmConf)]
    return out


def wrong_value_message(e: ValidationError, key: str, parent: Any) -> str:
    from kdrun.schema.models import TEACHER_TYPES

    value = getattr(e, "value", None)
    expected, default = _expected(e, parent)
    if expected is None and key.startswith("teacher.") and key[len("teacher."):] in TEACHER_TYPES:
        expected, default = describe(TEACHER_TYPES[key[len("teacher."):]]), None  # own_teacher's typed keys
    shown = f" (the default is {show(default)})" if default is not _NONE else ""
    if expected is None:
        reason = str(e).strip().splitlines()[0]
        return f"{key}={show(value)}: {reason}{shown}. Give {key} another value."
    return f"{key}={show(value)}: expected {expected}{shown}. Give {key} a value of that type."


_NONE = object()


def _expected(e: ValidationError, parent: Any) -> tuple[Optional[str], Any]:
    """What the schema wants at the error's key, and its default there."""
    key = getattr(e, "key", None)
    owner = getattr(e, "object_type", None)
    if isinstance(parent, ListConfig):  # an item of a typed list: the list's element type
        ref = getattr(e, "ref_type", None)
        args = typing.get_args(ref) if ref is not None else ()
        if typing.get_origin(ref) is typing.Union:  # Optional[List[int]]: the list's own arguments
            args = next((typing.get_args(a) for a in args if a is not type(None)), ())
        return (describe(args[0]) if args else None), _NONE
    if owner is not None and dataclasses.is_dataclass(owner) and key is not None:
        hints = typing.get_type_hints(owner)
        if key in hints:
            spec = {f.name: f for f in dataclasses.fields(owner)}.get(key)
            default = _NONE
            if spec is not None and spec.default is not dataclasses.MISSING:
                default = spec.default
            elif spec is not None and spec.default_factory is not dataclasses.MISSING:
                default = spec.default_factory()
            return describe(hints[key]), default
    return None, _NONE


def describe(kind: Any) -> str:
    """A type annotation in words: `Optional[List[int]]` -> "null or a list of integers, e.g. [1,2]"."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return f"{describe(rest[0])} or null" if len(rest) == 1 else "a value or null"
    if typing.get_origin(kind) in (list, tuple):
        inner = describe(args[0]) if args else "values"
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings",
                  "true or false": "true/false values"}.get(inner, inner)
        return f"a list of {plural}, e.g. {'[1,2]' if inner in ('an integer', 'a number') else '[a,b]'}"
    if typing.get_origin(kind) is dict or kind is dict:
        return "a group of keys, e.g. {a: 1}"
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "one of " + ", ".join(m.name for m in kind)
    if dataclasses.is_dataclass(kind):
        return "a group of keys"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


def show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return str(value.name)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def missing_config_message(text: str) -> str:
    """Hydra's "Could not find 'method/nope'" with its list of options, without the search path."""
    head = text.split("Config search path:")[0].strip()
    lines = [line.strip() for line in head.splitlines() if line.strip()]
    match = re.search(r"Could not find '([^']+)'", head)
    options = [line for line in lines[2:]] if len(lines) > 2 else []
    if match and "/" in match.group(1) and options:
        group, _, name = match.group(1).rpartition("/")
        close = difflib.get_close_matches(name, options, n=1)
        hint = f" Did you mean {group}={close[0]}?" if close else ""
        return f"Unknown {group} option {name!r}.{hint} Valid options ({group}=NAME): {', '.join(options)}."
    return " ".join(lines)
