"""Distillation methods by name (`method=NAME`); each is one `Distiller` subclass."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
from omegaconf import DictConfig

from kdrun.data.base import DataInfo
from kdrun.registry import Registry

METHODS: Registry = Registry("method", "method")

from kdrun.methods import ce, kd  # noqa: E402,F401  (register themselves)
from kdrun.methods import ab, at, fitnet, fsp, ft, nst  # noqa: E402,F401
from kdrun.methods import cc, crd, dkd, pkt, rkd, sp, vid  # noqa: E402,F401
from kdrun.methods.base import Distiller  # noqa: E402


def method_class(name: str) -> type[Distiller]:
    return METHODS.get(name)


def build_method(cfg: DictConfig, student: nn.Module, teacher: Optional[nn.Module], info: DataInfo) -> Distiller:
    """The method of a config node, its values checked first (a run checks each stage's once, in
    kdrun.schedules.spec, and builds with the class itself)."""
    cls = method_class(cfg.name)
    cls.validate(cfg)
    return cls(student, teacher, cfg, info)


__all__ = ["METHODS", "Distiller", "build_method", "method_class"]
