"""Where the jobs of a local sweep run: a fixed set of slots, each pinned to one GPU (or to CPU threads).

Pure functions, so the assignment can be tested without GPUs.
"""
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence


@dataclass(frozen=True)
class Slot:
    index: int
    gpu: Optional[str]  # the GPU's id as this machine names it (CUDA_VISIBLE_DEVICES); None: CPU only
    threads: int  # CPU threads of the job

    @property
    def label(self) -> str:
        return f"GPU {self.gpu}" if self.gpu is not None else "CPU"

    def env(self) -> dict[str, str]:
        """The job sees only its GPU (as cuda:0, which device=auto picks) and its share of CPU threads."""
        return {"CUDA_VISIBLE_DEVICES": self.gpu if self.gpu is not None else "",
                "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}


def plan_slots(gpus: Sequence[str], jobs_per_device: int, cpu_jobs: int, cores: int) -> list[Slot]:
    """Round-robin over the GPUs: slot i runs on gpus[i % len(gpus)], `jobs_per_device` slots per GPU,
    so the first jobs of a sweep spread over all GPUs before any GPU gets a second one. Without GPUs,
    `cpu_jobs` CPU slots. The CPU cores are split evenly between the slots."""
    if jobs_per_device < 1 or cpu_jobs < 1:
        raise ValueError(f"hydra.launcher.jobs_per_device and cpu_jobs must be at least 1, "
                         f"got {jobs_per_device} and {cpu_jobs}.")
    gpus = [str(g) for g in gpus]
    count = len(gpus) * jobs_per_device if gpus else cpu_jobs
    threads = max(1, cores // count)
    return [Slot(i, gpus[i % len(gpus)] if gpus else None, threads) for i in range(count)]


def free_slot(slots: Sequence[Slot], busy: set[int]) -> Optional[Slot]:
    """The next job goes to the first free slot (slots are in round-robin order)."""
    return next((s for s in slots if s.index not in busy), None)


def visible_gpus(requested: Optional[Sequence], environ: Mapping[str, str], device_count: int) -> list[str]:
    """The GPUs a sweep may use: `requested` (hydra.launcher.gpus) if given, else those in
    CUDA_VISIBLE_DEVICES, else every GPU that PyTorch counts."""
    if requested is not None:
        return [str(g) for g in requested]
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [g.strip() for g in listed.split(",") if g.strip()]
        return ids[: ids.index("-1")] if "-1" in ids else ids  # CUDA stops at an invalid id
    return [str(i) for i in range(device_count)]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
