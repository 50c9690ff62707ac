"""ReviewKD (method=reviewkd): the hierarchical context loss against its formula written out by hand, the
attention-based fusion on a hand-set module, the review order, the per-pair settings of the authors'
build_review_kd (dvlab-research/ReviewKD, CIFAR-100/model/reviewkd.py), what trains, the warm-up and
tiny runs on a same-family and a heterogeneous pair."""
import math

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from conftest import REPO, compose_config, read_json
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.reviewkd import ABF, Review, hcl_level, hcl_loss
from kdrun.models import MODELS
from kdrun.run import run
from inprocess import one_cpu_thread  # noqa: F401  (autouse: tiny models on one thread)
from tiny_conv import TinyConv


def method_cfg(**over):
    cfg = OmegaConf.load(REPO / "conf" / "method" / "reviewkd.yaml")
    cfg.pop("defaults")
    return OmegaConf.merge(cfg, over)


INFO = DataInfo(channels=1, image_size=(8, 8), num_classes=3, train_size=16)


def pair(seed=0, student_widths=(3, 5), teacher_widths=(4, 7)):
    torch.manual_seed(seed)
    return TinyConv(student_widths), TinyConv(teacher_widths)


# ---- the hierarchical context loss, by hand --------------------------------------------------------

def grid(values, h, w):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, h, w)


def hand_mse(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)


def hand_pool(flat, h, w, size):
    """Average of each (h/size) x (w/size) block (sizes that divide, as below)."""
    bh, bw = h // size, w // size
    return [sum(flat[(i * bh + di) * w + j * bw + dj] for di in range(bh) for dj in range(bw)) / (bh * bw)
            for i in range(size) for j in range(size)]


def hand_hcl(a, b, h, w, kept):
    """MSE of the maps, then the pooled MSEs of `kept` sizes at weights 1/2, 1/4, 1/8, over the weights' sum."""
    loss, total, weight = hand_mse(a, b), 1.0, 1.0
    for size in kept:
        weight /= 2
        loss += weight * hand_mse(hand_pool(a, h, w, size), hand_pool(b, h, w, size))
        total += weight
    return loss / total


@pytest.mark.parametrize("side,kept,total", [(8, (4, 2, 1), 1.875), (4, (2, 1), 1.75), (2, (1,), 1.5), (1, (), 1.0)])
def test_hcl_level_against_its_formula(side, kept, total):
    n = side * side
    a = [((3 * k) % 7) - 2.5 + 0.1 * k for k in range(n)]
    b = [((5 * k) % 4) * 0.75 - k / n for k in range(n)]
    expected = hand_hcl(a, b, side, side, kept)
    assert hcl_level(grid(a, side, side), grid(b, side, side)).item() == pytest.approx(expected, rel=1e-6)
    # the weights: 1 for the map, then halving for each pooled level kept (those smaller than the height)
    assert sum([1.0] + [0.5 ** (k + 1) for k in range(len(kept))]) == total


def test_hcl_on_an_8x8_map_written_out():
    a = grid([float(k) for k in range(64)], 8, 8)
    b = torch.zeros(1, 1, 8, 8)
    full = sum(k * k for k in range(64)) / 64
    pool4 = [sum(8 * (2 * i + di) + 2 * j + dj for di in (0, 1) for dj in (0, 1)) / 4 for i in range(4) for j in range(4)]
    pool2 = [sum(8 * (4 * i + di) + 4 * j + dj for di in range(4) for dj in range(4)) / 16 for i in range(2) for j in range(2)]
    pool1 = 31.5
    expected = (full + 0.5 * sum(v * v for v in pool4) / 16 + 0.25 * sum(v * v for v in pool2) / 4
                + 0.125 * pool1 ** 2) / (1 + 0.5 + 0.25 + 0.125)
    assert hcl_level(a, b).item() == pytest.approx(expected, rel=1e-6)
    assert hcl_level(a, a).item() == 0.0


def test_hcl_loss_sums_the_levels_and_averages_over_channels_and_batch():
    torch.manual_seed(0)
    outs = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2), torch.randn(2, 5, 1, 1)]
    targets = [torch.randn_like(o) for o in outs]
    assert hcl_loss(outs, targets).item() == pytest.approx(sum(hcl_level(o, t).item() for o, t in zip(outs, targets)),
                                                           rel=1e-6)
    o, t = outs[0], targets[0]
    by_hand = sum(hand_hcl(o[i, c].flatten().tolist(), t[i, c].flatten().tolist(), 4, 4, (2, 1))
                  for i in range(2) for c in range(3)) / 6  # each term a mean over all elements
    assert hcl_level(o, t).item() == pytest.approx(by_hand, rel=1e-5)


