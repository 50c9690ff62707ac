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
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from kdrun.console import plural
from kdrun.data.base import Dataset
from kdrun.data.config import TRANSFER_KEYS, identity_of
from kdrun.data.whiten import is_off
from kdrun import distributed
from kdrun.errors import UserError
from kdrun.methods import method_class
from kdrun.models import build_model, model_label
from kdrun.training.checkpoint import load_torch, save_torch
from kdrun.training.loop import evaluate, fit
from kdrun.training.recipe import Recipe, TeacherRecipe

log = logging.getLogger("kdrun")
CACHE_FORMAT = 1


def model_identity(model_cfg: DictConfig) -> dict:
    return {k: v for k, v in OmegaConf.to_container(model_cfg, resolve=True).items()
            if k not in ("checkpoint", "pretrained", "train", "seed", "epoch")}


def dataset_identity(dataset_cfg: DictConfig, teacher: bool = False) -> dict:
    """`teacher`: the teacher's data, the whole training split: the transfer-set keys (the students' data,
    kdrun.data.transfer) are left out, so a teacher is cached once for every transfer set."""
    dataset = {k: v for k, v in identity_of(OmegaConf.to_container(dataset_cfg, resolve=True)).items()
               if k != "download" and not (teacher and k in TRANSFER_KEYS)}
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
    return digest({"model": model_identity(model_cfg), "dataset": dataset_identity(dataset_cfg, teacher=True),
                   "recipe": recipe.as_dict(), "seed": seed, "format": CACHE_FORMAT})


def entry_path(cache_dir: Path, label: str, dataset_name: str, seed: int, key: str) -> Path:
    return Path(cache_dir).expanduser() / "teachers" / f"{label}-{dataset_name}-s{seed}-{key}.pt"


def cache_path(cache_dir: Path, model_cfg: DictConfig, dataset_cfg: DictConfig, recipe: Recipe, seed: int) -> Path:
    key = cache_key(model_cfg, dataset_cfg, recipe, seed)
    return entry_path(cache_dir, model_label(model_cfg), str(dataset_cfg.name), seed, key)


@contextlib.contextmanager
def file_lock(path: Path):
    """Concurrent runs that need the same model train it once. In a run of several processes rank 0 holds the
    lock for all of them: they train the model together (waiting for the lock, the others would stall it)."""
    if not distributed.is_main():
        yield
        return
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


def snapshot_path(path: Path, epoch: int) -> Path:
    """Where the cache keeps the weights of epoch `epoch` of the teacher cached at `path`."""
    return path.with_name(f"{path.stem}.e{epoch}.pt")


def teacher_identity(source: str) -> str:
    """What a teacher is, for the keys of the stages that learn from it: a digest of its weight files (a cache
    entry, kept weights of an epoch or `teacher.checkpoint`; several for an ensemble)."""
    h = hashlib.sha256()
    for path in source.split(", "):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def check_teacher_epoch(cfg: DictConfig, recipe: Optional[TeacherRecipe]) -> None:
    """`teacher.epoch`: an epoch of the teacher's own recipe, for a teacher kdrun trains."""
    epoch = cfg.teacher.get("epoch")
    if epoch is None:
        return
    if cfg.teacher.get("checkpoint"):
        raise UserError(f"teacher.epoch={epoch} picks an epoch of a teacher kdrun trains, but teacher.checkpoint "
                        f"gives the weights. Give one of them: teacher.checkpoint=null to train the teacher and "
                        f"distil from its epoch {epoch}, or teacher.epoch=null.")
    if not 1 <= int(epoch) <= recipe.epochs:
        raise UserError(f"teacher.epoch={epoch}: the teacher trains for teacher.train.epochs={recipe.epochs} "
                        f"epochs; give an epoch from 1 to {recipe.epochs} (or null for the last).")


def train_teacher(cfg: DictConfig, data: Dataset, recipe: Recipe, seed: int, progress: bool, partial: Path,
                  key: str, stop_after: Optional[int] = None,
                  keep: Optional[Callable[[int, nn.Module, dict], None]] = None) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)  # its initial weights from its seed alone, as its cache key says
    model = build_model(cfg.teacher, data.info, "teacher").to(data.device)
    trainer = method_class("ce")(model, None, OmegaConf.create({"name": "ce"}), data.info)
    result = fit(trainer, data, recipe, stage="teacher", seed=seed, checkpoint=partial, progress=progress,
                 stamp={"cache_key": key}, stop_after=stop_after,
                 after_epoch=(lambda epoch, entry: keep(epoch, model, entry)) if keep else None)
    return model, result.test_acc


