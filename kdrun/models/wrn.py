"""Wide ResNets (Zagoruyko & Komodakis 2016), as in RepDistiller's wrn.py: `wrn{depth}_{width}`.

Pre-activation blocks: a stage's output is the residual sum, not yet through BN-ReLU. Its
pre-activation (the tensor whose ReLU the next layer consumes, RepDistiller's `preact=True`) is the
input of the next stage's first `relu1`, or of the final `relu` after the last stage.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdrun.models import args
from kdrun.models.weights import init_reference
from kdrun.models.registry import MODELS


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        # The attribute name keeps RepDistiller's state_dict keys (their checkpoints load as they are).
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        # With a projection shortcut both branches start from the activated input, as in the paper's code.
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(n)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size, depth: int = 16, width: int = 1,
                 drop_rate: float = 0.0):
        super().__init__()
        args.check(depth >= 10 and (depth - 4) % 6 == 0, "depth", depth, "6n+4 with n of 1 or more (10, 16, 22, 28, 40, ...)")
        args.count("width", width)
        args.probability("drop_rate", drop_rate)
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)  # the original's avg_pool2d(8) on 32x32 inputs
        self.fc = nn.Linear(channels[3], num_classes)

        init_reference(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.pool(self.relu(self.bn1(x)))
        return self.fc(x.flatten(1))

    def feature_points(self) -> dict[str, list[str]]:
        return {
            "stages": ["block1", "block2", "block3"],
            "preact": ["block2.layer.0.relu1:in", "block3.layer.0.relu1:in", "relu:in"],
            "preact_bn": ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"],  # each preact is its output
            "embedding": ["fc:in"],
            "stem": ["conv1"],
            "feature_layers": ["conv1", "block1", "block2", "block3"],
        }


MODELS.register("wrn", WideResNet)
for _depth in (10, 16, 22, 28, 40):
    for _width in (1, 2, 4, 8, 10):
        MODELS.register(f"wrn{_depth}_{_width}", partial(WideResNet, depth=_depth, width=_width))
