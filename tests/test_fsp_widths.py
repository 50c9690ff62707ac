"""FSP on student/teacher pairs of unequal widths (`method.projection`): the projected FSP matrices against
their formula written out by hand, equal-width pairs computing exactly what they computed before, the
projections trained in the init stage and in `schedule=single`, and end-to-end runs on WRN pairs."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.methods.base import Batch
from kdrun.run import run
from inprocess import one_cpu_thread  # noqa: F401  (autouse: tiny models on one thread)
from tiny_conv import TinyConv

INFO = DataInfo(channels=1, image_size=(8, 8), num_classes=3, train_size=16)
TINY = ["dataset=synthetic", "dataset.train_size=16", "dataset.test_size=8", "dataset.image_size=16",
        "dataset.num_classes=4", "train.epochs=1", "train.batch_size=16", "teacher.train.epochs=1",
        "teacher.train.batch_size=16", "progress=false"]


def config(**over):
    return OmegaConf.create({"name": "fsp", "alpha": 0.0, "T": 4.0, "beta": 1.0, "ce_weight": 1.0,
                             "student_features": None, "teacher_features": None, **over})


def pair(student_widths, teacher_widths, seed=0):
    torch.manual_seed(seed)
    return TinyConv(student_widths), TinyConv(teacher_widths)


# ---- the formula, by hand: loops over plain numbers ---------------------------------------------------

def hand_project(fmap, weight, gamma, beta, eps):
    """1x1 conv (no bias), then batch norm in train mode: per output channel, the mean and the biased
    variance over samples and positions. fmap: N x C x H x W nested lists; weight: K x C."""
    n, c, h, w = len(fmap), len(fmap[0]), len(fmap[0][0]), len(fmap[0][0][0])
    y = [[[[sum(weight[k][j] * fmap[s][j][a][b] for j in range(c)) for b in range(w)] for a in range(h)]
          for k in range(len(weight))] for s in range(n)]
    out = [[None] * len(weight) for _ in range(n)]
    for k in range(len(weight)):
        vals = [y[s][k][a][b] for s in range(n) for a in range(h) for b in range(w)]
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / len(vals)
        for s in range(n):
            out[s][k] = [[(y[s][k][a][b] - mean) / math.sqrt(var + eps) * gamma[k] + beta[k] for b in range(w)]
                         for a in range(h)]
    return out


def hand_pool(fmap, size):
    """Average pooling of one sample's C x H x W map to size x size (H a multiple of size)."""
    f = len(fmap[0]) // size
    return [[[sum(ch[a * f + i][b * f + j] for i in range(f) for j in range(f)) / (f * f) for b in range(size)]
             for a in range(size)] for ch in fmap]


def hand_fsp(a, b):
    """One sample's FSP matrix G[i][j] = mean over positions of b_i * a_j, the larger map pooled first."""
    if len(a[0]) > len(b[0]):
        a = hand_pool(a, len(b[0]))
    elif len(b[0]) > len(a[0]):
        b = hand_pool(b, len(a[0]))
    hw = len(a[0]) * len(a[0][0])
    return [[sum(bi[p][q] * aj[p][q] for p in range(len(a[0])) for q in range(len(a[0][0]))) / hw for aj in a]
            for bi in b]


def hand_fsp_term(s_maps, t_maps):
    """Sum over consecutive pairs of mean over samples and entries of (G_s - G_t)^2."""
    total = 0.0
    for i in range(len(s_maps) - 1):
        sq = []
        for n in range(len(s_maps[0])):
            gs, gt = hand_fsp(s_maps[i][n], s_maps[i + 1][n]), hand_fsp(t_maps[i][n], t_maps[i + 1][n])
            sq += [(x - y) ** 2 for rs, rt in zip(gs, gt) for x, y in zip(rs, rt)]
        total += sum(sq) / len(sq)
    return total


def hand_made_batch(method, s_shapes, t_shapes, seed=1):
    g = torch.Generator().manual_seed(seed)
    s_paths = [p for p, _ in method.s_pairs] + [method.s_pairs[-1][1]]
    t_paths = [p for p, _ in method.t_pairs] + [method.t_pairs[-1][1]]
    s = {p: torch.randn(2, *shape, generator=g) for p, shape in zip(s_paths, s_shapes)}
    t = {p: torch.randn(2, *shape, generator=g) for p, shape in zip(t_paths, t_shapes)}
    empty = torch.zeros(2, 3)
    batch = Batch(x=empty, y=torch.zeros(2, dtype=torch.long), s_logits=empty, t_logits=empty, s_feats=s, t_feats=t)
    return batch, s, t


