"""`mlkd`: Multi-level Logit Distillation, Jin, Wang & Lin, CVPR 2023 (the authors' `KD_ours` distiller).

The student matches the teacher's predictions at several temperatures T ("prediction augmentation") on
three levels, with p = softmax(logits / T) of a batch (B x C):

- instance: T^2 * KL(p_teacher || p_student), averaged over the batch (Hinton's KD at each T);
- batch:    ||P_t P_t^T - P_s P_s^T||^2 / B, the B x B Gram matrices of the predictions (input correlation);
- class:    ||P_t^T P_t - P_s^T P_s||^2 / C, the C x C Gram matrices (category correlation).

It trains on two views of every image: the pipeline's (weak: crop and flip) and a strong one
(kdrun.data.randaugment.StrongView: its own crop and flip, RandAugment, Cutout), which the training loop
passes as `x_strong` to a method whose `strong_view` is set. Student and teacher see both views (the
student in two forwards, so batch norm sees each view apart, as in the reference).

As the authors' code computes it (mdistiller/distillers/KD_ours.py, with mdistiller's KD defaults):

  ce_weight * (CE(weak) + CE(strong))
  + kd_weight * (m * sum_T instance_T(weak)          over `temperatures` [2, 3, 4, 5, 6]
                 + sum_T instance_T(weak)            over `unmasked_temperatures` [2, 6]
                 + sum_T instance_T(strong)          over `strong_temperatures` [3, 4, 5]
                 + m * sum_T batch_T(weak)           over `temperatures`
                 + m_c * sum_T class_T(weak))        over `temperatures`

The confidence masks come from the teacher's weak-view softmax (T = 1): a sample is in the mask when its
max probability is at or below the `mask_percentile`-th percentile of the batch's (numpy's linear
interpolation, the median by default), a class when its probability summed over the batch is at or below
that percentile of the classes'. The reference multiplies the batch-averaged loss by the mask and averages,
so each mask enters as the fraction of the batch (m) or of the classes (m_c) it keeps, about 1/2: it
scales those terms and selects nothing, and that is what is computed here. The reference's strong-view sum
takes its T = 2 and T = 6 terms from the weak view's logits (unmasked): `unmasked_temperatures`. It
computes batch- and class-level terms of the strong view too but leaves them out of its loss; so does kdrun.

`logit_stand` (Sun et al., CVPR 2024; their MLKD): every instance-level term z-scores the student's and
the teacher's logits before the temperatures (kdrun.methods.logit_stand); the batch and class levels and
the masks keep the raw logits, as in their code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods.base import Batch, Distiller
from kdrun.methods.config import MethodConfig
from kdrun.methods.logit_stand import standardize
from kdrun.methods.precision import full_precision, loss_inputs
from kdrun.methods.registry import METHODS

ALIGNMENT_TERMS = ("instance", "instance_unmasked", "instance_strong", "batch", "class")


def instance_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)), averaged over the batch: the instance-level alignment."""
    log_p_s = F.log_softmax(s_logits.float() / T, dim=1)
    log_p_t = F.log_softmax(t_logits.float() / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def batch_gram_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, T: float) -> torch.Tensor:
    """||P_t P_t^T - P_s P_s^T||_F^2 / B with P = softmax(logits / T): the batch-level alignment."""
    p_s, p_t = F.softmax(s_logits.float() / T, dim=1), F.softmax(t_logits.float() / T, dim=1)
    return (p_t @ p_t.T - p_s @ p_s.T).pow(2).sum() / s_logits.shape[0]


def class_gram_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, T: float) -> torch.Tensor:
    """||P_t^T P_t - P_s^T P_s||_F^2 / C with P = softmax(logits / T): the class-level alignment."""
    p_s, p_t = F.softmax(s_logits.float() / T, dim=1), F.softmax(t_logits.float() / T, dim=1)
    return (p_t.T @ p_t - p_s.T @ p_s).pow(2).sum() / s_logits.shape[1]


