"""Feature methods (fitnet, at, fsp, ab, nst, ft): each loss against its paper's formula written out by
hand here (loops over plain numbers), their known properties, gradients, init stages and bad values."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.ab import ab_margin_loss
from kdrun.methods.at import at_loss, attention_map
from kdrun.methods.fsp import fsp_loss
from kdrun.methods.ft import ft_loss
from kdrun.methods.kd import kd_loss
from kdrun.methods.nst import nst_loss
from kdrun.models.features import parameters_up_to
from kdrun.models.mlp import MLP
from tiny_conv import TinyConv

CONF = Path(__file__).resolve().parents[1] / "conf"

INFO = DataInfo(channels=1, image_size=(8, 8), num_classes=3, train_size=16)


DEFAULTS = {
    "fitnet": {"beta": 100.0},
    "at": {"beta": 1000.0, "p": 2.0, "form": "repdistiller"},
    "nst": {"beta": 50.0, "degree": 2, "c": 0.0},
    "fsp": {"beta": 1.0},
    "ab": {"beta": 1.0, "margin": 1.0, "connector": "auto", "init_trains": "feature_layers"},
    "ft": {"beta": 200.0, "rate": 0.5, "form": "repdistiller", "reconstruction": "auto"},
}


def config(name, **over):
    base = {"name": name, "alpha": 0.0, "T": 4.0, "ce_weight": 1.0, "student_features": None, "teacher_features": None,
            **DEFAULTS[name]}
    return OmegaConf.create({**base, **over})


def pair(seed=0, student_widths=(4, 6), teacher_widths=(4, 6)):
    torch.manual_seed(seed)
    return TinyConv(student_widths), TinyConv(teacher_widths)


def values(t):
    return t.tolist()


# ---- each loss against its formula, on small hand-made tensors -------------------------------------

def hand_attention(fmap, p, form="repdistiller"):
    """One sample's map: mean over channels of a^p (RepDistiller) or |a|^p (the paper) at each position,
    L2-normalised."""
    c, h, w = len(fmap), len(fmap[0]), len(fmap[0][0])
    power = (lambda a: a ** p) if form == "repdistiller" else (lambda a: abs(a) ** p)
    q = [sum(power(fmap[k][i][j]) for k in range(c)) / c for i in range(h) for j in range(w)]
    norm = math.sqrt(sum(v * v for v in q))
    return [v / norm for v in q]


def hand_at(fs, ft, p=2.0, form="repdistiller"):
    diffs = []
    for a, b in zip(values(fs), values(ft)):
        diffs += [(x - y) ** 2 for x, y in zip(hand_attention(a, p, form), hand_attention(b, p, form))]
    return sum(diffs) / len(diffs)


FS = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]], [[0.3, 1.0], [-1.0, 2.0]]],
                   [[[0.2, 0.1], [1.5, -0.5]], [[2.0, 0.0], [0.4, 0.9]]]])  # 2 x 2 x 2 x 2
FT = torch.tensor([[[[0.5, 1.0], [-1.0, 0.2]], [[1.0, 1.0], [0.0, -0.3]], [[0.1, 2.0], [0.7, 0.6]]],
                   [[[1.2, -0.4], [0.3, 0.8]], [[0.0, 0.5], [1.0, 1.0]], [[-2.0, 0.1], [0.2, 0.3]]]])  # 2 x 3 x 2 x 2


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
@pytest.mark.parametrize("form", ["repdistiller", "paper"])
def test_at_loss_is_the_mean_squared_difference_of_normalised_attention_maps(p, form):
    assert at_loss(FS, FT, p, form).item() == pytest.approx(hand_at(FS, FT, p, form), rel=1e-5)


def test_at_forms_differ_for_odd_p_only_and_the_preset_uses_repdistillers():
    assert at_loss(FS, FT, 2.0, "paper").item() == pytest.approx(at_loss(FS, FT, 2.0, "repdistiller").item(), rel=1e-6)
    assert at_loss(FS, FT, 3.0, "paper").item() != pytest.approx(at_loss(FS, FT, 3.0, "repdistiller").item(), rel=1e-3)
    # RepDistiller's distiller_zoo/AT.py: at(f) = normalize(f.pow(p).mean(1).view(N, -1)), no abs.
    q = FS.pow(3).mean(1).flatten(1)
    q = q / q.norm(dim=1, keepdim=True)
    assert torch.allclose(attention_map(FS, 3.0), q, atol=1e-6)
    assert OmegaConf.load(CONF / "method" / "at.yaml").form == "repdistiller"
    with pytest.raises(UserError, match="method.form=paper"):
        build_method(config("at", p=1.5), *pair(), INFO)
    build_method(config("at", p=1.5, form="paper"), *pair(), INFO)  # |A|^p is defined for any p


def test_at_loss_pools_the_larger_map_and_is_scale_invariant_and_zero_on_equal_maps():
    big = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4).sin()
    pooled = [[[[sum(big[n, c, 2 * i + di, 2 * j + dj].item() for di in (0, 1) for dj in (0, 1)) / 4
                 for j in range(2)] for i in range(2)] for c in range(3)] for n in range(2)]
    assert at_loss(FS, big).item() == pytest.approx(hand_at(FS, torch.tensor(pooled)), rel=1e-5)
    assert at_loss(3.7 * FS, FT).item() == pytest.approx(at_loss(FS, FT).item(), rel=1e-5)
    assert at_loss(FT, FT).item() == pytest.approx(0.0, abs=1e-12)
    assert at_loss(FS, FT).item() > 0


def hand_nst(fs, ft, d=2.0, c=0.0):
    def channels(sample):
        out = []
        for ch in sample:
            flat = [v for row in ch for v in row]
            norm = math.sqrt(sum(v * v for v in flat))
            out.append([v / norm for v in flat])
        return out

    def mean_kernel(xs, ys):
        ks = [(sum(a * b for a, b in zip(x, y)) + c) ** d for x in xs for y in ys]
        return ks

    tt, ss, st = [], [], []
    for a, b in zip(values(fs), values(ft)):
        s, t = channels(a), channels(b)
        tt += mean_kernel(t, t)
        ss += mean_kernel(s, s)
        st += mean_kernel(s, t)
    return sum(tt) / len(tt) + sum(ss) / len(ss) - 2 * sum(st) / len(st)


def test_nst_loss_is_the_polynomial_kernel_mmd_of_normalised_channels():
    assert nst_loss(FS, FT).item() == pytest.approx(hand_nst(FS, FT), rel=1e-5)
    assert nst_loss(FS, FT, 3.0, 1.0).item() == pytest.approx(hand_nst(FS, FT, 3.0, 1.0), rel=1e-5)


def test_nst_loss_is_zero_on_equal_maps_and_invariant_to_channel_scale():
    assert nst_loss(FT, FT).item() == pytest.approx(0.0, abs=1e-6)
    scale = torch.tensor([2.0, 0.5]).view(1, 2, 1, 1)
    assert nst_loss(FS * scale, FT).item() == pytest.approx(nst_loss(FS, FT).item(), rel=1e-5)


def hand_fsp_matrix(a, b):
    """G[j][i] = mean over positions of b_j * a_i, per sample."""
    out = []
    for sa, sb in zip(values(a), values(b)):
        flat_a = [[v for row in ch for v in row] for ch in sa]
        flat_b = [[v for row in ch for v in row] for ch in sb]
        out.append([[sum(x * y for x, y in zip(bj, ai)) / len(ai) for ai in flat_a] for bj in flat_b])
    return out


def test_fsp_loss_is_the_mean_squared_difference_of_fsp_matrices():
    s_in, s_out = FS, FT  # a stage: 2 -> 3 channels
    t_in, t_out = FS.flip(0), FT.flip(3) * 2
    gs, gt = hand_fsp_matrix(s_in, s_out), hand_fsp_matrix(t_in, t_out)
    sq = [(x - y) ** 2 for n in range(2) for j in range(3) for i in range(2) for x, y in [(gs[n][j][i], gt[n][j][i])]]
    assert fsp_loss(s_in, s_out, t_in, t_out).item() == pytest.approx(sum(sq) / len(sq), rel=1e-5)
    assert fsp_loss(s_in, s_out, s_in, s_out).item() == pytest.approx(0.0, abs=1e-12)


def test_fsp_matrix_pools_a_larger_input_to_the_output_size():
    big_in = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4).cos()
    pooled = torch.nn.functional.avg_pool2d(big_in, 2)
    assert fsp_loss(big_in, FT, FS, FT).item() == pytest.approx(fsp_loss(pooled, FT, FS, FT).item(), rel=1e-6)


def hand_ab(s, t, m):
    total = 0.0
    for x, y in zip(s.flatten().tolist(), t.flatten().tolist()):
        if y <= 0 and x > -m:
            total += (x + m) ** 2
        if y > 0 and x <= m:
            total += (x - m) ** 2
    return total / s.shape[0]


def test_ab_margin_loss_against_the_paper():
    s = torch.tensor([[0.5, -0.5, 2.0, -2.0, 0.0, 1.5], [-1.2, 0.9, -0.1, 3.0, 0.2, -0.8]])
    t = torch.tensor([[1.0, 1.0, -1.0, -1.0, 0.0, 2.0], [-0.5, -0.2, 0.3, 0.4, -3.0, 1.0]])
    for m in (1.0, 0.5, 2.0):
        assert ab_margin_loss(s, t, m).item() == pytest.approx(hand_ab(s, t, m), rel=1e-6)
    # Zero once every neuron is on the teacher's side of the boundary by at least the margin.
    assert ab_margin_loss(torch.where(t > 0, 1.5, -1.5), t, 1.0).item() == 0.0


def unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def test_ft_loss_paper_form_is_the_l1_distance_of_normalised_factors():
    def normalised(x):
        return [unit([v for ch in sample for row in ch for v in row]) for sample in values(x)]

    a, b = FT, FT.flip(1) + 0.3
    diffs = [abs(x - y) for ra, rb in zip(normalised(a), normalised(b)) for x, y in zip(ra, rb)]
    assert ft_loss(a, b, "paper").item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-5)
    assert ft_loss(a, a, "paper").item() == pytest.approx(0.0, abs=1e-7)
    assert ft_loss(5 * a, b, "paper").item() == pytest.approx(ft_loss(a, b, "paper").item(), rel=1e-5)


def test_ft_loss_repdistiller_form_compares_normalised_maps_of_the_mean_squared_channels():
    """RepDistiller's distiller_zoo/FT.py: factor(f) = normalize(f.pow(2).mean(1).view(N, -1)), then
    the mean absolute difference of the two (p1 = 2, p2 = 1)."""
    def spatial(x):
        out = []
        for sample in values(x):
            c, h, w = len(sample), len(sample[0]), len(sample[0][0])
            out.append(unit([sum(sample[k][i][j] ** 2 for k in range(c)) / c for i in range(h) for j in range(w)]))
        return out

    a, b = FT, FS + 0.3  # 3 and 2 factor channels: the maps average the channels out
    diffs = [abs(x - y) for ra, rb in zip(spatial(a), spatial(b)) for x, y in zip(ra, rb)]
    assert ft_loss(a, b).item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-5)
    assert ft_loss(a, b, "repdistiller").item() == ft_loss(a, b).item()
    c = FT.flip(1) + 0.3
    assert ft_loss(a, c).item() != pytest.approx(ft_loss(a, c, "paper").item(), rel=1e-2)
    assert ft_loss(3 * a, b).item() == pytest.approx(ft_loss(a, b).item(), rel=1e-5)


# ---- the methods on models: their terms, gradients, own parameters -----------------------------------

def run_batch(method, n=4, seed=1, phase="main"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return method.forward_train(x, y, phase=phase)


def test_fitnet_term_is_beta_times_mse_of_regressed_student_hint():
    student, teacher = pair(student_widths=(3, 5))
    method = build_method(config("fitnet"), student, teacher, INFO)
    assert method.s_paths == ["layer2"] and method.t_paths == ["layer2"]  # the second stage by default
    method.eval()  # BN in eval mode: the features below are reproducible outside the method
    x = torch.randn(4, 1, 8, 8)
    _, losses = method.forward_train(x, torch.zeros(4, dtype=torch.long))
    f_s = student.layer2(student.layer1(student.stem(x)))
    f_t = teacher.layer2(teacher.layer1(teacher.stem(x)))
    expected = ((method.regressors[0](f_s) - f_t) ** 2).mean() * 100.0
    assert set(losses) == {"ce", "fitnet"}
    assert losses["fitnet"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name,term", [("at", at_loss), ("nst", nst_loss)])
def test_stage_methods_sum_their_loss_over_the_stages(name, term):
    student, teacher = pair(student_widths=(3, 5))
    method = build_method(config(name), student, teacher, INFO).eval()
    x = torch.randn(4, 1, 8, 8)
    _, losses = method.forward_train(x, torch.zeros(4, dtype=torch.long))
    s1, t1 = student.layer1(student.stem(x)), teacher.layer1(teacher.stem(x))
    s2, t2 = student.layer2(s1), teacher.layer2(t1)
    expected = DEFAULTS[name]["beta"] * (term(s1, t1) + term(s2, t2))
    assert losses[name].item() == pytest.approx(expected.item(), rel=1e-5)


def test_fsp_reads_each_stage_input_and_output():
    student, teacher = pair()
    method = build_method(config("fsp"), student, teacher, INFO).eval()
    x = torch.randn(4, 1, 8, 8)
    _, losses = method.forward_train(x, torch.zeros(4, dtype=torch.long))
    s0, t0 = student.stem(x), teacher.stem(x)
    s1, t1 = student.layer1(s0), teacher.layer1(t0)
    expected = fsp_loss(s0, s1, t0, t1) + fsp_loss(s1, student.layer2(s1), t1, teacher.layer2(t1))
    assert losses["fsp"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_ab_weights_deeper_stages_more_and_reads_pre_activations():
    student, teacher = pair()
    method = build_method(config("ab"), student, teacher, INFO).eval()
    x = torch.randn(4, 1, 8, 8)
    _, losses = method.forward_train(x, torch.zeros(4, dtype=torch.long))
    s1 = student.layer1[1](student.layer1[0](student.stem(x)))  # before layer1's ReLU
    t1 = teacher.layer1[1](teacher.layer1[0](teacher.stem(x)))
    s2 = student.layer2[1](student.layer2[0](torch.relu(s1)))
    t2 = teacher.layer2[1](teacher.layer2[0](torch.relu(t1)))
    c1, c2 = method.connectors
    expected = 3 / 1000 * (0.5 * hand_ab(c1(s1), t1, 1.0) + 1.0 * hand_ab(c2(s2), t2, 1.0))
    assert losses["ab"].item() == pytest.approx(expected, rel=1e-5)


def test_ft_term_on_the_last_stage_through_translator_and_paraphraser():
    student, teacher = pair(student_widths=(3, 5), teacher_widths=(4, 8))
    method = build_method(config("ft"), student, teacher, INFO).eval()
    x = torch.randn(4, 1, 8, 8)
    _, losses = method.forward_train(x, torch.zeros(4, dtype=torch.long))
    f_s = student.layer2(student.layer1(student.stem(x)))
    f_t = teacher.layer2(teacher.layer1(teacher.stem(x)))
    factor_t, rec = method.paraphraser(f_t)
    assert factor_t.shape[1] == 4  # rate 0.5 of the teacher's 8 channels
    assert losses["ft"].item() == pytest.approx(200.0 * ft_loss(method.translator(f_s), factor_t).item(), rel=1e-5)
    mse = ((rec - f_t) ** 2).mean()
    relative = mse / (f_t ** 2).mean()  # reconstruction auto: relative on schedule=single ...
    assert losses["ft_paraphraser"].item() == pytest.approx(relative.item(), rel=1e-5)
    _, init = method.forward_train(x, torch.zeros(4, dtype=torch.long), phase="init")
    assert init["ft_paraphraser"].item() == pytest.approx(mse.item(), rel=1e-5)  # ... RepDistiller's MSE in the init stage
    for kind, expected in (("mse", mse), ("relative", relative)):
        fixed = build_method(config("ft", reconstruction=kind), student, teacher, INFO).eval()
        fixed.paraphraser.load_state_dict(method.paraphraser.state_dict())
        for phase in ("main", "init"):
            _, terms = fixed.forward_train(x, torch.zeros(4, dtype=torch.long), phase=phase)
            assert terms["ft_paraphraser"].item() == pytest.approx(expected.item(), rel=1e-5), (kind, phase)


OWN_PARTS = {"fitnet": "regressors", "ab": "connectors", "ft": "translator", "at": None, "nst": None, "fsp": None}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_gradients_reach_student_and_method_parts_never_the_teacher(name):
    student, teacher = pair(student_widths=(4, 6), teacher_widths=(4, 6))
    method = build_method(config(name, alpha=0.5, ce_weight=0.0), student, teacher, INFO)
    _, losses = run_batch(method)
    assert losses["kd"].item() > 0 and "ce" not in losses
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.stem.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p is q for p in method.parameters() for q in teacher.parameters())
    assert not any(k.startswith("_teacher") for k in method.state_dict())
    if OWN_PARTS[name]:
        part = getattr(method, OWN_PARTS[name])
        assert all(p.grad is not None for p in part.parameters() if p.requires_grad)
    if name == "ft":  # the paraphraser learns from its reconstruction term
        assert all(p.grad is not None for p in method.paraphraser.parameters())
    method.zero_grad(set_to_none=True)
    _, losses = run_batch(method)
    losses[name].backward()  # the method's own term alone still reaches the student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.layer1.parameters())
    if name == "ft":  # ... but not the paraphraser: the student follows its factor, detached
        assert all(p.grad is None for p in method.paraphraser.parameters())


def test_kd_term_is_added_when_alpha_is_positive():
    student, teacher = pair()
    method = build_method(config("at", alpha=0.4, ce_weight=None), student, teacher, INFO).eval()
    x = torch.randn(4, 1, 8, 8)
    _, losses = method.forward_train(x, torch.zeros(4, dtype=torch.long))
    assert losses["kd"].item() == pytest.approx(0.4 * kd_loss(student(x), teacher(x), 4.0).item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(0.6 * nn.functional.cross_entropy(student(x), torch.zeros(4, dtype=torch.long)).item(), rel=1e-5)


# ---- init stages -----------------------------------------------------------------------------------

def test_parameters_up_to_a_feature_are_those_that_ran_before_it():
    model = TinyConv()
    sample = torch.zeros(2, 1, 8, 8)
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    upto_1 = ids(list(model.stem.parameters()) + list(model.layer1.parameters()))
    assert ids(parameters_up_to(model, "layer1", sample)) == upto_1
    assert ids(parameters_up_to(model, "layer2:in", sample)) == upto_1
    assert ids(parameters_up_to(model, "layer2.1", sample)) == upto_1 | ids(model.layer2[:2].parameters())
    assert ids(parameters_up_to(model, "fc:in", sample)) == ids(model.parameters()) - ids(model.fc.parameters())
    mlp = MLP(3, 1, (8, 8), hidden=(5, 4))
    assert ids(parameters_up_to(mlp, "hidden.0.1", torch.zeros(2, 1, 8, 8))) == ids(mlp.hidden[0].parameters())


@pytest.mark.parametrize("name,init_terms,trained", [
    ("fitnet", {"fitnet_hint"}, "student up to layer2 + regressors"),
    ("ab", {"ab"}, "student up to the last pre-activation + connectors"),
    ("fsp", {"fsp"}, "student up to the last stage"),
    ("ft", {"ft_paraphraser"}, "paraphraser"),
])
def test_init_stage_terms_parameters_and_the_main_stage_after_it(name, init_terms, trained):
    student, teacher = pair()
    method = build_method(config(name), student, teacher, INFO)
    assert method.has_init_stage
    _, single = run_batch(method)
    assert name in single  # single stage: the term is part of the main loss
    _, losses = run_batch(method, phase="init")
    assert set(losses) == init_terms
    params = {id(p) for p in method.init_parameters()}
    parts = {"fitnet": lambda: (student.stem, student.layer1, student.layer2, method.regressors),
             "ab": lambda: (student.stem, student.layer1, student.layer2[:2], method.connectors),
             "fsp": lambda: (student.stem, student.layer1, student.layer2), "ft": lambda: (method.paraphraser,)}
    expected = {id(p) for m in parts[name]() for p in m.parameters()}
    assert params == expected, trained
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in method.init_parameters() if p.requires_grad)

    _, after = run_batch(method)
    if name == "ft":
        assert set(after) == {"ce", "ft"}  # the frozen paraphraser's factor, no reconstruction term
    else:
        assert set(after) == {"ce"}  # as in the papers: the task alone after the init stage
    fresh = build_method(config(name), *pair(), INFO)
    fresh.load_state_dict(method.state_dict())  # a resumed run knows the init stage ran
    assert fresh.init_stage_ran


# ---- bad values stop before training -----------------------------------------------------------------

@pytest.mark.parametrize("name,over,match", [
    ("at", {"T": -1.0}, "method.T"),
    ("nst", {"alpha": 1.5}, "method.alpha"),
    ("fitnet", {"beta": -1.0}, "method.beta"),
    ("at", {"p": 0.0}, "method.p"),
    ("ab", {"margin": -0.5}, "method.margin"),
    ("ft", {"rate": 0.0}, "method.rate"),
    ("nst", {"degree": 0}, "method.degree"),
    ("fitnet", {"student_features": "layer1"}, "method.student_features"),
    ("ab", {"connector": "sometimes"}, "method.connector.*valid: auto.*always"),
    ("ab", {"init_trains": "all"}, "method.init_trains.*valid: feature_layers.*student"),
    ("ft", {"form": "torchdistill"}, "method.form.*valid: repdistiller.*paper"),
    ("ft", {"reconstruction": "l1"}, "method.reconstruction.*valid: auto.*mse.*relative"),
    ("at", {"form": "abs"}, "method.form.*valid: repdistiller.*paper"),
])
def test_impossible_values_are_refused(name, over, match):
    with pytest.raises(UserError, match=match):
        build_method(config(name, **over), *pair(), INFO)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_a_feature_path_that_does_not_exist_names_the_valid_ones(name):
    with pytest.raises(UserError, match=r"no module 'layer9'.*Valid module paths: stem, layer1"):
        build_method(config(name, student_features=["layer9"], teacher_features=["layer2"]), *pair(), INFO)


def test_unequal_path_lists_and_mismatched_fsp_widths_are_refused():
    with pytest.raises(UserError, match="same length"):
        build_method(config("at", student_features=["layer1", "layer2"], teacher_features=["layer2"]), *pair(), INFO)
    with pytest.raises(UserError, match="equal widths"):
        build_method(config("fsp"), *pair(student_widths=(4, 6), teacher_widths=(4, 8)), INFO)


def test_map_methods_refuse_vector_features_with_a_clear_message():
    mlp_s, mlp_t = MLP(3, 1, (8, 8), hidden=(5, 4)), MLP(3, 1, (8, 8), hidden=(6, 4))
    with pytest.raises(UserError, match="convolutional feature maps"):
        build_method(config("at"), mlp_s, mlp_t, INFO)
    # FitNet and AB work on vectors (linear regressor / connector).
    for name in ("fitnet", "ab"):
        _, losses = run_batch(build_method(config(name), mlp_s, mlp_t, INFO))
        assert losses[name].item() > 0


# ---- in the training loop: init stage, then the main stage, checkpoints ----------------------------

@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_each_method_trains_in_the_loop_with_its_init_stage(name, tmp_path):
    from kdrun.data import build_dataset
    from kdrun.training.loop import fit
    from kdrun.training.recipe import Recipe

    data = build_dataset(OmegaConf.create({"name": "synthetic", "root": None, "download": False, "train_size": 32,
                                           "test_size": 16, "val_size": 0, "channels": 1, "image_size": 8,
                                           "num_classes": 3, "noise": 1.0, "data_seed": 0}), torch.device("cpu"))
    recipe = Recipe.from_config(OmegaConf.create({"epochs": 1, "batch_size": 16, "lr": 0.01, "momentum": 0.9,
                                                  "weight_decay": 5e-4, "milestones": [], "gamma": 0.1,
                                                  "nesterov": False}))
    student, teacher = pair()
    method = build_method(config(name), student, teacher, data.info)
    if method.has_init_stage:
        frozen = {k: v.clone() for k, v in student.fc.state_dict().items()}
        result = fit(method, data, recipe, stage="init", seed=0, checkpoint=tmp_path / "init.pt",
                     parameters=method.init_parameters(), phase="init")
        assert all(math.isfinite(v) for v in result.history[0]["losses"].values())
        assert all(torch.equal(v, student.fc.state_dict()[k]) for k, v in frozen.items())  # not in the init stage
    result = fit(method, data, recipe, stage="main", seed=0, checkpoint=tmp_path / "main.pt")
    losses = result.history[0]["losses"]
    assert "ce" in losses and all(math.isfinite(v) for v in losses.values())
    assert (name in losses) != method.has_init_stage or name == "ft"
    resumed = build_method(config(name), *pair(), data.info)
    resumed.load_state_dict(torch.load(tmp_path / "main.pt", weights_only=True)["model"])
    assert resumed.has_init_stage == getattr(resumed, "init_stage_ran", False)
