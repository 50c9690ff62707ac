"""One rich console for logs, the progress display and the summary table, so they never interleave."""
from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

console = Console()


class ConsoleHandler(logging.Handler):
    """kdrun's console log handler: rich on a terminal, plain unwrapped lines anywhere else."""

    def __init__(self, level: int = logging.NOTSET):
        super().__init__(level)
        self._rich = RichHandler(console=console, show_path=False, show_level=False, markup=False,
                                 rich_tracebacks=False, log_time_format="[%X]")
        self._plain = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")

    def emit(self, record: logging.LogRecord) -> None:
        if console.is_terminal:
            self._rich.emit(record)
        else:
            try:
                sys.stdout.write(self._plain.format(record) + "\n")
                sys.stdout.flush()
            except Exception:
                self.handleError(record)


def plural(n: int, noun: str) -> str:
    """`1 epoch`, `2 epochs`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
