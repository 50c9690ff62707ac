"""Whether a model takes the dataset's images: one forward pass before any training.

A model whose pools or strides shrink small images to nothing fails only in its forward (e.g. vgg8 on
4x4: "Output size is too small"), so each model is run once on a batch of zeros, in eval mode, on the
run's device. When that fails, the smallest square side that works is found by building the model
for other sizes on the CPU (doubling, then bisecting: a handful of tiny forwards), and named.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.nn as nn

from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.models.args import side, too_small_message

LARGEST = 512  # sides tried when looking for the smallest one that works


def forward_fails(model: nn.Module, info: DataInfo, device: torch.device) -> Optional[Exception]:
    """The error of one forward of a zero batch, or None. Out of memory is not the image's fault: raised."""
    h, w = side(info.image_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, info.channels, h, w, device=device))
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, IndexError, UserError) as e:
        return e
    finally:
        model.train(was_training)
    return None


def smallest_side(build: Callable[[DataInfo], nn.Module], info: DataInfo, failing: int) -> Optional[int]:
    """The smallest square side above `failing` for which `build(info)` runs, or None up to LARGEST."""
    def works(s: int) -> bool:
        sized = dataclasses.replace(info, image_size=(s, s))
        try:
            return forward_fails(build(sized), sized, torch.device("cpu")) is None
        except UserError:  # the constructor refuses the size
            return False

    low, high, s = failing, None, max(2, 2 * failing)
    while s <= LARGEST:
        if works(s):
            high = s
            break
        low, s = s, 2 * s
    if high is None:
        return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if works(mid) else (mid, high)
    return high


def require_input_size(model: nn.Module, build: Callable[[DataInfo], nn.Module], info: DataInfo, who: str,
                       device: torch.device, zoo: bool = True) -> None:
    """Refuse a model that cannot take the dataset's images, naming the smallest side it takes.

    `build(info)` makes the same model for other image sizes. A forward that fails at every size is
    not a matter of size: for a zoo model it is a user's argument (named as such), for a user's own
    model (`_target_`) its own error, raised as it is."""
    error = forward_fails(model, info, device)
    if error is None:
        return
    current = min(side(info.image_size))
    minimum = smallest_side(build, info, current)
    if minimum is not None:
        raise UserError(too_small_message(who, info.image_size, minimum))
    if not zoo:
        raise error
    raise UserError(f"{who} cannot run on the dataset's {info} ({type(error).__name__}: "
                    f"{str(error).strip().splitlines()[0][:200]}). Check the values of its arguments; "
                    f"`kdrun --cfg job` shows them.")
