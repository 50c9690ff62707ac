"""`ab`: activation boundaries, Heo et al. 2019 ("Knowledge Transfer via Distillation of Activation
Boundaries Formed by Hidden Neurons", AAAI).

The student's pre-activations, through a connector, learn the teacher's activation pattern (which
neurons fire) with the paper's margin loss:
sum over neurons of (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0],
per sample, scaled by 3/1000 (the authors' code), stage i of n weighted 2^(i - n + 1) (the deepest 1).

Connectors (`connector`): `auto` (RepDistiller's `Connector` in models/util.py, and the authors' code)
is no layer where the student's and teacher's maps have the same shape, else a conv + BN
(RepDistiller's ConvReg without ReLU; linear + BN for vectors); `always` puts the conv + BN on every
stage (torchdistill's Connector4DAB).

The init stage trains the connectors and (`init_trains`) the student's `feature_layers` up to the last
pre-activation read, the rest of the student in eval mode (RepDistiller's `get_feat_modules()` and
helper/pretrain.py: for a WRN, conv1 and the blocks, not the final bn1 whose output is the third
target), or the whole `student` in train mode (the authors' cifar10_AB_distillation.py). Then the
task alone; on `schedule=single` the term is added to CE, weighted by beta.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller, InitStage, regressor
from kdrun.methods.registry import METHODS
from kdrun.schema.choice import Choice

CONNECTORS = ("auto", "always")
INIT_TRAINS = ("feature_layers", "student")


def ab_margin_loss(s: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    """Sum over neurons of the margin loss, averaged over the batch (before the 3/1000 scaling)."""
    off = (s + margin).pow(2) * ((s > -margin) & (t <= 0))
    on = (s - margin).pow(2) * ((s <= margin) & (t > 0))
    return (off + on).sum() / s.shape[0]


def connector(s_shape: tuple, t_shape: tuple, kind: str) -> nn.Module:
    if kind == "auto" and tuple(s_shape) == tuple(t_shape):
        return nn.Identity()
    return regressor(s_shape, t_shape, relu=False)


class Connector(Choice):
    auto = "auto"
    always = "always"


class InitTrains(Choice):
    feature_layers = "feature_layers"
    student = "student"


@dataclass
class ABConfig(WithFeatures):
    name: str = "ab"
    ce_weight: Optional[float] = 1.0
    margin: float = 1.0
    connector: Connector = Connector.auto
    init_trains: InitTrains = InitTrains.feature_layers


@METHODS.register("ab")
class ActivationBoundaries(InitStage, FeatureDistiller):
    Config = ABConfig

    term = "ab"
    point = "preact"

    @classmethod
    def validate(cls, cfg):
        require(float(cfg.margin) > 0, f"method.margin (of the activation-boundary loss) must be positive, got {cfg.margin}.")
        require(cfg.connector in CONNECTORS,
                f"method.connector is {cfg.connector!r}; valid: auto (no layer where the maps' shapes match, "
                f"RepDistiller's and the authors'), always (a conv + BN on every stage, torchdistill's).")
        require(cfg.init_trains in INIT_TRAINS,
                f"method.init_trains is {cfg.init_trains!r}; valid: feature_layers (RepDistiller's init stage), "
                f"student (the whole student, the AB authors' code).")
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.margin = float(cfg.margin)
        self.s_paths, self.t_paths = self.layer_paths()
        s_shapes = self.shapes(student, self.s_paths, "student")
        t_shapes = self.shapes(teacher, self.t_paths, "teacher")
        self.connectors = nn.ModuleList(connector(s, t, str(cfg.connector)) for s, t in zip(s_shapes, t_shapes))
        n = len(self.s_paths)
        self.stage_weights = [2.0 ** (i - n + 1) for i in range(n)]
        self.watch(self.s_paths, self.t_paths)

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "ab" in needed:  # the same name in both phases
            out["ab"] = sum(w * ab_margin_loss(conn(batch.s_feats[s]), batch.t_feats[t], self.margin) * 3 / 1000
                            for w, conn, s, t in zip(self.stage_weights, self.connectors, self.s_paths, self.t_paths))
        return out

    def init_parameters(self):
        if self.cfg.init_trains == "student":
            return list(self.student.parameters()) + list(self.connectors.parameters())
        return self.student_parameters_up_to(self.s_paths, self.connectors, feature_layers_only=True)
