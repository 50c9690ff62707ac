"""A live progress display (stage, epoch, batch) on a terminal; per-epoch log lines everywhere.

The live display draws on the shared console and is never written to the log file. It is off when
the console is not a terminal (multirun jobs, CI, redirected output) or with `progress=false`.
"""
from __future__ import annotations


from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kdrun.console import console


def progress_enabled(setting) -> bool:
    if isinstance(setting, bool):
        return setting and console.is_terminal
    return str(setting).lower() not in ("false", "off", "0") and console.is_terminal


class StageProgress:
    def __init__(self, enabled: bool, stage: str, epochs: int, batches: int, first_epoch: int = 1):
        self.enabled = enabled
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=True,
            )
            self._epochs = self._progress.add_task(f"{stage} epochs", total=epochs, completed=first_epoch - 1, info="")
            self._batches = self._progress.add_task("  batches", total=batches, info="")

    def __enter__(self):
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress:
            self._progress.stop()

    def batch_done(self) -> None:
        if self._progress:
            self._progress.advance(self._batches)

    def epoch_done(self, info: str) -> None:
        if self._progress:
            self._progress.update(self._epochs, advance=1, info=info)
            self._progress.reset(self._batches)


