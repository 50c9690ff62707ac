"""`kdrun-report DIR [DIR...]`: one row per configuration of the runs found below the directories.

Prints the table (and `--pivot ROW COL` grids), writes summary.csv and summary.md into every DIR,
and with `--plot` PNG figures next to them.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from kdrun.console import console
from kdrun.errors import UserError
from kdrun.results.grouping import METRICS
from kdrun.results.pivot import pivot
from kdrun.results.runs import find_runs
from kdrun.results.tables import Summary


def summarise(dirs: Sequence[Path], pivot_keys: Optional[Sequence[str]] = None, plot: bool = False,
              metric: str = "test_acc") -> tuple[Summary, list[Path]]:
    """Print the summary of every run below `dirs` and write its files into each of them."""
    dirs = [Path(d) for d in dirs]
    if plot:
        from kdrun.results.plots import require_matplotlib

        require_matplotlib()  # before any work
    runs = find_runs(dirs)
    if not runs:
        raise UserError(f"No kdrun runs below {', '.join(map(str, dirs))}: no metrics.json or .hydra/config.yaml "
                        f"was found. Give the directory of your runs (outputs/ by default) or of a sweep.")
    summary = Summary.of(runs)
    if metric not in summary.metrics:
        raise UserError(f"--metric {metric}: no run reports {metric}. "
                        + ("Runs report val_acc when they hold out data: dataset.val_size=N."
                           if metric == "val_acc" else f"Choose one of {', '.join(summary.metrics)}."))
    grids = pivot(summary.groups, *pivot_keys, shown=summary.columns) if pivot_keys else []
    for table in summary.rich_tables(Path.cwd(), grids, metric):
        console.print(table)
    written = []
    for d in dirs:
        (d / "summary.csv").write_text(summary.csv_text(d))
        (d / "summary.md").write_text(summary.markdown(d, grids, metric))
        written += [d / "summary.csv", d / "summary.md"]
    if plot:
        from kdrun.results.plots import write_plots

        figures = write_plots(summary, grids, metric, dirs[0])
        for d in dirs[1:]:
            for f in figures:
                shutil.copyfile(f, d / f.name)
                written.append(d / f.name)
        written += figures
    return summary, written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdrun-report",
        description="Summarise kdrun runs: one row per configuration (runs that differ only by seed are "
                    "pooled: mean ± sample std), failed and unfinished runs listed. Writes summary.csv and "
                    "summary.md into each DIR.",
        epilog="Example: kdrun-report outputs/multirun/2024-05-01/12-00-00 --pivot method.T method.alpha --plot")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="directories searched (recursively) for runs")
    parser.add_argument("--pivot", nargs=2, metavar=("ROW", "COL"),
                        help="also print a grid of ROW values by COL values (config keys, e.g. method.T method.alpha)")
    parser.add_argument("--plot", action="store_true",
                        help="write PNG figures: the pivot as a heatmap, test accuracy per epoch (needs matplotlib)")
    parser.add_argument("--metric", choices=METRICS, default="test_acc",
                        help="the number shown in the pivot grid and heatmap (default test_acc)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        _, written = summarise(args.dirs, args.pivot, args.plot, args.metric)
    except UserError as e:
        sys.stderr.write(f"kdrun-report: {e}\n")
        sys.exit(2)
    console.print("Wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
