"""ResNet-18/34/50 with the ImageNet layout (4 stages, 64-128-256-512 channels, bottlenecks x4 for
ResNet-50) and a 3x3 stride-1 stem for 32x32 inputs, as in RepDistiller's resnetv2.py: `resnet18`,
`resnet34`, `resnet50` (the ResNet50 teacher of the CRD table's cross-architecture pairs).

Each block ends in its own `relu_out`, so `layerK.LAST.relu_out:in` reads a stage's pre-activation.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from kdrun.models import args
from kdrun.models.weights import init_reference
from kdrun.models.registry import MODELS


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu_out(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(in_planes, planes * 4, stride)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        return self.relu_out(self.bn3(self.conv3(out)) + self.shortcut(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetImageNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size, block: str = "bottleneck",
                 num_blocks=(3, 4, 6, 3)):
        super().__init__()
        args.one_of("block", block, BLOCKS)
        args.counts("num_blocks", num_blocks, length=4, what="block counts")
        block_cls = BLOCKS[block]
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block_cls, 64, num_blocks[0], 1)
        self.layer2 = self._make_layer(block_cls, 128, num_blocks[1], 2)
        self.layer3 = self._make_layer(block_cls, 256, num_blocks[2], 2)
        self.layer4 = self._make_layer(block_cls, 512, num_blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block_cls.expansion, num_classes)

        init_reference(self, linear_zero_bias=False)

    def _make_layer(self, block_cls, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(block_cls(self.in_planes, planes, stride if i == 0 else 1))
            self.in_planes = planes * block_cls.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.avgpool(x).flatten(1))

    def feature_points(self) -> dict[str, list[str]]:
        layers = ["layer1", "layer2", "layer3", "layer4"]
        last_bn = "bn3" if isinstance(self.layer1[0], Bottleneck) else "bn2"
        return {
            "stages": layers,
            "preact": [f"{name}.{len(getattr(self, name)) - 1}.relu_out:in" for name in layers],
            # bn2 (basic) or bn3 (bottleneck) + shortcut: the residual branch's last BN (the OFD authors'
            # get_bn_before_relu of their ImageNet ResNets)
            "preact_bn": [f"{name}.{len(getattr(self, name)) - 1}.{last_bn}" for name in layers],
            "embedding": ["linear:in"],
            "stem": ["relu"],
            "feature_layers": ["conv1", "bn1", *layers],
        }


MODELS.register("resnet18", partial(ResNetImageNet, block="basic", num_blocks=(2, 2, 2, 2)))
MODELS.register("resnet34", partial(ResNetImageNet, block="basic", num_blocks=(3, 4, 6, 3)))
MODELS.register("resnet50", partial(ResNetImageNet, block="bottleneck", num_blocks=(3, 4, 6, 3)))
