"""Network in Network (Lin et al. 2014) as the attention-transfer authors built it: `nin_wide`, `nin_thin`.

Zagoruyko & Komodakis (ICLR 2017, Table 1) distil NIN-wide (1M parameters) into NIN-thin (0.2M) on
CIFAR-10. Their attention-transfer code has no NIN (its CIFAR code is WRN only; the original runs
were in torch-autograd), so NIN-wide is the NIN of the first author's Wide-ResNet code
(szagoruyko/wide-residual-networks, models/nin.lua: "a modified version of NIN network in
szagoruyko/cifar.torch: removed dropout, added BatchNorm, the last layer changed from avg-pooling to
linear"; its CIFAR-10 log, logs/nin_1875527964, reaches 92.64 %), layer for layer:

    block1: conv5x5 192 (pad 2) - conv1x1 160 - conv1x1 96      32x32
    maxpool 3x3 stride 2 (ceil)                                  -> 16x16
    block2: conv5x5 192 (pad 2) - conv1x1 192 - conv1x1 192      16x16
    avgpool 3x3 stride 2 (ceil)                                  -> 8x8
    block3: conv3x3 192 (pad 1) - conv1x1 192 - conv1x1 192      8x8
    global average pool (the original's 8x8 one), linear 192 -> classes

every conv bias-free and followed by BatchNorm and ReLU: 1,005,642 parameters for CIFAR-10 (the
log's 1,007,242 counts 1,600 conv biases that cudnn.convert put back). NIN-thin's layer list is
published nowhere; `nin_thin` halves every width (96-80-48, 96-96-96, 96-96-96): 256,298 parameters,
which the paper's one-decimal rounding would print as 0.3M, not its 0.2M, so the thin net may differ.
`widths` (the nine conv widths) builds any other. `dropout` (0: the authors' NIN) drops after the
first two pools, where Lin et al. and cifar.torch's nin.lua put it.

Initialisation as the authors' Torch code: conv weights N(0, 2 / (k^2 C_in)) (utils.lua's MSRinit),
BN weight U(0, 1) and bias 0 (Torch's BatchNormalization reset), the linear layer Torch's / PyTorch's
default with a zero bias (FCinit).

Feature points: the stages (AT's attention points) are the three blocks' outputs, each its last ReLU's
output before the pool (32x32, 16x16, 8x8 on CIFAR); each preact is that ReLU's input, the output of
the block's last BN (`preact_bn`).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn

from kdrun.models import args
from kdrun.models.registry import MODELS

WIDE = (192, 160, 96, 192, 192, 192, 192, 192, 192)
THIN = tuple(w // 2 for w in WIDE)
KERNELS = (5, 1, 1, 5, 1, 1, 3, 1, 1)


def conv_bn_relu(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class NIN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size, widths: tuple[int, ...] = WIDE,
                 dropout: float = 0.0):
        super().__init__()
        args.counts("widths", widths, length=9, what="conv widths (three per block)")
        args.probability("dropout", dropout)
        h, w = args.side(image_size)
        if min(h, w) < 4:
            raise args.InputTooSmall(4, " (two 3x3 stride-2 pools)")
        widths = [int(c) for c in widths]
        channels = [in_channels] + widths
        layers = [conv_bn_relu(channels[i], channels[i + 1], KERNELS[i]) for i in range(9)]
        self.block1 = nn.Sequential(*layers[0], *layers[1], *layers[2])
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.drop1 = nn.Dropout(dropout)
        self.block2 = nn.Sequential(*layers[3], *layers[4], *layers[5])
        self.pool2 = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.drop2 = nn.Dropout(dropout)
        self.block3 = nn.Sequential(*layers[6], *layers[7], *layers[8])
        self.pool = nn.AdaptiveAvgPool2d(1)  # the original's 8x8 average pool on 32x32 inputs
        self.fc = nn.Linear(widths[-1], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.in_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.0, 1.0)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.pool1(self.block1(x)))
        x = self.drop2(self.pool2(self.block2(x)))
        x = self.pool(self.block3(x))
        return self.fc(x.flatten(1))

    def feature_points(self) -> dict[str, list[str]]:
        blocks = ["block1", "block2", "block3"]
        return {
            "stages": blocks,  # each block's last ReLU's output, before the pool
            "preact": [f"{b}.8:in" for b in blocks],
            "preact_bn": [f"{b}.7" for b in blocks],  # Conv-BN-ReLU: each preact is this BN's output
            "embedding": ["fc:in"],
            "feature_layers": blocks,
        }


MODELS.register("nin", NIN)
MODELS.register("nin_wide", partial(NIN, widths=WIDE))
MODELS.register("nin_thin", partial(NIN, widths=THIN))
