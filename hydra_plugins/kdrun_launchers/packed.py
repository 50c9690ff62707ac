"""`hydra/launcher=packed`: the jobs of a sweep that can share work run together in this process, one
packed group at a time (kdrun.packed: one greenlet per job, taking turns at batch boundaries, each batch
prepared once and one teacher pass per batch); the other jobs run one after another, as Hydra's basic
launcher runs them. The launcher logs the groups and why each other job runs alone.
"""
import copy
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.kdrun_launchers.sweeper import KdrunSweeper, sweep_job_config

log = logging.getLogger(__name__)


class PackedLauncher(Launcher):
    def __init__(self, max_members: Optional[int] = None, batch_students: Optional[bool] = None) -> None:
        self.max_members = max_members  # batch_students: read from each job's config by run_group
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        configs = {idx: self._job_config(idx, overrides) for idx, overrides in
                   enumerate(job_overrides, start=initial_job_idx)}
        units = plan(configs, self.max_members)
        results: dict[int, JobReturn] = {}
        for nums in units:
            if len(nums) == 1:
                results[nums[0]] = self._run_alone(configs[nums[0]])
            else:
                results.update(self._run_group({idx: configs[idx] for idx in nums}))
        return [results[i] for i in sorted(results)]

    def _job_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return sweep_job_config(self.hydra_context, self.config, idx, overrides)

    def _run_alone(self, config: DictConfig) -> JobReturn:
        assert self.hydra_context is not None and self.task_function is not None
        log.info(f"\t#{config.hydra.job.num}: {' '.join(filter_overrides(config.hydra.overrides.task))}")
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def _run_group(self, configs: dict[int, DictConfig]) -> dict[int, JobReturn]:
        assert self.hydra_context is not None and self.config is not None
        results, stop_signal = run_group(configs, self.hydra_context.callbacks, self.task_function,
                                         self.config.hydra.verbose)
        if stop_signal is not None:
            raise SystemExit(128 + stop_signal)  # as local_gpus: kdrun -m still writes the summary
        return results


def plan(configs: dict[int, DictConfig], max_members: Optional[int]) -> list[list[int]]:
    """The sweep's units (a packed group, or one job alone), logged as the launcher runs them."""
    from kdrun.packed.grouping import plan_groups

    groups, alone = plan_groups({idx: KdrunSweeper.resolved(c)[1] for idx, c in configs.items()}, max_members)
    log.info(f"Packing {len(configs)} jobs: {len(groups)} group(s), {len(alone)} job(s) alone")
    for nums in groups:
        log.info(f"\tpacked together: #{', #'.join(map(str, nums))}")
    for idx in sorted(alone):
        log.info(f"\t#{idx} alone: {alone[idx]}")
    return sorted([list(nums) for nums in groups] + [[idx] for idx in alone])


def run_group(configs: dict[int, DictConfig], callbacks, task_function, verbose) -> tuple[dict[int, JobReturn], Optional[int]]:
    """As Hydra's run_job for each job (its directory, callbacks, JobReturn), the jobs taking turns in
    this process (kdrun.packed.group). Returns each job's JobReturn and the signal that stopped the
    group (None: it ran to its end). A member's exit that kdrun did not ask for (submitit's requeue)
    stops every member, which records it, and is raised again."""
    from kdrun.cli import run_job as kdrun_job
    from kdrun.packed.group import Group

    saved = HydraConfig.instance().cfg
    group, jobs = Group(batch_students=next(iter(configs.values())).hydra.launcher.get("batch_students")), {}
    for idx, config in configs.items():
        HydraConfig.instance().set_config(config)
        output_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        HydraConfig.instance().set_config(config)
        output_dir.mkdir(parents=True, exist_ok=True)
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
            task_cfg.progress = False  # one live display per terminal; not in the identity
        log.info(f"\t#{idx}: {' '.join(filter_overrides(config.hydra.overrides.task))}")
        callbacks.on_job_start(config=config, task_function=task_function)
        member = group.add(idx, HydraConfig.instance().cfg)
        jobs[idx] = (config, task_cfg, member)
    configure_log(next(iter(configs.values())).hydra.job_logging, verbose)
    try:
        group.run({member: (lambda t=task_cfg: kdrun_job(t, HydraConfig.get()))  # the member's own, when it runs
                   for _, task_cfg, member in jobs.values()})
    finally:
        HydraConfig.instance().cfg = saved
    results = {}
    for idx, (config, task_cfg, member) in jobs.items():
        results[idx] = _job_return(config, task_cfg, member)
        callbacks.on_job_end(config=config, job_return=results[idx])
    if group.halted is not None:
        raise group.halted
    return results, group.stop_signal


def _job_return(config: DictConfig, task_cfg: DictConfig, member) -> JobReturn:
    ret = JobReturn(overrides=list(config.hydra.overrides.task), cfg=task_cfg,
                    hydra_cfg=OmegaConf.create({"hydra": OmegaConf.to_container(config.hydra, resolve=False)}),
                    working_dir=os.getcwd(), task_name=str(config.hydra.job.name))
    error = member.error
    if error is None:
        ret.status, ret.return_value = JobStatus.COMPLETED, member.result
    elif isinstance(error, SystemExit):  # the job recorded how it ended and asked to exit: not a crash
        ret.status, ret.return_value = JobStatus.COMPLETED, {"status": "interrupted", "error": f"exit {error.code}"}
    else:
        ret.status, ret.return_value = JobStatus.FAILED, error
    return ret
