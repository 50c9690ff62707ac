"""Schedules: a run as a list of stages. `single` is one stage that trains the student with the method."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from kdrun.errors import UserError

SCHEDULES = ("single",)


@dataclass(frozen=True)
class Stage:
    name: str  # shown in logs, `history` and `stages` of metrics.json
    recipe_key: str  # config path of the stage's recipe


def build_stages(cfg: DictConfig) -> list[Stage]:
    name = cfg.schedule.name
    if name == "single":
        return [Stage(name=str(cfg.method.name), recipe_key="train")]
    raise UserError(f"Unknown schedule {name!r}. Valid schedules (schedule=NAME): {', '.join(SCHEDULES)}.")
