"""One run across several processes: `torchrun --nproc-per-node=2 -m kdrun ...` on the CPU (gloo), on a small
generated image-folder tree read by the real loader.

The processes train on their shares of each global batch; DDP averages the gradients. With a model without
batch norm or dropout, the weights equal those of one process with the same global batch, to float rounding
(each image's random crop depends on the epoch's seed and its index alone, not on which process reads it).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdrun import distributed

REPO = Path(__file__).resolve().parents[1]

MODELS = ["teacher=mlp_1200", "student=mlp_800", "teacher.train.epochs=1", "train.batch_size=32",
          "train.precision=fp32", "progress=false"]


def image_tree(root: Path, per_class: int) -> list[str]:
    """`dataset=imagefolder` over a tree of 3 classes (the last batch of each epoch is a short one)."""
    from test_imagefolder import imagefolder_tree

    imagefolder_tree(root, train=per_class, test=5)
    return ["dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=16", "dataset.workers=0", *MODELS]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "kdrun", *args]


def one_process(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdrun", *args]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "student.pt")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_torchrun_two_processes_train_what_one_process_trains(tmp_path):
    cache = f"cache_dir={tmp_path / 'cache'}"
    COMMON = image_tree(tmp_path / "images", per_class=25)
    run(torchrun(*COMMON, "train.epochs=2", cache), tmp_path)  # hydra.run.dir: the default, outputs/DATE/TIME
    made = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(made) == 1, f"one run directory for both processes, not one each: {made}"
    ddp = made[0]
    run(one_process(*COMMON, "train.epochs=2", cache, f"hydra.run.dir={tmp_path / 'one'}"), tmp_path)
    assert_same_weights(weights(ddp), weights(tmp_path / "one"))
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (ddp, tmp_path / "one"))
    assert a["status"] == "completed"
    assert a["test_acc"] == b["test_acc"]  # reduced over both processes' shares of the test split
    assert [h["train_loss"] for h in a["history"]] == pytest.approx([h["train_loss"] for h in b["history"]], rel=1e-5)
    assert a["teacher_test_acc"] == b["teacher_test_acc"]  # one teacher, trained once (rank 0), from the cache
    assert (ddp / "kdrun.log").read_text().count("kd epoch 2/2") == 1  # rank 0 writes the log


@pytest.mark.slow
def test_a_killed_torchrun_run_resumes_exactly(tmp_path):
    cache = f"cache_dir={tmp_path / 'cache'}"
    args = [*image_tree(tmp_path / "images", per_class=60), "train.epochs=4", cache, f"hydra.run.dir={tmp_path / 'ddp'}"]
    proc = subprocess.Popen(torchrun(*args), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = tmp_path / "ddp" / "metrics.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(json.loads(metrics.read_text()).get("history", [])) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both processes, in the middle of epoch 3
    proc.wait()
    assert json.loads(metrics.read_text())["status"] == "running"
    run(torchrun(*args), tmp_path)
    history = json.loads(metrics.read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    run(one_process(*args[:-1], f"hydra.run.dir={tmp_path / 'one'}"), tmp_path)
    assert_same_weights(weights(tmp_path / "ddp"), weights(tmp_path / "one"))


def test_a_sweep_under_torchrun_is_refused(tmp_path, capsys, monkeypatch):
    from kdrun.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sys, "argv", ["kdrun", "-m", "method.T=1,4"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert "tasks_per_node" in capsys.readouterr().err


def test_each_share_of_a_batch_weighs_by_its_size(monkeypatch):
    """Shares of 3, 2 of a batch of 5: weight count * world / batch makes the mean of the shares' weighted
    means the batch's mean; a process left without an example gets weight 0."""
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    index, x = torch.arange(5), torch.arange(5.0) * 10
    shares = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares.append(distributed.share(index, x))
    (c0, (i0, x0)), (c1, (i1, x1)) = shares
    assert (c0, c1) == (3, 2) and i0.tolist() == [0, 1, 2] and i1.tolist() == [3, 4]
    averaged = (x0.mean() * c0 * 2 / 5 + x1.mean() * c1 * 2 / 5) / 2  # what DDP's gradient average does
    assert averaged.item() == pytest.approx(x.mean().item())
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    count, (i, _) = distributed.share(torch.arange(1), torch.zeros(1))
    assert count == 0 and len(i) == 1


