"""Nothing is lost when a run is stopped: SIGKILL or SIGTERM in the middle of an epoch, Ctrl-C, a
diverging loss. Rerunning the same command into the same directory resumes from the last completed
epoch and ends with exactly the weights of a run that was never stopped (CPU, fixed seed).

The student is `faulty_student.FaultyMLP` (an MLP that stops inside a chosen training step) so that
the signal lands in the middle of epoch 2 at a known step, without relying on timing.
"""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, read_json
from kdrun.errors import UserError
from kdrun.training.checkpoint import atomic_write, save_torch
from kdrun.training.signals import RunInterrupted, interrupts_raise
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)

STEPS_PER_EPOCH = 8
MID_EPOCH_2 = STEPS_PER_EPOCH + 3
RUN = ["dataset=synthetic", "dataset.train_size=256", "dataset.test_size=64", "dataset.image_size=8",
       "train.epochs=3", "train.batch_size=32", "train.milestones=[2]", "teacher.train.epochs=1",
       "teacher=mlp", "teacher.hidden=[32]", "student=mlp", "student.hidden=[16]", "student.dropout=0.2",
       "+student._target_=faulty_student.FaultyMLP", "progress=false", "device=cpu", "seed=3"]


_reference: dict = {}


@pytest.fixture
def reference(tmp_path_factory, monkeypatch, capsys):
    """A run that is never stopped (made once per module), and the environment every run here shares:
    one teacher cache, and `tests/` on the path of subprocesses for the faulty student."""
    if not _reference:
        root = tmp_path_factory.mktemp("resume")
        env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
               "KDRUN_CACHE_DIR": str(root / "cache")}
        monkeypatch.setenv("KDRUN_CACHE_DIR", env["KDRUN_CACHE_DIR"])
        code, out = kdrun_in_process([*RUN, f"hydra.run.dir={root / 'reference'}"], root, monkeypatch, capsys)
        assert code == 0, out
        _reference.update(dir=root / "reference", env=env)
    monkeypatch.setenv("KDRUN_CACHE_DIR", _reference["env"]["KDRUN_CACHE_DIR"])
    return _reference


def start_paused(reference, tmp_path, run=tuple(RUN)):
    """The reference command (or `run`) into tmp_path/run, in a child process that waits in the middle of epoch 2."""
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    args, env = [*run, f"hydra.run.dir={run_dir}"], {**reference["env"], "KDRUN_TEST_PAUSE": f"{MID_EPOCH_2}:{marker}"}
    proc = subprocess.Popen([sys.executable, "-m", "kdrun", *args], cwd=tmp_path, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_pause(marker, proc)
    return run_dir, args, proc


def wait_for_pause(marker, proc) -> None:
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the pause:\n{proc.communicate()[0]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never reached the pause:\n{proc.communicate()[0]}")
        time.sleep(0.05)


def checkpoint_epoch(run_dir) -> int:
    return torch.load(run_dir / "checkpoints" / "kd.pt", weights_only=True)["epoch"]


def assert_same_as_reference(run_dir, reference_dir):
    done, ref = read_json(run_dir / "metrics.json"), read_json(reference_dir / "metrics.json")
    assert done["status"] == "completed"
    assert done["test_acc"] == ref["test_acc"]
    assert done["history"] == ref["history"]
    weights = torch.load(run_dir / "student.pt", weights_only=True)
    expected = torch.load(reference_dir / "student.pt", weights_only=True)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)  # bit for bit


def test_sigkill_in_the_middle_of_an_epoch_then_the_same_command_resumes_exactly(reference, tmp_path, monkeypatch,
                                                                                   capsys):
    run_dir, args, proc = start_paused(reference, tmp_path)
    assert checkpoint_epoch(run_dir) == 1  # epoch 1 is saved, epoch 2 is under way
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert read_json(run_dir / "metrics.json")["status"] == "running"  # nobody could record anything

    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)  # the same command, in this process
    assert code == 0, out
    assert f"resuming from {run_dir / 'checkpoints' / 'kd.pt'} after epoch 1" in out
    assert_same_as_reference(run_dir, reference["dir"])


def test_sigterm_records_interrupted_and_a_corrupt_checkpoint_is_refused_on_resume(reference, tmp_path, monkeypatch,
                                                                                   capsys):
    run_dir, args, proc = start_paused(reference, tmp_path)
    proc.send_signal(signal.SIGTERM)  # what SLURM sends before pre-emption
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out
    assert "interrupted by SIGTERM" in out and f"hydra.run.dir={run_dir}" in out and "Traceback" not in out
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["status"] == "interrupted" and metrics["error"] == "interrupted by SIGTERM"
    assert [h["epoch"] for h in metrics["history"]] == [1]
    assert checkpoint_epoch(run_dir) == 1

    checkpoint = run_dir / "checkpoints" / "kd.pt"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(good[:1000])  # e.g. a disk that filled up under another program
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)  # the same command, in this process
    assert code == 2 and "Traceback" not in out, out
    assert f"{checkpoint} cannot be read" in out
    assert checkpoint.read_bytes() == good[:1000]  # never silently replaced by a fresh start

    checkpoint.write_bytes(good)
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 0, out
    assert_same_as_reference(run_dir, reference["dir"])


