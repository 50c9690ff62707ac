"""`darkrank` (Chen, Wang & Zhang, AAAI 2018): the hard and soft transfers against their formulas written out
with plain Python loops (the soft one by enumerating every permutation), the ranking property, where the
gradients go, the refused values, and short runs on a same-family and a heterogeneous pair."""
import itertools
import math

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from conftest import QUICK, compose_config, compose_refusal
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.darkrank import (darkrank_hard, darkrank_loss, darkrank_scores, darkrank_soft,
                                    hard_per_query, soft_per_query)
from kdrun.run import run

# A hand-made batch: 4 examples, 2-d embeddings (student) and 3-d (teacher), no ties in either's distances.
ES = torch.tensor([[1.0, 0.2], [0.3, 1.1], [-0.8, 0.4], [0.5, -1.3]], dtype=torch.double)
ET = torch.tensor([[0.9, 0.1, 0.3], [0.2, 1.0, -0.4], [-1.1, 0.3, 0.2], [0.1, -0.2, 1.4]], dtype=torch.double)


# ---- the formulas, written out ----

def hand_scores(e, alpha, beta, normalize):
    e = e.tolist()
    if normalize:
        e = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in e]
    return [[-alpha * math.sqrt(sum((a - b) ** 2 for a, b in zip(p, q))) ** beta for q in e] for p in e]


def teacher_list(t_row, q, n):
    """The other examples in the teacher's order (highest score, i.e. nearest, first), the first n."""
    return sorted((x for x in range(len(t_row)) if x != q), key=lambda x: -t_row[x])[:n]


def pl_prob(scores, perm):
    """Plackett-Luce: prod_k exp(S_{pi_k}) / sum_{l >= k} exp(S_{pi_l})."""
    p = 1.0
    for k in range(len(perm)):
        p *= math.exp(scores[perm[k]]) / sum(math.exp(scores[perm[l]]) for l in range(k, len(perm)))
    return p


def hand_hard(es, et, n, alpha=3.0, beta=3.0, normalize=True):
    s, t = hand_scores(es, alpha, beta, normalize), hand_scores(et, alpha, beta, normalize)
    return sum(-math.log(pl_prob(s[q], teacher_list(t[q], q, n))) for q in range(len(s))) / len(s)


def hand_soft(es, et, n, alpha=3.0, beta=3.0, normalize=True):
    s, t = hand_scores(es, alpha, beta, normalize), hand_scores(et, alpha, beta, normalize)
    total = 0.0
    for q in range(len(s)):
        candidates = teacher_list(t[q], q, n)
        for perm in itertools.permutations(candidates):
            p_t, p_s = pl_prob(t[q], perm), pl_prob(s[q], perm)
            total += p_t * math.log(p_t / p_s)
    return total / len(s)


@pytest.mark.parametrize("normalize", [True, False])
def test_scores_are_minus_alpha_times_distance_to_the_beta(normalize):
    got = darkrank_scores(ES, 2.0, 1.5, normalize)
    want = hand_scores(ES, 2.0, 1.5, normalize)
    for q in range(4):
        for x in range(4):
            if q != x:
                assert got[q, x].item() == pytest.approx(want[q][x], rel=1e-9)


@pytest.mark.parametrize("n", [3, 2])  # 3: every other example; 2: the teacher's two nearest
@pytest.mark.parametrize("normalize", [True, False])
def test_hard_transfer_against_formula(n, normalize):
    got = darkrank_loss(ES, ET, "hard", n, 3.0, 3.0, normalize).item()
    assert got == pytest.approx(hand_hard(ES, ET, n, normalize=normalize), rel=1e-9)
    assert got > 0


@pytest.mark.parametrize("n", [3, 2])
@pytest.mark.parametrize("normalize", [True, False])
def test_soft_transfer_against_formula_enumerating_permutations(n, normalize):
    got = darkrank_loss(ES, ET, "soft", n, 1.5, 2.0, normalize).item()
    assert got == pytest.approx(hand_soft(ES, ET, n, 1.5, 2.0, normalize), rel=1e-9)
    assert got > 0


def test_hard_transfer_with_the_whole_list_and_a_list_longer_than_the_batch():
    want = hand_hard(ES, ET, 3)
    assert darkrank_loss(ES, ET, "hard", None).item() == pytest.approx(want, rel=1e-9)
    assert darkrank_loss(ES, ET, "hard", 7).item() == pytest.approx(want, rel=1e-9)  # cut to b - 1
    assert darkrank_loss(ES, ET, "soft", 7).item() == pytest.approx(hand_soft(ES, ET, 3), rel=1e-9)


def test_soft_is_zero_when_the_student_is_the_teacher_and_scale_free_when_normalised():
    assert darkrank_loss(ET, ET, "soft", 3).item() == pytest.approx(0.0, abs=1e-12)
    for transfer in ("soft", "hard"):
        base = darkrank_loss(ES, ET, transfer, 3).item()
        assert darkrank_loss(4.2 * ES, 0.3 * ET, transfer, 3).item() == pytest.approx(base, rel=1e-9)


