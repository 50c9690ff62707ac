"""MobileNetV2 for CIFAR as in RepDistiller's mobilenetv2.py; `mobilenetv2` is their `mobile_half`
(expansion 6, width 0.5), the student of the CRD table.

Blocks end in a linear bottleneck (no ReLU), so a stage's output is its own pre-activation.
"""
from __future__ import annotations


import torch
import torch.nn as nn
from kdrun.models import args
from kdrun.models.weights import init_reference
from kdrun.models.registry import MODELS

# expansion t, channels c, blocks n, first stride s
SETTING = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
           (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]


def conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup), nn.ReLU())


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),  # pointwise
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # pointwise, linear
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size, expansion: int = 6,
                 width_mult: float = 0.5):
        super().__init__()
        args.count("expansion", expansion)
        # every layer keeps at least one channel: the narrowest, 16, times width_mult
        args.check(width_mult >= 1 / 16, "width_mult", width_mult, "a number of 0.0625 or more (the width factor)")
        channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(in_channels, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTING:
            out = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t or expansion))
                channels = out
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(channels, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the original's AvgPool2d(2) on 32x32 inputs
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))

        init_reference(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        x = self.avgpool(self.conv2(x))
        return self.classifier(x.flatten(1))

    def feature_points(self) -> dict[str, list[str]]:
        stages = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]  # RepDistiller's f1..f4
        # Each stage's last linear-bottleneck BN: the stage's output, or its input plus it where that block
        # is residual (blocks 1, 2, 4; the OFD authors' MobileNetV2 reads the same BN for its last point).
        bns = [f"{s}.{len(self.blocks[int(s.split('.')[1])]) - 1}.conv.7" for s in stages]
        return {"stages": stages, "preact": list(stages), "preact_bn": bns, "embedding": ["classifier.0:in"],
                "stem": ["conv1"], "feature_layers": ["conv1", "blocks"]}


MODELS.register("mobilenetv2", MobileNetV2)