def below_percentile(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """values <= their `percentile`-th percentile (numpy.percentile's linear interpolation)."""
    return values <= torch.quantile(values.float(), percentile / 100.0)


def confidence_masks(t_logits: torch.Tensor, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample mask (B) and the class mask (C) from the teacher's weak-view predictions at T = 1."""
    p = F.softmax(t_logits.float(), dim=1)
    return below_percentile(p.max(dim=1).values, percentile), below_percentile(p.sum(dim=0), percentile)


def instance_sum(s_logits: torch.Tensor, t_logits: torch.Tensor, temperatures, stand: bool) -> torch.Tensor:
    if stand:
        s_logits, t_logits = standardize(s_logits), standardize(t_logits)
    return sum(instance_loss(s_logits, t_logits, T) for T in temperatures)


@dataclass
class TwoViews(Batch):
    """A batch with the strong view's logits beside the weak view's (`s_logits`, `t_logits`)."""
    s_strong: Optional[torch.Tensor] = None
    t_strong: Optional[torch.Tensor] = None


@dataclass
class MLKDConfig(MethodConfig):
    name: str = "mlkd"
    ce_weight: Optional[float] = 0.1  # on CE(weak) and on CE(strong); mdistiller's KD.LOSS.CE_WEIGHT
    kd_weight: float = 0.9  # on every alignment term; mdistiller's KD.LOSS.KD_WEIGHT
    temperatures: List[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 5.0, 6.0])
    strong_temperatures: List[float] = field(default_factory=lambda: [3.0, 4.0, 5.0])
    unmasked_temperatures: List[float] = field(default_factory=lambda: [2.0, 6.0])
    mask_percentile: float = 50.0
    strong_view: bool = True
    logit_stand: bool = False


def check_temperatures(cfg, key: str) -> None:
    values = cfg.get(key)
    ok = values is not None and not isinstance(values, str) and all(
        isinstance(T, (int, float)) and not isinstance(T, bool) and T > 0 for T in values)
    require(ok, f"method.{key} must be a list of positive temperatures, e.g. [2,3,4,5,6] (or [] for none); "
                f"got {values!r}.")


@METHODS.register("mlkd")
class MultiLevelKD(Distiller):
    Config = MLKDConfig

    @classmethod
    def validate(cls, cfg):
        for key in ("temperatures", "strong_temperatures", "unmasked_temperatures"):
            check_temperatures(cfg, key)
        kd_weight = float(cfg.kd_weight)
        require(kd_weight >= 0, f"method.kd_weight weights the alignment terms and must be 0 or more, got {kd_weight}.")
        percentile = float(cfg.mask_percentile)
        require(0.0 <= percentile <= 100.0, f"method.mask_percentile must lie in [0, 100], got {percentile}.")
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.kd_weight = float(cfg.kd_weight)
        self.temperatures = [float(T) for T in cfg.temperatures]
        self.strong_temperatures = [float(T) for T in cfg.strong_temperatures]
        self.unmasked_temperatures = [float(T) for T in cfg.unmasked_temperatures]
        self.percentile = float(cfg.mask_percentile)
        self.stand = bool(cfg.get("logit_stand", False))
        self.strong_view = bool(cfg.get("strong_view", True))  # the loop passes x_strong when set

    def weights(self, epoch, phase="main"):
        weights = super().weights(epoch, phase)
        if phase != "main":
            return weights
        strong = self.strong_view
        lists = {"instance": self.temperatures, "instance_unmasked": self.unmasked_temperatures,
                 "instance_strong": self.strong_temperatures if strong else [],
                 "batch": self.temperatures, "class": self.temperatures}
        weights["ce_strong"] = self.ce_weight if strong else 0.0
        weights.update({name: self.kd_weight if lists[name] else 0.0 for name in ALIGNMENT_TERMS})
        return weights

    def forward_train(self, x, y, epoch=1, index=None, *, phase="main", teacher_cache=None, x_strong=None):
        """Both views through the student (apart) and the teacher. Without `x_strong` (the lone-batch
        check, a direct call) the weak view stands in for the strong one."""
        strong = self.strong_view
        if strong and x_strong is None:
            x_strong = x
        s_logits = self.student(x)
        s_strong = self.student(x_strong) if strong else None
        if strong and teacher_cache is None:  # one teacher forward for both views
            t_both, _ = self.teacher_forward(torch.cat([x, x_strong]))
            t_logits, t_strong = t_both.split(x.shape[0])
        else:
            t_logits, _ = self.teacher_outputs(x, index, teacher_cache)
            t_strong = self.teacher_forward(x_strong)[0] if strong else None
        with full_precision(x.device.type):
            batch = TwoViews(x=x, **loss_inputs(dict(y=y, s_logits=s_logits, t_logits=t_logits, s_feats={},
                                                     t_feats={}, s_strong=s_strong, t_strong=t_strong)),
                             epoch=epoch, index=index, phase=phase)
            weights = self.weights(epoch, phase)
            needed = frozenset(name for name, weight in weights.items() if weight)
            terms = self.terms(needed, batch)
            losses = {name: weights[name] * terms[name] for name in weights if name in needed}
        return batch.s_logits, losses

    def terms(self, needed, batch):
        out = super().terms(needed, batch)  # ce on the weak view
        s, t = batch.s_logits, batch.t_logits
        if "ce_strong" in needed:
            out["ce_strong"] = F.cross_entropy(batch.s_strong, batch.y)
        if needed & {"instance", "batch", "class"}:
            samples, classes = confidence_masks(t, self.percentile)
            kept, kept_classes = samples.float().mean(), classes.float().mean()
            if "instance" in needed:
                out["instance"] = kept * instance_sum(s, t, self.temperatures, self.stand)
            if "batch" in needed:
                out["batch"] = kept * sum(batch_gram_loss(s, t, T) for T in self.temperatures)
            if "class" in needed:
                out["class"] = kept_classes * sum(class_gram_loss(s, t, T) for T in self.temperatures)
        if "instance_unmasked" in needed:
            out["instance_unmasked"] = instance_sum(s, t, self.unmasked_temperatures, self.stand)
        if "instance_strong" in needed:
            out["instance_strong"] = instance_sum(batch.s_strong, batch.t_strong, self.strong_temperatures,
                                                  self.stand)
        return out