def obtain_teacher(cfg: DictConfig, teacher: nn.Module, data: Dataset, progress: bool,
                   epochs: Iterable[int] = ()) -> tuple[float, str]:
    """Fill `teacher` with trained weights: its last epoch's, or `teacher.epoch`'s (or `teacher.checkpoint`'s,
    or the published ones of `teacher.pretrained`). `epochs`: epochs whose
    weights the run needs besides (schedule=rco's anchors), kept in the cache with `teacher.train.keep_*`'s.
    Returns its test accuracy and where it came from."""
    label = model_label(cfg.teacher)
    if cfg.teacher.get("pretrained"):
        from kdrun.training.pretrained import obtain_pretrained  # which imports this module

        return obtain_pretrained(cfg, teacher, data)
    if cfg.teacher.get("checkpoint"):
        path = Path(str(cfg.teacher.checkpoint)).expanduser()
        load_weights(teacher, path, label)
        acc = evaluate(teacher, data, data.test)
        log.info("Teacher %s loaded from %s (test acc %.2f%%).", label, path, acc)
        return acc, str(path)
    recipe = TeacherRecipe.from_config(cfg.teacher.train, "teacher.train")
    seed = teacher_seed(cfg)
    key = cache_key(cfg.teacher, cfg.dataset, recipe, seed)
    path = entry_path(Path(cfg.cache_dir), label, str(cfg.dataset.name), seed, key)
    wanted = cfg.teacher.get("epoch")
    wanted = int(wanted) if wanted is not None and int(wanted) < recipe.epochs else None  # None: the last
    kept = sorted({*recipe.kept_epochs(), *(int(e) for e in epochs if int(e) < recipe.epochs),
                   *([wanted] if wanted else [])})
    with file_lock(path):
        missing = [e for e in kept if not snapshot_path(path, e).exists()]
        trained = not path.exists() or bool(missing)
        if trained:
            train_and_keep(cfg, data, recipe, seed, progress, path, key, kept, missing)
        state, where, acc = kept_weights(cfg, wanted or recipe.epochs)
        teacher.load_state_dict(state)
        if wanted or not trained:
            log.info("Teacher %s%s %s the teacher cache: %s (test acc %.2f%%%s).", label,
                     f" of epoch {wanted}" if wanted else "", "from" if trained else "reused from", where, acc,
                     "" if trained else ", no training")
        return acc, str(where)


def kept_weights(cfg: DictConfig, epoch: int) -> tuple[dict, Path, float]:
    """The teacher's weights of `epoch` (kept in the cache by `obtain_teacher`), their file and test accuracy."""
    recipe = TeacherRecipe.from_config(cfg.teacher.train, "teacher.train")
    seed = teacher_seed(cfg)
    key = cache_key(cfg.teacher, cfg.dataset, recipe, seed)
    path = entry_path(Path(cfg.cache_dir), model_label(cfg.teacher), str(cfg.dataset.name), seed, key)
    if epoch >= recipe.epochs:
        entry = load_entry(path, key, "cached teacher")
        return entry["state_dict"], path, float(entry["test_acc"])
    where = snapshot_path(path, epoch)
    entry = load_entry(where, key, f"cached teacher of epoch {epoch}")
    if entry.get("epoch") != epoch:
        raise UserError(f"The cached teacher {where} holds epoch {entry.get('epoch')}, not {epoch} (was it renamed "
                        f"or copied?). Delete it and run again: kdrun trains the teacher again to keep epoch {epoch}.")
    return entry["state_dict"], where, float(entry["test_acc"])


def train_and_keep(cfg: DictConfig, data: Dataset, recipe: TeacherRecipe, seed: int, progress: bool, path: Path,
                   key: str, kept: list[int], missing: list[int]) -> None:
    """Train the teacher into the cache entry at `path`, keeping the weights of the epochs `kept`. When the
    entry exists and only kept epochs are `missing`, train up to the last of them (the same weights: the
    epochs' batches and learning rates follow from the seed and the recipe alone)."""
    label = model_label(cfg.teacher)
    partial = path.with_suffix(".partial.pt")
    stop = max(missing) if path.exists() else None
    if stop and not load_torch(path, "cached teacher").get("seeded_init"):
        # Cached by a kdrun whose teachers' initial weights followed the random state of the run that trained
        # them, not their seed alone: the same recipe and seed would not retrace its route.
        log.info("Teacher %s: the cache has no weights of epoch%s %s, and its entry %s was made by an earlier "
                 "kdrun whose training cannot be retraced: training the teacher again, all %s, and replacing "
                 "the entry.", label, "s" if len(missing) > 1 else "", ", ".join(map(str, missing)), path,
                 plural(recipe.epochs, "epoch"))
        stop, missing = None, kept
        partial.unlink(missing_ok=True)
    if partial.exists() and missing and int(load_torch(partial, "teacher checkpoint").get("epoch", 0)) >= min(missing):
        partial.unlink()  # it is past an epoch to keep: train again from the start
    if stop:
        log.info("Teacher %s: the cache has no weights of epoch%s %s: training it again up to epoch %d to "
                 "keep them.", label, "s" if len(missing) > 1 else "", ", ".join(map(str, missing)), stop)
    elif not path.exists():
        log.info("Teacher %s not in the cache: training it (%s), then caching it at %s%s.", label,
                 plural(recipe.epochs, "epoch"), path,
                 f", with the weights of epoch{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))}" if kept else "")

    def keep(epoch: int, model: nn.Module, entry: dict) -> None:
        if epoch in kept:
            save_torch(snapshot_path(path, epoch), {"key": key, "epoch": epoch, "state_dict": model.state_dict(),
                                                    "test_acc": entry["test_acc"], "model": label,
                                                    "dataset": str(cfg.dataset.name), "seed": seed})

    trained, acc = train_teacher(cfg, data, recipe, seed, progress, partial, key, stop_after=stop, keep=keep)
    if not stop:
        save_torch(path, {"key": key, "state_dict": trained.state_dict(), "test_acc": acc, "model": label,
                          "dataset": str(cfg.dataset.name), "recipe": recipe.as_dict(), "seed": seed,
                          "seeded_init": True})  # its initial weights from its seed alone: retraceable
        log.info("Teacher %s trained: test acc %.2f%%.", label, acc)
    partial.unlink(missing_ok=True)


__all__ = ["obtain_teacher", "cache_key", "cache_path", "check_teacher_epoch", "extract_state_dict", "teacher_identity",
           "kept_weights", "load_weights", "snapshot_path"]
