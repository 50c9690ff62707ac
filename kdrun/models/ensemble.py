"""A teacher ensemble (Hinton et al. 2015): members' probabilities averaged, arithmetically or geometrically.

The normalised geometric mean of softmax(z_i / T) is softmax(mean_i z_i / T): the members' logits
are averaged. The arithmetic mean depends on T, so KD asks for the members' logits (`member_logits`)
and averages at its own temperature; `forward` gives the ensemble's log-probabilities at T = 1
(for its accuracy).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ENSEMBLE_MEANS = ("arithmetic", "geometric")


def ensemble_probs(member_logits: torch.Tensor, T: float, mean: str) -> torch.Tensor:
    """members x batch x classes logits -> batch x classes probabilities."""
    z = member_logits.float() / T
    if mean == "geometric":
        return F.softmax(z.mean(0), dim=1)
    return F.softmax(z, dim=2).mean(0)


class TeacherEnsemble(nn.Module):
    def __init__(self, members: list[nn.Module], mean: str = "arithmetic"):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.mean = mean

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble_probs(self.member_logits(x), 1.0, self.mean).clamp_min(1e-12).log()
