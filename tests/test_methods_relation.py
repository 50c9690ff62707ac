"""SP, CC, VID, RKD, PKT, CRD and DKD: each loss against its formula written out here with plain
Python loops on small hand-made tensors, their known properties, where the gradients go, and the
values refused before training."""
import math

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from conftest import QUICK, compose_config
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.cc import cc_loss
from kdrun.methods.crd import ContrastMemory, nce_loss
from kdrun.methods.dkd import dkd_terms
from kdrun.methods.kd import kd_loss
from kdrun.methods.pkt import pkt_loss
from kdrun.methods.rkd import rkd_terms
from kdrun.methods.sp import sp_loss
from kdrun.methods.vid import VariationalRegressor, gaussian_nll, match_sizes
from kdrun.run import run

OURS = ["sp", "cc", "vid", "rkd", "pkt", "crd", "dkd"]

# Hand-made features: 3 examples, 4 dimensions (student) and 5 (teacher).
FS = torch.tensor([[1.0, -0.5, 2.0, 0.0], [0.3, 0.8, -1.2, 1.0], [-0.7, 0.2, 0.5, -1.5]])
FT = torch.tensor([[0.5, 1.0, -0.2, 0.4, 1.1], [1.5, -0.3, 0.9, 0.0, -0.6], [0.2, 0.2, -1.0, 0.8, 0.3]])


def rows(t):
    return t.reshape(t.shape[0], -1).tolist()


def dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def norm(u):
    return math.sqrt(dot(u, u))


def smooth_l1(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


# ---- SP: Tung & Mori 2019 ----

def hand_sp(fs, ft):
    def gram(f):
        g = [[dot(a, b) for b in f] for a in f]
        return [[v / norm(r) for v in r] for r in g]

    gs, gt = gram(rows(fs)), gram(rows(ft))
    b = len(gs)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b ** 2


def test_sp_against_formula_and_zero_when_equal():
    fmap = torch.arange(3 * 2 * 2 * 2, dtype=torch.float).view(3, 2, 2, 2).sin()  # feature maps flatten
    assert sp_loss(FS, FT).item() == pytest.approx(hand_sp(FS, FT), rel=1e-5)
    assert sp_loss(fmap, FT).item() == pytest.approx(hand_sp(fmap, FT), rel=1e-5)
    assert sp_loss(FT, FT).item() == pytest.approx(0.0, abs=1e-7)


# ---- CC: Peng et al. 2019 (RepDistiller's form) ----

def hand_cc(es, et):
    delta = [[abs(a - b) for a, b in zip(rs, rt)] for rs, rt in zip(rows(es), rows(et))]
    return sum(dot(delta[i], delta[i + 1]) for i in range(len(delta) - 1)) / (len(delta) - 1)


def test_cc_against_formula_and_zero_when_equal():
    et = FT[:, :4]
    assert cc_loss(FS, et).item() == pytest.approx(hand_cc(FS, et), rel=1e-5)
    assert cc_loss(FS, FS).item() == 0.0
    assert cc_loss(FS[:1], et[:1]).item() == 0.0  # one example: no pair of neighbours


# ---- PKT: Passalis & Tefas 2018 ----

def hand_pkt(fs, ft, eps=1e-7):
    def dist(f):
        f = [[v / (norm(r) + eps) for v in r] for r in f]
        k = [[(dot(a, b) + 1) / 2 for b in f] for a in f]
        return [[v / sum(r) for v in r] for r in k]

    ps, pt = dist(rows(fs)), dist(rows(ft))
    b = len(ps)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(b) for j in range(b)) / b ** 2


def test_pkt_against_formula_and_zero_when_equal():
    assert pkt_loss(FS, FT).item() == pytest.approx(hand_pkt(FS, FT), rel=1e-4)
    assert pkt_loss(FT, FT).item() == pytest.approx(0.0, abs=1e-7)
    assert pkt_loss(2.5 * FT, FT).item() == pytest.approx(0.0, abs=1e-6)  # cosine kernel: scale-free


# ---- RKD: Park et al. 2019 ----

