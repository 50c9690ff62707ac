"""Every bad input of the contract ends the run with a non-zero status, a message that names the problem
and the fix, and no Python traceback.

Most rows run the CLI in this process (`inprocess.kdrun_in_process`: same entry point, no interpreter
start-up); a few run it as a separate process, as a user would.
"""
import json
import re

import pytest
import torch
from omegaconf import OmegaConf

from conftest import QUICK, compose_config, group_options, kdrun_cli, read_json
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)
from kdrun.errors import UserError
from kdrun.models.mlp import MLP
from kdrun.training.recipe import Recipe
from kdrun.training.run import run


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    def call(*args):
        flags = [a for a in args if a.startswith("-")]
        overrides = [a for a in args if not a.startswith("-")]
        return kdrun_in_process([*flags, *QUICK, *overrides], tmp_path, monkeypatch, capsys)
    return call


def assert_refused(code, out, *needles, status=2):
    assert code == status, out
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in out, (needle, out)


# Unknown group names and unknown keys: Hydra's own messages, before kdrun runs.
@pytest.mark.parametrize("override,needles", [
    ("student=nope", ["Could not find 'student/nope'", "mlp_800"]),
    ("method=nope", ["Could not find 'method/nope'", "kd"]),
    ("method.Tx=3", ["Could not override 'method.Tx'", "Key 'Tx' is not in struct"]),
])
def test_unknown_names_and_keys_get_hydras_message(cli, override, needles):
    assert_refused(*cli(override), *needles, status=1)


def test_a_key_added_with_plus_that_no_config_has_is_refused(cli):
    assert_refused(*cli("+method.Tx=3"), "method.Tx is not a key", "T, alpha")


@pytest.mark.parametrize("override,needles", [
    ("train.epochs=abc", ["train.epochs=abc", "expected an integer"]),
    ("train.epochs=2.5", ["train.epochs=2.5", "expected an integer"]),
    ("method.T=abc", ["method.T=abc", "expected a number"]),
    ("seed=1.5", ["seed=1.5", "integer"]),
    ("student.hidden=[a]", ["student.hidden[0]=a", "expected an integer"]),
    ("train.nesterov=maybe", ["train.nesterov=maybe", "true or false"]),
    ("dataset.train_size=abc", ["dataset.train_size=abc"]),
    ("train.lr=inf", ["train.lr=inf", "finite"]),
    ("method.T=null", ["method.T=null", "expected a number"]),
    ("train.epochs=${nope}", ["cannot be resolved", "nope"]),
])
def test_wrong_types_name_the_key(cli, override, needles):
    assert_refused(*cli(override), *needles)


@pytest.mark.parametrize("override,needles", [
    ("method.T=-1", ["method.T", "positive"]),
    ("method.alpha=1.5", ["method.alpha", "[0, 1]"]),
    ("train.epochs=0", ["train.epochs must be at least 1"]),
    ("train.lr=-0.1", ["train.lr must be positive"]),
    ("dataset.train_size=-5", ["dataset.train_size"]),
    ("dataset.val_size=100000", ["dataset.val_size=100000", "leaves no training data"]),
    ("device=tpu", ["device=", "auto, cpu, cuda"]),
])
def test_impossible_values_are_refused_before_training(cli, tmp_path, override, needles):
    code, out = cli(override, f"hydra.run.dir={tmp_path / 'run'}")
    assert_refused(code, out, *needles)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training
    assert read_json(tmp_path / "run" / "metrics.json")["status"] == "failed"


@pytest.mark.parametrize("key,value,needle", [
    ("epochs", -2, "epochs must be at least 1"), ("batch_size", 0, "batch_size must be at least 1"),
    ("momentum", 1.0, "momentum must lie in [0, 1)"), ("weight_decay", -1e-4, "weight_decay must be 0 or more"),
    ("gamma", 0.0, "gamma must be positive"), ("milestones", [0], "milestones are epochs"),
    ("batch_size", "x", "batch_size=x: expected an integer"), ("lr", float("nan"), "lr=nan: expected a finite"),
    ("milestones", ["a"], "milestones=['a']: expected a list of epochs"), ("nesterov", "yes", "nesterov=yes: expected true or false"),
])
def test_every_recipe_key_refuses_impossible_values_and_wrong_types(key, value, needle):
    cfg = OmegaConf.merge(compose_config().teacher.train, {key: value})
    with pytest.raises(UserError, match=re.escape(f"teacher.train.{needle}")):
        Recipe.from_config(cfg, "teacher.train")


