"""`ofd` (Heo et al., ICCV 2019, "A Comprehensive Overhaul of Feature Distillation"): the margin against its
closed form and a Monte-Carlo estimate, the partial L2 distance on hand-made numbers, the 2^-(n-1-i) stage
weights, the connector, the frozen eval-mode teacher, the term against a re-statement of the authors'
CIFAR-100/distiller.py on WRNs, every zoo model's `preact_bn`, and short runs through kdrun."""
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose_config
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.feature import bn_connector as connector
from kdrun.methods.ofd import OFDConfig, bn_margin, partial_l2
from kdrun.models import MODELS
from kdrun.models.args import InputTooSmall
from kdrun.models.features import FeatureHooks, feature_points, resolve
from kdrun.models.shufflenet import ShuffleNetV1
from kdrun.run import run
from inprocess import one_cpu_thread  # noqa: F401  (autouse: tiny models on one thread)

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["dataset=synthetic", "dataset.train_size=16", "dataset.test_size=8", "dataset.image_size=16",
        "dataset.num_classes=4", "train.epochs=1", "train.batch_size=16", "teacher.train.epochs=1",
        "teacher.train.batch_size=16", "progress=false"]
INFO = DataInfo(channels=3, image_size=(16, 16), num_classes=10, train_size=16)


def cfg(**over):
    return OmegaConf.merge(OmegaConf.load(CONF / "method" / "ofd.yaml"), over)


def zoo(name, size=(16, 16), num_classes=10, **kwargs):
    return MODELS.get(name)(num_classes=num_classes, in_channels=3, image_size=size, **kwargs)


# ---- the margin: E[x | x < 0] of N(m, s^2), s = |BN weight|, m = BN bias ----------------------------------

def phi_cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))


def hand_margin(weight, bias):
    """The authors' get_margin_from_BN, one channel, scipy's norm.cdf written with math.erfc."""
    s, m = abs(weight), bias
    if phi_cdf(-m / s) > 0.001:
        return -s * math.exp(-(m / s) ** 2 / 2) / math.sqrt(2 * math.pi) / phi_cdf(-m / s) + m
    return -3 * s


WEIGHTS = [1.0, 2.0, -1.5, 0.5, 1.0, 1.0, 0.3, 1.0]
BIASES = [0.0, 1.0, -0.5, 2.0, 3.1, 3.0, -2.0, -0.2]


def test_margin_is_the_closed_form_of_the_authors_get_margin_from_bn():
    got = bn_margin(torch.tensor(WEIGHTS), torch.tensor(BIASES))
    want = [hand_margin(w, b) for w, b in zip(WEIGHTS, BIASES)]
    assert got.tolist() == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert got[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)  # m = 0: -s sqrt(2/pi)
    assert got[3].item() == -1.5 and got[4].item() == -3.0  # Phi(-m/s) <= 0.001 (m/s = 4, 3.1): -3s
    assert got[5].item() == pytest.approx(hand_margin(1.0, 3.0)) and got[5].item() > -3.0  # Phi(-3) = 0.00135
    assert (got < 0).all() and got.dtype == torch.float32
    assert torch.isfinite(bn_margin(torch.zeros(2), torch.tensor([0.0, 1.0]))).all()  # a zero weight: no NaN


@pytest.mark.parametrize("weight,bias", [(1.0, 0.5), (2.0, -1.0), (-0.7, 0.3)])
def test_margin_is_the_mean_of_the_negative_part_of_the_bn_output_distribution(weight, bias):
    g = torch.Generator().manual_seed(0)
    x = bias + abs(weight) * torch.randn(2_000_000, generator=g, dtype=torch.float64)
    estimate = x[x < 0].mean().item()
    assert bn_margin(torch.tensor([weight]), torch.tensor([bias])).item() == pytest.approx(estimate, abs=3e-3)


