"""The summary of many runs as a rich table, summary.csv and summary.md."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from rich.text import Text

from kdrun.results.grouping import METRICS, Group, columns, display, group_runs
from kdrun.results.pivot import Grid
from kdrun.results.runs import Run
from kdrun.results.selection import KEYS, LABELS, NO_VALIDATION, describe, why_missing

CONFIG_COLUMN = "configuration"  # shown instead of keys when all runs share one configuration
METRIC_LABELS = {"test_acc": "test acc (%)", "val_acc": "val acc (%)", "teacher_test_acc": "teacher acc (%)",
                 "teacher_published_acc": "teacher published (%)",
                 "ensemble_test_acc": "ensemble acc (%)", "test_acc_bias_shifted": "test acc, bias shifted (%)",
                 "test_acc_bias_best": "test acc, best bias shift (%)"}


def metric_label(metric: str, select: str = "last") -> str:
    """The column title of `metric`; `--select` names which epoch's test accuracy it is."""
    return LABELS[select] if metric == "test_acc" else METRIC_LABELS[metric]


def relative(path: Path, base: Path) -> str:
    """The path from base when it lies below base, else the absolute path."""
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive
        return str(Path(path).absolute())
    return str(Path(path).absolute()) if rel.startswith("..") else rel


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass
class Summary:
    runs: list[Run]
    groups: list[Group]
    columns: list[str]
    select: str = "last"  # which epoch's test accuracy is shown (kdrun.results.selection)

    @classmethod
    def of(cls, runs: list[Run], select: str = "last") -> "Summary":
        groups = group_runs(runs, select)
        return cls(runs, groups, columns(groups), select)

    def notes(self) -> list[str]:
        """Which test accuracy is shown, and the completed runs that have none under `--select`."""
        notes = [describe(self.select) + (" It applies to the student's test accuracy (the table, grids and "
                                          "--paper rows that read it); other metrics are as recorded at the "
                                          "last epoch." if self.select != "last" else "")]
        missing: dict[str, int] = {}
        for r in (r for g in self.groups for r in g.completed):
            reason = why_missing(r.metrics, self.select)
            if reason:
                missing[reason] = missing.get(reason, 0) + 1
        label = metric_label("test_acc", self.select)
        for reason, n in missing.items():
            if reason == NO_VALIDATION:
                notes.append(f"{n} completed run(s) have no validation split (dataset.val_size): their {label} "
                             f"is missing (-). Run them with dataset.val_size=N to select on validation data, or "
                             f"choose --select last or best.")
            else:
                notes.append(f"{n} completed run(s) have no per-epoch test accuracy of their last stage in their "
                             f"history (e.g. its model came from the teacher cache): their {label} is missing (-).")
        return notes

    @property
    def metrics(self) -> list[str]:
        """test_acc always; the others when some run has them."""
        return ["test_acc"] + [m for m in METRICS[1:] if any(r.metrics.get(m) is not None for r in self.runs)]

    @property
    def not_completed(self) -> list[Run]:
        return [r for g in self.groups for r in g.failed + g.unfinished]

    @property
    def any_unfinished(self) -> bool:
        return any(g.unfinished for g in self.groups)

    def key_cells(self, g: Group) -> list[str]:
        if self.columns:
            return [display(g.value(k)) for k in self.columns]
        return [" ".join(o for o in g.runs[0].overrides if not o.startswith("seed=")) or "(defaults)"]

    @property
    def key_headers(self) -> list[str]:
        return self.columns or [CONFIG_COLUMN]

    def label(self, g: Group) -> str:
        if not self.columns:
            return self.key_cells(g)[0]
        return ", ".join(f"{k}={v}" for k, v in zip(self.columns, self.key_cells(g)))

    def headline(self) -> str:
        failed = sum(len(g.failed) for g in self.groups)
        unfinished = sum(len(g.unfinished) for g in self.groups)
        return (f"{len(self.runs)} run(s) in {len(self.groups)} configuration(s): "
                f"{len(self.runs) - failed - unfinished} completed, {failed} failed, {unfinished} unfinished")

    # summary.csv: one row per configuration, a fixed set of columns after the keys.
    def csv_text(self, base: Path) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        test = KEYS[self.select]  # test_acc, best_test_acc or test_acc_at_best_val
        writer.writerow(self.key_headers + [f"{test}_mean", f"{test}_std", "val_acc_mean", "val_acc_std",
                                            "teacher_test_acc_mean", "n", "failed", "unfinished", "seeds", "runs"])
        for g in self.groups:
            cells = []
            for metric in ("test_acc", "val_acc", "teacher_test_acc"):
                s = g.stat(metric)
                cells.append(_number(s.mean))
                if metric != "teacher_test_acc":
                    cells.append(_number(s.std))
            writer.writerow(self.key_cells(g) + cells + [
                g.stat().n, len(g.failed), len(g.unfinished), " ".join(display(s) for s in g.seeds),
                " ".join(relative(r.path, base) for r in g.runs)])
        return out.getvalue()

    def _row_cells(self, g: Group) -> list[str]:
        cells = self.key_cells(g) + [g.stat(m).text() for m in self.metrics] + [str(g.stat().n), str(len(g.failed))]
        if self.any_unfinished:
            cells.append(str(len(g.unfinished)))
        return cells

    def _headers(self) -> list[str]:
        headers = self.key_headers + [metric_label(m, self.select) for m in self.metrics] + ["n", "failed"]
        return headers + (["unfinished"] if self.any_unfinished else [])

    def _problem_rows(self, base: Path) -> list[list[str]]:
        return [[relative(r.path, base), r.status, first_line(r.error) or "-", self.label(g) + f", seed={display(r.seed)}"]
                for g in self.groups for r in g.failed + g.unfinished]

    def markdown(self, base: Path, grids: list[Grid], metric: str) -> str:
        lines = ["# kdrun summary", "", self.headline() + ". Accuracy: mean ± sample std over seeds; "
                 "`n` seeds that completed (runs of one seed count once, their mean).", "",
                 *(f"- {note}" for note in self.notes()), "",
                 *_md_table(self._headers(), [self._row_cells(g) for g in self.groups])]
        if self.not_completed:
            lines += ["", "## Runs that did not complete", "",
                      *_md_table(["run", "status", "error", "configuration"], self._problem_rows(base))]
        for grid in grids:
            lines += ["", f"## {metric_label(metric, self.select)}: {grid.row} × {grid.col}" + (f" ({grid.title})" if grid.fixed else ""),
                      "", *_md_table(*_grid_cells(grid, metric))]
        return "\n".join(lines) + "\n"

    def rich_tables(self, base: Path, grids: list[Grid], metric: str) -> list:
        """Titles as lines of their own (a table's title would wrap at the table's width)."""
        out = [_title(f"kdrun summary: {self.headline()}"), *(Text(note) for note in self.notes()),
               _rich_table(self._headers(), [self._row_cells(g) for g in self.groups], right_from=len(self.key_headers))]
        if self.not_completed:
            out += [_title("Runs that did not complete"),
                    _rich_table(["run", "status", "error", "configuration"], self._problem_rows(base), right_from=None)]
        for grid in grids:
            headers, rows = _grid_cells(grid, metric)
            title = f"{metric_label(metric, self.select)}: {grid.row} (rows) × {grid.col} (columns)"
            out += [_title(title + (f"  [{grid.title}]" if grid.fixed else "")), _rich_table(headers, rows, right_from=1)]
        return out


    def paper_markdown(self, comparison) -> str:
        lines = ["", f"## Beside the paper: {comparison.paper['title']}", "",
                 *_md_table(comparison.headers(), comparison.rows()), "", *(f"- {n}" for n in comparison.notes())]
        if comparison.unmatched:
            lines += ["", "Runs that match no cell of the paper's table: "
                      + "; ".join(self.label(g) for g in comparison.unmatched)]
        return "\n".join(lines) + "\n"

    def paper_rich(self, comparison) -> list:
        out = [_title(f"Beside the paper: {comparison.paper['title']}"),
               _rich_table(comparison.headers(), comparison.rows(), right_from=1), *map(Text, comparison.notes())]
        if comparison.unmatched:
            out.append(Text("Runs that match no cell of the paper's table: "
                            + "; ".join(self.label(g) for g in comparison.unmatched)))
        return out


