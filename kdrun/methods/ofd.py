"""`ofd`: feature distillation overhauled, Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019 ("A Comprehensive
Overhaul of Feature Distillation").

Each of the student's pre-ReLU stage features goes through a connector (1x1 conv without bias + BN; for
vectors a bias-free linear + BN1d), initialised as the authors' `build_feature_connector`: weights from
N(0, sqrt(2 / n)), n = kernel area x output channels, BN weight 1 and bias 0. It learns the teacher's
pre-ReLU feature at the same stage (`preact`) through the margin ReLU and the partial L2 distance:

    target = max(t, margin)                              (per channel; the teacher's transform)
    d(s, t) = sum of (s - target)^2 where not (s <= target and target <= 0)

The margin of a channel is E[x | x < 0] for x ~ N(m, s^2), with s = |weight| and m = bias of the teacher's
BatchNorm before that pre-activation (`feature_points()["preact_bn"]`, or `method.teacher_bns`):
m - s * phi(m/s) / Phi(-m/s), and -3s where Phi(-m/s) <= 0.001 (the authors' `get_margin_from_BN`). It is
read from the teacher's BN parameters at every step (the teacher is frozen, so it is constant in a stage;
never saved with the method, never stale when the teacher trained after the method was built).

Stage i of n is divided by 2^(n - i - 1) (the deepest counts most), the sum divided by the batch size
(the authors' distiller.py and train_with_distillation.py). The term is weighted by beta: 1/1000 in the
authors' CIFAR-100 code (`loss_CE + loss_distill.sum() / batch_size / 1000`), 1/10000 in their ImageNet code.

Where the maps' spatial sizes differ (heterogeneous pairs: the authors' pairs never do), the larger raw
feature is average-pooled to the smaller one's size before the connector and the margin. The teacher is in
eval mode, as every kdrun teacher (the authors' code calls t_net.train(): BN on batch statistics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn

from kdrun.errors import UserError, require
from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller, bn_connector, match_spatial
from kdrun.methods.registry import METHODS
from kdrun.models.features import resolve

CDF_FLOOR = 0.001  # below this Phi(-m/s), the margin is -3s (the authors' get_margin_from_BN)


def bn_margin(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per channel, E[x | x < 0] for x ~ N(bias, weight^2), or -3|weight| where P(x < 0) <= 0.001.

    Computed in float64 (Phi with erfc); a weight of exactly 0 counts as 1e-12 (the authors' code divides
    by it)."""
    s = weight.detach().double().abs().clamp_min(1e-12)
    m = bias.detach().double()
    z = m / s
    cdf = 0.5 * torch.special.erfc(z / math.sqrt(2.0))  # Phi(-m/s)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)  # phi(m/s) = phi(-m/s)
    margin = torch.where(cdf > CDF_FLOOR, m - s * pdf / cdf.clamp_min(CDF_FLOOR), -3.0 * s)
    return margin.to(weight.dtype)