def test_margin_is_read_from_the_teachers_bn_at_every_step():
    teacher, student = zoo("wrn10_1"), zoo("wrn10_1")
    method = build_method(cfg(), student, teacher, INFO)
    assert method.t_bn_paths == ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]
    with torch.no_grad():
        teacher.bn1.weight.fill_(2.0)
        teacher.bn1.bias.fill_(0.0)
    assert torch.allclose(method.margins()[2], torch.full((64,), -2 * math.sqrt(2 / math.pi)))
    assert not any(k.startswith("margin") for k in method.state_dict())  # never saved, never stale


# ---- the partial L2 distance ------------------------------------------------------------------------------

def test_partial_l2_skips_only_a_student_at_or_below_a_non_positive_target():
    margin = torch.tensor([-1.0, -0.5]).view(1, 2, 1, 1)
    # channel 0 (margin -1): t = -3 (-> target -1), t = -0.2, t = 0.8, t = 2
    # channel 1 (margin -0.5): t = -2 (-> -0.5), t = 0, t = 1, t = -0.5
    t = torch.tensor([[[[-3.0, -0.2], [0.8, 2.0]], [[-2.0, 0.0], [1.0, -0.5]]]])
    s = torch.tensor([[[[-1.5, 0.4], [0.1, 2.5]], [[-0.5, -0.1], [3.0, -0.4]]]])
    # s <= target <= 0: skipped (-1.5 vs -1; -0.5 vs -0.5; -0.1 vs 0). s > target, target <= 0: counted
    # (0.4 vs -0.2; -0.4 vs -0.5). s <= target, target > 0: counted (0.1 vs 0.8). s > target > 0: counted
    # (2.5 vs 2; 3 vs 1).
    want = (0.4 + 0.2) ** 2 + (-0.4 + 0.5) ** 2 + (0.1 - 0.8) ** 2 + (2.5 - 2.0) ** 2 + (3.0 - 1.0) ** 2
    assert partial_l2(s, t, margin).item() == pytest.approx(want, rel=1e-6)
    # the authors' distillation_loss: mse(source, max(t, margin)) * ((source > target) | (target > 0)), summed
    target = torch.max(t, margin)
    ref = (F.mse_loss(s, target, reduction="none") * ((s > target) | (target > 0)).float()).sum()
    assert partial_l2(s, t, margin).item() == pytest.approx(ref.item(), rel=1e-6)
    # below the margin the teacher's value is the margin: a student below it costs nothing, one above it is
    # pulled down to the margin, not to t
    assert partial_l2(torch.full_like(t, -5.0), torch.full_like(t, -5.0), margin).item() == 0
    pulled = partial_l2(torch.full_like(t, 0.5), torch.full_like(t, -5.0), margin).item()
    assert pulled == pytest.approx(4 * 1.5 ** 2 + 4 * 1.0 ** 2)


# ---- the connector -----------------------------------------------------------------------------------------

def test_connector_is_a_bias_free_1x1_conv_and_bn_initialised_as_the_authors():
    torch.manual_seed(0)
    conn = connector((256, 8, 8), (128, 8, 8))
    conv, bn = conn
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None
    assert (conv.in_channels, conv.out_channels) == (256, 128) and isinstance(bn, nn.BatchNorm2d)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.03)  # n = 1 * 1 * out_channels
    assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2 / 128)
    assert torch.equal(bn.weight, torch.ones(128)) and torch.equal(bn.bias, torch.zeros(128))
    linear, bn1d = connector((64,), (32,))
    assert isinstance(linear, nn.Linear) and linear.bias is None and isinstance(bn1d, nn.BatchNorm1d)


