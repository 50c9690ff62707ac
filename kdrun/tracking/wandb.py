"""logger=wandb: a Weights & Biases run per kdrun run (files in SAVE_DIR/wandb, default the run directory);
a sweep's jobs share the group named by the sweep directory. A resumed run goes on logging to its wandb run
(its id is kept in RUN_DIR/trackers.json) from the step after the last one it logged."""
from __future__ import annotations

import uuid

from kdrun.schema.choice import plain
from kdrun.schema.trackers import WandbConf
from kdrun.tracking.base import STATUS_EXIT_CODES, Tracker, epoch_scalars, save_dir
from kdrun.tracking.registry import TRACKERS
from kdrun.tracking.state import read_state, write_state


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    Config = WandbConf
    module, pip, extra = "wandb", "wandb", "wandb"

    def open(self, config: dict) -> int:
        import wandb

        cfg, where = self.cfg, self.where
        state = read_state(where.run_dir).get("wandb") or {}
        self.id, self.step = state.get("id") or uuid.uuid4().hex[:16], int(state.get("step") or 0)
        group = cfg.group or (str(where.sweep_dir) if where.sweep_dir else None)
        directory = save_dir(cfg, where.run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=plain(cfg.mode), tags=list(cfg.tags),
                              group=group, name=where.name, id=self.id, resume="allow", dir=str(directory),
                              config=config, settings=settings(wandb))
        write_state(where.run_dir, "wandb", {"id": self.id, "step": self.step})
        return self.step

    def log_epoch(self, step: int, entry: dict, stage_index: int, stage_start: bool) -> None:
        self.run.log({**epoch_scalars(entry, stage_index), "stage": entry.get("stage")}, step=step)
        self.step = step
        write_state(self.where.run_dir, "wandb", {"id": self.id, "step": step})  # offline, wandb cannot say

    def log_final(self, step: int, metrics: dict) -> None:
        self.run.summary.update({f"final/{key}": value for key, value in metrics.items()})

    def close(self, status: str) -> None:
        self.run.finish(exit_code=STATUS_EXIT_CODES[status])  # non-zero: wandb marks the run failed


def settings(wandb):
    """Older wandb: the thread start method, since wandb.init hangs in Hydra's jobs when wandb forks its service
    process (wandb's known issue with Hydra). Newer wandb start their service without one and refuse the key;
    there `create_new` keeps the runs of jobs that share a process (hydra/launcher=packed) apart."""
    for keys in ({"start_method": "thread"}, {"reinit": "create_new"}, {}):
        try:
            return wandb.Settings(**keys)
        except (TypeError, ValueError):  # a key this wandb does not take (pydantic's ValidationError: ValueError)
            continue
