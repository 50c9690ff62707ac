"""Hinton et al. 2015's MNIST transfer sets: `dataset.transfer_exclude` / `dataset.transfer_only` (the students'
training data only) and the bias correction at test time, `eval.bias_shift` (kdrun.training.bias_shift)."""
from __future__ import annotations

import json
import shlex
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from kdrun.data import build_dataset
from kdrun.data.base import Dataset, Split
from kdrun.data.transfer import transfer_set
from kdrun.errors import UserError
from kdrun.results.identity import config_identity
from kdrun.training.bias_shift import best_shift, bias_shift_metrics, errors, parse_bias_shift
from kdrun.training.recipe import TeacherRecipe
from kdrun.training.teacher import cache_key, cache_path, dataset_identity
from tests.conftest import QUICK, compose_config, kdrun_cli, read_json

CPU = torch.device("cpu")


def split_of(logits: torch.Tensor, y) -> Split:
    return Split(logits.reshape(len(logits), -1, 1, 1).float(), torch.as_tensor(y, dtype=torch.long))


def logits_data(test: Split, val=None, train=None) -> Dataset:
    """A dataset whose images are logits: nn.Flatten() is then a model that outputs them."""
    c = test.x.shape[1]
    return Dataset("logits", train if train is not None else test, test, val, c, torch.zeros(1, c, 1, 1),
                   torch.ones(1, c, 1, 1))


def test_the_transfer_set_holds_exactly_the_examples_of_the_other_classes():
    cfg = compose_config(QUICK + ["dataset.val_size=8"]).dataset
    data = build_dataset(cfg, CPU)
    before = (data.train.x.clone(), data.train.y.clone())
    assert transfer_set(data, cfg) is data  # neither key: the same dataset
    for key, classes, kept in [("transfer_exclude", [3], lambda y: y != 3),
                               ("transfer_only", [7, 8], lambda y: (y == 7) | (y == 8))]:
        students = transfer_set(data, OmegaConf.merge(cfg, {key: classes}))
        mask = kept(data.train.y)
        assert 0 < int(mask.sum()) < len(data.train)
        assert torch.equal(students.train.y, data.train.y[mask]) and torch.equal(students.train.x, data.train.x[mask])
        # the teacher's data, the validation and test splits and the normalisation are left as they were
        assert torch.equal(data.train.x, before[0]) and torch.equal(data.train.y, before[1])
        assert students.test is data.test and students.val is data.val
        assert 3 in data.val.y.tolist() and 3 in data.test.y.tolist()
        assert torch.equal(students.mean, data.mean) and torch.equal(students.std, data.std)
        assert students.num_classes == data.num_classes == 10 and students.info.train_size == int(mask.sum())


def test_transfer_size_keeps_the_first_examples_for_the_students_only():
    """AB's Table 3: the students train on 10 % of the training split, the teacher on all of it."""
    cfg = compose_config(QUICK + ["dataset.transfer_size=10"]).dataset
    data = build_dataset(cfg, CPU)
    students = transfer_set(data, cfg)
    assert torch.equal(students.train.x, data.train.x[:10]) and torch.equal(students.train.y, data.train.y[:10])
    assert len(data.train) == 64 and students.test is data.test
    both = transfer_set(data, OmegaConf.merge(cfg, {"transfer_exclude": [3]}))  # cut, then filtered
    assert torch.equal(both.train.y, data.train.y[:10][data.train.y[:10] != 3])
    with pytest.raises(UserError, match=r"dataset.transfer_size=65 is more than the training split holds \(64 "):
        transfer_set(data, OmegaConf.merge(cfg, {"transfer_size": 65}))
    with pytest.raises(UserError, match="dataset.transfer_size=0: give the number of training examples"):
        transfer_set(data, OmegaConf.merge(cfg, {"transfer_size": 0}))
    full = compose_config(QUICK)
    recipe = TeacherRecipe.from_config(full.teacher.train, "teacher.train")
    assert cache_key(full.teacher, cfg, recipe, 0) == cache_key(full.teacher, full.dataset, recipe, 0)


# As typed in a shell: the quotes keep `{3: 3.5}` one argument.
COMMAND = "dataset.transfer_exclude=[3] eval.bias_shift='{3: 3.5}' dataset.val_size=16"


