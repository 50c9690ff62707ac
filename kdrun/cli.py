"""`kdrun`: the Hydra app. One run, or a sweep with `-m`."""
from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdrun.configs import CONFIG_DIR, check_launcher, register_configs
from kdrun.errors import UserError
from kdrun.override_check import check_override_grammar, check_override_keys

log = logging.getLogger("kdrun")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def app(cfg: DictConfig):
    from kdrun.config_check import check_config
    from kdrun.results.identity import RunDirTaken, claim, write_config
    from kdrun.schedules.spec import require_complete
    from kdrun.training.run import report_completed, run
    from kdrun.training.signals import RunInterrupted, interrupts_raise

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    claimed, log_file = None, None
    with interrupts_raise():
        try:
            if _in_process_job(hydra_cfg):
                check_config(cfg, hydra_cfg.runtime.choices, hydra_cfg.job.config_name)
            require_complete(cfg)
            # Nothing is written into the directory before it is known to be free or this configuration's.
            claimed = claim(run_dir, cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")
            held = claimed[1]
            if held is not None and held.status == "completed":
                report_completed(run_dir, held.metrics)
                return held.metrics
            log_file = open_run_log(run_dir, str(hydra_cfg.job.name))
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


def _in_process_job(hydra_cfg) -> bool:
    """A single run or a job of Hydra's basic launcher. The type check composes the defaults with Hydra,
    which in the job process of another launcher re-imports Hydra's config classes, so that the job's
    result can no longer be pickled back to the sweep: there the check is left out."""
    target = str(hydra_cfg.launcher.get("_target_", ""))
    return hydra_cfg.mode == RunMode.RUN or target.endswith("BasicLauncher")


def _resume_hint(hydra_cfg, run_dir: Path) -> str:
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"hydra.sweep.dir={hydra_cfg.sweep.dir}"
    return f"hydra.run.dir={run_dir}"


def check_modes(argv: list[str]) -> None:
    """Hydra raises (with a traceback) for two of its modes at once, e.g. `kdrun -m --cfg job`."""
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return  # argparse has said what is wrong
    modes = [flag for flag, on in (("--run", args.run), ("-m", args.multirun), ("--cfg", args.cfg),
                                   ("--info", args.info), ("--shell-completion", args.shell_completion)) if on]
    if len(modes) > 1:
        hint = (" To see the config of one job of a sweep, drop -m and give that job's values, e.g. "
                "kdrun --cfg job method.T=4.") if "-m" in modes else ""
        raise UserError(f"{' and '.join(modes)} cannot be given together.{hint}")


def check_sweep_preset(argv: list[str]) -> None:
    """`sweep=NAME` sets a grid for `-m` (hydra.sweeper.params); without -m Hydra would run one job with
    the defaults and say nothing."""
    import shlex

    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return
    if args.multirun or args.cfg or args.info or args.help or args.hydra_help or args.shell_completion:
        return
    for text in args.overrides:
        key, sep, value = text.partition("=")
        if key.lstrip("+") == "sweep" and sep and value not in ("", "null"):
            raise UserError(f"sweep={value} is a grid for a sweep: without -m kdrun would run one job with the "
                            f"defaults, not the grid. Run the sweep with -m: kdrun -m "
                            f"{' '.join(shlex.quote(a) for a in argv)} (kdrun --cfg hydra sweep={value} shows its "
                            f"grid under hydra.sweeper.params).")


def main() -> None:
    from kdrun.results.sweep import finish_sweep

    register_configs()
    try:
        check_override_grammar(sys.argv[1:])
        check_modes(sys.argv[1:])
        check_sweep_preset(sys.argv[1:])
        check_launcher(sys.argv[1:])
        check_override_keys(sys.argv[1:])
    except UserError as e:
        sys.stderr.write(f"kdrun: {e}\n")
        sys.exit(2)
    exit_code = None  # the status kdrun is already leaving with (a signal, a refusal)
    try:
        app()
    except SystemExit as e:
        exit_code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    except KeyboardInterrupt:  # Ctrl-C between two jobs of a sweep
        exit_code = 130
        raise SystemExit(130) from None
    finally:
        status = finish_sweep(exit_code)  # a sweep's summary, also when Hydra stopped the sweep early
    if status:
        sys.exit(status)  # some job of the sweep failed, was refused or did not start


if __name__ == "__main__":
    main()
