"""`metrics.json`: one per run, rewritten atomically as the run goes (its keys: docs/runs-and-resuming.md)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from kdrun.training.checkpoint import save_json

METRICS_FILE = "metrics.json"


def read_metrics(run_dir: Path) -> Optional[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None


class RunRecord:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.metrics: dict = read_metrics(self.run_dir) or {}

    @property
    def previous_status(self) -> Optional[str]:
        return self.metrics.get("status")

    def write(self) -> None:
        save_json(self.path, self.metrics)

    def start(self, fields: dict) -> None:
        """Begin (or resume) a run: earlier wall time is kept, the history is rebuilt by the stages."""
        self._earlier_wall = float(self.metrics.get("wall_time_s") or 0.0)
        self.metrics = {"status": "running", "test_acc": None, "teacher_test_acc": None, **fields,
                        "wall_time_s": self._earlier_wall, "train_images_per_s": None, "history": []}
        self.write()

    def update(self, **fields) -> None:
        self.metrics.update(fields)
        self.write()

    def add_epoch(self, entry: dict) -> None:
        self.metrics.setdefault("history", []).append(entry)
        self.write()

    def finish(self, status: str, **fields) -> None:
        self.metrics.update(fields)
        self.metrics["status"] = status
        self.write()
