"""What the methods of the CRD table share: loss = ce_weight * CE + alpha * KD + beta * (own terms).

`alpha` > 0 adds Hinton's soft-target term at temperature `T` to any method; `beta` weights the
method's own terms. Two options of that KD term (see kdrun.methods.kd): `logit_stand` z-scores each
sample's logits before the temperature (Sun et al. 2024), `stop_epoch` switches it off after that epoch
(ESKD, Cho & Hariharan 2019), the hard-label weight then 1; the method's own terms go on, except where
they are KD terms themselves (`own_terms_distil_logits`: dkd's TCKD and NCKD stop and are standardised
too). Feature paths come from the models' `feature_points()`, or from the method config
(`student_features` / `teacher_features`: lists of module paths) when it names them.
"""
from __future__ import annotations

from typing import Callable

import torch

from kdrun.errors import require
from kdrun.methods.base import Batch, Distiller
from kdrun.methods.kd import check_kd_term_options, check_temperature_and_alpha, kd_loss, kd_stopped


class WeightedDistiller(Distiller):
    own_terms: tuple[str, ...] = ()  # the names of the method's own terms, each weighted by beta
    # The method's own terms compare logits as KD does (dkd): `logit_stand` and `stop_epoch` act on them too
    # (the subclass applies both), so they do not need `alpha` > 0.
    own_terms_distil_logits: bool = False

    @classmethod
    def validate(cls, cfg) -> None:
        check_temperature_and_alpha(cfg)
        beta = float(cfg.beta)
        require(beta >= 0, f"method.beta weights the {cfg.name} loss and must be 0 or more, got {beta}.")
        check_kd_term_options(cfg, cls.own_terms_distil_logits or float(cfg.alpha) > 0,
                              f"method.alpha is 0 ({cfg.name} has no KD term then)")
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.T, self.alpha, self.beta = float(cfg.T), float(cfg.alpha), float(cfg.beta)
        self.logit_stand = bool(cfg.get("logit_stand", False))
        self.stop_epoch = cfg.get("stop_epoch")

    def kd_stopped(self, epoch: int) -> bool:
        """ESKD: the KD term(s) are off in this epoch (after `stop_epoch`)."""
        return kd_stopped(self.stop_epoch, epoch)

    def weights(self, epoch: int, phase: str = "main") -> dict[str, float]:
        """ce_weight, Hinton's soft-target term at `alpha`, the method's own terms at `beta`; after
        `stop_epoch`, the KD term at 0 and the cross-entropy at 1."""
        weights = super().weights(epoch, phase)
        if phase == "main":
            stopped = self.kd_stopped(epoch)
            if stopped:
                weights["ce"] = 1.0
            weights["kd"] = 0.0 if stopped else self.alpha
            weights.update({name: self.beta for name in self.own_terms})
        return weights

    def terms(self, needed: frozenset, batch: Batch) -> dict[str, torch.Tensor]:
        out = super().terms(needed, batch)
        if "kd" in needed:
            out["kd"] = kd_loss(batch.s_logits, batch.t_logits, self.T, self.logit_stand)
        return out

    def feature_paths(self, role: str, group: str, pick: Callable[[list[str]], list[str]]) -> list[str]:
        """Module paths to read on `role`'s side: `method.<role>_features`, else `pick(feature_points()[group])`."""
        model = self.student if role == "student" else self.teacher
        key = f"method.{role}_features"
        given = self.cfg.get(f"{role}_features")
        if given is not None:
            paths = [str(given)] if isinstance(given, str) else [str(p) for p in given]
            require(paths, f"{key} is an empty list: name at least one module path of the {role}, "
                           f"or set it to null for the model's default features.")
            return paths
        points = getattr(model, "feature_points", None)
        require(callable(points), f"The {role} ({type(model).__name__}) does not say where its features are "
                                  f"(no feature_points()). Name the module paths for {self.cfg.name} with "
                                  f"{key}=[...], e.g. {key}=[layer3] or {key}=[fc:in].")
        available = list(points().get(group) or [])
        require(available, f"The {role} ({type(model).__name__}) lists no {group!r} features for "
                           f"{self.cfg.name}. Name module paths with {key}=[...].")
        return pick(available)

    def single_path(self, role: str, group: str = "embedding") -> str:
        paths = self.feature_paths(role, group, lambda p: p[-1:])
        require(len(paths) == 1, f"{self.cfg.name} reads one feature per model (the embedding), but "
                                 f"method.{role}_features names {len(paths)}: {paths}.")
        return paths[0]


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    """A zero loss still attached to the graph (for batches too small for a relation)."""
    return x.sum() * 0.0

