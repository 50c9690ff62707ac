"""`ab`: activation boundaries, Heo et al. 2019 ("Knowledge Transfer via Distillation of Activation
Boundaries Formed by Hidden Neurons", AAAI).

The student's pre-activations, through a connector (1x1 conv + BN; linear + BN for vectors), learn
the teacher's activation pattern (which neurons fire) with the paper's margin loss:
sum over neurons of (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0],
per sample, scaled by 3/1000 (the authors' code), stage i of n weighted 2^(i - n + 1) (the deepest 1).
The paper trains the student (up to its last pre-activation read) and the connectors on this loss first (the init stage), then the task alone;
on `schedule=single` the term is added to CE, weighted by beta.
"""
import torch
import torch.nn as nn

from kdrun.errors import require
from kdrun.methods import METHODS
from kdrun.methods.feature import FeatureDistiller, InitStage, regressor


def ab_margin_loss(s: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    """Sum over neurons of the margin loss, averaged over the batch (before the 3/1000 scaling)."""
    off = (s + margin).pow(2) * ((s > -margin) & (t <= 0))
    on = (s - margin).pow(2) * ((s <= margin) & (t > 0))
    return (off + on).sum() / s.shape[0]


@METHODS.register("ab")
class ActivationBoundaries(InitStage, FeatureDistiller):
    term = "ab"
    point = "preact"

    @classmethod
    def validate(cls, cfg):
        require(float(cfg.margin) > 0, f"method.margin (of the activation-boundary loss) must be positive, got {cfg.margin}.")
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.margin = float(cfg.margin)
        self.s_paths, self.t_paths = self.layer_paths()
        s_shapes = self.shapes(student, self.s_paths, "student")
        t_shapes = self.shapes(teacher, self.t_paths, "teacher")
        self.connectors = nn.ModuleList(regressor(s, t, relu=False) for s, t in zip(s_shapes, t_shapes))
        n = len(self.s_paths)
        self.stage_weights = [2.0 ** (i - n + 1) for i in range(n)]
        self.watch(self.s_paths, self.t_paths)

    def transfer_loss(self, s_feats, t_feats):
        return sum(w * ab_margin_loss(conn(s_feats[s]), t_feats[t], self.margin) * 3 / 1000
                   for w, conn, s, t in zip(self.stage_weights, self.connectors, self.s_paths, self.t_paths))

    def init_parameters(self):
        return self.student_parameters_up_to(self.s_paths, self.connectors)  # RepDistiller: the feature layers
