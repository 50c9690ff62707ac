"""`nst`: neuron selectivity transfer, Huang & Wang 2017 ("Like What You Like").

Each channel of a feature map is a sample of a distribution over positions: f_k = F_k / ||F_k||_2
(flattened over H x W). The term is the squared MMD between the student's and the teacher's channels
with the polynomial kernel k(a, b) = (a . b + c)^d, d = 2, c = 0:
mean k(t, t') + mean k(s, s') - 2 mean k(s, t), per sample, averaged over the batch, summed over stages
(RepDistiller, beta = 50). Maps of different sizes are average-pooled to the smaller one.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller, match_spatial
from kdrun.methods.registry import METHODS


def poly_kernel(a: torch.Tensor, b: torch.Tensor, degree: float, c: float) -> torch.Tensor:
    """N x Ca x Cb matrix of (a_i . b_j + c)^degree."""
    return (a @ b.transpose(1, 2) + c).pow(degree)


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor, degree: float = 2.0, c: float = 0.0) -> torch.Tensor:
    f_s, f_t = match_spatial(f_s, f_t)
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    return (poly_kernel(t, t, degree, c).mean().detach() + poly_kernel(s, s, degree, c).mean()
            - 2 * poly_kernel(s, t, degree, c).mean())


@dataclass
class NSTConfig(WithFeatures):
    name: str = "nst"
    ce_weight: Optional[float] = 1.0
    beta: float = 50.0
    degree: float = 2.0
    c: float = 0.0


@METHODS.register("nst")
class NeuronSelectivityTransfer(FeatureDistiller):
    Config = NSTConfig
    own_terms = ("nst",)

    @classmethod
    def validate(cls, cfg):
        require(float(cfg.degree) > 0, f"method.degree (of the polynomial kernel) must be positive, got {cfg.degree}.")
        require(float(cfg.c) >= 0, f"method.c (the polynomial kernel's constant) must be 0 or more, got {cfg.c}.")
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.degree, self.c = float(cfg.degree), float(cfg.c)
        self.s_paths, self.t_paths = self.layer_paths()
        self.require_maps(self.shapes(student, self.s_paths, "student"), self.s_paths, "student")
        self.require_maps(self.shapes(teacher, self.t_paths, "teacher"), self.t_paths, "teacher")
        self.watch(self.s_paths, self.t_paths)

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "nst" in needed:
            out["nst"] = sum(nst_loss(batch.s_feats[s], batch.t_feats[t], self.degree, self.c)
                             for s, t in zip(self.s_paths, self.t_paths))
        return out
