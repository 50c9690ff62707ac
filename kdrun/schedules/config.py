"""The schedules' schemas (`schedule=NAME`). A stage's recipe (`schedule.hint`, `schedule.gen`, ...) is
a `RecipeDelta`: only the keys it sets differ from `train` for that stage."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from kdrun.methods.kd import KDConfig
from kdrun.schema.choice import Choice
from kdrun.training.recipe import RecipeDelta


@dataclass
class ScheduleConfig:
    name: str = MISSING
    # Each entry as written (kdrun.schedules.spec.Stage lists the keys and checks them): typed entries
    # would add every key's default to the config, and so change the config_id of runs made before.
    stages: List[Any] = MISSING


@dataclass
class InitThenTrainSchedule(ScheduleConfig):
    init: RecipeDelta = field(default_factory=RecipeDelta)  # the recipe of the initialisation stage


@dataclass
class RepDistillerSchedule(ScheduleConfig):
    init: RecipeDelta = field(default_factory=RecipeDelta)
    init_lr: Dict[str, Dict[str, float]] = field(default_factory=dict)  # method -> student -> init lr


def kd_stage_loss() -> KDConfig:
    return KDConfig(T="${oc.select:method.T,4.0}", alpha=0.9)  # type: ignore[arg-type]


@dataclass
class FitNetSchedule(ScheduleConfig):
    hint: RecipeDelta = field(default_factory=RecipeDelta)
    kd: RecipeDelta = field(default_factory=RecipeDelta)
    kd_loss: KDConfig = field(default_factory=kd_stage_loss)


@dataclass
class TAKDSchedule(ScheduleConfig):
    assistants: List[str] = MISSING
    assistant: RecipeDelta = field(default_factory=RecipeDelta)


@dataclass
class BANSchedule(ScheduleConfig):
    generations: int = 3
    gen: RecipeDelta = field(default_factory=RecipeDelta)
    ensemble_teacher: bool = False  # the run's teacher is the ensemble's last member (BAN's DenseNet-80-120 Ens*3)


class AnchorStrategy(Choice):
    equal = "equal"  # every anchor of interval / anchors in turn (the paper's equal epoch interval strategy)
    greedy = "greedy"  # those of them the greedy search picks (kdrun.schedules.greedy)


@dataclass
class GreedySearch:
    """schedule.strategy=greedy: how hard a next anchor may be for the student (kdrun.schedules.greedy)."""
    delta: float = 1.0  # the most KL(teacher || student) (nats, mean over the probe examples) the route takes on
    T: float = 1.0  # the temperature of both softmax outputs in that KL
    probe_size: int = 1000  # the first N examples of the training split it is measured on


@dataclass
class RCOSchedule(ScheduleConfig):
    interval: int = 60  # teacher epochs between anchors: the equal epoch interval strategy
    anchors: Optional[List[int]] = None  # the anchors' teacher epochs instead, ascending (null: by interval)
    anchor: RecipeDelta = field(default_factory=RecipeDelta)
    strategy: AnchorStrategy = AnchorStrategy.equal  # greedy: the anchors above are the candidates it picks from
    greedy: GreedySearch = field(default_factory=GreedySearch)


SCHEMAS = {"single": ScheduleConfig, "init_then_train": InitThenTrainSchedule, "repdistiller": RepDistillerSchedule,
           "fitnet": FitNetSchedule, "takd": TAKDSchedule, "ban": BANSchedule, "rco": RCOSchedule}