def hand_rkd(es, et):
    def distances(e):
        b = len(e)
        d = [[norm([x - y for x, y in zip(e[i], e[j])]) for j in range(b)] for i in range(b)]
        mean = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        return [[v / mean for v in r] for r in d]

    def cosines(e):
        b = len(e)

        def unit(i, j):
            v = [x - y for x, y in zip(e[j], e[i])]
            n = norm(v)
            return [x / n for x in v] if n > 0 else [0.0] * len(v)

        return [[[dot(unit(i, j), unit(i, k)) for k in range(b)] for j in range(b)] for i in range(b)]

    es, et = rows(es), rows(et)
    b = len(es)
    ds, dt = distances(es), distances(et)
    distance = sum(smooth_l1(ds[i][j], dt[i][j]) for i in range(b) for j in range(b)) / b ** 2
    cs, ct = cosines(es), cosines(et)
    angle = sum(smooth_l1(cs[i][j][k], ct[i][j][k]) for i in range(b) for j in range(b) for k in range(b)) / b ** 3
    return distance, angle


def test_rkd_against_formula():
    # 4 examples, so that the distance and angle relations are not trivially alike
    es = torch.cat([FS, torch.tensor([[0.1, 2.0, -0.3, 0.6]])])
    et = torch.cat([FT, torch.tensor([[-1.0, 0.4, 0.0, 2.0, 0.5]])])
    distance, angle = rkd_terms(es, et)
    want_d, want_a = hand_rkd(es, et)
    assert distance.item() == pytest.approx(want_d, rel=1e-4)
    assert angle.item() == pytest.approx(want_a, rel=1e-4)
    assert want_d > 0 and want_a > 0


def test_rkd_zero_when_equal_and_invariant_to_scale():
    assert [t.item() for t in rkd_terms(FT, FT)] == pytest.approx([0.0, 0.0], abs=1e-6)
    base = [t.item() for t in rkd_terms(FS, FT)]
    assert [t.item() for t in rkd_terms(7.3 * FS, FT)] == pytest.approx(base, rel=1e-4)
    assert [t.item() for t in rkd_terms(FS, 0.2 * FT)] == pytest.approx(base, rel=1e-4)


# ---- VID: Ahn et al. 2019 ----

def test_vid_gaussian_nll_against_formula():
    mean = torch.tensor([[[[0.5]], [[-1.0]]], [[[2.0]], [[0.0]]]])  # 2 examples, 2 channels, 1x1
    target = torch.tensor([[[[1.0]], [[-1.5]]], [[[1.0]], [[0.3]]]])
    log_scale = torch.tensor([0.2, -1.0])
    eps = 1e-5
    var = [math.log1p(math.exp(v)) + eps for v in log_scale.tolist()]
    want = sum(0.5 * ((m - t) ** 2 / var[c] + math.log(var[c]))
               for n in range(2) for c in range(2)
               for m, t in [(mean[n, c, 0, 0].item(), target[n, c, 0, 0].item())]) / 4
    assert gaussian_nll(mean, target, log_scale, eps).item() == pytest.approx(want, rel=1e-5)


def test_vid_regressor_starts_at_the_initial_variance_and_pools_to_the_smaller_map():
    reg = VariationalRegressor(3, 2, init_variance=5.0, eps=1e-5)
    var = torch.nn.functional.softplus(reg.log_scale) + reg.eps
    assert var.tolist() == pytest.approx([5.0, 5.0], rel=1e-6)
    s, t = match_sizes(torch.ones(1, 3, 4, 4), torch.ones(1, 2, 2, 2))
    assert s.shape == (1, 3, 2, 2) and t.shape == (1, 2, 2, 2)
    # a perfect mean prediction leaves only the variance term, 0.5 * log(var)
    for layer in reg.mean:
        if isinstance(layer, nn.Conv2d):
            nn.init.zeros_(layer.weight)
    assert reg(torch.randn(2, 3, 4, 4), torch.zeros(2, 2, 2, 2)).item() == pytest.approx(0.5 * math.log(5.0), rel=1e-5)


# ---- CRD: Tian et al. 2020 ----

def test_nce_loss_against_formula():
    p = torch.tensor([[0.9, 0.1, 0.3, 0.05], [0.2, 0.6, 0.01, 0.4]])  # positive first, K = 3
    n_data, eps = 10, 1e-7
    noise = 3 / n_data
    want = 0.0
    for r in p.tolist():
        want -= math.log(r[0] / (r[0] + noise + eps))
        want -= sum(math.log(noise / (q + noise + eps)) for q in r[1:])
    assert nce_loss(p, n_data).item() == pytest.approx(want / 2, rel=1e-5)


