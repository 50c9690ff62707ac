"""`pkt`: probabilistic knowledge transfer, Passalis & Tefas, ECCV 2018.

Each model's embeddings give, per example i, a distribution over the batch from the cosine kernel:
k_ij = (cos(f_i, f_j) + 1) / 2, p_ij = k_ij / sum_j k_ij. loss = mean_ij p^t_ij log(p^t_ij / p^s_ij)
(the KL of RepDistiller's implementation, averaged over all b^2 entries). Reads the embedding
(the classifier's input).
"""
from dataclasses import dataclass

import torch

from kdrun.methods.config import WithFeatures
from kdrun.methods.registry import METHODS
from kdrun.methods.weighted import WeightedDistiller, flat

EPS = 1e-7


def cosine_kernel_distribution(f: torch.Tensor) -> torch.Tensor:
    f = flat(f)
    f = f / (f.norm(dim=1, keepdim=True) + EPS)
    k = (f @ f.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    p_s, p_t = cosine_kernel_distribution(f_s), cosine_kernel_distribution(f_t)
    return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()


@dataclass
class PKTConfig(WithFeatures):
    name: str = "pkt"
    beta: float = 30000.0


@METHODS.register("pkt")
class ProbabilisticKnowledgeTransfer(WeightedDistiller):
    own_terms = ("pkt",)
    Config = PKTConfig

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.s_path, self.t_path = self.single_path("student"), self.single_path("teacher")
        self.watch([self.s_path], [self.t_path])

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "pkt" in needed:
            out["pkt"] = pkt_loss(batch.s_feats[self.s_path], batch.t_feats[self.t_path])
        return out