def test_connectors_and_student_train_on_the_term_and_the_teacher_stays_frozen_in_eval_mode():
    torch.manual_seed(0)
    teacher, student = zoo("wrn16_2").train(), zoo("wrn10_1")
    stats = copy.deepcopy(teacher.state_dict())
    method = build_method(cfg(ce_weight=0.0), student, teacher, INFO).train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(p is q for p in method.parameters() for q in teacher.parameters())
    assert [c[0].in_channels for c in method.connectors] == [16, 32, 64]
    assert [c[0].out_channels for c in method.connectors] == [32, 64, 128]
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    before = [p.detach().clone() for p in method.connectors.parameters()]
    first = None
    for _ in range(15):
        opt.zero_grad()
        _, losses = method.forward_train(x, y)
        assert set(losses) == {"ofd"}
        first = losses["ofd"].item() if first is None else first
        losses["ofd"].backward()
        assert all(p.grad is None for p in teacher.parameters())
        assert all(p.grad is not None for p in method.connectors.parameters())
        opt.step()
    assert losses["ofd"].item() < 0.8 * first
    assert not any(torch.equal(a, b) for a, b in zip(before, method.connectors.parameters()))
    assert not teacher.training
    for k, v in teacher.state_dict().items():  # eval mode: the BN running statistics are untouched
        assert torch.equal(v, stats[k]), k


# ---- the term: stage weights, batch mean, beta; the authors' distiller.py re-stated -----------------------

def authors_wrn_prerelu(net, x):
    """WideResNet.extract_feature(x, preReLU=True) of the authors' CIFAR-100/models/WideResNet.py, re-stated
    on kdrun's WRN (same modules): the block outputs through the next block's bn1, the last through bn1."""
    feat1 = net.block1(net.conv1(x))
    feat2 = net.block2(feat1)
    feat3 = net.block3(feat2)
    return [net.block2.layer[0].bn1(feat1), net.block3.layer[0].bn1(feat2), net.bn1(feat3)], net(x)


def test_term_is_the_authors_distillation_loss_over_batch_size_over_1000_on_wrns():
    torch.manual_seed(1)
    teacher, student = zoo("wrn16_2"), zoo("wrn10_2")
    with torch.no_grad():  # a teacher with BN parameters of its own, as a trained one
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 2.0)
                m.bias.uniform_(-1.0, 1.0)
                m.running_mean.uniform_(-0.2, 0.2)
    method = build_method(cfg(), student, teacher, INFO).train()
    assert method.stage_weights == [0.25, 0.5, 1.0] and method.beta == 1e-3
    ref_t, ref_s = copy.deepcopy(teacher).eval(), copy.deepcopy(student).train()
    ref_conn = copy.deepcopy(method.connectors)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    s_logits, losses = method.forward_train(x, y)
    assert set(losses) == {"ce", "ofd"}

    # the authors' Distiller.forward and training step: margins from get_margin_from_BN of get_bn_before_relu()
    bns = [ref_t.block2.layer[0].bn1, ref_t.block3.layer[0].bn1, ref_t.bn1]
    margins = [torch.tensor([hand_margin(w, b) for w, b in zip(bn.weight.tolist(), bn.bias.tolist())]).view(1, -1, 1, 1)
               for bn in bns]
    with torch.no_grad():
        t_feats, _ = authors_wrn_prerelu(ref_t, x)
    s_feats, out = authors_wrn_prerelu(ref_s, x)
    loss_distill = 0
    n = len(t_feats)
    for i in range(n):
        source, target = ref_conn[i](s_feats[i]), torch.max(t_feats[i], margins[i])
        d = (F.mse_loss(source, target, reduction="none") * ((source > target) | (target > 0)).float()).sum()
        loss_distill += d / 2 ** (n - i - 1)
    assert losses["ofd"].item() == pytest.approx((loss_distill / x.shape[0] / 1000).item(), rel=1e-4)
    assert torch.allclose(s_logits, out, atol=1e-5)


def test_each_stage_is_divided_by_two_to_the_number_of_deeper_stages():
    torch.manual_seed(2)
    teacher, student = zoo("vgg8"), zoo("vgg8")
    method = build_method(cfg(beta=1.0), student, teacher, INFO).train()
    assert method.stage_weights == [1 / 8, 1 / 4, 1 / 2, 1.0]
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    hooks_s, hooks_t = FeatureHooks(student, method.s_paths), FeatureHooks(teacher, method.t_paths)
    _, losses = method.forward_train(x, y)
    s_feats, t_feats = hooks_s.take(), hooks_t.take()
    per_stage = [partial_l2(conn(s_feats[s]), t_feats[t], m.view(1, -1, 1, 1)).item()
                 for conn, s, t, m in zip(method.connectors, method.s_paths, method.t_paths, method.margins())]
    assert all(d > 0 for d in per_stage)
    want = sum(d / 2 ** (3 - i) for i, d in enumerate(per_stage)) / 4
    assert losses["ofd"].item() == pytest.approx(want, rel=1e-5)