def test_projected_fsp_matrices_are_the_formula_by_hand():
    student, teacher = pair((2, 3), (3, 4))  # maps: student 2, 2, 3 channels; teacher 3, 3, 4
    method = build_method(config(projection="auto"), student, teacher, INFO).train()
    assert [p for p, _ in method.s_pairs] == ["layer1:in", "layer1"]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # projection weights and BN affine parameters away from their initial values
        for proj in method.projections:
            conv, bn = proj
            assert conv.kernel_size == (1, 1) and conv.bias is None
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=g))
    batch, s, t = hand_made_batch(method, [(2, 4, 4), (2, 4, 4), (3, 2, 2)], [(3, 4, 4), (3, 4, 4), (4, 2, 2)])
    loss = method.terms(frozenset({"fsp"}), batch)["fsp"]

    projected = []
    for (path, fmap), proj in zip(s.items(), method.projections):
        conv, bn = proj
        projected.append(hand_project(fmap.tolist(), conv.weight[:, :, 0, 0].tolist(), bn.weight.tolist(),
                                      bn.bias.tolist(), bn.eps))
    expected = hand_fsp_term(projected, [f.tolist() for f in t.values()])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_auto_projects_only_the_maps_of_other_widths_and_always_every_map():
    student, teacher = pair((3, 3), (3, 5))  # maps: student 3, 3, 3; teacher 3, 3, 5
    auto = build_method(config(projection="auto"), student, teacher, INFO)
    assert [type(p).__name__ for p in auto.projections] == ["Identity", "Identity", "Sequential"]
    assert auto.projections[2][0].weight.shape == (5, 3, 1, 1)
    always = build_method(config(projection="always"), *pair((3, 3), (3, 5)), INFO)
    assert [p[0].weight.shape[:2] for p in always.projections] == [(3, 3), (3, 3), (5, 3)]


# ---- equal widths: exactly what FSP computed before ----------------------------------------------------

def test_equal_widths_compute_exactly_the_formula_and_what_they_computed_before():
    shapes = [(4, 4, 4), (4, 4, 4), (6, 2, 2)]  # hand-made maps (the terms read any size)
    losses, rng_after, hand = {}, {}, None
    for kind in (None, "none", "auto"):
        student, teacher = pair((4, 6), (4, 6))
        method = build_method(config(**({} if kind is None else {"projection": kind})), student, teacher, INFO)
        rng_after[kind] = torch.rand(3)  # building added nothing that draws from the generator
        assert not list(method.projections.parameters()) and not list(method.projections.buffers())
        assert set(method.state_dict()) == {f"student.{k}" for k in student.state_dict()} | {"_extra_state"}
        assert [id(p) for p in method.init_parameters()] == [
            id(p) for m in (student.stem, student.layer1, student.layer2) for p in m.parameters()]
        batch, s, t = hand_made_batch(method, shapes, shapes)
        losses[kind] = method.terms(frozenset({"fsp"}), batch)["fsp"]
        if hand is None:  # the same hand-made maps for each
            hand = hand_fsp_term([f.tolist() for f in s.values()], [f.tolist() for f in t.values()])
        assert losses[kind].item() == pytest.approx(hand, rel=1e-5)
    assert torch.equal(losses[None], losses["none"]) and torch.equal(losses["none"], losses["auto"])
    assert torch.equal(rng_after[None], rng_after["auto"])

    x, y = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([0, 1, 2, 0])
    runs = {}
    for kind in ("none", "auto"):  # a training step's terms, bit for bit
        method = build_method(config(projection=kind), *pair((4, 6), (4, 6)), INFO)
        _, runs[kind] = method.forward_train(x, y)
    assert runs["none"].keys() == runs["auto"].keys() == {"ce", "fsp"}
    assert all(torch.equal(runs["none"][k], runs["auto"][k]) for k in runs["none"])


def test_unequal_widths_are_refused_by_default_and_an_unknown_projection_is_refused():
    with pytest.raises(UserError, match="equal widths.*method.projection=auto"):
        build_method(config(), *pair((4, 6), (4, 8)), INFO)
    with pytest.raises(UserError, match="method.projection.*valid: none.*auto.*always"):
        build_method(config(projection="sometimes"), *pair((4, 6), (4, 8)), INFO)


