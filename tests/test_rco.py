"""The teacher's kept epochs (`teacher.train.keep_epochs`, `teacher.epoch`) and `schedule=rco`: which weights
the cache keeps, that they are the weights of that epoch, that a second run trains no teacher, and that
an interrupted route resumes as if it had not stopped."""
import re

import pytest
import torch

from conftest import QUICK, compose_config, compose_refusal
from kdrun.errors import UserError
from kdrun.run import run
from kdrun.training import teacher as teacher_module
from kdrun.training.teacher import cache_path, snapshot_path
from kdrun.training.recipe import TeacherRecipe

BASE = QUICK + ["teacher.train.epochs=4", "method=kd"]


@pytest.fixture
def teacher_trainings(monkeypatch):
    """Counts the teacher trainings (and the epochs each stopped after)."""
    calls = []
    real = teacher_module.train_teacher

    def counted(*args, **kwargs):
        calls.append(kwargs.get("stop_after"))
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "train_teacher", counted)
    return calls


def entry_of(cfg):
    return cache_path(cfg.cache_dir, cfg.teacher, cfg.dataset, TeacherRecipe.from_config(cfg.teacher.train), 0)


def test_kept_epochs_are_the_weights_of_that_epoch_and_a_second_run_trains_no_teacher(tmp_path, teacher_trainings):
    cfg = compose_config(BASE + ["teacher.train.keep_epochs=[2]", "teacher.train.keep_every=3"])
    run(cfg, tmp_path / "a")
    path = entry_of(cfg)
    assert teacher_trainings == [None] and path.exists()
    assert sorted(p.name.split(".")[-2] for p in path.parent.glob("*.e*.pt")) == ["e2", "e3"]
    kept = torch.load(snapshot_path(path, 2), weights_only=False)
    assert kept["epoch"] == 2 and kept["key"] == path.stem.rsplit("-", 1)[1]

    # The same teacher trained for 2 of its 4 epochs (same recipe and seed) has exactly those weights.
    from kdrun.data import build_dataset
    data = build_dataset(cfg.dataset, torch.device("cpu"))
    model, _ = teacher_module.train_teacher(cfg, data, TeacherRecipe.from_config(cfg.teacher.train), 0, False,
                                            tmp_path / "partial.pt", "k", stop_after=2)
    for name, value in model.state_dict().items():
        assert torch.equal(value, kept["state_dict"][name]), name

    metrics = run(compose_config(BASE + ["teacher.epoch=2"]), tmp_path / "b")
    assert len(teacher_trainings) == 2  # the one above, called by hand: the run trained none
    assert metrics["teacher_source"] == str(snapshot_path(path, 2))
    assert metrics["teacher_test_acc"] == kept["test_acc"]


def test_an_epoch_the_cache_did_not_keep_is_trained_up_to_it_only(tmp_path, teacher_trainings):
    run(compose_config(BASE), tmp_path / "a")
    cfg = compose_config(BASE + ["teacher.epoch=3"])
    metrics = run(cfg, tmp_path / "b")
    assert teacher_trainings == [None, 3]
    path = entry_of(cfg)
    assert metrics["teacher_source"] == str(snapshot_path(path, 3))
    assert not path.with_suffix(".partial.pt").exists()
    run(compose_config(BASE + ["teacher.epoch=3", "seed=0", "train.lr=0.01"]), tmp_path / "c")
    assert teacher_trainings == [None, 3]  # kept now


def test_teacher_epoch_changes_the_run_and_keep_epochs_does_not():
    from kdrun.results.identity import config_identity

    base = config_identity(compose_config(BASE))
    assert config_identity(compose_config(BASE + ["teacher.train.keep_epochs=[1,2]"])) == base
    assert config_identity(compose_config(BASE + ["teacher.epoch=2"])) != base


@pytest.mark.parametrize("overrides,needle", [
    (["teacher.epoch=9"], "teacher.epoch=9: the teacher trains for teacher.train.epochs=4 epochs"),
    (["teacher.epoch=2", "teacher.checkpoint=/nowhere.pt"], "teacher.checkpoint=null to train the teacher"),
    (["teacher.train.keep_epochs=[7]"], "teacher.train.keep_epochs=[7]: each is an epoch"),
    (["teacher.train.keep_every=0"], "teacher.train.keep_every=0: expected null or a number of epochs"),
    (["schedule=rco", "schedule.anchors=[6]"], "teacher_epoch=6: the teacher trains for teacher.train.epochs=4"),
    (["schedule=rco", "schedule.anchors=[0,2]"], "schedule.anchors=[0, 2]: each item is a stage's teacher_epoch, an "
                                                 "epoch (1 or more); 0 is not."),
    (["schedule=rco", "schedule.interval=0"], "schedule.interval=0: the step of a for_each range must be 1 or more."),
])
def test_impossible_epochs_are_refused_before_training(overrides, needle, tmp_path, teacher_trainings):
    with pytest.raises(UserError, match=re.escape(needle)):
        run(compose_config(BASE + overrides), tmp_path / "run")
    assert teacher_trainings == []


