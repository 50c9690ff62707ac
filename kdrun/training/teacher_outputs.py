"""The teacher's outputs kept per training example, so that a frozen teacher runs once per example.

kdrun's teacher is frozen (eval mode, no gradient) and, without augmentation, sees the same view of
an example in every epoch; its logits and the features a method reads are then the same every epoch.
The first epoch of a stage computes them and stores them by the example's position in the training
split (the batch `index`); later epochs read them back. With augmentation the view differs each
epoch, so the cache is refused: `train.cache_teacher=auto` falls back with a log line,
`train.cache_teacher=true` is a user error. Features are kept only when they fit the memory budget
(a quarter of the device's memory); methods that need teacher features otherwise run the teacher.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from kdrun.data.base import Dataset
from kdrun.errors import UserError
from kdrun import distributed

log = logging.getLogger("kdrun")
BUDGET_FRACTION = 0.25


def memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        return int(BUDGET_FRACTION * torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(BUDGET_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 2 << 30


class TeacherOutputs:
    """Logits and features of the teacher for each of `n` training examples, filled in the first epoch."""

    def __init__(self, n: int, logits: torch.Tensor, features: dict[str, torch.Tensor]):
        self.logits = torch.empty((n, *logits.shape[1:]), dtype=logits.dtype, device=logits.device)
        self.features = {k: torch.empty((n, *v.shape[1:]), dtype=v.dtype, device=v.device)
                         for k, v in features.items()}
        self.stored = torch.zeros(n, dtype=torch.bool, device=logits.device)
        self.complete = False  # set after an epoch at whose end every example has been stored

    @staticmethod
    def nbytes(n: int, logits: torch.Tensor, features: dict[str, torch.Tensor]) -> int:
        per_example = sum(t[0].numel() * t.element_size() for t in [logits, *features.values()])
        return n * per_example

    def store(self, index: torch.Tensor, logits: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        self.logits[index] = logits
        self.stored[index] = True
        for k, v in features.items():
            self.features[k][index] = v

    def lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.logits[index], {k: v[index] for k, v in self.features.items()}

    def epoch_done(self) -> None:
        """An epoch may leave examples unstored: one in which the method needed no teacher output (a KD weight
        that starts at 0) stores none."""
        self.complete = self.complete or bool(self.stored.all())


def probe_teacher(distiller, data: Dataset, speed, size: int):
    _, x, _ = next(data.batches(data.train, size, shuffle=False))  # the first `size` examples, not augmented
    sample = speed.batch(x)
    with speed.autocast():
        return distiller.teacher_forward(sample)


def per_example(outputs, size: int) -> bool:
    logits, features = outputs
    tensors = [logits, *features.values()] if isinstance(features, dict) else [logits, features]
    return all(isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == size for t in tensors)


def teacher_output_cache(distiller, data: Dataset, setting: Optional[bool], speed) -> Optional[TeacherOutputs]:
    """A cache for this stage, or None (no teacher, switched off, augmented data, over budget)."""
    if setting is False or not distiller.uses_teacher or distiller.teacher is None:
        return None
    if distributed.active():  # each process sees other examples every epoch: none would have them all
        if setting:
            raise UserError("train.cache_teacher=true, but this run is split over several processes, each of "
                            "which sees other examples of the training split every epoch, so none could reuse "
                            "the teacher's outputs. Use train.cache_teacher=auto (or false).")
        return None
    if distiller.input_gradients:  # the teacher's input gradient, every step
        if setting:
            raise UserError(f"train.cache_teacher=true, but method {distiller.cfg.name} takes the teacher's "
                            f"gradient with respect to each batch's input, so the teacher runs every step. Use "
                            f"train.cache_teacher=auto (or false).")
        return None
    if data.augmented:
        if setting:
            raise UserError("train.cache_teacher=true, but the training data is augmented, so the teacher "
                            "sees another view of each example every epoch and its outputs cannot be reused. "
                            "Use train.cache_teacher=auto (or false), or turn augmentation off (dataset.augment=null).")
        log.info("Teacher outputs are not cached: the training data is augmented.")
        return None
    if len(data.train) < 3:
        return None
    probes = [probe_teacher(distiller, data, speed, size) for size in (2, 3)]
    if not all(per_example(outputs, size) for outputs, size in zip(probes, (2, 3))):
        # e.g. an ensemble's members x batch x classes logits
        if setting:
            raise UserError("train.cache_teacher=true, but this method's teacher outputs are not tensors with "
                            "one row per example. Use train.cache_teacher=auto or false.")
        log.info("Teacher outputs are not cached: they are not tensors with one row per example.")
        return None
    logits, features = probes[0]
    n = len(data.train)
    need, budget = TeacherOutputs.nbytes(n, logits, features), memory_budget(data.device)
    if need > budget:
        message = (f"the teacher's logits and features for {n} examples need {need / 2**30:.1f} GiB, more than "
                   f"the budget of {budget / 2**30:.1f} GiB (a quarter of the device's memory)")
        if setting:
            raise UserError(f"train.cache_teacher=true, but {message}. Use train.cache_teacher=auto or false.")
        log.info("Teacher outputs are not cached: %s.", message)
        return None
    log.info("Teacher outputs are cached after the first epoch (%.1f MiB).", need / 2**20)
    return TeacherOutputs(n, logits, features)
