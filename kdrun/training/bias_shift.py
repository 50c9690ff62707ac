"""`eval.bias_shift`: Hinton, Vinyals & Dean 2015's bias correction at test time (section 3, MNIST).

A student distilled on a transfer set without the 3s has rarely been told to answer 3; adding 3.5 to its
logit of class 3 (`eval.bias_shift='{3: 3.5}'`) brought the paper's student from 206 test errors (133 of
them on the 1,010 threes) to 109 (14 on threes). `bias_shift_metrics` evaluates the run's final student on
the test split with and without the shift and puts into metrics.json:

- `test_errors`, `test_errors_shifted_classes` (errors on the test examples of the shifted classes, of
  `test_size_shifted_classes`), `test_acc_shifted_classes`: without the shift;
- `test_acc_bias_shifted`, `test_errors_bias_shifted`, `test_errors_shifted_classes_bias_shifted`,
  `test_acc_shifted_classes_bias_shifted`: with it;
- with a validation split (`dataset.val_size`): `bias_shift_best`, the shifts of the same classes that
  maximise the validation accuracy, `val_acc_bias_best` and, with them on the test split,
  `test_acc_bias_best`, `test_errors_bias_best`, `test_errors_shifted_classes_bias_best`.

The best shift is exact, not a grid: with the other classes' shifts fixed, the prediction of an example
changes only where class c's shift crosses its threshold (the largest other logit minus its logit of c),
so the validation accuracy as a function of that shift is a step function whose steps are the sorted
thresholds; `best_shift` takes the middle of its best step (of the one nearest 0 when several are best;
1 beyond the last threshold when the best step is unbounded), one class after another, repeated until no
shift changes (at most `rounds` times). The logits are the model's in eval mode, at the precision of its
last stage's recipe (as its `test_acc`).
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from kdrun.data.base import Dataset, Split
from kdrun.errors import UserError
from kdrun.training.loop import evaluation_batch_size
from kdrun.training.speed import Speed

log = logging.getLogger("kdrun")
KEY = "eval.bias_shift"


def parse_bias_shift(value, num_classes: Optional[int] = None) -> Optional[dict[int, float]]:
    """`eval.bias_shift` as {class id: shift}; None when off. Refuses what is not a mapping of class ids to
    finite numbers, and (given `num_classes`) a class id out of range."""
    if value is None:
        return None
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    example = f"e.g. {KEY}='{{3: 3.5}}' (quoted for the shell), or null"
    if not isinstance(value, dict) or not value:
        raise UserError(f"{KEY}={value}: give a mapping of class ids to the shift added to their logits, {example}.")
    out: dict[int, float] = {}
    for k, v in value.items():
        try:
            if isinstance(k, bool) or (isinstance(k, float) and not k.is_integer()):
                raise ValueError
            c = int(k)
        except (TypeError, ValueError):
            raise UserError(f"{KEY}: {k!r} is not a class id; give integer class ids, {example}.") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{KEY}: the shift of class {c} is {v!r}; give a finite number, {example}.")
        out[c] = float(v)
    if num_classes is not None:
        wrong = sorted(c for c in out if not 0 <= c < num_classes)
        if wrong:
            raise UserError(f"{KEY}={value}: {', '.join(map(str, wrong))} "
                            f"{'is not a class' if len(wrong) == 1 else 'are not classes'} of this dataset, "
                            f"whose classes are 0 to {num_classes - 1}.")
    return out


def check_bias_shift(cfg: DictConfig, num_classes: int) -> None:
    """Refuse a wrong `eval.bias_shift` before any training."""
    parse_bias_shift(OmegaConf.select(cfg, KEY), num_classes)


@torch.no_grad()
def logits_of(model: nn.Module, data: Dataset, split: Split, speed: Optional[Speed] = None) -> torch.Tensor:
    """The model's logits (float32, N x classes, on the data's device) in eval mode, in the split's order."""
    speed = speed or Speed(device=data.device)
    was_training = model.training
    model.eval()
    out = [model(speed.batch(x)).float() for x in _inputs(data, split, speed)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, data.num_classes, device=data.device)


def _inputs(data: Dataset, split: Split, speed: Speed):
    for _, x, _ in data.batches(split, evaluation_batch_size(data.device), shuffle=False):
        with speed.autocast():
            yield x


def shifted(logits: torch.Tensor, shift: dict[int, float]) -> torch.Tensor:
    """The logits with `shift[c]` added to column c."""
    out = logits.clone()
    for c, b in shift.items():
        out[:, c] += b
    return out


def errors(logits: torch.Tensor, y: torch.Tensor, shift: dict[int, float], classes=None) -> tuple[int, int]:
    """(errors overall, errors on the examples whose label is in `classes`, default the shifted ones)."""
    wrong = shifted(logits, shift).argmax(1) != y
    classes = list(shift) if classes is None else list(classes)
    inside = torch.isin(y, torch.tensor(classes, dtype=y.dtype, device=y.device))
    return int(wrong.sum()), int((wrong & inside).sum())


def accuracy(logits: torch.Tensor, y: torch.Tensor, shift: dict[int, float]) -> float:
    return round(100.0 * (1.0 - errors(logits, y, shift)[0] / max(len(y), 1)), 4)


