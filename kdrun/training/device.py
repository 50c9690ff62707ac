"""`device=auto|cpu|cuda|cuda:N` and the CPU thread count."""
from __future__ import annotations

import os

import torch

from kdrun.errors import UserError


def resolve_device(setting: str) -> torch.device:
    setting = str(setting).strip().lower()
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise UserError(f"device={setting!r} is not a device. Use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device={setting} asks for a GPU, but PyTorch sees none here. Use device=auto or device=cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device={setting}: this machine has {torch.cuda.device_count()} GPU(s), "
                            f"numbered 0 to {torch.cuda.device_count() - 1}.")
    elif device.type != "cpu":
        raise UserError(f"device={setting!r} is not supported. Use auto, cpu, cuda or cuda:N.")
    return device


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def configure_threads() -> None:
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(available_cores())
