"""Teacher ensembles for `kd` (`method.teachers`): members are built, trained or loaded, and cached
like the teacher. Member 0 is `teacher` (seed = `seed`); member i is `method.teachers[i-1]`, trained
with `teacher.train.*` and seed `seed + i`, so repeating a model name gives independently trained members.
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from kdrun.data.base import DataInfo, Dataset
from kdrun.models import build_model, model_defaults, model_label
from kdrun.models.ensemble import TeacherEnsemble
from kdrun.training.loop import evaluate
from kdrun.training.teacher import obtain_teacher, teacher_seed

log = logging.getLogger("kdrun")


def member_configs(cfg: DictConfig) -> list[DictConfig]:
    """One config per member, each a whole run config whose `teacher` and `seed` are the member's."""
    out = [cfg]
    for i, name in enumerate(cfg.method.get("teachers") or [], start=1):
        node = {"name": str(name), **model_defaults(str(name)), "checkpoint": None,
                "epoch": cfg.teacher.get("epoch"), "train": OmegaConf.to_container(cfg.teacher.train, resolve=True)}
        member = cfg.copy()
        OmegaConf.set_struct(member, False)
        member.teacher = node
        member.seed = teacher_seed(cfg) + i
        out.append(member)
    return out


def teacher_label(cfg: DictConfig) -> str:
    """The teacher's name in metrics.json; an ensemble's members joined by '+'."""
    return "+".join(model_label(m.teacher) for m in member_configs(cfg))


def build_teacher(cfg: DictConfig, info: DataInfo) -> nn.Module:
    if not cfg.method.get("teachers"):
        return build_model(cfg.teacher, info, "teacher")
    members = [build_model(m.teacher, info, "teacher") for m in member_configs(cfg)]
    return TeacherEnsemble(members, str(cfg.method.get("ensemble", "arithmetic")))


def obtain_teachers(cfg: DictConfig, teacher: nn.Module, data: Dataset, progress: bool,
                    epochs: Iterable[int] = ()) -> tuple[float, str]:
    """`obtain_teacher` for one teacher or each member of an ensemble; the ensemble's accuracy and sources.
    `epochs`: the epochs whose weights the run needs besides (one teacher's)."""
    if not isinstance(teacher, TeacherEnsemble):
        return obtain_teacher(cfg, teacher, data, progress, epochs)
    sources = []
    for member_cfg, member in zip(member_configs(cfg), teacher.members):
        _, source = obtain_teacher(member_cfg, member, data, progress)
        sources.append(source)
    acc = evaluate(teacher, data, data.test)
    log.info("Teacher ensemble (%s mean of %s): test acc %.2f%%.", teacher.mean, teacher_label(cfg), acc)
    return acc, ", ".join(sources)