def test_contrast_memory_scores_z_and_momentum_update():
    torch.manual_seed(0)
    mem = ContrastMemory(dim=3, size=5, k=2, temperature=0.5, momentum=0.25)
    s_bank0, t_bank0 = mem.student_bank.clone(), mem.teacher_bank.clone()
    v_s = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 0.5], [-1.0, 0.0, 1.0]]), dim=1)
    v_t = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0, 1.0], [2.0, -1.0, 0.0]]), dim=1)
    index = torch.tensor([3, 0])
    chosen = torch.tensor([[3, 1, 4], [0, 2, 2]])
    p_s, p_t = mem(v_s, v_t, index, chosen)

    def scores(bank, v):
        return [[math.exp(dot(bank[j].tolist(), v[i].tolist()) / 0.5) for j in chosen[i].tolist()] for i in range(2)]

    e_s, e_t = scores(t_bank0, v_s), scores(s_bank0, v_t)  # student anchors meet teacher memories
    z_s, z_t = (sum(map(sum, e)) / 6 * 5 for e in (e_s, e_t))
    assert mem.z.tolist() == pytest.approx([z_s, z_t], rel=1e-5)
    assert p_s.flatten().tolist() == pytest.approx([v / z_s for r in e_s for v in r], rel=1e-5)
    assert p_t.flatten().tolist() == pytest.approx([v / z_t for r in e_t for v in r], rel=1e-5)
    for bank, bank0, v in ((mem.student_bank, s_bank0, v_s), (mem.teacher_bank, t_bank0, v_t)):
        for row, i in enumerate(index.tolist()):
            mixed = 0.25 * bank0[i] + 0.75 * v[row]
            assert torch.allclose(bank[i], mixed / mixed.norm(), atol=1e-6)
        untouched = [i for i in range(5) if i not in index.tolist()]
        assert torch.equal(bank[untouched], bank0[untouched])
    z_first = mem.z.clone()
    mem(v_s, v_t, index)
    assert torch.equal(mem.z, z_first)  # Z is estimated once, on the first batch


def test_contrast_memory_draws_negatives_uniformly_among_the_others():
    torch.manual_seed(0)
    mem = ContrastMemory(dim=2, size=6, k=3000, temperature=0.07, momentum=0.5)
    index = torch.tensor([0, 3, 5])
    drawn = mem.sample(index)
    assert drawn.shape == (3, 3001) and torch.equal(drawn[:, 0], index)
    for row, i in enumerate(index.tolist()):
        counts = torch.bincount(drawn[row, 1:], minlength=6).tolist()
        assert counts[i] == 0
        assert all(400 < c < 800 for j, c in enumerate(counts) if j != i)  # about 3000 / 5 each


def test_contrast_memory_draws_distinct_negatives_of_other_classes_by_default():
    """The paper's CIFAR-100 setting (RepDistiller mode='exact'): k of the other classes' examples,
    without replacement, each equally likely."""
    torch.manual_seed(0)
    labels = torch.arange(40) % 4  # 10 per class, 30 others for each example
    mem = ContrastMemory(dim=2, size=40, k=25, temperature=0.07, momentum=0.5, labels=labels)
    index = torch.tensor([0, 5, 11, 38])
    seen = torch.zeros(4, 40)
    for _ in range(400):
        drawn = mem.sample(index)
        assert drawn.shape == (4, 26) and torch.equal(drawn[:, 0], index)
        for row, i in enumerate(index.tolist()):
            negatives = drawn[row, 1:]
            assert len(set(negatives.tolist())) == 25  # no duplicates
            assert not (labels[negatives] == labels[i]).any()  # no same-class negative
            seen[row] += torch.bincount(negatives, minlength=40)
    for row, i in enumerate(index.tolist()):
        other = labels != labels[i]
        assert (seen[row][~other] == 0).all()
        assert ((seen[row][other] > 290) & (seen[row][other] < 380)).all()  # about 400 * 25 / 30 each


def test_contrast_memory_falls_back_to_replacement_where_a_class_has_too_few_others():
    torch.manual_seed(0)
    labels = torch.tensor([0] * 36 + [1] * 4)  # class 0 has 4 others, fewer than k; class 1 has 36
    mem = ContrastMemory(dim=2, size=40, k=10, temperature=0.07, momentum=0.5, labels=labels)
    index = torch.tensor([2, 37])
    counts = torch.zeros(40)
    for _ in range(200):
        drawn = mem.sample(index)
        assert set(drawn[0, 1:].tolist()) <= {36, 37, 38, 39}  # with replacement, from class 1 only
        counts += torch.bincount(drawn[0, 1:], minlength=40)
        negatives = drawn[1, 1:]
        assert len(set(negatives.tolist())) == 10 and (labels[negatives] == 0).all()
    assert ((counts[36:] > 400) & (counts[36:] < 600)).all()  # about 200 * 10 / 4 each


