"""`at`: attention transfer, Zagoruyko & Komodakis 2017 ("Paying More Attention to Attention").

At each paired stage, the attention map of a feature map A (N x C x H x W) is
q = normalize_L2(flatten(mean_c A^p)) (`form: repdistiller`, distiller_zoo/AT.py, and the authors'
code, written for p = 2) or normalize_L2(flatten(mean_c |A|^p)) (`form: paper`, the paper's F^p_sum);
the two agree for even p. The term is mean((q_s - q_t)^2), summed over the stages (RepDistiller's form
of the paper's ||q_s - q_t||; p = 2, beta = 1000). Maps of different sizes are average-pooled to the
smaller one. Channel counts may differ: the map averages them out.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.feature import FeatureDistiller, match_spatial
from kdrun.methods.registry import METHODS
from kdrun.schema.choice import Choice

FORMS = ("repdistiller", "paper")


def attention_map(f: torch.Tensor, p: float, form: str = "repdistiller") -> torch.Tensor:
    powered = f.pow(p) if form == "repdistiller" else f.abs().pow(p)
    return F.normalize(powered.mean(1).flatten(1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0, form: str = "repdistiller") -> torch.Tensor:
    f_s, f_t = match_spatial(f_s, f_t)
    return (attention_map(f_s, p, form) - attention_map(f_t, p, form)).pow(2).mean()


class ATForm(Choice):
    repdistiller = "repdistiller"
    paper = "paper"


@dataclass
class ATConfig(WithFeatures):
    name: str = "at"
    ce_weight: Optional[float] = 1.0
    beta: float = 1000.0
    p: float = 2.0
    form: ATForm = ATForm.repdistiller


@METHODS.register("at")
class AttentionTransfer(FeatureDistiller):
    Config = ATConfig
    own_terms = ("at",)

    @classmethod
    def validate(cls, cfg):
        require(float(cfg.p) > 0, f"method.p (the power of A in the attention map) must be positive, got {cfg.p}.")
        require(cfg.form in FORMS, f"method.form is {cfg.form!r}; valid: repdistiller (mean_c A^p, RepDistiller's), "
                                   f"paper (mean_c |A|^p).")
        require(cfg.form == "paper" or float(cfg.p).is_integer(),
                f"method.p={cfg.p} with method.form=repdistiller raises A itself to the power p, which is undefined "
                f"for negative activations when p is not a whole number: use a whole p, or method.form=paper "
                f"(|A|^p, the same maps where A >= 0).")
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.p, self.form = float(cfg.p), str(cfg.form)
        self.s_paths, self.t_paths = self.layer_paths()
        self.require_maps(self.shapes(student, self.s_paths, "student"), self.s_paths, "student")
        self.require_maps(self.shapes(teacher, self.t_paths, "teacher"), self.t_paths, "teacher")
        self.watch(self.s_paths, self.t_paths)

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "at" in needed:
            out["at"] = sum(at_loss(batch.s_feats[s], batch.t_feats[t], self.p, self.form)
                            for s, t in zip(self.s_paths, self.t_paths))
        return out
