"""What every tracker does, and where a run is (its directory, its sweep).

A tracker sees the run's epochs in order, numbered by a global step (1, 2, ... across the stages of a
schedule). `open` returns the last step it already holds: a resumed run replays its recorded epochs through
`on_epoch` (kdrun.training.loop.fit), and the trackers log only the steps after that one.
"""
from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from kdrun.errors import UserError

STATUS_EXIT_CODES = {"completed": 0, "failed": 1, "interrupted": 130}  # as kdrun exits (SIGINT: 130)


@dataclass
class Where:
    """Where a run is: its directory, and for a job of a sweep (`kdrun -m`) the sweep's directory."""
    run_dir: Path
    sweep_dir: Optional[Path] = None
    overrides: str = ""  # the run's command-line overrides (but logger's), as Hydra's `hydra.job.override_dirname`

    @property
    def job(self) -> str:
        """The job's folder in its sweep ("3"), with its overrides: one name per job, the same on a rerun."""
        rel = self.run_dir.relative_to(self.sweep_dir) if self.sweep_dir and self.run_dir.is_relative_to(
            self.sweep_dir) else Path(self.run_dir.name)
        return re.sub(r"[^\w.=,+\-\[\]]+", "_", "-".join(p for p in (rel.as_posix(), self.overrides) if p))

    @property
    def name(self) -> str:
        """The run's name in a tracker: its overrides (the run directory's name if it has none)."""
        if self.sweep_dir:
            return self.job
        return self.overrides or self.run_dir.name


class Tracker(ABC):
    Config: type  # its keys' schema (kdrun.schema.trackers), stored as schema/logger/NAME
    module: Optional[str] = None  # the package it logs with, imported before any training (None: nothing)
    pip: Optional[str] = None  # that package on PyPI
    extra: Optional[str] = None  # kdrun's extra that installs it: pip install -e ".[EXTRA]"

    def __init__(self, name: str, cfg: DictConfig, where: Where):
        self.name, self.cfg, self.where = name, cfg, where

    @classmethod
    def check_installed(cls, name: str) -> None:
        if cls.module is None:
            return
        try:
            importlib.import_module(cls.module)
        except ImportError as e:
            raise UserError(f"logger={name} logs with the package {cls.pip}, which cannot be imported here ({e}). "
                            f"Install it with pip install -e \".[{cls.extra}]\" in your kdrun checkout (or pip "
                            f"install {cls.pip}).") from None

    @abstractmethod
    def open(self, config: dict) -> int:
        """Start the tracker's run, or resume the run directory's; log the resolved config. Returns the last
        step it already holds (0: none)."""

    @abstractmethod
    def log_epoch(self, step: int, entry: dict, stage_index: int, stage_start: bool) -> None:
        """One epoch of metrics.json's history (with its `images_per_s`); `stage_start`: its stage's first."""

    @abstractmethod
    def log_final(self, step: int, metrics: dict) -> None:
        """The run's final numbers (`final_scalars` of metrics.json), at the run's last step (logged as
        final/KEY where they share a namespace with the epochs' numbers)."""

    @abstractmethod
    def close(self, status: str) -> None:
        """completed, failed or interrupted (a resumable run)."""


def save_dir(cfg: DictConfig, default: Path) -> Path:
    """The tracker's `save_dir`, or its default place."""
    return Path(str(cfg.save_dir)).expanduser() if cfg.get("save_dir") else default


def epoch_scalars(entry: dict, stage_index: int) -> dict[str, int | float]:
    """An epoch of metrics.json's history as numbers: train_loss, loss/TERM for each of the method's terms,
    lr, test_acc, val_acc, images_per_s, the stage's own epoch and the stage's index (1, 2, ...)."""
    out = {"train_loss": entry.get("train_loss"), "lr": entry.get("lr"), "test_acc": entry.get("test_acc"),
           "val_acc": entry.get("val_acc"), "images_per_s": entry.get("images_per_s"), "epoch": entry.get("epoch"),
           "stage_index": stage_index}
    out.update({f"loss/{term}": value for term, value in (entry.get("losses") or {}).items()})
    return {k: v for k, v in out.items() if _number(v)}


def final_scalars(metrics: dict) -> dict[str, int | float]:
    """metrics.json's top-level numbers: test_acc, best_test_acc, train_images_per_s, wall_time_s, ..."""
    return {k: v for k, v in metrics.items() if _number(v)}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
