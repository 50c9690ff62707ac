"""A run's record never lies: a directory that holds one configuration's run is never rewritten by
another's (single runs, sweeps, a lost metrics.json), a sweep with refused or unstarted jobs says so
and exits non-zero, and every piece of advice these refusals give is followed here and works.

Each case runs the real CLI entry point in this process (`inprocess.kdrun_in_process`) and compares
the old run's files byte for byte before and after.
"""
import os
import shutil
import signal

from conftest import QUICK, read_json
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)
from kdrun.results.report import main as report_main
from kdrun.results.runs import find_runs, read_run


def files_of(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def report_rows(capsys, *dirs) -> str:
    capsys.readouterr()
    report_main([str(d) for d in dirs])
    return capsys.readouterr().out


def test_another_configuration_never_rewrites_a_finished_run_and_each_piece_of_advice_works(
        tmp_path, monkeypatch, capsys):
    def kdrun(*args):
        return kdrun_in_process([*QUICK, *args], tmp_path, monkeypatch, capsys)

    runs = tmp_path / "runs"
    old = runs / "D"
    code, out = kdrun("train.epochs=2", f"hydra.run.dir={old}")
    assert code == 0, out
    before = files_of(old)
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "kdrun.log", "metrics.json",
            "student.pt", "checkpoints/kd.pt"} <= before.keys()

    code, out = kdrun("train.epochs=3", f"hydra.run.dir={old}")
    assert code == 2 and "Traceback" not in out, out
    assert (f"{old} already holds a completed run of another configuration (train.epochs=2 there, 3 here). "
            f"Nothing in it was changed.") in out
    assert files_of(old) == before  # the config, the overrides, the log, the metrics: all as they were

    # "Running that run's own command again resumes or reports it."
    code, out = kdrun("train.epochs=2", f"hydra.run.dir={old}")
    assert code == 0 and "already completed: nothing to do" in out, out
    assert files_of(old) == before

    # "To keep that run, give this one a directory of its own (hydra.run.dir=NEW_DIR)"
    code, out = kdrun("train.epochs=3", f"hydra.run.dir={runs / 'E'}")
    assert code == 0, out
    report = report_rows(capsys, runs)
    assert [read_run(d).config["train.epochs"] for d in (old, runs / "E")] == [2, 3]
    assert "2 run(s) in 2 configuration(s): 2 completed" in report

    # "to replace it, delete D and run again"
    shutil.rmtree(old)
    code, out = kdrun("train.epochs=3", f"hydra.run.dir={old}")
    assert code == 0, out
    assert read_json(old / "metrics.json")["epochs"] == 3 and read_run(old).config["train.epochs"] == 3

    # "The run in D is already completed: nothing to do. To train it again, delete D and run the same command."
    assert "To train it again, delete" in kdrun("train.epochs=3", f"hydra.run.dir={old}")[1]
    shutil.rmtree(old)
    code, out = kdrun("train.epochs=3", f"hydra.run.dir={old}")
    assert code == 0 and "kd epoch 3/3" in out, out  # trained again, not reported


def test_a_lost_metrics_json_is_not_a_fresh_start_for_another_configuration(tmp_path, monkeypatch, capsys):
    def kdrun(*args):
        return kdrun_in_process([*QUICK, "train.epochs=2", *args], tmp_path, monkeypatch, capsys)

    run_dir = tmp_path / "run"
    assert kdrun(f"hydra.run.dir={run_dir}")[0] == 0
    finished = read_json(run_dir / "metrics.json")
    (run_dir / "metrics.json").unlink()
    before = files_of(run_dir)

    code, out = kdrun("train.lr=0.5", f"hydra.run.dir={run_dir}")  # the checkpoints say whose the directory is
    assert code == 2 and "Traceback" not in out, out
    assert "holds a run of another configuration (train.lr=0.05 there, 0.5 here)" in out
    assert files_of(run_dir) == before

    code, out = kdrun(f"hydra.run.dir={run_dir}")  # the same configuration: its final checkpoint is its result
    assert code == 0, out
    again = read_json(run_dir / "metrics.json")
    assert again["history"] == finished["history"] and again["test_acc"] == finished["test_acc"]
    assert [h["lr"] for h in again["history"]] == [0.05, 0.05]


def test_a_checkpoint_of_another_configuration_is_refused_and_deleting_it_trains_the_stage_anew(
        tmp_path, monkeypatch, capsys):
    def kdrun(*args):
        return kdrun_in_process([*QUICK, "train.epochs=2", *args], tmp_path, monkeypatch, capsys)

    first, second = tmp_path / "first", tmp_path / "second"
    assert kdrun(f"hydra.run.dir={first}", "method.T=2")[0] == 0
    assert kdrun(f"hydra.run.dir={second}")[0] == 0
    metrics = read_json(second / "metrics.json")
    (second / "metrics.json").write_text(
        __import__("json").dumps({**metrics, "status": "interrupted", "history": metrics["history"][:1]}))
    checkpoint = second / "checkpoints" / "kd.pt"
    shutil.copyfile(first / "checkpoints" / "kd.pt", checkpoint)  # another run's checkpoint put in its place

    code, out = kdrun(f"hydra.run.dir={second}")
    assert code == 2 and "Traceback" not in out, out
    assert f"The checkpoint {checkpoint} of stage 'kd' was made under another configuration of the run" in out
    assert f"Delete {checkpoint} to train stage 'kd' from its start." in out

    checkpoint.unlink()  # the advice
    code, out = kdrun(f"hydra.run.dir={second}")
    assert code == 0 and "kd epoch 1/2" in out, out
    assert read_json(second / "metrics.json")["history"] == metrics["history"]


