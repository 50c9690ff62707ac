"""VGG with batch norm for CIFAR, as in RepDistiller's vgg.py (no hidden FC layers): `vgg8`, `vgg11`,
`vgg13`, `vgg16`, `vgg19`.

Five conv blocks; each block ends at a BatchNorm (its output is the pre-activation) and is followed
by its own `reluK`. Max-pooling between blocks; the pool before the last block only on inputs of
64 pixels or more, as in the original (on 32x32 the last two blocks run at 4x4).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from kdrun.models import args
from kdrun.models.weights import init_reference
from kdrun.models.registry import MODELS

CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def conv_block(widths: list[int], in_channels: int) -> nn.Sequential:
    layers = []
    for v in widths:
        layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
        in_channels = v
    return nn.Sequential(*layers[:-1])  # the block's last ReLU is the model's reluK


class VGG(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size, variant: str = "vgg13"):
        super().__init__()
        args.one_of("variant", variant, CONFIGS)
        cfg = CONFIGS[variant]
        self.block0 = conv_block(cfg[0], in_channels)
        self.block1 = conv_block(cfg[1], cfg[0][-1])
        self.block2 = conv_block(cfg[2], cfg[1][-1])
        self.block3 = conv_block(cfg[3], cfg[2][-1])
        self.block4 = conv_block(cfg[4], cfg[3][-1])
        for k in range(5):
            setattr(self, f"relu{k}", nn.ReLU())
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2) if min(_pair(image_size)) >= 64 else nn.Identity()
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[4][-1], num_classes)

        init_reference(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.pool3(self.relu3(self.block3(x)))
        x = self.pool4(self.relu4(self.block4(x)))
        return self.classifier(x.flatten(1))

    def feature_points(self) -> dict[str, list[str]]:
        return {
            "stages": ["relu1", "relu2", "relu3", "relu4"],
            "preact": ["block1", "block2", "block3", "block4"],
            "preact_bn": [f"block{k}.{len(getattr(self, f'block{k}')) - 1}" for k in range(1, 5)],  # each block's BN
            "embedding": ["classifier:in"],
            "stem": ["relu0"],
            "feature_layers": [name for k in range(5) for name in (f"block{k}", f"pool{k}")],
        }


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


for _name in CONFIGS:
    MODELS.register(_name, partial(VGG, variant=_name))
