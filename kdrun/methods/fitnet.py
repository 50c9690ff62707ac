"""`fitnet`: hints, Romero et al. 2015 ("FitNets: Hints for Thin Deep Nets").

A regressor maps the student's guided layer onto the teacher's hint layer; the term is the mean
squared error between them. `regressor: conv_bn_relu`: conv + BN + ReLU (RepDistiller's ConvReg;
linear + BN + ReLU for vectors). `regressor: maxout`: the paper's, for maxout teachers (the regressor
ends in the hint layer's non-linearity): a valid maxout conv of kernel 1 + (student side - teacher
side), 2 pieces, weights in U(-0.05, 0.05), norms capped at 0.9 (the authors' fitnets_stage1.py).
Single stage (RepDistiller): CE + beta * hint, beta = 100, hint at the second stage's output.
Init stage (the paper's first stage): the student up to the guided layer and the regressor are
trained on the hint loss alone (phase `init`, `init_parameters`); the main stage then drops the hint
(the paper's second stage: the whole student on CE, plus KD when alpha > 0).
"""
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch.nn as nn
import torch.nn.functional as F

from kdrun.errors import UserError, require
from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller, InitStage, regressor
from kdrun.methods.registry import METHODS
from kdrun.models.maxout import MaxoutConv
from kdrun.schema.choice import Choice

REGRESSORS = ("conv_bn_relu", "maxout")


def regressor_kind(cfg) -> str:
    return cfg.get("regressor", "conv_bn_relu")


def second(paths: list[str], model=None) -> list[str]:
    return [paths[min(1, len(paths) - 1)]]


class Regressor(Choice):
    conv_bn_relu = "conv_bn_relu"
    maxout = "maxout"


@dataclass
class FitNetConfig(WithFeatures):
    name: str = "fitnet"
    ce_weight: Optional[float] = 1.0
    beta: float = 100.0
    regressor: Regressor = Regressor.conv_bn_relu


@METHODS.register("fitnet")
class FitNet(InitStage, FeatureDistiller):
    Config = FitNetConfig

    term = "fitnet"
    init_term = "fitnet_hint"

    @classmethod
    def validate(cls, cfg) -> None:
        kind = regressor_kind(cfg)
        require(kind in REGRESSORS, f"method.regressor must be one of {', '.join(REGRESSORS)}, got {kind!r}.")
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.s_paths, self.t_paths = self.layer_paths(select=second)
        s_shapes = self.shapes(student, self.s_paths, "student")
        t_shapes = self.shapes(teacher, self.t_paths, "teacher")
        build = maxout_regressor if regressor_kind(cfg) == "maxout" else partial(regressor, relu=True)
        self.regressors = nn.ModuleList(build(s, t) for s, t in zip(s_shapes, t_shapes))
        self.watch(self.s_paths, self.t_paths)

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        for name in needed & {"fitnet", "fitnet_hint"}:  # the hint term: "fitnet_hint" in the init stage
            out[name] = sum(F.mse_loss(reg(batch.s_feats[s]), batch.t_feats[t])
                            for reg, s, t in zip(self.regressors, self.s_paths, self.t_paths))
        return out

    def init_parameters(self):
        return self.student_parameters_up_to(self.s_paths, self.regressors)


def maxout_regressor(s_shape: tuple, t_shape: tuple) -> nn.Module:
    if len(s_shape) != 3 or len(t_shape) != 3 or s_shape[1] < t_shape[1] or s_shape[2] < t_shape[2]:
        raise UserError(f"method.regressor=maxout maps a feature map onto one as large or smaller (a valid conv), "
                        f"but the student's guided layer is {s_shape} and the teacher's hint {t_shape}. Choose "
                        f"other layers, or method.regressor=conv_bn_relu.")
    (sc, sh, sw), (tc, th, tw) = s_shape, t_shape
    return MaxoutConv(sc, tc, pieces=2, kernel=(1 + sh - th, 1 + sw - tw), padding=0, pool=None, max_norm=0.9,
                      irange=0.05, lr_scale=None)
