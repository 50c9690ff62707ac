"""A live progress display (stage, epoch, batch) on a terminal; per-epoch log lines everywhere.

The live display draws on the shared console and is never written to the log file. It is off when
the console is not a terminal (multirun jobs, CI, redirected output) or with `progress=false`.
"""
from __future__ import annotations


from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kdrun.console import console
from kdrun.errors import UserError


PROGRESS = ("auto", "true", "false")


def progress_enabled(setting) -> bool:
    """`progress`: auto (on a terminal), true (the same: never drawn into a file), false."""
    value = str(setting).lower() if isinstance(setting, (bool, str)) else None
    if value not in PROGRESS:
        raise UserError(f"progress={setting}: expected one of {', '.join(PROGRESS)} (auto and true draw the live "
                        f"display on a terminal only). Give progress one of them, e.g. progress=false.")
    return value != "false" and console.is_terminal


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


