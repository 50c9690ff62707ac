"""`hydra/launcher=local_gpus`: N jobs of a sweep at once on this machine, each job in its own process
pinned to one GPU (CUDA_VISIBLE_DEVICES), round-robin over the GPUs; on a machine without GPUs, N CPU
jobs with the cores split between them. Each job's console output goes to JOB_DIR/output.log.

With `pack=true` each process runs a packed group of the sweep's jobs (hydra/launcher=packed's groups:
one batch preparation and one teacher pass per batch for all of them) or a job that cannot share; the
group's console output goes to its first job's output.log.
"""
import copy
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.kdrun_launchers.job import BOOTSTRAP, task_reference
from hydra_plugins.kdrun_launchers.packed import plan
from kdrun.errors import UserError
from hydra_plugins.kdrun_launchers.slots import Slot, available_cores, free_slot, plan_slots, visible_gpus

log = logging.getLogger(__name__)
OUTPUT_LOG = "output.log"
STOP_GRACE_S = 30  # after SIGTERM, how long a job may take to save its state before it is killed


class JobProcessDied(CompactHydraException):
    """Printed by Hydra without a traceback: the traceback would be the launcher's, not the job's."""


@dataclass
class _Running:
    nums: list  # the jobs this process runs (several: a packed group)
    overrides: dict  # job number -> its overrides
    slot: Slot
    job_dirs: dict  # job number -> its directory
    result_path: Path
    process: subprocess.Popen
    started: float


class LocalGpusLauncher(Launcher):
    def __init__(self, gpus: Optional[Sequence] = None, jobs_per_device: int = 1, cpu_jobs: int = 2,
                 poll_s: float = 0.2, pack: bool = False, max_members: Optional[int] = None,
                 batch_students: Optional[bool] = None) -> None:  # batch_students: run_group reads the job configs
        self.gpus = list(gpus) if gpus is not None else None
        self.jobs_per_device, self.cpu_jobs, self.poll_s = int(jobs_per_device), int(cpu_jobs), float(poll_s)
        self.pack, self.max_members = bool(pack), max_members
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def slots(self) -> list[Slot]:
        device_count = 0
        if self.gpus is None and "CUDA_VISIBLE_DEVICES" not in os.environ:
            import torch

            device_count = torch.cuda.device_count()
        gpus = visible_gpus(self.gpus, os.environ, device_count)
        try:
            return plan_slots(gpus, self.jobs_per_device, self.cpu_jobs, available_cores())
        except ValueError as e:
            raise CompactHydraException(str(e)) from None  # printed without a traceback

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        handoff = sweep_dir / ".launcher"
        handoff.mkdir(parents=True, exist_ok=True)
        slots = self.slots()
        log.info(f"Launching {len(job_overrides)} jobs locally, {len(slots)} at a time "
                 f"({', '.join(s.label for s in slots)}; {slots[0].threads} CPU thread(s) each)")
        overrides = dict(enumerate((list(o) for o in job_overrides), start=initial_job_idx))
        configs = {idx: self._job_config(idx, o) for idx, o in overrides.items()} if self.pack else {}
        units = plan(configs, self.max_members) if self.pack else [[idx] for idx in overrides]
        pending = deque(units)
        running: dict[int, _Running] = {}
        results: dict[int, JobReturn] = {}
        previous_handler = signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            while pending or running:
                slot = free_slot(slots, set(running))
                while pending and slot is not None:
                    nums = pending.popleft()
                    unit = {idx: configs.get(idx) or self._job_config(idx, overrides[idx]) for idx in nums}
                    running[slot.index] = self._start(unit, slot, handoff)
                    slot = free_slot(slots, set(running))
                done = [s for s, job in running.items() if job.process.poll() is not None]
                for s in done:
                    job = running.pop(s)
                    results.update(self._collect(job))
                if not done:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            raise SystemExit(130) from None  # the jobs got Ctrl-C too; kdrun -m still writes the summary
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            if pending:
                not_started = [i for nums in pending for i in nums]
                log.info(f"Stopping: {len(not_started)} job(s) not started: #{', #'.join(map(str, not_started))}")
            self._stop(list(running.values()))
            if not any(handoff.iterdir()):
                handoff.rmdir()
        return [results[i] for i in sorted(results)]

    def _job_config(self, idx: int, overrides: list) -> DictConfig:
        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        return config

    def _start(self, unit: dict[int, DictConfig], slot: Slot, handoff: Path) -> _Running:
        """A process for `unit`: one job, or the jobs of a packed group (job number -> config)."""
        first = min(unit)
        job_dirs = {idx: self._job_dir(config) for idx, config in unit.items()}
        for idx, config in unit.items():
            _save_job_config(config, job_dirs[idx])
        payload = handoff / f"job-{first}.pkl"
        result_path = handoff / f"job-{first}.result.pkl"
        result_path.unlink(missing_ok=True)
        jobs = {"configs": list(unit.values())} if len(unit) > 1 else {"config": unit[first]}
        payload.write_bytes(pickle.dumps({**jobs, "task": task_reference(self.task_function),
                                          "result_path": str(result_path)}))
        overrides = {idx: list(config.hydra.overrides.task) for idx, config in unit.items()}
        for idx in unit:
            together = f" (packed with #{', #'.join(str(i) for i in unit if i != idx)})" if len(unit) > 1 else ""
            log.info(f"\t#{idx} on {slot.label}{together}: {' '.join(filter_overrides(overrides[idx]))}")
            if idx != first:
                (job_dirs[idx] / OUTPUT_LOG).write_text(
                    f"Packed with #{first}: the group's console output is in {job_dirs[first] / OUTPUT_LOG}\n")
        with open(job_dirs[first] / OUTPUT_LOG, "ab") as out:
            process = subprocess.Popen([sys.executable, "-c", BOOTSTRAP, str(payload), json.dumps(sys.path)],
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, **slot.env()})
        return _Running(sorted(unit), overrides, slot, job_dirs, result_path, process, time.perf_counter())

    @staticmethod
    def _job_dir(config: DictConfig) -> Path:
        # As run_job computes it: the sweep's subdir may use ${hydra:...}, which reads HydraConfig.
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)
        try:
            return Path(str(OmegaConf.select(config, "hydra.sweep.dir"))) / str(OmegaConf.select(config, "hydra.sweep.subdir"))
        finally:
            HydraConfig.instance().cfg = saved

    def _collect(self, job: _Running) -> dict[int, JobReturn]:
        seconds = time.perf_counter() - job.started
        code = job.process.returncode
        first = job.nums[0]
        if job.result_path.is_file():
            results = pickle.loads(job.result_path.read_bytes())
            job.result_path.unlink()
            if not isinstance(results, dict):
                results = {first: results}
        else:
            how = f"was killed by signal {-code}" if code < 0 else f"ended with exit status {code}"
            message = (f"the job's process {how} before the run finished (out of memory? killed?); its "
                       f"output is in {job.job_dirs[first] / OUTPUT_LOG}")
            results = {}
            for idx in job.nums:
                _record_end(job.job_dirs[idx], "failed", message)
                result = JobReturn(overrides=job.overrides[idx], status=JobStatus.FAILED, working_dir=os.getcwd())
                result.return_value = JobProcessDied(message)
                results[idx] = result
        (job.result_path.parent / f"job-{first}.pkl").unlink(missing_ok=True)
        for idx in job.nums:
            status, detail = _outcome(job.job_dirs[idx], results[idx])
            log.info(f"\t#{idx} {status} after {seconds:.1f} s{detail}")
        return results

    def _stop(self, jobs: list[_Running]) -> None:
        """On the way out early (Ctrl-C, an error): SIGTERM lets each job save its state, then kill."""
        for job in jobs:
            if job.process.poll() is None:
                job.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for job in jobs:
            try:
                job.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
            for job_dir in job.job_dirs.values():
                _record_end(job_dir, "interrupted", "stopped when the sweep was stopped; rerun the sweep with "
                                                    "hydra.sweep.dir=... to resume it")


