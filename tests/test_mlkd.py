"""MLKD (Jin et al., CVPR 2023): each level against its formula written out by hand, the confidence masks,
the whole loss against the authors' KD_ours.forward_train (transcribed below from its formulas), the
wiring of the two views, short runs of `kdrun method=mlkd` and an exact resume."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose_config
from kdrun.data import build_dataset
from kdrun.data.augment import Augmentation
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.logit_stand import standardize
from kdrun.methods.mlkd import (MLKDConfig, batch_gram_loss, class_gram_loss, confidence_masks, instance_loss)
from kdrun.run import run
from kdrun.training.loop import fit
from kdrun.training.recipe import Recipe

S = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 0.0], [-0.5, 2.5, 0.3]])
T_LOGITS = torch.tensor([[1.5, 1.0, -0.5], [-1.0, 0.0, 2.0], [3.0, 0.0, 0.0], [0.0, 0.2, 0.1]])
S_STRONG = torch.tensor([[0.3, 0.1, 0.0], [1.0, -1.0, 0.5], [0.0, 2.0, 1.0], [0.2, 0.2, 0.9]])
T_STRONG = torch.tensor([[0.9, 0.0, 0.1], [0.5, -0.5, 1.5], [2.0, 0.5, 0.0], [-0.3, 0.4, 0.0]])
Y = torch.tensor([0, 2, 0, 1])


def softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def hand_instance(s, t, T):
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps, pt = softmax(srow, T), softmax(trow, T)
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    return total / len(s) * T * T


def gram(P, rows: bool):
    """P P^T (rows: between the batch's samples) or P^T P (between classes), as lists of lists."""
    if rows:
        return [[sum(a * b for a, b in zip(P[i], P[j])) for j in range(len(P))] for i in range(len(P))]
    C = len(P[0])
    return [[sum(P[k][i] * P[k][j] for k in range(len(P))) for j in range(C)] for i in range(C)]


def hand_gram_loss(s, t, T, rows: bool):
    Ps = [softmax(r, T) for r in s.tolist()]
    Pt = [softmax(r, T) for r in t.tolist()]
    Gs, Gt = gram(Ps, rows), gram(Pt, rows)
    total = sum((a - b) ** 2 for ra, rb in zip(Gt, Gs) for a, b in zip(ra, rb))
    return total / (len(Ps) if rows else len(Ps[0]))


@pytest.mark.parametrize("T", [1.0, 2.0, 6.0])
def test_each_level_is_its_formula(T):
    assert instance_loss(S, T_LOGITS, T).item() == pytest.approx(hand_instance(S, T_LOGITS, T), rel=1e-4)
    assert batch_gram_loss(S, T_LOGITS, T).item() == pytest.approx(hand_gram_loss(S, T_LOGITS, T, True), rel=1e-4)
    assert class_gram_loss(S, T_LOGITS, T).item() == pytest.approx(hand_gram_loss(S, T_LOGITS, T, False), rel=1e-4)
    for loss in (instance_loss, batch_gram_loss, class_gram_loss):
        assert loss(T_LOGITS, T_LOGITS, T).item() == pytest.approx(0.0, abs=1e-6)


def test_the_masks_keep_what_lies_at_or_below_the_median():
    conf = [max(softmax(r)) for r in T_LOGITS.tolist()]
    median = sorted(conf)[1] / 2 + sorted(conf)[2] / 2  # numpy's linear interpolation, 4 values
    samples, classes = confidence_masks(T_LOGITS, 50.0)
    assert samples.tolist() == [c <= median for c in conf] and samples.sum() == 2
    class_sums = [sum(softmax(r)[k] for r in T_LOGITS.tolist()) for k in range(3)]
    assert classes.tolist() == [c <= sorted(class_sums)[1] for c in class_sums] and classes.sum() == 2
    # an odd batch keeps its median sample; the threshold is numpy's percentile
    five = torch.cat([T_LOGITS, torch.tensor([[0.5, 0.4, 0.0]])])
    conf5 = F.softmax(five, 1).max(1).values
    for q in (50.0, 30.0, 75.0):
        threshold = np.percentile(conf5.numpy(), q)
        assert confidence_masks(five, q)[0].tolist() == (conf5.numpy() <= threshold).tolist()
    assert confidence_masks(five, 50.0)[0].sum() == 3
    assert confidence_masks(five, 100.0)[0].all() and confidence_masks(five, 0.0)[0].sum() == 1


class TwoViewLogits(nn.Module):
    """Fixed logits per view: rows of `weak` for inputs of zeros, of `strong` for inputs of ones (the
    teacher gets both views in one batch)."""

    def __init__(self, weak, strong):
        super().__init__()
        self.weak, self.strong = nn.Parameter(weak.clone()), nn.Parameter(strong.clone())
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        rows = torch.arange(x.shape[0]) % self.weak.shape[0]
        return torch.where(x.flatten(1)[:, :1] > 0, self.strong[rows], self.weak[rows])


def mlkd(**overrides):
    cfg = OmegaConf.merge(OmegaConf.structured(MLKDConfig), overrides)
    student, teacher = TwoViewLogits(S, S_STRONG), TwoViewLogits(T_LOGITS, T_STRONG)
    return build_method(cfg, student, teacher, DataInfo(1, (1, 1), 3)), student, teacher


WEAK, STRONG = torch.zeros(4, 1, 1, 1), torch.ones(4, 1, 1, 1)


def reference_losses(s_w, s_s, t_w, t_s, y, ce_w=0.1, kd_w=0.9, T=4.0):
    """The authors' KD_ours.forward_train (Multi-Level-Logit-Distillation, mdistiller/distillers/KD_ours.py)
    in its own terms: kd_loss, cc_loss, bc_loss reduced; masks from numpy's percentile, applied with
    `(loss * mask).mean()`; the strong sum's T=2 and T=6 terms on the weak logits."""
    def kd(s, t, temp):
        return (F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction="none").sum(1).mean()
                * temp ** 2)

    def cc(s, t, temp):
        ps, pt = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
        return ((pt.T @ pt - ps.T @ ps) ** 2).sum() / s.shape[1]

    def bc(s, t, temp):
        ps, pt = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
        return ((pt @ pt.T - ps @ ps.T) ** 2).sum() / s.shape[0]

    p = F.softmax(t_w, 1)
    conf = p.max(1).values
    mask = conf.le(float(np.percentile(conf.numpy().flatten(), 50))).bool()
    class_conf = p.sum(0)
    class_mask = class_conf.le(float(np.percentile(class_conf.numpy().flatten(), 50))).bool()
    temps = [T, 3.0, 5.0, 2.0, 6.0]
    kd_weak = sum(kd_w * (kd(s_w, t_w, k) * mask).mean() for k in temps)
    kd_strong = sum(kd_w * kd(s_s, t_s, k) for k in [T, 3.0, 5.0]) + sum(kd_w * kd(s_w, t_w, k) for k in [2.0, 6.0])
    return {"loss_ce": ce_w * (F.cross_entropy(s_w, y) + F.cross_entropy(s_s, y)),
            "loss_kd": kd_weak + kd_strong,
            "loss_cc": sum(kd_w * (cc(s_w, t_w, k) * class_mask).mean() for k in temps),
            "loss_bc": sum(kd_w * (bc(s_w, t_w, k) * mask).mean() for k in temps)}