def check_run_metrics(m: dict, teacher_source: str, cache) -> None:
    assert m["status"] == "completed" and m["bias_shift"] == {"3": 3.5}
    test_size = 32
    assert m["test_acc"] == pytest.approx(100 * (1 - m["test_errors"] / test_size), abs=1e-3)
    assert m["test_acc_bias_shifted"] == pytest.approx(100 * (1 - m["test_errors_bias_shifted"] / test_size), abs=1e-3)
    assert 0 <= m["test_errors_shifted_classes"] <= m["test_size_shifted_classes"] <= test_size
    assert set(m["bias_shift_best"]) == {"3"} and "test_acc_bias_best" in m and "val_acc_bias_best" in m
    # the teacher is the one of the same config without the transfer set (its cache key has no such key)
    full = compose_config(QUICK + ["dataset.val_size=16"])
    recipe = TeacherRecipe.from_config(full.teacher.train, "teacher.train")
    assert teacher_source.endswith(cache_path(cache, full.teacher, full.dataset, recipe, 0).name)


def test_the_teacher_trains_on_the_whole_split_and_the_students_on_the_transfer_set(tmp_path, monkeypatch):
    import kdrun.schedules.runner as runner
    import kdrun.training.teacher as teacher
    from kdrun.run import run

    seen = {}
    for module in (runner, teacher):
        def spy(distiller, data, recipe, *, stage, real=module.fit, **kw):
            seen[stage] = (data.train.y.clone(), data.test, data.val)
            return real(distiller, data, recipe, stage=stage, **kw)
        monkeypatch.setattr(module, "fit", spy)
    args = shlex.split(COMMAND)
    assert "eval.bias_shift={3: 3.5}" in args  # what kdrun gets from the shell
    cfg = compose_config(QUICK + args)
    metrics = run(cfg, tmp_path / "run")
    full = build_dataset(cfg.dataset, CPU)
    assert torch.equal(seen["teacher"][0], full.train.y)
    assert torch.equal(seen["kd"][0], full.train.y[full.train.y != 3])
    assert seen["kd"][1] is seen["teacher"][1] and seen["kd"][2] is seen["teacher"][2]  # one test and val split
    check_run_metrics(metrics, metrics["teacher_source"], tmp_path / "cache")


def test_identities_leave_the_new_keys_out_at_their_defaults():
    for overrides in ([], ["experiment=hinton_mnist"]):
        cfg = compose_config(overrides)
        plain = OmegaConf.to_container(cfg, resolve=True)
        assert plain["eval"] == {"bias_shift": None}
        assert plain["dataset"]["transfer_exclude"] is None and plain["dataset"]["transfer_only"] is None
        del plain["eval"], plain["dataset"]["transfer_exclude"], plain["dataset"]["transfer_only"]
        assert config_identity(cfg) == config_identity(plain)  # as before the keys existed
        assert dataset_identity(cfg.dataset) == dataset_identity(OmegaConf.create(plain["dataset"]))
    base = compose_config(QUICK)
    recipe = TeacherRecipe.from_config(base.teacher.train, "teacher.train")
    for extra in (["dataset.transfer_exclude=[3]"], ["dataset.transfer_only=[7,8]"], ["eval.bias_shift={3: 3.5}"]):
        cfg = compose_config(QUICK + extra)
        assert config_identity(cfg) != config_identity(base), extra  # another configuration
        # the teacher trains on the whole split: one cache entry for every transfer set
        assert cache_key(cfg.teacher, cfg.dataset, recipe, 0) == cache_key(base.teacher, base.dataset, recipe, 0)
        students = dataset_identity(cfg.dataset) != dataset_identity(base.dataset)  # a stage's key: the students' data
        assert students == extra[0].startswith("dataset."), extra


