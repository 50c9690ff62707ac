"""The classes behind `tv_resnet*` and `tv_mobilenet_v2` (kdrun.models.torchvision_models registers the
names; this module imports torchvision, which takes a second or more, only when one is built).

Built by torchvision's own classes (no weights, `num_classes` from the data) with torchvision's
initialisation, so their `state_dict` keys are torchvision's and its published weights load. Two
changes keep the keys and the arithmetic and make the hooks read what they name:
- no ReLU is in place, and each ResNet block ends in its own `relu_out` (torchvision's blocks reuse one
  in-place `relu` and add the shortcut with `+=`), so `layerK.LAST.relu_out:in` is the pre-activation;
- a dataset of other than 3 channels gets a first convolution of its own width (same key, `conv1.weight`
  or `features.0.0.weight`, another shape).
The stem downsamples 4x (ResNets) or 2x (MobileNetV2) as on ImageNet: at 32x32 the last stage is 1x1.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import mobilenetv2 as tv_mobilenet
from torchvision.models import resnet as tv_resnet



class OwnReLUs:
    """A block's inner ReLUs out of place, and its last one a module of its own (`relu_out`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.relu = nn.ReLU()
        self.relu_out = nn.ReLU()


class BasicBlock(OwnReLUs, tv_resnet.BasicBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu_out(out + identity)


class Bottleneck(OwnReLUs, tv_resnet.Bottleneck):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu_out(self.bn3(self.conv3(out)) + identity)


def out_of_place(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            m.inplace = False


def first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """`conv` for `in_channels` inputs (itself for 3), initialised as torchvision initialises convolutions."""
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    return new


class TorchvisionResNet(tv_resnet.ResNet):
    def __init__(self, block: type, layers: list[int], num_classes: int, in_channels: int = 3):
        super().__init__(block, layers, num_classes=num_classes)
        self.relu = nn.ReLU()
        self.conv1 = first_conv(self.conv1, in_channels)

    def feature_points(self) -> dict[str, list[str]]:
        layers = ["layer1", "layer2", "layer3", "layer4"]
        last = [f"{name}.{len(getattr(self, name)) - 1}" for name in layers]
        bn = "bn3" if isinstance(self.layer1[0], Bottleneck) else "bn2"  # the residual branch's last BN
        return {"stages": layers, "preact": [f"{b}.relu_out:in" for b in last], "preact_bn": [f"{b}.{bn}" for b in last],
                "embedding": ["fc:in"], "stem": ["maxpool"], "feature_layers": ["conv1", "bn1", *layers]}


class TorchvisionMobileNetV2(tv_mobilenet.MobileNetV2):
    STAGES = ["features.3", "features.6", "features.13", "features.17"]  # the last block of each resolution, /4 to /32

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__(num_classes=num_classes)
        out_of_place(self)
        self.features[0][0] = first_conv(self.features[0][0], in_channels)

    def feature_points(self) -> dict[str, list[str]]:
        # Linear bottlenecks: a stage's output is its own pre-activation, its last BN `conv.3` (plus the
        # input where the block is residual: features.3, .6, .13).
        return {"stages": list(self.STAGES), "preact": list(self.STAGES),
                "preact_bn": [f"{s}.conv.3" for s in self.STAGES], "embedding": ["classifier.0:in"],
                "stem": ["features.0"], "feature_layers": [f"features.{i}" for i in range(18)]}
