"""CIFAR ResNets (He et al. 2016) as in RepDistiller's resnet.py: `resnet8` ... `resnet110` (16-32-64
channels, 6n+2 layers) and the 4x wider `resnet8x4`, `resnet32x4` of the CRD table (32-64-128-256).

Each block ends in its own `relu_out`, so `layerK.LAST.relu_out:in` reads a stage's pre-activation.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from kdrun.models import args
from kdrun.models.weights import init_reference
from kdrun.models.registry import MODELS


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu_out(out + residual)


class ResNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size, depth: int = 20,
                 num_filters=(16, 16, 32, 64)):
        super().__init__()
        args.check(depth >= 8 and (depth - 2) % 6 == 0, "depth", depth, "6n+2 with n of 1 or more (8, 14, 20, 32, 44, 56, 110, ...)")
        args.counts("num_filters", num_filters, length=4, what="channel counts")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the original's AvgPool2d(8) on 32x32 inputs
        self.fc = nn.Linear(num_filters[3], num_classes)

        init_reference(self, linear_zero_bias=False)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))

    def feature_points(self) -> dict[str, list[str]]:
        layers = ["layer1", "layer2", "layer3"]
        return {
            "stages": layers,
            "preact": [f"{name}.{len(getattr(self, name)) - 1}.relu_out:in" for name in layers],
            # bn2(out) + shortcut: the residual branch's last BN (the OFD authors' get_bn_before_relu)
            "preact_bn": [f"{name}.{len(getattr(self, name)) - 1}.bn2" for name in layers],
            "embedding": ["fc:in"],
            "stem": ["relu"],
            "feature_layers": ["conv1", "bn1", "relu", *layers],
        }


MODELS.register("resnet", ResNet)
for _depth in (8, 14, 20, 32, 44, 56, 110):
    MODELS.register(f"resnet{_depth}", partial(ResNet, depth=_depth))
for _depth in (8, 32):
    MODELS.register(f"resnet{_depth}x4", partial(ResNet, depth=_depth, num_filters=(32, 64, 128, 256)))