def test_a_sweep_into_another_sweeps_directory_is_refused_whole_and_leaves_it_as_it_was(
        tmp_path, monkeypatch, capsys):
    def kdrun_m(*args):
        return kdrun_in_process(["-m", *QUICK, *args], tmp_path, monkeypatch, capsys)

    sweep = tmp_path / "S"
    assert kdrun_m("method.T=1,4", f"hydra.sweep.dir={sweep}")[0] == 0
    before = files_of(sweep)
    assert "multirun.yaml" in before and "summary.md" in before

    code, out = kdrun_m("method.T=1,4", "train.lr=0.1", f"hydra.sweep.dir={sweep}")
    assert code == 2 and "Traceback" not in out, out
    assert "the sweep was not started: the directories of 2 of its 2 jobs already hold other configurations' runs" in out
    assert f"job #0 (method.T=1): {sweep / '0'} holds a completed run of another configuration (train.lr=0.05 there, 0.1 here)" in out
    assert f"Nothing in {sweep} was changed" in out
    assert files_of(sweep) == before  # multirun.yaml and the summary too

    code, out = kdrun_m("method.T=4", f"hydra.sweep.dir={sweep}")  # a smaller sweep: its job 0 is T=4
    assert code == 2 and "(method.T=1 there, 4 here)" in out, out
    assert files_of(sweep) == before
    groups = {r.config["method.T"]: r.status for r in find_runs([sweep])}
    assert groups == {1.0: "completed", 4.0: "completed"}  # not pooled: each run keeps its own T

    code, out = kdrun_m("method.T=1,4", f"hydra.sweep.dir={sweep}")  # "Running their own sweep command again"
    assert code == 0 and out.count("already completed: nothing to do") == 2, out
    assert {k: v for k, v in files_of(sweep).items() if not k.startswith("summary.")} == \
        {k: v for k, v in before.items() if not k.startswith("summary.")}

    # "give this sweep a directory of its own (hydra.sweep.dir=NEW_DIR); to replace them, delete S and run again"
    assert kdrun_m("method.T=1,4", "train.lr=0.1", f"hydra.sweep.dir={tmp_path / 'S2'}")[0] == 0
    shutil.rmtree(sweep)
    code, out = kdrun_m("method.T=1,4", "train.lr=0.1", f"hydra.sweep.dir={sweep}")
    assert code == 0, out
    assert {r.config["train.lr"] for r in find_runs([sweep])} == {0.1}


def test_a_job_refused_inside_a_sweep_fails_the_sweep_and_is_named(tmp_path, monkeypatch, capsys):
    # A subdir pattern that puts two jobs into one directory: the second job finds the first one's run.
    code, out = kdrun_in_process(["-m", *QUICK, "method.T=1,4", f"hydra.sweep.dir={tmp_path / 'S'}",
                                  "hydra.sweep.subdir=same"], tmp_path, monkeypatch, capsys)
    assert code == 1 and "Traceback" not in out, out
    assert "Job #1 (method.T=4) was refused:" in out and "(method.T=1 there, 4 here)" in out
    assert "kdrun exits with status 1." in out
    assert read_run(tmp_path / "S" / "same").config["method.T"] == 1.0


def test_an_interrupted_sweep_exits_with_the_signals_status_and_names_the_jobs_it_did_not_start(
        tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(os.path.dirname(__file__))  # faulty_student
    monkeypatch.setenv("KDRUN_TEST_PAUSE", f"3:{tmp_path / 'paused'}:SIGTERM")
    args = ["-m", *QUICK, "+student._target_=faulty_student.FaultyMLP", "train.epochs=2", "method.T=1,4,8",
            f"hydra.sweep.dir={tmp_path / 'S'}"]
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 143 and "Traceback" not in out, out
    assert "2 of the sweep's 3 jobs did not start: #1 (method.T=4), #2 (method.T=8)." in out
    assert "kdrun exits with status 143." in out and "status 1." not in out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    # "Run the same command again with hydra.sweep.dir=S to run them"
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 0, out
    assert sorted(r.status for r in find_runs([tmp_path / "S"])) == ["completed"] * 3


def test_the_report_leaves_out_a_run_whose_config_was_rewritten_after_it(tmp_path, monkeypatch, capsys):
    """What an earlier kdrun left behind: Hydra rewrote .hydra/ before kdrun refused the other run."""
    runs = tmp_path / "runs"
    for epochs, name in ((2, "a"), (3, "b")):
        assert kdrun_in_process([*QUICK, f"train.epochs={epochs}", f"hydra.run.dir={runs / name}"], tmp_path,
                                monkeypatch, capsys)[0] == 0
    shutil.copytree(runs / "b" / ".hydra", runs / "a" / ".hydra", dirs_exist_ok=True)  # a relabelled as 3 epochs
    report = report_rows(capsys, runs)
    assert "2 run(s) in 2 configuration(s): 1 completed, 1 failed" in " ".join(report.split())
    relabelled = read_run(runs / "a")
    assert relabelled.status == "relabelled" and "does not describe this run" in relabelled.error
    assert relabelled.config["train.epochs"] == 2 and relabelled.overrides == []  # what metrics.json says
    assert read_run(runs / "b").status == "completed"
