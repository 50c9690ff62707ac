"""The model zoo: one registry of names, selectable as `teacher=NAME` and `student=NAME`.

A constructor takes the dataset's shape (`num_classes`, `in_channels`, `image_size`) plus its own
keyword arguments; those with defaults become the config keys of the model (e.g. `teacher.dropout`).
A config node with `_target_` builds a user's own model class instead, with the same shape arguments.
"""
from __future__ import annotations

import inspect

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.registry import Registry, call_with_supported

MODELS: Registry = Registry("model", "teacher/student")

SHAPE_ARGS = ("num_classes", "in_channels", "image_size")
NODE_KEYS = ("name", "checkpoint", "train", "_target_")  # config keys that are not constructor arguments

from kdrun.models import mlp  # noqa: E402,F401  (registers the MLPs)


def model_defaults(name: str) -> dict:
    """Constructor keywords with defaults, as plain config values (tuples become lists)."""
    out = {}
    for p in inspect.signature(MODELS.get(name)).parameters.values():
        if p.name in SHAPE_ARGS or p.default is inspect.Parameter.empty or p.kind is p.VAR_KEYWORD:
            continue
        out[p.name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out


def build_model(cfg: DictConfig, info: DataInfo) -> nn.Module:
    shape = dict(num_classes=info.num_classes, in_channels=info.channels, image_size=info.image_size)
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NODE_KEYS}
    if cfg.get("_target_"):
        from hydra.utils import get_method

        return call_with_supported(get_method(cfg._target_), **shape, **kwargs)
    ctor = MODELS.get(cfg.name)
    try:
        return ctor(**shape, **kwargs)
    except TypeError as e:
        raise UserError(f"Model {cfg.name!r} cannot be built with {kwargs}: {e}.") from None


def model_label(cfg: DictConfig) -> str:
    return str(cfg.get("name") or cfg.get("_target_"))


__all__ = ["MODELS", "build_model", "model_defaults", "model_label"]
