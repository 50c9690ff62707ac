"""Sweeps: the summary that `kdrun -m` writes, the local_gpus launcher, the slurm config, sweep presets."""
import csv
from pathlib import Path

import pytest
import yaml

from conftest import QUICK, REPO, compose_config, kdrun_cli, read_json, run_dirs
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (fixture: tiny models on one thread)
from hydra_plugins.kdrun_launchers.slots import Slot, free_slot, plan_slots, visible_gpus
from kdrun.results.report import main as report_main

ZOO = {"mlp_1200", "mlp_800", "wrn16_1", "wrn16_2", "wrn16_4", "wrn40_1", "wrn40_2", "wrn10_4", "wrn22_4", "resnet8",
       "resnet14", "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4", "vgg8", "vgg13",
       "mobilenetv2", "shufflenetv1", "shufflenetv2"}  # the zoo docs/models.md lists (plain2..plain10 aside)


def test_slots_round_robin_over_gpus_and_first_free_slot():
    slots = plan_slots(["0", "1"], jobs_per_device=2, cpu_jobs=5, cores=16)
    assert [s.gpu for s in slots] == ["0", "1", "0", "1"]  # the first jobs spread over both GPUs
    assert [s.threads for s in slots] == [4, 4, 4, 4]
    assert slots[1].env() == {"CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    assert free_slot(slots, set()) == slots[0]
    assert free_slot(slots, {0}).gpu == "1"
    assert free_slot(slots, {0, 1}).gpu == "0"
    assert free_slot(slots, {0, 2, 3}) == slots[1]  # a job that finished on GPU 1 frees GPU 1
    assert free_slot(slots, {0, 1, 2, 3}) is None
    three = plan_slots(["2", "5", "7"], jobs_per_device=1, cpu_jobs=1, cores=2)
    assert [(s.gpu, s.threads) for s in three] == [("2", 1), ("5", 1), ("7", 1)]


def test_slots_without_gpus_split_the_cores():
    slots = plan_slots([], jobs_per_device=4, cpu_jobs=3, cores=8)
    # fields, not Slot objects: Hydra's plugin scan may have executed slots.py again (another Slot class)
    assert [(s.index, s.gpu, s.threads) for s in slots] == [(0, None, 2), (1, None, 2), (2, None, 2)]
    assert slots[0].env()["CUDA_VISIBLE_DEVICES"] == "" and slots[0].label == "CPU"
    assert [s.threads for s in plan_slots([], 1, 4, cores=2)] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="jobs_per_device"):
        plan_slots(["0"], jobs_per_device=0, cpu_jobs=1, cores=2)


def test_visible_gpus():
    assert visible_gpus([1, 3], {"CUDA_VISIBLE_DEVICES": "0"}, 8) == ["1", "3"]
    assert visible_gpus(None, {"CUDA_VISIBLE_DEVICES": "2,3"}, 8) == ["2", "3"]
    assert visible_gpus(None, {"CUDA_VISIBLE_DEVICES": ""}, 8) == []
    assert visible_gpus(None, {"CUDA_VISIBLE_DEVICES": "0,-1,1"}, 8) == ["0"]
    assert visible_gpus(None, {}, 2) == ["0", "1"]
    assert visible_gpus([], {}, 2) == []


def test_launcher_plugin_is_found_and_configured():
    from hydra.core.plugins import Plugins

    assert "hydra_plugins.kdrun_launchers.local_gpus.LocalGpusLauncher" in Plugins.instance().class_name_to_class
    launcher = compose_config(["hydra/launcher=local_gpus", "hydra.launcher.cpu_jobs=3"], return_hydra_config=True).hydra.launcher
    assert launcher._target_ == "hydra_plugins.kdrun_launchers.local_gpus.LocalGpusLauncher"
    assert (launcher.gpus, launcher.jobs_per_device, launcher.cpu_jobs) == (None, 1, 3)


def test_slurm_launcher_config():
    data = yaml.safe_load((REPO / "conf" / "hydra" / "launcher" / "slurm.yaml").read_text())
    assert data["defaults"] == ["/schema/launcher/slurm@_here_", "_self_"]
    assert data["gpus_per_node"] == 1 and data["tasks_per_node"] == 1 and data["nodes"] == 1
    assert {"partition", "account", "timeout_min", "cpus_per_task", "mem_gb", "signal_delay_s", "max_num_timeout",
            "array_parallelism"} <= set(data)
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    launcher = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True).hydra.launcher
    assert launcher._target_ == "hydra_plugins.kdrun_launchers.slurm.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, data["timeout_min"])
    assert (launcher.pack, launcher.max_members, launcher.qos) == (False, None, None)  # kdrun's keys and submitit's


