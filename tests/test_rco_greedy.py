"""RCO's greedy search of anchors (`schedule=rco schedule.strategy=greedy`, kdrun.schedules.greedy): the
hardness (KL of the teacher's outputs from the student's) and the choice it drives on hand-made numbers and
models, then whole runs: the route taken is the one recorded, a second run trains no teacher, and a run
stopped in the middle of its route resumes along the recorded route as if it had not stopped."""
import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from conftest import QUICK, compose_config, read_json
from inprocess import kdrun_in_process
from kdrun.data.base import Dataset, Split
from kdrun.errors import UserError
from kdrun.results.identity import config_identity
from kdrun.run import run
from kdrun.schedules import greedy as greedy_module
from kdrun.schedules.greedy import ROUTE_FILE, GreedyRoute, hardness, next_anchor
from kdrun.schedules.spec import Stage
from test_rco import teacher_trainings  # noqa: F401  (a fixture: counts the teacher trainings)

GREEDY = QUICK + ["teacher.train.epochs=4", "method=kd", "schedule=rco", "schedule.interval=1",
                  "schedule.strategy=greedy"]


def test_hardness_is_the_kl_of_the_teachers_outputs_from_the_students():
    teacher = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    student = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    by_hand = (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1) + 0.0) / 2  # the second example agrees
    assert hardness(teacher, student, 1.0) == pytest.approx(by_hand)
    assert hardness(teacher, teacher, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert hardness(teacher, student, 2.0) == pytest.approx(hardness(teacher / 2, student / 2, 1.0))
    assert hardness(student, teacher, 1.0) != pytest.approx(by_hand)  # KL(teacher || student), not the reverse


@pytest.mark.parametrize("later,delta,picked,why", [
    ([0.1, 0.3, 0.9, 0.2], 0.5, 1, "moves on while within delta; stops before the first harder one"),
    ([0.1, 0.3, 0.4, 0.45], 0.5, 3, "all within reach: the last candidate (the trained teacher)"),
    ([0.8, 0.9, 1.2], 0.5, 0, "even the next one is harder: the route still moves on, to it"),
    ([0.5, 0.6], 0.5, 0, "delta itself is within reach"),
    ([0.0, 0.0, 0.1], 0.0, 1, "delta 0: only candidates the student already matches exactly"),
])
def test_next_anchor(later, delta, picked, why):
    assert next_anchor(later, delta) == picked, why


def fake_runner(tmp_path, teachers, student):
    """A ScheduleRunner as GreedyRoute sees it: candidate teachers by epoch (None: the trained one)."""
    x = torch.arange(12, dtype=torch.float32).reshape(6, 1, 1, 2) / 10
    data = Dataset("hand", Split(x, torch.zeros(6, dtype=torch.long)), Split(x, torch.zeros(6, dtype=torch.long)),
                   None, 3, torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    runner = SimpleNamespace(
        cfg=OmegaConf.create({"schedule": {"greedy": {"delta": 0.05, "T": 1.0, "probe_size": 4}},
                              "teacher": {"train": {"epochs": 30}}}),
        run_dir=tmp_path, identity="id", data=data, seed=0, prepared={}, teacher=nn.Flatten(),
        instances={"student": (nn.Sequential(nn.Flatten(), student), None)}, loaded=[])

    def teacher_of_epoch(epoch):
        runner.loaded.append(epoch)
        runner.teacher = nn.Sequential(nn.Flatten(), teachers[epoch])

    runner.teacher_of_epoch = teacher_of_epoch
    return runner


def linear(scale: float) -> nn.Linear:
    """Logits scale * (x1 - x0, 0, x0 - x1)-like: the larger the scale, the sharper (harder) the outputs."""
    layer = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(scale * torch.tensor([[-1.0, 1.0], [0.0, 0.0], [1.0, -1.0]]))
    return layer


def test_the_route_takes_the_last_candidate_within_reach_and_records_why(tmp_path):
    """Candidates 10, 20 (as soft as the student), 25 (much sharper), then the trained teacher: from the
    student, 10 and 20 are within delta and 25 is not, so the next anchor is 20, and the record says so."""
    teachers = {10: linear(1.0), 20: linear(1.1), 25: linear(20.0), None: linear(1.2)}
    runner = fake_runner(tmp_path, teachers, linear(1.0))
    stages = [Stage(name=f"anchor{i}_e{e}", teacher_epoch=e) for i, e in enumerate((10, 20, 25), start=1)]
    stages.append(Stage(name="student"))
    route = GreedyRoute(runner, stages)
    assert route.choose(0, -1) == 1  # anchors[1]: epoch 20
    record = read_json(tmp_path / ROUTE_FILE)
    choice = record["choices"][0]
    assert (choice["after"], choice["anchor"], choice["stage"]) == (None, 20, "anchor2_e20")
    assert list(choice["hardness"]) == ["10", "20", "25", "30"]  # every later candidate, the trained teacher last
    h = choice["hardness"]
    assert h["10"] == pytest.approx(0.0, abs=1e-9) and 0 < h["20"] <= 0.05 < h["25"] and h["30"] <= 0.05
    assert runner.loaded == [10, 20, 25, None]
    # From anchor 20 on: 25 is still out of reach, so the route moves on to it (the next candidate) anyway.
    assert route.choose(1, 1) == 2
    # A route read back follows its record without measuring anything.
    runner.loaded.clear()
    again = GreedyRoute(runner, stages)
    assert again.choose(0, -1) == 1 and again.choose(1, 1) == 2 and runner.loaded == []


def choices(run_dir):
    return read_json(run_dir / ROUTE_FILE)["choices"]


def test_a_greedy_run_from_the_command_line_and_a_second_one_trains_no_teacher(tmp_path, monkeypatch, capsys,
                                                                               teacher_trainings):
    code, out = kdrun_in_process([*GREEDY, "schedule.greedy.delta=0.15", "hydra.run.dir=a"], tmp_path,
                                 monkeypatch, capsys)
    assert code == 0, out
    metrics, route = read_json(tmp_path / "a" / "metrics.json"), choices(tmp_path / "a")
    # The stages run are the anchors the search chose, in its order, then the student stage.
    assert [s["name"] for s in metrics["stages"]] == [c["stage"] for c in route]
    assert route[-1]["anchor"] == 4 and route[-1]["stage"] == "student"
    for c in route:  # each choice follows the rule from the hardness it recorded
        epochs = list(c["hardness"])
        assert epochs[next_anchor(list(c["hardness"].values()), 0.15)] == str(c["anchor"])
    assert {h["stage"] for h in metrics["history"]} == {s["name"] for s in metrics["stages"]}
    assert "Greedy search from the untrained student: KL(teacher || student) epoch 1" in out
    assert teacher_trainings == [None]

    # Every candidate is measured again, from the cache; a delta that reaches the trained teacher at once
    # leaves plain KD from it.
    code, out = kdrun_in_process([*GREEDY, "schedule.greedy.delta=1000", "hydra.run.dir=b"], tmp_path,
                                 monkeypatch, capsys)
    assert code == 0, out
    assert teacher_trainings == [None]
    assert [s["name"] for s in read_json(tmp_path / "b" / "metrics.json")["stages"]] == ["student"]
    assert list(choices(tmp_path / "b")[0]["hardness"]) == ["1", "2", "3", "4"]


def test_an_interrupted_greedy_route_resumes_along_its_record(tmp_path, monkeypatch):
    overrides = GREEDY + ["schedule.greedy.delta=0", "schedule.anchor.epochs=2"]
    reference = run(compose_config(overrides), tmp_path / "reference")
    route = choices(tmp_path / "reference")
    assert [c["stage"] for c in route] == ["anchor1_e1", "anchor2_e2", "anchor3_e3", "student"]  # delta 0: all

    from kdrun.results.metrics import RunRecord
    real = RunRecord.add_epoch

    def stop_in_the_second_anchor(self, entry):
        real(self, entry)
        if entry["stage"] == route[1]["stage"] and entry["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunRecord, "add_epoch", stop_in_the_second_anchor)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config(overrides), tmp_path / "run")
    monkeypatch.setattr(RunRecord, "add_epoch", real)
    assert [c["stage"] for c in choices(tmp_path / "run")] == [c["stage"] for c in route[:2]]

    measured = []
    real_next = greedy_module.next_anchor
    monkeypatch.setattr(greedy_module, "next_anchor", lambda h, d: measured.append(h) or real_next(h, d))
    resumed = run(compose_config(overrides), tmp_path / "run")
    assert len(measured) == 2  # the two recorded choices are read back, the last two measured
    assert choices(tmp_path / "run") == route
    assert [h["test_acc"] for h in resumed["history"]] == [h["test_acc"] for h in reference["history"]]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in reference["history"]]
    a, b = torch.load(tmp_path / "run" / "student.pt"), torch.load(tmp_path / "reference" / "student.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_record_of_another_configuration_is_not_followed(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ROUTE_FILE).write_text(json.dumps({"config_id": "another", "choices": [{"anchor": 3}]}))
    metrics = run(compose_config(GREEDY + ["schedule.greedy.delta=0"]), tmp_path / "r")
    assert [s["name"] for s in metrics["stages"]] == ["anchor1_e1", "anchor2_e2", "anchor3_e3", "student"]


def test_a_recorded_choice_that_is_no_candidate_is_refused(tmp_path):
    cfg = compose_config(GREEDY)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ROUTE_FILE).write_text(json.dumps({"config_id": config_identity(cfg),
                                                          "choices": [{"anchor": 7}]}))
    with pytest.raises(UserError, match=re.escape("records a choice ({'anchor': 7}) that is none of this route's "
                                                  "candidates after the start (teacher epochs 1, 2, 3, 4). Delete "
                                                  "the file")):
        run(cfg, tmp_path / "r")
    (tmp_path / "r" / ROUTE_FILE).unlink()  # as the message says: the run then chooses again
    assert run(cfg, tmp_path / "r")["status"] == "completed"


@pytest.mark.parametrize("overrides,needle", [
    (["schedule.greedy.delta=-1"], "schedule.greedy.delta=-1.0: expected a number of 0 or more"),
    (["schedule.greedy.T=0"], "schedule.greedy.T=0.0: expected a temperature above 0"),
    (["schedule.greedy.probe_size=0"], "schedule.greedy.probe_size=0: expected a number of training examples"),
    (["schedule.anchors=[3,1]"], "schedule.anchors=[3, 1]: schedule.strategy=greedy moves forward along the "
                                 "teacher's route, so its candidate anchors must be ascending epochs, each once. "
                                 "List them in that order, e.g. schedule.anchors=[1,3]."),
    (["schedule.anchors=[2,4]"], "schedule.anchors=[2, 4]: with schedule.strategy=greedy the trained teacher "
                                 "(epoch 4) is the route's last candidate already; list epochs before it."),
    (["method=ce"], "the method of stage(s) anchor1_e1 (ce), anchor2_e2 (ce), anchor3_e3 (ce) uses no teacher"),
])
def test_impossible_greedy_settings_are_refused_before_training(overrides, needle, tmp_path, teacher_trainings):
    with pytest.raises(UserError, match=re.escape(needle)):
        run(compose_config(GREEDY + overrides), tmp_path / "run")
    assert teacher_trainings == []


def test_the_advice_of_the_refusals_works(tmp_path):
    """The fixes the messages above give: sorted anchors, anchors before the last epoch, the equal strategy."""
    for fixed in (["schedule.anchors=[1,3]"], ["schedule.anchors=[2]"], ["method=ce", "schedule.strategy=equal"]):
        assert run(compose_config(GREEDY + fixed), tmp_path / "_".join(fixed))["status"] == "completed"


def test_the_greedy_keys_change_a_runs_identity_only_when_it_searches():
    rco = config_identity(compose_config(["schedule=rco"]))
    assert rco == "6442329b4d5b72bd"  # as kdrun computed it before the keys existed
    assert config_identity(compose_config(["schedule=rco", "schedule.anchors=[1,2]", "teacher.train.epochs=4"])) \
        == "b22c2f5474747859"
    assert config_identity(compose_config(["schedule=rco", "schedule.greedy.delta=5"])) == rco
    greedy = config_identity(compose_config(["schedule=rco", "schedule.strategy=greedy"]))
    assert greedy != rco
    assert config_identity(compose_config(["schedule=rco", "schedule.strategy=greedy",
                                           "schedule.greedy.delta=5"])) != greedy


def test_the_presets_teacher_keeps_every_candidate_of_both_rows():
    """experiment=rco_cifar100: the equal row's anchors (every 60 epochs) and the greedy row's candidates
    (every 20) are all kept by the teacher's first training, so no row trains the teacher again."""
    from kdrun.schedules import build_stages
    from kdrun.training.recipe import TeacherRecipe

    for overrides, candidates in ([], [60, 120, 180]), (["schedule.strategy=greedy", "schedule.interval=20"],
                                                         list(range(20, 240, 20))):
        cfg = compose_config(["experiment=rco_cifar100", *overrides])
        epochs = [s.teacher_epoch for s in build_stages(cfg) if s.teacher_epoch is not None]
        assert epochs == candidates
        assert set(epochs) <= set(TeacherRecipe.from_config(cfg.teacher.train, "teacher.train").kept_epochs())
