"""The summary a sweep (`kdrun -m`) writes into its directory when it ends, and the sweep's exit status.

`SweepSummary` is a Hydra callback (conf/config.yaml, `hydra.callbacks`). Hydra calls
`on_multirun_end` only when every job returned; when it gives up on a sweep (a job raised, or a
launcher failed) `kdrun.cli.main` calls `finish_sweep()` on its way out, so the summary is written
in every case, once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdrun.console import console


@dataclass
class _SweepState:
    directory: Optional[Path] = None
    exit_status: Optional[int] = None  # set once the summary is written


_state = _SweepState()


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        begin_sweep(Path(str(config.hydra.sweep.dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish_sweep()


def begin_sweep(directory: Path) -> None:
    _state.directory, _state.exit_status = directory.absolute(), None


def finish_sweep() -> int:
    """Write the summary of the sweep that began (if any, once). Returns 1 when a run did not complete."""
    from kdrun.errors import UserError
    from kdrun.results.report import summarise

    if _state.directory is None:
        return 0
    if _state.exit_status is None:
        _state.exit_status = 0
        try:
            summary, _ = summarise([_state.directory])
        except UserError:  # no job got as far as its run directory
            return _state.exit_status
        except Exception as e:
            console.print(f"kdrun: could not write the sweep summary into {_state.directory}: {type(e).__name__}: {e}",
                          markup=False)
            _state.exit_status = 1
            return 1
        console.print(f"Sweep summary: {_state.directory / 'summary.md'}", markup=False)
        bad = summary.not_completed
        if bad:
            console.print(f"{len(bad)} of {len(summary.runs)} runs did not complete (listed above): "
                          "kdrun exits with status 1.", style="bold red", markup=False)
            _state.exit_status = 1
    return _state.exit_status
