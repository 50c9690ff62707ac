"""Every bad input of the contract ends the run with a non-zero status, a message that names the problem
and the fix, and no Python traceback.

Each kind of mistake is run through the CLI: in this process (`inprocess.kdrun_in_process`: the same
entry point, no interpreter start-up) and, for the output directory, as a separate process. The many
values of each kind are checked on the functions the CLI calls, on a config composed once.
"""
import copy
import json
import re

import pytest
import torch
from omegaconf import OmegaConf

from conftest import QUICK, compose_config, compose_refusal, kdrun_cli, read_json
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)
from kdrun.data.augment import build_augment
from kdrun.errors import UserError
from kdrun.models.mlp import MLP
from kdrun.schema.keys import check_keys
from kdrun.training.recipe import Recipe, TeacherRecipe
from kdrun.run import run

_quick = []


def quick_config(**values):
    """QUICK composed once; `values` set by key path, as an override would (key paths with dots: **{...})."""
    if not _quick:
        _quick.append(compose_config(QUICK))
    cfg = copy.deepcopy(_quick[0])
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


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


def test_unknown_group_option_is_named_with_the_options(cli):
    assert_refused(*cli("student=nope"), "Unknown student option 'nope'", "Valid options (student=NAME)", "mlp_800")
    assert "Config search path" not in cli("student=nope")[1]


def test_a_mistyped_key_is_named_with_its_nodes_keys(cli):
    code, out = cli("method.Tx=3")
    assert_refused(code, out, "method.Tx is not a key of this config (method has: name, ce_weight, T, alpha",
                   "Did you mean method.T?")
    assert "not in struct" not in out and "+method.Tx" not in out  # not Hydra's advice to add it with +


