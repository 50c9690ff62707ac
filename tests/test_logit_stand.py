"""Logit standardisation (Sun et al., CVPR 2024) as `method.logit_stand` of kd, dkd and the KD term of the
other methods, against its formula written out by hand here: each sample's logits z-scored (the mean and
the unbiased std over the classes, + 1e-7), then the KL at the temperature."""
import math
import re
import statistics

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, compose_refusal
from fixed_logits import Fixed
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.dkd import dkd_terms
from kdrun.methods.kd import kd_loss
from kdrun.methods.logit_stand import standardize

S = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -0.5]], dtype=torch.float64)
T_LOGITS = torch.tensor([[6.0, 4.0, -2.0, 1.0], [-3.0, 0.0, 9.0, 1.5]], dtype=torch.float64)
Y = torch.tensor([0, 2])
INFO = DataInfo(1, (1, 1), 4)
X = torch.zeros(2, 1, 1, 1)


def z_scores(row):
    mean, std = statistics.mean(row), statistics.stdev(row)  # stdev: the unbiased one (n - 1)
    return [(v - mean) / (std + 1e-7) for v in row]


def softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    """KL(p || q)."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def hand_ls_kd(s, t, T):
    """T^2 * mean over rows of KL(softmax(z(t) / T) || softmax(z(s) / T))."""
    rows = [kl(softmax(z_scores(tr), T), softmax(z_scores(sr), T)) for sr, tr in zip(s.tolist(), t.tolist())]
    return sum(rows) / len(rows) * T * T


def hand_dkd(s, t, y, T, standardise=True):
    """T^2 * TCKD and T^2 * NCKD (batch means), the logits z-scored over all the classes first."""
    tckd = nckd = 0.0
    for sr, tr, c in zip(s.tolist(), t.tolist(), y.tolist()):
        if standardise:
            sr, tr = z_scores(sr), z_scores(tr)
        ps, pt = softmax(sr, T), softmax(tr, T)
        tckd += kl([pt[c], 1 - pt[c]], [ps[c], 1 - ps[c]])
        rest = [k for k in range(len(sr)) if k != c]
        nckd += kl(softmax([tr[k] for k in rest], T), softmax([sr[k] for k in rest], T))
    n = len(y)
    return tckd / n * T * T, nckd / n * T * T


def kd_config(**over):
    return OmegaConf.create({"name": "kd", "T": 2.0, "alpha": 9.0, "ce_weight": 0.1, "teachers": [],
                             "ensemble": "arithmetic", "variant": None, "logit_stand": True, "stop_epoch": None,
                             **over})


def dkd_config(**over):
    return OmegaConf.create({"name": "dkd", "T": 2.0, "alpha": 0.0, "beta": 1.0, "ce_weight": 1.0, "dkd_alpha": 9.0,
                             "dkd_beta": 72.0, "warmup": 0, "logit_stand": True, "stop_epoch": None, **over})


def test_standardize_is_the_z_score_with_the_unbiased_std():
    for got, row in zip(standardize(T_LOGITS).tolist(), T_LOGITS.tolist()):
        assert got == pytest.approx(z_scores(row), rel=1e-12)
    half = standardize(T_LOGITS.half())
    assert half.dtype == torch.float32  # computed in at least fp32


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_ls_kd_against_the_formula(T):
    assert kd_loss(S, T_LOGITS, T, logit_stand=True).item() == pytest.approx(hand_ls_kd(S, T_LOGITS, T), rel=1e-4)
    method = build_method(kd_config(T=T), Fixed(S), Fixed(T_LOGITS), INFO)
    _, losses = method.forward_train(X, Y)
    assert losses["kd"].item() == pytest.approx(9.0 * hand_ls_kd(S, T_LOGITS, T), rel=1e-4)
    ce = -sum(math.log(softmax(row, 1.0)[c]) for row, c in zip(S.tolist(), Y.tolist())) / 2
    assert losses["ce"].item() == pytest.approx(0.1 * ce, rel=1e-4)  # the hard labels see the raw logits
    # Not plain KD: the raw logits give another value.
    assert kd_loss(S, T_LOGITS, T).item() != pytest.approx(hand_ls_kd(S, T_LOGITS, T), rel=1e-3)


def test_ls_loss_is_invariant_to_each_samples_shift_and_scale():
    """The point of the method: the student matches the teacher's logit relations, not their range."""
    torch.manual_seed(0)
    s, t = torch.randn(8, 10, dtype=torch.float64), torch.randn(8, 10, dtype=torch.float64) * 3
    scale_s, shift_s = torch.rand(8, 1, dtype=torch.float64) * 5 + 0.2, torch.randn(8, 1, dtype=torch.float64) * 10
    scale_t, shift_t = torch.rand(8, 1, dtype=torch.float64) * 5 + 0.2, torch.randn(8, 1, dtype=torch.float64) * 10
    base = kd_loss(s, t, 2.0, logit_stand=True).item()
    assert kd_loss(s * scale_s + shift_s, t * scale_t + shift_t, 2.0, logit_stand=True).item() == \
        pytest.approx(base, rel=1e-4)
    assert kd_loss(s * scale_s + shift_s, t * scale_t + shift_t, 2.0).item() != pytest.approx(
        kd_loss(s, t, 2.0).item(), rel=1e-2)  # plain KD is not
    # A student whose logits are the teacher's, rescaled and shifted per sample, has nothing left to learn.
    assert kd_loss(t * scale_s + shift_s, t, 2.0, logit_stand=True).item() == pytest.approx(0.0, abs=1e-6)
    tckd, nckd = dkd_terms(s, t, torch.arange(8), 2.0, logit_stand=True)
    tckd2, nckd2 = dkd_terms(s * scale_s + shift_s, t * scale_t + shift_t, torch.arange(8), 2.0, logit_stand=True)
    assert (tckd2.item(), nckd2.item()) == pytest.approx((tckd.item(), nckd.item()), rel=1e-4)


