"""Schedules: stage lists from config, init stages, teacher-assistant chains, born-again generations,
resuming a multi-stage run."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kdrun.schedules.runner as runner_module
from conftest import QUICK, compose_config, kdrun_cli, read_json
from inprocess import kdrun_in_process
from kdrun.data import build_dataset
from kdrun.errors import UserError
from kdrun.methods import METHODS
from kdrun.methods.kd import KD
from kdrun.models import build_model
from kdrun.results.metrics import RunRecord
from kdrun.schedules import build_stages
from kdrun.schedules.spec import expand
from kdrun.run import run


class MLPHint(KD):
    """A method with a real initialisation stage: the student's first hidden layer plus a linear
    regressor learn to predict the teacher's first hidden layer (L2); the main phase is KD."""

    has_init_stage = True

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.watch(["hidden.0"], ["hidden.0"])
        self.regressor = nn.Linear(student.hidden[0][0].out_features, teacher.hidden[0][0].out_features)

    def weights(self, epoch, phase="main"):
        return {"hint": 1.0} if phase == "init" else super().weights(epoch, phase)

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "hint" in needed:
            out["hint"] = F.mse_loss(self.regressor(batch.s_feats["hidden.0"]), batch.t_feats["hidden.0"])
        return out

    def init_parameters(self):
        return [*self.student.hidden[0].parameters(), *self.regressor.parameters()]


@pytest.fixture(autouse=True)
def mlp_hint_method():
    """The test method in the registry for this module's tests only."""
    METHODS.register("mlp_hint_test", MLPHint)
    yield
    METHODS.unregister("mlp_hint_test")

TWO_LAYERS = ["student.hidden=[16,12]"]
HINT = QUICK + TWO_LAYERS + ["method.name=mlp_hint_test"]


@pytest.fixture
def stage_snapshots(monkeypatch):
    """Record the method's state dict before and after every stage that trains."""
    snapshots = {}
    real_fit = runner_module.fit

    def tensors(distiller):
        return {k: v.clone() for k, v in distiller.state_dict().items() if isinstance(v, torch.Tensor)}

    def fit(distiller, *args, stage, **kwargs):
        before = tensors(distiller)
        result = real_fit(distiller, *args, stage=stage, **kwargs)
        snapshots[stage] = (before, tensors(distiller))
        return result

    monkeypatch.setattr(runner_module, "fit", fit)
    return snapshots


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in after if k not in before or not torch.equal(before[k], after[k])}


def test_for_each_expands_lists_and_counts():
    template = {"for_each": ["a", "b"], "name": "s{index}_{item}", "model": "{item}", "fresh": True}
    assert expand([{"name": "x"}, template], "w") == [
        {"name": "x"}, {"name": "s1_a", "model": "a", "fresh": True}, {"name": "s2_b", "model": "b", "fresh": True}]
    assert [e["name"] for e in expand([{"for_each": 3, "name": "g{item}"}], "w")] == ["g1", "g2", "g3"]
    assert expand([{"for_each": 0, "name": "g{item}"}], "w") == []
    with pytest.raises(UserError, match="only {item} and {index}"):
        expand([{"for_each": [1], "name": "g{generation}"}], "w")

    takd = build_stages(compose_config(QUICK + ["schedule=takd", "schedule.assistants=[mlp_1200,mlp_800]"]))
    assert [(s.name, s.model, s.teacher, s.cache) for s in takd] == [
        ("ta1_mlp_1200", "mlp_1200", "teacher", True), ("ta2_mlp_800", "mlp_800", "previous", True),
        ("student", "student", "previous", False)]
    ban = build_stages(compose_config(QUICK + ["schedule=ban", "schedule.generations=4", "schedule.gen.lr=0.01"]))
    assert [s.name for s in ban] == ["gen1", "gen2", "gen3", "gen4"]
    assert all(s.fresh and s.ensemble and s.train_recipe.lr == 0.01 for s in ban)
    assert ban[0].teacher == "teacher" and ban[1].teacher == "previous"
    fitnet = build_stages(compose_config(HINT + ["schedule=fitnet", "schedule.hint.epochs=3", "method.T=2"]))
    assert [(s.name, s.phase, s.train_recipe.epochs, s.method_cfg.name) for s in fitnet] == [
        ("hint", "init", 3, "mlp_hint_test"), ("kd", "main", 1, "kd")]
    assert fitnet[1].method_cfg.T == 2.0  # the KD stage uses the run's temperature


@pytest.mark.parametrize("overrides, message", [
    (["schedule=takd"], "schedule.assistants"),
    (["schedule=takd", "schedule.assistants=[nope]"], "Unknown model 'nope'"),
    (["schedule=fitnet", "method=kd"], "has none. Methods with an initialisation stage: ab, fitnet, fsp, ft"),
    (["schedule=ban", "schedule.gen.epochs=0"], "schedule.gen.epochs must be at least 1"),
    (["schedule=single", "+schedule.stages.0.teacher_of=x"], "Valid stage keys"),
    (["schedule=single", "schedule.stages.0.teacher=best"], "valid: teacher, previous, none"),
    (["schedule=single", "schedule.stages.0.teacher=none"], "needs a teacher"),
    (["schedule=single", "schedule.stages.0.recipe=nowhere"], "holds no config node"),
])
def test_schedule_mistakes_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        build_stages(compose_config(QUICK + overrides))


