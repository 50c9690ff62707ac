"""`cc`: correlation congruence, Peng et al., ICCV 2019, in RepDistiller's (and mdistiller's) form.

Both embeddings go through a linear head to `feat_dim` (both heads are trained with the student);
with delta_i = |e^s_i - e^t_i|, loss = mean_i sum_d delta_i,d * delta_i+1,d over consecutive
examples of the batch: the correlation between examples that the author's code estimates on the
batch, which is what the published CIFAR-100 numbers (and beta = 0.02) were obtained with.
"""
from dataclasses import dataclass
from math import prod

import torch
import torch.nn as nn

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.registry import METHODS
from kdrun.methods.weighted import WeightedDistiller, flat, zero_like_graph
from kdrun.models.features import feature_shapes


def cc_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    if len(e_s) < 2:
        return zero_like_graph(e_s)
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@dataclass
class CCConfig(WithFeatures):
    name: str = "cc"
    beta: float = 0.02
    feat_dim: int = 128


@METHODS.register("cc")
class CorrelationCongruence(WeightedDistiller):
    own_terms = ("cc",)
    Config = CCConfig

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        require(int(cfg.feat_dim) >= 1, f"method.feat_dim must be at least 1, got {cfg.feat_dim}.")

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.s_path, self.t_path = self.single_path("student"), self.single_path("teacher")
        s_shape = feature_shapes(student, [self.s_path], self.sample_input(), "student")[self.s_path]
        t_shape = feature_shapes(teacher, [self.t_path], self.sample_input(), "teacher")[self.t_path]
        self.embed_s = nn.Linear(prod(s_shape), int(cfg.feat_dim))
        self.embed_t = nn.Linear(prod(t_shape), int(cfg.feat_dim))
        self.watch([self.s_path], [self.t_path])

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "cc" in needed:
            out["cc"] = cc_loss(self.embed_s(flat(batch.s_feats[self.s_path])), self.embed_t(flat(batch.t_feats[self.t_path])))
        return out