# ---- the attention-based fusion on a hand-set module -----------------------------------------------

def identity_bn(bn):
    """Eval mode, running mean 0, weight 1, bias 0, and var + eps = 1: the identity to float rounding
    (eps = 0 would make it exact, but torch 2.11 refuses it)."""
    bn.running_var.fill_(1.0 - bn.eps)
    return bn


def hand_set_abf():
    abf = ABF(in_channels=2, mid_channels=2, out_channels=3, fuse=True).eval()
    with torch.no_grad():
        abf.conv1[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.5, -1.0]]).view(2, 2, 1, 1))
        identity_bn(abf.conv1[1]), identity_bn(abf.conv2[1])
        # attention logits from [x (2 channels), residual (2 channels)]
        abf.att_conv[0].weight.copy_(torch.tensor([[0.5, -0.25, 1.0, 0.0], [0.0, 0.75, -0.5, 0.25]]).view(2, 4, 1, 1))
        abf.att_conv[0].bias.copy_(torch.tensor([0.1, -0.2]))
    return abf


def test_abf_fuses_with_two_sigmoid_maps_then_resizes_to_the_teacher():
    abf = hand_set_abf()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.5], [2.0, 0.0]]]])  # 1 x 2 x 2 x 2 (the student's level)
    residual = torch.tensor([[[[2.0]], [[-3.0]]]])  # 1 x 2 x 1 x 1 (from the deeper level)
    out, fused = abf(x, residual, (4, 4))
    assert out.shape == (1, 3, 4, 4) and fused.shape == (1, 2, 4, 4)

    def sigmoid(v):
        return 1 / (1 + math.exp(-v))

    expected = [[[0.0] * 2 for _ in range(2)] for _ in range(2)]
    for i in range(2):
        for j in range(2):
            x0, x1 = x[0, 0, i, j].item(), x[0, 1, i, j].item()
            m = [x0, 0.5 * x0 - x1]  # conv1 (the BN is the identity)
            r = [2.0, -3.0]  # the residual, nearest-upsampled from 1x1
            a0 = sigmoid(0.5 * m[0] - 0.25 * m[1] + 1.0 * r[0] + 0.0 * r[1] + 0.1)
            a1 = sigmoid(0.0 * m[0] + 0.75 * m[1] - 0.5 * r[0] + 0.25 * r[1] - 0.2)
            for c in range(2):
                expected[c][i][j] = m[c] * a0 + r[c] * a1  # sigmoids, not a softmax: a0 + a1 != 1
    for c in range(2):
        for i in range(4):
            for j in range(4):  # nearest upsampling 2x2 -> 4x4 to the teacher's size
                assert fused[0, c, i, j].item() == pytest.approx(expected[c][i // 2][j // 2], rel=1e-6)
    assert torch.allclose(out, abf.conv2(fused))  # then the 3x3 conv + BN to the teacher's channels


def test_abf_attention_is_a_sigmoid_per_map_and_the_deepest_level_fuses_nothing():
    abf = hand_set_abf()
    assert isinstance(abf.att_conv[1], nn.Sigmoid) and abf.att_conv[0].out_channels == 2
    assert abf.att_conv[0].bias is not None
    assert abf.conv1[0].bias is None and abf.conv2[0].bias is None
    assert abf.conv1[0].kernel_size == (1, 1) and abf.conv2[0].kernel_size == (3, 3)
    deepest = ABF(4, 3, 5, fuse=False).eval()
    assert deepest.att_conv is None
    x = torch.randn(2, 4, 1, 1)
    out, fused = deepest(x, None, (1, 1))
    assert out.shape == (2, 5, 1, 1) and torch.allclose(fused, deepest.conv1(x))


# ---- the review order -----------------------------------------------------------------------------

def test_review_runs_the_deepest_level_first_and_hands_each_fused_map_down():
    review = Review(in_channels=[3, 5, 5], out_channels=[4, 7, 7], out_sizes=[(8, 8), (4, 4), (1, 1)],
                    mid_channels=6).eval()
    calls = []
    for i, abf in enumerate(review.abfs):
        original = abf.forward

        def record(x, residual=None, out_size=None, i=i, original=original):
            out, fused = original(x, residual, out_size)
            calls.append((i, residual, out, fused))
            return out, fused

        abf.forward = record
    feats = [torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4), torch.randn(2, 5)]  # the embedding: a vector
    outs = review(feats)
    assert [c[0] for c in calls] == [2, 1, 0]  # the deepest (the embedding) first
    assert calls[0][1] is None and review.abfs[2].att_conv is None
    assert calls[1][1] is calls[0][3] and calls[2][1] is calls[1][3]  # each level fuses the deeper one's map
    assert [o.shape for o in outs] == [(2, 4, 8, 8), (2, 7, 4, 4), (2, 7, 1, 1)]  # the teacher's level i
    assert all(outs[i] is calls[2 - i][2] for i in range(3))


def test_method_pairs_student_stages_and_teacher_preactivations_with_the_embeddings_last():
    student, teacher = pair()
    method = build_method(method_cfg(), student, teacher, INFO).eval()
    assert method.s_paths == ["layer1", "layer2", "fc:in"]  # after the ReLU (the reference's student)
    assert method.t_paths == ["layer1.2:in", "layer2.2:in", "fc:in"]  # pre-ReLU (the reference's teacher)
    assert [a.conv1[0].in_channels for a in method.review.abfs] == [3, 5, 5]
    assert [a.conv2[0].out_channels for a in method.review.abfs] == [4, 7, 7]
    assert {a.conv1[0].out_channels for a in method.review.abfs} == {5}  # min(512, the student's deepest)
    x, y = torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    _, losses = method.forward_train(x, y, epoch=20)
    s1 = student.layer1(student.stem(x))
    s2 = student.layer2(s1)
    t1 = teacher.layer1[1](teacher.layer1[0](teacher.stem(x)))
    t2 = teacher.layer2[1](teacher.layer2[0](torch.relu(t1)))
    outs = method.review([s1, s2, student.pool(s2).flatten(1)])
    targets = [t1, t2, teacher.pool(torch.relu(t2))]
    assert losses["reviewkd"].item() == pytest.approx(5.0 * hcl_loss(outs, targets).item(), rel=1e-5)
    preact = build_method(method_cfg(student_preact=True, mid_channels=9), student, teacher, INFO)
    assert preact.s_paths == ["layer1.2:in", "layer2.2:in", "fc:in"]
    assert {a.conv1[0].out_channels for a in preact.review.abfs} == {9}


def zoo(name):
    with torch.device("meta"):
        return MODELS.get(name)(num_classes=100, in_channels=3, image_size=(32, 32))


# The authors' build_review_kd (and mdistiller's REVIEWKD config for resnet32x4 -> resnet8x4), deepest first:
# student in_channels reversed, teacher out_channels reversed, the student's sizes (`shapes`), the teacher's
# (`out_shapes`, = shapes when None).
REFERENCE = {
    ("wrn40_2", "wrn16_2"): ([32, 64, 128, 128], [32, 64, 128, 128], [1, 8, 16, 32], [1, 8, 16, 32]),
    ("wrn40_2", "wrn40_1"): ([16, 32, 64, 64], [32, 64, 128, 128], [1, 8, 16, 32], [1, 8, 16, 32]),
    ("resnet56", "resnet20"): ([16, 32, 64, 64], [16, 32, 64, 64], [1, 8, 16, 32], [1, 8, 16, 32]),
    ("resnet32x4", "resnet8x4"): ([64, 128, 256, 256], [64, 128, 256, 256], [1, 8, 16, 32], [1, 8, 16, 32]),
    ("resnet32x4", "shufflenetv1"): ([240, 480, 960, 960], [64, 128, 256, 256], [1, 4, 8, 16], [1, 8, 16, 32]),
    ("wrn40_2", "shufflenetv1"): ([240, 480, 960, 960], [32, 64, 128, 128], [1, 4, 8, 16], [1, 8, 16, 32]),
    ("resnet32x4", "shufflenetv2"): ([116, 232, 464, 1024], [64, 128, 256, 256], [1, 4, 8, 16], [1, 8, 16, 32]),
    ("vgg13", "vgg8"): ([128, 256, 512, 512, 512], [128, 256, 512, 512, 512], [1, 4, 4, 8, 16], [1, 4, 4, 8, 16]),
    ("vgg13", "mobilenetv2"): ([12, 16, 48, 160, 1280], [128, 256, 512, 512, 512], [1, 2, 4, 8, 16],
                               [1, 4, 4, 8, 16]),
    ("resnet50", "vgg8"): ([128, 256, 512, 512, 512], [256, 512, 1024, 2048, 2048], [1, 4, 4, 8, 16],
                           [1, 4, 8, 16, 32]),
}


@pytest.mark.parametrize("teacher,student", sorted(REFERENCE))
def test_abfs_match_the_reference_settings_on_the_cifar_pairs(teacher, student):
    in_channels, out_channels, shapes, out_shapes = REFERENCE[(teacher, student)]
    s, t = zoo(student), zoo(teacher)
    method = build_method(method_cfg(), s, t, DataInfo(channels=3, image_size=(32, 32), num_classes=100, train_size=64))
    abfs = list(method.review.abfs)[::-1]  # deepest first, as the reference lists them
    assert [a.conv1[0].in_channels for a in list(method.review.abfs)] == in_channels
    assert [a.conv2[0].out_channels for a in method.review.abfs] == out_channels
    assert {a.conv1[0].out_channels for a in abfs} == {min(512, in_channels[-1])}
    assert [a.att_conv is None for a in abfs] == [True] + [False] * (len(abfs) - 1)
    s_sizes = [shape[1] if len(shape) == 3 else 1 for shape in method.shapes(s, method.s_paths, "student")]
    assert s_sizes[::-1] == shapes
    assert [size[0] for size in method.review.out_sizes][::-1] == out_shapes
    assert method.s_paths[-1].endswith(":in") and method.t_paths[-1].endswith(":in")  # the embeddings, last


# ---- what trains, the weight ----------------------------------------------------------------------

def test_abfs_train_with_the_student_and_the_teacher_gets_no_gradient():
    student, teacher = pair()
    method = build_method(method_cfg(), student, teacher, INFO)
    trained = {id(p) for p in method.parameters() if p.requires_grad}  # what the training loop optimises
    assert all(id(p) in trained for p in method.review.parameters())
    assert all(id(p) in trained for p in student.parameters())
    assert not any(id(p) in trained for p in teacher.parameters())
    assert any(k.startswith("review.abfs.0.att_conv") for k in method.state_dict())  # saved with the student
    assert not any(k.startswith("_teacher") for k in method.state_dict())
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    _, losses = method.forward_train(x, y, epoch=30)
    losses["reviewkd"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.review.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.layer1.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_warm_up_weight_is_linear_in_the_epoch_then_beta():
    student, teacher = pair()
    method = build_method(method_cfg(), student, teacher, INFO)
    for epoch, ramp in [(1, 0.05), (10, 0.5), (20, 1.0), (240, 1.0)]:
        weights = method.weights(epoch)
        assert weights["reviewkd"] == pytest.approx(5.0 * ramp) and weights["ce"] == 1.0
        assert weights["kd"] == 0.0
    no_ramp = build_method(method_cfg(warmup=0, beta=2.0, alpha=0.5), student, teacher, INFO)
    assert no_ramp.weights(1) == {"ce": 1.0, "kd": 0.5, "reviewkd": 2.0}
    off = build_method(method_cfg(beta=0.0), student, teacher, INFO)
    _, losses = off.forward_train(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), epoch=5)
    assert set(losses) == {"ce"}  # a zero weight: the term is not computed


@pytest.mark.parametrize("over,match", [({"warmup": -1}, "warmup"), ({"mid_channels": 0}, "mid_channels"),
                                        ({"beta": -1.0}, "beta")])
def test_impossible_values_are_refused(over, match):
    student, teacher = pair()
    with pytest.raises(UserError, match=match):
        build_method(method_cfg(**over), student, teacher, INFO)


# ---- tiny runs ------------------------------------------------------------------------------------

TINY = ["dataset=synthetic", "dataset.train_size=16", "dataset.test_size=8", "dataset.image_size=16",
        "dataset.num_classes=4", "train.epochs=1", "train.batch_size=16", "teacher.train.epochs=1",
        "teacher.train.batch_size=16", "progress=false"]


@pytest.mark.parametrize("teacher,student", [("wrn40_2", "wrn16_2"), ("resnet8", "vgg8")])
def test_reviewkd_runs_on_a_same_family_and_a_heterogeneous_pair(teacher, student, tmp_path):
    cfg = compose_config(TINY + ["method=reviewkd", f"teacher={teacher}", f"student={student}"])
    metrics = run(cfg, tmp_path / "run")
    assert metrics["status"] == "completed"
    assert read_json(tmp_path / "run" / "metrics.json")["status"] == "completed"
    losses = metrics["history"][0]["losses"]
    assert "reviewkd" in losses and "ce" in losses
