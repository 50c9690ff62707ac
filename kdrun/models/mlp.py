"""Multi-layer perceptrons, Hinton et al. 2015's MNIST nets among them (two hidden ReLU layers)."""
from __future__ import annotations

from functools import partial
from math import prod
from typing import Optional

import torch
import torch.nn as nn

from kdrun.models import args
from kdrun.models.maxout import cap_norms_
from kdrun.models.registry import MODELS


class MaxNormLinear(nn.Linear):
    """A linear layer whose units' incoming weight vectors are capped at L2 norm `max_norm` after every
    optimiser step (the max-norm constraint of the dropout papers: Hinton et al. 2012, Srivastava et al. 2014)."""

    def __init__(self, in_features: int, out_features: int, max_norm: float):
        super().__init__(in_features, out_features)
        self.max_norm = max_norm

    def constrain_(self) -> None:
        cap_norms_(self.weight, self.max_norm)


class MLP(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size, hidden=(1200, 1200),
                 dropout: float = 0.0, input_dropout: float = 0.0, max_norm: Optional[float] = None):
        super().__init__()
        args.counts("hidden", hidden, what="layer widths")
        args.probability("dropout", dropout)
        args.probability("input_dropout", input_dropout)
        args.positive("max_norm", max_norm, nullable=True)
        width = in_channels * prod(image_size)
        self.input_dropout = nn.Dropout(input_dropout)
        layers = []
        for h in hidden:
            linear = nn.Linear(width, h) if max_norm is None else MaxNormLinear(width, h, max_norm)
            layers.append(nn.Sequential(linear, nn.ReLU(inplace=False), nn.Dropout(dropout)))
            width = h
        self.hidden = nn.ModuleList(layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(x.flatten(1))
        for layer in self.hidden:
            x = layer(x)
        return self.fc(x)

    def feature_points(self) -> dict[str, list[str]]:
        """Where methods read features: stage outputs, their pre-activations, the classifier's input."""
        n = len(self.hidden)
        return {
            "stages": [f"hidden.{i}.1" for i in range(n)],
            "preact": [f"hidden.{i}.0" for i in range(n)],
            "embedding": ["fc:in"],
        }


MODELS.register("mlp", MLP)
MODELS.register("mlp_1200", partial(MLP, hidden=(1200, 1200)))
MODELS.register("mlp_800", partial(MLP, hidden=(800, 800)))
