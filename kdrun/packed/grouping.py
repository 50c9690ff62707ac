"""Which jobs of a sweep can share work (`hydra/launcher=packed`).

Jobs pack when they see the same batches and the same teacher: the same dataset config and data seed,
the same teacher config (and so its weights), the same student architecture, the same recipe's batch
size, epochs, augmentation and speed settings, and a single stage of the same name (a stage's batch
order follows its name, so `method=kd,dkd` makes two groups). Kept conservative: a job
whose method reads its input's gradient, trains on a strong view (MLKD), ensembles teachers, or whose
teacher is one of the teacher's earlier epochs runs alone.
"""
from __future__ import annotations

import json
from typing import Optional

from omegaconf import OmegaConf

from kdrun.data.config import identity_of
from kdrun.errors import require

RECIPE_KEYS = ("batch_size", "epochs", "augment", "precision", "channels_last", "compile", "cache_teacher")
PART_NAMES = {"dataset": "dataset config", "data_seed": "data seed (data_seed, or seed when it is null)",
              "teacher": "teacher (its config and seed)", "student": "student", "recipe":
              f"recipe's {', '.join(RECIPE_KEYS)}", "device": "device", "schedule": "schedule",
              "stage": "stage name (its batch order follows it: the method's name)"}


def why_alone(cfg: dict) -> Optional[str]:
    """Why a job cannot share with any other (None: it can)."""
    from kdrun.methods import method_class

    schedule = cfg.get("schedule") or {}
    if schedule.get("name") != "single" or len(schedule.get("stages") or []) != 1:
        return f"schedule={schedule.get('name')} is not a single stage"
    method = cfg["method"]
    cls = method_class(OmegaConf.create(method))
    if cls.input_gradients:
        return f"method={method.get('name')} takes gradients with respect to the input"
    if cls.strong_view:
        return f"method={method.get('name')} trains on a strongly augmented view of its own"
    if method.get("teachers"):
        return "method.teachers ensembles several teachers"
    if (cfg.get("teacher") or {}).get("epoch") is not None:
        return "teacher.epoch picks one of the teacher's earlier epochs"
    if schedule.get("ensemble_teacher"):
        return "schedule.ensemble_teacher is set"
    return None


def pack_parts(cfg: dict) -> dict:
    """What members of one group have in common (`cfg`: a job's resolved config, plain data)."""
    teacher = dict(cfg.get("teacher") or {})
    trained_here = not (teacher.get("checkpoint") or teacher.get("pretrained"))
    teacher_seed = teacher.get("seed") if teacher.get("seed") is not None else cfg.get("seed")
    train = cfg.get("train") or {}
    return {
        "dataset": identity_of(cfg["dataset"]),
        "data_seed": cfg.get("data_seed") if cfg.get("data_seed") is not None else cfg.get("seed"),
        "teacher": {**teacher, "seed": teacher_seed if trained_here else None},
        "student": cfg.get("student"),
        "recipe": {k: train.get(k) for k in RECIPE_KEYS},
        "device": cfg.get("device"),
        "schedule": (cfg.get("schedule") or {}).get("name"),
        "stage": [stage.get("name") for stage in (cfg.get("schedule") or {}).get("stages") or []],
    }


def pack_key(parts: dict) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


def plan_groups(configs: dict[int, dict], max_members: Optional[int] = None) -> tuple[list[list[int]], dict[int, str]]:
    """Groups of job numbers (two or more each) and, for every other job, why it runs alone."""
    require(max_members is None or (isinstance(max_members, int) and max_members >= 1),
            f"hydra.launcher.max_members is the most jobs one packed group trains together: null (no limit) or "
            f"1 or more, got {max_members!r}.")
    alone: dict[int, str] = {}
    parts: dict[int, dict] = {}
    by_key: dict[str, list[int]] = {}
    for num, cfg in configs.items():
        reason = why_alone(cfg)
        if reason is not None:
            alone[num] = reason
            continue
        parts[num] = pack_parts(cfg)
        by_key.setdefault(pack_key(parts[num]), []).append(num)
    groups: list[list[int]] = []
    size = max_members
    for nums in by_key.values():
        chunks = [nums[i:i + size] for i in range(0, len(nums), size)] if size else [nums]
        for chunk in chunks:
            if len(chunk) > 1:
                groups.append(chunk)
            elif size == 1:
                alone[chunk[0]] = "hydra.launcher.max_members=1 packs no jobs together"
            elif size and len(nums) > 1:
                alone[chunk[0]] = f"the last of its group after hydra.launcher.max_members={size}"
            else:
                alone[chunk[0]] = differs(parts, chunk[0])
    return groups, alone


def differs(parts: dict[int, dict], num: int) -> str:
    """'no other job has its student, recipe's ...': what keeps a shareable job from every other."""
    others = [p for n, p in parts.items() if n != num]
    if not others:
        return "no other job of the sweep can share"
    mine = parts[num]
    # the other job it comes closest to: the fewest parts that differ
    closest = min(others, key=lambda p: sum(p[k] != mine[k] for k in mine))
    names = [PART_NAMES[k] for k in mine if closest[k] != mine[k]]
    return f"no other job has its {', '.join(names)}"