def test_sweep_presets():
    params = compose_config(["sweep=kd_grid"], return_hydra_config=True).hydra.sweeper.params
    assert params["method"] == "kd"
    assert params["method.T"] == "1,2,4,8,16" and params["method.alpha"] == "0.1,0.5,0.9,0.99"
    params = compose_config(["sweep=crd_table"], return_hydra_config=True).hydra.sweeper.params
    assert {"ce", "kd", "crd", "dkd"} <= set(params["method"].split(","))
    pairs = params["pair"].split(",")
    assert len(pairs) == 7 and all((REPO / "conf" / "pair" / f"{p}.yaml").is_file() for p in pairs)
    assert params["train.epochs"] == "240" and params["train.milestones"] == "[150,180,210]"


def test_pair_presets(tmp_path):
    from kdrun.models import MODELS

    assert ZOO <= set(MODELS.names())
    for path in sorted((REPO / "conf" / "pair").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        teacher, student = data["defaults"][0]["override /teacher"], data["defaults"][1]["override /student"]
        assert path.stem == f"{teacher}-{student}" and {teacher, student} <= set(MODELS.names()), path
        cfg = compose_config([f"pair={path.stem}"])
        assert (cfg.teacher.name, cfg.student.name) == (teacher, student)
    # A pair preset replaces the default teacher and student.
    (tmp_path / "pair").mkdir()
    (tmp_path / "pair" / "swap.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /teacher: mlp_800\n  - override /student: mlp_1200\n")
    cfg = compose_config(["pair=swap", f"hydra.searchpath=[file://{tmp_path}]"])
    assert (cfg.teacher.name, cfg.student.name) == ("mlp_800", "mlp_1200")
    # ... also those of an experiment preset, whose recipe stays.
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "recipe.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /teacher: mlp_1200\n  - override /student: mlp_800\n"
        "train:\n  epochs: 7\n")
    cfg = compose_config(["experiment=recipe", "pair=swap", f"hydra.searchpath=[file://{tmp_path}]"])
    assert (cfg.teacher.name, cfg.student.name, cfg.train.epochs) == ("mlp_800", "mlp_1200", 7)


