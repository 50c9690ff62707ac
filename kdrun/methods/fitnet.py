"""`fitnet`: hints, Romero et al. 2015 ("FitNets: Hints for Thin Deep Nets").

A regressor (conv + BN + ReLU, RepDistiller's ConvReg; linear + BN + ReLU for vectors) maps the
student's guided layer onto the teacher's hint layer; the term is the mean squared error between them.
Single stage (RepDistiller): CE + beta * hint, beta = 100, hint at the second stage's output.
Init stage (the paper's first stage): the student up to the guided layer and the regressor are
trained on the hint loss alone (`init_losses`, `init_parameters`); the main stage then drops the hint
(the paper's second stage: the whole student on CE, plus KD when alpha > 0).
"""
import torch.nn as nn
import torch.nn.functional as F

from kdrun.methods import METHODS
from kdrun.methods.feature import FeatureDistiller, InitStage, regressor


def second(paths: list[str], model=None) -> list[str]:
    return [paths[min(1, len(paths) - 1)]]


@METHODS.register("fitnet")
class FitNet(InitStage, FeatureDistiller):
    term = "fitnet"
    init_term = "fitnet_hint"

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.s_paths, self.t_paths = self.layer_paths(select=second)
        s_shapes = self.shapes(student, self.s_paths, "student")
        t_shapes = self.shapes(teacher, self.t_paths, "teacher")
        self.regressors = nn.ModuleList(regressor(s, t, relu=True) for s, t in zip(s_shapes, t_shapes))
        self.watch(self.s_paths, self.t_paths)

    def transfer_loss(self, s_feats, t_feats):
        return sum(F.mse_loss(reg(s_feats[s]), t_feats[t])
                   for reg, s, t in zip(self.regressors, self.s_paths, self.t_paths))

    def init_parameters(self):
        return self.student_parameters_up_to(self.s_paths, self.regressors)
