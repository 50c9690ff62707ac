"""`kdrun-report DIR [DIR...]`: one row per configuration of the runs found below the directories.

Prints the table (and `--pivot ROW COL` grids), writes summary.csv and summary.md into every DIR,
with `--plot` PNG figures next to them, and with `--html` report.html, the whole report in one page.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from kdrun.console import console
from kdrun.errors import UserError
from kdrun.results.grouping import METRICS, display
from kdrun.results.paper import PaperComparison, load_paper, paper_names
from kdrun.results.pivot import pivot
from kdrun.results.runs import find_runs
from kdrun.results.selection import SELECTIONS
from kdrun.results.tables import Summary, relative


def summarise(dirs: Sequence[Path], pivot_keys: Optional[Sequence[str]] = None, plot: bool = False,
              metric: str = "test_acc", paper: Optional[str] = None,
              select: str = "last", html: bool = False) -> tuple[Summary, list[Path]]:
    """Print the summary of every run below `dirs` and write its files into each of them. `select`: which
    epoch's test accuracy the tables, grids and paper rows show (last, best, best_val)."""
    dirs = [Path(d) for d in dirs]
    table = load_paper(paper) if paper else None  # before any work
    if plot:
        from kdrun.results.plots import require_matplotlib

        require_matplotlib()  # before any work
    runs = find_runs(dirs)
    if not runs:
        raise UserError(f"No kdrun runs below {', '.join(map(str, dirs))}: no metrics.json or .hydra/config.yaml "
                        f"was found. Give the directory of your runs (outputs/ by default) or of a sweep.")
    summary = Summary.of(runs, select)
    if metric not in summary.metrics:
        raise UserError(f"--metric {metric}: no run reports {metric}. "
                        + ("Runs report val_acc when they hold out data: dataset.val_size=N."
                           if metric == "val_acc" else f"Choose one of {', '.join(summary.metrics)}."))
    grids = pivot(summary.groups, *pivot_keys, shown=summary.columns) if pivot_keys else []
    problems = warnings(summary, Path.cwd())
    for line in problems:
        console.print(f"warning: {line}", style="yellow", markup=False, soft_wrap=True)
    comparison = PaperComparison.of(table, summary.groups, select) if table else None
    for item in summary.rich_tables(Path.cwd(), grids, metric) + (summary.paper_rich(comparison) if comparison else []):
        console.print(item)
    written = []
    for d in dirs:
        (d / "summary.csv").write_text(summary.csv_text(d))
        (d / "summary.md").write_text(summary.markdown(d, grids, metric)
                                      + (summary.paper_markdown(comparison) if comparison else "")
                                      + "".join(f"\n- warning: {line}" for line in warnings(summary, d))
                                      + ("\n" if problems else ""))
        written += [d / "summary.csv", d / "summary.md"]
    if plot:
        from kdrun.results.plots import write_plots

        figures = write_plots(summary, grids, metric, dirs[0])
        for d in dirs[1:]:
            for f in figures:
                shutil.copyfile(f, d / f.name)
                written.append(d / f.name)
        written += figures
    if html:
        from kdrun.results.html import write_html

        written += write_html(summary, dirs, grids, metric, comparison, {d: warnings(summary, d) for d in dirs})
    return summary, written


def warnings(summary: Summary, base: Path) -> list[str]:
    """What the tables cannot show: files of a run that cannot be read, seeds run more than once."""
    out = [w for r in summary.runs for w in r.warnings]
    for g in summary.groups:
        for seed, runs in g.repeated_seeds().items():
            out.append(f"{summary.label(g)}: {len(runs)} completed runs of seed {display(seed)} "
                       f"({', '.join(relative(r.path, base) for r in runs)}) count as one seed, the mean of their "
                       f"results (n counts seeds).")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdrun-report",
        description="Summarise kdrun runs: one row per configuration (runs that differ only by seed are "
                    "pooled: mean ± sample std), failed and unfinished runs listed. Writes summary.csv and "
                    "summary.md into each DIR.",
        epilog="Example: kdrun-report outputs/multirun/2024-05-01/12-00-00 --pivot method.T method.alpha --plot "
               "--html")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="directories searched (recursively) for runs")
    parser.add_argument("--pivot", nargs=2, metavar=("ROW", "COL"),
                        help="also print a grid of ROW values by COL values (config keys, e.g. method.T method.alpha)")
    parser.add_argument("--plot", action="store_true",
                        help="write PNG figures: the pivot as a heatmap, test accuracy per epoch (needs matplotlib)")
    parser.add_argument("--html", action="store_true",
                        help="write report.html into each DIR: the tables, heatmaps, learning curves, --paper and "
                             "the failed runs in one self-contained page (its plots need matplotlib)")
    parser.add_argument("--metric", choices=METRICS, default="test_acc",
                        help="the number shown in the pivot grid and heatmap (default test_acc; --select "
                             "chooses which epoch's test_acc)")
    parser.add_argument("--select", choices=SELECTIONS, default="last",
                        help="which epoch's test accuracy the tables, grids and --paper rows show: last (the last "
                             "epoch, as RepDistiller reports; default), best (the best epoch, selected on the test "
                             "set, as mdistiller reports), best_val (the epoch of the best validation accuracy; "
                             "runs need dataset.val_size). Other metrics are as recorded")
    parser.add_argument("--paper", metavar="TABLE",
                        help="also print our runs beside a published table, in its layout (also into summary.md): "
                             + ", ".join(paper_names()))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        _, written = summarise(args.dirs, args.pivot, args.plot, args.metric, args.paper, args.select, args.html)
    except UserError as e:
        sys.stderr.write(f"kdrun-report: {e}\n")
        sys.exit(2)
    console.print("Wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
