"""The model zoo: names, published parameter counts, every model on every dataset shape, feature points."""
import os

import pytest
import torch
import torch.nn as nn

from conftest import REPO, compose_config, kdrun_cli, read_json, run_dirs
from kdrun.errors import UserError
from kdrun.models import MODELS
from kdrun.models.features import FeatureHooks, default_feature_shapes, feature_points, resolve
from kdrun.run import run

SHAPES = {"cifar10": (10, 3, (32, 32)), "cifar100": (100, 3, (32, 32)), "mnist": (10, 1, (28, 28))}
CONTRACT_NAMES = (["mlp_1200", "mlp_800", "wrn16_1", "wrn16_2", "wrn16_4", "wrn40_1", "wrn40_2", "wrn10_4", "wrn22_4",
                   "resnet8", "resnet14", "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
                   "vgg8", "vgg13", "mobilenetv2", "shufflenetv1", "shufflenetv2"]
                  + [f"plain{d}" for d in (2, 4, 6, 8, 10)])
# Too slow to run for real on every shape: checked on "meta" tensors (shapes only) for the dataset
# shapes, and run for real on the 8x8 digits.
HEAVY = {n for n in MODELS.names() if n.startswith("wrn") and n.endswith(("_8", "_10"))} | {
    "resnet34", "resnet50", "vgg16", "vgg19", "tv_resnet34", "tv_resnet50"}
