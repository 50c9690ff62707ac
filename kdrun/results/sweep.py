"""The end of a sweep (`kdrun -m`): its summary in the sweep directory, what became of each job, and
the sweep's exit status.

`SweepSummary` is a Hydra callback (conf/config.yaml, `hydra.callbacks`). Hydra calls
`on_multirun_end` only when every job returned; when it gives up on a sweep (a job raised, a launcher
failed, a signal) `kdrun.cli.main` calls `finish_sweep()` on its way out, so the summary is written
in every case, once. kdrun's sweeper (`hydra/sweeper=kdrun`) tells this module the sweep's jobs and
what each returned; launchers and the job start callback say which jobs started.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdrun.console import console


@dataclass
class _SweepState:
    directory: Optional[Path] = None
    exit_status: Optional[int] = None  # set once the summary is written
    refused: bool = False  # the sweep was refused before any job started: its directory is left alone
    jobs: list[str] = field(default_factory=list)  # each job's overrides, by job number
    started: set[int] = field(default_factory=set)
    outcomes: dict[int, tuple[str, str]] = field(default_factory=dict)  # job number -> (status, message)


_state = _SweepState()


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        begin_sweep(Path(str(config.hydra.sweep.dir)))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        num = config.hydra.job.get("num")
        if num is not None:
            job_started(int(num))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish_sweep()


def forget_sweep() -> None:
    """A new `kdrun` command in this process (scripts and tests call `main()` again): the sweep state of
    the last one must not decide its exit status."""
    global _state
    _state = _SweepState()


def begin_sweep(directory: Path) -> None:
    global _state
    _state = _SweepState(directory=directory.absolute())


def refuse_sweep() -> None:
    _state.refused = True


def plan_jobs(jobs: list[str]) -> None:
    _state.jobs = list(jobs)


def job_started(num: int) -> None:
    _state.started.add(num)


def job_returned(num: int, result) -> None:
    """A job's JobReturn: kdrun's task returns the run's metrics, or {"status": ..., "error": ...}."""
    _state.started.add(num)
    try:
        value = result.return_value
    except Exception as e:  # the job raised
        _state.outcomes[num] = ("failed", f"{type(e).__name__}: {e}")
        return
    if isinstance(value, dict):
        _state.outcomes[num] = (str(value.get("status") or "completed"), str(value.get("error") or ""))


def finish_sweep(exit_code: Optional[int] = None) -> int:
    """Write the summary of the sweep that began (if any, once) and say what became of its jobs.
    `exit_code`: the status kdrun is already exiting with (a signal, a refusal), which it keeps.
    Returns the sweep's status: 1 when a job did not complete, was refused or never started."""
    from kdrun.errors import UserError
    from kdrun.results.report import summarise

    if _state.directory is None or _state.refused:
        return exit_code or 0
    if _state.exit_status is None:
        status = 0
        try:
            summary, _ = summarise([_state.directory])
        except UserError:  # no job got as far as its run directory
            summary = None
        except Exception as e:
            console.print(f"kdrun: could not write the sweep summary into {_state.directory}: {type(e).__name__}: {e}",
                          markup=False)
            summary, status = None, 1
        if summary is not None:
            console.print(f"Sweep summary: {_state.directory / 'summary.md'}", markup=False)
            if summary.not_completed:
                console.print(f"{len(summary.not_completed)} of {len(summary.runs)} runs did not complete "
                              f"(listed above).", style="bold red", markup=False)
                status = 1
        status = max(status, _report_jobs(refusal=exit_code == 2))
        _state.exit_status = status
        final = exit_code or status
        if final:
            console.print(f"kdrun exits with status {final}.", style="bold red", markup=False)
    return _state.exit_status


def _report_jobs(refusal: bool = False) -> int:
    """`refusal`: kdrun stopped the sweep for an error of the user's (its message above), which the same
    command would meet again."""
    refused = sorted(n for n, (status, _) in _state.outcomes.items() if status == "refused")
    for n in refused:
        console.print(f"Job #{n} ({_state.jobs[n] if n < len(_state.jobs) else '?'}) was refused: "
                      f"{_state.outcomes[n][1]}", style="bold red", markup=False)
    waiting = [n for n in range(len(_state.jobs)) if n not in _state.started]
    if waiting:
        names = ", ".join(f"#{n} ({_state.jobs[n]})" for n in waiting)
        again = ("Once what stopped the sweep (above) is fixed, run the command again" if refusal else
                 "Run the same command again")
        console.print(f"{len(waiting)} of the sweep's {len(_state.jobs)} jobs did not start: {names}. {again} "
                      f"with hydra.sweep.dir={_state.directory} to run them: completed jobs are "
                      f"skipped, interrupted ones resume.", style="bold red", markup=False)
    return 1 if refused or waiting else 0
