"""`kdrun-report DIR --paper TABLE`: our runs beside a published table (kdrun/papers/TABLE.json).

A table file has `columns` and `rows`, each with a `match` of config choices or keys (e.g.
`{"method": "kd"}`, `{"teacher": "wrn40_2", "student": "wrn16_2"}`); a cell holds the runs whose
configuration matches both and whose dataset is the table's (a column may name its own). A row may read
another metric (`teacher_test_acc` for the teacher row; its values are taken once per seed, since every
method of a pair shares the teacher of that seed), or one stage's accuracy (`"stage": "gen1"`, from the
run's `stages` in metrics.json). `kdrun-report --select` picks which epoch's test accuracy the rows that
read the student's test accuracy show (a stage's from its epochs in the run's `history`). A number read from a secondary source (another paper or a reproduction
quoting the table) names it: the row's `from` lists, per column, a key of the table's `quoted_from`, and
the report marks the cell with it. A row `"published_select": "best"` was published as its best epoch (the
report's notes say so unless `--select best`). Runs on `synthetic` data stand in for a dataset of their class count
(the scripts' `--smoke` runs), and the report says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kdrun.errors import UserError
from kdrun.results.grouping import MISSING, Group, Stat, display, stat
from kdrun.results.selection import describe, metric_value, stage_accuracy

PAPERS_DIR = Path(__file__).resolve().parents[1] / "papers"
STAND_IN = "synthetic"
CLASSES = {"mnist": 10, "digits": 10, "cifar10": 10, "cifar100": 100}  # a stand-in fills columns of its class count


def paper_names() -> list[str]:
    return sorted(p.stem for p in PAPERS_DIR.glob("*.json"))


def load_paper(name: str) -> dict:
    path = PAPERS_DIR / f"{name}.json"
    if not path.is_file():
        raise UserError(f"--paper {name}: no such table. Choose one of {', '.join(paper_names())} "
                        f"(files in {PAPERS_DIR}).")
    return json.loads(path.read_text())


def _matches(group: Group, match: dict) -> bool:
    def equal(key, wanted) -> bool:
        ours = display(group.value(key))
        return ours == display(wanted) or (key == "dataset" and ours == STAND_IN and _stands_in(group, str(wanted)))
    return all(equal(k, v) for k, v in match.items())


def _stands_in(group: Group, dataset: str) -> bool:
    classes = group.value("dataset.num_classes")
    return classes in (None, MISSING) or dataset not in CLASSES or int(classes) == CLASSES[dataset]


@dataclass
class Cell:
    ours: Stat
    paper: Optional[float]
    configurations: int
    quoted_from: Optional[str] = None

    def text(self) -> str:
        ours = "—" if self.ours.mean is None else f"{self.ours.text()} ({self.ours.n})"
        paper = "n/a" if self.paper is None else f"{self.paper:.2f}"
        if self.paper is not None and self.quoted_from:
            paper += f" [{self.quoted_from}]"
        diff = "" if self.ours.mean is None or self.paper is None else f" ({self.ours.mean - self.paper:+.2f})"
        star = "*" if self.configurations > 1 else ""
        return f"{ours}{star} vs {paper}{diff}"


@dataclass
class PaperComparison:
    paper: dict
    cells: list[list[Cell]]  # [row][column]
    unmatched: list[Group]
    stand_ins: int  # matched groups run on synthetic data
    select: str = "last"  # which epoch's test accuracy our cells show (kdrun.results.selection)

    @classmethod
    def of(cls, paper: dict, groups: list[Group], select: str = "last") -> "PaperComparison":
        """`select`: the epoch of the student's test accuracy in the rows that read it (`test_acc`, and a
        stage's accuracy); other metrics (teacher, ensemble) are as recorded."""
        table_match = {"dataset": paper["dataset"]} if paper.get("dataset") else {}
        used: set[int] = set()
        cells = []
        for row in paper["rows"]:
            metric = row.get("metric", "test_acc")
            line = []
            quoted = row.get("from") or [None] * len(row["values"])
            for col, published, source in zip(paper["columns"], row["values"], quoted):
                hits = [g for g in groups if _matches(g, {**table_match, **row["match"], **col["match"]})]
                used.update(id(g) for g in hits)
                pooled = len(hits) if metric != "teacher_test_acc" else min(len(hits), 1)  # one teacher: pooling intended
                line.append(Cell(_stat(hits, metric, row.get("stage"), select), published, pooled, source))
            cells.append(line)
        unmatched = [g for g in groups if id(g) not in used]
        stand_ins = sum(1 for g in groups if id(g) in used and display(g.value("dataset")) == STAND_IN)
        return cls(paper, cells, unmatched, stand_ins, select)

    def headers(self) -> list[str]:
        return [""] + [c["label"] for c in self.paper["columns"]]

    def rows(self) -> list[list[str]]:
        return [[row["label"]] + [c.text() for c in line] for row, line in zip(self.paper["rows"], self.cells)]

    def notes(self) -> list[str]:
        p = self.paper
        notes = [f"Cells: ours, mean ± std over seeds (n seeds), vs the paper's number (ours − paper). "
                 f"Published as: {p.get('published_as', 'top-1 test accuracy (%)')}.",
                 "Ours: " + describe(self.select),
                 "Sources: " + "; ".join(p.get("sources", []))]
        for key, source in p.get("quoted_from", {}).items():
            notes.append(f"[{key}]: quoted by a secondary source, not read from the paper itself: {source}")
        best = [row["label"] for row in p["rows"] if row.get("published_select") == "best"]
        if best and self.select != "best":
            notes.append(f"Published as the best epoch (selected on the test set): {', '.join(best)}; "
                         f"--select best compares them like with like.")
        if p.get("missing"):
            notes.append(f"Not recorded, and caveats: {p['missing']}")
        if any(c.configurations > 1 for line in self.cells for c in line):
            notes.append("*: the cell pools runs of several configurations that all match it.")
        if self.stand_ins:
            notes.append(f"{self.stand_ins} configuration(s) ran on synthetic data, standing in for "
                         f"{p.get('dataset') or 'the paper’s datasets'}: a smoke test, not a reproduction.")
        return notes


def _stat(groups: list[Group], metric: str, stage: Optional[str] = None, select: str = "last") -> Stat:
    if metric == "teacher_test_acc":  # one teacher per seed, shared by the methods: count it once
        per_seed = {}
        for g in groups:
            for r in g.completed:
                if r.metrics.get(metric) is not None:
                    per_seed.setdefault((display(g.value("dataset")), r.seed), float(r.metrics[metric]))
        return stat(list(per_seed.values()))
    if stage is not None:
        if metric == "test_acc":
            values = [stage_accuracy(r.metrics, stage, select) for g in groups for r in g.completed]
        else:
            values = [s.get(metric) for g in groups for r in g.completed
                      for s in r.metrics.get("stages") or [] if s.get("name") == stage]
        return stat([float(v) for v in values if v is not None])
    per_seed: dict = {}  # runs of one seed of one configuration count once (their mean), as in Group.stat
    for i, g in enumerate(groups):
        for r in g.completed:
            value = metric_value(r.metrics, metric, select)
            if value is not None:
                per_seed.setdefault((i, display(r.seed)), []).append(value)
    return stat([sum(v) / len(v) for v in per_seed.values()])
