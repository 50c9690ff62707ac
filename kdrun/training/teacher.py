"""The teacher: loaded from `teacher.checkpoint`, or trained with its own recipe and kept in a cache.

The cache key covers everything that determines the trained weights (model and its arguments, the
dataset config, the recipe, the seed), so any run that asks for the same teacher reuses it. A file
lock makes concurrent sweep jobs train a missing teacher once; the others wait and load it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from kdrun.console import plural
from kdrun.data.base import Dataset
from kdrun.data.config import identity_of
from kdrun.data.whiten import is_off
from kdrun.errors import UserError
from kdrun.methods import method_class
from kdrun.models import build_model, model_label
from kdrun.training.checkpoint import load_torch, save_torch
from kdrun.training.loop import evaluate, fit
from kdrun.training.recipe import Recipe

log = logging.getLogger("kdrun")
CACHE_FORMAT = 1


def model_identity(model_cfg: DictConfig) -> dict:
    return {k: v for k, v in OmegaConf.to_container(model_cfg, resolve=True).items()
            if k not in ("checkpoint", "train", "seed")}


def dataset_identity(dataset_cfg: DictConfig) -> dict:
    dataset = {k: v for k, v in identity_of(OmegaConf.to_container(dataset_cfg, resolve=True)).items()
               if k != "download"}
    whiten = dataset.pop("whiten", None)
    if whiten is not None and not is_off(whiten):  # off: left out, so teachers cached before the key existed keep theirs
        dataset["whiten"] = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                             for k, v in whiten.items()}  # 55 and 55.0 are the same whitening
    augment = dataset.get("augment")
    if isinstance(augment, dict) and augment.get("padding_mode") == "constant":  # the fill before the key existed
        del augment["padding_mode"]
    if dataset.get("root"):
        dataset["root"] = str(Path(dataset["root"]).expanduser().resolve())
    return dataset


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_key(model_cfg: DictConfig, dataset_cfg: DictConfig, recipe: Recipe, seed: int) -> str:
    return digest({"model": model_identity(model_cfg), "dataset": dataset_identity(dataset_cfg),
                   "recipe": recipe.as_dict(), "seed": seed, "format": CACHE_FORMAT})


def entry_path(cache_dir: Path, label: str, dataset_name: str, seed: int, key: str) -> Path:
    return Path(cache_dir).expanduser() / "teachers" / f"{label}-{dataset_name}-s{seed}-{key}.pt"


def cache_path(cache_dir: Path, model_cfg: DictConfig, dataset_cfg: DictConfig, recipe: Recipe, seed: int) -> Path:
    key = cache_key(model_cfg, dataset_cfg, recipe, seed)
    return entry_path(cache_dir, model_label(model_cfg), str(dataset_cfg.name), seed, key)


@contextlib.contextmanager
def file_lock(path: Path):
    try:  # checked before the run (kdrun.callbacks), but the disk may have changed since
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "w")
    except OSError as e:
        from kdrun.callbacks import cache_unwritable

        raise UserError(cache_unwritable(path.parent.parent, f"{e.strerror or e}: {e.filename or path.parent}")) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_entry(path: Path, key: str, what: str) -> dict:
    """A teacher-cache entry, refused unless it was made under `key` (its file name says so too; an entry
    cached before entries recorded their key is taken by its name)."""
    entry = load_torch(path, what)
    made = entry.get("key", key) if isinstance(entry, dict) else None
    if made != key or "state_dict" not in entry:
        raise UserError(f"The {what} {path} does not hold the model its name promises (key {made}, expected "
                        f"{key}; was it renamed or copied?). Delete it and run again: kdrun trains and caches "
                        f"that model anew.")
    return entry


def extract_state_dict(obj) -> dict:
    """Accept kdrun's files and the usual layouts of other KD code: RepDistiller's {"model": weights, ...}
    and mdistiller's, whose distiller files hold `module.student.*` and `module.teacher.*` (the student
    is the network such a file was saved for)."""
    if isinstance(obj, dict):
        for key in ("student", "state_dict", "model", "net"):
            if key in obj and isinstance(obj[key], dict):
                return extract_state_dict(obj[key])
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError("no state dict of tensors found")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if any(k.startswith("student.") for k in state):
        state = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    return state


def load_weights(model: nn.Module, path: Path, label: str) -> None:
    if not path.is_file():
        raise UserError(f"teacher.checkpoint {path} does not exist. Give the path of a weights file, or "
                        f"teacher.checkpoint=null to train the teacher (or reuse it from the cache).")
    state = load_torch(path, "teacher checkpoint", foreign=True,
                       advice="Is the file complete, and written by torch.save? Give a file of the teacher's "
                              "weights, or teacher.checkpoint=null to train the teacher.")
    try:
        model.load_state_dict(extract_state_dict(state))
    except (RuntimeError, UserError) as e:
        detail = str(e).strip().splitlines()
        raise UserError(
            f"teacher.checkpoint {path} does not fit teacher={label} on this dataset "
            f"({' '.join(detail[:3])[:400]}). Choose the teacher model (and dataset) it was trained for, "
            f"or teacher.checkpoint=null to train one."
        ) from None


def teacher_seed(cfg: DictConfig) -> int:
    """`teacher.seed` pins the teacher's seed (one teacher for all the student seeds); null: the run's."""
    pinned = cfg.teacher.get("seed")
    if pinned is None:
        return int(cfg.seed)
    if isinstance(pinned, bool) or not isinstance(pinned, int):
        raise UserError(f"teacher.seed={pinned}: the teacher's seed must be an integer, or null for the run's "
                        f"seed (e.g. teacher.seed=0).")
    return pinned


def train_teacher(cfg: DictConfig, data: Dataset, recipe: Recipe, seed: int, progress: bool,
                  partial: Path, key: str) -> tuple[nn.Module, float]:
    model = build_model(cfg.teacher, data.info, "teacher").to(data.device)
    torch.manual_seed(seed)
    trainer = method_class("ce")(model, None, OmegaConf.create({"name": "ce"}), data.info)
    result = fit(trainer, data, recipe, stage="teacher", seed=seed, checkpoint=partial, progress=progress,
                 stamp={"cache_key": key})
    return model, result.test_acc


def obtain_teacher(cfg: DictConfig, teacher: nn.Module, data: Dataset, progress: bool) -> tuple[float, str]:
    """Fill `teacher` with trained weights. Returns its test accuracy and where it came from."""
    label = model_label(cfg.teacher)
    if cfg.teacher.get("checkpoint"):
        path = Path(str(cfg.teacher.checkpoint)).expanduser()
        load_weights(teacher, path, label)
        acc = evaluate(teacher, data, data.test)
        log.info("Teacher %s loaded from %s (test acc %.2f%%).", label, path, acc)
        return acc, str(path)
    recipe = Recipe.from_config(cfg.teacher.train, "teacher.train")
    seed = teacher_seed(cfg)
    key = cache_key(cfg.teacher, cfg.dataset, recipe, seed)
    path = entry_path(Path(cfg.cache_dir), label, str(cfg.dataset.name), seed, key)
    with file_lock(path):
        if path.exists():
            entry = load_entry(path, key, "cached teacher")
            teacher.load_state_dict(entry["state_dict"])
            log.info("Teacher %s reused from the teacher cache: %s (test acc %.2f%%, no training).",
                     label, path, entry["test_acc"])
            return float(entry["test_acc"]), str(path)
        log.info("Teacher %s not in the cache: training it (%s), then caching it at %s.",
                 label, plural(recipe.epochs, "epoch"), path)
        partial = path.with_suffix(".partial.pt")
        trained, acc = train_teacher(cfg, data, recipe, seed, progress, partial, key)
        save_torch(path, {"key": key, "state_dict": trained.state_dict(), "test_acc": acc, "model": label,
                          "dataset": str(cfg.dataset.name), "recipe": recipe.as_dict(), "seed": seed})
        partial.unlink(missing_ok=True)
        teacher.load_state_dict(trained.state_dict())
        log.info("Teacher %s trained: test acc %.2f%%.", label, acc)
        return acc, str(path)


__all__ = ["obtain_teacher", "cache_key", "cache_path", "extract_state_dict", "load_weights"]