# ---- preact_bn: for every zoo model, the BN each pre-activation follows ---------------------------------

WITHOUT_BN = {"mlp", "mlp_800", "mlp_1200", "maxout_cifar", "fitnet1", "fitnet2", "fitnet3", "fitnet4", "shufflenetv2"}


def exactly(name):
    """Pre-activations that are the BN's output itself (else bn(out) + shortcut, the reference's choice)."""
    if name.startswith(("wrn", "vgg", "plain", "nin", "densenet")):
        return "all"
    return {"mobilenetv2": "last", "tv_mobilenet_v2": "last"}.get(name, "none")


# One model of each family in the default run, every zoo model with `pytest -m slow`.
FAMILIES = ("wrn16_2", "resnet8", "resnet32x4", "resnet18", "resnet50", "vgg8", "mobilenetv2", "shufflenetv1",
            "shufflenetv2", "plain4", "mlp", "maxout_cifar", "fitnet1", "tv_resnet18", "tv_mobilenet_v2")


@pytest.mark.parametrize("name", [n if n in FAMILIES else pytest.param(n, marks=pytest.mark.slow)
                                  for n in MODELS.names()])
def test_every_zoo_model_names_the_bn_before_each_preact_or_none(name):
    size = (16, 16)
    try:
        model = zoo(name, size).eval()
    except InputTooSmall:
        size = (32, 32)
        model = zoo(name, size).eval()
    points = feature_points(model)
    if name in WITHOUT_BN:
        assert "preact_bn" not in points
        return
    preact, bns = points["preact"], points["preact_bn"]
    assert len(bns) == len(preact)
    x = torch.randn(2, 3, *size)
    hooks = FeatureHooks(model, preact + bns)
    with torch.no_grad():
        model(x)
    base = hooks.take()
    equal = []
    for pre, path in zip(preact, bns):
        bn = resolve(model, path)[0]
        assert type(bn) is nn.BatchNorm2d and bn.affine, path
        # The pre-activation is the BN's output plus something that does not depend on it: shift the BN's
        # output by delta and the pre-activation moves by exactly delta.
        delta = torch.randn_like(base[path])
        handle = bn.register_forward_hook(lambda module, inputs, output: output + delta)
        with torch.no_grad():
            model(x)
        handle.remove()
        moved = hooks.take()[pre] - base[pre]
        assert (moved - delta).abs().max().item() <= 1e-5 * max(1.0, base[pre].abs().max().item()), (pre, path)
        equal.append(torch.equal(base[pre], base[path]))
    hooks.remove()
    want = {"all": [True] * len(bns), "last": [False] * (len(bns) - 1) + [True], "none": [False] * len(bns)}
    assert equal == want[exactly(name)], (name, equal)


def test_preact_bn_is_the_reference_get_bn_before_relu():
    assert feature_points(zoo("wrn16_2"))["preact_bn"] == ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]
    assert feature_points(zoo("resnet8"))["preact_bn"] == ["layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2"]
    assert feature_points(zoo("resnet56"))["preact_bn"] == ["layer1.8.bn2", "layer2.8.bn2", "layer3.8.bn2"]
    assert feature_points(zoo("resnet50"))["preact_bn"] == [
        "layer1.2.bn3", "layer2.3.bn3", "layer3.5.bn3", "layer4.2.bn3"]
    assert feature_points(zoo("resnet18"))["preact_bn"] == [
        "layer1.1.bn2", "layer2.1.bn2", "layer3.1.bn2", "layer4.1.bn2"]
    assert feature_points(zoo("vgg8"))["preact_bn"] == ["block1.1", "block2.1", "block3.1", "block4.1"]
    assert feature_points(zoo("mobilenetv2"))["preact_bn"] == [
        "blocks.1.1.conv.7", "blocks.2.2.conv.7", "blocks.4.2.conv.7", "blocks.6.0.conv.7"]
    # a ShuffleNetV1 stage of one block ends by concatenating the activated input: no BN covers it
    with torch.device("meta"):
        one = ShuffleNetV1(num_classes=10, in_channels=3, image_size=(32, 32), num_blocks=(1, 8, 4))
    assert "preact_bn" not in one.feature_points()


