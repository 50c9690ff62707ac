"""`ft`: factor transfer, Kim et al. 2018 ("Paraphrasing Complex Network: Network Compression via
Factor Transfer", NeurIPS).

A paraphraser (teacher side: a conv autoencoder whose code has rate k of the teacher's channels) is
trained to reconstruct the teacher's last feature map; its code is the teacher factor F_t. A
translator (student side: three conv + BN + LeakyReLU layers) maps the student's last feature map to
a student factor F_s (both RepDistiller's Paraphraser and Translator, models/util.py). The term, beta
200 (RepDistiller's), compares the factors (`form`):
- `repdistiller` (distiller_zoo/FT.py, whose CRD-table numbers beta 200 was tuned for): each factor
  becomes q(F) = normalize(flatten(mean_c F^2)), a map of positions; the term is mean |q_s - q_t|;
- `paper`: the L1 distance between the L2-normalised, flattened factors, averaged over elements
  (torchdistill's form of the paper's ||F_t/|F_t| - F_s/|F_s| ||_1; about 3x smaller at the same beta).

The paraphraser must be trained before it can teach; its reconstruction term (`ft_paraphraser`,
`reconstruction`) is the plain MSE (`mse`, RepDistiller's nn.MSELoss) or the MSE divided by the
feature's mean square (`relative`, see `reconstruction_loss`); `auto` takes `mse` in the init stage
(the paper, RepDistiller: trained first, then frozen) and `relative` on `schedule=single`, where it is
trained in the same stage (weight 1; it sees only teacher features) while the translator and student
follow its current factor (detached).
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller, InitStage, match_spatial
from kdrun.methods.registry import METHODS
from kdrun.schema.choice import Choice

FORMS = ("repdistiller", "paper")
RECONSTRUCTIONS = ("auto", "mse", "relative")


def conv_stack(channels: list[int], transposed: bool = False, bn: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers = []
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [conv(c_in, c_out, 3, 1, 1), *([nn.BatchNorm2d(c_out)] if bn else []), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = conv_stack([channels, channels, factor_channels, factor_channels])
        self.decoder = conv_stack([factor_channels, factor_channels, channels, channels], transposed=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


def reconstruction_loss(reconstruction: torch.Tensor, f_t: torch.Tensor, kind: str = "relative") -> torch.Tensor:
    """`mse`: the plain MSE (RepDistiller). `relative`: the MSE relative to the feature's mean square. The
    paraphraser is (nearly) positively homogeneous, so this is the MSE of the feature scaled to unit size:
    the same minimiser, and gradients that do not grow with the square of the teacher's feature magnitudes
    (the plain MSE diverges at lr 0.05 on features of a trained WRN; RepDistiller trains it at 0.01)."""
    mse = F.mse_loss(reconstruction, f_t)
    return mse if kind == "mse" else mse / f_t.pow(2).mean().clamp_min(1e-12)


def spatial_factor(f: torch.Tensor) -> torch.Tensor:
    """RepDistiller's FactorTransfer.factor: the L2-normalised map of mean_c F^2 over positions."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


def ft_loss(factor_s: torch.Tensor, factor_t: torch.Tensor, form: str = "repdistiller") -> torch.Tensor:
    factor_s, factor_t = match_spatial(factor_s, factor_t)
    if form == "repdistiller":
        return (spatial_factor(factor_s) - spatial_factor(factor_t)).abs().mean()
    return F.l1_loss(F.normalize(factor_s.flatten(1), dim=1), F.normalize(factor_t.flatten(1), dim=1))


class FTForm(Choice):
    repdistiller = "repdistiller"
    paper = "paper"


class Reconstruction(Choice):
    auto = "auto"
    mse = "mse"
    relative = "relative"


@dataclass
class FTConfig(WithFeatures):
    name: str = "ft"
    ce_weight: Optional[float] = 1.0
    beta: float = 200.0
    rate: float = 0.5
    form: FTForm = FTForm.repdistiller
    reconstruction: Reconstruction = Reconstruction.auto


@METHODS.register("ft")
class FactorTransfer(InitStage, FeatureDistiller):
    Config = FTConfig
    term, init_term = "ft", "ft_paraphraser"

    @classmethod
    def validate(cls, cfg):
        require(0 < float(cfg.rate) <= 1,
                f"method.rate (factor channels / teacher channels, the paper's k) must lie in (0, 1], got {cfg.rate}.")
        require(cfg.form in FORMS, f"method.form is {cfg.form!r}; valid: repdistiller (L1 of the normalised "
                                   f"mean_c F^2 maps, RepDistiller's), paper (L1 of the normalised factors).")
        require(cfg.reconstruction in RECONSTRUCTIONS,
                f"method.reconstruction is {cfg.reconstruction!r}; valid: auto (mse in the init stage, relative "
                f"on schedule=single), mse (RepDistiller's), relative (the MSE over the feature's mean square).")
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.form = str(cfg.form)
        self.s_paths, self.t_paths = self.layer_paths(select=lambda paths, model: paths[-1:])
        require(len(self.s_paths) == 1,
                f"ft transfers one feature map: give one path in method.student_features and method.teacher_features, "
                f"got {self.s_paths} and {self.t_paths}.")
        s_shape = self.shapes(student, self.s_paths, "student")
        t_shape = self.shapes(teacher, self.t_paths, "teacher")
        self.require_maps(s_shape, self.s_paths, "student")
        self.require_maps(t_shape, self.t_paths, "teacher")
        s_c, t_c = s_shape[0][0], t_shape[0][0]
        k_c = max(1, int(t_c * float(cfg.rate)))
        self.paraphraser = Paraphraser(t_c, k_c)
        self.translator = conv_stack([s_c, s_c, k_c, k_c], bn=True)
        self.watch(self.s_paths, self.t_paths)

    def reconstruction(self, stage: str) -> str:
        kind = str(self.cfg.reconstruction)
        return kind if kind != "auto" else ("mse" if stage == "init" else "relative")

    def weights(self, epoch, phase="main"):
        """The init stage trains the paraphraser alone; then it stays frozen and `ft` stays on. Without an
        init stage the paraphraser learns its reconstruction (weight 1) beside `ft` (beta)."""
        if phase == "init":
            return {"ft_paraphraser": 1.0}
        weights = FeatureDistiller.weights(self, epoch, phase)
        weights["ft_paraphraser"] = 0.0 if self.init_stage_ran else 1.0
        return weights

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        f_t = batch.t_feats[self.t_paths[0]]
        if batch.phase == "main" and self.init_stage_ran:
            with torch.no_grad():
                factor_t = self.paraphraser.encoder(f_t)
        elif needed & {"ft", "ft_paraphraser"}:
            factor, reconstruction = self.paraphraser(f_t)
            if "ft_paraphraser" in needed:
                kind = self.reconstruction("init" if batch.phase == "init" else "single")
                out["ft_paraphraser"] = reconstruction_loss(reconstruction, f_t, kind)
            factor_t = factor.detach()
        if "ft" in needed:
            out["ft"] = ft_loss(self.translator(batch.s_feats[self.s_paths[0]]), factor_t, self.form)
        return out

    def init_parameters(self):
        return list(self.paraphraser.parameters())
