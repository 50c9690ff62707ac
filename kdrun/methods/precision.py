"""The losses in fp32: under bf16 autocast only the models' forwards run in bf16 (kdrun.training.speed)."""
from __future__ import annotations

import torch


def full_precision(device_type: str):
    """Autocast off, for the losses; their inputs go through `loss_inputs` first."""
    return torch.autocast(device_type, enabled=False)


def loss_inputs(value):
    """Floating tensors (also inside dicts, lists, tuples) as fp32 in the standard (NCHW) layout.

    Losses then see the same tensors whatever the precision and memory format of the forward, so
    a method's `.view(n, -1)` works on channels_last features too. Anything else passes as it is.
    """
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.dtype != torch.float32:
            value = value.float()
        return value.contiguous()
    if isinstance(value, dict):
        return {k: loss_inputs(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(loss_inputs(v) for v in value)
    return value