@pytest.mark.parametrize("name,cls", [("mlp", "MLP"), ("shufflenetv2", "ShuffleNetV2"), ("fitnet1", "MaxoutNet")])
def test_a_teacher_without_bn_before_its_preacts_is_refused_naming_method_and_model(name, cls):
    size = (32, 32)
    teacher = MODELS.get(name)(num_classes=10, in_channels=3, image_size=size)
    student = MODELS.get("mlp" if name == "mlp" else "wrn10_1")(num_classes=10, in_channels=3, image_size=size)
    info = DataInfo(channels=3, image_size=size, num_classes=10, train_size=16)
    with pytest.raises(UserError, match=rf"method 'ofd'.*teacher \({cls}\) declares none.*method.teacher_bns"):
        build_method(cfg(), student, teacher, info)


def test_teacher_bns_names_them_for_a_model_that_does_not_and_is_checked():
    teacher, student = zoo("shufflenetv2"), zoo("wrn10_1")
    t_paths = feature_points(teacher)["preact"]
    given = [p.replace("relu_out:in", "bn3") for p in t_paths]  # half the channels: refused
    with pytest.raises(UserError, match="has 58 channels but its feature"):
        build_method(cfg(teacher_bns=given), student, teacher, INFO)
    with pytest.raises(UserError, match="is a Conv2d"):
        build_method(cfg(teacher_bns=["layer1.3.conv1", "layer2.7.conv1", "layer3.3.conv1"]), student, teacher, INFO)
    with pytest.raises(UserError, match="names 1 BatchNorm modules but the teacher's features are 3"):
        build_method(cfg(teacher_bns=["layer1.3.bn3"]), student, teacher, INFO)
    with pytest.raises(UserError, match="non-empty list"):
        build_method(cfg(teacher_bns=[]), student, teacher, INFO)
    resnet = zoo("resnet8")
    method = build_method(cfg(teacher_features=["layer3.0.relu_out:in"], teacher_bns=["layer3.0.bn2"]),
                          student, resnet, INFO)
    assert method.t_bn_paths == ["layer3.0.bn2"] and method.s_paths == ["relu:in"]
    with pytest.raises(UserError, match="declares none for layer2.0.relu"):
        build_method(cfg(teacher_features=["layer2.0.relu"]), student, resnet, INFO)


# ---- config and runs ---------------------------------------------------------------------------------------

def test_config_file_and_schema_agree():
    composed = compose_config(["method=ofd"]).method
    schema = OmegaConf.structured(OFDConfig)
    assert OmegaConf.to_container(composed) == OmegaConf.to_container(schema)
    assert (composed.beta, composed.ce_weight, composed.alpha, composed.teacher_bns) == (1e-3, 1.0, 0.0, None)
    assert list(compose_config(["method=ofd", "method.teacher_bns=[bn1]"]).method.teacher_bns) == ["bn1"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("teacher,student", [("wrn16_2", "wrn10_2"), ("resnet8", "vgg8")])
def test_ofd_runs_on_a_same_family_and_a_heterogeneous_pair(teacher, student, shared_cache, tmp_path):
    metrics = run(compose_config(TINY + ["method=ofd", f"teacher={teacher}", f"student={student}",
                                         f"cache_dir={shared_cache}"]), tmp_path / "run")
    assert metrics["status"] == "completed"
    losses = metrics["history"][0]["losses"]
    assert set(losses) == {"ce", "ofd"} and math.isfinite(losses["ofd"]) and losses["ofd"] > 0