@pytest.mark.parametrize("argv,needles", [
    (["train.epochz=3"], ["train.epochz is not a key", "Did you mean train.epochs?"]),
    (["tran.epochs=3"], ["tran.epochs is not a key", "the top level has: ", "Did you mean train.epochs?"]),
    (["student.foo=1"], ["student.foo is not a key", "added with +: +student.foo=VALUE"]),
    (["teacher.train.augment.translate=2"],
     ["teacher.train.augment is null, not a group of keys", "teacher.train.augment='{translate: 2}'"]),
    (["train.epochs.x=2"], ["train.epochs is a single value, not a group of keys", "train.epochs=VALUE"]),
    (["dataset=cifar10", "dataset.augment.translate=2"], ["+dataset.augment.translate=VALUE"]),
    (["experiment=crd_cifar100", "schedule.hint.epochs=2"],
     ["schedule.hint.epochs is not a key", "Did you mean schedule.init.epochs?"]),
    # -m: Hydra composes the sweep's config without its swept values first (method.beta on the default kd);
    # kdrun's sweeper composes every job before any starts, under every launcher
    (["-m", "method=fitnet,kd", "method.beta=3"], ["method.beta is not a key"]),
    (["-m", "sweep=crd_table", "method.T=4"], ["method.T is not a key", "(in job #0: method=ce pair=wrn40_2-wrn16_2)",
                                               "The sweep was not started."]),
    (["-m", "hydra/launcher=local_gpus", "method=kd,fitnet", "method.variant=cwtm"],
     ["method.variant is not a key", "in job #1: method=fitnet", "The sweep was not started."]),
])
def test_mistyped_keys(argv, needles, tmp_path, monkeypatch, capsys):
    mode = [] if "-m" in argv else ["--cfg", "job"]
    code, out = kdrun_in_process([*mode, *argv, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, monkeypatch,
                                 capsys)
    assert_refused(code, out, *needles)
    assert not list((tmp_path / "sweep").glob("*/"))  # no job started


@pytest.mark.parametrize("argv", [
    ["train.epochs=3", "seed=1", "method=fitnet", "method.beta=2", "train.milestones.0=3"],
    ["experiment=ab_cifar10", "schedule.hint.epochs=2", "teacher.train.augment={translate:2}"],
    ["schedule=takd", "teacher=resnet56", "schedule.assistants=[resnet20]", "student=resnet8"],
    ["method=nst", "method.degree=2.5"],
])
def test_valid_keys_compose(argv, tmp_path, monkeypatch, capsys):
    code, out = kdrun_in_process(["--cfg", "job", *argv], tmp_path, monkeypatch, capsys)
    assert code == 0, out


@pytest.mark.parametrize("overrides", [
    ["sweep=kd_grid", "method.T=2", "hydra/launcher=local_gpus", "hydra.sweep.dir=x"],
    ["method=ab", "method.beta=3"],
])
def test_a_sweeps_job_composes(overrides):
    check_keys(compose_config(overrides))


def test_two_modes_at_once_are_refused_without_a_traceback(cli):
    assert_refused(*cli("-m", "--cfg=job", "method.T=1,2"), "-m and --cfg cannot be given together",
                   "kdrun --cfg job method.T=4")


def test_a_key_added_with_plus_that_no_config_has_is_refused(cli):
    assert_refused(*cli("+method.Tx=3"), "method.Tx is not a key", "T, alpha")


def test_an_augmentation_the_dataset_does_not_list_is_added_with_plus_and_judged_by_the_augmentation():
    cifar = [o for o in QUICK if not o.startswith("dataset")] + ["dataset=cifar10"]
    cfg = compose_config([*cifar, "+dataset.augment.translate=2"])
    check_keys(cfg)
    assert build_augment(cfg.dataset.augment).translate == 2
    cfg = compose_config([*cifar, "+dataset.augment.translat=2"])
    check_keys(cfg)
    with pytest.raises(UserError, match="Unknown dataset.augment key.s. translat; valid keys: crop_padding"):
        build_augment(cfg.dataset.augment)


def test_wrong_type_through_the_cli(cli):
    assert_refused(*cli("train.epochs=abc"), "train.epochs=abc: expected an integer (the default is 30)")


@pytest.mark.parametrize("key,value,needle", [
    ("train.epochs", "abc", "train.epochs=abc: expected an integer (the default is 30)"),
    ("train.epochs", "2.5", "train.epochs=2.5: expected an integer"),
    ("teacher.train.batch_size", "x", "teacher.train.batch_size=x: expected an integer"),
    ("method.T", "abc", "method.T=abc: expected a number"),
    ("method.T", "null", "method.T=null: expected a number"),
    ("method.alpha", "[1]", "method.alpha=[1]: expected a number"),
    ("seed", "1.5", "seed=1.5: expected an integer"),
    ("student.hidden", "abc", "student.hidden=abc: expected a list of integers"),
    ("student.hidden", "[a]", "student.hidden[0]=a: expected an integer"),
    ("train.nesterov", "maybe", "train.nesterov=maybe: expected true or false"),
    ("train.milestones", "5", "train.milestones=5: expected a list of integers"),
    ("train.optimizer", "adam", "train.optimizer=adam: expected one of sgd, rmsprop (the default is sgd)"),
    ("dataset.train_size", "abc", "dataset.train_size=abc: expected an integer or null"),
    ("dataset.noise", "true", "dataset.noise=true: expected a number"),
    ("method.alpha_anneal", "banana", "method.alpha_anneal=banana: expected a list of numbers"),
    ("teacher.checkpoint", "[1,2]", "teacher.checkpoint=[1,2]: expected a string or null"),
])
def test_wrong_types_name_the_key(key, value, needle):
    assert needle in compose_refusal([*QUICK, f"{key}={value}"])


def test_a_broken_interpolation_is_named(cli):
    assert_refused(*cli("train.epochs=${nope}"), "cannot be resolved", "Interpolation key 'nope' not found")


def test_null_where_it_means_something_and_right_types_pass():
    cfg = compose_config([*QUICK, "method.ce_weight=0.5", "dataset.train_size=null", "train.lr=1",
                          "train.milestones=null", "student.hidden=[8,8]"])
    check_keys(cfg)
    recipe = Recipe.from_config(cfg.train)
    assert (recipe.lr, recipe.milestones) == (1.0, ())
    assert (cfg.method.ce_weight, cfg.dataset.train_size, list(cfg.student.hidden)) == (0.5, None, [8, 8])


def test_impossible_value_through_the_cli(cli, tmp_path):
    code, out = cli("method.alpha=1.5", f"hydra.run.dir={tmp_path / 'run'}")
    assert_refused(code, out, "method.alpha weights the soft-target term and must lie in [0, 1], got 1.5")
    assert read_json(tmp_path / "run" / "metrics.json")["status"] == "failed"


@pytest.mark.parametrize("key,value,needle", [
    ("method.T", -1.0, "method.T (temperature) must be positive"),
    ("method.T", 0.0, "method.T (temperature) must be positive"),
    ("method.alpha", -0.1, "method.alpha weights the soft-target term and must lie in [0, 1]"),
    ("train.epochs", 0, "train.epochs must be at least 1"),
    ("teacher.train.epochs", -2, "teacher.train.epochs must be at least 1"),
    ("train.lr", -0.1, "train.lr must be positive"),
    ("train.batch_size", 0, "train.batch_size must be at least 1"),
    ("dataset.train_size", -5, "dataset.train_size must be a positive number or null"),
    ("dataset.test_size", 0, "dataset.test_size must be a positive number or null"),
    ("dataset.val_size", -1, "dataset.val_size must be 0 or more"),
    ("dataset.val_size", 100000, "dataset.val_size=100000 leaves no training data"),
    ("dataset.num_classes", 1, "dataset.num_classes must be at least 2"),
    ("device", "tpu", "Use auto, cpu, cuda or cuda:N"),
    ("train.lr", float("inf"), "train.lr=inf: expected a finite number"),
])
def test_impossible_values_are_refused_before_training(tmp_path, key, value, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        run(quick_config(**{key: value}), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("key,value,needle", [
    ("epochs", -2, "epochs must be at least 1"), ("batch_size", 0, "batch_size must be at least 1"),
    ("momentum", 1.0, "momentum must lie in [0, 1)"), ("weight_decay", -1e-4, "weight_decay must be 0 or more"),
    ("gamma", 0.0, "gamma must be positive"), ("milestones", [0], "milestones are epochs"),
    ("batch_size", "x", "batch_size=x: expected an integer"), ("lr", float("nan"), "lr=nan: expected a finite"),
    ("milestones", ["a"], "milestones[0]=a: expected an integer"),
    ("nesterov", "maybe", "nesterov=maybe: expected true or false"),
])
def test_every_recipe_key_refuses_impossible_values_and_wrong_types(key, value, needle):
    """A recipe node that the schema did not type as it composed (a user's own schedule's) is typed here."""
    cfg = OmegaConf.create({**OmegaConf.to_container(quick_config().teacher.train, resolve=True), key: value})
    with pytest.raises(UserError, match=re.escape(f"teacher.train.{needle}")):
        TeacherRecipe.from_config(cfg, "teacher.train")


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


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "cifar100"])
def test_missing_dataset_files_are_named_with_the_fix(tmp_path, monkeypatch, capsys, dataset):
    empty = tmp_path / "data"
    empty.mkdir()
    args = [f"dataset={dataset}", f"dataset.root={empty}", "dataset.download=false", "method=ce",
            "train.epochs=1", "progress=false"]
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert_refused(code, out, str(empty), "download")


@pytest.mark.parametrize("dataset,folder,names", [
    ("mnist", "MNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                            "t10k-labels-idx1-ubyte"]),
    ("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
])
def test_corrupt_dataset_files_are_named(tmp_path, monkeypatch, capsys, dataset, folder, names):
    files = tmp_path / "data" / folder
    files.mkdir(parents=True)
    for name in names:
        (files / name).write_bytes(b"\x00\x01 not what it should be" * 4)
    args = [f"dataset={dataset}", f"dataset.root={tmp_path / 'data'}", "method=ce", "train.epochs=1", "progress=false"]
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert_refused(code, out, str(files / names[0]), "Replace it")


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
    assert_refused(*cli("train.epochs=2", f"hydra.run.dir={run_dir}"), f"{checkpoint} of stage 'kd' carries no "
                   f"config_id", f"Delete {checkpoint} to train stage 'kd' from its start")
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
