"""Distillation methods by name (`method=NAME`); each is one `Distiller` subclass."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
from omegaconf import DictConfig

from kdrun.data.base import DataInfo
from kdrun.methods import (  # noqa: F401  (register)
    ab, at, cc, ce, crd, darkrank, dkd, fitnet, fsp, ft, fullact, grad_at, jacobian, kd, mlkd, nst, ofd, pkt,
    reviewkd, rkd, sp, vid,
)
from kdrun.methods.base import Distiller
from kdrun.methods.registry import METHODS
from kdrun.registry import target_class


def method_class(cfg) -> type[Distiller]:
    """The class of a method: a name of the registry, or a config node that names one (`name`) or a
    class of your own (`_target_: mypackage.MyMethod`, a Distiller subclass)."""
    if isinstance(cfg, str):
        return METHODS.get(cfg)
    if cfg.get("_target_"):
        return target_class(str(cfg._target_), Distiller, "method._target_", "a method (a kdrun.methods.Distiller subclass)")
    return METHODS.get(str(cfg.name))


def build_method(cfg: DictConfig, student: nn.Module, teacher: Optional[nn.Module], info: DataInfo) -> Distiller:
    """The method of a config node, its values checked first (a run checks each stage's once, in
    kdrun.schedules.spec, and builds with the class itself)."""
    cls = method_class(cfg)
    cls.validate(cfg)
    return cls(student, teacher, cfg, info)


__all__ = ["METHODS", "Distiller", "build_method", "method_class"]
