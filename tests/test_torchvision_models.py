"""torchvision's ImageNet models in the zoo (tv_resnet18 ... tv_resnet152, tv_mobilenet_v2): torchvision's
state_dict keys, shapes, parameter counts and outputs, and their feature points at ImageNet's size."""
import pytest
import torch
import torchvision

from inprocess import one_cpu_thread  # noqa: F401  (autouse: one CPU thread)
from kdrun.models import MODELS
from kdrun.models.features import default_feature_shapes, feature_points

REFERENCE = {"tv_resnet18": "resnet18", "tv_resnet34": "resnet34", "tv_resnet50": "resnet50",
             "tv_resnet101": "resnet101", "tv_resnet152": "resnet152", "tv_mobilenet_v2": "mobilenet_v2"}
# torchvision's published parameter counts (its model docs: ResNet-18 11,689,512 ... MobileNetV2 3,504,872)
PUBLISHED = {"tv_resnet18": 11_689_512, "tv_resnet34": 21_797_672, "tv_resnet50": 25_557_032,
             "tv_resnet101": 44_549_160, "tv_resnet152": 60_192_808, "tv_mobilenet_v2": 3_504_872}


def zoo(name, num_classes=1000, in_channels=3, device="cpu"):
    with torch.device(device):
        return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, image_size=(224, 224))


def torchvisions(name, num_classes=1000, device="cpu"):
    with torch.device(device):
        return getattr(torchvision.models, REFERENCE[name])(weights=None, num_classes=num_classes)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_state_dict_keys_shapes_and_counts_are_torchvisions(name):
    ours, theirs = zoo(name, device="meta").state_dict(), torchvisions(name, device="meta").state_dict()
    assert list(ours) == list(theirs) and all(ours[k].shape == theirs[k].shape for k in ours)
    assert sum(p.numel() for p in zoo(name, device="meta").parameters()) == PUBLISHED[name]


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_resnet50", "tv_mobilenet_v2"])
def test_torchvisions_weights_load_and_give_its_outputs(name):
    reference = torchvisions(name, num_classes=10).eval()
    model = zoo(name, num_classes=10)
    model.load_state_dict(reference.state_dict())  # strict: every key, every shape
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference(x))
    outputs = []
    for net in (model, reference):  # training mode too (batch statistics; MobileNetV2's dropout, seeded alike)
        torch.manual_seed(0)
        outputs.append(net.train()(x))
    assert torch.equal(*outputs)


def test_other_channel_counts_get_their_own_first_convolution():
    grey = zoo("tv_resnet18", num_classes=10, in_channels=1).state_dict()
    rgb = zoo("tv_resnet18", num_classes=10).state_dict()
    assert list(grey) == list(rgb) and grey["conv1.weight"].shape == (64, 1, 7, 7)
    assert zoo("tv_mobilenet_v2", num_classes=10, in_channels=1).state_dict()["features.0.0.weight"].shape == (32, 1, 3, 3)


def test_feature_points_at_imagenets_size():
    x = torch.zeros(2, 3, 224, 224, device="meta")
    shapes = default_feature_shapes(zoo("tv_resnet50", device="meta"), x)
    assert shapes["stages"] == shapes["preact"] == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    assert shapes["embedding"] == [(2048,)] and shapes["stem"] == [(64, 56, 56)]
    points = feature_points(zoo("tv_resnet50", device="meta"))
    assert points["preact"][0] == "layer1.2.relu_out:in" and points["preact_bn"][3] == "layer4.2.bn3"
    shapes = default_feature_shapes(zoo("tv_mobilenet_v2", device="meta"), x)
    assert shapes["stages"] == [(24, 56, 56), (32, 28, 28), (96, 14, 14), (320, 7, 7)]
    assert shapes["embedding"] == [(1280,)] and shapes["stem"] == [(32, 112, 112)]
