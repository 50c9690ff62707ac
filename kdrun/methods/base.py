"""The method contract (mdistiller style): `forward_train` returns the student logits and a dict of
named, weighted loss terms; the trainer sums them. A method is one class with two parts:

- `terms(needed, batch)`: its loss terms, unweighted, by name (only those in `needed`);
- `weights(epoch, phase)`: each term's weight in this epoch and phase.

`forward_train` is the one place that applies the weights; a term whose weight is 0 is not computed.
Features come from forward hooks (see `kdrun.models.features`): a method lists the module paths it
reads on each side and gets the tensors in `batch.s_feats` / `batch.t_feats`. Trainable helpers
(regressors, heads, memory banks) are submodules of the method, so they are optimised and checkpointed
with the student. The teacher is held outside the module tree: never optimised, never saved with the
method, always in eval mode and run without building a graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

from kdrun.data.base import DataInfo
from kdrun import packed
from kdrun.errors import require
from kdrun.methods.config import MethodConfig
from kdrun.methods.precision import full_precision, loss_inputs
from kdrun.models.features import FeatureHooks


@dataclass
class Batch:
    """What a method's terms are computed from (features: dicts by module path; fp32 under autocast)."""
    x: torch.Tensor  # the input as the student's forward saw it
    y: torch.Tensor
    s_logits: torch.Tensor
    t_logits: Optional[torch.Tensor]
    s_feats: dict
    t_feats: dict
    epoch: int = 1
    index: Optional[torch.Tensor] = None  # the examples' positions in the training split (memory banks)
    phase: str = "main"  # `init`: the method's initialisation stage (schedules run it)


class Distiller(nn.Module):
    Config = MethodConfig  # the method's schema (`method=NAME` is checked against it as Hydra composes)
    uses_teacher: bool = True
    # Methods with an initialisation stage (FitNet's hint stage, AB, FT, FSP) set this, weight their init
    # terms in phase "init", and say which parameters that stage trains (`init_parameters`).
    has_init_stage: bool = False
    # Methods that differentiate with respect to the input (grad_at) get `batch.x` requiring grad, the
    # tensor the student's forward saw; their teacher runs every step (its outputs are not cached).
    input_gradients: bool = False
    # Methods that also train on a strongly augmented view of each batch (MLKD) get it from the training
    # loop as `forward_train(..., x_strong=...)` (kdrun.data.randaugment.StrongView).
    strong_view: bool = False

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
        self._watched = (list(student_paths), list(teacher_paths))
        self._student_hooks = FeatureHooks(self.student, list(student_paths), "student")
        if teacher_paths:
            self._teacher_hooks = FeatureHooks(self.teacher, list(teacher_paths), "teacher")

    def attach(self) -> None:
        """Ready for its stage, when it was built ahead of it: the teacher frozen in eval mode again (it may
        have trained in between), the features `watch` named read again (after `remove_hooks`)."""
        if self.teacher is not None:
            self.teacher.eval().requires_grad_(False)
        watched = getattr(self, "_watched", None)
        if watched is not None and self._student_hooks is None:
            self.watch(*watched)

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

    def teacher_outputs(self, x: torch.Tensor, index: Optional[torch.Tensor], cache=None) -> tuple[torch.Tensor, dict]:
        """`teacher_forward`, or its result stored in `cache` for these examples (a TeacherOutputs that the
        training loop owns for one stage; see kdrun.training.teacher_outputs)."""
        if cache is None or index is None:
            return self.teacher_forward(x)
        if getattr(cache, "shared", False):  # a packed sweep's one teacher pass per batch (kdrun.packed.teacher)
            return cache.outputs(self, x, index)
        if cache.complete:
            return cache.lookup(index)
        logits, feats = self.teacher_forward(x)
        cache.store(index, logits, feats)
        return logits, feats

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int = 1, index: Optional[torch.Tensor] = None,
                      *, phase: str = "main", teacher_cache=None) -> tuple[torch.Tensor, dict]:
        """Student logits and the named, weighted loss terms of one training batch of `phase`."""
        if self.input_gradients:
            x = x.detach().requires_grad_(True)
        s_logits = packed.student_forward(self, x)  # in a packed group, maybe batched with the others' students
        s_feats = self._student_hooks.take() if self._student_hooks else {}
        weights = self.weights(epoch, phase)
        needed = frozenset(name for name, weight in weights.items() if weight)
        # The teacher runs only for a term beside the hard labels (none after ESKD's stop_epoch, for one).
        wants_teacher = self.uses_teacher and bool(needed - {"ce"})
        t_logits, t_feats = self.teacher_outputs(x, index, teacher_cache) if wants_teacher else (None, {})
        # Under bf16 autocast only the models' forwards are bf16: the losses see fp32 tensors.
        with full_precision(x.device.type):
            batch = Batch(x=x, **loss_inputs(dict(y=y, s_logits=s_logits, t_logits=t_logits, s_feats=s_feats,
                                                  t_feats=t_feats)), epoch=epoch, index=index, phase=phase)
            terms = self.terms(needed, batch)
            losses = {name: weights[name] * terms[name] for name in weights if name in needed}
        return batch.s_logits, losses

    def weights(self, epoch: int, phase: str = "main") -> dict[str, float]:
        """Each term's weight in this epoch of `phase`. The base: the hard-label cross-entropy, `ce_weight`."""
        return {"ce": self.ce_weight} if phase == "main" else {}

    def terms(self, needed: frozenset, batch: Batch) -> dict[str, torch.Tensor]:
        """The terms named in `needed`, unweighted. Subclasses add theirs to the base's (`ce`)."""
        return {"ce": F.cross_entropy(batch.s_logits, batch.y)} if "ce" in needed else {}

    def init_parameters(self) -> list[nn.Parameter]:
        """What the initialisation stage trains (e.g. the student up to the hint layer and the regressor)."""
        raise TypeError(f"method {self.cfg.name!r} has no initialisation stage")