def test_crd_negatives_option_and_its_refusals():
    student, teacher = tiny_pair()
    assert build_method(method_cfg("crd", nce_k=8), student, teacher, INFO).memory.by_class
    uniform = build_method(method_cfg("crd", nce_k=8, negatives="uniform"), student, teacher, INFO)
    assert not uniform.memory.by_class
    one_class = DataInfo(2, (6, 6), 3, train_size=40, train_labels=torch.zeros(40, dtype=torch.long))
    with pytest.raises(UserError, match="has one class. Use method.negatives=uniform"):
        build_method(method_cfg("crd", nce_k=8), student, teacher, one_class)
    build_method(method_cfg("crd", nce_k=8, negatives="uniform"), student, teacher, one_class)  # the advice works
    with pytest.raises(UserError, match="method.negatives=exact: expected one of other_classes, uniform"):
        build_method(method_cfg("crd", nce_k=8, negatives="exact"), student, teacher, INFO)


# ---- DKD: Zhao et al. 2022 ----

def softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def hand_dkd(s, t, y, T):
    tckd = nckd = 0.0
    for srow, trow, c in zip(s.tolist(), t.tolist(), y.tolist()):
        ps, pt = softmax(srow, T), softmax(trow, T)
        tckd += kl([pt[c], 1 - pt[c]], [ps[c], 1 - ps[c]])
        rest_s = [v for j, v in enumerate(ps) if j != c]
        rest_t = [v for j, v in enumerate(pt) if j != c]
        nckd += kl([v / sum(rest_t) for v in rest_t], [v / sum(rest_s) for v in rest_s])
    b = len(y)
    return tckd / b * T * T, nckd / b * T * T


S_LOGITS = torch.tensor([[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 3.0, -0.4]])
T_LOGITS = torch.tensor([[1.5, 1.0, -0.5, 0.0], [-1.0, 0.0, 2.0, 1.2]])
Y = torch.tensor([0, 3])


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_against_formula(T):
    tckd, nckd = dkd_terms(S_LOGITS, T_LOGITS, Y, T)
    want_t, want_n = hand_dkd(S_LOGITS, T_LOGITS, Y, T)
    assert tckd.item() == pytest.approx(want_t, rel=1e-4)
    assert nckd.item() == pytest.approx(want_n, rel=1e-4)


def test_dkd_zero_with_equal_logits_and_decomposes_kd():
    assert [v.item() for v in dkd_terms(T_LOGITS, T_LOGITS, Y, 4.0)] == pytest.approx([0, 0], abs=1e-6)
    # Zhao et al.'s identity, one example: KD = TCKD + (1 - p_t(y)) * NCKD
    s, t, y = S_LOGITS[:1], T_LOGITS[:1], Y[:1]
    tckd, nckd = dkd_terms(s, t, y, 2.0)
    p_target = softmax(t[0].tolist(), 2.0)[0]
    assert kd_loss(s, t, 2.0).item() == pytest.approx((tckd + (1 - p_target) * nckd).item(), rel=1e-5)


class Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x):
        return self.logits


def method_cfg(name, **over):
    cfg = compose_config(QUICK + [f"method={name}"]).method
    return OmegaConf.merge(OmegaConf.to_container(cfg), over)


def test_dkd_warmup_ramps_linearly_then_holds():
    cfg = method_cfg("dkd", warmup=4, dkd_alpha=1.0, dkd_beta=8.0, beta=2.0)
    method = build_method(cfg, Fixed(S_LOGITS), Fixed(T_LOGITS), DataInfo(1, (1, 1), 4))
    want_t, want_n = hand_dkd(S_LOGITS, T_LOGITS, Y, 4.0)
    for epoch, ramp in [(1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)]:
        _, losses = method.forward_train(torch.zeros(2, 1, 1, 1), Y, epoch)
        assert set(losses) == {"ce", "tckd", "nckd"}
        assert losses["tckd"].item() == pytest.approx(2.0 * ramp * want_t, rel=1e-4)
        assert losses["nckd"].item() == pytest.approx(2.0 * ramp * 8.0 * want_n, rel=1e-4)


