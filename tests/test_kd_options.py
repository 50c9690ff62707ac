"""`kd` options: teacher ensembles (Hinton et al. 2015) and born-again networks' CWTM and DKPP
(Furlanello et al. 2018), against their formulas written out by hand here."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import QUICK, compose_config
from fixed_logits import Fixed
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.kd import cwtm_loss, permuted_dark_knowledge, soft_target_loss
from kdrun.models.ensemble import TeacherEnsemble, ensemble_probs
from kdrun.run import run

S = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -0.5], [1.0, 1.0, 0.0, 0.3]])
M1 = torch.tensor([[1.5, 1.0, -0.5, 0.2], [-1.0, 0.0, 2.0, 0.1], [0.3, 2.2, 0.0, -1.0]])
M2 = torch.tensor([[0.5, 2.0, 0.5, -0.2], [0.0, -1.0, 1.0, 1.5], [2.0, 0.4, 0.1, 0.0]])
Y = torch.tensor([0, 2, 1])


def softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def hand_kl_to(s, targets, T):
    """T^2 * mean over rows of KL(target || softmax(s / T))."""
    total = 0.0
    for srow, q in zip(s.tolist(), targets):
        p = softmax(srow, T)
        total += sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q) if qi > 0)
    return total / len(targets) * T * T


def hand_arithmetic(members, T):
    rows = []
    for i in range(members[0].shape[0]):
        probs = [softmax(m[i].tolist(), T) for m in members]
        rows.append([sum(p[k] for p in probs) / len(probs) for k in range(len(probs[0]))])
    return rows


def hand_geometric(members, T):
    rows = []
    for i in range(members[0].shape[0]):
        probs = [softmax(m[i].tolist(), T) for m in members]
        g = [math.prod(p[k] for p in probs) ** (1 / len(probs)) for k in range(len(probs[0]))]
        rows.append([v / sum(g) for v in g])
    return rows


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_ensemble_means_of_member_probabilities(T):
    stacked = torch.stack([M1, M2])
    for mean, hand in (("arithmetic", hand_arithmetic), ("geometric", hand_geometric)):
        got = ensemble_probs(stacked, T, mean)
        for g, h in zip(got.tolist(), hand([M1, M2], T)):
            assert g == pytest.approx(h, rel=1e-5)


def kd_config(**over):
    return OmegaConf.create({"name": "kd", "T": 4.0, "alpha": 0.9, "ce_weight": None, "teachers": [],
                             "ensemble": "arithmetic", "variant": None, **over})


INFO = DataInfo(1, (1, 1), 4)


@pytest.mark.parametrize("mean,hand", [("arithmetic", hand_arithmetic), ("geometric", hand_geometric)])
def test_kd_with_an_ensemble_teacher_distils_the_mean_probabilities(mean, hand):
    members = [Fixed(M1), Fixed(M2)]
    method = build_method(kd_config(ensemble=mean), Fixed(S), TeacherEnsemble(members, mean), INFO)
    _, losses = method.forward_train(torch.zeros(3, 1, 1, 1), Y)
    assert losses["kd"].item() == pytest.approx(0.9 * hand_kl_to(S, hand([M1, M2], 4.0), 4.0), rel=1e-5)
    sum(losses.values()).backward()
    assert all(m.logits.grad is None for m in members)
    # The ensemble's own prediction (its accuracy) is the mean at T = 1.
    log_p = TeacherEnsemble(members, mean)(None)
    for g, h in zip(log_p.exp().tolist(), hand([M1, M2], 1.0)):
        assert g == pytest.approx(h, rel=1e-5)


def test_one_member_ensemble_is_plain_kd():
    a = build_method(kd_config(), Fixed(S), TeacherEnsemble([Fixed(M1)]), INFO)
    b = build_method(kd_config(), Fixed(S), Fixed(M1), INFO)
    x = torch.zeros(3, 1, 1, 1)
    assert a.forward_train(x, Y)[1]["kd"].item() == pytest.approx(b.forward_train(x, Y)[1]["kd"].item(), rel=1e-6)


def test_cwtm_weights_each_sample_by_teacher_max_normalised_over_the_batch():
    conf = [max(softmax(row)) for row in M1.tolist()]
    ce = [-math.log(softmax(row)[c]) for row, c in zip(S.tolist(), Y.tolist())]
    expected = sum(c / sum(conf) * l for c, l in zip(conf, ce))
    assert cwtm_loss(S, Y, torch.softmax(M1, 1)).item() == pytest.approx(expected, rel=1e-6)
    method = build_method(kd_config(variant="cwtm", alpha=0.5), Fixed(S), Fixed(M1), INFO)
    _, losses = method.forward_train(torch.zeros(3, 1, 1, 1), Y)
    assert set(losses) == {"ce", "cwtm"}
    assert losses["cwtm"].item() == pytest.approx(0.5 * expected, rel=1e-6)
    assert losses["ce"].item() == pytest.approx(0.5 * sum(ce) / 3, rel=1e-6)
    # Equal teacher confidence everywhere: plain cross-entropy.
    flat = torch.softmax(torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 3.0]]), 1)
    assert cwtm_loss(S, Y, flat).item() == pytest.approx(sum(ce) / 3, rel=1e-6)


def test_dkpp_puts_the_max_at_the_label_and_permutes_the_rest():
    p = torch.softmax(torch.randn(64, 6), 1)
    y = p.argmax(1)
    y[:8] = (y[:8] + 1) % 6  # the teacher is wrong on the first 8
    torch.manual_seed(0)
    q = permuted_dark_knowledge(p, y)
    assert torch.equal(q.gather(1, y[:, None])[:, 0], p.max(1).values)  # the max at the true class
    assert torch.allclose(q.sort(1).values, p.sort(1).values)  # the same values in each row
    right = slice(8, None)
    assert not torch.equal(q[right], p[right])  # 56 rows of 5 shuffled entries: some moved
    counts = torch.zeros(6, 6)
    for seed in range(200):  # each non-max value lands on every other class
        torch.manual_seed(seed)
        row = permuted_dark_knowledge(p[8:9], y[8:9])[0]
        counts[torch.arange(6), (row[:, None] == p[8][None, :]).float().argmax(1)] += 1
    moved = counts[torch.arange(6) != y[8]][:, torch.arange(6) != y[8]]
    assert (moved > 0).all()
    torch.manual_seed(0)
    assert torch.equal(permuted_dark_knowledge(p, y), q)  # the run's seeded generator decides


def test_dkpp_distils_the_permuted_targets():
    method = build_method(kd_config(variant="dkpp"), Fixed(S), Fixed(M1), INFO)
    torch.manual_seed(3)
    _, losses = method.forward_train(torch.zeros(3, 1, 1, 1), Y)
    torch.manual_seed(3)
    target = permuted_dark_knowledge(torch.softmax(M1 / 4.0, 1), Y)
    assert losses["kd"].item() == pytest.approx(0.9 * hand_kl_to(S, target.tolist(), 4.0), rel=1e-5)
    assert losses["kd"].item() == pytest.approx(0.9 * soft_target_loss(S, target, 4.0).item(), rel=1e-6)


@pytest.mark.parametrize("over,match", [
    ({"variant": "ban"}, "method.variant"),
    ({"ensemble": "median"}, "method.ensemble"),
    ({"teachers": ["wrn_99"]}, "Unknown model 'wrn_99'"),
    ({"teachers": "mlp"}, "method.teachers"),
])
def test_bad_kd_options_are_refused(over, match):
    with pytest.raises(UserError, match=match):
        build_method(kd_config(**over), Fixed(S), Fixed(M1), INFO)


def test_ensemble_run_trains_caches_and_reports_each_member(tmp_path, caplog):
    caplog.set_level("INFO", logger="kdrun")
    metrics = run(compose_config(QUICK + ["method.teachers=[mlp,mlp_800]", "method.ensemble=geometric"]),
                  tmp_path / "ens")
    assert metrics["status"] == "completed" and metrics["teacher"] == "mlp+mlp+mlp_800"
    assert len(metrics["teacher_source"].split(", ")) == 3
    assert "Teacher ensemble (geometric mean of mlp+mlp+mlp_800)" in caplog.text
    caplog.clear()
    plain = run(compose_config(QUICK), tmp_path / "plain")  # member 0 is the plain run's teacher
    assert "reused from the teacher cache" in caplog.text
    assert plain["teacher_source"] == metrics["teacher_source"].split(", ")[0]


@pytest.mark.parametrize("variant", ["cwtm", "dkpp"])
def test_born_again_variants_run(tmp_path, variant):
    metrics = run(compose_config(QUICK + [f"method.variant={variant}"]), tmp_path / variant)
    assert metrics["status"] == "completed"
    assert set(metrics["history"][0]["losses"]) == {"ce", "cwtm" if variant == "cwtm" else "kd"}
