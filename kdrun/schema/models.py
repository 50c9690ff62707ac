"""The schema of a model node (`teacher=NAME`, `student=NAME`), made from its constructor's signature:
one key per keyword argument with a default, typed by its annotation (or, where it has none, by its
default: a tuple of integers is a list of integers). A teacher's node also has its checkpoint, seed and
recipe (`teacher.train`)."""
from __future__ import annotations

import collections.abc
import functools
import inspect
import typing
from dataclasses import field, make_dataclass
from typing import Any, List, Optional

from kdrun.training.recipe import Precision, Recipe, TeacherRecipe

SHAPE_ARGS = ("num_classes", "in_channels", "image_size")


def _target(ctor):
    inner = ctor.func if isinstance(ctor, functools.partial) else ctor
    return inner.__init__ if inspect.isclass(inner) else inner


def _config_type(annotation: Any, default: Any) -> Any:
    """An annotation OmegaConf can hold: sequences become lists."""
    if annotation is None:
        if isinstance(default, bool):
            return bool
        if isinstance(default, (int, float, str)):
            return type(default)
        if isinstance(default, (tuple, list)):
            kinds = {type(v) for v in default}
            return List[kinds.pop()] if len(kinds) == 1 and kinds <= {int, float, str} else List[Any]
        return Any
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return Optional[_config_type(rest[0], None)] if len(rest) == 1 and type(None) in args else Any
    if origin in (tuple, list, collections.abc.Sequence):
        return List[args[0]] if args and args[0] is not Ellipsis else List[Any]
    return annotation


def constructor_fields(ctor) -> list[tuple[str, Any, Any]]:
    """(name, type, dataclass field) of each keyword argument with a default."""
    hints = typing.get_type_hints(_target(ctor))
    out = []
    for p in inspect.signature(ctor).parameters.values():
        if p.name in SHAPE_ARGS or p.default is inspect.Parameter.empty or p.kind is p.VAR_KEYWORD:
            continue
        default = list(p.default) if isinstance(p.default, tuple) else p.default
        kind = _config_type(hints.get(p.name), p.default)
        spec = field(default_factory=functools.partial(list, default)) if isinstance(default, list) \
            else field(default=default)
        out.append((p.name, kind, spec))
    return out


def teacher_recipe() -> TeacherRecipe:
    """A teacher's recipe: the schema's defaults, with the speed keys following `train`'s."""
    return TeacherRecipe(precision="${train.precision}", channels_last="${train.channels_last}",
                  compile="${train.compile}")


TEACHER_KEYS = ("checkpoint", "pretrained", "seed", "epoch", "train")  # a teacher's own keys (own_teacher), beside its model's
TEACHER_TYPES = {"checkpoint": Optional[str], "pretrained": Optional[str], "seed": Optional[int],
                 "epoch": Optional[int]}


def own_teacher():
    """The root's teacher node before the `teacher=NAME` group's merges into it: what every teacher has beyond
    its model's arguments (its weights' file, seed and recipe, typed), for a zoo model and for your own
    (`_target_`: its constructor judges its other keys). Kept out of the model schemas, which Hydra copies
    many times over (kdrun --help)."""
    from omegaconf import IntegerNode, OmegaConf, StringNode

    return OmegaConf.create({"checkpoint": StringNode(None, is_optional=True),  # a file of trained weights
                             "pretrained": StringNode(None, is_optional=True),  # a source of published weights
                             "seed": IntegerNode(None, is_optional=True),  # null: the run's seed
                             "epoch": IntegerNode(None, is_optional=True),  # null: the last epoch's weights
                             "train": OmegaConf.structured(teacher_recipe())})


@functools.lru_cache(maxsize=None)
def model_schema(name: str) -> type:
    """The node of `teacher=NAME` and `student=NAME`: the model's name and its constructor's arguments."""
    from kdrun.models import MODELS

    fields = [("name", str, field(default=name)), *constructor_fields(MODELS.get(name))]
    schema = make_dataclass(f"{name}__model", fields)
    schema.__module__ = __name__  # pickled by reference (a sweep job's config): found here, or made by __getattr__
    globals()[schema.__name__] = schema
    return schema


def __getattr__(attr: str) -> type:
    """`kdrun.schema.models.wrn16_2__model`: the schema of that model's node, made on first use."""
    name, _, kind = attr.rpartition("__")
    if name and kind == "model":
        return model_schema(name)
    raise AttributeError(attr)


__all__ = ["model_schema", "constructor_fields", "Precision"]
