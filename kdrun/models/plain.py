"""TAKD's plain CNNs (Mirzadeh et al. 2020, "Improved Knowledge Distillation via Teacher Assistant"):
`plain2` ... `plain10`, the layer lists of their plain_cnn_cifar.py.

TAKD has one list per dataset (CIFAR-10's narrower nets, CIFAR-100's wider ones) and picks it by the
class count; `variant: auto` does the same (the CIFAR-10 list up to 10 classes). Each conv is
Conv3x3-BN-ReLU; the classifier flattens the last feature map (no global pooling), so its input
width follows the image size. Module names follow TAKD's, so their checkpoints load.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from kdrun.models import args
from kdrun.models.registry import MODELS

BOOKS = {
    "cifar10": {
        2: ["Conv16", "MaxPool", "Conv16", "MaxPool", "FC10"],
        4: ["Conv16", "Conv16", "MaxPool", "Conv32", "Conv32", "MaxPool", "FC10"],
        6: ["Conv16", "Conv16", "MaxPool", "Conv32", "Conv32", "MaxPool", "Conv64", "Conv64", "MaxPool", "FC10"],
        8: ["Conv16", "Conv16", "MaxPool", "Conv32", "Conv32", "MaxPool", "Conv64", "Conv64", "MaxPool",
            "Conv128", "Conv128", "MaxPool", "FC64", "FC10"],
        10: ["Conv32", "Conv32", "MaxPool", "Conv64", "Conv64", "MaxPool", "Conv128", "Conv128", "MaxPool",
             "Conv256", "Conv256", "Conv256", "Conv256", "MaxPool", "FC128", "FC10"],
    },
    "cifar100": {
        2: ["Conv32", "MaxPool", "Conv32", "MaxPool", "FC100"],
        4: ["Conv32", "Conv32", "MaxPool", "Conv64", "Conv64", "MaxPool", "FC100"],
        6: ["Conv32", "Conv32", "MaxPool", "Conv64", "Conv64", "MaxPool", "Conv128", "Conv128", "FC100"],
        8: ["Conv32", "Conv32", "MaxPool", "Conv64", "Conv64", "MaxPool", "Conv128", "Conv128", "MaxPool",
            "Conv256", "Conv256", "MaxPool", "FC64", "FC100"],
        10: ["Conv32", "Conv32", "MaxPool", "Conv64", "Conv64", "MaxPool", "Conv128", "Conv128", "MaxPool",
             "Conv256", "Conv256", "Conv256", "Conv256", "MaxPool", "FC512", "FC100"],
    },
}


class PlainCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size, depth: int = 2, variant: str = "auto"):
        super().__init__()
        args.one_of("variant", variant, ["auto", *BOOKS])
        if variant == "auto":
            variant = "cifar10" if num_classes <= 10 else "cifar100"
        args.one_of("depth", depth, sorted(BOOKS[variant]))
        layers = BOOKS[variant][depth]
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        channels = in_channels
        convs, fcs = [], []
        self._stage_ends: list[int] = []  # index of the ReLU that ends each resolution
        fc_widths = [int(spec[2:]) for spec in layers if spec.startswith("FC")]
        fc_widths[-1] = num_classes  # TAKD's last FC is the class count of its dataset
        for spec in layers:
            if spec.startswith("Conv"):
                out = int(spec[4:])
                convs += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
            elif spec == "MaxPool":
                if min(h, w) < 2:
                    pools = layers.count('MaxPool')
                    raise args.InputTooSmall(2 ** pools, f" (it halves the image {pools} times)")
                self._stage_ends.append(len(convs) - 1)
                convs.append(nn.MaxPool2d(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
        if not isinstance(convs[-1], nn.MaxPool2d):
            self._stage_ends.append(len(convs) - 1)
        width = channels * h * w
        for i, out in enumerate(fc_widths):
            fcs.append(nn.Linear(width, out))
            if i < len(fc_widths) - 1:
                fcs.append(nn.ReLU())
            width = out
        self.conv_layers = nn.Sequential(*convs)
        self.fc_layers = nn.Sequential(*fcs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_layers(self.conv_layers(x).flatten(1))

    def feature_points(self) -> dict[str, list[str]]:
        return {
            "stages": [f"conv_layers.{i}" for i in self._stage_ends],
            "preact": [f"conv_layers.{i}:in" for i in self._stage_ends],
            "preact_bn": [f"conv_layers.{i - 1}" for i in self._stage_ends],  # Conv-BN-ReLU: each preact is its BN's
            "embedding": [f"fc_layers.{len(self.fc_layers) - 1}:in"],
        }


for _depth in (2, 4, 6, 8, 10):
    MODELS.register(f"plain{_depth}", partial(PlainCNN, depth=_depth))
