"""DenseNet-BC for CIFAR (Huang et al. 2017): `densenet` (keys `depth`, `growth`) and the DenseNets of
born-again networks (Furlanello et al. 2018, Tables 1-2): `densenet112_33`, `densenet90_60`,
`densenet80_80`, `densenet80_120`, named by depth and growth.

As Huang et al.'s code builds it (liuzhuang13/DenseNet models/densenet.lua; bamos/densenet.pytorch):
a 3x3 convolution to 2*growth channels, then three dense blocks of (depth-4)/6 bottleneck layers
(BN-ReLU-conv1x1 to 4*growth, BN-ReLU-conv3x3 to growth, the result concatenated to the layer's
input), a transition after the first two (BN-ReLU-conv1x1 to floor(compression*channels), 2x2 average
pooling), and the final BN-ReLU, global average pooling and the classifier. No convolution has a bias;
`drop_rate` puts dropout after each convolution of the dense layers and transitions, where the Lua code
puts it (off by default, as for CIFAR with augmentation and in BAN). State_dict keys are those of
bamos/densenet.pytorch (`dense1.0.conv1.weight`, `trans1.conv1.weight`, `bn1.weight`, `fc.weight`).

BAN's labels 90 and 80 are not 6n+4. Huang et al.'s code takes N = (depth-4)/3/2 layers a block and its
loop stops at the whole part: 14 layers for 90 and 12 for 80, what depth 88 and 76 build. The named
models are those; `densenet` itself refuses a depth that is not 6n+4. BAN's stated sizes (Table 1,
6.3M, 16.1M, 22.4M, 50.4M) are not those of any DenseNet-BC with equal blocks: ours are 6.89M, 15.05M,
20.95M and 47.05M on CIFAR-10 (see tests/test_densenet.py).

Features: each stage is a dense block's output after the BN-ReLU that consumes it: the transition's
(`trans1.relu`, `trans2.relu`) and, for the last, the final one (`relu`, the map that is pooled). Its
pre-activation is that ReLU's input, the BN's output itself (`preact_bn`: `trans1.bn1`, `trans2.bn1`, `bn1`).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from kdrun.models import args
from kdrun.models.registry import MODELS
from kdrun.models.weights import init_reference


def valid_depths(depth) -> str:
    """What `depth` takes, naming the valid depths nearest to the one given."""
    near = ""
    if isinstance(depth, int) and not isinstance(depth, bool):
        below = 4 + 6 * ((depth - 4) // 6)
        near = f"; near {depth}: " + (f"{below} and {below + 6}" if below >= 10 else "10")
    return (f"6n+4 with n of 1 or more (10, 16, 22, 28, 34, 40, ..., 100, ...{near}). BAN's DenseNet-90-60, "
            f"-80-80 and -80-120 are densenet90_60, densenet80_80 and densenet80_120 (depth 88, 76 and 76: the "
            f"layers Huang et al.'s code builds for 90 and 80)")


class Bottleneck(nn.Module):
    """BN-ReLU-conv1x1 (4*growth) - BN-ReLU-conv3x3 (growth); its output is its input with the new maps after it."""

    def __init__(self, in_planes: int, growth: int, drop_rate: float = 0.0):
        super().__init__()
        inter = 4 * growth
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, inter, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(inter, growth, kernel_size=3, padding=1, bias=False)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.conv1(self.relu1(self.bn1(x))))
        out = self.drop(self.conv2(self.relu2(self.bn2(out))))
        return torch.cat((x, out), 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (compressed) - 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.drop(self.conv1(self.relu(self.bn1(x)))))


class DenseNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size, depth: int = 100, growth: int = 12,
                 compression: float = 0.5, drop_rate: float = 0.0):
        super().__init__()
        ok = isinstance(depth, int) and not isinstance(depth, bool) and depth >= 10 and (depth - 4) % 6 == 0
        args.check(ok, "depth", depth, valid_depths(depth))
        args.count("growth", growth)
        args.check(isinstance(compression, (int, float)) and 0 < compression <= 1, "compression", compression,
                   "a fraction in (0, 1] (0.5 in DenseNet-BC; 1 keeps every channel)")
        args.probability("drop_rate", drop_rate)
        h, w = args.side(image_size)
        if min(h, w) < 4:
            raise args.InputTooSmall(4, " (its two transitions halve them)")
        n = (depth - 4) // 6
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False)
        self.dense1, channels = self._dense(channels, growth, n, drop_rate)
        self.trans1, channels = self._transition(channels, compression, drop_rate)
        self.dense2, channels = self._dense(channels, growth, n, drop_rate)
        self.trans2, channels = self._transition(channels, compression, drop_rate)
        self.dense3, channels = self._dense(channels, growth, n, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)  # the original's avg_pool2d(8) on 32x32 inputs
        self.fc = nn.Linear(channels, num_classes)

        init_reference(self)  # He-normal (fan-out) convolutions, BN 1 and 0, a zero classifier bias: as the reference

    @staticmethod
    def _dense(channels: int, growth: int, n: int, drop_rate: float) -> tuple[nn.Sequential, int]:
        layers = [Bottleneck(channels + i * growth, growth, drop_rate) for i in range(n)]
        return nn.Sequential(*layers), channels + n * growth

    @staticmethod
    def _transition(channels: int, compression: float, drop_rate: float) -> tuple[Transition, int]:
        out = int(channels * compression)  # math.floor, as the reference
        args.check(out >= 1, "compression", compression, f"a fraction that keeps at least one of {channels} channels")
        return Transition(channels, out, drop_rate), out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.dense1(self.conv1(x)))
        x = self.trans2(self.dense2(x))
        x = self.relu(self.bn1(self.dense3(x)))
        return self.fc(self.pool(x).flatten(1))

    def feature_points(self) -> dict[str, list[str]]:
        return {
            "stages": ["trans1.relu", "trans2.relu", "relu"],
            "preact": ["trans1.relu:in", "trans2.relu:in", "relu:in"],
            "preact_bn": ["trans1.bn1", "trans2.bn1", "bn1"],  # each preact is its output
            "embedding": ["fc:in"],
            "stem": ["conv1"],
            "feature_layers": ["conv1", "dense1", "trans1", "dense2", "trans2", "dense3", "bn1"],
        }


MODELS.register("densenet", DenseNet)
# BAN's DenseNets (Furlanello et al. 2018, Tables 1-2): the name is BAN's depth-growth label; the depth is
# the one with the layers Huang et al.'s code builds for that label (see the module docstring).
BAN = {"densenet112_33": (112, 33), "densenet90_60": (88, 60), "densenet80_80": (76, 80), "densenet80_120": (76, 120)}
for _name, (_depth, _growth) in BAN.items():
    MODELS.register(_name, partial(DenseNet, depth=_depth, growth=_growth))
