"""One run from a composed config: data, models, method, teacher, stages, results."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig

from kdrun.data import build_dataset
from kdrun.data.transfer import transfer_set
from kdrun.errors import require
from kdrun.methods import method_class
from kdrun.models import MODELS, model_label
from kdrun.results.identity import Held, claim
from kdrun.results.metrics import RunRecord
from kdrun.results.selection import epoch_selections
from kdrun.results.summary import print_run_summary
from kdrun.schedules import build_stages
from kdrun.schedules.greedy import is_greedy
from kdrun.schedules.spec import require_complete
from kdrun.schedules.runner import ScheduleRunner, ensemble_accuracy
from kdrun.tracking import Trackers
from kdrun import distributed
from kdrun.training.bias_shift import bias_shift_metrics, check_bias_shift
from kdrun.training.checkpoint import save_torch
from kdrun.training.device import configure_threads, resolve_device
from kdrun.training.ensemble import build_teacher, obtain_teachers, teacher_label
from kdrun.training.progress import progress_enabled
from kdrun.training.recipe import TeacherRecipe
from kdrun.training.pretrained import check_pretrained, published_record
from kdrun.training.teacher import check_teacher_epoch, teacher_identity

log = logging.getLogger("kdrun")


def check_names(cfg: DictConfig) -> None:
    for role in ("teacher", "student"):
        node = cfg[role]
        if not node.get("_target_"):
            MODELS.get(node.name)


def run(cfg: DictConfig, run_dir: Path, claimed: Optional[tuple[str, Optional[Held]]] = None) -> dict:
    """`claimed`: what `claim(run_dir, cfg)` returned, when the caller has claimed the directory already."""
    run_dir = Path(run_dir)
    require_complete(cfg)
    identity, held = claimed or claim(run_dir, cfg)  # refuses another configuration's directory
    if held is not None and held.status == "completed":
        report_completed(run_dir, held.metrics)
        return held.metrics
    record = RunRecord(run_dir)

    # Everything a user can get wrong is checked before any training.
    check_names(cfg)
    trackers = Trackers.for_run(cfg, run_dir)  # logger=...: a tracker whose package is missing is refused here
    stages = build_stages(cfg)  # validates each stage's method config, once
    needs_teacher = any(s.teacher == "teacher" and method_class(s.method_cfg).uses_teacher
                        for s in stages)
    if needs_teacher:
        check_pretrained(cfg)  # an unknown source, a model it lacks, teacher.checkpoint or teacher.epoch beside it
    if needs_teacher and not cfg.teacher.get("checkpoint"):
        check_teacher_epoch(cfg, TeacherRecipe.from_config(cfg.teacher.train, "teacher.train"))
    elif needs_teacher:
        check_teacher_epoch(cfg, None)  # refuses teacher.epoch beside teacher.checkpoint
    require(needs_teacher or not cfg.schedule.get("ensemble_teacher"),
            f"schedule.ensemble_teacher=true puts the run's teacher in the ensemble, but no stage of "
            f"schedule={cfg.schedule.name} with method={cfg.method.name} uses a teacher.")
    device = distributed.place(resolve_device(cfg.device))
    configure_threads()
    show_progress = progress_enabled(cfg.progress) and distributed.is_main()

    started = time.perf_counter()
    torch.manual_seed(int(cfg.seed))
    data = build_dataset(cfg.dataset, device)  # the teacher's: the whole training split
    check_bias_shift(cfg, data.num_classes)
    student_data = transfer_set(data, cfg.dataset)  # the stages': dataset.transfer_exclude / transfer_only
    info = data.info
    teacher = build_teacher(cfg, info).to(device) if needs_teacher else None
    runner = ScheduleRunner(cfg, student_data, run_dir, teacher=teacher, progress=show_progress,
                            on_epoch=trackers.on_epoch(record.add_epoch),
                            on_stage=lambda stages_done: record.update(stages=stages_done),
                            identity=identity, teacher_data=data)
    runner.check(stages)

    record.start({
        "dataset": str(cfg.dataset.name), "teacher": teacher_label(cfg) if teacher is not None else None,
        "student": model_label(cfg.student), "method": str(cfg.method.name), "schedule": str(cfg.schedule.name),
        "seed": int(cfg.seed), "epochs": stages[-1].train_recipe.epochs, "device": str(device),
        "config_id": identity,
    })
    log.info("Run directory: %s", run_dir)
    log.info("Data %s: %d train, %d test%s; %s", data.name, len(data.train), len(data.test),
             f", {len(data.val)} validation" if data.val is not None else "", info)
    with trackers.running(cfg, record):  # logger=...: each tracker logs the config, the epochs, the final numbers
        if teacher is not None:
            anchors = sorted({s.teacher_epoch for s in stages if s.teacher_epoch is not None})
            with distributed.main_first():  # several processes: rank 0 trains (or finds) it, the others then load it
                teacher_acc, source = obtain_teachers(cfg, teacher, data, show_progress, anchors)
            runner.teacher_key = teacher_identity(source)
            runner.teacher_weights = {k: v.clone() for k, v in teacher.state_dict().items()}
            record.update(teacher_test_acc=teacher_acc, teacher_source=source, **published_record(cfg))
        if len(stages) > 1 and not is_greedy(cfg):  # a greedy route logs its candidates and choices itself
            log.info("Schedule %s: %s.", cfg.schedule.name, " -> ".join(s.name for s in stages))

        outcomes = runner.run(stages)
        last = outcomes[-1]
        trained = [o.result for o in outcomes if o.result is not None]
        images = sum(r.train_images for r in trained)
        seconds = sum(r.train_seconds for r in trained)
        weights = run_dir / "student.pt"
        save_torch(weights, last.model.state_dict())
        final = {
            "test_acc": last.test_acc,
            "train_images_per_s": round(images / seconds, 1) if seconds else None,
            "wall_time_s": round(record.metrics["wall_time_s"] + time.perf_counter() - started, 2),
            "stages": [o.record() for o in outcomes], "student_weights": str(weights),
        }
        if last.result is not None and last.result.val_acc is not None:
            final["val_acc"] = last.result.val_acc
        # best_test_acc, best_test_epoch (and test_acc_at_best_val, best_val_epoch): over the last stage's epochs
        final.update(epoch_selections(record.metrics["history"], last.stage.name, validation=data.val is not None))
        final.update(bias_shift_metrics(cfg, last, data))  # eval.bias_shift
        final.update(ensembles(cfg, outcomes, teacher, data))
        record.finish("completed", **final)
    if distributed.is_main():
        print_run_summary(record.metrics, run_dir)
    return record.metrics


def ensembles(cfg: DictConfig, outcomes: list, teacher, data) -> dict:
    """The ensemble of the stages marked `ensemble` (and the run's teacher after them, with
    `schedule.ensemble_teacher`): `ensemble_test_acc` of all members, and `ensemble{k}_test_acc` of the
    first k members for every k from 2 (born-again networks' Ens*2, Ens*3 of one run)."""
    members = [(o.stage.name, o.model) for o in outcomes if o.stage.ensemble]
    if cfg.schedule.get("ensemble_teacher"):
        members.append(("teacher", teacher))
    if not members:
        return {}
    out = {"ensemble_test_acc": ensemble_accuracy([m for _, m in members], data),
           "ensemble": [name for name, _ in members]}
    for k in range(2, len(members)):
        out[f"ensemble{k}_test_acc"] = ensemble_accuracy([m for _, m in members[:k]], data)
    if len(members) >= 2:
        out[f"ensemble{len(members)}_test_acc"] = out["ensemble_test_acc"]
    log.info("Ensemble of %s (mean of softmax outputs): test acc %.2f%%.", ", ".join(out["ensemble"]),
             out["ensemble_test_acc"])
    return out


def report_completed(run_dir: Path, metrics: dict) -> None:
    log.info("The run in %s is already completed: nothing to do. To train it again, delete %s and run the "
             "same command.", run_dir, run_dir)
    print_run_summary(metrics, run_dir)