def test_init_stage_trains_only_guided_layer_and_regressor(tmp_path, stage_snapshots):
    metrics = run(compose_config(HINT + ["schedule=fitnet"]), tmp_path / "run")
    before, after = stage_snapshots["hint"]
    assert changed(before, after) == {"student.hidden.0.0.weight", "student.hidden.0.0.bias",
                                      "regressor.weight", "regressor.bias"}
    kd_before, kd_after = stage_snapshots["kd"]
    assert {"student.hidden.1.0.weight", "student.fc.weight", "student.hidden.0.0.weight"} <= changed(kd_before, kd_after)
    assert all(torch.equal(after[k], kd_before[k]) for k in kd_before)  # the KD stage starts where hint ended
    assert [h["stage"] for h in metrics["history"]] == ["hint", "kd"]
    assert set(metrics["history"][0]["losses"]) == {"hint"} and "kd" in metrics["history"][1]["losses"]
    assert [(s["name"], s["model"]) for s in metrics["stages"]] == [("hint", "mlp"), ("kd", "mlp")]
    assert metrics["stages"][0]["checkpoint"].endswith("checkpoints/hint.pt")
    assert metrics["test_acc"] == metrics["stages"][1]["test_acc"] == metrics["history"][-1]["test_acc"]


def test_init_then_train_keeps_the_method_and_its_helpers(tmp_path, stage_snapshots):
    metrics = run(compose_config(HINT + ["schedule=init_then_train"]), tmp_path / "run")
    assert [s["name"] for s in metrics["stages"]] == ["init", "mlp_hint_test"]
    _, after_init = stage_snapshots["init"]
    main_before, _ = stage_snapshots["mlp_hint_test"]
    assert "regressor.weight" in main_before  # the same method object: the trained regressor is kept
    assert all(torch.equal(after_init[k], main_before[k]) for k in after_init)


def test_takd_caches_assistants_by_chain_and_reuses_them(tmp_path, caplog):
    caplog.set_level("INFO", logger="kdrun")
    chain = QUICK + ["schedule=takd", "schedule.assistants=[mlp_800]"]
    first = run(compose_config(chain), tmp_path / "one")
    assert "Stage ta1_mlp_800: mlp_800 not in the teacher cache: training it" in caplog.text
    assert [(s["name"], s["model"]) for s in first["stages"]] == [("ta1_mlp_800", "mlp_800"), ("student", "mlp")]
    assert [h["stage"] for h in first["history"]] == ["ta1_mlp_800", "student"]
    caplog.clear()

    second = run(compose_config(chain + ["student.hidden=[8]"]), tmp_path / "two")  # another student
    assert "Teacher mlp reused from the teacher cache" in caplog.text
    assert "Stage ta1_mlp_800: mlp_800 reused from the teacher cache" in caplog.text
    assert "training it" not in caplog.text and "ta1_mlp_800 epoch" not in caplog.text
    assert second["stages"][0]["reused_from_cache"] is True
    assert second["stages"][0]["test_acc"] == first["stages"][0]["test_acc"]
    assert second["stages"][0]["checkpoint"] == first["stages"][0]["cached_at"]
    assert [h["stage"] for h in second["history"]] == ["student"]
    caplog.clear()

    run(compose_config(chain + ["teacher.train.lr=0.02"]), tmp_path / "three")  # another teacher: new chain
    assert "Stage ta1_mlp_800: mlp_800 not in the teacher cache: training it" in caplog.text


