"""Run a schedule's stages in order: build or continue each stage's model, pick its teacher, wrap
both in the stage's method, train (or reuse from the teacher cache), report the ensemble.

Every stage's weights have a key: a digest of what produced them (the key of its teacher, the key
of the weights it started from, its model, dataset, recipe, method, phase, name and seed). A stage
with `cache: true` stores its model in the teacher cache under that key, so another run whose chain
shares that prefix loads it instead of training it. Each stage builds its fresh models and method
helpers from a seed of its own, so its result does not depend on whether earlier stages were
trained in this process, resumed from a checkpoint or loaded from the cache.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from kdrun.console import plural
from kdrun.data.base import Dataset
from kdrun.data.randaugment import StrongView
from kdrun.errors import UserError
from kdrun.methods import method_class
from kdrun.methods.base import Distiller
from kdrun.models import build_model, model_defaults, model_label
from kdrun.schedules.greedy import check_greedy, route_of
from kdrun.schedules.spec import Stage
from kdrun.models.probe import require_input_size
from kdrun.training.checkpoint import save_torch
from kdrun.training.ensemble import build_teacher, teacher_label
from kdrun.training.lone_batch import has_lone_batch, require_no_lone_batch
from kdrun.training.loop import StageResult, epoch_seed, fit
from kdrun.training.recipe import Recipe, TeacherRecipe
from kdrun.training.teacher import (CACHE_FORMAT, dataset_identity, digest, entry_path, file_lock, kept_weights,
                                    load_entry, model_identity, teacher_identity)

log = logging.getLogger("kdrun")


@dataclass
class StageOutcome:
    stage: Stage
    model: nn.Module
    label: str  # the model's name
    key: str  # what produced the weights (see the module docstring)
    test_acc: float
    checkpoint: str  # the file holding the stage's result
    result: Optional[StageResult] = None  # None when the model came from the teacher cache
    cached_at: Optional[str] = None  # where a trained `cache: true` stage stored its model

    def record(self) -> dict:
        entry = {"name": self.stage.name, "model": self.label, "test_acc": self.test_acc,
                 "checkpoint": self.checkpoint}
        if self.result is None:
            entry["reused_from_cache"] = True
        elif self.result.val_acc is not None:
            entry["val_acc"] = self.result.val_acc
        if self.cached_at:
            entry["cached_at"] = self.cached_at
        return entry


@torch.no_grad()
def ensemble_accuracy(models: list[nn.Module], data: Dataset, batch_size: int = 1000) -> float:
    """Top-1 accuracy (%) on the test split of the average of the models' softmax outputs."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    for _, x, y in data.batches(data.test, batch_size, shuffle=False):
        probs = sum(F.softmax(m(x).float(), dim=1) for m in models) / len(models)
        correct += (probs.argmax(1) == y).sum()
    for m, mode in zip(models, modes):
        m.train(mode)
    return round(100.0 * correct.item() / max(len(data.test), 1), 4)


def hold_statistics(model: nn.Module, trained: list[nn.Parameter]):
    """An init stage's modes (RepDistiller's helper/pretrain.py: `model_s.eval()`, then the trained
    modules `.train()`): a module whose parameters are all trained runs in train mode with everything
    inside it; every other module with state (batch norm) in eval mode, on its running statistics, which
    stay as they are, so the stage changes nothing beyond what it trains. Dropout is left in train mode
    (RepDistiller's models have none outside their feature layers; an MLP's input dropout feeds the
    layers FitNet's hint stage trains). Returns the hook's handle; remove it when the stage ends."""
    ids = {id(p) for p in trained}
    training = set()
    for m in model.modules():
        params = list(m.parameters())
        if params and all(id(p) in ids for p in params):
            training.update(id(sub) for sub in m.modules())
    held = [m for m in model.modules() if id(m) not in training and next(m.buffers(recurse=False), None) is not None]

    def to_eval(module, inputs):
        for m in held:
            m.training = False  # this module only: .train(False) would reach the trained ones inside it

    return model.register_forward_pre_hook(to_eval)


def stage_role(stage: Stage) -> Optional[str]:
    """The config node a stage's model is built from, named in messages (None: a zoo model of its own)."""
    return "student" if stage.model == "student" else None


