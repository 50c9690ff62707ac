"""Runs that differ only by seed form one configuration; the keys that tell configurations apart."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional

from kdrun.results.runs import Run, outside_configuration
from kdrun.results.selection import metric_value

METRICS = ("test_acc", "val_acc", "teacher_test_acc", "teacher_published_acc", "ensemble_test_acc", "test_acc_bias_shifted",
           "test_acc_bias_best")  # teacher_published_acc: what teacher.pretrained's source reports


class _Missing:
    def __repr__(self) -> str:
        return "-"


MISSING = _Missing()  # a key that a configuration does not have (e.g. method.T for method=ce)


@dataclass(frozen=True)
class Stat:
    mean: Optional[float]
    std: Optional[float]  # sample standard deviation over runs; None for fewer than two
    n: int

    def text(self) -> str:
        if self.mean is None:
            return "-"
        return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"


def stat(values: list[float]) -> Stat:
    if not values:
        return Stat(None, None, 0)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))


@dataclass
class Group:
    runs: list[Run]
    select: str = "last"  # which epoch's test accuracy `test_acc` is (kdrun.results.selection)

    @cached_property
    def values(self) -> dict:
        """The choices and config of the group's first run (grouping makes them the same for all)."""
        first = self.runs[0]
        plain = {k: v for k, v in first.config.items() if not outside_configuration(k)}
        return {**first.choices, **plain}

    def value(self, key: str) -> Any:
        return self.values.get(key, MISSING)

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.status in ("failed", "unreadable", "relabelled")]

    @property
    def unfinished(self) -> list[Run]:
        return [r for r in self.runs if r not in self.completed and r not in self.failed]

    def stat(self, metric: str = "test_acc") -> Stat:
        """Over seeds: completed runs of one seed (the same run repeated, or rerun elsewhere) count once,
        with the mean of their values, so `n` is the number of seeds and the spread is the seeds'.
        `test_acc` is the epoch the group's `select` picks; other metrics are as recorded."""
        per_seed: dict = {}
        for r in self.completed:
            value = metric_value(r.metrics, metric, self.select)
            if value is not None:
                per_seed.setdefault(_hashable(r.seed), []).append(value)
        return stat([statistics.fmean(values) for values in per_seed.values()])

    def repeated_seeds(self) -> dict:
        """Seeds with more than one completed run: {seed: [runs]}."""
        by_seed: dict = {}
        for r in self.completed:
            by_seed.setdefault(_hashable(r.seed), []).append(r)
        return {seed: runs for seed, runs in by_seed.items() if len(runs) > 1}

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.completed]


def group_runs(runs: list[Run], select: str = "last") -> list[Group]:
    """Groups in the order their first run appears."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        groups.setdefault(r.configuration(), Group([], select)).runs.append(r)
    return list(groups.values())


def override_keys(runs: list[Run]) -> list[str]:
    """Keys the user set on the command line (or a sweep preset), in the order first seen."""
    keys: dict[str, None] = {}
    for r in runs:
        for o in r.overrides:
            key = o.split("=", 1)[0].lstrip("+~")
            keys.setdefault(key, None)
    return list(keys)


def varying_keys(groups: list[Group]) -> list[str]:
    keys = sorted({k for g in groups for k in g.values})
    return [k for k in keys if len({_hashable(g.value(k)) for g in groups}) > 1]


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _determined_by(key: str, by: list[str], groups: list[Group]) -> bool:
    """Whether `key`'s value follows from the values of `by` in every group."""
    seen: dict[tuple, Any] = {}
    for g in groups:
        basis = tuple(_hashable(g.value(b)) for b in by)
        value = _hashable(g.value(key))
        if seen.setdefault(basis, value) != value:
            return False
    return True


def columns(groups: list[Group]) -> list[str]:
    """The keys shown for each configuration.

    The keys the user varied (overrides, in the order given) come first. Another varying key is shown
    only when it does not follow from those: `method=kd,crd` shows `method`, not the dozen `method.*`
    keys that come with each choice. Since a hidden key follows from the shown ones, the shown
    values still tell every two configurations apart.
    """
    # A run without its .hydra/config.yaml (its process died at the start) would make every key vary.
    with_config = [g for g in groups if g.runs[0].has_config]
    if with_config and len(with_config) < len(groups):
        groups = with_config
    varying = varying_keys(groups)
    choices = {k for g in groups for k in g.runs[0].choices}
    overridden = override_keys([r for g in groups for r in g.runs])
    primary = [k for k in overridden if k in varying]
    if not primary:
        primary = [k for k in varying if k in choices]
    rest = sorted((k for k in varying if k not in primary), key=lambda k: (k not in choices, k))
    return primary + [k for k in rest if not _determined_by(k, primary, groups)]


def display(value: Any) -> str:
    if value is MISSING:
        return "-"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(display(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # as typed: `method.T=4`, which the schema keeps as 4.0
    return str(value)


def sort_values(values) -> list:
    """Numbers in numeric order, anything else by its text; missing values last."""
    values = list(dict.fromkeys(values))
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not MISSING)
    key = (lambda v: (v is MISSING, v if v is not MISSING else 0)) if numbers else (lambda v: (v is MISSING, display(v)))
    return sorted(values, key=key)