def test_ban_reports_each_generation_and_their_softmax_ensemble(tmp_path):
    cfg = compose_config(QUICK + ["schedule=ban", "schedule.generations=3"])
    metrics = run(cfg, tmp_path / "run")
    assert [s["name"] for s in metrics["stages"]] == ["gen1", "gen2", "gen3"] == metrics["ensemble"]
    assert [h["stage"] for h in metrics["history"]] == ["gen1", "gen2", "gen3"]
    assert metrics["test_acc"] == metrics["stages"][-1]["test_acc"]

    data = build_dataset(cfg.dataset, torch.device("cpu"))
    x = data.prepare(data.test.x, train=False)
    probs = []
    for gen in ("gen1", "gen2", "gen3"):
        state = torch.load(tmp_path / "run" / "checkpoints" / f"{gen}.pt", weights_only=True)["model"]
        model = build_model(cfg.student, data.info)
        model.load_state_dict({k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")})
        probs.append(F.softmax(model.eval()(x), dim=1))
    expected = 100.0 * ((probs[0] + probs[1] + probs[2]) / 3).argmax(1).eq(data.test.y).float().mean().item()
    assert metrics["ensemble_test_acc"] == pytest.approx(expected, abs=1e-3)
    assert metrics["stages"][0]["test_acc"] == pytest.approx(
        100.0 * probs[0].argmax(1).eq(data.test.y).float().mean().item(), abs=1e-3)


@pytest.mark.parametrize("schedule, stop_in", [
    (["schedule=ban", "schedule.generations=2"], "gen2"),
    (["schedule=takd", "schedule.assistants=[mlp_800]"], "student"),  # after the assistant was cached
])
def test_interrupted_multistage_run_resumes_at_its_stage_and_epoch(schedule, stop_in, tmp_path, monkeypatch, caplog):
    overrides = QUICK + schedule + ["train.epochs=2"]
    monkeypatch.setenv("KDRUN_CACHE_DIR", str(tmp_path / "reference_cache"))
    reference = run(compose_config(overrides), tmp_path / "reference")
    monkeypatch.setenv("KDRUN_CACHE_DIR", str(tmp_path / "cache"))

    real_add_epoch = RunRecord.add_epoch

    def stop(self, entry):
        real_add_epoch(self, entry)
        if entry["stage"] == stop_in and entry["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunRecord, "add_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config(overrides), tmp_path / "run")
    monkeypatch.setattr(RunRecord, "add_epoch", real_add_epoch)
    assert read_json(tmp_path / "run" / "metrics.json")["status"] == "running"

    caplog.set_level("INFO", logger="kdrun")
    resumed = run(compose_config(overrides), tmp_path / "run")
    first = reference["stages"][0]["name"]
    assert f"Stage {stop_in}: resuming from" in caplog.text and "after epoch 1" in caplog.text
    assert f"{first} epoch" not in caplog.text and "training it" not in caplog.text  # finished stages: loaded
    assert f"{stop_in} epoch 1/2" not in caplog.text and f"{stop_in} epoch 2/2" in caplog.text
    assert resumed["history"] == reference["history"]
    assert [(s["name"], s["test_acc"]) for s in resumed["stages"]] == [(s["name"], s["test_acc"]) for s in reference["stages"]]
    assert resumed.get("ensemble_test_acc") == reference.get("ensemble_test_acc")
    a = torch.load(tmp_path / "reference" / "student.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_ban_summary_and_takd_without_assistants(tmp_path, monkeypatch, capsys):
    proc = kdrun_cli(QUICK + ["schedule=ban", "schedule.generations=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ensemble of 2 (gen1, gen2)" in proc.stdout and "stage gen1" in proc.stdout

    code, out = kdrun_in_process(QUICK + ["schedule=takd"], tmp_path, monkeypatch, capsys)  # the same entry point
    assert code == 2 and "schedule.assistants" in out and "Traceback" not in out


WRN = [o for o in QUICK if not o.startswith(("teacher", "student"))] + [
    "teacher=wrn16_2", "student=wrn16_1", "teacher.train.epochs=1", "teacher.train.batch_size=32"]


def test_fitnet_hint_stage_changes_only_the_student_up_to_its_guided_layer_and_the_regressor(tmp_path, stage_snapshots):
    metrics = run(compose_config(WRN + ["schedule=fitnet"]), tmp_path / "run")  # method=fitnet by default
    assert metrics["method"] == "fitnet" and [s["name"] for s in metrics["stages"]] == ["hint", "kd"]
    before, after = stage_snapshots["hint"]
    hint_changes = changed(before, after)
    up_to_guided = ("student.conv1.", "student.block1.", "student.block2.", "regressors.")  # guided layer: block2
    assert hint_changes <= {k for k in after if k.startswith(up_to_guided)}
    assert {"student.conv1.weight", "student.block2.layer.1.conv2.weight", "student.block1.layer.0.bn1.running_mean",
            "regressors.0.0.weight"} <= hint_changes
    after_guided = [k for k in after if k.startswith(("student.block3.", "student.bn1.", "student.fc."))]
    assert any(k.endswith("running_mean") for k in after_guided)  # weights and batch-norm statistics alike
    assert not hint_changes & set(after_guided)
    kd_before, kd_after = stage_snapshots["kd"]
    assert {"student.fc.weight", "student.block3.layer.0.conv1.weight"} <= changed(kd_before, kd_after)
    assert set(metrics["history"][0]["losses"]) == {"fitnet_hint"} and "kd" in metrics["history"][-1]["losses"]


def test_fitnet_schedule_gives_ab_its_initialisation_stage(tmp_path, stage_snapshots):
    metrics = run(compose_config(WRN + ["schedule=fitnet", "method=ab"]), tmp_path / "run")
    assert metrics["method"] == "ab" and [h["stage"] for h in metrics["history"]] == ["hint", "kd"]
    before, after = stage_snapshots["hint"]
    assert not any(k.startswith("student.fc.") for k in changed(before, after))
