"""`kdrun`: the Hydra app. One run, or a sweep with `-m`."""
from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdrun import packed
from kdrun.cli_args import preflight
from kdrun.configs import CONFIG_DIR, register_configs
from kdrun.errors import UserError
from kdrun.schema.errors import user_error
from kdrun.schema.keys import check_keys

log = logging.getLogger("kdrun")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def app(cfg: DictConfig):
    return run_job(cfg, HydraConfig.get())


def run_job(cfg: DictConfig, hydra_cfg: DictConfig):
    """One job, as `app` runs it once Hydra composed it: `hydra_cfg` is the job's `hydra` node. The packed
    launcher (hydra_plugins/kdrun_launchers/packed.py) calls it for each member of a group, in its greenlet."""
    from kdrun.results.identity import RunDirTaken, claim, write_config
    from kdrun.schedules.spec import require_complete
    from kdrun.run import report_completed, run
    from kdrun.training.signals import RunInterrupted, interrupts_raise

    from kdrun import distributed

    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if distributed.setup() and not distributed.is_main():  # one of several processes (torchrun, SLURM tasks)
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the run's progress
    run_dir = distributed.common_run_dir(Path(hydra_cfg.runtime.output_dir))
    claimed, log_file = None, None
    with interrupts_raise():
        try:
            check_keys(cfg)  # what `+KEY=VALUE` added past the schema
            require_complete(cfg)
            # Nothing is written into the directory before it is known to be free or this configuration's.
            claimed = claim(run_dir, cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")
            held = claimed[1]
            if held is not None and held.status == "completed":
                report_completed(run_dir, held.metrics)
                return held.metrics
            log_file = open_run_log(run_dir, str(hydra_cfg.job.name)) if distributed.is_main() else None
            if held is None or not (run_dir / CONFIG_RECORD).is_file():
                write_config(run_dir, cfg, hydra_cfg, list(hydra_cfg.overrides.task))
            return run(cfg, run_dir, claimed)
        except SystemExit:  # submitit's requeue on pre-emption ends the job this way
            _record(cfg, run_dir, claimed, "interrupted", "stopped by the job scheduler (requeued)")
            raise
        except RunDirTaken as e:
            log.error(str(e))
            if multirun:
                return {"status": "refused", "error": str(e)}
            sys.exit(2)
        except (UserError, KeyboardInterrupt, Exception) as e:
            user_error = isinstance(e, UserError)
            interrupted = isinstance(e, KeyboardInterrupt)
            message = str(e) if user_error else f"{type(e).__name__}: {e}"
            if interrupted:
                name = e.signal_name if isinstance(e, RunInterrupted) else "SIGINT"
                message = f"interrupted by {name}"
            _record(cfg, run_dir, claimed, "interrupted" if interrupted else "failed", message,
                    **getattr(e, "details", {}))
            if interrupted:
                log.error("Run %s. Every completed epoch is in its checkpoint: rerun the same command with %s "
                          "to resume.", message, _resume_hint(hydra_cfg, run_dir))
            elif user_error:
                log.error(message)
            else:
                log.error("The run failed:\n%s", traceback.format_exc())
            if multirun and not interrupted:
                return {"status": "failed", "error": message}  # the other jobs of the sweep go on
            code = e.exit_code if isinstance(e, RunInterrupted) else 130 if interrupted else 2 if user_error else 1
            sys.exit(code)
        finally:
            close_run_log(log_file)


CONFIG_RECORD = Path(".hydra") / "config.yaml"
LOG_FORMAT = "[%(asctime)s][%(levelname)s] %(message)s"


def open_run_log(run_dir: Path, name: str) -> logging.Handler:
    """The run's log file (JOB_NAME.log, appended to on resume), opened once the directory is claimed."""
    handler = logging.FileHandler(run_dir / f"{name}.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    if packed.current() is not None:  # the jobs of a packed group share the process: each log keeps its own lines
        handler.addFilter(packed.this_member())
    logging.getLogger().addHandler(handler)
    return handler


def close_run_log(handler: Optional[logging.Handler]) -> None:
    """The next job of a sweep in this process, and the launcher's own lines, do not go into this run's log."""
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _record(cfg: DictConfig, run_dir: Path, claimed, status: str, message: str, **fields) -> None:
    """Record how the run ended: in a directory this run claimed (unless that run had completed), or in
    one that holds no work; never in one that holds another configuration's."""
    from kdrun.results.identity import held_by
    from kdrun.results.metrics import RunRecord

    if claimed is None and held_by(run_dir) is not None:
        return
    record = RunRecord(run_dir)
    if record.metrics.get("status") == "completed":
        return
    try:
        record.finish(status, error=message, **fields)
    except UserError as e:  # the directory cannot be written: say so, the message above stays the point
        log.error(str(e))


def torchrun_processes() -> bool:
    from kdrun.distributed import launched_by_torchrun  # torch: imported only where a sweep starts anyway

    return launched_by_torchrun()


def _resume_hint(hydra_cfg, run_dir: Path) -> str:
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"hydra.sweep.dir={hydra_cfg.sweep.dir}"
    return f"hydra.run.dir={run_dir}"


def main() -> None:
    from kdrun.results.sweep import finish_sweep, forget_sweep

    forget_sweep()
    register_configs()
    try:
        args = preflight(sys.argv[1:])
        if args is not None and args.help and not args.hydra_help:
            from kdrun.help import help_text

            try:
                sys.stdout.write(help_text(args.overrides, args.config_dir))
            except Exception as e:  # noqa: BLE001  (a config error, in kdrun's words)
                raise user_error(e) from e
            return
    except UserError as e:
        sys.stderr.write(f"kdrun: {e}\n")
        sys.exit(2)
    if args is not None and args.multirun and torchrun_processes():
        sys.stderr.write("kdrun: -m under torchrun: torchrun's processes make one run together; a sweep would "
                         "start each of its jobs in every process. Run the sweep's jobs one by one under torchrun, "
                         "or sweep with hydra/launcher=slurm hydra.launcher.tasks_per_node=N (one DDP job per run).\n")
        sys.exit(2)
    exit_code = None  # the status kdrun is already leaving with (a signal, a refusal)
    # Hydra prints its errors itself unless HYDRA_FULL_ERROR is set (its documented switch): set, they
    # reach kdrun, which says what a config error means in its own words. A user who set it gets them raw.
    raw_errors = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except SystemExit as e:
        exit_code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    except KeyboardInterrupt:  # Ctrl-C between two jobs of a sweep
        exit_code = 130
        raise SystemExit(130) from None
    except Exception as e:
        error = user_error(e)
        if raw_errors == "1" or not isinstance(error, UserError):
            raise
        exit_code = 2
        sys.stderr.write(f"kdrun: {error}\n")
        raise SystemExit(2) from None
    finally:
        if raw_errors is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = raw_errors
        status = finish_sweep(exit_code)  # a sweep's summary, also when Hydra stopped the sweep early
    if status:
        sys.exit(status)  # some job of the sweep failed, was refused or did not start


if __name__ == "__main__":
    main()
