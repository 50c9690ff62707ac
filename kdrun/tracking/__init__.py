"""Experiment trackers, chosen with `logger=NAME` (conf/logger/): csv, tensorboard, wandb, mlflow; several
at once with `logger=many` or `logger=[csv,tensorboard]`. Each file registers its tracker (`TRACKERS`)."""
from kdrun.tracking import csv, mlflow, tensorboard, wandb  # noqa: F401  (register)
from kdrun.tracking.registry import TRACKERS  # noqa: F401
from kdrun.tracking.session import Trackers  # noqa: F401
