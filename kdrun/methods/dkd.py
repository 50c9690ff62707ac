"""`dkd`: decoupled KD, Zhao et al., CVPR 2022 (mdistiller's DKD).

With p = softmax(logits / T) and the true class y:
  TCKD = KL([p_t(y), 1 - p_t(y)] || [p_s(y), 1 - p_s(y)])      (target vs non-target, binary)
  NCKD = KL(p_t(. | not y) || p_s(. | not y))                    (among the non-target classes)
dkd = min(epoch / warmup, 1) * T^2 * (dkd_alpha * TCKD + dkd_beta * NCKD), KLs averaged over the batch.
Classic KD is TCKD + (1 - p_t(y)) * NCKD; DKD frees the NCKD weight. Logits only, no features.

`logit_stand` (Sun et al. 2024) z-scores each sample's logits over all the classes before anything else, so
before the split into target and non-target (as the authors' DKD.py); `stop_epoch` (ESKD) switches TCKD,
NCKD and the optional KD term off after that epoch, the cross-entropy's weight then 1.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods.config import WithKD
from kdrun.methods.logit_stand import standardize
from kdrun.methods.registry import METHODS
from kdrun.methods.weighted import WeightedDistiller


def dkd_terms(s_logits: torch.Tensor, t_logits: torch.Tensor, y: torch.Tensor, T: float,
              logit_stand: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """T^2 * TCKD and T^2 * NCKD, each averaged over the batch; with `logit_stand`, of the logits z-scored
    over all the classes first."""
    if logit_stand:
        s_logits, t_logits = standardize(s_logits), standardize(t_logits)
    b, c = s_logits.shape
    target = F.one_hot(y, c).bool()

    def binary_and_rest(logits):
        z = logits.float() / T
        log_p_target = F.log_softmax(z, dim=1)[target]
        others = z[~target].view(b, c - 1)
        log_p_others = torch.logsumexp(others, dim=1) - torch.logsumexp(z, dim=1)
        return torch.stack([log_p_target, log_p_others], dim=1), F.log_softmax(others, dim=1)

    s_binary, s_rest = binary_and_rest(s_logits)
    t_binary, t_rest = binary_and_rest(t_logits)
    def kl(log_s, log_t):
        return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * T * T

    return kl(s_binary, t_binary), kl(s_rest, t_rest)


@dataclass
class DKDConfig(WithKD):
    name: str = "dkd"
    ce_weight: Optional[float] = 1.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    warmup: int = 20


@METHODS.register("dkd")
class DecoupledKD(WeightedDistiller):
    Config = DKDConfig
    own_terms_distil_logits = True

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        for key in ("dkd_alpha", "dkd_beta"):
            require(float(cfg[key]) >= 0, f"method.{key} must be 0 or more, got {cfg[key]}.")
        require(float(cfg.warmup) >= 0, f"method.warmup (epochs) must be 0 or more, got {cfg.warmup}.")

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.w_target, self.w_other = float(cfg.dkd_alpha), float(cfg.dkd_beta)
        self.warmup = float(cfg.warmup)

    def weights(self, epoch, phase="main"):
        weights = super().weights(epoch, phase)
        if phase == "main":
            ramp = min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
            if self.kd_stopped(epoch):
                ramp = 0.0
            weights.update(tckd=self.beta * ramp * self.w_target, nckd=self.beta * ramp * self.w_other)
        return weights

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if needed & {"tckd", "nckd"}:
            tckd, nckd = dkd_terms(batch.s_logits, batch.t_logits, batch.y, self.T, self.logit_stand)
            out.update(tckd=tckd, nckd=nckd)
        return out
