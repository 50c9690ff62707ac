"""A training recipe (`train.*`, `teacher.train.*`, a stage's recipe): SGD with momentum, step decay."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf

from kdrun.errors import UserError, require
from kdrun.training.speed import RUNTIME_KEYS, check_precision, parse_switch


@dataclass(frozen=True)
class Recipe:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = field(default_factory=tuple)
    gamma: float = 0.1
    nesterov: bool = False
    # How fast, not what: speed and rounding only (kdrun.training.speed); not in the teacher cache key.
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    cache_teacher: str = "auto"

    @classmethod
    def from_config(cls, cfg: DictConfig, where: str = "train") -> "Recipe":
        values = OmegaConf.to_container(cfg, resolve=True)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"Unknown key(s) {unknown} in {where}. Valid keys: {sorted(known)}.")
        check_types(values, where)
        values["milestones"] = tuple(int(m) for m in values.get("milestones") or ())
        r = cls(**values)
        require(float(r.gamma) > 0, f"{where}.gamma must be positive, got {r.gamma}.")
        require(all(m >= 1 for m in r.milestones), f"{where}.milestones are epochs, 1 or more: got {list(r.milestones)}.")
        require(int(r.epochs) >= 1, f"{where}.epochs must be at least 1, got {r.epochs}.")
        require(int(r.batch_size) >= 1, f"{where}.batch_size must be at least 1, got {r.batch_size}.")
        require(float(r.lr) > 0, f"{where}.lr must be positive, got {r.lr}.")
        require(0 <= float(r.momentum) < 1, f"{where}.momentum must lie in [0, 1), got {r.momentum}.")
        require(float(r.weight_decay) >= 0, f"{where}.weight_decay must be 0 or more, got {r.weight_decay}.")
        check_precision(r.precision, f"{where}.precision")
        for key in ("channels_last", "compile", "cache_teacher"):
            parse_switch(getattr(r, key), f"{where}.{key}")
        return r

    def optimizer(self, params) -> torch.optim.Optimizer:
        params = list(params)
        # One fused kernel for the whole update on CUDA (same arithmetic as the per-tensor loop).
        fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                               nesterov=self.nesterov and self.momentum > 0, **fused)

    def scheduler(self, optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(self.milestones), gamma=self.gamma)

    def as_dict(self) -> dict:
        """The keys that decide what is computed (the teacher cache key): the speed keys are left out."""
        d = {k: v for k, v in self.__dict__.items() if k not in RUNTIME_KEYS}
        d["milestones"] = list(self.milestones)
        return d


INT_KEYS = ("epochs", "batch_size")
NUMBER_KEYS = ("lr", "momentum", "weight_decay", "gamma")


def check_types(values: dict, where: str) -> None:
    """A wrong type (`train.epochs=abc`, `train.lr=[1]`) is the user's to fix: name the key."""
    def wrong(key: str, expected: str) -> None:
        raise UserError(f"{where}.{key}={values[key]}: expected {expected}.")

    for key in INT_KEYS:
        if key in values and not (isinstance(values[key], int) and not isinstance(values[key], bool)):
            wrong(key, "an integer")
    for key in NUMBER_KEYS:
        v = values.get(key, 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            wrong(key, "a finite number")
    if "nesterov" in values and not isinstance(values["nesterov"], bool):
        wrong("nesterov", "true or false")
    milestones = values.get("milestones")
    if milestones is not None and not (isinstance(milestones, list) and all(
            isinstance(m, int) and not isinstance(m, bool) for m in milestones)):
        wrong("milestones", "a list of epochs, e.g. [20,25] or []")
