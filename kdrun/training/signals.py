"""SIGTERM (what SLURM sends before pre-emption) and Ctrl-C (SIGINT) during a run.

Every epoch ends with an atomic checkpoint, so on a signal the run abandons the current step at once:
the partial epoch is redone on resume, exactly, because each epoch's randomness is derived from
(seed, stage, epoch). The CLI then records `status: interrupted` and exits with 128 + the signal
number (130 for Ctrl-C, 143 for SIGTERM).

Inside a submitit job (`hydra/launcher=submitit_slurm`) SIGTERM is left to submitit, which ignores it
on purpose and requeues the job on its own pre-emption signal (USR2 by default); the requeued job
runs the same sweep job in the same directory, and kdrun resumes it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal. A KeyboardInterrupt, so `except Exception` never swallows it."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def handled_signals() -> list[signal.Signals]:
    if os.environ.get("SUBMITIT_EXECUTOR"):
        return [signal.SIGINT]  # submitit owns SIGTERM and its pre-emption signal
    return [signal.SIGINT, signal.SIGTERM]


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise `RunInterrupted` (once: repeats are ignored while the
    run winds down and records its status). Previous handlers come back afterwards."""
    from kdrun import packed

    if threading.current_thread() is not threading.main_thread() or packed.current() is not None:
        yield  # handlers can only be set from the main thread; a packed group's are the group's
        return
    fired = False

    def handler(signum, frame):
        nonlocal fired
        if not fired:
            fired = True
            raise RunInterrupted(signum)

    with handling(handler):
        yield


@contextlib.contextmanager
def handling(handler) -> Iterator[None]:
    """`handler` for SIGTERM and SIGINT (those kdrun handles) within the block; the previous ones after."""
    previous = {s: signal.signal(s, handler) for s in handled_signals()}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
