"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018) for CIFAR, as in RepDistiller's
ShuffleNetv1.py (`ShuffleV1`: groups 3, 240-480-960) and ShuffleNetv2.py (`ShuffleV2`: size 1,
116-232-464-1024): `shufflenetv1`, `shufflenetv2`.

Every block ends in its own `relu_out`, so `layerK.LAST.relu_out:in` reads a stage's pre-activation.
In a V2 block the ReLU is moved after the concatenation and shuffle: the passed-through half is
already non-negative (it comes out of earlier ReLUs), so outputs and gradients are unchanged, and the
pre-activation comes in the same channel order as the output.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kdrun.models import args
from kdrun.models.registry import MODELS


class ShuffleBlock(nn.Module):
    """Channel shuffle: [N, g*k, H, W] -> [N, k*g, H, W]."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class BottleneckV1(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first: bool):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        g = 1 if first else groups  # the first block sees the 24-channel stem: no grouping there
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle1(self.relu1(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return self.relu_out(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size, out_planes=(240, 480, 960),
                 num_blocks=(4, 8, 4), groups: int = 3):
        super().__init__()
        args.count("groups", groups)
        args.counts("out_planes", out_planes, length=3, what="channel counts")
        args.counts("num_blocks", num_blocks, length=3, what="block counts")
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.pool = nn.AdaptiveAvgPool2d(1)  # the original's avg_pool2d(4) on 32x32 inputs
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            # The downsampling block concatenates its input: its branch makes the remaining channels.
            branch = out_planes - self.in_planes if i == 0 else out_planes
            layers.append(BottleneckV1(self.in_planes, branch, 2 if i == 0 else 1, groups, self.in_planes == 24))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.pool(x).flatten(1))

    def feature_points(self) -> dict[str, list[str]]:
        points = _shufflenet_points(self, "linear")
        # A stride-1 block's preact is bn3(out) + shortcut: bn3, the residual branch's last BN, as for the
        # ResNets. A stage of one block ends in the downsampling block, whose preact concatenates bn3's
        # output with the pooled (already activated) input: no BN covers it, so none is declared then.
        if all(block.stride == 1 for block in (self.layer1[-1], self.layer2[-1], self.layer3[-1])):
            points["preact_bn"] = [f"{name}.{len(getattr(self, name)) - 1}.bn3"
                                   for name in ("layer1", "layer2", "layer3")]
        return points


class SplitBlock(nn.Module):
    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class BasicBlockV2(nn.Module):
    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = SplitBlock(split_ratio)
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ShuffleBlock(2)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.split(x)
        out = self.bn3(self.conv3(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x2)))))))
        return self.relu_out(self.shuffle(torch.cat([x1, out], 1)))


class DownBlockV2(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu_left = nn.ReLU()
        self.relu_right1 = nn.ReLU()
        self.relu_right2 = nn.ReLU()
        self.shuffle = ShuffleBlock(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.relu_left(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.relu_right1(self.bn3(self.conv3(x)))
        right = self.relu_right2(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size, out_channels=(116, 232, 464, 1024),
                 num_blocks=(3, 7, 3)):
        super().__init__()
        args.counts("out_channels", out_channels, length=4, what="channel counts")
        args.counts("num_blocks", num_blocks, minimum=0, length=3, what="block counts")
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)  # the original's avg_pool2d(4) on 32x32 inputs
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers = [DownBlockV2(self.in_channels, out_channels)]
        layers += [BasicBlockV2(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(self.pool(x).flatten(1))

    def feature_points(self) -> dict[str, list[str]]:
        # No `preact_bn`: a block's preact is shuffle(cat(x1, bn3(...))), half its channels the passed-through
        # x1 (already activated), interleaved with bn3's; no one BN's output is the pre-activation.
        return _shufflenet_points(self, "linear")


def _shufflenet_points(model: nn.Module, classifier: str) -> dict[str, list[str]]:
    layers = ["layer1", "layer2", "layer3"]
    return {
        "stages": layers,
        "preact": [f"{name}.{len(getattr(model, name)) - 1}.relu_out:in" for name in layers],
        "embedding": [f"{classifier}:in"],
        "stem": ["relu"],
        "feature_layers": ["conv1", "bn1", *layers],
    }


MODELS.register("shufflenetv1", ShuffleNetV1)
MODELS.register("shufflenetv2", ShuffleNetV2)