def test_the_loss_is_the_authors():
    method, _, _ = mlkd()
    _, losses = method.forward_train(WEAK, Y, x_strong=STRONG)
    assert set(losses) == {"ce", "ce_strong", "instance", "instance_unmasked", "instance_strong", "batch", "class"}
    ref = reference_losses(S, S_STRONG, T_LOGITS, T_STRONG, Y)
    assert (losses["ce"] + losses["ce_strong"]).item() == pytest.approx(ref["loss_ce"].item(), rel=1e-5)
    kd = losses["instance"] + losses["instance_unmasked"] + losses["instance_strong"]
    assert kd.item() == pytest.approx(ref["loss_kd"].item(), rel=1e-5)
    assert losses["class"].item() == pytest.approx(ref["loss_cc"].item(), rel=1e-5)
    assert losses["batch"].item() == pytest.approx(ref["loss_bc"].item(), rel=1e-5)
    # each term by hand: half the batch and two of the three classes lie at or below the medians
    temps = [2.0, 3.0, 4.0, 5.0, 6.0]
    assert losses["instance"].item() == pytest.approx(
        0.9 * 0.5 * sum(hand_instance(S, T_LOGITS, T) for T in temps), rel=1e-4)
    assert losses["instance_unmasked"].item() == pytest.approx(
        0.9 * sum(hand_instance(S, T_LOGITS, T) for T in (2.0, 6.0)), rel=1e-4)
    assert losses["instance_strong"].item() == pytest.approx(
        0.9 * sum(hand_instance(S_STRONG, T_STRONG, T) for T in (3.0, 4.0, 5.0)), rel=1e-4)
    assert losses["batch"].item() == pytest.approx(
        0.9 * 0.5 * sum(hand_gram_loss(S, T_LOGITS, T, True) for T in temps), rel=1e-4)
    assert losses["class"].item() == pytest.approx(
        0.9 * 2 / 3 * sum(hand_gram_loss(S, T_LOGITS, T, False) for T in temps), rel=1e-4)
    ce_strong = -sum(math.log(softmax(r)[c]) for r, c in zip(S_STRONG.tolist(), Y.tolist())) / 4
    assert losses["ce_strong"].item() == pytest.approx(0.1 * ce_strong, rel=1e-5)


