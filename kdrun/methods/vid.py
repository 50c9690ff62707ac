"""`vid`: variational information distillation, Ahn et al., CVPR 2019.

For each pair of (student, teacher) stage outputs, a regressor of three 1x1 convolutions predicts
the teacher feature's mean from the student's; the teacher feature is modelled as a Gaussian with
that mean and a learned variance per channel, var = softplus(log_scale) + eps. The loss is the
negative log-likelihood (without its constant), averaged over all elements:
    0.5 * ((mu - t)^2 / var + log var),
summed over the pairs. The larger feature map is average-pooled to the smaller one's size. Reads all
stage outputs by default (RepDistiller's feat[1:-1]); vector features count as 1x1 maps.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller
from kdrun.methods.registry import METHODS
from kdrun.models.features import feature_shapes


def as_map(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, None, None] if x.dim() == 2 else x


def match_sizes(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    return tuple(x if tuple(x.shape[2:]) == size else F.adaptive_avg_pool2d(x, size) for x in (s, t))


def gaussian_nll(mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, eps: float) -> torch.Tensor:
    var = (F.softplus(log_scale) + eps).view(1, -1, 1, 1)
    return (0.5 * ((mean - target).pow(2) / var + var.log())).mean()


def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)


class VariationalRegressor(nn.Module):
    def __init__(self, s_channels: int, t_channels: int, init_variance: float, eps: float):
        super().__init__()
        self.mean = nn.Sequential(conv1x1(s_channels, t_channels), nn.ReLU(),
                                  conv1x1(t_channels, t_channels), nn.ReLU(), conv1x1(t_channels, t_channels))
        # softplus(log_scale) + eps = init_variance at the start
        self.log_scale = nn.Parameter(torch.full((t_channels,), math.log(math.expm1(init_variance - eps))))
        self.eps = eps

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, t = match_sizes(as_map(s), as_map(t))
        return gaussian_nll(self.mean(s), t, self.log_scale, self.eps)


@dataclass
class VIDConfig(WithFeatures):
    name: str = "vid"
    init_variance: float = 5.0
    eps: float = 1.0e-5


@METHODS.register("vid")
class VariationalInformation(FeatureDistiller):
    own_terms = ("vid",)
    Config = VIDConfig

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        require(float(cfg.init_variance) > float(cfg.eps) > 0,
                f"method.init_variance must exceed method.eps, and eps be positive; got "
                f"{cfg.init_variance} and {cfg.eps}.")

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.s_paths, self.t_paths = self.layer_paths(pairing="first")  # RepDistiller's VID zips from the first
        s_shapes = feature_shapes(student, self.s_paths, self.sample_input(), "student")
        t_shapes = feature_shapes(teacher, self.t_paths, self.sample_input(), "teacher")
        for path, shape in [*s_shapes.items(), *t_shapes.items()]:
            require(len(shape) in (1, 3), f"vid reads vectors or feature maps (N x C x H x W), but {path} "
                                          f"gives shape {shape} per example. Choose other method.*_features.")
        self.regressors = nn.ModuleList(
            VariationalRegressor(s_shapes[s][0], t_shapes[t][0], float(cfg.init_variance), float(cfg.eps))
            for s, t in zip(self.s_paths, self.t_paths)
        )
        self.watch(self.s_paths, self.t_paths)

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "vid" in needed:
            pairs = zip(self.regressors, self.s_paths, self.t_paths)
            out["vid"] = sum(reg(batch.s_feats[s], batch.t_feats[t]) for reg, s, t in pairs)
        return out