def _save_job_config(config: DictConfig, job_dir: Path) -> None:
    """The job's .hydra/ (which kdrun's task writes when it starts), written already here: a job whose
    process dies before that (killed while importing) can still be told apart in the summary. Only into
    a directory that holds no work: kdrun's sweeper has checked that none holds another configuration's."""
    from kdrun.results.identity import claim, write_config

    job_dir.mkdir(parents=True, exist_ok=True)
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        _, held = claim(job_dir, OmegaConf.to_container(task_cfg, resolve=True), "hydra.sweep.dir")
    except UserError:
        return  # the job itself refuses, with the message
    finally:
        HydraConfig.instance().cfg = saved
    if held is None:
        write_config(job_dir, task_cfg, config.hydra, list(config.hydra.overrides.task))


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _record_end(job_dir: Path, status: str, message: str) -> None:
    """A job process that ended without recording how (killed, out of memory, stopped) gets `status`."""
    path = job_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        metrics = {}
    if metrics.get("status") in ("completed", "failed", "interrupted"):
        return
    metrics.update(status=status, error=message)
    tmp = path.with_name(".metrics.json.launcher.tmp")
    tmp.write_text(json.dumps(metrics, indent=1))
    os.replace(tmp, path)


def _outcome(job_dir: Path, result: JobReturn) -> tuple[str, str]:
    try:
        metrics = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    status = metrics.get("status") or ("completed" if result.status == JobStatus.COMPLETED else "failed")
    acc, error = metrics.get("test_acc"), str(metrics.get("error") or "").strip()
    if isinstance(acc, (int, float)):
        return status, f" (test acc {acc:.2f}%)"
    return status, f": {error.splitlines()[0][:200]}" if error else ""
