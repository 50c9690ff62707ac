"""RCO's greedy search of anchors: `schedule=rco schedule.strategy=greedy`.

Jin et al. (ICCV 2019, "Knowledge Distillation via Route Constrained Optimization", Section 3) pick the
anchors on the teacher's route either every few epochs (the equal epoch interval strategy: every anchor
stage of the schedule, in turn) or by a greedy search: the difficulty of a teacher checkpoint for the
student as it stands is the KL divergence between their outputs, and the next anchor is the boundary of
what the student can still learn, set by a threshold delta. The sources kdrun could read give no formula;
this is kdrun's reading (docs/schedules.md says what was read where):

- the candidates are the schedule's anchor stages (every `schedule.interval` epochs of the teacher, or
  `schedule.anchors`), then the trained teacher;
- a candidate's hardness: KL(p_teacher || p_student) of the softmax outputs at temperature `greedy.T`,
  summed over classes and averaged over the first `greedy.probe_size` training examples (unaugmented,
  both models in eval mode);
- from the last anchor the route moves on through the later candidates while their hardness stays at most
  `greedy.delta`; the next anchor is the last candidate reached, or the next one when even that one is
  harder (a route always moves on). When it is the trained teacher the anchors end, and the schedule's
  other stages (rco's `student`) follow.

Each choice, with every candidate's hardness, is written to `route.json` in the run directory before its
stage starts; a resumed run takes its choices from there, so it follows the route the run began.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

from kdrun.errors import UserError, require
from kdrun.methods import method_class
from kdrun.models import build_model
from kdrun.schedules.spec import Stage
from kdrun import distributed
from kdrun.training.checkpoint import save_json
from kdrun.training.loop import epoch_seed, evaluation_batch_size

log = logging.getLogger("kdrun")
ROUTE_FILE = "route.json"


def is_greedy(cfg: DictConfig) -> bool:
    return str(cfg.schedule.get("strategy") or "equal") == "greedy"


def hardness(teacher_logits: torch.Tensor, student_logits: torch.Tensor, T: float) -> float:
    """KL(p_teacher || p_student) at temperature T: summed over classes, averaged over examples (nats)."""
    log_p = F.log_softmax(teacher_logits.float() / T, dim=1)
    log_q = F.log_softmax(student_logits.float() / T, dim=1)
    return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


def next_anchor(hardness_of_later: Sequence[float], delta: float) -> int:
    """Index into the later candidates (ascending epochs) of the next anchor: the last one reached while
    moving on through candidates of hardness at most `delta`; the first when even it is harder."""
    reached = 0
    for i, h in enumerate(hardness_of_later):
        if h > delta:
            break
        reached = i
    return reached


def anchor_stages(stages: list[Stage]) -> tuple[list[Stage], list[Stage], list[Stage]]:
    """(stages before the anchors, the anchor stages, stages after them): the anchors are the stages that
    distil from an epoch of the teacher (`teacher_epoch`), which rco lists one after another."""
    marked = [i for i, s in enumerate(stages) if s.teacher_epoch is not None]
    if not marked:
        return stages, [], []
    return stages[:marked[0]], stages[marked[0]:marked[-1] + 1], stages[marked[-1] + 1:]


def check_greedy(cfg: DictConfig, stages: list[Stage]) -> None:
    """What schedule.strategy=greedy asks of the config, refused before any training."""
    if not is_greedy(cfg):
        return
    g = cfg.schedule.greedy
    require(math.isfinite(float(g.delta)) and float(g.delta) >= 0,
            f"schedule.greedy.delta={g.delta}: expected a number of 0 or more (nats of KL divergence; 0 takes "
            f"every anchor in turn, as schedule.strategy=equal does).")
    require(math.isfinite(float(g.T)) and float(g.T) > 0,
            f"schedule.greedy.T={g.T}: expected a temperature above 0 (1: the plain softmax outputs).")
    require(int(g.probe_size) >= 1, f"schedule.greedy.probe_size={g.probe_size}: expected a number of training "
                                    f"examples, 1 or more.")
    _, anchors, _ = anchor_stages(stages)
    epochs = [s.teacher_epoch for s in anchors]
    require(all(e is not None for e in epochs),
            f"schedule.strategy=greedy picks from one run of candidate anchor stages, but stages without a "
            f"teacher_epoch come between those with one ({', '.join(s.name for s in anchors)}): give the stages "
            f"with a teacher_epoch one after another.")
    require(epochs == sorted(set(epochs)),
            f"schedule.anchors={epochs}: schedule.strategy=greedy moves forward along the teacher's route, so its "
            f"candidate anchors must be ascending epochs, each once. List them in that order, e.g. "
            f"schedule.anchors=[{','.join(map(str, sorted(set(epochs))))}].")
    last = int(cfg.teacher.train.epochs)
    require(all(e < last for e in epochs), f"schedule.anchors={epochs}: with schedule.strategy=greedy the trained "
                                           f"teacher (epoch {last}) is the route's last candidate already; "
                                           f"list epochs before it.")
    alone = [f"{s.name} ({s.method_cfg.name})" for s in anchors if not method_class(s.method_cfg).uses_teacher]
    require(not alone, f"schedule.strategy=greedy measures the student against the teacher's epochs, but the "
                       f"method of stage(s) {', '.join(alone)} uses no teacher. Choose a method that distils "
                       f"(e.g. method=kd), or schedule.strategy=equal.")


class GreedyRoute:
    """The stages a greedy route runs, chosen one at a time as `runner` (a ScheduleRunner) trains them."""

    def __init__(self, runner, stages: list[Stage]):
        self.runner = runner
        self.head, self.anchors, self.tail = anchor_stages(stages)
        g = runner.cfg.schedule.greedy
        self.delta, self.T, self.probe_size = float(g.delta), float(g.T), int(g.probe_size)
        self.final = int(runner.cfg.teacher.train.epochs)  # the trained teacher: the route's last candidate
        self.path = Path(runner.run_dir) / ROUTE_FILE
        self.record = self.read()
        self.outputs: dict[int, torch.Tensor] = {}  # each candidate's logits on the probe examples

    def epoch(self, position: int) -> int:
        return self.final if position == len(self.anchors) else int(self.anchors[position].teacher_epoch)

    def name(self, position: int) -> str:
        """The stage that learns from candidate `position`; the trained teacher's: the first after the anchors."""
        if position < len(self.anchors):
            return self.anchors[position].name
        return self.tail[0].name if self.tail else "the trained teacher"

    def stages(self) -> Iterator[Stage]:
        yield from self.head
        if self.anchors:
            self.start_student()
            log.info("Schedule rco, greedy search: candidate anchors at teacher epochs %s, then the trained "
                     "teacher (epoch %d); each next anchor is chosen when the stage before it has ended "
                     "(delta %g).",
                     ", ".join(str(s.teacher_epoch) for s in self.anchors), self.final, self.delta)
        position, step = -1, 0
        while self.anchors and position < len(self.anchors):
            position = self.choose(step, position)
            step += 1
            if position < len(self.anchors):
                yield self.anchors[position]
        yield from self.tail

    def start_student(self) -> None:
        """The student the route starts from: the one `check` built for the first candidate stage (its seed),
        whichever anchor the search then takes first."""
        runner, first = self.runner, self.anchors[0]
        if first.model in runner.instances:
            return
        model = runner.prepared.get(first.name, (None, None))[0]
        if model is None:
            torch.manual_seed(epoch_seed(runner.seed, first.name, 0))
            model = build_model(runner.model_cfg(first), runner.data.info, "student").to(runner.data.device)
        runner.instances[first.model] = (model, None)

    def choose(self, step: int, position: int) -> int:
        choices = self.record["choices"]
        if step < len(choices):
            return self.recorded(choices[step], position)
        later = list(range(position + 1, len(self.anchors) + 1))
        student = self.runner.instances[self.anchors[0].model][0]
        with torch.no_grad():
            student_logits = self.logits(student)
            hard = [hardness(self.teacher_logits(self.epoch(p)), student_logits, self.T) for p in later]
        pick = agreed(later[next_anchor(hard, self.delta)], self.runner.data.device)
        choices.append({"after": self.anchors[position].name if position >= 0 else None,
                        "hardness": {str(self.epoch(p)): round(h, 6) for p, h in zip(later, hard)},
                        "anchor": self.epoch(pick), "stage": self.name(pick)})
        save_json(self.path, self.record)
        log.info("Greedy search%s: KL(teacher || student) %s; delta %g: next %s.",
                 f" after {self.anchors[position].name}" if position >= 0 else " from the untrained student",
                 ", ".join(f"epoch {self.epoch(p)} {h:.4f}" for p, h in zip(later, hard)), self.delta,
                 f"anchor: teacher epoch {self.epoch(pick)} ({self.name(pick)})" if pick < len(self.anchors)
                 else f"the trained teacher ({self.name(pick)})")
        return pick

    def recorded(self, choice: dict, position: int) -> int:
        later = {self.epoch(p): p for p in range(position + 1, len(self.anchors) + 1)}
        if not isinstance(choice, dict) or choice.get("anchor") not in later:
            raise UserError(f"{self.path} records a choice ({choice!r}) that is none of this route's candidates "
                            f"after {self.name(position) if position >= 0 else 'the start'} (teacher epochs "
                            f"{', '.join(map(str, later))}). Delete the file: the run then chooses its anchors "
                            f"again from the stages it has trained.")
        pick = later[choice["anchor"]]
        log.info("Greedy search: next %s (teacher epoch %d), as %s records.", self.name(pick), self.epoch(pick),
                 self.path)
        return pick

    def read(self) -> dict:
        fresh = {"config_id": self.runner.identity, "strategy": "greedy", "delta": self.delta, "T": self.T,
                 "probe_size": self.probe_size, "choices": []}
        if not self.path.exists():
            return fresh
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{self.path} cannot be read ({e}). Delete it: the run then chooses its anchors "
                            f"again from the stages it has trained.") from None
        # A record of another configuration (left by an attempt that trained nothing) is not this run's route.
        if not isinstance(record, dict) or record.get("config_id") != self.runner.identity \
                or not isinstance(record.get("choices"), list):
            return fresh
        return record

    def probe(self):
        data = self.runner.data
        n = min(self.probe_size, len(data.train))
        return data, data.train.take(torch.arange(n, device=data.train.y.device))

    def logits(self, model: nn.Module) -> torch.Tensor:
        data, split = self.probe()
        was_training = model.training
        model.eval()
        out = torch.cat([model(x).float() for _, x, _ in data.batches(split, evaluation_batch_size(data.device),
                                                                       shuffle=False)])
        model.train(was_training)
        return out

    def teacher_logits(self, epoch: int) -> torch.Tensor:
        if epoch not in self.outputs:
            self.runner.teacher_of_epoch(None if epoch == self.final else epoch)
            self.outputs[epoch] = self.logits(self.runner.teacher)
        return self.outputs[epoch]


def agreed(position: int, device: torch.device) -> int:
    """Rank 0's choice, taken by every process of a run on several GPUs (their sums may differ in the last bit)."""
    if not distributed.active():
        return position
    mine = torch.tensor(position if distributed.is_main() else -1, device=device)
    return int(distributed.max_over_processes(mine).item())


def route_of(runner, stages: list[Stage]) -> list[Stage] | Iterator[Stage]:
    """The stages `runner` runs: all of them, or those a greedy route picks as it goes."""
    return GreedyRoute(runner, stages).stages() if is_greedy(runner.cfg) else stages


__all__ = ["GreedyRoute", "check_greedy", "hardness", "is_greedy", "next_anchor", "route_of", "ROUTE_FILE"]
