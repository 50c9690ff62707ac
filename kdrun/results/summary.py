"""The table printed at the end of a run."""
from __future__ import annotations

from rich.table import Table

from kdrun.console import console


def fmt_acc(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_run_summary(m: dict, run_dir=None) -> None:
    """The run's table; then its epochs, time and speed, and the directory that holds its files."""
    table = Table(title=f"kdrun: {m.get('method')} on {m.get('dataset')} ({m.get('status')})")
    for col in ("model", "role", "test acc (%)"):
        table.add_column(col, justify="right" if "acc" in col else "left")
    if m.get("teacher_test_acc") is not None:
        table.add_row(str(m.get("teacher")), "teacher", fmt_acc(m.get("teacher_test_acc")))
    for s in m.get("stages", [])[:-1]:
        table.add_row(str(s.get("model", "")), f"stage {s['name']}", fmt_acc(s.get("test_acc")))
    stages = m.get("stages", [])
    last = f", stage {stages[-1]['name']}" if len(stages) > 1 else ""
    table.add_row(str(m.get("student")), f"student ({m.get('method')}{last})", fmt_acc(m.get("test_acc")))
    if m.get("ensemble_test_acc") is not None:
        members = m.get("ensemble", [])
        table.add_row(str(m.get("student")), f"ensemble of {len(members)} ({', '.join(members)})",
                      fmt_acc(m.get("ensemble_test_acc")))
    if m.get("val_acc") is not None:
        table.add_row(str(m.get("student")), "student, validation", fmt_acc(m.get("val_acc")))
    console.print(table)
    ips = m.get("train_images_per_s")
    console.print(f"epochs {m.get('epochs')}  ·  wall time {m.get('wall_time_s', 0):.1f} s  ·  "
                  f"{ips or 0:.0f} train images/s")
    if run_dir is not None:
        console.print(f"Run directory: {run_dir}", markup=False, soft_wrap=True)
