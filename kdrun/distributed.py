"""One run across several processes with torch.distributed (DDP): `torchrun --nproc-per-node=N -m kdrun ...`,
or SLURM tasks (`hydra.launcher.tasks_per_node=N` with the submitit launcher).

Every process runs the same run: the same config, run directory, batch order and teacher. Each epoch's
global batches come from `(seed, stage, epoch)` as in one process; each process trains on its contiguous
share of every batch, DDP averages the gradients, and losses and accuracies are summed over processes.
Only rank 0 writes files (`kdrun.training.checkpoint.atomic_write` asks `is_main`): metrics.json,
checkpoints, logs, the teacher cache.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from kdrun.errors import UserError

log = logging.getLogger("kdrun")


_solo = [False]  # inside `main_first`: this process works alone, without collectives


def joined() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def active() -> bool:
    """Several processes train together now (collectives, DDP, shares of each batch)."""
    return joined() and not _solo[0]


def rank() -> int:
    return dist.get_rank() if joined() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes files."""
    return rank() == 0


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block alone (a teacher it trains and caches), while the others wait; then the others
    run it alone, and find what rank 0 left in the cache. The teacher is then the same as one process's."""
    if not joined():
        yield
        return
    if is_main():
        with _alone():
            yield
        dist.barrier()
    else:
        dist.barrier()
        with _alone():
            yield


@contextlib.contextmanager
def _alone():
    _solo[0] = True
    try:
        yield
    finally:
        _solo[0] = False


TIMEOUT_HOURS = 24


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def slurm_tasks() -> int:
    """The tasks of this SLURM job step (submitit starts one per task with srun): several make one distributed
    run. (SLURM_STEP_NUM_TASKS is srun's: a batch script's own shell, with no step, runs alone.)"""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return 1
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))


def setup() -> bool:
    """Join the process group when launched as one of several processes; True if so. Idempotent."""
    if dist.is_available() and dist.is_initialized():
        return active()
    if launched_by_torchrun():
        pass  # torchrun set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
    elif slurm_tasks() > 1:
        _env_from_slurm()
    else:
        return False
    # NCCL for CUDA tensors, gloo for CPU ones: the run's device (device=cpu too) is not known yet
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend != "gloo":
        torch.cuda.set_device(local_gpu())
    # long enough for the others to wait while rank 0 trains a teacher that is not in the cache
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=TIMEOUT_HOURS))
    log.info("Distributed run: rank %d of %d (%s).", dist.get_rank(), dist.get_world_size(), backend)
    return True


def _env_from_slurm() -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address from SLURM's variables (as submitit's
    JobEnvironment reads them): rank 0 is the first task of the first node."""
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_STEP_NUM_TASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        try:
            import submitit

            os.environ["MASTER_ADDR"] = submitit.JobEnvironment().hostnames[0]
        except Exception:  # noqa: BLE001  (not under submitit: the first host of the node list)
            os.environ["MASTER_ADDR"] = first_host(os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1"))
    job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
    os.environ.setdefault("MASTER_PORT", str(20000 + job % 20000))


def local_gpu() -> int:
    """This process's GPU on its node: its local rank (modulo the GPUs it sees, one when the scheduler gives
    each task its own)."""
    return int(os.environ.get("LOCAL_RANK", 0)) % max(torch.cuda.device_count(), 1)


def place(device: torch.device) -> torch.device:
    """`device=auto` or `cuda` in one of several processes: the process's own GPU."""
    if joined() and device.type == "cuda":
        here, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", 1)), torch.cuda.device_count()
        if here > gpus:  # NCCL refuses two processes on one GPU ("Duplicate GPU detected"), deep inside DDP
            raise UserError(f"{here} processes of this run are on this machine, which has {gpus} GPU(s): each "
                            f"process needs a GPU of its own. Start at most {gpus} (torchrun --nproc-per-node="
                            f"{gpus}), or train on the CPU (device=cpu).")
        if device.index is not None and here > 1:  # torchrun shows every process every GPU
            raise UserError(f"device={device} names one GPU for all {here} processes of this run on this machine, "
                            f"and each process needs a GPU of its own. Use device=cuda (or auto): each process "
                            f"takes the GPU of its local rank.")
        if device.index is None:
            return torch.device("cuda", local_gpu())
    return device


