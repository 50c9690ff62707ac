"""Schedules: a run as a list of stages, described in `conf/schedule/NAME.yaml` (see `spec`)."""
from kdrun.schedules.spec import Stage, build_stages

__all__ = ["Stage", "build_stages"]
