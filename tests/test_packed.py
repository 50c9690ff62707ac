"""Packed sweeps (hydra/launcher=packed): each member's result equals, bit for bit, the same job run alone;
failures stay with their member; a killed group resumes; the launcher logs its groups."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import QUICK, REPO, read_json
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (fixture: tiny models on one thread)
from kdrun.errors import UserError
from kdrun.models import MODELS
from kdrun.packed.grouping import plan_groups

# Augmented (crop + flip), two epochs, dropout in the student: the batches, their views and the dropout
# masks all have to be each member's own.
BASE = QUICK + ["train.epochs=2", "train.batch_size=16", "train.precision=fp32", "student.dropout=0.2",
                "dataset.augment={crop_padding:2,flip:true}"]


def sweep(args, tmp_path, monkeypatch, capsys, name, packed: bool, base=tuple(BASE)):
    out = tmp_path / name
    launcher = ["hydra/launcher=packed"] if packed else []
    code, text = kdrun_in_process(["-m", *launcher, *base, *args, f"hydra.sweep.dir={out}"], tmp_path, monkeypatch,
                                  capsys)
    return code, text, out


def alone_then_packed(args, tmp_path, monkeypatch, capsys) -> tuple[str, Path, Path]:
    """The sweep one job after the other, then packed; both must succeed. (packed output, both sweep dirs)"""
    code, _, alone = sweep(args, tmp_path, monkeypatch, capsys, "alone", packed=False)
    assert code == 0
    code, text, packed = sweep(args, tmp_path, monkeypatch, capsys, "packed", packed=True)
    assert code == 0, text
    return text, alone, packed


def jobs(out: Path) -> dict[str, dict]:
    return {p.name: read_json(p / "metrics.json") for p in sorted(out.iterdir()) if (p / "metrics.json").is_file()}


def assert_same_runs(alone: Path, packed: Path) -> None:
    a, b = jobs(alone), jobs(packed)
    assert a.keys() == b.keys() and a
    for name in a:
        assert a[name]["status"] == b[name]["status"], name
        if a[name]["status"] != "completed":
            continue
        assert [(e["test_acc"], e["train_loss"], e["losses"]) for e in a[name]["history"]] == \
            [(e["test_acc"], e["train_loss"], e["losses"]) for e in b[name]["history"]], name
        assert a[name]["test_acc"] == b[name]["test_acc"]
        wa, wb = torch.load(alone / name / "student.pt"), torch.load(packed / name / "student.pt")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name


@pytest.mark.parametrize("args", [
    ["method=kd", "method.T=1,4"],
    pytest.param(["method=kd", "method.T=1,4", "method.alpha=0.5,0.9"], marks=pytest.mark.slow),
    ["method=dkd", "method.beta=1,4"],
    # CRD: per-member negatives (the global generator) and the teacher's embedding read through a hook
    ["method=crd", "method.nce_k=8", "method.feat_dim=8", "method.beta=0.5,0.8"],
    # a feature method (in one stage: RepDistiller's): hint layers read through hooks, a regressor per member
    ["method=fitnet", "schedule=single", "method.beta=50,100"],
], ids=["kd", "kd_grid", "dkd", "crd", "fitnet"])
def test_packed_members_equal_their_runs_alone(args, tmp_path, monkeypatch, capsys):
    text, alone, packed = alone_then_packed(args, tmp_path, monkeypatch, capsys)
    assert "packed together: #0, #1" in text
    assert_same_runs(alone, packed)
    own, other = (packed / "1" / "kdrun.log").read_text(), str(packed / "0")
    assert "Run directory" in own and other not in own  # each member's log holds its own lines


@pytest.mark.slow
def test_a_sweep_of_shareable_and_unshareable_jobs(tmp_path, monkeypatch, capsys):
    """Two students (two groups) and a method with input gradients (alone), as when run one by one."""
    args = ["method=kd,grad_at", "student.hidden=[16],[12]", "method.T=1,4"]
    text, alone, packed = alone_then_packed(args, tmp_path, monkeypatch, capsys)
    assert "Packing 8 jobs: 2 group(s), 4 job(s) alone" in text
    # student.hidden (from QUICK) varies slowest, then the method, then T
    assert "packed together: #0, #1" in text and "packed together: #4, #5" in text
    assert "#2 alone: method=grad_at takes gradients with respect to the input" in text
    assert_same_runs(alone, packed)


def test_a_member_that_diverges_fails_alone(tmp_path, monkeypatch, capsys):
    code, text, out = sweep(["train.lr=0.05,1e30", "method.T=4"], tmp_path, monkeypatch, capsys, "packed",
                            packed=True)
    assert code == 1  # a job of the sweep failed
    assert "packed together: #0, #1" in text
    ok, bad = read_json(out / "0" / "metrics.json"), read_json(out / "1" / "metrics.json")
    assert ok["status"] == "completed" and len(ok["history"]) == 2
    assert bad["status"] == "failed" and "Lower the learning rate" in bad["error"]
    assert f"at step {bad['diverged']['step']} of 4 in epoch 1" in bad["error"], bad["error"]
    assert "diverged" in bad


def test_why_jobs_run_alone():
    def cfg(**changes):
        base = {"seed": 0, "data_seed": None, "device": "cpu", "dataset": {"name": "synthetic", "augment": None},
                "teacher": {"name": "mlp", "epoch": None, "seed": None}, "student": {"name": "mlp", "hidden": [16]},
                "train": {"batch_size": 16, "epochs": 2}, "method": {"name": "kd"},
                "schedule": {"name": "single", "stages": [{"name": "kd"}]}}
        return {**base, **changes}

    groups, alone = plan_groups({
        0: cfg(), 1: cfg(method={"name": "dkd"}),
        2: cfg(seed=1), 3: cfg(seed=2, data_seed=0, teacher={"name": "mlp", "epoch": None, "seed": 0}),
        4: cfg(student={"name": "mlp", "hidden": [8]}),
        5: cfg(schedule={"name": "fitnet", "stages": [{"name": "hint"}, {"name": "kd"}]}),
        6: cfg(teacher={"name": "mlp", "epoch": 3, "seed": None}),
        7: cfg(method={"name": "dkd"}, schedule={"name": "single", "stages": [{"name": "dkd"}]}),
    })
    # seed=2 data_seed=0 teacher.seed=0 shares the data and the teacher of seed=0
    assert groups == [[0, 1, 3]]
    assert alone[2] == ("no other job has its data seed (data_seed, or seed when it is null), "
                        "teacher (its config and seed)")
    assert alone[4] == "no other job has its student"
    assert alone[5] == "schedule=fitnet is not a single stage"
    assert alone[6] == "teacher.epoch picks one of the teacher's earlier epochs"
    assert alone[7] == "no other job has its stage name (its batch order follows it: the method's name)"
    assert plan_groups({0: cfg(), 1: cfg(), 2: cfg()}, max_members=2) == \
        ([[0, 1]], {2: "the last of its group after hydra.launcher.max_members=2"})


@pytest.mark.slow
def test_a_killed_group_resumes_to_the_same_results(tmp_path, monkeypatch, capsys):
    """SIGKILL while the members train (one has finished an epoch), rerun: every member resumes after its last
    completed epoch and ends where the same jobs end run alone."""
    args = [*BASE, "dataset.train_size=768", "train.epochs=4", "method.T=1,4", "method.alpha=0.5,0.9"]
    out = tmp_path / "packed"
    command, env, process = _start_until_an_epoch_ends(args, out, tmp_path, stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.DEVNULL, start_new_session=True)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = [len(_history(p)) for p in sorted(out.glob("*/metrics.json"))]
    assert done and max(done) >= 1 and min(done) < 4, done  # killed mid-sweep, after an epoch
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in (out / "1" / "kdrun.log").read_text() + (out / "0" / "kdrun.log").read_text()
    code, _ = kdrun_in_process(["-m", *args, f"hydra.sweep.dir={tmp_path / 'alone'}"], tmp_path, monkeypatch, capsys)
    assert code == 0
    assert_same_runs(tmp_path / "alone", out)


def _start_until_an_epoch_ends(args, out: Path, cwd: Path, **popen):
    """`kdrun -m hydra/launcher=packed ARGS` in a process, returned once a member has finished an epoch."""
    command = [sys.executable, "-m", "kdrun", "-m", "hydra/launcher=packed", *args, f"hydra.sweep.dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=cwd, env=env, **popen)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not any(
            len(_history(p)) >= 1 for p in out.glob("*/metrics.json")):
        time.sleep(0.05)
    return command, env, process


def _history(path: Path) -> list:
    try:
        return json.loads(path.read_text()).get("history") or []
    except (OSError, ValueError):
        return []


def test_a_seed_sweep_with_one_data_seed_packs(tmp_path, monkeypatch, capsys):
    """seed=0,1 data_seed=0 teacher.seed=0: one group (same batches, same teacher), each seed its own student."""
    args = ["seed=0,1", "data_seed=0", "teacher.seed=0"]
    text, alone, packed = alone_then_packed(args, tmp_path, monkeypatch, capsys)
    assert "packed together: #0, #1" in text
    assert_same_runs(alone, packed)
    w0, w1 = (torch.load(packed / n / "student.pt") for n in ("0", "1"))
    assert not all(torch.equal(w0[k], w1[k]) for k in w0)  # the student's initialisation follows seed


@pytest.mark.slow
def test_sigterm_stops_every_member_and_each_records_it(tmp_path):
    """SIGTERM to a packed group (SLURM's signal before a time limit): the member computing stops at once,
    the others at their next turn; each records `interrupted`, and kdrun -m exits with 143."""
    # 40 epochs: under load, this process may see the first epoch's end late; the group must still be training
    args = [*BASE, "dataset.train_size=768", "train.epochs=40", "method.T=1,4"]
    out = tmp_path / "packed"
    _, _, process = _start_until_an_epoch_ends(args, out, tmp_path, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True)
    process.send_signal(signal.SIGTERM)
    text, _ = process.communicate(timeout=120)
    assert process.returncode == 143, text[-3000:]
    ended = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/metrics.json"))}
    assert sorted(ended) == ["0", "1"] and all(m["status"] == "interrupted" for m in ended.values()), ended
    assert all(len(m["history"]) < 40 for m in ended.values())


@pytest.mark.parametrize("args", [
    pytest.param(["method=kd", "method.T=1,4"], marks=pytest.mark.slow),
    # the student's embedding read through a hook inside the batched forward; heads and memory banks per member
    ["method=crd", "method.nce_k=8", "method.feat_dim=8", "method.beta=0.5,0.8"],
], ids=["kd", "crd"])
def test_batched_students_agree_with_their_runs_alone(args, tmp_path, monkeypatch, capsys):
    """hydra.launcher.batch_students=true on the CPU: the members' students (convolutions, batch norms)
    run as one vmapped forward and backward; each member's results and weights match its run alone to
    float rounding, and its files hold its own weights only."""
    base = [a for a in BASE if not a.startswith("student.")] + ["student=resnet8"]
    assert_batched_as_alone([*args, "train.epochs=1"], base, tmp_path, monkeypatch, capsys, atol=1e-5)


BATCHING = ["ab", "at", "cc", "ce", "darkrank", "fitnet", "fsp", "ft", "fullact", "nst", "ofd", "pkt",
            "reviewkd", "rkd", "sp", "vid"]  # and kd, dkd, crd above
# AT at its beta of 1000 on these 8x8 maps amplifies rounding: two runs alone that differ only in memory format
# end 0.067 apart in a weight after 4 steps (torch 2.6); at 100 they agree to 2e-6, and its term (5.6) still
# outweighs the cross-entropy (2.3).
STEADY = {"at": ["method.beta=100"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", BATCHING)
def test_every_method_batches_as_it_runs_alone(name, tmp_path, monkeypatch, capsys):
    """Features of several layers, the methods' own heads: two student seeds (one data seed, one teacher)
    batched end within rounding (amplified by some losses: darkrank's, nst's) of their runs alone."""
    base = [a for a in BASE if not a.startswith(("student.", "teacher"))] + [
        "student=resnet8", "teacher=resnet8", "teacher.train.epochs=1", "teacher.train.batch_size=16"]
    args = [f"method={name}", *STEADY.get(name, []), "seed=0,1", "data_seed=0", "teacher.seed=0", "schedule=single",
            "train.epochs=1"]
    assert_batched_as_alone(args, base, tmp_path, monkeypatch, capsys, atol=5e-3)


def assert_batched_as_alone(args, base, tmp_path, monkeypatch, capsys, atol: float) -> None:
    import kdrun.packed.batched as batched

    code, text, alone = sweep(args, tmp_path, monkeypatch, capsys, "alone", packed=False, base=base)
    assert code == 0, text
    scored = []  # the members' test evaluations, batched too: one call for both, each epoch
    monkeypatch.setattr(batched, "score_together", lambda parts, f=batched.score_together: scored.append(
        len(parts)) or f(parts))
    code, text, packed = sweep([*args, "hydra.launcher.batch_students=true"], tmp_path, monkeypatch, capsys,
                               "packed", packed=True, base=base)
    assert code == 0, text
    assert scored == [2]  # one epoch
    assert "Packed jobs #0, #1: their 2 students train as one batched computation (torch.func.vmap)" \
        in (packed / "1" / "kdrun.log").read_text()  # logged by the last to arrive, which computes it
    a, b = jobs(alone), jobs(packed)
    assert a.keys() == b.keys() and len(a) == 2
    for name in a:
        assert b[name]["status"] == "completed"
        losses = [e["train_loss"] for e in a[name]["history"]], [e["train_loss"] for e in b[name]["history"]]
        assert losses[0] == pytest.approx(losses[1], rel=1e-4), name
        assert a[name]["test_acc"] == b[name]["test_acc"], name
        wa, wb = torch.load(alone / name / "student.pt"), torch.load(packed / name / "student.pt")
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.allclose(wa[k].float(), wb[k].float(), atol=atol), (name, k)
        assert (packed / name / "student.pt").stat().st_size < 1.2 * (alone / name / "student.pt").stat().st_size


def test_members_meet_once_each_time_and_go_on_without_one_that_fails():
    """kdrun.packed.group's meetings (how members batch their students): computed once, by the last to
    arrive, with the parts of every member there; a member that fails in between is not waited for."""
    from kdrun.packed.group import Group

    group, computed = Group(), []

    def compute(parts):
        computed.append(sorted(m.number for m in parts))
        return {m: part * 10 for m, part in parts.items()}

    def job(member):
        first = group.meet(member, "forward", member.number, compute)
        if member.number == 2:
            raise ValueError("fails between the meetings")
        return first, group.meet(member, "backward", first + 1, compute)

    members = [group.add(n) for n in range(3)]
    group.run({m: (lambda m=m: job(m)) for m in members})
    assert computed == [[0, 1, 2], [0, 1]]
    assert members[0].result == (0, 10) and members[1].result == (10, 110)
    assert isinstance(members[2].error, ValueError)


def test_a_meeting_that_fails_fails_every_member_at_it():
    from kdrun.packed.group import Group

    group = Group()
    members = [group.add(n) for n in range(2)]

    def compute(parts):
        raise FloatingPointError("no")

    group.run({m: (lambda m=m: group.meet(m, "forward", None, compute)) for m in members})
    assert isinstance(members[1].error, FloatingPointError)  # the last to arrive computed it
    assert isinstance(members[0].error, RuntimeError)
    assert "packed job #1 failed computing for its group: FloatingPointError: no" in str(members[0].error)


@pytest.mark.parametrize("name, batches", [("kd", True), ("dkd", True), ("crd", True), ("fitnet", True),
                                           ("grad_at", False), ("mlkd", False)])
def test_which_methods_batch_their_students(name, batches):
    """Methods that run the whole student once per step on the batch (features read through hooks; heads
    of their own): not those with input gradients or a strong view of their own."""
    from kdrun.packed.batched import batchable
    from kdrun.packed.group import Group

    small = ["method.nce_k=8", "method.feat_dim=8", "method.negatives=uniform"] if name == "crd" else []
    args = small_distiller_stage(name, small)
    assert batchable(Group(batch_students=True), *args) is batches
    assert not batchable(Group(), *args)  # null: on a GPU only


def small_distiller_stage(name: str, overrides=()) -> tuple:
    """batchable's arguments after the group: method `name` over two tiny MLPs, its trained parameters, the CPU,
    the stage's name and forward."""
    from conftest import compose_config
    from kdrun.data.base import DataInfo
    from kdrun.methods import build_method
    from kdrun.models.mlp import MLP

    info = DataInfo(channels=1, image_size=(4, 4), num_classes=3, train_size=16)
    distiller = build_method(compose_config([f"method={name}", *overrides]).method, MLP(3, 1, (4, 4), hidden=[8]),
                             MLP(3, 1, (4, 4), hidden=[8]), info)
    params = [p for p in distiller.parameters() if p.requires_grad]
    return distiller, params, torch.device("cpu"), name, distiller.forward_train


def test_an_older_pytorch_than_batching_was_checked_on_takes_turns(monkeypatch, caplog):
    """On torch 2.6.0 batched channels_last students (but the first) trained other weights than alone."""
    import kdrun.packed.batched as batched
    from kdrun.packed.group import Group

    args = small_distiller_stage("kd")
    assert batched.batchable(Group(batch_students=True), *args)
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.6.0+cu124"))
    assert torch.__version__ < batched.CHECKED_TORCH
    batched.say_too_old.cache_clear()
    with caplog.at_level("WARNING", logger=batched.__name__):
        assert not batched.batchable(Group(batch_students=True), *args)
        assert not batched.batchable(Group(batch_students=True), *args)
    assert caplog.text.count("older than") == 1  # said once, not once per member
    assert "this PyTorch (2.6.0+cu124) is older than 2.11, on which batched students were checked, so the " \
           "students take turns. Upgrade PyTorch to batch them." in caplog.text


def test_a_group_size_below_one_is_refused_and_the_advice_works(tmp_path, monkeypatch, capsys):
    args = ["method.T=1,4", "train.epochs=1"]
    code, text, out = sweep([*args, "hydra.launcher.max_members=0"], tmp_path, monkeypatch, capsys, "S", packed=True)
    assert code == 2
    assert "hydra.launcher.max_members is the most jobs one packed group trains together: null (no limit) or 1 " \
           "or more, got 0." in text
    assert "Once what stopped the sweep (above) is fixed, run the command again with hydra.sweep.dir=" in \
        " ".join(text.split())
    code, text, out = sweep([*args, "hydra.launcher.max_members=1"], tmp_path, monkeypatch, capsys, "S", packed=True)
    assert code == 0 and "#0 alone: hydra.launcher.max_members=1 packs no jobs together" in text
    assert [read_json(out / n / "metrics.json")["status"] for n in ("0", "1")] == ["completed", "completed"]


def _batched_step_matches_separate_steps(model: str, size: int) -> None:
    """kdrun.packed.batched's forward and backward of two students of `model` against each run alone:
    logits, every parameter's gradient and the batch norms' running statistics, in float64 (in fp32 the
    first convolution's weight gradient, a sum of thousands of terms that cancel, differs by ~3e-3 of its
    scale: the order of the sums; in float64 it is the same)."""
    import copy
    from types import SimpleNamespace

    import torch.nn.functional as F

    from kdrun.packed.batched import architecture, backward_together, forward_together
    from kdrun.packed.group import Group

    torch.manual_seed(0)
    students = [MODELS.get(model)(num_classes=5, in_channels=3, image_size=(size, size)).double().train()
                for _ in range(2)]
    for m in [m for s in students for m in s.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]:
        m.p = 0.0  # its masks under vmap are other random numbers than alone
    alone = copy.deepcopy(students)
    x, y = torch.randn(4, 3, size, size, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    group = Group(batch_students=True)
    members = [group.add(n) for n in range(2)]
    for member, student in zip(members, students):
        member.batching = (SimpleNamespace(_student_hooks=None), architecture(student))
    logits = forward_together({m: (s, x) for m, s in zip(members, students)})
    backward_together({m: (F.cross_entropy(logits[m], y), m.step) for m in members})
    def close(a, b):
        return (a - b).abs().max() <= 1e-9 * b.abs().max() + 1e-12

    for member, student, own in zip(members, students, alone):
        expected = own(x)
        F.cross_entropy(expected, y).backward()
        assert close(logits[member], expected)
        for (name, p), q in zip(student.named_parameters(), own.parameters()):
            assert close(p.grad, q.grad), name
        for (name, b), c in zip(student.named_buffers(), own.buffers()):
            assert close(b.float(), c.float()), name


def test_a_batched_step_matches_the_students_separate_steps():
    _batched_step_matches_separate_steps("resnet8", 8)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS.names())
def test_every_zoo_model_batches(model):
    try:
        MODELS.get(model)(num_classes=5, in_channels=3, image_size=(32, 32))
        size = 32
    except UserError:  # ImageNet's models take larger images
        size = 64
    _batched_step_matches_separate_steps(model, size)
