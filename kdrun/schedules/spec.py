"""A schedule is data: `schedule.stages` in the config, a list of stages run in order.

Each stage says what it trains (`model`), from which teacher, with which loss (`method`, `phase`),
with which recipe, and what becomes of its model (`cache`, `ensemble`). An entry with `for_each`
is a template: it becomes one stage per item of a list (or per number 1..N for an integer; or of
`items`, else range(start, stop, step), for a mapping), with `{item}` and `{index}` (1-based) replaced in
its string fields (`teacher_epoch: "{item}"` takes the item itself). An entry with `only_for` (method
names) is left out when its method is none of them (RepDistiller's train_student.py runs an
initialisation stage for AB, FT and FSP only).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdrun.errors import UserError, require
from kdrun.methods import METHODS, method_class
from kdrun.methods.kd import check_stop_epoch_in_stage
from kdrun.models import MODELS
from kdrun.schema.errors import typed
from kdrun.training.recipe import Recipe, TeacherRecipe

TEACHERS = ("teacher", "previous", "none")
PHASES = ("main", "init")


@dataclass(frozen=True)
class Stage:
    name: str  # shown in logs, `history` and `stages` of metrics.json; names the stage's checkpoint
    model: str = "student"  # `student` (the run's student) or a model name of the zoo (an assistant)
    fresh: bool = False  # a new, randomly initialised instance, not the one earlier stages trained
    teacher: str = "previous"  # `teacher` (the run's), `previous` (the previous stage's model), `none`
    teacher_epoch: Optional[int] = None  # with teacher `teacher`: its weights of this epoch (kept in the cache)
    method: Any = "method"  # config path of the method node (`method`: the run's), or an inline node
    phase: str = "main"  # `init`: the method's initialisation stage (its init losses and parameters)
    recipe: str = "train"  # config path of the stage's recipe
    cache: bool = False  # the trained model goes into the teacher cache (and is reused from it)
    ensemble: bool = False  # the model is a member of the ensemble whose accuracy the run reports
    only_for: Optional[tuple] = None  # method names: the stage is left out when its method is none of them

    # Filled by `build_stages` from the config: the resolved method node and recipe.
    method_cfg: Optional[DictConfig] = None
    train_recipe: Optional[Recipe] = None


NUMBER_KEYS = ("teacher_epoch",)  # stage keys that a for_each template's "{item}" sets to the item itself
SPEC_KEYS = [f.name for f in fields(Stage) if f.name not in ("method_cfg", "train_recipe")]


def expand(entries: list, where: str, sources: Optional[dict[int, str]] = None) -> list[dict]:
    """Stage entries with `for_each` templates replaced by one entry per item. `sources` names, per entry,
    the config key its `for_each` takes its value from (`schedule.generations`): messages name that key."""
    sources = sources or {}
    out, negative = [], None
    for n, entry in enumerate(entries):
        require(isinstance(entry, dict), f"{where}[{n}] must be a mapping of stage keys ({', '.join(SPEC_KEYS)}).")
        if entry.get("for_each") is None:
            out.append({k: v for k, v in entry.items() if k != "for_each"})
            continue
        items = entry["for_each"]
        label = sources.get(n, f"{where}[{n}].for_each")
        if isinstance(items, dict):
            items = range_items(items, label)
        if isinstance(items, int) and not isinstance(items, bool):
            if items < 0:
                negative = negative or (label, items)
                items = 0
            items = list(range(1, items + 1))
        require(isinstance(items, list), f"{label} must be a list or a count, got {items!r}.")
        template = {k: v for k, v in entry.items() if k != "for_each"}
        for key in NUMBER_KEYS:
            wrong = [item for item in items if not (isinstance(item, int) and not isinstance(item, bool) and item >= 1)]
            require(template.get(key) != "{item}" or not wrong,
                    f"{label}={_show(items)}: each item is a stage's {key}, an epoch (1 or more); "
                    f"{', '.join(map(repr, wrong))} is not.")
        for index, item in enumerate(items, start=1):
            try:
                out.append({k: item if k in NUMBER_KEYS and v == "{item}" else
                            v.format(item=item, index=index) if isinstance(v, str) else v for k, v in template.items()})
            except (KeyError, ValueError, IndexError) as e:
                raise UserError(f"{where}[{n}]: a for_each template may use only {{item}} and {{index}} "
                                f"in its strings ({type(e).__name__}: {e}).") from None
    if negative:  # the smallest count that still leaves the schedule a stage
        label, items = negative
        raise UserError(f"{label}={items}: expected a count of {0 if out else 1} or more (the number of stages "
                        f"made from it).")
    return out


def range_items(spec: dict, label: str) -> list:
    """A `for_each` mapping: its `items` when given, else the integers range(start, stop, step)."""
    if spec.get("items") is not None:
        return spec["items"]
    bounds = [spec.get(k) for k in ("start", "stop", "step")]
    require(all(isinstance(v, int) and not isinstance(v, bool) for v in bounds),
            f"{label} must be a list, a count, or a mapping with items, or with start, stop and step (integers), "
            f"got {spec!r}.")
    require(bounds[2] >= 1, f"{label}={bounds[2]}: the step of a for_each range must be 1 or more.")
    return list(range(*bounds))


def for_each_sources(cfg: DictConfig) -> dict[int, str]:
    """The config key each `for_each` of schedule.stages interpolates, e.g. {0: "schedule.generations"}."""
    raw = OmegaConf.to_container(cfg.schedule, resolve=False).get("stages")
    out = {}
    for n, entry in enumerate(raw if isinstance(raw, list) else []):
        value = entry.get("for_each") if isinstance(entry, dict) else None
        if isinstance(value, dict):  # `items` when it holds a list, else the range's step (rco's interval)
            items = OmegaConf.select(cfg, f"schedule.stages[{n}].for_each.items")
            value = value.get("items") if items is not None else value.get("step")
        if isinstance(value, str) and re.fullmatch(r"\$\{[\w.]+\}", value.strip()):
            out[n] = value.strip()[2:-1]
    return out


def _show(value: Any) -> str:
    return "[]" if value == [] else str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def require_complete(cfg: DictConfig) -> None:
    """Values a config leaves open (`???`, e.g. takd's `schedule.assistants`) must be given, and every
    interpolation must resolve."""
    from kdrun.schema.errors import user_error

    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise user_error(e) from None


def parse_stage(entry: dict, where: str) -> Stage:
    unknown = sorted(set(entry) - set(SPEC_KEYS))
    require(not unknown, f"Unknown key(s) {unknown} in {where}. Valid stage keys: {', '.join(SPEC_KEYS)}, for_each.")
    require("name" in entry, f"{where} has no `name`. Every stage needs a name (it names its checkpoint).")
    stage = Stage(**entry)
    require(stage.teacher in TEACHERS, f"{where}.teacher is {stage.teacher!r}; valid: {', '.join(TEACHERS)}.")
    require(stage.phase in PHASES, f"{where}.phase is {stage.phase!r}; valid: {', '.join(PHASES)}.")
    if stage.teacher_epoch is not None:
        require(isinstance(stage.teacher_epoch, int) and not isinstance(stage.teacher_epoch, bool)
                and stage.teacher_epoch >= 1, f"{where}.teacher_epoch must be an epoch of the teacher's recipe "
                                              f"(1 or more) or null, got {stage.teacher_epoch!r}.")
    require(isinstance(stage.method, (str, dict)),
            f"{where}.method must be a config path (e.g. `method`) or a method node, got {stage.method!r}.")
    if stage.only_for is not None:
        require(isinstance(stage.only_for, list) and all(isinstance(n, str) for n in stage.only_for),
                f"{where}.only_for must be a list of method names, got {stage.only_for!r}.")
        for name in stage.only_for:
            method_class(name)  # an unknown name lists the valid ones
        stage = replace(stage, only_for=tuple(stage.only_for))
    return stage


def resolve_node(cfg: DictConfig, path: str, what: str, where: str) -> DictConfig:
    node = OmegaConf.select(cfg, path)
    if not isinstance(node, DictConfig):
        raise UserError(f"{where}.{what} names the config path {path!r}, which holds no config node. "
                        f"Give the path of a {what} node (e.g. `train`, `schedule.kd`).")
    return node


def build_stages(cfg: DictConfig) -> list[Stage]:
    """The stages of the run's schedule, expanded and checked (before any training)."""
    where = f"schedule={cfg.schedule.name}: schedule.stages"
    require_complete(cfg)
    raw = OmegaConf.to_container(cfg.schedule.get("stages") or [], resolve=True)
    require(isinstance(raw, list), f"{where} must be a list of stages.")
    sources = for_each_sources(cfg)
    entries = expand(raw, where, sources)
    if not entries and sources:  # every stage came from a count or a list that is empty
        keys = ", ".join(f"{key}={_show(OmegaConf.select(cfg, key))}" for key in sources.values())
        raise UserError(f"{keys} leaves schedule={cfg.schedule.name} without stages (they are made from it). "
                        f"Give it a count of 1 or more (or a list of 1 item or more).")
    require(entries, f"{where} is empty: a schedule needs at least one stage.")
    stages, names = [], set()
    for n, entry in enumerate(entries):
        here = f"{where}[{n}]"
        stage = parse_stage(entry, here)
        method_cfg = (resolve_node(cfg, stage.method, "method", here) if isinstance(stage.method, str)
                      else OmegaConf.create(stage.method))
        require("name" in method_cfg, f"{here}.method has no `name` (a method name, e.g. kd or ce).")
        if stage.only_for is not None and str(method_cfg.name) not in stage.only_for:
            continue
        require(stage.name not in names, f"Two stages of schedule {cfg.schedule.name} are named {stage.name!r}; "
                                         f"stage names must be unique (they name the checkpoints).")
        names.add(stage.name)
        if not stages and stage.teacher == "previous":  # the first stage's predecessor is the run's teacher
            stage = replace(stage, teacher="teacher")
        if stage.teacher_epoch is not None:
            check_teacher_epoch(cfg, stage, here)
        recipe = stage_recipe(cfg, stage.recipe, here)
        stage = replace(stage, method_cfg=method_cfg, train_recipe=recipe)
        check_stage(stage, here)
        stages.append(stage)
    require(stages, f"{where}: every stage is `only_for` other methods than {OmegaConf.select(cfg, 'method.name')!r}; a schedule "
                    f"needs at least one stage for the run's method.")
    return stages


def check_teacher_epoch(cfg: DictConfig, stage: Stage, where: str) -> None:
    require(stage.teacher == "teacher", f"{where}.teacher_epoch={stage.teacher_epoch} picks an epoch of the run's "
                                        f"teacher, but the stage's teacher is {stage.teacher!r}: give it teacher "
                                        f"`teacher`, or teacher_epoch null.")
    require(not cfg.teacher.get("checkpoint"),
            f"{where} distils from the teacher's weights of epoch {stage.teacher_epoch}, which kdrun keeps when it "
            f"trains the teacher; teacher.checkpoint gives only final weights. Set teacher.checkpoint=null.")
    require(not cfg.teacher.get("pretrained"),
            f"{where} distils from the teacher's weights of epoch {stage.teacher_epoch}, which kdrun keeps when it "
            f"trains the teacher; teacher.pretrained={cfg.teacher.get('pretrained')} gives only published weights. "
            f"Set teacher.pretrained=null.")
    require(not (cfg.method.get("teachers") or []),
            f"{where} distils from the teacher's weights of epoch {stage.teacher_epoch}: one teacher's route, "
            f"not an ensemble's (method.teachers={list(cfg.method.get('teachers') or [])}).")
    epochs = int(cfg.teacher.train.epochs)
    require(stage.teacher_epoch <= epochs, f"{where}.teacher_epoch={stage.teacher_epoch}: the teacher trains "
                                           f"for teacher.train.epochs={epochs} epochs.")


def stage_recipe(cfg: DictConfig, path: str, where: str) -> Recipe:
    """The recipe at `path`: a node typed `Recipe` (`train`, `teacher.train`) is a whole recipe; any other
    (a `RecipeDelta` such as schedule.hint, or a plain mapping) holds the keys in which the stage differs
    from `train`."""
    node = resolve_node(cfg, path, "recipe", where)
    kind = OmegaConf.get_type(node)
    if kind in (Recipe, TeacherRecipe):
        return kind.from_config(node, path)
    return Recipe.from_config(cfg.train, path, delta=node)


def check_stage(stage: Stage, where: str) -> None:
    if stage.model != "student":
        MODELS.get(stage.model)  # an unknown name lists the valid ones
    method_cls = method_class(stage.method_cfg)
    if stage.method_cfg.get("_target_"):  # a method of your own: its schema is checked here, not by Hydra
        typed(method_cls.Config, {k: v for k, v in OmegaConf.to_container(stage.method_cfg, resolve=True).items()
                                  if k != "_target_"}, "method")
    method_cls.validate(stage.method_cfg)
    if stage.phase == "main":  # ESKD's stop_epoch counts the stage's epochs
        check_stop_epoch_in_stage(stage.method_cfg, stage.train_recipe.epochs, f"stage {stage.name!r} (recipe {stage.recipe})")
    if stage.phase == "init":
        require(method_cls.has_init_stage,
                f"{where} is the initialisation stage of method {stage.method_cfg.name!r}, which has none. "
                f"Methods with an initialisation stage: {', '.join(init_stage_methods())}.")
    require(stage.teacher != "none" or not method_cls.uses_teacher,
            f"{where} has teacher `none` but its method {stage.method_cfg.name!r} needs a teacher; "
            f"use teacher `teacher` or `previous`, or a method without a teacher (ce).")


def init_stage_methods() -> list[str]:
    return [n for n in METHODS.names() if METHODS.get(n).has_init_stage]
