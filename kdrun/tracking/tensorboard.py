"""logger=tensorboard: SAVE_DIR (default RUN_DIR/tensorboard; in a sweep SWEEP_DIR/tensorboard/JOB, so that
`tensorboard --logdir SWEEP_DIR/tensorboard` shows the sweep's jobs side by side). Scalars by global step,
the stage's name as text where a stage starts, the resolved config as text."""
from __future__ import annotations

import yaml

from kdrun.schema.trackers import TensorBoardConf
from kdrun.tracking.base import Tracker, epoch_scalars, save_dir
from kdrun.tracking.registry import TRACKERS


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    Config = TensorBoardConf
    module, pip, extra = "tensorboard", "tensorboard", "tensorboard"

    def log_dir(self):
        where = self.where
        if where.sweep_dir is not None:
            return save_dir(self.cfg, where.sweep_dir / "tensorboard") / where.job
        return save_dir(self.cfg, where.run_dir / "tensorboard")

    def open(self, config: dict) -> int:
        from torch.utils.tensorboard import SummaryWriter

        path = self.log_dir()
        fresh = not any(path.glob("events.out.tfevents.*"))
        last = 0 if fresh else logged_steps(path)
        self.writer = SummaryWriter(log_dir=str(path))
        if fresh:
            text = yaml.safe_dump(config, sort_keys=False)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # indented: shown as code
        return last

    def log_epoch(self, step: int, entry: dict, stage_index: int, stage_start: bool) -> None:
        for key, value in epoch_scalars(entry, stage_index).items():
            self.writer.add_scalar(key, value, step)
        if stage_start:
            self.writer.add_text("stage", str(entry.get("stage")), step)
        self.writer.flush()  # a killed run keeps what it logged, and a resumed one finds it

    def log_final(self, step: int, metrics: dict) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"final/{key}", value, step)

    def close(self, status: str) -> None:
        self.writer.close()


def logged_steps(path) -> int:
    """The last step of the event files already in `path` (those of the run's earlier attempts)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(path), size_guidance={"scalars": 0})
    events.Reload()
    if "epoch" not in events.Tags().get("scalars", []):
        return 0
    return max(e.step for e in events.Scalars("epoch"))
