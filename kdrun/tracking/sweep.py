"""A sweep's own tracker runs: MLflow's parent run, which the sweep's first job makes (kdrun.tracking.mlflow)
and which is marked finished when `kdrun -m` ends. `SweepTrackers` is a Hydra callback (conf/config.yaml,
`hydra.callbacks`), called in the process that launched the jobs, whichever launcher ran them."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdrun.tracking.state import read_state

log = logging.getLogger("kdrun")


class SweepTrackers(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        if not read_state(sweep_dir).get("mlflow"):
            return
        from kdrun.tracking.mlflow import finish_parents

        try:
            finish_parents(sweep_dir)
        except Exception as e:  # the runs are logged; only the parent's status is left as it was
            log.warning("The sweep's MLflow parent run could not be marked finished (%s: %s).", type(e).__name__, e)
