"""A training batch of one example, which batch norm cannot train on, refused before any training.

Batches are the training split in order, cut every `batch_size` examples, and the last one keeps the
rest (as a DataLoader without `drop_last`). When that rest is a single example (`train.batch_size=1`,
or 65 examples in batches of 64), a batch norm that sees one value per channel (BatchNorm1d on
vectors, BatchNorm2d on 1x1 maps) raises "Expected more than 1 value per channel when training" in
the middle of the first epoch. kdrun refuses such a run instead of dropping the example: every other
run's batches, results and resumption stay as they are. Whether a stage would fail is tried with one
training-mode forward of a single example through the stage's method, built for the check only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from kdrun.data.base import Dataset
from kdrun.errors import UserError
from kdrun.methods.base import Distiller

BATCH_NORM_ERROR = "Expected more than 1 value per channel"


def has_lone_batch(examples: int, batch_size: int) -> bool:
    return batch_size == 1 or examples % batch_size == 1


def failing_batch_norm(distiller: Distiller, data: Dataset, phase: str = "main") -> Optional[str]:
    """The path (in the method) of the batch norm that fails on a batch of one example, or None."""
    entered: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda module, inputs, name=name: entered.append(name))
             for name, m in distiller.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    idx, x, y = next(data.batches(data.train, 1, shuffle=False, train=True))
    was_training = distiller.training
    distiller.train()
    try:
        with torch.random.fork_rng(devices=[]):  # dropout's draws leave the run's random numbers alone
            distiller.forward_train(x, y, 1, idx, phase=phase)
    except ValueError as e:
        if BATCH_NORM_ERROR not in str(e):
            raise
        return entered[-1] if entered else "a batch norm layer"
    finally:
        for h in hooks:
            h.remove()
        distiller.train(was_training)
    return None


def other_batch_size(examples: int, batch_size: int) -> Optional[int]:
    """The batch size nearest `batch_size` (smaller ones first) that leaves no batch of one example."""
    for b in [*range(batch_size - 1, 1, -1), *range(batch_size + 1, examples + 1)]:
        if not has_lone_batch(examples, b):
            return b
    return None


def require_no_lone_batch(distiller: Distiller, data: Dataset, batch_size: int, recipe_key: str, what: str,
                          model_role: str = "student", phase: str = "main") -> None:
    """Refuse `what` (e.g. "Stage kd") when its last training batch holds one example that batch norm
    cannot train on. `recipe_key` is the config path of its recipe (e.g. `train`, `teacher.train`);
    `model_role` names the model the method trains (the teacher, when it is trained with `ce`)."""
    n = len(data.train)
    if not has_lone_batch(n, batch_size):
        return
    module = failing_batch_norm(distiller, data, phase)
    if module is None:
        return
    model, _, path = module.partition(".")
    which = (f"batch norm `{path}` of the {model_role}" if model == "student" and path else
             f"batch norm `{module}` of method {distiller.cfg.name}")
    if n == 1:
        raise UserError(f"{what} cannot train on a single training example: {which} needs 2 or more values "
                        f"per channel. Give it 2 or more training examples (dataset.train_size).")
    batches = ("every batch holds one example" if batch_size == 1 else
               f"the last batch holds one example ({n} = {n // batch_size} x {batch_size} + 1)")
    b = other_batch_size(n, batch_size)
    raise UserError(f"{what} cannot train in batches of {batch_size} on its {n} training examples: {batches}, "
                    f"and {which} cannot normalise a single value per channel (kdrun does not drop "
                    f"examples). Set {recipe_key}.batch_size={b}, which leaves no batch of one example.")
