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

log = logging.getLogger("kdrun")


def _in_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def app(cfg: DictConfig):
    from kdrun.results.metrics import RunRecord
    from kdrun.training.run import run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return run(cfg, run_dir)
    except (UserError, KeyboardInterrupt, Exception) as e:
        user_error = isinstance(e, UserError)
        message = str(e) if user_error else f"{type(e).__name__}: {e}"
        if isinstance(e, KeyboardInterrupt):
            message = "interrupted"
        record = RunRecord(run_dir)
        if record.metrics.get("status") != "completed":
            record.finish("interrupted" if isinstance(e, KeyboardInterrupt) else "failed", error=message)
        if user_error:
            log.error(message)
        else:
            log.error("The run failed:\n%s", traceback.format_exc())
        if _in_multirun() and not isinstance(e, KeyboardInterrupt):
            return {"status": "failed", "error": message}  # the other jobs of the sweep go on
        sys.exit(130 if isinstance(e, KeyboardInterrupt) else 2 if user_error else 1)


def main() -> None:
    from kdrun.results.sweep import finish_sweep

    register_configs()
    try:
        check_launcher(sys.argv[1:])
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
