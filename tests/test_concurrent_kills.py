"""Four runs that need the same missing teacher start at once; two are killed with SIGKILL at random
moments; then all four are run again. The teacher is trained once (the cache's file lock and its
partial checkpoint), every run completes, no file that kdrun reads is half-written, and the four
results equal, bit for bit, those of runs that were never interrupted (CPU, one thread).

The first victim is the process that holds the teacher's lock (read from /proc/locks), killed at a
random moment while it trains the teacher; the second is another one, at a random moment after."""
import os
import random
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, read_json
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)

TEACHER_EPOCHS = 10
RUN = ["dataset=synthetic", "dataset.train_size=256", "dataset.test_size=64", "dataset.image_size=8",
       "train.epochs=3", "train.batch_size=32", f"teacher.train.epochs={TEACHER_EPOCHS}", "teacher.train.batch_size=32",
       "teacher=mlp", "teacher.hidden=[64]", "student=mlp", "student.hidden=[16]", "progress=false", "device=cpu"]
TEMPERATURES = (1, 2, 4, 8)


def command(root, t):
    return [*RUN, f"method.T={t}", f"hydra.run.dir={root / f'T{t}'}"]


def start(root, t, env):
    return subprocess.Popen([sys.executable, "-m", "kdrun", *command(root, t)], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lock_holder(cache, procs):
    """The temperature of the process that holds the teacher's cache lock, or None."""
    locks = sorted((cache / "teachers").glob("*.lock")) if (cache / "teachers").is_dir() else []
    if not locks:
        return None
    inode = str(os.stat(locks[0]).st_ino)
    pids = {p.pid: t for t, p in procs.items()}
    for line in open("/proc/locks"):  # "1: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INODE 0 EOF"; waiters have "->"
        parts = line.split()
        if "->" not in parts and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == inode:
            return pids.get(int(parts[4]))
    return None


def wait_for(find, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found is not None:
            return found
        time.sleep(0.01)
    pytest.fail("no process took the teacher's lock")


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="reads lock holders from /proc/locks (Linux)")
@pytest.mark.slow
def test_four_runs_sharing_a_missing_teacher_two_killed_at_random_then_rerun(tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"
    reference.mkdir()
    monkeypatch.setenv("KDRUN_CACHE_DIR", str(reference / "cache"))
    for t in TEMPERATURES:
        code, out = kdrun_in_process(command(reference, t), reference, monkeypatch, capsys)
        assert code == 0, out

    root = tmp_path / "killed"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "KDRUN_CACHE_DIR": str(root / "cache")}
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    procs = {t: start(root, t, env) for t in TEMPERATURES}
    holder = wait_for(lambda: lock_holder(root / "cache", procs))
    first_delay = rng.uniform(0.0, 1.5)
    time.sleep(first_delay)
    procs[holder].kill()
    second = rng.choice([t for t in TEMPERATURES if t != holder])
    second_delay = rng.uniform(0.0, 6.0)
    time.sleep(second_delay)
    procs[second].kill()
    why = f"(random seed {seed}: killed T={holder} {first_delay:.2f} s into the teacher, T={second} {second_delay:.2f} s later)"
    logs = [p.communicate(timeout=300)[0] for p in procs.values()]

    again = {t: start(root, t, env) for t in TEMPERATURES}  # everything again, at once
    for t, p in again.items():
        out = p.communicate(timeout=300)[0]
        assert p.returncode == 0, (why, out)
        logs.append(out)

    text = "\n".join(logs)
    for epoch in range(1, TEACHER_EPOCHS + 1):  # each teacher epoch completed once, over all processes
        assert text.count(f"teacher epoch {epoch}/{TEACHER_EPOCHS}:") <= 1, why
    teachers = sorted((root / "cache" / "teachers").glob("*.pt"))
    assert [p.name.endswith(".partial.pt") for p in teachers] == [False], (why, teachers)
    for path in [*root.rglob("*.pt"), *root.rglob("*.json")]:  # hidden .NAME.*.tmp files are never read
        if not path.name.endswith(".tmp"):
            torch.load(path, weights_only=True) if path.suffix == ".pt" else read_json(path)
    for t in TEMPERATURES:
        got, expected = read_json(root / f"T{t}" / "metrics.json"), read_json(reference / f"T{t}" / "metrics.json")
        assert got["status"] == "completed", why
        assert (got["history"], got["teacher_test_acc"]) == (expected["history"], expected["teacher_test_acc"]), why
        weights = torch.load(root / f"T{t}" / "student.pt", weights_only=True)
        ref = torch.load(reference / f"T{t}" / "student.pt", weights_only=True)
        assert all(torch.equal(weights[k], ref[k]) for k in ref), why
