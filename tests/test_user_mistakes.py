"""Mistakes that ended in a traceback or went unnoticed (issue 17), each run through the real CLI (in this
process, `inprocess.kdrun_in_process`): exit status 2, no traceback, the message; and the advice each
message gives, followed, does what it says. Each follow-up run checks several pieces of advice at once
(and the small things a run prints), to keep the suite fast."""
import csv
import io
import os
import re
import shlex
import statistics
import subprocess

import pytest
import torch
from omegaconf import OmegaConf

import yaml

from conftest import QUICK, REPO, compose_config, read_json, run_dirs
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)
from kdrun.data import build_dataset
from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.methods import method_class
from kdrun.models import build_model, model_defaults
from kdrun.models.probe import smallest_side
from kdrun.results.report import main as report_main
from kdrun.training.checkpoint import save_json
from kdrun.training.lone_batch import failing_batch_norm, has_lone_batch, other_batch_size
from test_datasets import write_mnist
from test_report import base_config, write_run

README = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])  # and docs/


def with_base(args):
    """QUICK, less the keys of a model that the arguments choose another model for."""
    base = list(QUICK)
    for role in ("teacher", "student"):
        if any(a.startswith(f"{role}=") for a in args):
            base = [o for o in base if not o.startswith((f"{role}=", f"{role}."))]
    flags = [a for a in args if a.startswith("-")]
    return [*flags, *base, *[a for a in args if not a.startswith("-")]]


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    def call(*args):
        return kdrun_in_process(with_base(args), tmp_path, monkeypatch, capsys)
    return call


def assert_refused(code, out, *needles):
    assert code == 2, out
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in out, (needle, out)


def no_teacher_trained(tmp_path) -> bool:
    teachers = tmp_path / "cache" / "teachers"
    return not teachers.exists() or not list(teachers.glob("*.pt"))


# ------------------------------------------------------------------ model arguments, before any training

@pytest.mark.parametrize("args,needle", [
    (["student=mlp", "student.hidden=[-5]"], "student.hidden=[-5]: student=mlp takes a list of layer widths, each an integer of 1 or more"),
    (["student=mlp", "student.hidden=[0]"], "student.hidden=[0]: student=mlp takes a list of layer widths"),  # a dead network
    (["student=mlp", "student.dropout=1.5"], "student.dropout=1.5: student=mlp takes a dropout probability in [0, 1)"),
    (["student=wrn10_1", "student.drop_rate=2"], "student.drop_rate=2.0: student=wrn10_1 takes a dropout probability"),
])
def test_model_arguments_are_checked_before_any_training(cli, tmp_path, args, needle):
    assert_refused(*cli(*args), needle)
    assert no_teacher_trained(tmp_path)  # wrn's drop_rate used to fail in the student's first step


@pytest.mark.parametrize("name,key,value,needle", [
    ("wrn16_2", "depth", 12, "6n+4"), ("wrn16_2", "width", 0, "an integer of 1 or more"),
    ("resnet8", "depth", 9, "6n+2"), ("resnet8", "num_filters", [16, 16, 32], "a list of 4 channel counts"),
    ("resnet18", "block", "basc", "one of basic, bottleneck"), ("vgg8", "variant", "vgg9", "one of vgg8, vgg11"),
    ("mobilenetv2", "width_mult", 0.0, "0.0625 or more"), ("shufflenetv1", "groups", 0, "an integer of 1 or more"),
    ("shufflenetv2", "num_blocks", [3, 7], "a list of 3 block counts"), ("plain2", "variant", "x", "one of auto, cifar10"),
    ("maxout_cifar", "dropout", 1.0, "a dropout probability in [0, 1)"), ("fitnet1", "version", 5, "one of 1, 2, 3, 4"),
    ("mlp", "max_norm", 0.0, "a positive number or null"), ("mlp", "input_dropout", -0.1, "a dropout probability"),
    ("shufflenetv1", "groups", 5, "cannot be built with"),  # what torch's layers refuse, in a message
])
def test_every_zoo_model_checks_its_arguments(name, key, value, needle):
    cfg = OmegaConf.create({"name": name, **model_defaults(name), key: value})
    with pytest.raises(UserError, match=re.escape(needle)):
        build_model(cfg, DataInfo(3, (32, 32), 10))


