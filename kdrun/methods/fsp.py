"""`fsp`: flow of solution procedure, Yim et al. 2017 ("A Gift from Knowledge Distillation").

For two feature maps A (N x C1 x H x W) and B (N x C2 x H' x W') that enclose a stage, the FSP matrix
is G = B A^T / (h w) (C2 x C1, per sample), the larger map average-pooled to the smaller size first.
The term is mean((G_s - G_t)^2), summed over the pairs (RepDistiller). G_s and G_t must have the same
shape, so FSP needs student and teacher stages of equal widths (RepDistiller reports no FSP result
otherwise). Pairs are consecutive paths of the list: by default the model's `stem` (the stem's
output, RepDistiller's f0), then every stage's output, so each stage gives one matrix: RepDistiller's
`feat[:-1]` (for VGG 4 matrices from relu0, for MobileNetV2 the first from conv1's 16 channels). A
model that declares no `stem` starts at its first stage's input when that stage is a block of layers
(`PATH:in`), else at its first stage.
The paper trains the student on the FSP loss first (the init stage: the student's `feature_layers` up
to the last map, the rest in eval mode, as RepDistiller), then on the task alone.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller, InitStage, default_points, match_spatial
from kdrun.methods.registry import METHODS
from kdrun.models.features import feature_points, resolve


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = match_spatial(a, b)
    return b.flatten(2) @ a.flatten(2).transpose(1, 2) / (a.shape[2] * a.shape[3])


def fsp_loss(s_in, s_out, t_in, t_out) -> torch.Tensor:
    return (fsp_matrix(s_in, s_out) - fsp_matrix(t_in, t_out)).pow(2).mean()


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


@dataclass
class FSPConfig(WithFeatures):
    name: str = "fsp"
    ce_weight: Optional[float] = 1.0


@METHODS.register("fsp")
class FSP(InitStage, FeatureDistiller):
    Config = FSPConfig

    term = "fsp"

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        s_paths, t_paths = self.layer_paths(defaults=default_maps)
        s_shapes = self.shapes(student, s_paths, "student")
        t_shapes = self.shapes(teacher, t_paths, "teacher")
        self.require_maps(s_shapes, s_paths, "student")
        self.require_maps(t_shapes, t_paths, "teacher")
        require(len(s_paths) >= 2, f"fsp compares pairs of consecutive feature maps: give at least two paths, got {s_paths}.")
        for i in range(len(s_paths) - 1):
            s_c, t_c = (s_shapes[i][0], s_shapes[i + 1][0]), (t_shapes[i][0], t_shapes[i + 1][0])
            require(s_c == t_c,
                    f"fsp compares FSP matrices (channels of two maps that enclose a stage), which needs stages of "
                    f"equal widths: the student's {s_paths[i]} -> {s_paths[i + 1]} has {s_c[0]} -> {s_c[1]} channels, "
                    f"the teacher's {t_paths[i]} -> {t_paths[i + 1]} {t_c[0]} -> {t_c[1]}. Choose a pair of equal "
                    f"widths (e.g. wrn40_2 -> wrn16_2, resnet56 -> resnet20), or set method.student_features / "
                    f"method.teacher_features to maps that match.")
        self.s_pairs = list(zip(s_paths, s_paths[1:]))
        self.t_pairs = list(zip(t_paths, t_paths[1:]))
        self.watch(s_paths, t_paths)

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "fsp" in needed:  # the same name in both phases
            s, t = batch.s_feats, batch.t_feats
            out["fsp"] = sum(fsp_loss(s[si], s[so], t[ti], t[to]) for (si, so), (ti, to) in zip(self.s_pairs, self.t_pairs))
        return out

    def init_parameters(self):
        return self.student_parameters_up_to([out for _, out in self.s_pairs], feature_layers_only=True)
