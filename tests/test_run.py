"""Short runs end to end: metrics.json per the contract, the teacher cache, the CLI."""
import json

import torch

from conftest import QUICK, compose_config, kdrun_cli, read_json, run_dirs
from inprocess import kdrun_in_process
from kdrun.run import run
from kdrun.training.teacher import cache_key
from kdrun.training.recipe import Recipe

CONTRACT_KEYS = {"status", "test_acc", "teacher_test_acc", "dataset", "teacher", "student", "method",
                 "schedule", "epochs", "wall_time_s", "train_images_per_s", "history"}


def test_short_synthetic_run_writes_valid_metrics(tmp_path):
    cfg = compose_config(QUICK + ["train.epochs=2"])
    metrics = run(cfg, tmp_path / "run")
    on_disk = read_json(tmp_path / "run" / "metrics.json")
    assert on_disk == json.loads(json.dumps(metrics))
    assert CONTRACT_KEYS <= set(on_disk)
    assert on_disk["status"] == "completed"
    assert 0 <= on_disk["test_acc"] <= 100 and 0 <= on_disk["teacher_test_acc"] <= 100
    assert (on_disk["dataset"], on_disk["method"], on_disk["schedule"], on_disk["epochs"]) == ("synthetic", "kd", "single", 2)
    assert [h["epoch"] for h in on_disk["history"]] == [1, 2]
    assert all(h["stage"] == "kd" and {"train_loss", "test_acc"} <= set(h) for h in on_disk["history"])
    assert on_disk["history"][-1]["test_acc"] == on_disk["test_acc"]
    assert on_disk["train_images_per_s"] > 0 and on_disk["wall_time_s"] > 0
    weights = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    assert any(k.startswith("fc") for k in weights)


def test_same_seed_same_result_on_cpu(tmp_path):
    a = run(compose_config(QUICK + ["device=cpu"]), tmp_path / "a")
    b = run(compose_config(QUICK + ["device=cpu"]), tmp_path / "b")
    assert a["history"] == b["history"]
    wa = torch.load(tmp_path / "a" / "student.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "student.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_teacher_cache_miss_then_hit_and_key_changes(tmp_path, caplog):
    caplog.set_level("INFO", logger="kdrun")
    first = run(compose_config(QUICK), tmp_path / "one")
    assert "not in the cache: training it" in caplog.text
    caplog.clear()
    second = run(compose_config(QUICK + ["method.T=2"]), tmp_path / "two")
    assert "reused from the teacher cache" in caplog.text and "training it" not in caplog.text
    assert first["teacher_test_acc"] == second["teacher_test_acc"]
    caplog.clear()
    run(compose_config(QUICK + ["teacher.train.lr=0.02"]), tmp_path / "three")  # another recipe: retrain
    assert "not in the cache: training it" in caplog.text

    base = compose_config(QUICK)
    key = cache_key(base.teacher, base.dataset, Recipe.from_config(base.teacher.train), 0)
    assert key == cache_key(base.teacher, base.dataset, Recipe.from_config(base.teacher.train), 0)
    assert key != cache_key(base.teacher, base.dataset, Recipe.from_config(base.teacher.train), 1)
    other = compose_config(QUICK + ["dataset.train_size=48"])
    assert key != cache_key(other.teacher, other.dataset, Recipe.from_config(other.teacher.train), 0)
    wider = compose_config(QUICK + ["teacher.hidden=[40]"])
    assert key != cache_key(wider.teacher, wider.dataset, Recipe.from_config(wider.teacher.train), 0)


def test_method_ce_needs_no_teacher(tmp_path, caplog):
    caplog.set_level("INFO", logger="kdrun")
    metrics = run(compose_config(QUICK + ["method=ce"]), tmp_path / "ce")
    assert metrics["teacher_test_acc"] is None and metrics["teacher"] is None
    assert "Teacher" not in caplog.text


def test_completed_run_is_skipped_when_rerun(tmp_path, caplog):
    caplog.set_level("INFO", logger="kdrun")
    first = run(compose_config(QUICK), tmp_path / "r")
    caplog.clear()
    again = run(compose_config(QUICK), tmp_path / "r")
    assert "already completed" in caplog.text
    assert again["history"] == first["history"]


def test_cli_default_style_run_and_user_errors(tmp_path, monkeypatch, capsys):
    proc = kdrun_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test acc" in proc.stdout
    (run_dir,) = run_dirs(tmp_path / "outputs")
    assert run_dir.relative_to(tmp_path).parts[0] == "outputs"
    assert (run_dir / "kdrun.log").exists() and (run_dir / ".hydra" / "config.yaml").exists()
    assert read_json(run_dir / "metrics.json")["status"] == "completed"

    # the same entry point, in this process (a second of interpreter start-up less each)
    code, out = kdrun_in_process(["student=nope"], tmp_path, monkeypatch, capsys)
    assert code != 0
    assert "Unknown student option 'nope'" in out and "mlp_800" in out and "Traceback" not in out

    code, out = kdrun_in_process(QUICK + ["method.T=-1"], tmp_path, monkeypatch, capsys)
    assert code == 2
    assert "method.T" in out and "Traceback" not in out


def test_the_cli_starts_without_importing_torchvision():
    """torchvision's import (its ops pull in torch._dynamo) cost every kdrun command 1.5-2 s: the tv_* models
    and the image-folder pipeline import it when they are used."""
    import subprocess
    import sys

    code = "import sys, kdrun.cli, kdrun.run; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
