"""`hydra/sweeper=kdrun` (kdrun's default): Hydra's grid sweep (the Cartesian product of the swept
values, in the order Hydra's basic sweeper gives, so job numbers are the same) with three things
a results table needs:

- Before anything is written, every job whose directory already holds work is checked against that
  work's configuration (`kdrun.results.identity`): a sweep that would put a job into another
  configuration's directory is refused whole, with the directory left as it was.
- `multirun.yaml` is written by the first sweep into a directory and never rewritten: it describes
  the sweep that made the directory (each job's own config is in its `.hydra/`).
- Each job's outcome (done, failed, refused, not started) goes to `kdrun.results.sweep`, which
  prints the sweep's summary and gives `kdrun -m` its exit status.
"""
# No `from __future__ import annotations`: Hydra's plugin scan executes this module outside sys.modules,
# where dataclasses cannot resolve string annotations.
import copy
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def varying(jobs: Sequence[Sequence[str]], idx: int) -> str:
    """'method.T=4 seed=1': the job's values of the keys that vary across the sweep."""
    return " ".join(o for k, o in enumerate(jobs[idx]) if len({job[k] for job in jobs}) > 1)


def swept(jobs: Sequence[Sequence[str]], idx: int) -> str:
    return f" ({varying(jobs, idx)})" if varying(jobs, idx) else ""


@dataclass
class KdrunSweeperConf:
    _target_: str = "hydra_plugins.kdrun_launchers.sweeper.KdrunSweeper"
    max_batch_size: Optional[int] = None  # jobs handed to the launcher at a time (null: all)
    params: Optional[Dict[str, str]] = None  # swept values, as on the command line (sweep presets set them)


ConfigStore.instance().store(group="hydra/sweeper", name="kdrun", node=KdrunSweeperConf, provider="kdrun")


class KdrunSweeper(Sweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None) -> None:
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def jobs(self, arguments: List[str]) -> list[list[str]]:
        """Every job's overrides: the product of the swept values, a preset's params first (the command line wins)."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        choices: dict[str, list[str]] = {}
        for override in overrides:
            key = override.get_key_element()
            if not override.is_sweep_override():
                choices[key] = [f"{key}={override.get_value_element_as_str()}"]
            elif override.is_discrete_sweep():
                choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
            else:
                raise HydraException(f"{key}: kdrun's sweeper sweeps lists of values (a,b,c), choice(...) and "
                                     f"range(...), not intervals.")
        return [list(job) for job in itertools.product(*choices.values())]

    def sweep(self, arguments: List[str]) -> Any:
        from kdrun.results import sweep as state

        assert self.config is not None and self.launcher is not None
        jobs = self.jobs(arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        configs = self.checked_configs(jobs)
        refused = self.taken_directories(jobs, sweep_dir, configs)
        if refused:
            state.refuse_sweep()
            sys.stderr.write(f"kdrun: the sweep was not started: {refused}\n")
            raise SystemExit(2)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not (sweep_dir / "multirun.yaml").exists():
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        state.plan_jobs([varying(jobs, i) or " ".join(job) for i, job in enumerate(jobs)])
        size = self.max_batch_size if self.max_batch_size and self.max_batch_size > 0 else max(len(jobs), 1)
        returns = []
        for start in range(0, len(jobs), size):
            batch = jobs[start:start + size]  # each composed once already (checked_configs)
            results = self.launcher.launch(batch, initial_job_idx=start)
            for i, result in enumerate(results):
                state.job_returned(start + i, result)
            for result in results:
                _ = result.return_value  # a job that raised (not a kdrun refusal) stops the sweep, as Hydra's does
            returns.append(results)
        return returns

    def checked_configs(self, jobs: Sequence[Sequence[str]]) -> list:
        """Every job's config, composed once before any job starts: a key or value that the schema refuses
        in any job stops the sweep here, naming the job, under every launcher."""
        from kdrun.errors import UserError
        from kdrun.schema.errors import user_error
        from kdrun.schema.keys import check_keys

        configs = []
        for idx, overrides in enumerate(jobs):
            try:
                config = self.job_config(idx, overrides)
                check_keys(config)
            except Exception as e:
                error = user_error(e)
                if not isinstance(error, UserError):
                    raise
                values = varying(jobs, idx)
                where = f" (in job #{idx}{': ' + values if values else ''})" if len(jobs) > 1 else ""
                from kdrun.results import sweep as state

                state.refuse_sweep()
                raise UserError(f"{error}{where} The sweep was not started.") from None
            configs.append(config)
        return configs

    def taken_directories(self, jobs: Sequence[Sequence[str]], sweep_dir: Path, configs: list) -> str:
        """Why the sweep cannot run ('' when it can): the jobs whose directories hold another's work."""
        from kdrun.results.identity import RunDirTaken, claim, what_it_holds

        if not sweep_dir.is_dir() or not any(p.is_dir() for p in sweep_dir.iterdir()):
            return ""
        taken = []
        for idx, overrides in enumerate(jobs):
            job_dir, task_cfg = self.resolved(configs[idx])
            if not job_dir.is_dir():
                continue
            try:
                claim(job_dir, task_cfg)
            except RunDirTaken as e:
                taken.append(f"job #{idx}{swept(jobs, idx)}: {job_dir} holds "
                             f"{what_it_holds(job_dir, e.held, task_cfg, e.identity)}")
        if not taken:
            return ""
        shown = "; ".join(taken[:3]) + (f"; and {len(taken) - 3} more jobs" if len(taken) > 3 else "")
        return (f"the directories of {len(taken)} of its {len(jobs)} jobs already hold other configurations' runs "
                f"({shown}). Nothing in {sweep_dir} was changed. To keep those runs, give this sweep a directory "
                f"of its own (hydra.sweep.dir=NEW_DIR); to replace them, delete {sweep_dir} and run again. Running "
                f"their own sweep command again resumes or reports them.")

    def job_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return sweep_job_config(self.hydra_context, self.config, idx, overrides)

    @staticmethod
    def resolved(config: DictConfig) -> tuple[Path, dict]:
        """The job's directory and resolved task config, as its own process will see them."""
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)
        try:
            job_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
            return job_dir, OmegaConf.to_container(task_cfg, resolve=True)
        finally:
            HydraConfig.instance().cfg = saved


def sweep_job_config(hydra_context, sweep_config: DictConfig, idx: int, overrides: Sequence[str]) -> DictConfig:
    """Job `idx` of a sweep composed as Hydra's launchers compose it (its number in hydra.job)."""
    config = hydra_context.config_loader.load_sweep_config(sweep_config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx
    return config
