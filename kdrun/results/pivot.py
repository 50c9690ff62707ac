"""`--pivot ROW COL`: configurations laid out as a grid, one grid per value of the other shown keys."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from kdrun.errors import UserError
from kdrun.results.grouping import MISSING, Group, display, sort_values
from kdrun.results.runs import NOT_IN_CONFIGURATION, outside_configuration


@dataclass
class Grid:
    row: str
    col: str
    fixed: dict  # the other shown keys' values, the same for every cell of this grid
    rows: list = field(default_factory=list)
    cols: list = field(default_factory=list)
    cells: dict = field(default_factory=dict)  # (row value, col value) -> Group

    def cell(self, r: Any, c: Any) -> Optional[Group]:
        return self.cells.get((r, c))

    @property
    def title(self) -> str:
        return ", ".join(f"{k}={display(v)}" for k, v in self.fixed.items())


def pivot(groups: list[Group], row: str, col: str, shown: list[str]) -> list[Grid]:
    known = list(dict.fromkeys(shown + sorted({k for g in groups for k in g.values})))
    for key in (row, col):
        if outside_configuration(key):
            raise UserError(f"--pivot {key}: runs that differ only in {', '.join(NOT_IN_CONFIGURATION)} are pooled "
                            f"into one configuration. Pivot by keys that differ between configurations: "
                            f"{', '.join(shown) or '(none here)'}.")
        if all(g.value(key) is MISSING for g in groups):
            raise UserError(f"--pivot: no run has the key {key!r}. Keys that differ between the configurations "
                            f"here: {', '.join(shown) or '(none)'}; every key: {', '.join(known)}.")
    if row == col:
        raise UserError(f"--pivot needs two different keys, got {row!r} twice.")
    others = [k for k in shown if k not in (row, col)]
    grids: dict[tuple, Grid] = {}
    for g in groups:
        fixed = tuple(g.value(k) for k in others)
        grid = grids.setdefault(fixed, Grid(row, col, dict(zip(others, fixed))))
        grid.cells[(g.value(row), g.value(col))] = g
    for grid in grids.values():
        grid.rows = sort_values(r for r, _ in grid.cells)
        grid.cols = sort_values(c for _, c in grid.cells)
    return list(grids.values())
