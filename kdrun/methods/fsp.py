"""`fsp`: flow of solution procedure, Yim et al. 2017 ("A Gift from Knowledge Distillation").

For a stage with input map A (N x C1 x H x W) and output map B (N x C2 x H' x W'), the FSP matrix is
G = B A^T / (h w) (C2 x C1, per sample), the larger map average-pooled to the smaller size first.
The term is mean((G_s - G_t)^2), summed over stages (RepDistiller). G_s and G_t must have the same
shape, so FSP needs student and teacher stages of equal widths (RepDistiller reports no FSP result
otherwise). Each stage path P gives the pair (P:in, P): the stage module's input and output.
The paper trains the student on the FSP loss first (the init stage), then on the task alone.
"""
import torch

from kdrun.errors import require
from kdrun.methods import METHODS
from kdrun.methods.feature import FeatureDistiller, InitStage, match_spatial


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = match_spatial(a, b)
    return b.flatten(2) @ a.flatten(2).transpose(1, 2) / (a.shape[2] * a.shape[3])


def fsp_loss(s_in, s_out, t_in, t_out) -> torch.Tensor:
    return (fsp_matrix(s_in, s_out) - fsp_matrix(t_in, t_out)).pow(2).mean()


@METHODS.register("fsp")
class FSP(InitStage, FeatureDistiller):
    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        s_stages, t_stages = self.layer_paths()
        for role, paths in (("student", s_stages), ("teacher", t_stages)):
            require(all(":" not in p for p in paths),
                    f"method.{role}_layers for fsp names stage modules (their input and output are compared); "
                    f"drop the ':in'/':out' from {paths}.")
        self.s_pairs = [(f"{p}:in", p) for p in s_stages]
        self.t_pairs = [(f"{p}:in", p) for p in t_stages]
        s_flat = [p for pair in self.s_pairs for p in pair]
        t_flat = [p for pair in self.t_pairs for p in pair]
        s_shapes = self.shapes(student, s_flat, "student")
        t_shapes = self.shapes(teacher, t_flat, "teacher")
        self.require_maps(s_shapes, s_flat, "student")
        self.require_maps(t_shapes, t_flat, "teacher")
        for i, (s_stage, t_stage) in enumerate(zip(s_stages, t_stages)):
            s_c = (s_shapes[2 * i + 1][0], s_shapes[2 * i][0])
            t_c = (t_shapes[2 * i + 1][0], t_shapes[2 * i][0])
            require(s_c == t_c,
                    f"fsp compares FSP matrices (output x input channels of a stage), which needs stages of equal "
                    f"widths: the student's {s_stage!r} has {s_c[1]} -> {s_c[0]} channels, the teacher's {t_stage!r} "
                    f"{t_c[1]} -> {t_c[0]}. Choose a pair of equal widths (e.g. wrn40_2 -> wrn16_2, resnet56 -> "
                    f"resnet20), or set method.student_layers / method.teacher_layers to stages that match.")
        self.watch(s_flat, t_flat)

    def fsp_term(self, s_feats, t_feats):
        return sum(fsp_loss(s_feats[si], s_feats[so], t_feats[ti], t_feats[to])
                   for (si, so), (ti, to) in zip(self.s_pairs, self.t_pairs))

    def losses(self, s_logits, t_logits, s_feats, t_feats, **_):
        terms = self.kd_term(s_logits, t_logits)
        if not self.init_stage_ran:
            terms["fsp"] = self.beta * self.fsp_term(s_feats, t_feats)
        return terms

    def init_losses(self, s_feats, t_feats, **_):
        self.mark_init_stage()
        return {"fsp": self.fsp_term(s_feats, t_feats)}

    def init_parameters(self):
        return self.student_parameters_up_to([out for _, out in self.s_pairs])  # the feature layers (RepDistiller)