def test_ls_gradients_reach_the_student_not_the_teacher():
    student, teacher = Fixed(S), Fixed(T_LOGITS)
    _, losses = build_method(kd_config(), student, teacher, INFO).forward_train(X, Y)
    sum(losses.values()).backward()
    assert student.logits.grad.abs().sum() > 0 and teacher.logits.grad is None


def test_dkd_with_ls_against_the_formula():
    tckd, nckd = hand_dkd(S, T_LOGITS, Y, 2.0)
    got = dkd_terms(S, T_LOGITS, Y, 2.0, logit_stand=True)
    assert (got[0].item(), got[1].item()) == pytest.approx((tckd, nckd), rel=1e-4)
    method = build_method(dkd_config(), Fixed(S), Fixed(T_LOGITS), INFO)
    _, losses = method.forward_train(X, Y)
    assert set(losses) == {"ce", "tckd", "nckd"}
    assert losses["tckd"].item() == pytest.approx(9.0 * tckd, rel=1e-4)
    assert losses["nckd"].item() == pytest.approx(72.0 * nckd, rel=1e-4)
    # Standardised over all the classes before the split (the authors' DKD.py): z-scoring the non-target
    # classes alone would give another NCKD.
    rest = [[k for k in range(4) if k != c] for c in Y.tolist()]
    s_rest = torch.stack([S[i, r] for i, r in enumerate(rest)])
    t_rest = torch.stack([T_LOGITS[i, r] for i, r in enumerate(rest)])
    assert nckd != pytest.approx(kd_loss(s_rest, t_rest, 2.0, logit_stand=True).item(), rel=1e-3)
    plain_tckd, plain_nckd = hand_dkd(S, T_LOGITS, Y, 2.0, standardise=False)
    off = build_method(dkd_config(logit_stand=False), Fixed(S), Fixed(T_LOGITS), INFO).forward_train(X, Y)[1]
    assert off["nckd"].item() == pytest.approx(72.0 * plain_nckd, rel=1e-4)


def test_the_kd_term_of_other_methods_is_standardised():
    """WeightedDistiller's alpha * KD (here dkd's optional KD term; at, crd, ... share the code)."""
    method = build_method(dkd_config(alpha=0.5, beta=0.0), Fixed(S), Fixed(T_LOGITS), INFO)
    _, losses = method.forward_train(X, Y)
    assert set(losses) == {"ce", "kd"}
    assert losses["kd"].item() == pytest.approx(0.5 * hand_ls_kd(S, T_LOGITS, 2.0), rel=1e-4)


def test_ls_with_an_ensemble_standardises_each_member():
    from kdrun.models.ensemble import TeacherEnsemble

    other = T_LOGITS.flip(1)
    method = build_method(kd_config(), Fixed(S), TeacherEnsemble([Fixed(T_LOGITS), Fixed(other)]), INFO)
    _, losses = method.forward_train(X, Y)
    p = [[(a + b) / 2 for a, b in zip(softmax(z_scores(r1), 2.0), softmax(z_scores(r2), 2.0))]
         for r1, r2 in zip(T_LOGITS.tolist(), other.tolist())]
    hand = sum(kl(q, softmax(z_scores(s), 2.0)) for q, s in zip(p, S.tolist())) / 2 * 4.0
    assert losses["kd"].item() == pytest.approx(9.0 * hand, rel=1e-4)


def test_the_papers_weights_are_accepted_and_alpha_above_one_needs_a_ce_weight():
    build_method(kd_config(), Fixed(S), Fixed(T_LOGITS), INFO)  # T 2, alpha 9, ce_weight 0.1
    with pytest.raises(UserError, match=r"must lie in \[0, 1\], got 9.0 \(method.ce_weight is null.*"
                                        r"method.ce_weight=0.1 method.alpha=9"):
        build_method(kd_config(ce_weight=None), Fixed(S), Fixed(T_LOGITS), INFO)
    with pytest.raises(UserError, match="method.alpha weights the soft-target term and must be 0 or more, got -1.0"):
        build_method(kd_config(alpha=-1.0), Fixed(S), Fixed(T_LOGITS), INFO)


@pytest.mark.parametrize("cfg,needle", [
    (kd_config(variant="cwtm"), "method.logit_stand standardises the logits of the soft-target term, which "
                                "method.variant=cwtm does not have"),
    (kd_config(alpha=0.0), "method.logit_stand acts on the KD term, but method.alpha is 0 (the soft-target "
                           "term is off): give method.alpha a positive value"),
    (OmegaConf.create({"name": "at", "T": 4.0, "alpha": 0.0, "beta": 1000.0, "ce_weight": 1.0, "p": 2.0,
                       "form": "repdistiller", "logit_stand": True, "stop_epoch": None}),
     "method.logit_stand acts on the KD term, but method.alpha is 0 (at has no KD term then)"),
])
def test_refusals(cfg, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        build_method(cfg, Fixed(S), Fixed(T_LOGITS), INFO)


def test_a_value_that_is_not_a_boolean_is_refused_as_the_config_composes():
    assert "method.logit_stand" in compose_refusal(["method.logit_stand=maybe"])


def test_dkd_accepts_ls_without_the_kd_term():
    cfg = compose_config(["method=dkd", "method.logit_stand=true"])
    assert cfg.method.alpha == 0.0 and cfg.method.logit_stand is True
    build_method(cfg.method, Fixed(S), Fixed(T_LOGITS), INFO)
