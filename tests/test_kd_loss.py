"""The KD loss against Hinton et al. 2015's formula, written out by hand here."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from fixed_logits import Fixed
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.kd import kd_loss

S = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
T_LOGITS = torch.tensor([[1.5, 1.0, -0.5], [-1.0, 0.0, 2.0]])


def softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def hand_kd(s, t, T):
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps, pt = softmax(srow, T), softmax(trow, T)
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    return total / len(s) * T * T


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_kd_loss_is_t_squared_scaled_kl(T):
    assert kd_loss(S, T_LOGITS, T).item() == pytest.approx(hand_kd(S, T_LOGITS, T), rel=1e-3)  # float32 at T^2 = 400


def test_kd_loss_zero_when_student_equals_teacher():
    assert kd_loss(T_LOGITS, T_LOGITS, 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_splits_hard_and_soft_terms():
    y = torch.tensor([0, 2])
    cfg = OmegaConf.create({"name": "kd", "T": 4.0, "alpha": 0.3, "ce_weight": None})
    method = build_method(cfg, Fixed(S), Fixed(T_LOGITS), DataInfo(1, (1, 1), 3))
    _, losses = method.forward_train(torch.zeros(2, 1, 1, 1), y)
    ce = -sum(math.log(softmax(row, 1.0)[c]) for row, c in zip(S.tolist(), y.tolist())) / 2
    assert losses["ce"].item() == pytest.approx(0.7 * ce, rel=1e-5)
    assert losses["kd"].item() == pytest.approx(0.3 * hand_kd(S, T_LOGITS, 4.0), rel=1e-5)


def test_gradients_reach_the_student_not_the_teacher():
    cfg = OmegaConf.create({"name": "kd", "T": 2.0, "alpha": 0.9, "ce_weight": None})
    student, teacher = Fixed(S), Fixed(T_LOGITS)
    method = build_method(cfg, student, teacher, DataInfo(1, (1, 1), 3))
    _, losses = method.forward_train(torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]))
    sum(losses.values()).backward()
    assert student.logits.grad is not None and student.logits.grad.abs().sum() > 0
    assert teacher.logits.grad is None
    assert not any(p is teacher.logits for p in method.parameters())
    assert not any(k.startswith("teacher") or "_teacher" in k for k in method.state_dict())


@pytest.mark.parametrize("T,alpha", [(-1.0, 0.5), (0.0, 0.5), (4.0, 1.5), (4.0, -0.1)])
def test_impossible_temperature_or_alpha_is_refused(T, alpha):
    cfg = OmegaConf.create({"name": "kd", "T": T, "alpha": alpha, "ce_weight": None})
    with pytest.raises(UserError, match="method"):
        build_method(cfg, Fixed(S), Fixed(T_LOGITS), DataInfo(1, (1, 1), 3))