DIGITS = (10, 1, (8, 8))
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_thread():
    """Batches of two are all overhead: one thread is fastest and spins no idle cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name, shape, device="cpu"):
    num_classes, channels, size = DIGITS if shape == "digits" else SHAPES[shape]
    with torch.device(device):
        return MODELS.get(name)(num_classes=num_classes, in_channels=channels, image_size=size)


def count(name, shape):
    return sum(p.numel() for p in build(name, shape, "meta").parameters()) / 1e6


def test_the_contract_names_and_the_whole_grid_are_registered():
    grid = [f"wrn{d}_{w}" for d in (10, 16, 22, 28, 40) for w in (1, 2, 4, 8, 10)]
    assert set(CONTRACT_NAMES + grid + ["mlp", "resnet44", "vgg11"]) <= set(MODELS.names())


# Published counts (millions). KD tables on CIFAR-100 (CRD/RepDistiller models): within 2 %. resnet20
# is 0.28M there: the 0.27M often quoted is its CIFAR-10 count (He et al., below).
CIFAR100_COUNTS = {"wrn16_2": 0.70, "wrn40_2": 2.25, "resnet20": 0.28, "resnet56": 0.86, "resnet110": 1.73,
                   "resnet8x4": 1.23, "resnet32x4": 7.43, "vgg13": 9.46, "vgg8": 3.96, "mobilenetv2": 0.81,
                   "shufflenetv1": 0.95, "shufflenetv2": 1.36}
# He et al. 2016, Table 6 (CIFAR-10): within 2 %.
CIFAR10_RESNETS = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7}
# Zagoruyko & Komodakis 2016, Table 4 (CIFAR), printed with one decimal: equal when rounded.
WRN_PAPER = {"wrn40_1": 0.6, "wrn40_2": 2.2, "wrn40_4": 8.9, "wrn40_8": 35.7, "wrn28_10": 36.5, "wrn22_8": 17.2,
             "wrn22_10": 26.8, "wrn16_8": 11.0, "wrn16_10": 17.1}


@pytest.mark.parametrize("name,published", sorted(CIFAR100_COUNTS.items()))
def test_parameter_count_matches_the_crd_table(name, published):
    assert count(name, "cifar100") == pytest.approx(published, rel=0.02)


@pytest.mark.parametrize("name,published", sorted(CIFAR10_RESNETS.items()))
def test_parameter_count_matches_he_et_al(name, published):
    assert count(name, "cifar10") == pytest.approx(published, rel=0.02)


@pytest.mark.parametrize("name,published", sorted(WRN_PAPER.items()))
def test_parameter_count_matches_the_wrn_paper(name, published):
    assert round(count(name, "cifar10"), 1) == published


def check_features(model, feats, batch):
    points = model.feature_points()
    assert {"stages", "preact", "embedding"} <= set(points) <= {"stages", "preact", "embedding", "stem", "feature_layers",
                                                                 "preact_bn"}
    if "preact_bn" in points:  # the BN each pre-activation follows (OFD's margin): one per point, all BNs
        modules = dict(model.named_modules())
        assert len(points["preact_bn"]) == len(points["preact"])
        assert all(isinstance(modules[p], (nn.BatchNorm1d, nn.BatchNorm2d)) for p in points["preact_bn"])
    modules = dict(model.named_modules())
    assert all(path in modules for path in points.get("feature_layers", [])), points["feature_layers"]
    if "stem" in points:  # the first stage's input (RepDistiller's f0): one map, before the stages
        assert len(points["stem"]) == 1 and feats[points["stem"][0]].dim() == 4
    stages, preact, embedding = points["stages"], points["preact"], points["embedding"]
    assert len(stages) == len(preact) >= 2 and len(embedding) == 1
    shapes = [tuple(feats[p].shape) for p in stages]
    assert all(s[0] == batch for s in shapes)
    if len(shapes[0]) == 4:  # conv stages shrink (or keep) their spatial size, never grow
        sides = [s[2] * s[3] for s in shapes]
        assert sides == sorted(sides, reverse=True) and sides[-1] < sides[0], shapes
    assert [tuple(feats[p].shape) for p in preact] == shapes
    emb = feats[embedding[0]]
    assert emb.dim() == 2 and emb.shape[0] == batch
    return shapes


# BAN's DenseNets (6.9M to 47M parameters, hundreds of layers) take a minute even on meta tensors: `pytest -m
# slow`; the general `densenet` (DenseNet-BC-100-12) is the family's in the default run.
SLOW_MODELS = {"densenet112_33", "densenet90_60", "densenet80_80", "densenet80_120"}
# torchvision's deepest ResNets (44M, 60M parameters) take 5 to 10 s. They are not HEAVY: on the 8x8 digits their
# stem leaves 2x2 maps, and thirty blocks of batch norm over 2 values per channel can overflow the gradient.
SLOW_MODELS |= {"tv_resnet101", "tv_resnet152"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n
                                  for n in MODELS.names()])
def test_every_model_builds_runs_and_reports_features_on_every_dataset_shape(name):
    runs = [(shape, "meta" if name in HEAVY else "cpu") for shape in SHAPES]
    for shape, device in runs + ([("digits", "cpu")] if name in HEAVY else []):
        num_classes, channels, size = DIGITS if shape == "digits" else SHAPES[shape]
        model = build(name, shape, device)
        points = model.feature_points()
        hooks = FeatureHooks(model, [p for key in ("stages", "preact", "embedding", "stem") for p in points.get(key, [])])
        x = torch.randn(2, channels, *size, device=device)
        logits = model(x)
        assert logits.shape == (2, num_classes)
        logits.square().mean().backward()
        feats = hooks.take()
        check_features(model, feats, 2)
        if device == "meta":
            continue
        assert torch.isfinite(logits).all()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        # The pre-activation is what the stage's ReLU saw (no in-place op overwrote it), or the stage
        # itself where the stage ends without a ReLU; WRN's is checked below.
        if not name.startswith("wrn"):
            for s, p in zip(points["stages"], points["preact"]):
                assert torch.equal(feats[s], feats[p]) or torch.equal(feats[s], torch.relu(feats[p])), (s, p)


def test_wrn_preact_is_the_bn_input_of_the_relu_that_follows_each_stage():
    model = build("wrn16_2", "cifar100").eval()
    points = model.feature_points()
    hooks = FeatureHooks(model, points["stages"] + points["preact"])
    model(torch.randn(2, 3, 32, 32))
    feats = hooks.take()
    bns = [model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1]
    for stage, pre, bn in zip(points["stages"], points["preact"], bns):
        assert torch.allclose(feats[pre], bn(feats[stage]))


def test_shufflenetv2_block_equals_the_reference_formulation():
    # RepDistiller: shuffle(cat(x1, relu(branch(x2)))); kdrun: relu(shuffle(cat(x1, branch(x2)))).
    model = build("shufflenetv2", "cifar10").eval()
    hooks = FeatureHooks(model, ["layer2.1:in", "layer2.1"])
    model(torch.randn(2, 3, 32, 32))
    feats = hooks.take()
    block, x = model.layer2[1], feats["layer2.1:in"]
    x1, x2 = block.split(x)
    branch = block.bn3(block.conv3(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x2)))))))
    assert (x1 >= 0).all()
    assert torch.allclose(block.shuffle(torch.cat([x1, torch.relu(branch)], 1)), feats["layer2.1"])


def test_default_feature_shapes_of_resnet8_on_cifar():
    model = build("resnet8", "cifar100")
    shapes = default_feature_shapes(model, torch.zeros(2, 3, 32, 32))
    stages = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert shapes == {"stages": stages, "preact": stages, "embedding": [(64,)], "stem": [(16, 32, 32)]}
    assert model.feature_points()["preact"][0] == "layer1.0.relu_out:in"


def test_a_wrong_feature_path_fails_with_the_valid_paths():
    model = build("resnet20", "cifar10")
    with pytest.raises(UserError) as err:
        FeatureHooks(model, ["layer4"], "student")
    message = str(err.value)
    assert "'layer4'" in message and "student" in message and "layer3.2.relu_out" in message
    module, want_input = resolve(model, "layer3.2.relu_out:in")
    assert module is model.layer3[2].relu_out and want_input


def test_a_model_without_feature_points_gets_a_clear_message():
    with pytest.raises(UserError, match="declares no default feature points.*Valid module paths: 0, 1"):
        feature_points(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "teacher")


def test_images_too_small_for_a_plain_net_fail_before_training():
    with pytest.raises(UserError, match="at least 16x16 pixels"):
        MODELS.get("plain10")(num_classes=10, in_channels=1, image_size=(8, 8))


def test_kdrun_help_lists_the_zoo(tmp_path, monkeypatch, capsys):
    from inprocess import kdrun_in_process

    code, out = kdrun_in_process(["--help"], tmp_path, monkeypatch, capsys)
    assert code == 0, out
    groups = {}  # the first "group: options" line of each (the config dump below repeats the keys)
    for line in out.splitlines():
        groups.setdefault(line.partition(":")[0], line)
    for group in ("teacher", "student"):
        for name in ("wrn40_2", "resnet32x4", "vgg13", "mobilenetv2", "shufflenetv2", "plain10", "mlp_800"):
            assert name in groups[group], (group, name)


def test_a_users_own_model_runs_without_editing_kdrun(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "class MyNet(nn.Module):\n"
        "    def __init__(self, num_classes, in_channels, image_size, width=4):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),\n"
        "                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
        "        self.fc = nn.Linear(width, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.body(x))\n")
    (tmp_path / "conf" / "student").mkdir(parents=True)
    (tmp_path / "conf" / "student" / "mynet.yaml").write_text("_target_: my_models.MyNet\nwidth: 6\n")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path / "pkg")]), **ONE_THREAD}
    out = kdrun_cli(["-cd", str(tmp_path / "conf"), "student=mynet", "teacher=mlp", "teacher.hidden=[16]",
                     "dataset=synthetic", "dataset.train_size=32", "dataset.test_size=16", "dataset.image_size=8",
                     "train.epochs=1", "teacher.train.epochs=1", "progress=false"], cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    metrics = read_json(run_dirs(tmp_path / "outputs")[0] / "metrics.json")
    assert metrics["status"] == "completed" and metrics["student"] == "my_models.MyNet"
    weights = torch.load(run_dirs(tmp_path / "outputs")[0] / "student.pt", weights_only=True)
    assert weights["fc.weight"].shape == (10, 6)


def test_wrn40_2_distils_into_wrn16_2_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = compose_config(["teacher=wrn40_2", "student=wrn16_2", "dataset=synthetic", "train.epochs=1",
                          "teacher.train.epochs=1", "dataset.train_size=32", "dataset.test_size=16",
                          "dataset.image_size=8", "device=cpu", "progress=false"])
    metrics = run(cfg, tmp_path / "run")
    assert (metrics["status"], metrics["teacher"], metrics["student"]) == ("completed", "wrn40_2", "wrn16_2")
    weights = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    assert weights["block3.layer.1.conv2.weight"].shape == (128, 128, 3, 3)


def test_mlp_max_norm_caps_each_hidden_units_incoming_weights():
    from kdrun.training.loop import constrain, constrained_modules

    mlp = MODELS.get("mlp")(num_classes=3, in_channels=1, image_size=(2, 2), hidden=[4, 4], max_norm=1.5)
    with torch.no_grad():
        for layer in mlp.hidden:
            layer[0].weight.copy_(torch.arange(16.0).view(4, 4) / 4)  # row norms 0.94, 2.87, 4.86, 6.85
        mlp.fc.weight.fill_(10.0)
    before = mlp.hidden[0][0].weight.clone()
    modules = constrained_modules(mlp, list(mlp.parameters()))
    assert modules == [mlp.hidden[0][0], mlp.hidden[1][0]]  # the hidden layers, not the classifier
    constrain(modules)
    norms = mlp.hidden[0][0].weight.norm(dim=1)
    assert torch.allclose(norms, torch.tensor([before[0].norm().item(), 1.5, 1.5, 1.5]), atol=1e-5)
    assert torch.allclose(mlp.hidden[0][0].weight[1], before[1] * 1.5 / before[1].norm(), atol=1e-5)  # scaled down
    assert torch.equal(mlp.fc.weight, torch.full_like(mlp.fc.weight, 10.0))
    plain = MODELS.get("mlp")(num_classes=3, in_channels=1, image_size=(2, 2), hidden=[4])
    assert constrained_modules(plain, list(plain.parameters())) == []
