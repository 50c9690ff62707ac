"""`kdrun`: the Hydra app. One run, or a sweep with `-m`."""
from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdrun.configs import CONFIG_DIR, check_launcher, register_configs
from kdrun.errors import UserError
from kdrun.override_check import check_override_grammar, check_override_keys

log = logging.getLogger("kdrun")


def _in_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def app(cfg: DictConfig):
    from kdrun.config_check import check_config
    from kdrun.training.run import run
    from kdrun.training.signals import RunInterrupted, interrupts_raise

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with interrupts_raise():
        try:
            if _in_process_job(hydra_cfg):
                check_config(cfg, hydra_cfg.runtime.choices, hydra_cfg.job.config_name)
            return run(cfg, run_dir)
        except SystemExit:  # submitit's requeue on pre-emption ends the job this way
            _record(cfg, run_dir, "interrupted", "stopped by the job scheduler (requeued)")
            raise
        except (UserError, KeyboardInterrupt, Exception) as e:
            user_error = isinstance(e, UserError)
            interrupted = isinstance(e, KeyboardInterrupt)
            message = str(e) if user_error else f"{type(e).__name__}: {e}"
            if interrupted:
                name = e.signal_name if isinstance(e, RunInterrupted) else "SIGINT"
                message = f"interrupted by {name}"
            _record(cfg, run_dir, "interrupted" if interrupted else "failed", message,
                    **getattr(e, "details", {}))
            if interrupted:
                log.error("Run %s. Every completed epoch is in its checkpoint: rerun the same command with %s "
                          "to resume.", message, _resume_hint(hydra_cfg, run_dir))
            elif user_error:
                log.error(message)
            else:
                log.error("The run failed:\n%s", traceback.format_exc())
            if _in_multirun() and not interrupted:
                return {"status": "failed", "error": message}  # the other jobs of the sweep go on
            code = e.exit_code if isinstance(e, RunInterrupted) else 130 if interrupted else 2 if user_error else 1
            sys.exit(code)


def _record(cfg: DictConfig, run_dir: Path, status: str, message: str, **fields) -> None:
    """Record how the run ended, unless the directory holds a completed run or another configuration's."""
    from kdrun.results.metrics import RunRecord
    from kdrun.training.run import config_identity

    record = RunRecord(run_dir)
    try:
        identity = config_identity(cfg)
    except Exception:  # a config that cannot be resolved has no identity
        identity = None
    if record.metrics.get("status") == "completed" or record.metrics.get("config_id") not in (None, identity):
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
    try:
        app()
    finally:
        status = finish_sweep()  # a sweep's summary, also when Hydra stopped the sweep early
    if status:
        sys.exit(status)  # some job of the sweep failed


if __name__ == "__main__":
    main()