def test_refusals_name_the_key():
    cfg = compose_config(QUICK).dataset
    data = logits_data(split_of(torch.zeros(4, 10), [0, 1, 2, 1]))
    cases = [({"transfer_exclude": [3], "transfer_only": [7]}, "both set"),
             ({"transfer_exclude": [10]}, "10 is not a class"), ({"transfer_only": [-1, 12]}, "are not classes"),
             ({"transfer_only": [5]}, "leaves the students no training data"),
             ({"transfer_exclude": [0, 1, 2]}, "leaves the students no training data")]
    for keys, words in cases:
        with pytest.raises(UserError, match=words) as e:
            transfer_set(data, OmegaConf.merge(cfg, keys))
        assert all(f"dataset.{k}" in str(e.value) for k in keys), str(e.value)
    for value, words in [({12: 1.0}, "12 is not a class"), ({3: "x"}, "finite number"), ({3: float("nan")}, "finite"),
                         ({"a": 1.0}, "not a class id"), ([3, 3.5], "mapping"), ({}, "mapping")]:
        with pytest.raises(UserError, match=words) as e:
            parse_bias_shift(value, 10)
        assert "eval.bias_shift" in str(e.value)
    assert parse_bias_shift(OmegaConf.create({3: 3, "7": -7.6}), 10) == {3: 3.0, 7: -7.6}