# ---- the methods on models: gradients, weights, paths ----

class TinyConv(nn.Module):
    """Two conv stages, a pooled embedding and a classifier, with `feature_points()` like the zoo's."""

    def __init__(self, width=4, num_classes=3):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stage2(self.stage1(x))))

    def feature_points(self):
        return {"stages": ["stage1", "stage2"], "preact": ["stage1.1", "stage2.0"], "embedding": ["fc:in"]}


INFO = DataInfo(2, (6, 6), 3, train_size=40, train_labels=torch.arange(40) % 3)


def tiny_pair(seed=0):
    torch.manual_seed(seed)
    return TinyConv(width=3), TinyConv(width=5)


X, Y6, INDEX = torch.randn(6, 2, 6, 6, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2]), \
    torch.tensor([0, 5, 9, 17, 33, 39])


def one_step(name, **over):
    student, teacher = tiny_pair()
    method = build_method(method_cfg(name, nce_k=8, **over), student, teacher, INFO)
    _, losses = method.forward_train(X, Y6, epoch=1, index=INDEX)
    return method, student, teacher, losses


@pytest.mark.parametrize("name", OURS)
def test_gradients_reach_student_and_heads_never_teacher(name):
    method, student, teacher, losses = one_step(name, ce_weight=0.0)
    assert set(losses) and all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    own = [p for n, p in method.named_parameters() if not n.startswith("student.")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    assert all(p.grad is None for p in teacher.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_ids for p in method.parameters())
    assert not any("teacher" in k and not k.startswith(("embed_t", "memory.")) for k in method.state_dict())


@pytest.mark.parametrize("name,own", [("cc", {"embed_s", "embed_t"}), ("vid", {"regressors"}),
                                      ("crd", {"embed_s", "embed_t", "memory"}), ("sp", set()), ("dkd", set())])
def test_helpers_are_saved_with_the_method(name, own):
    method, *_ = one_step(name)
    saved = {k.split(".")[0] for k in method.state_dict()} - {"student"}
    assert saved == own
    if name == "crd":
        state = method.state_dict()
        assert state["memory.student_bank"].shape == (40, 128) and state["memory.z"].min() > 0


@pytest.mark.parametrize("name", OURS)
def test_alpha_adds_the_kd_term(name):
    _, student, teacher, losses = one_step(name, alpha=0.3, T=2.0)
    with torch.no_grad():
        want = 0.3 * kd_loss(student(X), teacher(X), 2.0)
    assert losses["kd"].item() == pytest.approx(want.item(), rel=1e-5)
    ce_weight = 1.0 if name == "dkd" else 0.7  # dkd's config fixes ce_weight at 1 (mdistiller); others: 1 - alpha
    assert losses["ce"].item() == pytest.approx(ce_weight * nn.functional.cross_entropy(student(X), Y6).item(), rel=1e-5)
    *_, losses = one_step(name)
    assert "kd" not in losses


@pytest.mark.parametrize("name", OURS)
def test_beta_weights_the_method_terms(name):
    *_, one = one_step(name, beta=1.0)
    *_, three = one_step(name, beta=3.0)
    *_, none = one_step(name, beta=0.0)
    assert set(one) == set(three) and set(none) == {"ce"}
    for term in set(one) - {"ce"}:
        assert three[term].item() == pytest.approx(3 * one[term].item(), rel=1e-5)
        assert one[term].item() > 0


def test_default_features_follow_repdistiller():
    student, teacher = tiny_pair()
    pick = lambda name: build_method(method_cfg(name, nce_k=8), student, teacher, INFO)  # noqa: E731
    assert pick("sp")._student_hooks.paths == ["stage2"]  # last stage
    assert pick("vid")._student_hooks.paths == ["stage1", "stage2"]  # every stage
    for name in ("cc", "rkd", "pkt", "crd"):
        assert pick(name)._student_hooks.paths == ["fc:in"]  # the embedding
    assert pick("dkd")._student_hooks is None  # logits only
    vid = build_method(method_cfg("vid", student_features=["stage1"], teacher_features=["stage2"]), student, teacher, INFO)
    assert vid._teacher_hooks.paths == ["stage2"] and len(vid.regressors) == 1


class ThreeStages(TinyConv):
    def __init__(self):
        super().__init__(width=5)
        self.stage3 = nn.Conv2d(10, 10, 1)

    def forward(self, x):
        return self.fc(self.pool(self.stage3(self.stage2(self.stage1(x)))))

    def feature_points(self):
        return {**super().feature_points(), "stages": ["stage1", "stage2", "stage3"]}


def test_vid_pairs_stages_from_the_first_when_the_counts_differ():
    student, _ = tiny_pair()
    vid = build_method(method_cfg("vid"), student, ThreeStages(), INFO)  # RepDistiller zips the stage lists
    assert vid._student_hooks.paths == ["stage1", "stage2"] and vid._teacher_hooks.paths == ["stage1", "stage2"]
    one = build_method(method_cfg("vid", teacher_features=["stage2"]), *tiny_pair(), INFO)  # named on one side
    assert one._student_hooks.paths == ["stage1"] and one._teacher_hooks.paths == ["stage2"]


# ---- refused before training ----

@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("key,value,words", [("T", -1.0, "method.T"), ("alpha", 1.5, "method.alpha"),
                                             ("beta", -0.1, "method.beta")])
def test_impossible_values_are_refused(name, key, value, words):
    student, teacher = tiny_pair()
    with pytest.raises(UserError, match=words):
        build_method(method_cfg(name, nce_k=8, **{key: value}), student, teacher, INFO)


@pytest.mark.parametrize("name,over,words", [
    ("sp", {"student_features": ["stage9"]}, "no module 'stage9'.*Valid module paths"),
    ("vid", {"student_features": ["stage1", "stage2"], "teacher_features": ["stage1"]}, "one to one"),
    ("rkd", {"student_features": ["stage1", "stage2"]}, "one feature"),
    ("rkd", {"angle_weight": -1}, "angle_weight"),
    ("crd", {"nce_k": 40}, "nce_k=40.*only 40"),
    ("crd", {"nce_m": 1.0}, "nce_m"),
    ("dkd", {"warmup": -2}, "warmup"),
])
def test_wrong_settings_are_refused_with_the_fix(name, over, words):
    student, teacher = tiny_pair()
    with pytest.raises(UserError, match=words):
        build_method(method_cfg(name, **{"nce_k": 8, **over}), student, teacher, INFO)


def test_crd_bank_larger_than_the_data_stops_before_the_teacher_trains(tmp_path, caplog):
    caplog.set_level("INFO", logger="kdrun")
    with pytest.raises(UserError, match="nce_k=16384"):
        run(compose_config(QUICK + ["method=crd"]), tmp_path / "run")
    assert "training it" not in caplog.text and not (tmp_path / "run" / "metrics.json").exists()


# ---- whole runs ----

@pytest.mark.parametrize("name", OURS)
def test_short_run_completes(name, tmp_path):
    overrides = QUICK + [f"method={name}", "student.hidden=[16,12]", "teacher.hidden=[32,24]"]
    overrides += ["method.nce_k=16"] if name == "crd" else []
    metrics = run(compose_config(overrides), tmp_path / "run")
    assert metrics["status"] == "completed" and metrics["method"] == name
    terms = set(metrics["history"][-1]["losses"])
    assert "ce" in terms and len(terms) >= 2


# One same-family and one heterogeneous pair of the zoo (the CRD table's), tiny data, one epoch;
# each pair's teacher is trained once and shared by the methods through one cache.
ZOO_PAIRS = [("wrn40_2", "wrn16_2"), ("resnet32x4", "shufflenetv2")]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


@pytest.mark.parametrize("teacher,student", ZOO_PAIRS)
@pytest.mark.parametrize("name", OURS)
def test_zoo_pairs_run(name, teacher, student, shared_cache, tmp_path):
    overrides = ["dataset=synthetic", "dataset.train_size=64", "dataset.test_size=32", "dataset.image_size=8",
                 "train.epochs=1", "train.batch_size=32", "teacher.train.epochs=1", "teacher.train.batch_size=32",
                 "progress=false", f"teacher={teacher}", f"student={student}", f"method={name}",
                 f"cache_dir={shared_cache}"]
    overrides += ["method.nce_k=16"] if name == "crd" else []
    metrics = run(compose_config(overrides), tmp_path / "run")
    assert metrics["status"] == "completed" and (metrics["teacher"], metrics["student"]) == (teacher, student)
    losses = metrics["history"][-1]["losses"]
    assert "ce" in losses and len(losses) >= 2 and all(math.isfinite(v) for v in losses.values())
