"""Experiment trackers (`logger=...`, kdrun.tracking): real runs on the embedded digits, each tracker's
logs read back with the tracker's own reader; sweeps grouped; resumed runs log each epoch once; a missing
package refused before any training; `logger` outside a run's identity."""
import csv
import json
import os
import struct
import sys

import pytest
import yaml

from conftest import REPO, compose_config, compose_refusal, read_json
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)

TINY = ["dataset=digits", "dataset.train_size=64", "dataset.test_size=32", "train.epochs=2", "train.batch_size=32",
        "teacher.train.epochs=1", "teacher.train.batch_size=32", "teacher=mlp", "teacher.hidden=[32]",
        "student=mlp", "student.hidden=[16]", "progress=false", "device=cpu"]


@pytest.fixture(autouse=True)
def tracker_env(tmp_path, monkeypatch):
    """wandb offline, its settings and caches in tmp_path; MLflow at kdrun's default place (tmp_path/outputs)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # kdrun sets it for a file store; this puts it back


def kdrun(args, tmp_path, monkeypatch, capsys, expect=0) -> str:
    code, out = kdrun_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == expect, out
    return out


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tensorboard_scalars(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return {**scalars, "_text": events.Tags()["tensors"]}


def mlflow_client(root):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=(root / "outputs" / "mlruns").as_uri())  # kdrun's default, below where it ran


def mlflow_runs(client) -> list:
    return client.search_runs([client.get_experiment_by_name("kdrun").experiment_id])


def wandb_records(path) -> list:
    """The records of a wandb offline run file (run-ID.wandb): a 7-byte header (:W&B, magic, version),
    then LevelDB's log format (32 KiB blocks; records of crc32, length, type; FULL, or FIRST, MIDDLE, LAST)
    that hold wandb's Record protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def wandb_run(run_dir) -> dict:
    """What the offline runs in RUN_DIR/wandb hold: config, history rows (step -> values), summary, exit codes."""
    out = {"config": {}, "history": [], "summary": {}, "exit_codes": [], "groups": set(), "ids": set()}
    key = lambda item: "/".join(item.nested_key) or item.key  # noqa: E731
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for r in wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
                out["groups"].add(r.run.run_group)
                out["ids"].add(r.run.run_id)
            elif kind == "history":
                out["history"].append({key(i): json.loads(i.value_json) for i in r.history.item})
            elif kind == "summary":
                out["summary"].update({key(u): json.loads(u.value_json) for u in r.summary.update})
            elif kind == "exit":
                out["exit_codes"].append(r.exit.exit_code)
    return out