def test_a_run_after_a_failed_sweep_in_the_same_process_exits_0(tmp_path, monkeypatch, capsys):
    """Scripts and tests call kdrun's main() more than once: a sweep's failed job is not the next run's."""
    code, _ = kdrun_in_process(["-m", *QUICK, "method.T=1,-1", f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path,
                               monkeypatch, capsys)
    assert code == 1
    code, out = kdrun_in_process([*QUICK, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, monkeypatch, capsys)
    assert code == 0, out


def _summary_rows(sweep: Path) -> list[dict]:
    return list(csv.DictReader((sweep / "summary.csv").open()))


def test_sweep_with_a_failing_grid_point_writes_the_summary(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    monkeypatch.setenv("COLUMNS", "200")
    code, out = kdrun_in_process(["-m", *QUICK, "method.T=1,-1", "method.alpha=0.5,0.9", f"hydra.sweep.dir={sweep}"],
                                 tmp_path, monkeypatch, capsys)
    assert code == 1, out
    assert "2 of 4 runs did not complete" in out and "Traceback" not in out
    runs = run_dirs(sweep)
    assert len(runs) == 4
    failed = [m for m in (read_json(r / "metrics.json") for r in runs) if m["status"] == "failed"]
    assert len(failed) == 2 and all("method.T" in m["error"] for m in failed)
    rows = _summary_rows(sweep)
    assert len(rows) == 4
    assert sorted((r["method.T"], r["n"], r["failed"]) for r in rows) == [
        ("-1", "0", "1"), ("-1", "0", "1"), ("1", "1", "0"), ("1", "1", "0")]
    assert "Runs that did not complete" in (sweep / "summary.md").read_text()

    capsys.readouterr()
    report_main([str(sweep), "--pivot", "method.T", "method.alpha"])
    grid = capsys.readouterr().out.split("(columns)")[1]
    assert "failed" in grid and "-1" in grid


def test_local_gpus_launcher_runs_a_packed_group_and_a_job_alone_at_once_on_cpu(tmp_path):
    """Two processes at once: jobs #0 and #1 packed in one (hydra.launcher.pack=true), #2 alone in the other
    (the path of every job without pack); three seeds of one configuration, pooled by the summary."""
    sweep = tmp_path / "sweep"
    proc = kdrun_cli(["-m", "hydra/launcher=local_gpus", "hydra.launcher.cpu_jobs=2", "hydra.launcher.pack=true",
                      "hydra.launcher.max_members=2", *QUICK, "seed=0,1,2", "data_seed=0", "teacher.seed=0",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Launching 3 jobs locally, 2 at a time (CPU, CPU;" in out
    assert "Packing 3 jobs: 1 group(s), 1 job(s) alone" in out and "packed together: #0, #1" in out
    assert "#2 alone: the last of its group after hydra.launcher.max_members=2" in out
    assert "#1 on CPU (packed with #0)" in out and all(f"#{i} completed" in out for i in range(3))
    runs = run_dirs(sweep)
    assert [r.name for r in runs] == ["0", "1", "2"]
    for r in runs:
        assert read_json(r / "metrics.json")["status"] == "completed"
        log = (r / "kdrun.log").read_text()  # each member's log holds its own lines only
        assert f"Run directory: {r}" in log and all(f"Run directory: {o}\n" not in log for o in runs if o != r)
    group_output = (sweep / "0" / "output.log").read_text()
    assert "test acc" in group_output and str(sweep / "1") in group_output  # both members' console lines
    assert str(sweep / "0" / "output.log") in (sweep / "1" / "output.log").read_text()
    assert "test acc" in (sweep / "2" / "output.log").read_text()  # the job's own console output
    (row,) = _summary_rows(sweep)  # three seeds of one configuration
    assert (row["n"], row["failed"], row["seeds"]) == ("3", "0", "0 1 2")
    assert not (sweep / ".launcher").exists()  # the hand-off files are cleaned up


def test_a_job_process_that_dies_is_recorded_as_failed(tmp_path):
    import subprocess
    import sys
    import time

    from hydra.core.utils import JobStatus
    from hydra_plugins.kdrun_launchers.local_gpus import LocalGpusLauncher, _Running

    dirs = {i: tmp_path / str(i) for i in (0, 1)}  # a packed group's process: both members fail with it
    for d in dirs.values():
        d.mkdir()
        (d / "metrics.json").write_text('{"status": "running", "test_acc": null}')
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    job = _Running([0, 1], {0: ["seed=0"], 1: ["seed=1"]}, Slot(0, None, 1), dirs, tmp_path / "job-0.result.pkl",
                   process, time.perf_counter())
    results = LocalGpusLauncher()._collect(job)
    for i in (0, 1):
        assert results[i].status == JobStatus.FAILED and "ended with exit status 3" in str(results[i]._return_value)
        metrics = read_json(dirs[i] / "metrics.json")
        assert metrics["status"] == "failed" and "exit status 3" in metrics["error"]
        assert str(dirs[0] / "output.log") in metrics["error"]  # the group's console output


def test_slurm_launcher_packs_one_group_per_array_task(tmp_path, monkeypatch, capsys):
    """hydra.launcher.pack=true: one submitit array task per packed group, run the way submitit runs it
    (the task pickled with cloudpickle and called), here in this process instead of on a cluster."""
    submitit = pytest.importorskip("submitit")
    import cloudpickle

    calls = {}

    class Job:
        def __init__(self, value):
            self.value = value

        def results(self):
            return [self.value]

    class Executor:
        def __init__(self, cluster, folder, **init):
            calls["init"] = (cluster, init)

        def update_parameters(self, **params):
            calls["params"] = params

        def map_array(self, task, *columns):
            calls["tasks"] = list(zip(*columns))
            task = cloudpickle.loads(cloudpickle.dumps(task))
            return [Job(task(*args)) for args in zip(*columns)]

    monkeypatch.setattr(submitit, "AutoExecutor", Executor)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: type("Env", (), {"job_id": "77_0"})())
    sweep = tmp_path / "sweep"
    code, out = kdrun_in_process(["-m", "hydra/launcher=slurm", "hydra.launcher.pack=true",
                                  "hydra.launcher.partition=gpu", *QUICK, "method.T=2,4", "train.batch_size=32,16",
                                  f"hydra.sweep.dir={sweep}"], tmp_path, monkeypatch, capsys)
    assert code == 0, out
    assert calls["init"] == ("slurm", {"slurm_max_num_timeout": 5})
    assert calls["params"]["slurm_partition"] == "gpu" and not any("pack" in k or "members" in k for k in calls["params"])
    assert [nums for _, nums, _ in calls["tasks"]] == [[0, 1], [2, 3]]  # one array task per group
    runs = run_dirs(sweep)
    assert [r.name for r in runs] == ["0", "1", "2", "3"]
    assert all(read_json(r / "metrics.json")["status"] == "completed" for r in runs)
    assert len(_summary_rows(sweep)) == 4
