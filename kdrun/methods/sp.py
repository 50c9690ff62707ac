"""`sp`: similarity-preserving KD, Tung & Mori, ICCV 2019.

For a batch of b examples, G = F F^T (F: features flattened per example), each row L2-normalised;
loss = ||G_t - G_s||_F^2 / b^2, summed over the feature pairs. By default one pair: the output of
the last stage of each model (RepDistiller's feat[-2]).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller
from kdrun.methods.registry import METHODS
from kdrun.methods.weighted import flat


def batch_similarity(f: torch.Tensor) -> torch.Tensor:
    f = flat(f)
    return F.normalize(f @ f.t(), dim=1)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    b = f_s.shape[0]
    return (batch_similarity(f_t) - batch_similarity(f_s)).pow(2).sum() / (b * b)


@dataclass
class SPConfig(WithFeatures):
    name: str = "sp"
    beta: float = 3000.0


@METHODS.register("sp")
class SimilarityPreserving(FeatureDistiller):
    own_terms = ("sp",)
    Config = SPConfig

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.s_paths, self.t_paths = self.layer_paths(select=lambda paths, model: paths[-1:])
        self.watch(self.s_paths, self.t_paths)

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "sp" in needed:
            out["sp"] = sum(sp_loss(batch.s_feats[s], batch.t_feats[t]) for s, t in zip(self.s_paths, self.t_paths))
        return out
