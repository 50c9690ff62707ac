"""logger=csv: every epoch as a row of SAVE_DIR/metrics.csv (default RUN_DIR/csv), the final numbers in
final.csv, the resolved config in config.yaml. Needs no package."""
from __future__ import annotations

import csv
import io

import yaml

from kdrun.schema.trackers import CsvConf
from kdrun.tracking.base import Tracker, epoch_scalars, save_dir
from kdrun.tracking.registry import TRACKERS
from kdrun.training.checkpoint import atomic_write

FIRST_COLUMNS = ["step", "stage", "stage_index", "epoch", "train_loss", "lr", "test_acc", "val_acc", "images_per_s"]


@TRACKERS.register("csv")
class CsvTracker(Tracker):
    Config = CsvConf

    def open(self, config: dict) -> int:
        self.dir = save_dir(self.cfg, self.where.run_dir / "csv")
        text = yaml.safe_dump(config, sort_keys=False).encode()
        atomic_write(self.dir / "config.yaml", lambda f: f.write(text))
        try:  # a resumed run's earlier rows: its new epochs come after them
            with open(self.dir / "metrics.csv", newline="") as f:
                self.rows = [row for row in csv.DictReader(f) if (row.get("step") or "").isdigit()]
        except OSError:
            self.rows = []
        return max((int(row["step"]) for row in self.rows), default=0)

    def log_epoch(self, step: int, entry: dict, stage_index: int, stage_start: bool) -> None:
        # the whole file again: a later stage's method brings other loss terms, hence other columns
        self.rows.append({"step": step, "stage": entry.get("stage"), **epoch_scalars(entry, stage_index)})
        write_csv(self.dir / "metrics.csv", self.rows)

    def log_final(self, step: int, metrics: dict) -> None:
        write_csv(self.dir / "final.csv", [{"step": step, **metrics}])

    def close(self, status: str) -> None:
        pass  # every file is complete once written


def write_csv(path, rows: list[dict]) -> None:
    seen = dict.fromkeys(k for row in rows for k in row)
    columns = [c for c in FIRST_COLUMNS if c in seen] + [c for c in seen if c not in FIRST_COLUMNS]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = out.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))