def test_logit_stand_z_scores_the_instance_level_only():
    """Sun et al.'s MLKD: `normalize` inside kd_loss alone; cc_loss, bc_loss and the masks see raw logits."""
    plain, _, _ = mlkd()
    stand, _, _ = mlkd(logit_stand=True, temperatures=[2.0, 3.0, 5.0, 2.0, 6.0], strong_temperatures=[2.0, 3.0, 5.0],
                       kd_weight=9.0)
    base = plain.forward_train(WEAK, Y, x_strong=STRONG)[1]
    losses = stand.forward_train(WEAK, Y, x_strong=STRONG)[1]
    zs, zt = standardize(S), standardize(T_LOGITS)
    temps = [2.0, 3.0, 5.0, 2.0, 6.0]
    assert losses["instance"].item() == pytest.approx(9 * 0.5 * sum(hand_instance(zs, zt, T) for T in temps), rel=1e-4)
    assert losses["instance_strong"].item() == pytest.approx(
        9 * sum(hand_instance(standardize(S_STRONG), standardize(T_STRONG), T) for T in (2.0, 3.0, 5.0)), rel=1e-4)
    assert losses["batch"].item() == pytest.approx(
        9 * 0.5 * sum(hand_gram_loss(S, T_LOGITS, T, True) for T in temps), rel=1e-4)
    assert losses["ce"].item() == pytest.approx(base["ce"].item())


def test_both_models_see_both_views_and_only_the_student_learns():
    method, student, teacher = mlkd()
    s_logits, losses = method.forward_train(WEAK, Y, x_strong=STRONG)
    assert torch.equal(s_logits, S)  # the weak view's logits, as the reference returns
    assert student.calls == [4, 4]  # two forwards: batch norm sees each view apart
    assert teacher.calls == [8]  # one forward of both views
    sum(losses.values()).backward()
    assert student.weak.grad.abs().sum() > 0 and student.strong.grad.abs().sum() > 0
    assert teacher.weak.grad is None and teacher.strong.grad is None
    assert not any("teacher" in k for k in method.state_dict())
    # without a strong view (the lone-batch check) the weak one stands in
    method.forward_train(WEAK, Y)
    assert student.calls[-1] == 4