def test_csv_logs_the_config_every_epoch_and_the_final_numbers(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    kdrun([*TINY, "logger=csv", f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch, capsys)
    metrics = read_json(run_dir / "metrics.json")
    rows = csv_rows(run_dir / "csv" / "metrics.csv")
    assert [(r["step"], r["stage"], r["epoch"]) for r in rows] == [("1", "kd", "1"), ("2", "kd", "2")]
    for row, entry in zip(rows, metrics["history"]):
        assert float(row["test_acc"]) == entry["test_acc"] and float(row["lr"]) == entry["lr"]
        assert float(row["loss/kd"]) == entry["losses"]["kd"] and float(row["train_loss"]) == entry["train_loss"]
        assert float(row["images_per_s"]) > 0
    assert all("images_per_s" not in h for h in metrics["history"])  # metrics.json: what a rerun reproduces
    (final,) = csv_rows(run_dir / "csv" / "final.csv")
    assert float(final["test_acc"]) == metrics["test_acc"] and float(final["wall_time_s"]) == metrics["wall_time_s"]
    config = yaml.safe_load((run_dir / "csv" / "config.yaml").read_text())
    assert config["method"]["T"] == 4.0 and config["cache_dir"] == str(tmp_path / "cache")  # resolved


def test_tensorboard_logs_scalars_by_step_and_the_config(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    kdrun([*TINY, "logger=tensorboard", f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch, capsys)
    metrics = read_json(run_dir / "metrics.json")
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    assert scalars["test_acc"] == [(i + 1, pytest.approx(h["test_acc"])) for i, h in enumerate(metrics["history"])]
    assert [s for s, _ in scalars["loss/ce"]] == [1, 2] and [s for s, _ in scalars["images_per_s"]] == [1, 2]
    assert scalars["final/test_acc"] == [(2, pytest.approx(metrics["test_acc"]))]
    assert {"config/text_summary", "stage/text_summary"} <= set(scalars["_text"])


def test_mlflow_logs_params_metrics_and_the_config_at_its_default_file_store(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    kdrun([*TINY, "logger=mlflow", "method.T=3", f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch, capsys)
    metrics = read_json(run_dir / "metrics.json")
    client = mlflow_client(tmp_path)
    (run,) = mlflow_runs(client)
    assert run.info.status == "FINISHED" and run.data.params["method.T"] == "3.0"
    assert run.data.tags["mlflow.runName"].startswith("dataset.test_size=32")  # the command's overrides
    history = client.get_metric_history(run.info.run_id, "test_acc")
    assert [(m.step, m.value) for m in history] == [(i + 1, h["test_acc"]) for i, h in enumerate(metrics["history"])]
    assert run.data.metrics["final/test_acc"] == metrics["test_acc"]
    assert run.data.tags["stage_1"] == "kd"
    config = yaml.safe_load(open(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))))
    assert config["method"]["T"] == 3.0


def test_wandb_offline_run_holds_the_config_history_and_summary(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    kdrun([*TINY, "logger=wandb", "logger.wandb.tags=[digits]", f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch,
          capsys)
    metrics = read_json(run_dir / "metrics.json")
    logged = wandb_run(run_dir)
    assert logged["config"]["method"]["T"] == 4.0 and logged["groups"] == {""}  # no sweep, no group
    assert [(h["_step"], h["test_acc"], h["stage"]) for h in logged["history"]] == \
        [(i + 1, h["test_acc"], "kd") for i, h in enumerate(metrics["history"])]
    assert logged["summary"]["final/test_acc"] == metrics["test_acc"] and logged["exit_codes"] == [0]


def test_a_failed_run_finishes_its_wandb_and_mlflow_runs_as_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDRUN_TEST_NAN_STEP", "3")  # epoch 2's first step: the loss diverges
    run_dir = tmp_path / "run"
    out = kdrun([*TINY, "logger=[wandb,mlflow]", "+student._target_=faulty_student.FaultyMLP",
                 f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch, capsys, expect=2)
    assert "the training loss became nan" in out
    logged = wandb_run(run_dir)
    assert [h["_step"] for h in logged["history"]] == [1] and logged["exit_codes"] == [1]
    (run,) = mlflow_runs(mlflow_client(tmp_path))
    assert run.info.status == "FAILED"


def test_logger_list_and_many_select_several_trackers():
    assert set(compose_config(["logger=[csv,tensorboard]"]).logger) == {"csv", "tensorboard"}
    assert set(compose_config(["logger=many"]).logger) == {"csv", "tensorboard", "wandb"}
    assert compose_config([]).logger is None


def test_a_sweep_groups_its_jobs_mlflow_parent_tensorboard_folder_wandb_group(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    kdrun(["-m", *TINY, "train.epochs=1", "method.T=2,4", "logger=[mlflow,tensorboard,wandb]",
           f"hydra.sweep.dir={sweep}"], tmp_path, monkeypatch, capsys)
    runs = mlflow_runs(mlflow_client(tmp_path))
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2 and parent.info.status == "FINISHED"
    assert sorted(r.data.params["method.T"] for r in children) == ["2.0", "4.0"]
    folders = sorted(p.name for p in (sweep / "tensorboard").iterdir())
    assert [f.split("-")[0] for f in folders] == ["0", "1"] and "method.T=2" in folders[0]
    assert all(tensorboard_scalars(sweep / "tensorboard" / f)["final/test_acc"] for f in folders)
    for job in ("0", "1"):
        assert wandb_run(sweep / job)["groups"] == {str(sweep)}


def test_a_resumed_run_logs_each_epoch_once(tmp_path, monkeypatch, capsys):
    """Stopped by SIGINT in epoch 2 (after epoch 1 was logged), then the same command: the replayed epoch 1
    is not logged again by csv, tensorboard, mlflow or wandb; epochs 2 and 3 are logged once."""
    marker = tmp_path / "paused"
    monkeypatch.setenv("KDRUN_TEST_PAUSE", f"3:{marker}:SIGINT")  # 2 steps an epoch: step 3 is in epoch 2
    run_dir = tmp_path / "run"
    args = [*TINY, "train.epochs=3", "logger=[csv,tensorboard,mlflow,wandb]",
            "+student._target_=faulty_student.FaultyMLP", f"hydra.run.dir={run_dir}"]
    out = kdrun(args, tmp_path, monkeypatch, capsys, expect=130)
    assert "interrupted by SIGINT" in out
    assert [r["step"] for r in csv_rows(run_dir / "csv" / "metrics.csv")] == ["1"]
    assert mlflow_runs(mlflow_client(tmp_path))[0].info.status == "KILLED"
    kdrun(args, tmp_path, monkeypatch, capsys)  # the marker exists: it runs through

    metrics = read_json(run_dir / "metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    rows = csv_rows(run_dir / "csv" / "metrics.csv")
    assert [(r["step"], float(r["test_acc"])) for r in rows] == [(str(i + 1), h["test_acc"])
                                                                 for i, h in enumerate(metrics["history"])]
    assert [s for s, _ in tensorboard_scalars(run_dir / "tensorboard")["epoch"]] == [1, 2, 3]
    client = mlflow_client(tmp_path)
    (run,) = mlflow_runs(client)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")] == [1, 2, 3]
    logged = wandb_run(run_dir)
    assert len(logged["ids"]) == 1 and logged["exit_codes"] == [130, 0]  # one wandb run, resumed
    assert [h["_step"] for h in logged["history"]] == [1, 2, 3]


def test_a_tracker_added_on_resuming_gets_the_epochs_before_too(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "paused"
    monkeypatch.setenv("KDRUN_TEST_PAUSE", f"3:{marker}:SIGINT")
    run_dir = tmp_path / "run"
    args = [*TINY, "+student._target_=faulty_student.FaultyMLP", f"hydra.run.dir={run_dir}"]
    kdrun(args, tmp_path, monkeypatch, capsys, expect=130)  # interrupted in epoch 2, without a tracker
    out = kdrun([*args, "logger=csv"], tmp_path, monkeypatch, capsys)  # the same run, resumed
    assert "resuming from" in out
    assert [r["step"] for r in csv_rows(run_dir / "csv" / "metrics.csv")] == ["1", "2"]


def test_steps_go_on_across_the_stages_of_a_schedule(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    kdrun([*TINY, "train.epochs=1", "schedule=ban", "schedule.generations=2", "logger=csv", f"hydra.run.dir={run_dir}"],
          tmp_path, monkeypatch, capsys)
    rows = csv_rows(run_dir / "csv" / "metrics.csv")
    assert [(r["step"], r["stage"], r["stage_index"], r["epoch"]) for r in rows] == \
        [("1", "gen1", "1", "1"), ("2", "gen2", "2", "1")]


@pytest.mark.parametrize("name,module,extra", [("wandb", "wandb", "wandb"), ("mlflow", "mlflow", "mlflow"),
                                               ("tensorboard", "tensorboard", "tensorboard")])
def test_a_tracker_that_is_not_installed_is_refused_before_any_training(name, module, extra, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setitem(sys.modules, module, None)  # `import NAME` fails as if it were not installed
    out = kdrun([*TINY, f"logger=[csv,{name}]", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, monkeypatch, capsys,
                expect=2)
    assert f'pip install -e ".[{extra}]"' in out and f"logger={name}" in out
    assert not (tmp_path / "cache").exists()  # no teacher was trained
    assert not read_json(tmp_path / "run" / "metrics.json").get("history")
    assert not (tmp_path / "run" / "csv").exists()  # nor any tracker opened


def test_a_tracker_that_cannot_start_stops_the_run_before_any_training(tmp_path, monkeypatch, capsys):
    out = kdrun([*TINY, "logger=mlflow", "logger.mlflow.tracking_uri=nosuch://x", f"hydra.run.dir={tmp_path / 'run'}"],
                tmp_path, monkeypatch, capsys, expect=2)
    assert "logger=mlflow could not start its run (" in out and "nosuch://x" in out and "Traceback" not in out
    assert "(kdrun --cfg job logger=mlflow prints them)" in out and not (tmp_path / "cache").exists()
    out = kdrun(["--cfg", "job", "logger=mlflow"], tmp_path, monkeypatch, capsys)
    assert "tracking_uri: null" in out and "experiment_name: kdrun" in out


def test_the_pip_extras_install_the_trackers_packages():
    """The refusal's advice holds: each extra it names lists the package, and CI's dev extra has them all."""
    from conftest import read_toml

    from kdrun.tracking import TRACKERS

    project = read_toml((REPO / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    for name in TRACKERS:
        kind = TRACKERS.get(name)
        if kind.module is not None:
            assert any(dep.startswith(kind.pip) for dep in extras[kind.extra]), name
            assert any(dep.startswith(kind.pip) for dep in extras["dev"]), name
    assert "kdrun.tracking" in project["tool"]["setuptools"]["packages"]


def test_logger_is_not_part_of_a_run_identity(tmp_path, monkeypatch, capsys):
    from kdrun.results.identity import NOT_IN_IDENTITY, config_identity
    from kdrun.results.runs import NOT_IN_CONFIGURATION

    assert "logger" in NOT_IN_IDENTITY and "logger" in NOT_IN_CONFIGURATION
    assert config_identity(compose_config(["logger=many"])) == config_identity(compose_config([])) == "2ce19144d1583356"
    run_dir = tmp_path / "run"
    kdrun([*TINY, f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch, capsys)
    out = kdrun([*TINY, "logger=csv", f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch, capsys)
    assert "already completed" in out  # the same run, not another configuration's directory


def test_tracker_key_mistakes_are_refused_with_advice_that_works(tmp_path, monkeypatch, capsys):
    assert "Did you mean logger.csv.save_dir?" in compose_refusal(["logger=csv", "logger.csv.save_dirr=x"])
    assert "expected one of online, offline, disabled" in compose_refusal(["logger=wandb", "logger.wandb.mode=of"])
    message = compose_refusal(["logger.csv.save_dir=x"])
    assert "choose the tracker too, logger=csv logger.csv.save_dir=x." in message
    assert compose_config(["logger=csv", "logger.csv.save_dir=x"]).logger.csv.save_dir == "x"
    out = kdrun([*TINY, "+logger.nope.x=1", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, monkeypatch, capsys,
                expect=2)
    assert "Unknown tracker 'nope'. Valid tracker names (logger=NAME): csv, mlflow, tensorboard, wandb." in out


def test_save_dir_puts_a_trackers_files_elsewhere(tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "logs"
    kdrun([*TINY, "train.epochs=1", "logger=[csv,tensorboard]", f"logger.csv.save_dir={elsewhere / 'csv'}",
           f"logger.tensorboard.save_dir={elsewhere / 'tb'}", f"hydra.run.dir={tmp_path / 'run'}"],
          tmp_path, monkeypatch, capsys)
    assert [r["step"] for r in csv_rows(elsewhere / "csv" / "metrics.csv")] == ["1"]
    assert tensorboard_scalars(elsewhere / "tb")["test_acc"]
    assert not os.path.exists(tmp_path / "run" / "csv")


@pytest.mark.slow
def test_local_gpus_jobs_in_their_own_processes_share_one_mlflow_parent(tmp_path):
    from conftest import kdrun_cli

    sweep = tmp_path / "sweep"
    proc = kdrun_cli(["-m", "hydra/launcher=local_gpus", "hydra.launcher.gpus=[]", "hydra.launcher.cpu_jobs=2", *TINY,
                      "train.epochs=1", "seed=0,1", "logger=[mlflow,wandb]", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                     env={"KDRUN_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = mlflow_runs(mlflow_client(tmp_path))
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 3 and len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert all(wandb_run(sweep / job)["groups"] == {str(sweep)} for job in ("0", "1"))


def test_wandb_gets_the_thread_start_method_where_it_takes_one():
    """wandb.init hangs in Hydra jobs with a forked service; newer wandb refuse the key (and do not fork)."""
    from types import SimpleNamespace

    from kdrun.tracking.wandb import settings

    class Old(dict):
        def __init__(self, **kwargs):
            super().__init__(kwargs)

    class New(dict):
        def __init__(self, **kwargs):
            if "start_method" in kwargs:
                raise ValueError("start_method: Extra inputs are not permitted")
            super().__init__(kwargs)

    assert settings(SimpleNamespace(Settings=Old)) == {"start_method": "thread"}
    assert settings(SimpleNamespace(Settings=New)) == {"reinit": "create_new"}