def test_a_student_ranking_like_the_teacher_has_a_lower_hard_loss_than_one_ranking_in_reverse():
    """On score matrices: for every query, the student gives the teacher's candidates the same scores in the
    teacher's order, or the same scores in the reverse order."""
    torch.manual_seed(0)
    b = 6
    t = -torch.rand(b, b, dtype=torch.double) * 5
    same, reverse = t.clone(), t.clone()
    for q in range(b):
        others = [x for x in range(b) if x != q]
        ranked = sorted(others, key=lambda x: -t[q, x].item())
        reverse[q, ranked] = t[q, ranked[::-1]]
    for n in (None, 3):
        agree, disagree = darkrank_hard(same, t, n).item(), darkrank_hard(reverse, t, n).item()
        assert agree < disagree
        assert (hard_per_query(same, t, n) < hard_per_query(reverse, t, n)).all()  # query by query too
    # the soft transfer: zero when the orders and scores agree, positive for every query in reverse
    assert darkrank_soft(same, t, 3).item() == pytest.approx(0.0, abs=1e-12)
    assert (soft_per_query(reverse, t, 3) > 0.01).all()


def test_a_batch_of_one_gives_zero_still_on_the_graph():
    s = torch.randn(1, 3, requires_grad=True)
    for transfer in ("soft", "hard"):
        loss = darkrank_loss(s, torch.randn(1, 5), transfer, 4)
        assert loss.item() == 0.0 and loss.requires_grad


# ---- the method on models ----

class Tiny(nn.Module):
    def __init__(self, width, num_classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(8, width), nn.Tanh())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))

    def feature_points(self):
        return {"embedding": ["fc:in"]}


INFO = DataInfo(2, (2, 2), 3)
X = torch.randn(6, 2, 2, 2, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


def method_cfg(**over):
    cfg = compose_config(QUICK + ["method=darkrank"]).method
    return OmegaConf.merge(OmegaConf.to_container(cfg), over)


def test_defaults_compose():
    cfg = method_cfg()
    assert (cfg.transfer, cfg.list_length, cfg.darkrank_alpha, cfg.darkrank_beta, cfg.normalize, cfg.beta) == \
        ("soft", 4, 3.0, 3.0, True, 1.0)


@pytest.mark.parametrize("transfer", ["soft", "hard"])
def test_the_term_is_beta_times_the_loss_on_the_embeddings_and_trains_the_student_alone(transfer):
    torch.manual_seed(2)
    student, teacher = Tiny(4), Tiny(7)
    method = build_method(method_cfg(transfer=transfer, beta=0.7, ce_weight=0.0), student, teacher, INFO)
    _, losses = method.forward_train(X, Y)
    assert set(losses) == {"darkrank"}  # ce_weight 0: the hard labels' term is not computed
    with torch.no_grad():
        want = darkrank_loss(student.body(X), teacher.body(X), transfer, 4)
    assert losses["darkrank"].item() == pytest.approx(0.7 * want.item(), rel=1e-5)
    losses["darkrank"].backward()
    assert all(p.grad is not None for p in student.body.parameters())
    assert any(p.grad.abs().sum() > 0 for p in student.body.parameters())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_ids for p in method.parameters())
    off = build_method(method_cfg(beta=0.0, alpha=0.5), Tiny(4), Tiny(7), INFO)
    assert set(off.forward_train(X, Y)[1]) == {"ce", "kd"}  # a weight of 0: the term is not computed


@pytest.mark.parametrize("over,needle", [
    (dict(list_length=None), "works with method.transfer=hard only"),
    (dict(list_length=9), "too long for the soft transfer"),
    (dict(list_length=1), "must be at least 2"),
    (dict(darkrank_alpha=0.0), "method.darkrank_alpha must be positive"),
    (dict(darkrank_beta=-1.0), "method.darkrank_beta must be positive"),
    (dict(beta=-1.0), "must be 0 or more"),
])
def test_refused_values(over, needle):
    with pytest.raises(UserError, match=needle):
        build_method(method_cfg(**over), Tiny(4), Tiny(7), INFO)


def test_long_lists_are_accepted_for_the_hard_transfer_and_unknown_transfers_refused_as_composed():
    build_method(method_cfg(transfer="hard", list_length=None), Tiny(4), Tiny(7), INFO)
    build_method(method_cfg(transfer="hard", list_length=30), Tiny(4), Tiny(7), INFO)
    assert "method.transfer=medium" in compose_refusal(QUICK + ["method=darkrank", "method.transfer=medium"])


# ---- end to end on zoo pairs ----

TINY = ["dataset=synthetic", "dataset.train_size=16", "dataset.test_size=8", "dataset.image_size=16",
        "dataset.num_classes=4", "train.epochs=1", "train.batch_size=16", "teacher.train.epochs=1",
        "teacher.train.batch_size=16", "progress=false"]


@pytest.mark.parametrize("teacher,student,transfer", [("wrn40_2", "wrn16_2", "soft"), ("resnet8", "vgg8", "hard")])
def test_darkrank_runs_on_zoo_pairs(teacher, student, transfer, tmp_path):
    cfg = compose_config(TINY + ["method=darkrank", f"method.transfer={transfer}", f"teacher={teacher}",
                                 f"student={student}"])
    metrics = run(cfg, tmp_path / "run")
    assert metrics["status"] == "completed"
    losses = metrics["history"][0]["losses"]
    assert set(losses) == {"ce", "darkrank"} and math.isfinite(losses["darkrank"]) and losses["darkrank"] > 0