def test_shape_arguments_are_the_datasets_and_the_advice_works(cli, tmp_path):
    assert_refused(*cli("+student.num_classes=100"), "student.num_classes=100: the dataset sets num_classes",
                   "Leave out +student.num_classes=...", "dataset=synthetic takes dataset.num_classes=N")
    assert_refused(*cli("+student.depth=3"), "student.depth=3: student=mlp takes no argument 'depth' (its "
                   "arguments: hidden, dropout")
    code, out = cli("dataset.num_classes=7", "train.epochs=1")  # the advice, followed
    assert code == 0, out


def test_a_model_that_cannot_take_the_image_size_is_refused_with_the_smallest_it_takes(cli, tmp_path):
    assert_refused(*cli("dataset.image_size=4", "student=vgg8"),
                   "student=vgg8 cannot take the dataset's 4x4 images: it needs images of at least 8x8 pixels",
                   "(with dataset=synthetic: dataset.image_size=8)")
    assert no_teacher_trained(tmp_path)
    assert_refused(*cli("dataset.image_size=4", "teacher=plain10"), "teacher=plain10 cannot take the dataset's 4x4",
                   "at least 16x16 pixels")


def test_the_smallest_image_side_is_found_by_probing():
    def build(name):
        return lambda info: build_model(OmegaConf.create({"name": name, **model_defaults(name)}), info)
    info = DataInfo(3, (2, 2), 10)
    assert smallest_side(build("vgg8"), info, 2) == 8  # 8 -> 4 -> 2 -> 1 through its three pools
    assert smallest_side(build("maxout_cifar"), info, 2) == 10
    assert smallest_side(build("mlp"), info, 2) == 3  # any size: the first one tried above 2


def test_following_the_image_size_and_class_count_advice_works(cli, tmp_path):
    run = tmp_path / "run"
    code, out = cli("dataset.image_size=8", "student=vgg8", "dataset.num_classes=100", "dataset.train_size=16",
                    "dataset.test_size=16", "train.batch_size=16", f"hydra.run.dir={run}")
    assert code == 0, out
    assert read_json(run / "metrics.json")["status"] == "completed"
    assert torch.load(run / "student.pt")["classifier.weight"].shape[0] == 100


# ------------------------------------------------------------------ a last batch of one example

@pytest.mark.parametrize("args,needles", [
    (["method=fitnet", "train.batch_size=1"],
     ["Stage fitnet cannot train in batches of 1 on its 64 training examples: every batch holds one example",
      "batch norm `regressors.0.1` of method fitnet", "Set train.batch_size=2"]),
    (["method=fitnet", "dataset.train_size=65"],
     ["the last batch holds one example (65 = 2 x 32 + 1)", "Set train.batch_size=31"]),
    (["teacher=vgg8", "dataset.train_size=65", "teacher.train.batch_size=64", "method=kd"],
     ["The teacher vgg8 cannot train in batches of 64", "batch norm `block3.1` of the teacher",
      "Set teacher.train.batch_size=63"]),
])
def test_a_batch_of_one_that_batch_norm_cannot_train_on_is_refused_before_training(cli, tmp_path, args, needles):
    assert_refused(*cli(*args), *needles)
    assert no_teacher_trained(tmp_path)


def test_following_the_batch_size_advice_works(cli, tmp_path):
    run = tmp_path / "run"
    code, out = cli("method=fitnet", "dataset.train_size=65", "train.batch_size=31", f"hydra.run.dir={run}")
    assert code == 0, out
    assert read_json(run / "metrics.json")["status"] == "completed"


def test_a_lone_last_batch_without_batch_norm_trains_as_before():
    """Only a batch norm that fails is refused: a model without one trains on a last batch of one (its
    batches and results are what they always were), and batches of 2 or more never get the check."""
    cfg = compose_config([*QUICK, "dataset.train_size=65"])
    data = build_dataset(cfg.dataset, torch.device("cpu"))
    student = build_model(cfg.student, data.info)
    distiller = method_class("kd")(student, build_model(cfg.teacher, data.info), cfg.method, data.info)
    assert has_lone_batch(65, 32) and has_lone_batch(64, 1) and not has_lone_batch(64, 32)
    assert failing_batch_norm(distiller, data) is None
    assert other_batch_size(65, 64) == 63 and other_batch_size(65, 1) == 3 and other_batch_size(3, 2) == 3


# ------------------------------------------------------------------ what Hydra's grammar cannot read

def shell_words(*arguments: str, home) -> list[str]:
    """What a shell passes to kdrun for these words (quotes removed, $HOME expanded)."""
    out = subprocess.run(["bash", "-c", "printf '%s\\0' " + " ".join(arguments)], capture_output=True, text=True,
                         env={**os.environ, "HOME": str(home)}, check=True).stdout
    return out.split("\0")[:-1]


