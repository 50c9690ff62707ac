"""Born-again networks' ensembles of one run (Furlanello et al. 2018, Table 2): `ensemble{k}_test_acc` of the
first k members for every k (Ens*2, Ens*3), and `schedule.ensemble_teacher` (the teacher as the last member,
as the paper's DenseNet-80-120 Ens*3)."""
import pytest
import torch
import torch.nn.functional as F

from conftest import QUICK, compose_config
from kdrun.data import build_dataset
from kdrun.models import build_model
from kdrun.run import run
from kdrun.training.teacher import kept_weights


def probabilities(cfg, data, node, state):
    model = build_model(node, data.info)
    model.load_state_dict(state)
    with torch.no_grad():
        return F.softmax(model.eval()(data.prepare(data.test.x, train=False)), dim=1)


def accuracy(probs, data):
    return 100.0 * (sum(probs) / len(probs)).argmax(1).eq(data.test.y).float().mean().item()


def generation(tmp_path, name):
    state = torch.load(tmp_path / "run" / "checkpoints" / f"{name}.pt", weights_only=True)["model"]
    return {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}


@pytest.mark.parametrize("teacher_member", [False, True])
def test_each_prefix_of_the_generations_is_an_ensemble_of_the_run(tmp_path, teacher_member):
    overrides = QUICK + ["schedule=ban", f"schedule.generations={2 if teacher_member else 3}",
                         f"schedule.ensemble_teacher={str(teacher_member).lower()}"]
    cfg = compose_config(overrides)
    metrics = run(cfg, tmp_path / "run")
    data = build_dataset(cfg.dataset, torch.device("cpu"))
    probs = [probabilities(cfg, data, cfg.student, generation(tmp_path, g)) for g in ("gen1", "gen2")]
    if teacher_member:
        probs.append(probabilities(cfg, data, cfg.teacher, kept_weights(cfg, int(cfg.teacher.train.epochs))[0]))
        assert metrics["ensemble"] == ["gen1", "gen2", "teacher"]
    else:
        probs.append(probabilities(cfg, data, cfg.student, generation(tmp_path, "gen3")))
        assert metrics["ensemble"] == ["gen1", "gen2", "gen3"]
    assert metrics["ensemble2_test_acc"] == pytest.approx(accuracy(probs[:2], data), abs=1e-3)
    assert metrics["ensemble3_test_acc"] == pytest.approx(accuracy(probs, data), abs=1e-3)
    assert metrics["ensemble3_test_acc"] == metrics["ensemble_test_acc"]


def test_ensemble_teacher_needs_a_stage_that_uses_the_teacher(tmp_path):
    from kdrun.errors import UserError

    with pytest.raises(UserError, match="schedule.ensemble_teacher=true puts the run's teacher in the ensemble"):
        run(compose_config(QUICK + ["schedule=ban", "schedule.ensemble_teacher=true", "method=ce"]), tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoints").exists()  # refused before any training


def test_the_report_shows_the_ensembles_accuracy(tmp_path, capsys):
    from kdrun.results.report import main

    run(compose_config(QUICK + ["schedule=ban", "schedule.generations=2"]), tmp_path / "run")
    assert main([str(tmp_path), "--metric", "ensemble_test_acc"]) in (0, None)
    out = capsys.readouterr().out
    assert "ensemble" in out and "--metric ensemble_test_acc" not in out, out
