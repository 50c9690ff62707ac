"""Which epoch's test accuracy a number is: the last epoch's, the best epoch's, or the one at the best
validation accuracy (`kdrun-report --select last|best|best_val`).

Papers differ: RepDistiller's tables report the last epoch's test accuracy; mdistiller reports the best
test accuracy over the epochs, an epoch selected on the test set itself. A run records all three in
metrics.json (`test_acc`; `best_test_acc`, `best_test_epoch`; with a validation split
`test_acc_at_best_val`, `best_val_epoch`), from the epochs of its last stage only: a schedule's earlier
stages train other models or phases. For a run recorded before those keys existed they are computed here
from its `history`, the same way. Ties go to the earliest epoch.

Kept free of torch, like the rest of the report.
"""
from __future__ import annotations

from typing import Optional

SELECTIONS = ("last", "best", "best_val")
KEYS = {"last": "test_acc", "best": "best_test_acc", "best_val": "test_acc_at_best_val"}  # in metrics.json
LABELS = {"last": "test acc (%)", "best": "test acc, best epoch (%)", "best_val": "test acc at best val (%)"}
DESCRIPTIONS = {  # "Test accuracy (--select S): ..."
    "last": "the last epoch's, no selection (as RepDistiller reports)",
    "best": "the best epoch's of the last stage, selected on the test set (as mdistiller reports): an optimistic "
            "number",
    "best_val": "at the epoch of the last stage with the best validation accuracy (dataset.val_size's held-out "
                "split): selected without looking at the test set",
}
NO_VALIDATION = "no validation split"
NO_EPOCHS = "no per-epoch test accuracy of its last stage"


def describe(select: str) -> str:
    return f"Test accuracy (--select {select}): {DESCRIPTIONS[select]}."


def last_stage(metrics: dict) -> Optional[str]:
    """The name of the run's last stage: its last `stages` entry, else the stage of its last epoch."""
    stages = metrics.get("stages") or []
    if isinstance(stages, list) and stages and isinstance(stages[-1], dict) and stages[-1].get("name"):
        return str(stages[-1]["name"])
    history = [h for h in metrics.get("history") or [] if isinstance(h, dict)]
    return history[-1].get("stage") if history else None


def _epochs(history, stage: Optional[str]) -> list[dict]:
    """The entries of `stage` that hold a test accuracy, in epoch order."""
    entries = [h for h in history or [] if isinstance(h, dict) and h.get("stage") == stage
               and isinstance(h.get("test_acc"), (int, float))]
    return sorted(entries, key=lambda h: h.get("epoch") or 0)


def _best(entries: list[dict], key: str) -> Optional[dict]:
    """The entry with the highest `key`; of equal ones, the earliest epoch."""
    best = None
    for h in entries:
        if best is None or h[key] > best[key]:
            best = h
    return best


def epoch_selections(history, stage: Optional[str], validation: Optional[bool] = None) -> dict:
    """`best_test_acc`, `best_test_epoch`: the best test accuracy over `stage`'s epochs and its epoch;
    `test_acc_at_best_val`, `best_val_epoch`: the test accuracy at the epoch of the best validation
    accuracy, and that epoch. None where `stage` has no epoch in `history` (e.g. a model reused from the
    teacher cache). The validation keys are there when `validation` is True, or, for None, when an
    epoch of the stage holds a `val_acc`."""
    entries = _epochs(history, stage)
    best = _best(entries, "test_acc")
    out = {"best_test_acc": best["test_acc"] if best else None, "best_test_epoch": best.get("epoch") if best else None}
    with_val = [h for h in entries if isinstance(h.get("val_acc"), (int, float))]
    if validation or (validation is None and with_val):
        at = _best(with_val, "val_acc")
        out.update(test_acc_at_best_val=at["test_acc"] if at else None, best_val_epoch=at.get("epoch") if at else None)
    return out


def selected_test_acc(metrics: dict, select: str = "last") -> Optional[float]:
    """The run's test accuracy under `select`: what metrics.json records, or, for a run recorded before
    the key existed, what its history gives."""
    key = KEYS[select]
    if key in metrics or select == "last":
        value = metrics.get(key)
    else:
        value = epoch_selections(metrics.get("history"), last_stage(metrics)).get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def stage_accuracy(metrics: dict, stage: str, select: str = "last") -> Optional[float]:
    """One stage's test accuracy under `select` (a paper's row of an earlier generation)."""
    if select == "last":
        values = [s.get("test_acc") for s in metrics.get("stages") or [] if isinstance(s, dict) and s.get("name") == stage]
        value = values[0] if values else None
    else:
        value = epoch_selections(metrics.get("history"), stage).get(KEYS[select])
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def metric_value(metrics: dict, metric: str, select: str = "last") -> Optional[float]:
    """`metric` of a run: `--select` applies to `test_acc` only; every other metric is as recorded."""
    if metric == "test_acc":
        return selected_test_acc(metrics, select)
    value = metrics.get(metric)
    return None if value is None else float(value)


def why_missing(metrics: dict, select: str) -> Optional[str]:
    """Why a run that has a last-epoch `test_acc` has none under `select` (None: it has one)."""
    if metrics.get("test_acc") is None or selected_test_acc(metrics, select) is not None:
        return None
    if select == "best_val":
        has_val = metrics.get("val_acc") is not None or any(
            isinstance(h, dict) and h.get("val_acc") is not None for h in metrics.get("history") or [])
        if not has_val:
            return NO_VALIDATION
    return NO_EPOCHS