def line_search(logits: torch.Tensor, y: torch.Tensor, c: int, shift: dict[int, float]) -> tuple[float, int]:
    """The shift of class c (the others' as in `shift`) with the most correct predictions, and their count."""
    others = shifted(logits, {k: v for k, v in shift.items() if k != c}).double()
    own = others[:, c].clone()
    others[:, c] = -math.inf
    best_other, other_pred = others.max(1)
    threshold = best_other - own  # the example is predicted c iff the shift of c exceeds this
    gains_above = (y == c)  # right once the shift passes its threshold
    gains_below = (y != c) & (other_pred == y)  # right until the shift reaches its threshold
    order = torch.argsort(threshold)
    t = threshold[order]
    above = torch.cat([torch.zeros(1, dtype=torch.long, device=t.device), gains_above[order].long().cumsum(0)])
    below = torch.cat([torch.zeros(1, dtype=torch.long, device=t.device), gains_below[order].long().cumsum(0)])
    n = len(t)
    # a shift between t[k-1] and t[k] (k thresholds below it) gets above[k] + (below[n] - below[k]) right
    correct = above + (below[n] - below)
    valid = torch.ones(n + 1, dtype=torch.bool, device=t.device)
    if n > 1:
        valid[1:n] = t[1:] > t[:-1]  # a cut between equal thresholds is no shift
    correct = torch.where(valid, correct, torch.full_like(correct, -1))
    top = int(correct.max())
    candidates = []
    for k in torch.nonzero(correct == top).flatten().tolist():
        if n == 0:
            b = 0.0
        elif k == 0:
            b = float(t[0]) - 1.0
        elif k == n:
            b = float(t[n - 1]) + 1.0
        else:
            b = float(t[k - 1] + t[k]) / 2.0
        candidates.append(b)
    return min(candidates, key=abs), top


def best_shift(logits: torch.Tensor, y: torch.Tensor, classes, rounds: int = 5) -> dict[int, float]:
    """The shifts of `classes` that maximise the accuracy on (logits, y): exact per class (`line_search`),
    one class after another from no shift, until none changes."""
    shift = {int(c): 0.0 for c in classes}
    for _ in range(rounds):
        changed = False
        for c in shift:
            b, _ = line_search(logits, y, c, shift)
            if b != shift[c]:
                shift[c], changed = b, True
        if not changed:
            break
    return shift


def bias_shift_metrics(cfg: DictConfig, last, data: Dataset) -> dict:
    """The run's bias-shift metrics (the module docstring) for the final stage's outcome `last` (its
    `model`, and its `stage.train_recipe` for the precision); {} when `eval.bias_shift` is null."""
    if OmegaConf.select(cfg, KEY) is None:
        return {}
    shift = parse_bias_shift(OmegaConf.select(cfg, KEY), data.num_classes)
    recipe = getattr(getattr(last, "stage", None), "train_recipe", None)
    speed = Speed.resolve(recipe, data.device) if recipe is not None else Speed(device=data.device)
    model = last.model
    logits, y = logits_of(model, data, data.test, speed), data.test.y
    classes = sorted(shift)
    size = int(torch.isin(y, torch.tensor(classes, dtype=y.dtype, device=y.device)).sum())
    plain, plain_classes = errors(logits, y, {}, classes)
    moved, moved_classes = errors(logits, y, shift)
    n = max(len(y), 1)
    out = {"bias_shift": {str(c): b for c, b in shift.items()},
           "test_errors": plain, "test_errors_shifted_classes": plain_classes, "test_size_shifted_classes": size,
           "test_acc_shifted_classes": round(100.0 * (1 - plain_classes / max(size, 1)), 4),
           "test_acc_bias_shifted": round(100.0 * (1 - moved / n), 4), "test_errors_bias_shifted": moved,
           "test_errors_shifted_classes_bias_shifted": moved_classes,
           "test_acc_shifted_classes_bias_shifted": round(100.0 * (1 - moved_classes / max(size, 1)), 4)}
    names = ", ".join(map(str, classes))
    log.info("Bias shift %s: %d test errors (%d of them on the %d of class%s %s) -> %d (%d); test acc %.2f%% "
             "-> %.2f%%.", out["bias_shift"], plain, plain_classes, size, "es" if len(classes) > 1 else "", names,
             moved, moved_classes, 100.0 * (1 - plain / n), out["test_acc_bias_shifted"])
    if data.val is None or len(data.val) == 0:
        log.info("No validation split (dataset.val_size=0): the best shift of class%s %s is not searched.",
                 "es" if len(classes) > 1 else "", names)
        return out
    val_logits = logits_of(model, data, data.val, speed)
    best = best_shift(val_logits, data.val.y, classes)
    tuned, tuned_classes = errors(logits, y, best)
    out.update({"bias_shift_best": {str(c): round(b, 4) for c, b in best.items()},
                "val_acc_bias_best": accuracy(val_logits, data.val.y, best),
                "test_acc_bias_best": round(100.0 * (1 - tuned / n), 4), "test_errors_bias_best": tuned,
                "test_errors_shifted_classes_bias_best": tuned_classes})
    log.info("Best bias shift on the %d validation examples: %s (val acc %.2f%%); on the test split %d errors "
             "(%d on class%s %s), test acc %.2f%%.", len(data.val), out["bias_shift_best"],
             out["val_acc_bias_best"], tuned, tuned_classes, "es" if len(classes) > 1 else "", names,
             out["test_acc_bias_best"])
    return out


__all__ = ["best_shift", "bias_shift_metrics", "check_bias_shift", "errors", "line_search", "parse_bias_shift",
           "shifted"]