def same_method(d: Optional[Distiller], model: nn.Module, teacher: Optional[nn.Module], cfg: DictConfig) -> bool:
    """Whether `d` is the method `cfg` on exactly these models."""
    return (d is not None and d.student is model and d.teacher is teacher
            and OmegaConf.to_container(d.cfg, resolve=True) == OmegaConf.to_container(cfg, resolve=True))


class ScheduleRunner:
    def __init__(self, cfg: DictConfig, data: Dataset, run_dir: Path, *, teacher: Optional[nn.Module],
                 progress: bool, on_epoch: Callable[[dict], None], on_stage: Callable[[list[dict]], None],
                 identity: Optional[str] = None, teacher_data: Optional[Dataset] = None):
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.teacher_data = teacher_data or data  # the teacher's training data (the students': a transfer set)
        self.identity = identity  # the run's config_id, stamped on its checkpoints
        self.seed = int(cfg.seed)
        self.teacher = teacher  # the run's teacher; trained (or loaded) before `run`
        self.teacher_key: Optional[str] = None  # what the run's teacher is (set with its weights)
        self.teacher_weights: Optional[dict] = None  # the run's teacher's weights, put back after a stage of
        self.teacher_epoch: Optional[int] = None  # another of its epochs (`teacher_epoch`), the one loaded now
        self.progress, self.on_epoch, self.on_stage = progress, on_epoch, on_stage
        self.distiller: Optional[Distiller] = None
        self.instances: dict[str, tuple[nn.Module, str]] = {}  # model -> (module, key of its weights)
        # What `check` built for each stage (its fresh model, or None, and its method), used by the stage
        # itself: each stage's model and method are built once, before any training.
        self.prepared: dict[str, tuple[Optional[nn.Module], Distiller]] = {}

    def model_cfg(self, stage: Stage) -> DictConfig:
        if stage.model == "student":
            return self.cfg.student
        return OmegaConf.create({"name": stage.model, **model_defaults(stage.model)})

    def checkpoint(self, stage: Stage) -> Path:
        return self.run_dir / "checkpoints" / f"{stage.name}.pt"

    def check(self, stages: list[Stage]) -> None:
        """Build every stage's model and method once, untrained, before any training: a model that
        cannot take the dataset's images, what a method finds wrong (a feature path that does not
        exist, a memory bank larger than the data), a last batch of one example that batch norm cannot
        train on: each stops the run before the teacher or any stage trains."""
        check_greedy(self.cfg, stages)  # schedule.strategy=greedy's keys
        info, device = self.data.info, self.data.device
        if self.teacher is not None:
            require_input_size(self.teacher, lambda sized: build_teacher(self.cfg, sized), info,
                               f"teacher={teacher_label(self.cfg)}", device, zoo=not self.cfg.teacher.get("_target_"))
            # trained here (or reused: the same config either way), not given by a file or a published source
            if not (self.cfg.teacher.get("checkpoint") or self.cfg.teacher.get("pretrained")):
                recipe = TeacherRecipe.from_config(self.cfg.teacher.train, "teacher.train")
                recipe.data_for(self.teacher_data)  # an augmentation the dataset cannot take: refused now
                if has_lone_batch(len(self.teacher_data.train), recipe.batch_size):
                    trainer = method_class("ce")(build_teacher(self.cfg, info).to(device), None,
                                                 OmegaConf.create({"name": "ce"}), info)
                    require_no_lone_batch(trainer, self.teacher_data, recipe.batch_size, "teacher.train",
                                          f"The teacher {teacher_label(self.cfg)}", model_role="teacher")
        instances: dict[str, nn.Module] = {}
        previous, distiller = None, None
        for stage in stages:
            # As run_stage would: the stage's seed, then its fresh model, then its method (same weights).
            torch.manual_seed(epoch_seed(self.seed, stage.name, 0))
            model = None if stage.fresh else instances.get(stage.model)
            built = None
            if model is None:
                model_cfg = self.model_cfg(stage)
                role = stage_role(stage)
                model = built = build_model(model_cfg, info, role).to(device)
                who = f"student={model_label(model_cfg)}" if stage.model == "student" else \
                    f"{stage.model} (stage {stage.name})"
                with torch.random.fork_rng(devices=[]):  # probes of other sizes leave the seed's draws alone
                    require_input_size(model, lambda sized, c=model_cfg, r=role: build_model(c, sized, r), info,
                                       who, device, zoo=not model_cfg.get("_target_"))
                instances[stage.model] = model
            method_cls = method_class(stage.method_cfg)
            teacher = None
            if method_cls.uses_teacher:
                teacher = self.teacher if stage.teacher == "teacher" else previous
                if teacher is model:
                    raise UserError(f"Stage {stage.name} would learn from its own model: give it `fresh: true` "
                                    f"or another teacher.")
            if not same_method(distiller, model, teacher, stage.method_cfg):  # as method_for carries one over
                distiller = method_cls(model, teacher, stage.method_cfg, info).to(device)
                distiller.remove_hooks()  # until its stage: the hooks of one method at a time
            self.prepared[stage.name] = (built, distiller)
            self.check_data(stage, distiller)
            self.check_lone_batch(stage, model, distiller)
            previous = model

    def check_data(self, stage: Stage, distiller: Distiller) -> None:
        """What the stage asks of the data that the dataset cannot give (a recipe's own augmentation, a
        strong view of images read from disk), refused now as the stage would refuse it."""
        data = stage.train_recipe.data_for(self.data)
        if distiller.strong_view and stage.phase == "main":
            StrongView(data, method=str(stage.method_cfg.name))

    def check_lone_batch(self, stage: Stage, model: nn.Module, distiller: Distiller) -> None:
        """One training step on a batch of one example, on the stage's own (untrained) method: its state
        (batch-norm statistics, memory banks) is put back as it was."""
        if not has_lone_batch(len(self.data.train), stage.train_recipe.batch_size):
            return
        held = hold_statistics(model, distiller.init_parameters()) if stage.phase == "init" else None
        saved = {k: v.clone() for k, v in distiller.state_dict().items() if isinstance(v, torch.Tensor)}
        distiller.attach()
        try:
            require_no_lone_batch(distiller, self.data, stage.train_recipe.batch_size, stage.recipe,
                                  f"Stage {stage.name}", phase=stage.phase)
        finally:
            distiller.remove_hooks()
            distiller.load_state_dict(saved, strict=False)
            if held is not None:
                held.remove()

    def run(self, stages: list[Stage]) -> list[StageOutcome]:
        outcomes: list[StageOutcome] = []
        for stage in route_of(self, stages):  # all of them, or those a greedy route picks as it goes
            outcome = self.run_stage(stage, outcomes[-1] if outcomes else None)
            outcomes.append(outcome)
            self.instances[stage.model] = (outcome.model, outcome.key)
            self.on_stage([o.record() for o in outcomes])
        if self.distiller is not None:
            self.distiller.remove_hooks()
        return outcomes

    def run_stage(self, stage: Stage, previous: Optional[StageOutcome]) -> StageOutcome:
        torch.manual_seed(epoch_seed(self.seed, stage.name, 0))
        model_cfg = self.model_cfg(stage)
        if stage.fresh or stage.model not in self.instances:
            role = stage_role(stage)
            built = self.prepared.get(stage.name, (None, None))[0]  # check's, made from the same seed
            model = built if built is not None else build_model(model_cfg, self.data.info, role).to(self.data.device)
            model.train().requires_grad_(True)  # a later stage's method, built by check, froze it as its teacher
            start_key = None
        else:
            model, start_key = self.instances[stage.model]
            model.requires_grad_(True)  # it may have served as a teacher (frozen) in between
        method_cls = method_class(stage.method_cfg)
        teacher, teacher_key, source = None, None, "no teacher"
        if method_cls.uses_teacher:
            if stage.teacher == "teacher":
                teacher, teacher_key = self.teacher, self.teacher_of_epoch(stage.teacher_epoch)
                source = f"teacher {model_label(self.cfg.teacher)}"
                if stage.teacher_epoch is not None:
                    source += f" of epoch {stage.teacher_epoch}"
            else:  # "previous"; the first stage's "previous" was made "teacher" by build_stages
                teacher, teacher_key = previous.model, previous.key
                source = f"teacher {previous.label} of stage {previous.stage.name}"
        label = model_label(model_cfg)
        key = digest({"teacher": teacher_key, "start": start_key, "model": model_identity(model_cfg),
                      "dataset": dataset_identity(self.cfg.dataset), "recipe": stage.train_recipe.as_dict(),
                      "method": OmegaConf.to_container(stage.method_cfg, resolve=True), "phase": stage.phase,
                      "stage": stage.name, "seed": self.seed, "format": CACHE_FORMAT})
        if not stage.cache:
            return self.train(stage, model, teacher, label, key, source)
        path = entry_path(Path(self.cfg.cache_dir), label, str(self.cfg.dataset.name), self.seed, key)
        with file_lock(path):  # concurrent runs that need the same model train it once
            # A stage this run has started (its checkpoint exists) is resumed or loaded from there,
            # so its history is the same as in an uninterrupted run.
            if path.exists() and not self.checkpoint(stage).exists():
                entry = load_entry(path, key, "cached model")
                model.load_state_dict(entry["state_dict"])
                log.info("Stage %s: %s reused from the teacher cache: %s (test acc %.2f%%, no training).",
                         stage.name, label, path, entry["test_acc"])
                return StageOutcome(stage, model, label, key, float(entry["test_acc"]), str(path))
            if not path.exists():
                log.info("Stage %s: %s not in the teacher cache: training it, then caching it at %s.",
                         stage.name, label, path)
            outcome = self.train(stage, model, teacher, label, key, source)
            save_torch(path, {"key": key, "state_dict": model.state_dict(), "test_acc": outcome.test_acc, "model": label,
                              "dataset": str(self.cfg.dataset.name), "recipe": stage.train_recipe.as_dict(),
                              "seed": self.seed, "stage": stage.name, "teacher_key": teacher_key})
            outcome.cached_at = str(path)
            return outcome

    def teacher_of_epoch(self, epoch: Optional[int]) -> Optional[str]:
        """Load the run's teacher's weights of `epoch` (None: the run's own teacher) into it; their key."""
        if epoch == self.teacher_epoch:
            return self.teacher_key if epoch is None else self.epoch_key
        if epoch is None:
            self.teacher.load_state_dict(self.teacher_weights)
            self.teacher_epoch = None
            return self.teacher_key
        state, path, acc = kept_weights(self.cfg, epoch)
        self.teacher.load_state_dict(state)
        self.teacher_epoch, self.epoch_key = epoch, teacher_identity(str(path))
        log.info("Teacher %s of epoch %d (test acc %.2f%%): %s.", model_label(self.cfg.teacher), epoch, acc, path)
        return self.epoch_key

    def method_for(self, stage: Stage, model: nn.Module, teacher: Optional[nn.Module]) -> Distiller:
        """The stage's method around (model, teacher); the previous stage's when it is the same
        method on the same models, so helpers trained in an init stage (regressors) carry over."""
        d = self.distiller
        if same_method(d, model, teacher, stage.method_cfg):
            return d
        if d is not None:
            d.remove_hooks()
        prepared = self.prepared.get(stage.name, (None, None))[1]
        if same_method(prepared, model, teacher, stage.method_cfg):  # built by check, for this stage
            prepared.attach()
            self.distiller = prepared
        else:
            self.distiller = method_class(stage.method_cfg)(model, teacher, stage.method_cfg, self.data.info)
        return self.distiller.to(self.data.device)

    def train(self, stage: Stage, model: nn.Module, teacher: Optional[nn.Module], label: str, key: str,
              source: str) -> StageOutcome:
        distiller = self.method_for(stage, model, teacher)
        parameters = distiller.init_parameters() if stage.phase == "init" else None
        held = hold_statistics(model, parameters) if parameters is not None else None
        log.info("Stage %s: %s, method %s%s, %s, %s.", stage.name, label, stage.method_cfg.name,
                 " (initialisation phase)" if stage.phase == "init" else "", source,
                 plural(stage.train_recipe.epochs, "epoch"))
        try:
            result = fit(distiller, self.data, stage.train_recipe, stage=stage.name, seed=self.seed,
                         checkpoint=self.checkpoint(stage), progress=self.progress, on_epoch=self.on_epoch,
                         parameters=parameters, stamp={"config_id": self.identity, "stage_key": key},
                         phase=stage.phase, data_seed=self.cfg.get("data_seed"))
        finally:
            if held is not None:
                held.remove()
        return StageOutcome(stage, model, label, key, result.test_acc, str(self.checkpoint(stage)), result)