# ---- the projections train ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data():
    from kdrun.data import build_dataset
    from kdrun.training.recipe import Recipe

    data = build_dataset(OmegaConf.create({"name": "synthetic", "root": None, "download": False, "train_size": 16,
                                           "test_size": 8, "val_size": 0, "channels": 1, "image_size": 8,
                                           "num_classes": 3, "noise": 1.0, "data_seed": 0}), torch.device("cpu"))
    recipe = Recipe.from_config(OmegaConf.create({"epochs": 1, "batch_size": 16, "lr": 0.05, "momentum": 0.9,
                                                  "weight_decay": 5e-4, "milestones": [], "gamma": 0.1,
                                                  "nesterov": False}))
    return data, recipe


def projection_state(method):
    return {k: v.clone() for k, v in method.projections.state_dict().items()}


def changed(before, method):
    after = method.projections.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def test_the_projections_train_in_the_init_stage(tiny_data, tmp_path):
    from kdrun.training.loop import fit

    data, recipe = tiny_data
    student, teacher = pair((3, 4), (4, 6))
    method = build_method(config(projection="auto"), student, teacher, data.info)
    params = {id(p) for p in method.init_parameters()}
    assert {id(p) for p in method.projections.parameters()} <= params
    assert params == {id(p) for m in (student.stem, student.layer1, student.layer2, method.projections)
                      for p in m.parameters()}
    before, fc = projection_state(method), {k: v.clone() for k, v in student.fc.state_dict().items()}
    result = fit(method, data, recipe, stage="init", seed=0, checkpoint=tmp_path / "init.pt",
                 parameters=method.init_parameters(), phase="init")
    assert set(result.history[0]["losses"]) == {"fsp"} and math.isfinite(result.history[0]["losses"]["fsp"])
    moved = changed(before, method)
    assert {k for k in before if k.endswith(("0.weight", "1.weight", "1.bias"))} <= moved  # conv, BN affine
    assert all(torch.equal(v, student.fc.state_dict()[k]) for k, v in fc.items())
    _, after = method.forward_train(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    assert set(after) == {"ce"}  # the main stage after the init stage: the task alone


def test_the_projections_train_with_the_student_in_schedule_single(tiny_data, tmp_path):
    from kdrun.training.loop import fit

    data, recipe = tiny_data
    method = build_method(config(projection="auto"), *pair((3, 4), (4, 6)), data.info)
    before = projection_state(method)
    result = fit(method, data, recipe, stage="main", seed=0, checkpoint=tmp_path / "main.pt")
    assert {"ce", "fsp"} <= set(result.history[0]["losses"])
    assert {k for k in before if k.endswith(("0.weight", "1.weight", "1.bias"))} <= changed(before, method)
    saved = torch.load(tmp_path / "main.pt", weights_only=True)["model"]
    assert any(k.startswith("projections.") for k in saved)  # checkpointed with the student


# ---- end to end: WRN 16-4 -> WRN 10-1 (stage widths 64/128/256 -> 16/32/64) ---------------------------

@pytest.fixture(scope="module")
def wrn_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["init_then_train", "single"])
def test_fsp_runs_on_a_wrn_pair_of_unequal_widths(schedule, wrn_cache, tmp_path):
    cfg = compose_config(TINY + ["method=fsp", "method.projection=auto", "teacher=wrn16_4", "student=wrn10_1",
                                 f"schedule={schedule}", f"cache_dir={wrn_cache}"])
    metrics = run(cfg, tmp_path / "run")
    assert metrics["status"] == "completed"
    history = metrics["history"]
    if schedule == "init_then_train":
        assert [h["stage"] for h in history] == ["init", "fsp"]
        assert set(history[0]["losses"]) == {"fsp"} and set(history[1]["losses"]) == {"ce"}
    else:
        assert set(history[0]["losses"]) == {"ce", "fsp"}
    assert all(math.isfinite(v) for h in history for v in h["losses"].values())
    with pytest.raises(UserError, match="equal widths"):  # the default refuses the pair
        run(compose_config(TINY + ["method=fsp", "teacher=wrn16_4", "student=wrn10_1", f"schedule={schedule}",
                                   f"cache_dir={wrn_cache}"]), tmp_path / "refused")