def save_mlp(path, num_classes=10, hidden=(32,), image_size=8):
    torch.save(MLP(num_classes, 3, (image_size, image_size), hidden=hidden).state_dict(), path)


@pytest.mark.parametrize("kind", ["architecture", "class count", "input size"])
def test_teacher_checkpoint_of_another_model_is_refused(cli, tmp_path, kind):
    path = tmp_path / "teacher.pt"
    save_mlp(path, **{"architecture": {"hidden": (64,)}, "class count": {"num_classes": 5},
                      "input size": {"image_size": 16}}[kind])
    assert_refused(*cli(f"teacher.checkpoint={path}"), f"teacher.checkpoint {path} does not fit teacher=mlp",
                   "size mismatch")


def test_teacher_checkpoint_that_fits_is_used(cli, tmp_path):
    path = tmp_path / "teacher.pt"
    save_mlp(path)
    code, out = cli(f"teacher.checkpoint={path}")
    assert code == 0, out
    assert f"loaded from {path}" in out


def test_missing_or_corrupt_teacher_checkpoint_is_refused(cli, tmp_path):
    missing = tmp_path / "nowhere.pt"
    assert_refused(*cli(f"teacher.checkpoint={missing}"), f"{missing} does not exist", "teacher.checkpoint=null")
    corrupt = tmp_path / "corrupt.pt"
    save_mlp(corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:100])  # a download that broke off
    assert_refused(*cli(f"teacher.checkpoint={corrupt}"), f"teacher checkpoint {corrupt} cannot be read")
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    assert_refused(*cli(f"teacher.checkpoint={text}"), f"{text} cannot be read")


@pytest.mark.parametrize("dataset", [d for d in ("mnist", "cifar10", "cifar100") if d in group_options("dataset")])
def test_missing_dataset_files_are_named_with_the_fix(tmp_path, monkeypatch, capsys, dataset):
    empty = tmp_path / "data"
    empty.mkdir()
    args = [f"dataset={dataset}", f"dataset.root={empty}", "dataset.download=false", "method=ce",
            "train.epochs=1", "progress=false"]
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert_refused(code, out, str(empty), "download")


def test_unwritable_output_directory_as_a_user_sees_it(tmp_path):
    blocker = tmp_path / "file.txt"  # a file where a directory should be: unwritable even for root
    blocker.write_text("")
    proc = kdrun_cli([*QUICK, f"hydra.run.dir={blocker}/run"], cwd=tmp_path)
    assert_refused(proc.returncode, proc.stdout + proc.stderr, f"{blocker}/run cannot be written", "hydra.run.dir=")


def test_unwritable_sweep_directory_and_cache(cli, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    assert_refused(*cli("-m", f"hydra.sweep.dir={blocker}/sweep", "method.T=2,4"),
                   f"{blocker}/sweep cannot be written", "hydra.sweep.dir=")
    assert_refused(*cli(f"cache_dir={blocker}/cache"), "cache_dir=", "is a file, not a directory")


def test_corrupt_checkpoint_on_resume_is_refused_by_name(cli, tmp_path):
    run_dir = tmp_path / "run"
    run(compose_config([*QUICK, "train.epochs=2"]), run_dir)
    metrics = read_json(run_dir / "metrics.json")
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "status": "interrupted"}))  # as if killed
    checkpoint = run_dir / "checkpoints" / "kd.pt"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(good[: len(good) // 2])
    assert_refused(*cli("train.epochs=2", f"hydra.run.dir={run_dir}"), f"{checkpoint} cannot be read",
                   "does not start over")
    assert checkpoint.stat().st_size == len(good) // 2  # left as it was for the user to look at
    torch.save({"epoch": 1}, checkpoint)  # a readable file, but not a checkpoint of this stage
    assert_refused(*cli("train.epochs=2", f"hydra.run.dir={run_dir}"), f"{checkpoint} does not belong")
    checkpoint.write_bytes(good)
    code, out = cli("train.epochs=2", f"hydra.run.dir={run_dir}")
    assert code == 0, out
    assert read_json(run_dir / "metrics.json")["status"] == "completed"


def test_another_configuration_in_the_same_directory_is_refused_and_left_alone(cli, tmp_path):
    run_dir = tmp_path / "run"
    run(compose_config(QUICK), run_dir)
    metrics = read_json(run_dir / "metrics.json")
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "status": "interrupted"}))
    assert_refused(*cli("method.T=2", f"hydra.run.dir={run_dir}"), "another configuration")
    assert read_json(run_dir / "metrics.json")["status"] == "interrupted"  # the other run's record is kept