def partial_l2(s: torch.Tensor, t: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Sum over every element of (s - target)^2, target = max(t, margin), skipped where the student is at or
    below a non-positive target (s <= target <= 0); `margin` broadcasts over t (1 x C x 1 x 1 or 1 x C)."""
    target = torch.max(t, margin)
    keep = (s > target) | (target > 0)
    return ((s - target).pow(2) * keep).sum()


@dataclass
class OFDConfig(WithFeatures):
    name: str = "ofd"
    ce_weight: Optional[float] = 1.0
    beta: float = 1.0e-3
    teacher_bns: Optional[List[str]] = None  # BatchNorm paths, one per teacher feature; null: its "preact_bn"


@METHODS.register("ofd")
class OverhaulFeatureDistillation(FeatureDistiller):
    Config = OFDConfig

    own_terms = ("ofd",)
    point = "preact"

    @classmethod
    def validate(cls, cfg) -> None:
        bns = cfg.get("teacher_bns")
        require(bns is None or (not isinstance(bns, str) and len(bns) > 0),
                f"method.teacher_bns must be null (the teacher's `preact_bn` feature points) or a non-empty list "
                f"of BatchNorm module paths, one per teacher feature; got {bns!r}.")
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.s_paths, self.t_paths = self.layer_paths()
        self.t_bn_paths = self.teacher_bn_paths(self.t_paths)
        s_shapes = self.shapes(student, self.s_paths, "student")
        t_shapes = self.shapes(teacher, self.t_paths, "teacher")
        for s_path, t_path, s_shape, t_shape in zip(self.s_paths, self.t_paths, s_shapes, t_shapes):
            require(len(s_shape) == len(t_shape) and len(s_shape) in (1, 3),
                    f"method 'ofd' maps each student feature onto the teacher's with a 1x1 conv (feature maps) or a "
                    f"linear layer (vectors), but the student's {s_path!r} has shape {s_shape} and the teacher's "
                    f"{t_path!r} {t_shape}. Set method.student_features / method.teacher_features to paths of the "
                    f"same kind.")
        self.t_bns = [self.teacher_bn(path, t_path, shape)
                      for path, t_path, shape in zip(self.t_bn_paths, self.t_paths, t_shapes)]
        self.connectors = nn.ModuleList(bn_connector(s, t) for s, t in zip(s_shapes, t_shapes))
        n = len(self.s_paths)
        self.stage_weights = [1.0 / 2 ** (n - i - 1) for i in range(n)]
        self.watch(self.s_paths, self.t_paths)

    def teacher_bn_paths(self, t_paths: list[str]) -> list[str]:
        """The BatchNorm before each teacher feature: `method.teacher_bns`, else the teacher's `preact_bn`
        entry parallel to that feature's `preact` entry."""
        given = self.cfg.get("teacher_bns")
        name = type(self.teacher).__name__
        if given is not None:
            paths = [str(p) for p in given]
            require(len(paths) == len(t_paths),
                    f"method.teacher_bns names {len(paths)} BatchNorm modules but the teacher's features are "
                    f"{len(t_paths)} ({', '.join(t_paths)}): give one per teacher feature, in the same order.")
            return paths
        declare = getattr(self.teacher, "feature_points", None)
        points = declare() if callable(declare) else {}
        preact, bns = list(points.get("preact") or []), list(points.get("preact_bn") or [])
        if not bns or len(bns) != len(preact):
            raise UserError(
                f"method 'ofd' takes its margins from the BatchNorm before each of the teacher's pre-activations, "
                f"but the teacher ({name}) declares none (no `preact_bn` in its feature_points(): its "
                f"pre-activations are not a BatchNorm's output). Use a teacher with batch norm before its ReLUs "
                f"(wrn*, resnet*, vgg*, mobilenetv2, shufflenetv1, plain*; not mlp*, maxout_cifar, fitnet*, "
                f"shufflenetv2), or name one BatchNorm per teacher feature with method.teacher_bns=[...].")
        lookup = dict(zip(preact, bns))
        missing = [p for p in t_paths if p not in lookup]
        require(not missing,
                f"method 'ofd' takes its margins from the BatchNorm before each teacher feature, but the teacher "
                f"({name}) declares none for {', '.join(missing)} (not among its `preact` points "
                f"{', '.join(preact)}): name one BatchNorm per teacher feature with method.teacher_bns=[...].")
        return [lookup[p] for p in t_paths]

    def teacher_bn(self, path: str, t_path: str, shape: tuple) -> nn.Module:
        bn, _ = resolve(self.teacher, path.partition(":")[0], "teacher")
        name = type(self.teacher).__name__
        is_bn = isinstance(bn, nn.modules.batchnorm._BatchNorm)
        require(is_bn and bn.affine,
                f"method 'ofd' reads the margin of the teacher's feature {t_path!r} from the weight and bias of "
                f"the BatchNorm before it, but the teacher's ({name}) module {path!r} is a {type(bn).__name__}"
                f"{' without affine parameters' if is_bn else ''}. Name an affine BatchNorm with "
                f"method.teacher_bns=[...].")
        require(bn.num_features == shape[0],
                f"method 'ofd': the teacher's ({name}) BatchNorm {path!r} has {bn.num_features} channels but its "
                f"feature {t_path!r} has {shape[0]} (shape {shape}); name the BatchNorm whose output is that "
                f"feature with method.teacher_bns=[...].")
        return bn

    def margins(self) -> list[torch.Tensor]:
        """Each teacher feature's margin, one value per channel, from its BatchNorm's current parameters."""
        return [bn_margin(bn.weight, bn.bias) for bn in self.t_bns]

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "ofd" in needed:
            total = 0.0
            for w, conn, margin, s_path, t_path in zip(self.stage_weights, self.connectors, self.margins(),
                                                       self.s_paths, self.t_paths):
                s, t = batch.s_feats[s_path], batch.t_feats[t_path]
                if s.dim() == 4:
                    s, t = match_spatial(s, t)
                    margin = margin.view(1, -1, 1, 1)
                else:
                    margin = margin.view(1, -1)
                total = total + w * partial_l2(conn(s), t, margin.to(t.dtype))
            out["ofd"] = total / batch.s_logits.shape[0]
        return out