def test_teacher_epoch_must_be_an_integer():
    assert "teacher.epoch=half: expected an integer or null" in compose_refusal(BASE + ["teacher.epoch=half"])


def test_rco_distils_from_each_anchor_in_turn_and_a_second_run_trains_no_teacher(tmp_path, teacher_trainings):
    overrides = BASE + ["schedule=rco", "schedule.interval=2", "schedule.anchor.epochs=1"]
    metrics = run(compose_config(overrides), tmp_path / "a")
    assert [s["name"] for s in metrics["stages"]] == ["anchor1_e2", "student"]  # epoch 4 is the teacher itself
    assert teacher_trainings == [None]
    assert {h["stage"] for h in metrics["history"]} == {"anchor1_e2", "student"}
    metrics = run(compose_config(overrides + ["seed=0", "train.lr=0.02"]), tmp_path / "b")
    assert teacher_trainings == [None] and metrics["status"] == "completed"


def test_rco_anchors_by_name_and_the_stage_learns_from_that_epoch(tmp_path, monkeypatch):
    seen = []
    from kdrun.schedules import runner as runner_module
    real = runner_module.ScheduleRunner.teacher_of_epoch

    def spy(self, epoch):
        key = real(self, epoch)
        seen.append((epoch, next(iter(self.teacher.state_dict().values())).sum().item()))
        return key

    monkeypatch.setattr(runner_module.ScheduleRunner, "teacher_of_epoch", spy)
    cfg = compose_config(BASE + ["schedule=rco", "schedule.anchors=[1,3]", "schedule.anchor.epochs=1"])
    run(cfg, tmp_path / "run")
    path = entry_of(cfg)
    expected = [(1, torch.load(snapshot_path(path, 1), weights_only=False)),
                (3, torch.load(snapshot_path(path, 3), weights_only=False)),
                (None, torch.load(path, weights_only=False))]
    assert [e for e, _ in seen] == [1, 3, None]
    for (epoch, total), (_, entry) in zip(seen, expected):
        assert total == pytest.approx(next(iter(entry["state_dict"].values())).sum().item()), epoch


def test_an_interrupted_route_resumes_as_if_it_had_not_stopped(tmp_path, monkeypatch):
    overrides = BASE + ["schedule=rco", "schedule.anchors=[1,3]", "schedule.anchor.epochs=2", "train.epochs=2"]
    reference = run(compose_config(overrides), tmp_path / "reference")

    from kdrun.results.metrics import RunRecord
    real = RunRecord.add_epoch

    def stop_in_the_second_anchor(self, entry):
        real(self, entry)
        if entry["stage"] == "anchor2_e3" and entry["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunRecord, "add_epoch", stop_in_the_second_anchor)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config(overrides), tmp_path / "run")
    monkeypatch.setattr(RunRecord, "add_epoch", real)
    resumed = run(compose_config(overrides), tmp_path / "run")
    assert [h["test_acc"] for h in resumed["history"]] == [h["test_acc"] for h in reference["history"]]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in reference["history"]]
    a = torch.load(tmp_path / "run" / "student.pt")
    b = torch.load(tmp_path / "reference" / "student.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_entry_cached_before_teachers_were_seeded_is_trained_again_whole_for_an_epoch(tmp_path, teacher_trainings):
    """A cache entry of an earlier kdrun (no `seeded_init`): its route cannot be retraced up to an epoch, so
    the teacher is trained again, all its epochs, and the entry replaced."""
    cfg = compose_config(BASE)
    run(cfg, tmp_path / "a")
    path = entry_of(cfg)
    entry = torch.load(path, weights_only=False)
    assert entry["seeded_init"] is True
    del entry["seeded_init"]
    torch.save(entry, path)
    run(compose_config(BASE + ["teacher.epoch=2"]), tmp_path / "b")
    assert teacher_trainings == [None, None]  # whole, not up to epoch 2
    assert torch.load(path, weights_only=False)["seeded_init"] is True and snapshot_path(path, 2).exists()
