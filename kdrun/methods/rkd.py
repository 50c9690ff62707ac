"""`rkd`: relational KD, Park et al., CVPR 2019 (distance-wise and angle-wise relations).

On the embeddings of a batch: distance term = smooth-L1 between the pairwise Euclidean distances of
student and teacher, each divided by its mean over distinct pairs; angle term = smooth-L1 between the
cosines of the angles e_j - e_i, e_k - e_i of all triplets. Both are invariant to scaling the
embedding. The terms are weighted `distance_weight` (25) and `angle_weight` (50) inside, `beta` outside.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.registry import METHODS
from kdrun.methods.weighted import WeightedDistiller, flat, zero_like_graph


def normalised_distances(e: torch.Tensor) -> torch.Tensor:
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(1e-12).sqrt()
    d = d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))  # exact zeros on the diagonal
    return d / d[d > 0].mean()


def triplet_cosines(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at vertex i between j and k, for all (i, j, k): shape b x b x b."""
    directions = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [i, j] = unit(e_j - e_i)
    return directions @ directions.transpose(1, 2)


def rkd_terms(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = flat(f_s), flat(f_t)
    if len(s) < 2:
        return zero_like_graph(s), zero_like_graph(s)
    distance = F.smooth_l1_loss(normalised_distances(s), normalised_distances(t))
    angle = F.smooth_l1_loss(triplet_cosines(s), triplet_cosines(t))
    return distance, angle


@dataclass
class RKDConfig(WithFeatures):
    name: str = "rkd"
    distance_weight: float = 25.0
    angle_weight: float = 50.0


@METHODS.register("rkd")
class RelationalKD(WeightedDistiller):
    Config = RKDConfig

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        for key in ("distance_weight", "angle_weight"):
            require(float(cfg[key]) >= 0, f"method.{key} must be 0 or more, got {cfg[key]}.")

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.w_distance, self.w_angle = float(cfg.distance_weight), float(cfg.angle_weight)
        self.s_path, self.t_path = self.single_path("student"), self.single_path("teacher")
        self.watch([self.s_path], [self.t_path])

    def weights(self, epoch, phase="main"):
        weights = super().weights(epoch, phase)
        if phase == "main":
            weights.update(rkd_distance=self.beta * self.w_distance, rkd_angle=self.beta * self.w_angle)
        return weights

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if needed & {"rkd_distance", "rkd_angle"}:
            distance, angle = rkd_terms(batch.s_feats[self.s_path], batch.t_feats[self.t_path])
            out.update(rkd_distance=distance, rkd_angle=angle)
        return out