def test_a_transfer_set_without_data_is_refused_before_any_training(tmp_path):
    from kdrun.run import run

    cfg = compose_config(QUICK + ["dataset.train_size=2", "dataset.transfer_only=[9]"])
    assert 9 not in build_dataset(cfg.dataset, CPU).train.y.tolist()
    with pytest.raises(UserError, match=r"dataset.transfer_only=\[9\] leaves the students no training data"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists()  # no teacher trained
    with pytest.raises(UserError, match="eval.bias_shift"):
        run(compose_config(QUICK + ["eval.bias_shift={10: 1.0}"]), tmp_path / "run2")


# Fixed logits (4 classes), by hand: without a shift examples 0 and 1 (both 3s) are wrong; with +3.5 on
# class 3, example 0 becomes right (4.0 > 1), example 1 stays wrong (0.5 < 2), example 2 becomes wrong (2.5 > 2).
LOGITS = torch.tensor([[0.0, 1.0, 0.0, 0.5], [2.0, 0.0, 0.0, -3.0], [0.0, 2.0, 0.0, -1.0], [5.0, 0.0, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 1.0]])
LABELS = [3, 3, 1, 0, 3]


def test_bias_shift_against_a_hand_computation():
    y = torch.tensor(LABELS)
    assert errors(LOGITS, y, {}, [3]) == (2, 2)
    assert errors(LOGITS, y, {3: 3.5}) == (2, 1)
    assert errors(LOGITS, y, {3: 1.0}) == (1, 1)  # examples 0 (1.5 > 1) and 2 (0 < 2) right, 1 still wrong
    cfg = OmegaConf.create({"eval": {"bias_shift": {3: 3.5}}})
    last = SimpleNamespace(model=nn.Flatten(), stage=None)  # the final stage's outcome: its model
    metrics = bias_shift_metrics(cfg, last, logits_data(split_of(LOGITS, LABELS)))
    assert metrics == {"bias_shift": {"3": 3.5}, "test_errors": 2, "test_errors_shifted_classes": 2,
                       "test_size_shifted_classes": 3, "test_acc_shifted_classes": pytest.approx(100 / 3, abs=1e-4),
                       "test_acc_bias_shifted": 60.0, "test_errors_bias_shifted": 2,
                       "test_errors_shifted_classes_bias_shifted": 1,
                       "test_acc_shifted_classes_bias_shifted": pytest.approx(200 / 3, abs=1e-4)}
    assert bias_shift_metrics(OmegaConf.create({"eval": {"bias_shift": None}}), None, None) == {}


def known_shift_logits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-posteriors of a 10-class Gaussian mixture (the Bayes decision), with class 3's lowered by 3.5."""
    g = torch.Generator().manual_seed(seed)
    mu = 1.5 * torch.eye(10)
    y = torch.randint(0, 10, (n,), generator=g)
    x = mu[y] + torch.randn(n, 10, generator=g)
    logits = -((x[:, None, :] - mu[None]) ** 2).sum(-1) / 2
    logits[:, 3] -= 3.5
    return logits, y


def test_the_best_shift_on_a_validation_split_recovers_a_known_shift():
    val, test = known_shift_logits(3000, 0), known_shift_logits(1000, 1)
    best = best_shift(*val, [3])
    assert best[3] == pytest.approx(3.5, abs=0.5)
    assert errors(*val, best)[0] <= errors(*val, {3: 3.5})[0]  # exact: no shift does better on its split
    for b in (2.5, 3.0, 4.0, 4.5):
        assert errors(*val, best)[0] <= errors(*val, {3: b})[0]
    data = logits_data(split_of(*test), val=split_of(*val))
    metrics = bias_shift_metrics(OmegaConf.create({"eval": {"bias_shift": {3: 3.5}}}),
                                 SimpleNamespace(model=nn.Flatten(), stage=None), data)
    assert metrics["bias_shift_best"]["3"] == pytest.approx(3.5, abs=0.5)
    assert metrics["test_errors_bias_best"] < metrics["test_errors"]
    assert metrics["val_acc_bias_best"] == pytest.approx(100 * (1 - errors(*val, best)[0] / 3000), abs=1e-3)


@pytest.mark.slow  # ~6 s on 2 cores: a process that imports torch and trains; the run above is the same in-process
def test_no_3s_in_the_transfer_set_and_a_bias_shift_from_the_command_line(tmp_path):
    done = kdrun_cli([*QUICK, *shlex.split(COMMAND), "hydra.run.dir=run"], cwd=tmp_path,
                     env={"KDRUN_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    m = read_json(tmp_path / "run" / "metrics.json")
    check_run_metrics(m, m["teacher_source"], tmp_path / "cache")
    saved = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "transfer_exclude" in saved and "bias_shift" in saved
    assert "students train on" in (tmp_path / "run" / "kdrun.log").read_text()


def test_the_published_numbers_are_the_papers_counts():
    """Hinton et al. give errors (of 10,000 test images; of 1,010 test 3s) and error rates (%)."""
    from kdrun.results.paper import load_paper

    for row in load_paper("hinton_mnist_no3")["rows"]:
        errors_, of = row["test_errors"][0], row.get("of", 10000)
        assert row["values"][0] == pytest.approx(round(100 * (1 - errors_ / of), 2)), row["label"]
    for row in load_paper("hinton_mnist_78")["rows"][1:]:
        assert row["values"][0] == pytest.approx(100 - row["test_error_rate"][0]), row["label"]
    assert json.dumps(load_paper("hinton_mnist_78")["rows"][0]) == json.dumps(load_paper("hinton_mnist_no3")["rows"][0])


def test_the_presets_and_the_temperature_sweep():
    no3 = compose_config(["experiment=hinton_mnist_no3"])
    base = compose_config(["experiment=hinton_mnist"])
    assert list(no3.dataset.transfer_exclude) == [3] and OmegaConf.to_container(no3.eval.bias_shift) == {3: 3.5}
    only = compose_config(["experiment=hinton_mnist_78"])
    assert list(only.dataset.transfer_only) == [7, 8]
    assert OmegaConf.to_container(only.eval.bias_shift) == {7: -7.6, 8: -7.6}
    for cfg in (no3, only):  # hinton_mnist's recipe, teacher and T = 20
        for key in ("teacher", "student", "train", "method"):
            assert cfg[key] == base[key], key
        recipe = TeacherRecipe.from_config(cfg.teacher.train, "teacher.train")
        assert cache_key(cfg.teacher, cfg.dataset, recipe, 0) == cache_key(base.teacher, base.dataset, recipe, 0)
    params = compose_config(["sweep=hinton_temperature"], return_hydra_config=True).hydra.sweeper.params
    assert (params["experiment"], params["method"], params["student"]) == ("hinton_mnist", "kd", "mlp")
    assert params["student.hidden"] == "[30,30],[300,300]"
    temperatures = [float(t) for t in str(params["method.T"]).split(",")]
    assert {2.5, 3, 4} < set(temperatures) and max(temperatures) > 8 and min(temperatures) < 2.5
    job = compose_config(["experiment=hinton_mnist", "student=mlp", "student.hidden=[30,30]", "method.T=2.5"])
    assert (job.student.name, list(job.student.hidden), job.method.T, job.method.alpha) == ("mlp", [30, 30], 2.5, 0.9)
