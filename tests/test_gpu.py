"""What only a CUDA GPU can show: bf16 autocast, files written from GPU tensors, the CUDA random state a resumed
run needs, packed students on one GPU, torchrun with NCCL, torch.compile, the local_gpus launcher.

Skipped without a GPU (CI has none). `scripts/gpu_check.sh` runs them, then the GPU benchmarks, on a machine
with one (docs/developers.md).
"""
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import QUICK, REPO, read_json
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CONV = [a for a in QUICK if not a.startswith(("teacher", "student", "dataset.image_size"))] + [
    "teacher=resnet8", "student=resnet8", "teacher.train.epochs=1", "teacher.train.batch_size=32",
    "dataset.channels=3", "dataset.image_size=16", "dataset.augment={crop_padding:2,flip:true}"]


@pytest.fixture
def exact_fp32(monkeypatch):
    """fp32 convolutions and matrix products in fp32: TF32 (cuDNN's default for convolutions) rounds their
    inputs to 10 bits, more than the comparisons here allow."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def kdrun_ok(args, tmp_path, monkeypatch, capsys) -> str:
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 0, out
    return out


def history(run_dir) -> list:
    return [(h["epoch"], h["train_loss"]) for h in read_json(run_dir / "metrics.json")["history"]]


def assert_close_runs(a, b, rel: float, atol: float) -> None:
    """Two runs of one experiment on other kernels: their losses and weights agree to rounding."""
    ma, mb = read_json(a / "metrics.json"), read_json(b / "metrics.json")
    assert ma["status"] == mb["status"] == "completed"
    assert [e for e, _ in history(a)] == [e for e, _ in history(b)]
    assert [loss for _, loss in history(a)] == pytest.approx([loss for _, loss in history(b)], rel=rel)
    wa, wb = torch.load(a / "student.pt"), torch.load(b / "student.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k].float(), wb[k].float(), rtol=rel, atol=atol, msg=k)


def test_a_bf16_run_on_the_gpu_writes_files_a_machine_without_one_reads(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    kdrun_ok([*CONV, "device=cuda", "train.precision=auto", "train.epochs=2", f"hydra.run.dir={run}"],
             tmp_path, monkeypatch, capsys)
    assert "Training runs in bf16 autocast, channels_last on cuda" in (run / "kdrun.log").read_text()
    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "completed" and 0 <= metrics["test_acc"] <= 100
    assert all(loss == loss and abs(loss) < 1e3 for _, loss in history(run))  # finite
    files = [*run.rglob("*.pt"), *(tmp_path / "cache").rglob("*.pt")]
    assert run / "student.pt" in files and len(files) >= 2  # and the teacher's
    # a plain torch.load, as a user's own script would, where CUDA is not there
    script = ("import sys, torch\n"
              "for p in sys.argv[1:]:\n"
              "    seen = []\n"
              "    def walk(o):\n"
              "        if isinstance(o, torch.Tensor): seen.append(o.device.type)\n"
              "        elif isinstance(o, dict): [walk(v) for v in o.values()]\n"
              "        elif isinstance(o, (list, tuple)): [walk(v) for v in o]\n"
              "    walk(torch.load(p, weights_only=True))\n"
              "    assert seen and set(seen) == {'cpu'}, (p, set(seen))\n")
    done = subprocess.run([sys.executable, "-c", script, *map(str, files)], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_fp32_on_the_gpu_trains_what_the_cpu_trains(tmp_path, monkeypatch, capsys, exact_fp32):
    """No augmentation and no dropout: their random numbers come from the device's generator, so the GPU
    draws other crops and masks than the CPU. The teacher (trained on the CPU, from the cache on the GPU) and
    the student's initialisation are the same; the teacher's outputs are cached after epoch 1 on both."""
    args = [*QUICK, "train.precision=fp32", "train.epochs=3"]
    for device in ("cpu", "cuda"):
        out = kdrun_ok([*args, f"device={device}", f"hydra.run.dir={tmp_path / device}"], tmp_path, monkeypatch,
                       capsys)
        assert "Teacher outputs are cached after the first epoch" in out
    assert_close_runs(tmp_path / "cpu", tmp_path / "cuda", rel=1e-5, atol=1e-6)


def test_a_gpu_run_killed_mid_epoch_resumes_with_its_cuda_random_state(tmp_path, monkeypatch, capsys):
    """The student has dropout, whose masks come from the CUDA generator: a resumed run that did not restore
    it would train on other masks from epoch 2 on."""
    from test_resume import RUN, start_paused

    run_args = [a for a in RUN if a != "device=cpu"] + ["device=cuda", "train.precision=fp32"]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
           "KDRUN_CACHE_DIR": os.environ["KDRUN_CACHE_DIR"]}  # the faulty student; this test's teacher cache
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    kdrun_ok([*run_args, f"hydra.run.dir={tmp_path / 'reference'}"], tmp_path, monkeypatch, capsys)
    run_dir, args, proc = start_paused({"env": env}, tmp_path, run=run_args)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    out = kdrun_ok(args, tmp_path, monkeypatch, capsys)
    assert "after epoch 1" in out
    assert_close_runs(run_dir, tmp_path / "reference", rel=1e-6, atol=1e-6)
    assert read_json(run_dir / "metrics.json")["test_acc"] == read_json(tmp_path / "reference" / "metrics.json")[
        "test_acc"]


@pytest.mark.parametrize("method", [["method=kd", "method.T=1,4"], ["method=fullact", "seed=0,1", "data_seed=0"]],
                         ids=["kd", "fullact"])
def test_packed_students_on_one_gpu_in_turns_and_batched(method, tmp_path, monkeypatch, capsys, exact_fp32):
    """On CUDA the members' students run as one vmapped computation by default (hydra.launcher.batch_students
    null); in turns with batch_students=false. Both train what each job trains alone, to rounding. (fullact
    reads every stage's output: on torch 2.6's CPU, vmap gave the second student other weights there.)"""
    sweep = ["-m", *CONV, "device=cuda", "train.precision=fp32", "train.batch_size=16", "teacher.seed=0",
             "schedule=single", *method]
    kdrun_ok([*sweep, f"hydra.sweep.dir={tmp_path / 'alone'}"], tmp_path, monkeypatch, capsys)
    kdrun_ok([*sweep, "hydra/launcher=packed", "hydra.launcher.batch_students=false",
              f"hydra.sweep.dir={tmp_path / 'turns'}"], tmp_path, monkeypatch, capsys)
    kdrun_ok([*sweep, "hydra/launcher=packed", f"hydra.sweep.dir={tmp_path / 'batched'}"], tmp_path, monkeypatch,
             capsys)
    assert "their 2 students train as one batched computation" in (tmp_path / "batched" / "1" / "kdrun.log").read_text()
    assert "batched computation" not in (tmp_path / "turns" / "1" / "kdrun.log").read_text()
    for job in ("0", "1"):
        for packed in ("turns", "batched"):
            assert_close_runs(tmp_path / packed / job, tmp_path / "alone" / job, rel=1e-4, atol=1e-5)


def torchrun(processes: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "kdrun", *args]


def test_torchrun_on_the_gpus_with_nccl_and_on_the_cpu_of_a_gpu_machine(tmp_path):
    """Several processes on the GPUs (NCCL, one GPU each) train what one process trains; with one GPU, two
    processes are refused and the advice runs. device=cpu under torchrun on a machine with GPUs: gloo."""
    from test_distributed import assert_same_weights, env, image_tree, one_process, run, weights

    common = [*image_tree(tmp_path / "images", per_class=25), "train.epochs=2", f"cache_dir={tmp_path / 'cache'}"]
    gpus = torch.cuda.device_count()
    run(torchrun(2, *common, "device=cpu", f"hydra.run.dir={tmp_path / 'cpu2'}"), tmp_path)
    run(one_process(*common, "device=cpu", f"hydra.run.dir={tmp_path / 'cpu1'}"), tmp_path)
    assert_same_weights(weights(tmp_path / "cpu2"), weights(tmp_path / "cpu1"))
    assert "(cpu:gloo,cuda:nccl)" in (tmp_path / "cpu2" / "kdrun.log").read_text()

    one = tmp_path / "gpu1"
    run(one_process(*common, "device=cuda", "train.precision=fp32", f"hydra.run.dir={one}"), tmp_path)
    several = tmp_path / "gpus"
    args = [*common, "device=cuda", "train.precision=fp32", f"hydra.run.dir={several}"]
    if gpus == 1:
        done = subprocess.run(torchrun(2, *args), cwd=tmp_path, env=env(), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode != 0
        assert "each process needs a GPU of its own. Start at most 1 (torchrun --nproc-per-node=1)" in \
            done.stdout + done.stderr
        run(torchrun(1, *args[:-1], f"hydra.run.dir={several}_advice"), tmp_path)  # the advice
        assert read_json(tmp_path / "gpus_advice" / "metrics.json")["status"] == "completed"
        return
    run(torchrun(2, *args), tmp_path)
    assert "(cpu:gloo,cuda:nccl)" in (several / "kdrun.log").read_text()
    assert_same_weights(weights(several), weights(one))


def test_compiled_models_train_on_the_gpu(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    kdrun_ok([*QUICK, "device=cuda", "train.compile=true", f"hydra.run.dir={run}"], tmp_path, monkeypatch, capsys)
    assert "torch.compile" in (run / "kdrun.log").read_text()
    assert read_json(run / "metrics.json")["status"] == "completed"


def test_the_local_gpus_launcher_runs_each_job_on_a_gpu(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    kdrun_ok(["-m", *QUICK, "hydra/launcher=local_gpus", "method.T=1,4", f"hydra.sweep.dir={out}"], tmp_path,
             monkeypatch, capsys)
    for job in ("0", "1"):
        assert read_json(out / job / "metrics.json")["status"] == "completed"
        assert " on cuda" in (out / job / "kdrun.log").read_text()