def advice(out: str) -> str:
    return re.search(r"Write it as (.+?) \(the outer quotes", out).group(1)


def test_an_unquoted_home_or_non_ascii_path_gets_the_quoted_form_that_works(cli, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    write_mnist(home / "torchvision-data")
    runs = tmp_path / "données"
    code, out = cli("dataset=mnist", "dataset.root=~/torchvision-data")
    assert_refused(code, out, "dataset.root=~/torchvision-data: `~` cannot stand in an unquoted value",
                   """Write it as "dataset.root='$HOME/torchvision-data'" """.strip())
    quoted_root = advice(out)
    assert f"kdrun dataset=cifar100 {quoted_root}" in README  # the README shows the form that works
    code, out = cli(f"hydra.run.dir={runs}/run")
    assert_refused(code, out, "`é` cannot stand in an unquoted value")
    quoted_dir = advice(out)
    assert quoted_dir == f""""hydra.run.dir='{runs}/run'\""""
    # Following both pieces of advice (and the cache's: cache_dir=DIR), through the shell:
    args = ["dataset=mnist", "train.epochs=1", "teacher.train.epochs=1", "teacher=mlp", "teacher.hidden=[8]",
            "student=mlp", "student.hidden=[8]", "progress=false", f"cache_dir={tmp_path / 'shared'}",
            *shell_words(quoted_root, quoted_dir, home=home)]
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 0, out
    assert read_json(runs / "run" / "metrics.json")["status"] == "completed"
    config = yaml.safe_load((runs / "run" / ".hydra" / "config.yaml").read_text())
    assert config["dataset"]["root"] == str(home / "torchvision-data")
    assert list((tmp_path / "shared" / "teachers").glob("mlp-mnist-*.pt"))


@pytest.mark.parametrize("text,needle", [
    ("student.hidden=[16", "cannot be read by Hydra's override grammar"),  # not a matter of quotes: no advice to quote
    ("dataset.root=/x/it's", "Write it as 'dataset.root=\"/x/it'\"'\"'s\"'"),
])
def test_other_grammar_errors_are_named(cli, text, needle):
    code, out = cli(text)
    assert_refused(code, out, needle)


# ------------------------------------------------------------------ directories

def test_an_empty_run_directory_or_cache_is_refused(cli, tmp_path):
    assert_refused(*cli("hydra.run.dir="), "hydra.run.dir is empty (an unset $VARIABLE in the command?)",
                   "hydra.run.dir=DIR")
    assert_refused(*cli("-m", "hydra.sweep.dir=", "method.T=1,2"), "hydra.sweep.dir is empty")
    assert_refused(*cli("cache_dir="), "cache_dir is empty", "cache_dir=DIR")
    assert not [p for p in tmp_path.iterdir() if p.name != "cache"]  # nothing written where kdrun started


def test_a_cache_whose_folder_cannot_be_made_is_refused(cli, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "teachers").write_text("")  # a file where the cache's folder goes
    assert_refused(*cli(f"cache_dir={cache}"), f"The teacher cache cache_dir={cache} cannot be written",
                   f"{cache}/teachers is a file", "cache_dir=DIR")
    # The same after the check passed (the disk changed in between): the mkdir's failure, as a message.
    monkeypatch.setattr("kdrun.callbacks.cache_problem", lambda path: None)
    assert_refused(*cli(f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"),
                   "The teacher cache", "cannot be written", "cache_dir=DIR")


# ------------------------------------------------------------------ silent or unclear before

def test_progress_takes_only_its_values(cli):
    assert_refused(*cli("progress=maybe"), "progress=maybe: expected one of auto, true, false")


def test_a_sweep_preset_without_m_is_refused_and_the_m_form_works(cli, tmp_path, monkeypatch, capsys):
    code, out = cli("sweep=kd_grid", "method.T=2", "method.alpha=0.5")
    assert_refused(code, out, "sweep=kd_grid is a grid for a sweep: without -m kdrun would run one job",
                   "Run the sweep with -m: kdrun -m ")
    command = re.search(r"Run the sweep with -m: (kdrun -m .+?) \(kdrun --cfg hydra", out).group(1)
    argv = shlex.split(command)[1:]
    code, out = kdrun_in_process([*argv, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, monkeypatch, capsys)
    assert code == 0, out
    runs = run_dirs(tmp_path / "sweep")
    assert len(runs) == 1 and read_json(runs[0] / "metrics.json")["status"] == "completed"


def test_a_mistyped_launcher_key_is_named_and_the_right_one_is_taken(cli, tmp_path, monkeypatch, capsys):
    assert_refused(*cli("-m", "hydra/launcher=local_gpus", "hydra.launcher.cpu_job=2", "method.T=1,2"),
                   "hydra.launcher.cpu_job is not a key of this config (hydra.launcher has: _target_, gpus",
                   "Did you mean hydra.launcher.cpu_jobs?")
    assert_refused(*cli("hydra.launcher.cpu_jobs=2"), "It is a key of hydra/launcher=local_gpus")
    code, out = kdrun_in_process(["--cfg", "hydra", "hydra/launcher=local_gpus", "hydra.launcher.cpu_jobs=2"],
                                 tmp_path, monkeypatch, capsys)
    assert code == 0, out
    assert "cpu_jobs: 2" in out


def test_takds_assistants_are_a_key_of_its_schedule():
    cfg = compose_config(["schedule=takd", "schedule.assistants=[resnet20]"])  # a key left open (???) is a key
    assert list(cfg.schedule.assistants) == ["resnet20"]


@pytest.mark.parametrize("value,needle", [
    (0, "schedule.generations=0 leaves schedule=ban without stages"),
    (-2, "schedule.generations=-2: expected a count of 1 or more"),
])
def test_generations_below_one_are_named(cli, value, needle):
    assert_refused(*cli("schedule=ban", f"schedule.generations={value}"), needle)


def test_files_honour_the_umask_and_a_run_says_what_it_did(cli, tmp_path):
    """Under umask 002 (a group sharing KDRUN_CACHE_DIR) every file is group-writable; the log says
    `1 epoch`, the data's shape in words, and the run directory after the summary. Also follows the
    generations advice (schedule.generations=1)."""
    run = tmp_path / "run"
    old = os.umask(0o002)
    try:
        code, out = cli("schedule=ban", "schedule.generations=1", f"hydra.run.dir={run}")
    finally:
        os.umask(old)
    assert code == 0, out
    files = [run / "metrics.json", run / "student.pt", run / "checkpoints" / "gen1.pt",
             *(tmp_path / "cache" / "teachers").glob("*.pt")]
    assert len(files) == 4 and {oct(f.stat().st_mode & 0o777) for f in files} == {"0o664"}
    assert "training it (1 epoch)" in out and "Stage gen1: mlp, method kd, teacher mlp, 1 epoch." in out
    assert "Data synthetic: 64 train, 32 test; 3x8x8 images, 10 classes" in out and "DataInfo(" not in out
    assert out.rstrip().endswith(f"Run directory: {run}")
    old = os.umask(0o022)
    try:
        save_json(tmp_path / "x.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


def test_the_digits_split_is_what_the_readme_says():
    data = build_dataset(compose_config([]).dataset, torch.device("cpu"))
    assert (len(data.train), len(data.test)) == (1438, 359)
    assert "1438 / 359" in README and "1438 train / 359 test" in README


# ------------------------------------------------------------------ kdrun-report

def test_report_warns_about_an_unreadable_config_and_counts_seeds_not_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", ["seed=0"], base_config(), test_acc=90.0)
    write_run(sweep / "1", ["seed=0"], base_config(), test_acc=92.0)  # the same seed run twice
    write_run(sweep / "2", ["seed=1"], base_config(), test_acc=80.0)
    write_run(sweep / "3", ["seed=2"], base_config(), test_acc=70.0)
    (sweep / "3" / ".hydra" / "config.yaml").write_text("seed: [0\n")  # broken off
    capsys.readouterr()
    report_main(["sweep"])
    out = capsys.readouterr().out.replace("\n", "")
    assert "warning: sweep/3/.hydra/config.yaml cannot be read" in out
    assert "2 completed runs of seed 0 (sweep/0, sweep/1) count as one seed" in out
    rows = {r["runs"]: r for r in csv.DictReader(io.StringIO((sweep / "summary.csv").read_text()))}
    pooled = rows["0 1 2"]
    assert pooled["n"] == "2" and pooled["seeds"] == "0 0 1"  # seeds 0 and 1, not 3 runs
    assert float(pooled["test_acc_mean"]) == pytest.approx((91.0 + 80.0) / 2)  # seed 0 at its runs' mean
    assert float(pooled["test_acc_std"]) == pytest.approx(statistics.stdev([91.0, 80.0]), abs=1e-4)
    md = (sweep / "summary.md").read_text()
    assert "warning:" in md and "config.yaml cannot be read" in md
