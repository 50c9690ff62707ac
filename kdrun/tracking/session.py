"""A run's trackers together: made and checked before any training (a tracker whose package is missing is
refused there), opened around the training, given every epoch with its global step, closed with how the run
ended (completed, failed, interrupted)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from kdrun.errors import UserError
from kdrun.tracking.base import Tracker, Where, final_scalars
from kdrun.tracking.registry import TRACKERS
from kdrun.distributed import is_main

TIMING = "images_per_s"  # the trackers' alone: metrics.json's history holds what a rerun reproduces exactly


class Trackers:
    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers
        self.holds: dict[int, int] = {}  # an open tracker's index -> the last step it held when opened
        self.step, self.stage, self.stage_index = 0, None, 0

    @classmethod
    def for_run(cls, cfg: DictConfig, run_dir: Path) -> "Trackers":
        """The trackers `logger` asks for, each checked to be installed (nothing is opened yet)."""
        node = cfg.get("logger")
        if not node or not is_main():  # several processes train one run: rank 0 logs, as it writes the files
            return cls([])
        where = where_of(Path(run_dir))
        trackers = []
        for name in node:
            if node[name] is not None:
                kind = TRACKERS.get(str(name))
                kind.check_installed(str(name))
                trackers.append(kind(str(name), node[name], where))
        return cls(trackers)

    def on_epoch(self, record_epoch: Callable[[dict], None]) -> Callable[[dict], None]:
        """The runner's `on_epoch`: the run's record first, then each open tracker, with the epoch's global
        step; a tracker gets only the steps after those it held (a resumed run replays its epochs)."""
        def epoch(entry: dict) -> None:
            record_epoch({k: v for k, v in entry.items() if k != TIMING})
            self.step += 1
            stage_start = entry.get("stage") != self.stage
            if stage_start:
                self.stage, self.stage_index = entry.get("stage"), self.stage_index + 1
            for i, held in self.holds.items():
                if self.step > held:
                    self.trackers[i].log_epoch(self.step, entry, self.stage_index, stage_start)
        return epoch

    @contextlib.contextmanager
    def running(self, cfg: DictConfig, record):
        """Open the trackers (each logs the resolved config) for the block; at its end each logs the final
        numbers of `record` (a RunRecord) and is closed completed, or failed or interrupted as the block was."""
        status = "failed"
        try:
            if self.trackers:
                config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
                for i, tracker in enumerate(self.trackers):
                    self.holds[i] = opened(tracker, config)
            yield self
            for i in self.holds:
                self.trackers[i].log_final(self.step, final_scalars(record.metrics))
            status = "completed"
        except (KeyboardInterrupt, SystemExit):  # a signal, or submitit's requeue: the run resumes later
            status = "interrupted"
            raise
        finally:
            for i in self.holds:
                self.trackers[i].close(status)
            self.holds = {}


def opened(tracker: Tracker, config: dict) -> int:
    """`tracker.open`, its failure (a login, a server, a store) said in one paragraph: before any training."""
    try:
        return tracker.open(config)
    except UserError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"logger={tracker.name} could not start its run ({type(e).__name__}: {first}). Check "
                        f"logger.{tracker.name}'s keys (kdrun --cfg job logger={tracker.name} prints them), or "
                        f"leave the tracker out.") from e


def where_of(run_dir: Path) -> Where:
    """The run's place, from Hydra's config of the job (a run made without Hydra: its directory alone)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return Where(run_dir.absolute())
    hydra = HydraConfig.get()
    sweep = Path(str(hydra.sweep.dir)).absolute() if hydra.mode == RunMode.MULTIRUN else None
    overrides = [str(o) for o in hydra.overrides.task if not str(o).lstrip("+~").startswith("logger")]
    return Where(run_dir.absolute(), sweep, ",".join(sorted(overrides)))