def test_ctrl_c_records_interrupted_and_exits_130(reference, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDRUN_TEST_PAUSE", f"{MID_EPOCH_2}:{tmp_path / 'paused'}:SIGINT")
    code, out = kdrun_in_process([*RUN, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, monkeypatch, capsys)
    assert code == 130, out
    assert "interrupted by SIGINT" in out and "Traceback" not in out
    assert read_json(tmp_path / "run" / "metrics.json")["status"] == "interrupted"
    assert checkpoint_epoch(tmp_path / "run") == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back


def test_a_loss_that_becomes_nan_fails_with_epoch_step_and_hint_and_keeps_the_last_good_checkpoint(
        reference, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDRUN_TEST_NAN_STEP", str(MID_EPOCH_2))
    run_dir = tmp_path / "run"
    code, out = kdrun_in_process([*RUN, f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch, capsys)
    assert code == 2, out
    assert "Traceback" not in out
    assert "Stage kd: the training loss became nan at step 3 of 8 in epoch 2" in out
    assert "checkpoint of epoch 1 is kept" in out and "Lower the learning rate (now 0.05)" in out
    assert "method.T=4.0" in out and "method.alpha=0.9" in out
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["status"] == "failed" and "nan at step 3 of 8 in epoch 2" in metrics["error"]
    assert metrics["diverged"] == {"stage": "kd", "epoch": 2, "step": 3, "loss": "nan", "lr": 0.05}
    assert [h["epoch"] for h in metrics["history"]] == [1]
    assert checkpoint_epoch(run_dir) == 1  # the diverged epoch never overwrote the last good checkpoint


def test_a_huge_learning_rate_fails_cleanly_in_the_first_epoch(tmp_path, monkeypatch, capsys):
    args = [*RUN, "method=ce", "train.lr=1e30", f"hydra.run.dir={tmp_path / 'run'}"]
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in out, out
    assert "the training loss became nan at step 2 of 8 in epoch 1" in out and "no epoch had completed" in out
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["status"] == "failed" and metrics["diverged"]["step"] == 2
    assert not (tmp_path / "run" / "checkpoints" / "ce.pt").exists()


def test_a_write_cut_off_by_a_kill_or_a_full_disk_leaves_the_old_file(tmp_path):
    path = tmp_path / "checkpoints" / "kd.pt"
    save_torch(path, {"epoch": 1})

    def full_disk(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    def interrupted(f):
        f.write(b"partial")
        raise RunInterrupted(signal.SIGTERM)

    with pytest.raises(UserError, match=f"Cannot write {path} \\(No space left on device\\)"):
        atomic_write(path, full_disk)
    with pytest.raises(RunInterrupted):
        atomic_write(path, interrupted)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in path.parent.iterdir()] == ["kd.pt"]  # no temporary files left behind


def test_signal_handlers_are_installed_for_the_run_only_and_submitit_keeps_sigterm(monkeypatch):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with interrupts_raise():
        with pytest.raises(RunInterrupted) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises as soon as the signal arrives
        assert stopped.value.exit_code == 143 and stopped.value.signal_name == "SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # inside a submitit job: its own SIGTERM handling stays
    with interrupts_raise():
        assert signal.getsignal(signal.SIGTERM) == before[0]
        assert signal.getsignal(signal.SIGINT) != before[1]


def test_a_saved_state_dict_keeps_its_module_versions_and_containers(tmp_path):
    """save_torch writes CPU tensors (tests/test_gpu.py loads a GPU run's files without CUDA); the copy it
    makes keeps a state dict's `_metadata`, which load_state_dict reads to upgrade old files."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    state = model.state_dict()
    save_torch(tmp_path / "m.pt", {"state_dict": state, "rng": [torch.get_rng_state()], "epoch": 3, "t": (1, 2)})
    back = torch.load(tmp_path / "m.pt", weights_only=True)
    assert back["state_dict"]._metadata == state._metadata and back["state_dict"]._metadata["1"]["version"] == 2
    assert back["epoch"] == 3 and back["t"] == (1, 2) and torch.equal(back["rng"][0], torch.get_rng_state())
    assert all(torch.equal(back["state_dict"][k], v) for k, v in state.items())
