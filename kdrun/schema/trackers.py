"""The keys of each experiment tracker (`logger=NAME`, conf/logger/NAME.yaml; the trackers: kdrun.tracking).
Stored as `schema/logger/NAME` (kdrun.configs); a tracker's file names its schema in its defaults list."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from kdrun.schema.choice import Choice


class WandbMode(Choice):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class CsvConf:
    save_dir: Optional[str] = None  # null: RUN_DIR/csv


@dataclass
class TensorBoardConf:
    save_dir: Optional[str] = None  # null: RUN_DIR/tensorboard; a sweep's job: SWEEP_DIR/tensorboard/JOB


@dataclass
class WandbConf:
    project: str = "kdrun"
    entity: Optional[str] = None  # null: your default entity
    mode: Optional[WandbMode] = None  # null: $WANDB_MODE, else online
    tags: List[str] = field(default_factory=list)
    group: Optional[str] = None  # null: a sweep's jobs are grouped by the sweep directory
    save_dir: Optional[str] = None  # null: the run directory (wandb writes RUN_DIR/wandb/)


@dataclass
class MlflowConf:
    tracking_uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else file:outputs/mlruns
    experiment_name: str = "kdrun"