def test_slurm_host_lists():
    assert distributed.first_host("node[03-05,07],gpu1") == "node03"
    assert distributed.first_host("gpu7") == "gpu7"
    assert distributed.first_host("a1,b2") == "a1"


def test_sync_bn_on_the_cpu_is_refused(monkeypatch):
    from omegaconf import OmegaConf

    from kdrun.errors import UserError
    from kdrun.training.recipe import Recipe

    monkeypatch.setattr(distributed, "active", lambda: True)
    recipe = Recipe.from_config(OmegaConf.structured(Recipe(sync_bn=True)))
    with pytest.raises(UserError, match="GPUs only"):
        distributed.data_parallel(object(), torch.device("cpu"), recipe)


SMALL = ["dataset=synthetic", "dataset.train_size=96", "dataset.test_size=32", "dataset.image_size=8",
         "teacher=wrn16_2", "student=wrn16_1", "train.epochs=1", "teacher.train.epochs=1", "train.batch_size=32",
         "progress=false"]


@pytest.mark.slow
@pytest.mark.parametrize("method", [
    ["method=crd", "method.nce_k=16"],  # memory banks all-gathered
    ["method=vid"], ["method=cc"],  # heads trained under DDP
    ["method=fitnet", "schedule=fitnet"],  # an init stage that trains a part
    ["method=kd", "schedule=takd", "schedule.assistants=[wrn16_1]"],  # an assistant trained, cached, then a teacher
    ["method=grad_at"],  # a double backward
], ids=lambda m: m[0].removeprefix("method=") + (f"-{m[1]}" if len(m) > 1 and "schedule" in m[1] else ""))
def test_methods_and_schedules_run_under_ddp(tmp_path, method):
    run(torchrun(*SMALL, *method, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"), tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test_acc"] is not None


def test_slurm_tasks_make_one_run(monkeypatch):
    """submitit starts one task per GPU with srun: SLURM's variables give each its rank and the rendezvous."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # recorded, so that what _env_from_slurm sets is undone after the test
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert distributed.slurm_tasks() == 1  # a batch script's own shell (no srun step): one process
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    assert distributed.slurm_tasks() == 8
    monkeypatch.setitem(sys.modules, "submitit", None)  # without submitit: the node list
    distributed._env_from_slurm()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("5", "8", "1")
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == str(20000 + 123456 % 20000)


def test_more_processes_than_gpus_on_a_machine_are_refused_with_the_fix(monkeypatch):
    """NCCL cannot run two processes on one GPU; it would fail deep inside DDP's first broadcast."""
    from kdrun.errors import UserError

    monkeypatch.setattr(distributed, "joined", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"2 processes of this run are on this machine, which has 1 GPU\(s\).*"
                                        r"torchrun --nproc-per-node=1\), or train on the CPU \(device=cpu\)"):
        distributed.place(torch.device("cuda"))
    assert distributed.place(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.place(torch.device("cuda")) == torch.device("cuda", 0)
    assert distributed.place(torch.device("cuda", 0)) == torch.device("cuda", 0)  # e.g. SLURM: a GPU per task


def test_one_gpu_named_for_every_process_is_refused_and_the_advice_works(monkeypatch):
    from kdrun.errors import UserError

    monkeypatch.setattr(distributed, "joined", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UserError, match=r"device=cuda:0 names one GPU for all 2 processes .* Use device=cuda \(or "
                                        r"auto\): each process takes the GPU of its local rank"):
        distributed.place(torch.device("cuda", 0))
    assert distributed.place(torch.device("cuda")) == torch.device("cuda", 1)  # the advice