def test_switching_parts_off():
    method, student, teacher = mlkd(strong_view=False, unmasked_temperatures=[])
    assert not method.strong_view
    _, losses = method.forward_train(WEAK, Y, x_strong=STRONG)
    assert set(losses) == {"ce", "instance", "batch", "class"}
    assert student.calls == [4] and teacher.calls == [4]
    method, _, _ = mlkd(temperatures=[], kd_weight=0.9)
    assert set(method.forward_train(WEAK, Y, x_strong=STRONG)[1]) == {"ce", "ce_strong", "instance_unmasked",
                                                                       "instance_strong"}


@pytest.mark.parametrize("override,message", [
    ({"temperatures": [2.0, -1.0]}, "method.temperatures"),
    ({"strong_temperatures": [0.0]}, "method.strong_temperatures"),
    ({"kd_weight": -0.1}, "method.kd_weight"),
    ({"mask_percentile": 101.0}, "method.mask_percentile"),
    ({"ce_weight": -1.0}, "method.ce_weight"),
])
def test_bad_values_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        mlkd(**override)


def test_the_config_group_has_the_authors_values():
    method = compose_config(["method=mlkd"]).method
    assert method.ce_weight == 0.1 and method.kd_weight == 0.9
    assert list(method.temperatures) == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert list(method.strong_temperatures) == [3.0, 4.0, 5.0] and list(method.unmasked_temperatures) == [2.0, 6.0]
    assert method.mask_percentile == 50.0 and method.strong_view and not method.logit_stand


TINY = ["dataset=synthetic", "dataset.train_size=16", "dataset.test_size=8", "dataset.image_size=16",
        "dataset.num_classes=4", "train.epochs=1", "train.batch_size=16", "teacher.train.epochs=1",
        "teacher.train.batch_size=16", "progress=false"]


@pytest.mark.parametrize("teacher,student,extra", [
    ("wrn16_1", "wrn10_1", []),
    ("resnet8", "vgg8", ["train.augment={crop_padding:2,flip:true}", "method.logit_stand=true"]),
])
def test_mlkd_runs_on_zoo_pairs(teacher, student, extra, tmp_path):
    cfg = compose_config(TINY + ["method=mlkd", f"teacher={teacher}", f"student={student}", *extra])
    metrics = run(cfg, tmp_path / "run")
    assert metrics["status"] == "completed"
    terms = metrics["history"][0]["losses"]
    assert set(terms) == {"ce", "ce_strong", "instance", "instance_unmasked", "instance_strong", "batch", "class"}
    assert all(math.isfinite(v) for v in terms.values())


def test_an_interrupted_stage_resumes_exactly(tmp_path):
    """The strong view's generator is seeded from (seed, stage, epoch): a stage stopped after epoch 1 and
    resumed from its checkpoint ends with the weights of one never stopped."""
    data = build_dataset(OmegaConf.create({"name": "synthetic", "train_size": 24, "test_size": 8, "val_size": 0,
                                           "channels": 3, "image_size": 8, "num_classes": 3, "noise": 1.0,
                                           "data_seed": 0}), torch.device("cpu"))
    data.augment = Augmentation(crop_padding=2, flip=True)
    recipe = Recipe(epochs=2, batch_size=8, lr=0.05, milestones=[], precision="fp32")

    def train(checkpoint=None, on_epoch=None):
        torch.manual_seed(0)
        make = lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),  # noqa: E731
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        student, teacher = make(), make()
        method = build_method(OmegaConf.structured(MLKDConfig), student, teacher, data.info)
        fit(method, data, recipe, stage="mlkd", seed=7, checkpoint=checkpoint, on_epoch=on_epoch)
        return student

    class Stop(Exception):
        pass

    def stop(entry):
        raise Stop

    whole = train()
    checkpoint = tmp_path / "mlkd.pt"
    with pytest.raises(Stop):
        train(checkpoint, on_epoch=stop)  # after epoch 1's checkpoint
    resumed = train(checkpoint)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
