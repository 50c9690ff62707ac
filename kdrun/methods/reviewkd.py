"""`reviewkd`: knowledge review, Chen, Liu, Zhao & Jia, CVPR 2021 ("Distilling Knowledge via Knowledge Review").

Each student level (every stage's output, then the pooled embedding as a 1x1 map) goes through an
attention-based fusion module (ABF), reviewed from the deepest level to the shallowest:

    x_i   = BN(conv1x1(s_i))                                  (to `mid_channels`)
    r     = nearest-upsample(r_{i+1}) to x_i's size            (the residual from the deeper level)
    a     = sigmoid(conv1x1([x_i, r]))                         (2 channels, with bias: one map per input)
    x_i   = a[0] * x_i + a[1] * r                              (the deepest level fuses nothing)
    x_i   = nearest-resize(x_i) to the teacher's size when it differs; r_i = x_i
    out_i = BN(conv3x3(x_i))                                   (to the teacher's channels)

and out_i is compared with the teacher's feature of the same level by the hierarchical context loss

    hcl(o, t) = (MSE(o, t) + sum_k w_k MSE(pool_l(o), pool_l(t))) / (1 + sum_k w_k),

pool_l the adaptive average pool to l x l for l in (4, 2, 1) skipping every l >= the map's height, and
w_k = 1/2, 1/4, 1/8 for the first, second, third level kept (the reference's `cnt /= 2` runs only for the
levels it keeps: an 8x8 map gets 4, 2, 1 at 1/2, 1/4, 1/8; a 4x4 map 2, 1 at 1/2, 1/4; a 1x1 map the
plain MSE). The term is the sum over the levels.

As in the authors' code (dvlab-research/ReviewKD, CIFAR-100/model/reviewkd.py; mdistiller's
distillers/ReviewKD.py): the student's features are the stage outputs after the ReLU (`stages`;
mdistiller's STU_PREACT=False), the teacher's the stage pre-activations (`preact`), both followed by the
embedding; mid channels min(512, the student's deepest channels); conv1/conv2 weights kaiming-uniform
with a=1. The ABFs are submodules of the method: they train with the student and are saved with it.
loss = ce_weight * CE + alpha * KD + beta * min(epoch / warmup, 1) * sum of hcl (epochs count from 1,
as in mdistiller; the authors' train.py counts from 0, so its first epoch has weight 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller, default_points
from kdrun.methods.registry import METHODS

HCL_LEVELS = (4, 2, 1)  # the pooled sizes of the hierarchical context loss (the reference's)
MAX_MID_CHANNELS = 512  # the reference's min(512, in_channels[-1])


def hcl_level(out: torch.Tensor, target: torch.Tensor, levels: Sequence[int] = HCL_LEVELS) -> torch.Tensor:
    """One level's hierarchical context loss (see the module's docstring): MSE of the maps plus the MSEs of
    their adaptive average pools at `levels` smaller than the map's height, halving weights, normalised."""
    h = out.shape[2]
    loss = F.mse_loss(out, target)
    weight, total = 1.0, 1.0
    for size in levels:
        if size >= h:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(out, size), F.adaptive_avg_pool2d(target, size))
        total += weight
    return loss / total


def hcl_loss(outs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum over levels of `hcl_level` (the reference's `hcl`)."""
    return sum(hcl_level(o, t) for o, t in zip(outs, targets))


def as_map(x: torch.Tensor) -> torch.Tensor:
    """A vector feature (N x C, the pooled embedding) as an N x C x 1 x 1 map."""
    return x[:, :, None, None] if x.dim() == 2 else x


class ABF(nn.Module):
    """Attention-based fusion: one level of the review (the reference's ABF, written for any H x W)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        # two attention maps, each squashed alone (sigmoid, not a softmax over the two)
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                out_size: Optional[tuple[int, int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the output compared with the teacher, the fused map handed to the next, shallower level)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[2:]), mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if out_size is not None and tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


class Review(nn.Module):
    """The ABFs of all levels, `abfs[i]` for level i (shallowest first); `forward` runs them deepest first."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], out_sizes: Sequence[tuple],
                 mid_channels: int):
        super().__init__()
        n = len(in_channels)
        self.out_sizes = [tuple(s) for s in out_sizes]
        self.abfs = nn.ModuleList(ABF(c_in, mid_channels, c_out, fuse=i < n - 1)
                                  for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels)))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The outputs for the student's `feats` (shallowest first), in the same order."""
        outs: list[Optional[torch.Tensor]] = [None] * len(feats)
        residual = None
        for i in reversed(range(len(feats))):  # the deepest level first, each fused with the one below it
            outs[i], residual = self.abfs[i](as_map(feats[i]), residual, self.out_sizes[i])
        return outs


@dataclass
class ReviewKDConfig(WithFeatures):
    name: str = "reviewkd"
    ce_weight: Optional[float] = 1.0
    beta: float = 5.0  # the authors' CIFAR-100 weight (mdistiller's configs/cifar100/reviewkd.yaml)
    warmup: int = 20  # epochs of linear warm-up of the review term
    mid_channels: Optional[int] = None  # null: min(512, the student's deepest channels)
    student_preact: bool = False  # the student's pre-activations instead of its stage outputs


@METHODS.register("reviewkd")
class ReviewKD(FeatureDistiller):
    Config = ReviewKDConfig
    own_terms = ("reviewkd",)

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        require(float(cfg.warmup) >= 0, f"method.warmup (epochs) must be 0 or more, got {cfg.warmup}.")
        mid = cfg.get("mid_channels")
        require(mid is None or int(mid) > 0,
                f"method.mid_channels must be null (min(512, the student's deepest channels)) or positive, got {mid}.")

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.warmup = float(cfg.warmup)
        student_point = "preact" if cfg.get("student_preact") else "stages"

        def defaults(model, role):  # the stages (student) / pre-activations (teacher), then the embedding
            point = student_point if role == "student" else "preact"
            return default_points(model, point, role) + default_points(model, "embedding", role)

        self.s_paths, self.t_paths = self.layer_paths(point=f"{student_point}+embedding", defaults=defaults)
        s_shapes = self.shapes(student, self.s_paths, "student")
        t_shapes = self.shapes(teacher, self.t_paths, "teacher")
        for shapes, paths, role in ((s_shapes, self.s_paths, "student"), (t_shapes, self.t_paths, "teacher")):
            for shape, path in zip(shapes, paths):
                require(len(shape) in (1, 3),
                        f"reviewkd reads feature maps (channels x height x width) or vectors, but the {role}'s "
                        f"feature at {path!r} has shape {shape}. Set method.{role}_features to other paths.")
        t_maps = [shape if len(shape) == 3 else (shape[0], 1, 1) for shape in t_shapes]
        mid = cfg.get("mid_channels")
        mid = int(mid) if mid is not None else min(MAX_MID_CHANNELS, s_shapes[-1][0])
        self.review = Review([s[0] for s in s_shapes], [t[0] for t in t_maps], [t[1:] for t in t_maps], mid)
        self.watch(self.s_paths, self.t_paths)

    def ramp(self, epoch: int) -> float:
        return min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0

    def weights(self, epoch, phase="main"):
        weights = super().weights(epoch, phase)
        if phase == "main":
            weights["reviewkd"] = self.beta * self.ramp(epoch)
        return weights

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "reviewkd" in needed:
            outs = self.review([batch.s_feats[p] for p in self.s_paths])
            out["reviewkd"] = hcl_loss(outs, [as_map(batch.t_feats[p]) for p in self.t_paths])
        return out
