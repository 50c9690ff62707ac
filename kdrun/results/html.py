"""`kdrun-report --html`: report.html in every DIR, one page that holds the whole report.

The same rows and values as summary.md (the tables, the `--pivot` grids, `--paper`, the runs that did not
complete), with the heatmaps and learning curves as PNG data URIs and the style inline. The page's
Content-Security-Policy lets it load nothing else and run no script, so it reads the same from a disk, a
mail or an archive, and text from runs (escaped) cannot act as markup.
"""
from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Optional

from kdrun.console import console
from kdrun.errors import UserError
from kdrun.results.pivot import Grid
from kdrun.results.tables import Summary, _grid_cells, metric_label

PAGE = "report.html"
NAV = {"summary": "Summary", "failures": "Runs that did not complete", "grids": "Grids", "curves": "Learning curves",
       "paper": "Beside the paper", "warnings": "Warnings"}  # the page's sections, in order
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
NO_MATPLOTLIB = ('The plots need matplotlib, which is not installed here: pip install -e ".[plot]" in kdrun\'s '
                 'checkout (or pip install matplotlib), then run kdrun-report again.')
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 1200px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; } nav a { margin-right: 12px; } .where { color: #555; margin-top: 0; }
.selection { background: #eef4fb; border-left: 4px solid #3a78c2; padding: 6px 10px; }
table { border-collapse: collapse; margin: 8px 0; } th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f2f2f2; text-align: left; } .num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; } .failed td.status { color: #b00020; font-weight: 600; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; } .note { color: #555; }
.missing { background: #fff4e5; border-left: 4px solid #e69500; padding: 6px 10px; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 6px; margin: 4px 0; } .scroll { overflow-x: auto; }
"""


def figures(summary: Summary, grids: list[Grid], metric: str) -> Optional[dict]:
    """The PNG bytes of each grid's heatmap ({index: bytes}) and of the learning curves ("curves", absent
    when no run has per-epoch accuracies); None without matplotlib."""
    from kdrun.results.plots import draw_curves, draw_heatmap, require_matplotlib

    try:
        require_matplotlib()
    except UserError:
        return None
    label = metric_label(metric, summary.select)
    out: dict = {}
    for i, grid in enumerate(grids):
        out[i] = draw_heatmap(grid, metric, io.BytesIO(), label).getvalue()
    curves = draw_curves(summary, io.BytesIO())
    if curves is not None:
        out["curves"] = curves.getvalue()
    return out


def write_html(summary: Summary, dirs: list[Path], grids: list[Grid], metric: str, comparison,
               warnings: dict) -> list[Path]:
    """report.html into each of `dirs` (paths in it relative to that DIR, as in summary.md); `warnings`:
    {DIR: its warning lines}."""
    images = figures(summary, grids, metric)
    if images is None:
        console.print(f"warning: {PAGE} has the tables but no plots. {NO_MATPLOTLIB}", style="yellow",
                      markup=False, soft_wrap=True)
    written = []
    for d in dirs:
        (d / PAGE).write_text(page(summary, d, grids, metric, comparison, warnings.get(d, []), images),
                              encoding="utf-8")
        written.append(d / PAGE)
    return written


def page(summary: Summary, base: Path, grids: list[Grid], metric: str, comparison, warnings: list[str],
         images: Optional[dict]) -> str:
    selection, *notes = summary.notes()
    sections = [("summary", "Summary", _summary(summary))]
    if summary.not_completed:
        sections.append(("failures", "Runs that did not complete", _failures(summary, base)))
    if grids:
        sections.append(("grids", f"{metric_label(metric, summary.select)} by {grids[0].row} × {grids[0].col}",
                         _grids(summary, grids, metric, images)))
    sections.append(("curves", "Learning curves", _curves(images)))
    if comparison is not None:
        sections.append(("paper", f"Beside the paper: {comparison.paper['title']}", _paper(summary, comparison)))
    if warnings:
        sections.append(("warnings", "Warnings", _list(warnings)))
    head = [f"<h1>kdrun report: {escape(str(base))}</h1>",
            f'<p class="where">{escape(summary.headline())}. Accuracy: mean ± sample std over seeds; n: the '
            f"seeds that completed (runs of one seed count once, their mean).</p>",
            f'<p class="selection">{escape(selection)}</p>', _list(notes),
            "<nav>" + "".join(f'<a href="#{key}">{NAV[key]}</a>' for key, _, _ in sections) + "</nav>"]
    body = head + [f'<section id="{key}"><h2>{escape(title)}</h2>\n{content}</section>'
                   for key, title, content in sections]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>kdrun report: {escape(base.name or str(base))}</title>", f"<style>{STYLE}</style></head>",
        "<body>", *body, "</body></html>", ""])


def _summary(summary: Summary) -> str:
    return _table(summary._headers(), [summary._row_cells(g) for g in summary.groups],
                  numbers_from=len(summary.key_headers))


def _failures(summary: Summary, base: Path) -> str:
    rows = []
    for (path, status, first, configuration), run in zip(summary._problem_rows(base), summary.not_completed):
        error = escape(first)
        if run.error.strip() and run.error.strip() != first:
            error = f"<details><summary>{error}</summary><pre>{escape(run.error.strip())}</pre></details>"
        rows.append(f'<tr class="failed"><td>{escape(path)}</td><td class="status">{escape(status)}</td>'
                    f"<td>{error}</td><td>{escape(configuration)}</td></tr>")
    return _frame("".join(f"<th>{h}</th>" for h in ("run", "status", "error", "configuration")), rows)


def _grids(summary: Summary, grids: list[Grid], metric: str, images: Optional[dict]) -> str:
    out = []
    for i, grid in enumerate(grids):
        if grid.fixed:
            out.append(f"<h3>{escape(grid.title)}</h3>")
        out.append(f'<p class="note">Rows: {escape(grid.row)}; columns: {escape(grid.col)}.</p>')
        out.append(_table(*_grid_cells(grid, metric), numbers_from=1))
        if images is not None:
            out.append(_image(images[i], f"Heatmap of {metric_label(metric, summary.select)}: {grid.row} × "
                                         f"{grid.col}" + (f" ({grid.title})" if grid.fixed else "")))
    if images is None:
        out.append(_missing_plots())
    return "\n".join(out)


def _curves(images: Optional[dict]) -> str:
    if images is None:
        return _missing_plots()
    if "curves" not in images:
        return '<p class="note">No run has a test accuracy per epoch in its history.</p>'
    return _image(images["curves"], "Test accuracy per epoch, mean over seeds, one line per configuration")


def _paper(summary: Summary, comparison) -> str:
    out = [_table(comparison.headers(), comparison.rows(), numbers_from=1), _list(comparison.notes())]
    if comparison.unmatched:
        out.append(f'<p class="note">Runs that match no cell of the paper\'s table: '
                   f"{escape('; '.join(summary.label(g) for g in comparison.unmatched))}</p>")
    return "\n".join(out)


def _missing_plots() -> str:
    return f'<p class="missing">{escape(NO_MATPLOTLIB)}</p>'


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>" if items else ""


def _table(headers: list[str], rows: list[list[str]], numbers_from: Optional[int]) -> str:
    def cell(i: int, text: str, tag: str = "td") -> str:
        number = numbers_from is not None and i >= numbers_from
        return f'<{tag} class="num">{escape(text)}</{tag}>' if number else f"<{tag}>{escape(text)}</{tag}>"

    head = "".join(cell(i, h, "th") for i, h in enumerate(headers))
    return _frame(head, ["<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows])


def _frame(head: str, rows: list[str]) -> str:
    """A table of `head` (its <th> cells) and `rows` (<tr> elements)."""
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(rows)
            + "</tbody></table></div>")
