"""`fullact`: full-activation transfer (F-ActT), Zagoruyko & Komodakis 2017 ("Paying More Attention to
Attention", Section 4.1.1 and Table 1's F-ActT column): AT's control, the whole activation tensor
transferred at AT's points instead of its attention map.

The paper (quoted from memory: its full text could not be read where this was written, and the
authors' code has no F-ActT) used "FitNets-style hints using l2 losses on full activations directly,
with 1x1 convolutional layers to match tensor shapes", and "for networks of the same width different
depth" regressed "directly to activations, without 1x1 convolutions". Its pairs (NIN-thin/NIN-wide,
WRN-16-1/WRN-16-2, WRN-16-1/WRN-40-1, WRN-16-2/WRN-40-2) have maps of equal sizes at every point, so
only channel counts ever differ. Hence:

- points: AT's (`feature_points()["stages"]`, deepest paired, or method.student_features /
  teacher_features);
- `projection: auto` (the paper's): where the channel counts differ, a learned 1x1 conv (no bias, a
  method submodule trained with the student) maps the student's activation onto the teacher's
  channels; equal widths are compared as they are. `projection: none`: unequal channel counts are
  refused. Unequal heights or widths are always refused, before training: pooling the larger map (as
  `at` does) is not the paper's F-ActT;
- the term, per point: mean over the batch and every element (C x H x W) of (q_s - q_t)^2, q =
  vec(A) / ||vec(A)||_2 per example (`normalize: true`, as AT normalises its maps; the paper, as
  recalled, also L2-normalises before its transfer losses; `false`: the raw activations), summed over
  the points. No F-ActT weight was found; kdrun takes beta = 1000 as for AT, whose paper sets beta to
  10^3 divided by the number of elements of the map and the batch size: here the map is the whole
  activation, so the mean is over N x C x H x W elements (relative to the normalised distance, C times
  weaker per point than AT's term on the attention map).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdrun.errors import UserError, require
from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller
from kdrun.methods.registry import METHODS
from kdrun.schema.choice import Choice

PROJECTIONS = ("auto", "none")


def fullact_loss(f_s: torch.Tensor, f_t: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """mean((q_s - q_t)^2) over the batch and every element, q the per-example L2-normalised activation
    (`normalize`) or the activation itself."""
    s, t = f_s.flatten(1), f_t.flatten(1)
    if normalize:
        s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
    return (s - t).pow(2).mean()


def show(shape: tuple) -> str:
    return "x".join(str(d) for d in shape) + (" (C x H x W)" if len(shape) == 3 else "")


class Projection(Choice):
    auto = "auto"
    none = "none"


@dataclass
class FullActConfig(WithFeatures):
    name: str = "fullact"
    ce_weight: Optional[float] = 1.0
    beta: float = 1000.0
    normalize: bool = True
    projection: Projection = Projection.auto


@METHODS.register("fullact")
class FullActivationTransfer(FeatureDistiller):
    Config = FullActConfig
    own_terms = ("fullact",)

    @classmethod
    def validate(cls, cfg):
        require(str(cfg.projection) in PROJECTIONS,
                f"method.projection is {cfg.projection!r}; valid: auto (a 1x1 conv onto the teacher's channels "
                f"where the widths differ, the paper's), none (equal shapes only).")
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.normalize = bool(cfg.normalize)
        self.s_paths, self.t_paths = self.layer_paths()
        s_shapes = self.shapes(student, self.s_paths, "student")
        t_shapes = self.shapes(teacher, self.t_paths, "teacher")
        project = str(cfg.projection) == "auto"
        self.projections = nn.ModuleList(
            self.projection(s, t, sp, tp, project)
            for s, t, sp, tp in zip(s_shapes, t_shapes, self.s_paths, self.t_paths))
        self.watch(self.s_paths, self.t_paths)

    @staticmethod
    def projection(s: tuple, t: tuple, s_path: str, t_path: str, project: bool) -> nn.Module:
        if s == t:
            return nn.Identity()
        where = (f"method=fullact (F-ActT) compares the student's and the teacher's activations element by "
                 f"element, but the student's {s_path!r} is {show(s)} and the teacher's {t_path!r} is {show(t)}")
        if len(s) != 3 or len(t) != 3 or s[1:] != t[1:]:
            raise UserError(
                f"{where}: their sizes differ. F-ActT needs maps of the same height and width (the paper's "
                f"pairs have them at every point; pooling the larger map, as method=at does, is not its "
                f"setting). Choose points of equal sizes with method.student_features / "
                f"method.teacher_features, or a pair whose stages match (e.g. nin_wide -> nin_thin, "
                f"wrn16_2 -> wrn16_1), or use method=at.")
        if not project:
            raise UserError(
                f"{where}: their channel counts differ ({s[0]} and {t[0]}) and method.projection=none "
                f"compares equal shapes only. Set method.projection=auto (a 1x1 conv onto the teacher's "
                f"channels, as the paper did for pairs of different widths), or choose a pair of equal "
                f"widths (e.g. wrn40_1 -> wrn16_1).")
        return nn.Conv2d(s[0], t[0], kernel_size=1, bias=False)

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "fullact" in needed:
            out["fullact"] = sum(fullact_loss(proj(batch.s_feats[s]), batch.t_feats[t], self.normalize)
                                 for proj, s, t in zip(self.projections, self.s_paths, self.t_paths))
        return out