def _number(value) -> str:
    return "" if value is None else f"{value:.4f}"


def missing_text(g: Group) -> str:
    """A grid cell without a value: its runs completed without the metric (-), failed, or did not finish."""
    return "-" if g.completed else "failed" if g.failed else "unfinished"


def _grid_cells(grid: Grid, metric: str) -> tuple[list[str], list[list[str]]]:
    headers = [f"{grid.row} \\ {grid.col}"] + [display(c) for c in grid.cols]
    rows = []
    for r in grid.rows:
        cells = [display(r)]
        for c in grid.cols:
            g = grid.cell(r, c)
            if g is None:
                cells.append("")
            elif g.stat(metric).n:
                cells.append(g.stat(metric).text())
            else:
                cells.append(missing_text(g))
        rows.append(cells)
    return headers, rows


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(map(_md_escape, headers)) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(map(_md_escape, row)) + " |" for row in rows)]


def _title(text: str) -> Text:
    return Text(text, style="bold")


def _rich_table(headers: list[str], rows: list[list[str]], right_from) -> Table:
    table = Table()
    for i, h in enumerate(headers):
        table.add_column(Text(h), justify="right" if right_from is not None and i >= right_from else "left",
                         overflow="fold")
    for row in rows:
        table.add_row(*(Text(c) for c in row))  # no rich markup in values and error messages
    return table
