"""torchvision's ImageNet ResNets and MobileNetV2, under timm's names for torchvision's weights:
`tv_resnet18`, `tv_resnet34`, `tv_resnet50`, `tv_resnet101`, `tv_resnet152`, `tv_mobilenet_v2`.

Built by torchvision's own classes (kdrun.models.torchvision_classes says what kdrun changes in them),
imported when a model is built: `import torchvision` costs every kdrun command over a second.
"""
from __future__ import annotations

from kdrun.models.registry import MODELS


def _resnet(block: str, layers: list[int]):
    def build(num_classes: int, in_channels: int, image_size):
        from kdrun.models import torchvision_classes as tv

        return tv.TorchvisionResNet(getattr(tv, block), layers, num_classes, in_channels)
    return build


def tv_mobilenet_v2(num_classes: int, in_channels: int, image_size):
    from kdrun.models.torchvision_classes import TorchvisionMobileNetV2

    return TorchvisionMobileNetV2(num_classes, in_channels)


MODELS.register("tv_resnet18", _resnet("BasicBlock", [2, 2, 2, 2]))
MODELS.register("tv_resnet34", _resnet("BasicBlock", [3, 4, 6, 3]))
MODELS.register("tv_resnet50", _resnet("Bottleneck", [3, 4, 6, 3]))
MODELS.register("tv_resnet101", _resnet("Bottleneck", [3, 4, 23, 3]))
MODELS.register("tv_resnet152", _resnet("Bottleneck", [3, 8, 36, 3]))
MODELS.register("tv_mobilenet_v2", tv_mobilenet_v2)
