"""The method contract (mdistiller style): `forward_train` returns the student logits and a dict of
named, already weighted loss terms; the trainer sums them. Nothing else about a method is special-cased.

Features come from forward hooks (see `kdrun.models.features`): a method lists the module paths it
reads on each side and gets the tensors in `losses(...)`. Trainable helpers (regressors, heads,
memory banks) are submodules of the method, so they are optimised and checkpointed with the student.
The teacher is held outside the module tree: never optimised, never saved with the method, always
in eval mode and run without building a graph.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

from kdrun.data.base import DataInfo
from kdrun.errors import require
from kdrun.models.features import FeatureHooks
from kdrun.training.speed import full_precision, loss_inputs


class Distiller(nn.Module):
    uses_teacher: bool = True

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], cfg: DictConfig, info: DataInfo):
        super().__init__()
        require(teacher is not None or not self.uses_teacher, f"method {cfg.name!r} needs a teacher.")
        self.student = student
        self._teacher = [teacher]  # a list keeps it out of parameters(), state_dict() and .train()
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.cfg = cfg
        self.info = info
        self.ce_weight = self.hard_label_weight(cfg)
        self._student_hooks: Optional[FeatureHooks] = None
        self._teacher_hooks: Optional[FeatureHooks] = None
        self.teacher_cache = None  # a TeacherOutputs, set by the training loop for one stage

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        """Check the method's config values (ranges, cross-key rules; the schema has checked the types).
        Called once per stage before anything is built (kdrun.schedules.spec); subclasses extend it."""
        w = cls.hard_label_weight(cfg)
        require(w >= 0, f"method.ce_weight must be 0 or more, got {w}.")

    @staticmethod
    def hard_label_weight(cfg: DictConfig) -> float:
        """`ce_weight`, or `1 - alpha` when it is null (Hinton's split between hard and soft targets)."""
        if cfg.get("ce_weight") is not None:
            return float(cfg.ce_weight)
        return 1.0 - float(cfg.get("alpha") or 0.0)

    @property
    def teacher(self) -> Optional[nn.Module]:
        return self._teacher[0]

    def watch(self, student_paths: list[str], teacher_paths: list[str] = ()) -> None:
        """Read features at these module paths on every forward."""
        self._student_hooks = FeatureHooks(self.student, list(student_paths), "student")
        if teacher_paths:
            self._teacher_hooks = FeatureHooks(self.teacher, list(teacher_paths), "teacher")

    def remove_hooks(self) -> None:
        """Stop reading features: a later stage wraps the same models in another method."""
        for hooks in (self._student_hooks, self._teacher_hooks):
            if hooks is not None:
                hooks.remove()
        self._student_hooks = self._teacher_hooks = None

    def sample_input(self, batch: int = 2) -> torch.Tensor:
        c, (h, w) = self.info.channels, self.info.image_size
        return torch.zeros(batch, c, h, w, device=next(self.student.parameters()).device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def teacher_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            logits = self.teacher(x)
        return logits, self._teacher_hooks.take() if self._teacher_hooks else {}

    def teacher_outputs(self, x: torch.Tensor, index: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """`teacher_forward`, or its stored result for these examples (see kdrun.training.teacher_outputs)."""
        cache = self.teacher_cache
        if cache is None or index is None:
            return self.teacher_forward(x)
        if cache.complete:
            return cache.lookup(index)
        logits, feats = self.teacher_forward(x)
        cache.store(index, logits, feats)
        return logits, feats

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int = 1,
                      index: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict]:
        """Student logits and the named, weighted loss terms of one training batch.

        `index` holds the batch's positions in the training split (memory banks key on it).
        In the initialisation phase (`self.phase == "init"`) the terms come from `init_losses`.
        """
        s_logits = self.student(x)
        s_feats = self._student_hooks.take() if self._student_hooks else {}
        t_logits, t_feats = self.teacher_outputs(x, index) if self.uses_teacher else (None, {})
        # Under bf16 autocast only the models' forwards are bf16: the losses see fp32 tensors.
        with full_precision(x.device.type):
            batch = loss_inputs(dict(x=x, y=y, s_logits=s_logits, t_logits=t_logits, s_feats=s_feats,
                                t_feats=t_feats, epoch=epoch, index=index))
            s_logits = batch["s_logits"]
            if self.phase == "init":
                return s_logits, self.init_losses(**batch)
            losses = {}
            if self.ce_weight:
                losses["ce"] = self.ce_weight * F.cross_entropy(s_logits, y)
            losses.update(self.losses(**batch))
        return s_logits, losses

    def losses(self, **batch) -> dict[str, torch.Tensor]:
        """The method's own terms, weighted. The base adds the hard-label term.

        `batch` has x, y, s_logits, t_logits, s_feats, t_feats (dicts by module path), epoch, index.
        """
        return {}

    # Methods with an initialisation stage (FitNet's hint stage, AB, FT, FSP) set `has_init_stage`
    # and override the two methods below; the schedules run that stage with phase = "init".
    has_init_stage: bool = False
    phase: str = "main"

    def init_losses(self, **batch) -> dict[str, torch.Tensor]:
        raise TypeError(f"method {self.cfg.name!r} has no initialisation stage")

    def init_parameters(self) -> list[nn.Parameter]:
        """What the initialisation stage trains (e.g. the student up to the hint layer and the regressor)."""
        raise TypeError(f"method {self.cfg.name!r} has no initialisation stage")
