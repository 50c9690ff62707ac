"""`--plot`: the pivot grid as a heatmap and test accuracy per epoch, as PNG files (matplotlib)."""
from __future__ import annotations

import math
import re
from pathlib import Path

from kdrun.errors import UserError
from kdrun.results.grouping import Group, display
from kdrun.results.pivot import Grid
from kdrun.results.tables import Summary, metric_label, missing_text


def require_matplotlib():
    try:
        from matplotlib.figure import Figure  # drawn without pyplot: no display or backend needed
    except ImportError:
        raise UserError("--plot draws with matplotlib, which is not installed here. Install it with "
                        "pip install 'kdrun[plot]' (or pip install matplotlib), or leave out --plot.") from None
    return Figure


def _figure(**kwargs):
    return require_matplotlib()(**kwargs)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


def heatmap_name(grid: Grid, several: bool) -> str:
    suffix = f"__{slug(grid.title)}" if several and grid.fixed else ""
    return f"heatmap_{slug(grid.row)}_{slug(grid.col)}{suffix}.png"


def draw_heatmap(grid: Grid, metric: str, path: Path, label: str | None = None) -> Path:
    label = label or metric_label(metric)
    values = [[_mean(grid.cell(r, c), metric) for c in grid.cols] for r in grid.rows]
    fig = _figure(figsize=(1.6 + 1.3 * len(grid.cols), 1.4 + 0.6 * len(grid.rows)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    finite = [v for row in values for v in row if not math.isnan(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    for i, r in enumerate(grid.rows):
        for j, c in enumerate(grid.cols):
            g = grid.cell(r, c)
            text = "" if g is None else g.stat(metric).text() if g.stat(metric).n else missing_text(g)
            v = values[i][j]
            dark = math.isnan(v) or high == low or (v - low) / (high - low) < 0.6
            ax.text(j, i, text.replace(" ± ", "\n± "), ha="center", va="center", fontsize=8,
                    color="white" if dark and not math.isnan(v) else "black")
    ax.set_xticks(range(len(grid.cols)), [display(c) for c in grid.cols])
    ax.set_yticks(range(len(grid.rows)), [display(r) for r in grid.rows])
    ax.set_xlabel(grid.col)
    ax.set_ylabel(grid.row)
    ax.set_title(f"{label}, mean over seeds" + (f"\n{grid.title}" if grid.fixed else ""), fontsize=10)
    fig.colorbar(image, ax=ax, label=label)
    fig.savefig(path, dpi=120)
    return path


def _mean(g: Group | None, metric: str) -> float:
    s = g.stat(metric) if g is not None else None
    return float("nan") if s is None or s.mean is None else s.mean


def mean_curve(g: Group) -> list[float]:
    """Test accuracy after each epoch (all stages in order), averaged over the group's runs."""
    runs = g.completed or g.runs
    curves = [[h["test_acc"] for h in r.metrics.get("history") or [] if h.get("test_acc") is not None] for r in runs]
    length = max((len(c) for c in curves), default=0)
    return [sum(vals) / len(vals) for vals in ([c[i] for c in curves if i < len(c)] for i in range(length))]


_DASHES = ("-", "--", ":", "-.")


def _short(label: str, limit: int = 70) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _tab20(i: int):
    from matplotlib import colormaps

    return colormaps["tab20"](i)


def draw_curves(summary: Summary, path: Path) -> Path | None:
    curves = [(_short(summary.label(g)), mean_curve(g)) for g in summary.groups]
    curves = [(label, ys) for label, ys in curves if ys]
    if not curves:
        return None
    fig = _figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, ys) in enumerate(curves):
        style = {"color": f"C{i % 10}"} if len(curves) <= 10 else {"color": _tab20(i % 20), "linestyle": _DASHES[i // 20 % 4]}
        ax.plot(range(1, len(ys) + 1), ys, marker="o" if len(ys) <= 20 else None, markersize=3, label=label, **style)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch (all stages in order)")
    ax.set_ylabel("test acc (%)")
    ax.set_title("Test accuracy per epoch (mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small" if len(curves) <= 12 else "x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, dpi=120)
    return path


def write_plots(summary: Summary, grids: list[Grid], metric: str, out_dir: Path) -> list[Path]:
    label = metric_label(metric, summary.select)
    written = [draw_heatmap(grid, metric, out_dir / heatmap_name(grid, len(grids) > 1), label) for grid in grids]
    curves = draw_curves(summary, out_dir / "curves.png")
    return written + ([curves] if curves else [])
