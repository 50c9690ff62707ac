"""`fsp`: flow of solution procedure, Yim et al. 2017 ("A Gift from Knowledge Distillation").

For two feature maps A (N x C1 x H x W) and B (N x C2 x H' x W') that enclose a stage, the FSP matrix
is G = B A^T / (h w) (C2 x C1, per sample), the larger map average-pooled to the smaller size first.
The term is mean((G_s - G_t)^2), summed over the pairs (RepDistiller). Pairs are consecutive paths of
the list: by default the model's `stem` (the stem's output, RepDistiller's f0), then every stage's
output, so each stage gives one matrix: RepDistiller's `feat[:-1]` (for VGG 4 matrices from relu0, for
MobileNetV2 the first from conv1's 16 channels). A model that declares no `stem` starts at its first
stage's input when that stage is a block of layers (`PATH:in`), else at its first stage.
The paper trains the student on the FSP loss first (the init stage: the student's `feature_layers` up
to the last map, the rest in eval mode, as RepDistiller), then on the task alone.

Widths. G_s and G_t have the same shape only when the student's maps have the teacher's channel counts.
`projection: none` (the default; RepDistiller's FSP raises "num of channels not equal", and
torchdistill's FSPLoss has no projection either) refuses other pairs. The AB paper (Heo et al. 2019,
Table 3) reports FSP on pairs of unequal widths (WRN 22-4 -> 16-2, 22-4 -> 10-1, ...), but kdrun found
no source for how it paired their maps (its authors' code, bhheo/AB_distillation, has no FSP in any
commit), so what follows is kdrun's choice, not a reference's: `projection: auto` maps each student map
whose width differs from the teacher's paired map onto the teacher's channels with a 1x1 conv (no bias)
+ BN, initialised as the AB authors' connectors (models/distillation_module.py: conv weights N(0, 2 /
(k^2 C_out)), BN weight 1, bias 0), before the FSP matrices: G_s = P_B(B) P_A(A)^T / (h w), one
projection per map (a map that ends one stage and begins the next is projected once); maps of equal
widths are used as they are, so on equal-width pairs `auto` computes exactly what `none` does. `always`
projects every student map. The projections are method submodules: trained with the student in
`schedule=single`, and with the student's feature layers in the init stage (`init_parameters`); after
the init stage the main stage no longer reads them.
"""
import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller, InitStage, bn_connector, default_points, match_spatial
from kdrun.methods.registry import METHODS
from kdrun.models.features import feature_points, resolve
from kdrun.schema.choice import Choice

log = logging.getLogger("kdrun")

PROJECTIONS = ("none", "auto", "always")


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = match_spatial(a, b)
    return b.flatten(2) @ a.flatten(2).transpose(1, 2) / (a.shape[2] * a.shape[3])


def fsp_loss(s_in, s_out, t_in, t_out) -> torch.Tensor:
    return (fsp_matrix(s_in, s_out) - fsp_matrix(t_in, t_out)).pow(2).mean()


def projection(s_channels: int, t_channels: int) -> nn.Module:
    """A student map's channels onto the teacher's: 1x1 conv without bias + BN, initialised as the AB
    authors' connectors (the connector OFD uses)."""
    return bn_connector((s_channels, 1, 1), (t_channels, 1, 1))


def default_maps(model: nn.Module, role: str) -> list[str]:
    """The model's `stem`, then its stages; without a declared stem, the first stage's input when that
    stage is a block of layers (a module with children: its input is the stem's output)."""
    stages = default_points(model, "stages", role)
    stem = feature_points(model, role).get("stem")
    if stem:
        return list(stem) + stages
    first, port = resolve(model, stages[0], role)
    block = not port and any(True for _ in first.children())
    return ([f"{stages[0]}:in"] if block else []) + stages


class Projection(Choice):
    none = "none"
    auto = "auto"
    always = "always"


@dataclass
class FSPConfig(WithFeatures):
    name: str = "fsp"
    ce_weight: Optional[float] = 1.0
    projection: Projection = Projection.none


def projection_kind(cfg) -> str:
    return str(cfg.get("projection") or "none")


@METHODS.register("fsp")
class FSP(InitStage, FeatureDistiller):
    Config = FSPConfig

    term = "fsp"

    @classmethod
    def validate(cls, cfg) -> None:
        kind = projection_kind(cfg)
        require(kind in PROJECTIONS,
                f"method.projection is {kind!r}; valid: none (student and teacher maps of equal widths, "
                f"RepDistiller's FSP), auto (a 1x1 conv + BN onto the teacher's channels where the widths "
                f"differ; kdrun's choice), always (on every student map).")
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        s_paths, t_paths = self.layer_paths(defaults=default_maps)
        s_shapes = self.shapes(student, s_paths, "student")
        t_shapes = self.shapes(teacher, t_paths, "teacher")
        self.require_maps(s_shapes, s_paths, "student")
        self.require_maps(t_shapes, t_paths, "teacher")
        require(len(s_paths) >= 2, f"fsp compares pairs of consecutive feature maps: give at least two paths, got {s_paths}.")
        kind = projection_kind(cfg)
        if kind == "none":
            for i in range(len(s_paths) - 1):
                s_c, t_c = (s_shapes[i][0], s_shapes[i + 1][0]), (t_shapes[i][0], t_shapes[i + 1][0])
                require(s_c == t_c,
                        f"fsp compares FSP matrices (channels of two maps that enclose a stage), which needs stages "
                        f"of equal widths: the student's {s_paths[i]} -> {s_paths[i + 1]} has {s_c[0]} -> {s_c[1]} "
                        f"channels, the teacher's {t_paths[i]} -> {t_paths[i + 1]} {t_c[0]} -> {t_c[1]}. Choose a "
                        f"pair of equal widths (e.g. wrn40_2 -> wrn16_2, resnet56 -> resnet20), set "
                        f"method.student_features / method.teacher_features to maps that match, or set "
                        f"method.projection=auto (a 1x1 conv + BN maps the student's maps onto the teacher's "
                        f"channels, trained with the student; kdrun's choice, no reference's).")
        self.projections = nn.ModuleList(
            projection(s[0], t[0]) if kind == "always" or (kind == "auto" and s[0] != t[0]) else nn.Identity()
            for s, t in zip(s_shapes, t_shapes))
        projected = [f"{p} ({s[0]} -> {t[0]})" for p, s, t, m in zip(s_paths, s_shapes, t_shapes, self.projections)
                     if not isinstance(m, nn.Identity)]
        if projected:
            log.info("fsp: 1x1 conv + BN projections of the student's maps onto the teacher's channels: %s.",
                     ", ".join(projected))
        self.s_paths = list(s_paths)
        self.s_pairs = list(zip(s_paths, s_paths[1:]))
        self.t_pairs = list(zip(t_paths, t_paths[1:]))
        self.watch(s_paths, t_paths)

    def student_maps(self, s_feats: dict) -> dict:
        """The student's maps as the FSP matrices read them: through their projections (where any)."""
        return {p: proj(s_feats[p]) for p, proj in zip(self.s_paths, self.projections)}

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "fsp" in needed:  # the same name in both phases
            s, t = self.student_maps(batch.s_feats), batch.t_feats
            out["fsp"] = sum(fsp_loss(s[si], s[so], t[ti], t[to]) for (si, so), (ti, to) in zip(self.s_pairs, self.t_pairs))
        return out

    def init_parameters(self):
        return self.student_parameters_up_to([out for _, out in self.s_pairs], self.projections,
                                             feature_layers_only=True)
