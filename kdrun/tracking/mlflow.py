"""logger=mlflow: an MLflow run per kdrun run, in `experiment_name` at `tracking_uri` (default
$MLFLOW_TRACKING_URI, else the file store outputs/mlruns). A sweep's jobs are nested runs of one parent run
(tag mlflow.parentRunId), made by its first job and kept in SWEEP_DIR/trackers.json; the sweep's end marks it
finished (kdrun.tracking.sweep). A resumed run goes on logging to its MLflow run (its id is kept in
RUN_DIR/trackers.json) from the step after the last one that run holds."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from kdrun.schema.trackers import MlflowConf
from kdrun.tracking.base import Tracker, epoch_scalars
from kdrun.tracking.registry import TRACKERS
from kdrun.tracking.state import locked, read_state, write_state

STATUSES = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
PARAM_LENGTH = 500  # the longest parameter value every MLflow version takes (config.yaml holds longer ones whole)
BATCH = 100  # parameters per log_batch call (MLflow's limit)


def tracking_uri(cfg) -> str:
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "outputs/mlruns"
    if "://" not in uri and not uri.startswith("file:"):  # a folder: absolute, the same from every job
        uri = Path(uri).expanduser().absolute().as_uri()
    return uri


def allow_file_store(uri: str) -> None:
    """MLflow 3 keeps its file store "in maintenance" and refuses it unless told; it is the store that
    mlflow-skinny reads and writes without a database or a server."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    allow_file_store(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another job of the sweep made it just now
        return client.get_experiment_by_name(name).experiment_id


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    Config = MlflowConf
    module, pip, extra = "mlflow", "mlflow-skinny", "mlflow"

    def open(self, config: dict) -> int:
        where = self.where
        self.uri = tracking_uri(self.cfg)
        self.client = client = client_for(self.uri)
        experiment = experiment_id(client, str(self.cfg.experiment_name))
        self.run_id = self.resumed(experiment)
        if self.run_id is None:
            tags = {"kdrun.run_dir": str(where.run_dir)}
            parent = self.parent(experiment) if where.sweep_dir else None
            if parent:
                tags["mlflow.parentRunId"] = parent
            self.run_id = client.create_run(experiment, run_name=where.name, tags=tags).info.run_id
            write_state(where.run_dir, "mlflow", {"tracking_uri": self.uri, "run_id": self.run_id})
        else:
            client.update_run(self.run_id, status="RUNNING")
        self.log_config(config)
        history = client.get_metric_history(self.run_id, "epoch")
        return max((m.step for m in history), default=0)

    def resumed(self, experiment: str) -> Optional[str]:
        """The MLflow run of the run directory's earlier attempt, if it is in this store and experiment."""
        state = read_state(self.where.run_dir).get("mlflow") or {}
        if state.get("tracking_uri") != self.uri or not state.get("run_id"):
            return None
        try:
            run = self.client.get_run(state["run_id"])
        except Exception:  # deleted from the store since
            return None
        return run.info.run_id if run.info.experiment_id == experiment else None

    def parent(self, experiment: str) -> str:
        """The sweep's parent run in this store and experiment: made by the first job that asks."""
        sweep = self.where.sweep_dir
        with locked(sweep):
            parents = read_state(sweep).get("mlflow") or []
            for p in parents:
                if (p["tracking_uri"], p["experiment_id"]) == (self.uri, experiment):
                    self.client.update_run(p["run_id"], status="RUNNING")
                    return p["run_id"]
            run = self.client.create_run(experiment, run_name=sweep.name, tags={"kdrun.sweep_dir": str(sweep)})
            parents.append({"tracking_uri": self.uri, "experiment_id": experiment, "run_id": run.info.run_id})
            write_state(sweep, "mlflow", parents)
            return run.info.run_id

    def log_config(self, config: dict) -> None:
        """The resolved config: whole as the artifact config.yaml, and as parameters (dotted keys). A resumed
        run's parameters stay as first logged: MLflow refuses to change them (a key outside the run's identity,
        e.g. device, may differ)."""
        from mlflow.entities import Param

        held = self.client.get_run(self.run_id).data.params
        params = [Param(k, str(v)[:PARAM_LENGTH]) for k, v in flatten(config).items() if k not in held]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])
        self.client.log_dict(self.run_id, config, "config.yaml")

    def log_epoch(self, step: int, entry: dict, stage_index: int, stage_start: bool) -> None:
        self.log_metrics(epoch_scalars(entry, stage_index), step)
        if stage_start:
            self.client.set_tag(self.run_id, f"stage_{stage_index}", str(entry.get("stage")))

    def log_final(self, step: int, metrics: dict) -> None:
        self.log_metrics({f"final/{key}": value for key, value in metrics.items()}, step)

    def log_metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, STATUSES[status])


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def finish_parents(sweep_dir: Path) -> None:
    """The sweep's parent runs: finished once its jobs have run (a rerun of the sweep reopens them)."""
    for p in read_state(sweep_dir).get("mlflow") or []:
        client_for(p["tracking_uri"]).set_terminated(p["run_id"], "FINISHED")
