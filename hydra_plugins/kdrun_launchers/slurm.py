"""`hydra/launcher=slurm`: hydra-submitit-launcher's SLURM launcher, which with `pack=true` submits one
array task per packed group (hydra/launcher=packed's groups: one batch preparation and one teacher pass
per batch for all its jobs) or per job that cannot share. Without `pack` it is submitit's launcher as is.

A requeued task (pre-emption, time limit) runs its whole group again: every member resumes after its
last completed epoch, and a finished member is not trained again.
"""
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, run_job, setup_globals
from omegaconf import OmegaConf, open_dict

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
except ImportError:  # optional (pip install -e ".[slurm]"); kdrun.cli_args says so before composing
    SubmititSlurmLauncher = None

log = logging.getLogger(__name__)

if SubmititSlurmLauncher is not None:

    class SlurmLauncher(SubmititSlurmLauncher):
        def __init__(self, pack: bool = False, max_members: Optional[int] = None,
                     batch_students: Optional[bool] = None, **params: Any) -> None:  # run_group reads batch_students
            super().__init__(**params)
            self.pack, self.max_members = bool(pack), max_members

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            if not self.pack:
                return super().launch(job_overrides, initial_job_idx)
            from hydra_plugins.kdrun_launchers.packed import plan
            from hydra_plugins.kdrun_launchers.sweeper import sweep_job_config

            assert self.config is not None and self.hydra_context is not None
            setup_globals()
            overrides = {idx: list(o) for idx, o in enumerate(job_overrides, start=initial_job_idx)}
            configs = {idx: sweep_job_config(self.hydra_context, self.config, idx, o) for idx, o in overrides.items()}
            units = plan(configs, self.max_members)
            executor = self._executor()
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
            Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
            for nums in units:
                for idx in nums:
                    log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides[idx]))}")
            task = PackedTask(self)
            jobs = executor.map_array(task, [[overrides[i] for i in nums] for nums in units], units,
                                      [Singleton.get_state()] * len(units))
            results: dict[int, JobReturn] = {}
            for job in jobs:
                results.update(job.results()[0])
            return [results[i] for i in sorted(results)]

        def _executor(self):
            """submitit's executor with this launcher's parameters (as hydra-submitit-launcher sets it up)."""
            import submitit

            init_keys = {"max_num_timeout"}
            executor = submitit.AutoExecutor(
                cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                **{f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in init_keys})
            base = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                          for k, v in self.params.items() if k not in init_keys | {"submitit_folder"}})
            return executor

    class PackedTask:
        """One array task: the jobs of a packed group in one process (or one job). Checkpointable: a
        requeued task runs the same jobs again, and each resumes."""

        def __init__(self, launcher: "SlurmLauncher") -> None:
            self.launcher = launcher

        def __call__(self, overrides: list, nums: list, singleton_state: dict) -> dict[int, JobReturn]:
            import submitit

            from hydra_plugins.kdrun_launchers.packed import run_group

            launcher = self.launcher
            assert launcher.hydra_context is not None and launcher.config is not None
            Singleton.set_state(singleton_state)
            setup_globals()
            configs = {}
            for num, job_overrides in zip(nums, overrides):
                config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, job_overrides)
                with open_dict(config.hydra.job):
                    config.hydra.job.id = submitit.JobEnvironment().job_id
                    config.hydra.job.num = num
                configs[num] = config
            if len(configs) == 1:
                (num, config), = configs.items()
                return {num: run_job(hydra_context=launcher.hydra_context, task_function=launcher.task_function,
                                     config=config, job_dir_key="hydra.sweep.dir",
                                     job_subdir_key="hydra.sweep.subdir")}
            results, stop_signal = run_group(configs, launcher.hydra_context.callbacks, launcher.task_function,
                                             launcher.config.hydra.verbose)
            if stop_signal is not None:
                raise SystemExit(128 + stop_signal)
            return results

        def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
            import submitit

            return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