def first_host(nodelist: str) -> str:
    """'node[03-05,07],gpu1' -> 'node03' (SLURM's compact host list, without calling scontrol)."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist[: nodelist.index("]") + 1]
    if "[" not in head:
        return head
    prefix, ranges = head.split("[", 1)
    return prefix + ranges.rstrip("]").split(",")[0].split("-")[0]


def common_run_dir(mine: Path) -> Path:
    """Rank 0's run directory for every process. Under torchrun each process composed its own `${now:...}`
    in hydra.run.dir; Hydra made that directory (empty: kdrun writes nothing before claiming): removed."""
    if not joined():
        return mine
    chosen = [str(mine)]
    dist.broadcast_object_list(chosen, src=0)
    theirs = Path(chosen[0])
    if theirs.resolve() != mine.resolve():
        with contextlib.suppress(OSError):
            mine.rmdir()
    return theirs


def barrier() -> None:
    if active():
        dist.barrier()


def share(index: torch.Tensor, *tensors: torch.Tensor) -> tuple[int, tuple[torch.Tensor, ...]]:
    """This process's contiguous share of a global batch (the first shares take the remainder) and its size.
    A batch smaller than the number of processes leaves some with none: they take the batch's first example
    with size 0 (its loss then weighs 0), since every process must take part in each step's gradient sum."""
    if not active():
        return len(index), (index, *tensors)
    part = torch.tensor_split(torch.arange(len(index), device=index.device), world_size())[rank()]
    count = len(part)
    if count == 0:
        part = torch.zeros(1, dtype=torch.long, device=index.device)
    return count, tuple(t.index_select(0, part) for t in (index, *tensors))


def sum_over_processes(t: torch.Tensor) -> torch.Tensor:
    if active():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def max_over_processes(t: torch.Tensor) -> torch.Tensor:
    if active():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's rows in rank order (their counts may differ by one)."""
    if not active():
        return t
    counts = [torch.zeros((), dtype=torch.long, device=t.device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor(t.shape[0], device=t.device))
    most = int(max(c.item() for c in counts))
    padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)])


class TrainForward(nn.Module):
    """The method's training forward as a module's forward, which DDP wraps (its gradient hooks are armed by
    the forward it runs)."""

    def __init__(self, distiller: nn.Module):
        super().__init__()
        self.distiller = distiller

    def forward(self, *args, **kwargs):
        return self.distiller.forward_train(*args, **kwargs)


def data_parallel(distiller: nn.Module, device: torch.device, recipe) -> Optional[DistributedDataParallel]:
    """The distiller's training forward under DDP when several processes run; None alone. (The frozen teacher
    is outside the distiller's module tree: not synchronised.) Unused parameters are allowed: init stages train
    a part, and a loss term can be switched off for some epochs."""
    if not active():
        return None
    if getattr(recipe, "sync_bn", False):
        if device.type != "cuda":
            raise UserError("train.sync_bn=true: PyTorch's SyncBatchNorm runs on GPUs only, and this run is on "
                            f"{device}. Leave train.sync_bn=false (batch norm over each process's share).")
        distiller.remove_hooks()  # the features read at batch norms are read again from their replacements
        nn.SyncBatchNorm.convert_sync_batchnorm(distiller.student)  # in place: the root is never a batch norm
        distiller.attach()
    module = TrainForward(distiller)
    local = [f"{path}.{name}" for path, m in module.named_modules() if getattr(m, "synchronised_by_method", False)
             for name, _ in m.named_buffers(recurse=False)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, local)  # not broadcast each step
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def evaluation_share(n: int, device: torch.device) -> Optional[torch.Tensor]:
    """The examples of an evaluation split this process scores (every world_size-th one); None alone."""
    if not active():
        return None
    return torch.arange(rank(), n, world_size(), device=device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
