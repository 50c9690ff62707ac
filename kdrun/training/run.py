"""One run from a composed config: data, models, method, teacher, stages, results."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from kdrun.data import build_dataset
from kdrun.errors import UserError
from kdrun.methods import method_class
from kdrun.models import MODELS, build_model, model_label
from kdrun.results.metrics import RunRecord
from kdrun.results.summary import print_run_summary
from kdrun.schedules import build_stages
from kdrun.training.checkpoint import save_torch
from kdrun.training.device import configure_threads, resolve_device
from kdrun.training.ensemble import build_teacher, obtain_teachers, teacher_label
from kdrun.training.loop import fit
from kdrun.training.progress import progress_enabled
from kdrun.training.recipe import Recipe
from kdrun.training.speed import without_speed_keys

log = logging.getLogger("kdrun")
NOT_IN_IDENTITY = ("progress", "cache_dir", "device")  # keys that do not change what a run computes


def config_identity(cfg: DictConfig) -> str:
    plain = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NOT_IN_IDENTITY}
    plain = without_speed_keys(plain)  # speed and rounding only: a run may resume with other settings
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_names(cfg: DictConfig) -> None:
    for role in ("teacher", "student"):
        node = cfg[role]
        if not node.get("_target_"):
            MODELS.get(node.name)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    record = RunRecord(run_dir)
    identity = config_identity(cfg)
    if record.metrics and record.metrics.get("config_id") not in (None, identity):
        raise UserError(
            f"{run_dir} already holds a run of another configuration. Choose a new output directory "
            f"(hydra.run.dir=...) or rerun the same command to resume that run."
        )
    if record.previous_status == "completed":
        log.info("Run in %s is already completed: nothing to do (delete metrics.json to run it again).", run_dir)
        print_run_summary(record.metrics)
        return record.metrics

    # Everything a user can get wrong is checked before any training.
    check_names(cfg)
    method_cls = method_class(cfg.method.name)
    method_cls.validate(cfg.method)
    stages = build_stages(cfg)
    recipes = {s.name: Recipe.from_config(OmegaConf.select(cfg, s.recipe_key), s.recipe_key) for s in stages}
    if method_cls.uses_teacher and not cfg.teacher.get("checkpoint"):
        Recipe.from_config(cfg.teacher.train, "teacher.train")
    device = resolve_device(cfg.device)
    configure_threads()
    show_progress = progress_enabled(cfg.progress)

    started = time.perf_counter()
    torch.manual_seed(int(cfg.seed))
    data = build_dataset(cfg.dataset, device)
    info = data.info
    student = build_model(cfg.student, info).to(device)
    teacher = build_teacher(cfg, info).to(device) if method_cls.uses_teacher else None
    distiller = method_cls(student, teacher, cfg.method, info).to(device)

    record.start({
        "dataset": str(cfg.dataset.name), "teacher": teacher_label(cfg) if teacher is not None else None,
        "student": model_label(cfg.student), "method": str(cfg.method.name), "schedule": str(cfg.schedule.name),
        "seed": int(cfg.seed), "epochs": recipes[stages[-1].name].epochs, "device": str(device),
        "config_id": identity,
    })
    log.info("Run directory: %s", run_dir)
    log.info("Data %s: %d train, %d test%s; %s", data.name, len(data.train), len(data.test),
             f", {len(data.val)} validation" if data.val is not None else "", info)
    if teacher is not None:
        teacher_acc, source = obtain_teachers(cfg, teacher, data, show_progress)
        record.update(teacher_test_acc=teacher_acc, teacher_source=source)

    images = seconds = 0
    stage_records = []
    for stage in stages:
        result = fit(distiller, data, recipes[stage.name], stage=stage.name, seed=int(cfg.seed),
                     checkpoint=run_dir / "checkpoints" / f"{stage.name}.pt", progress=show_progress,
                     on_epoch=record.add_epoch)
        images += result.train_images
        seconds += result.train_seconds
        stage_records.append({"name": stage.name, "model": model_label(cfg.student),
                              "test_acc": result.test_acc, "checkpoint": str(run_dir / "checkpoints" / f"{stage.name}.pt")})
    weights = run_dir / "student.pt"
    save_torch(weights, student.state_dict())
    final = {
        "test_acc": result.test_acc,
        "train_images_per_s": round(images / seconds, 1) if seconds else None,
        "wall_time_s": round(record.metrics["wall_time_s"] + time.perf_counter() - started, 2),
        "stages": stage_records, "student_weights": str(weights),
    }
    if result.val_acc is not None:
        final["val_acc"] = result.val_acc
    record.finish("completed", **final)
    print_run_summary(record.metrics)
    return record.metrics
