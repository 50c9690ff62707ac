"""How a stage runs fast without changing what it computes beyond rounding.

The recipe keys `precision`, `channels_last`, `compile` and `cache_teacher` (see `Recipe`) are
resolved here for the run's device:

- `precision=auto` is bf16 autocast on CUDA, and on a CPU with native bf16 instructions (AVX512-BF16
  or AMX), where it about halves the time of a conv net's step; fp32 elsewhere. Only the models'
  forwards (and so their backwards) run under autocast: the parameters, the optimiser and every
  loss stay in fp32 (`Distiller.forward_train` turns autocast off for the losses).
- `channels_last=auto` is on for CUDA (tensor cores want NHWC) and for the CPU, where oneDNN's NHWC
  convolutions (torch 2.14) made a training step 1.1x to 2.1x faster than NCHW for every model measured
  (docs/speed.md); other devices stay NCHW.
- `compile=true` compiles the student's and the teacher's forward with `torch.compile` (in place,
  so state dicts keep their keys). Costs compile time at the start of each stage.
- `cache_teacher=auto` keeps the frozen teacher's outputs per training example when the training
  data is not augmented (see `kdrun.training.teacher_outputs`).

None of these keys enters the teacher cache key or a run's identity: they change speed and rounding,
not the experiment.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from kdrun.errors import UserError

RUNTIME_KEYS = ("precision", "channels_last", "compile", "cache_teacher")  # a recipe's speed keys
log = logging.getLogger("kdrun")

PRECISIONS = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}


def parse_switch(value, key: str) -> Optional[bool]:
    """auto -> None, true/false (or their usual spellings) -> bool."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise UserError(f"{key} must be auto, true or false, got {value!r}.")


def check_precision(value, key: str) -> str:
    text = str(value).strip().lower()
    if text not in PRECISIONS:
        raise UserError(f"{key} must be one of {', '.join(PRECISIONS)}, got {value!r}. "
                        f"auto is bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere.")
    return text


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo (Linux); False where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    dtype = PRECISIONS[check_precision(precision, "train.precision")]
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("train.precision=bf16: this GPU has no bf16 support. Use train.precision=fp32 (or auto).")
    return dtype


@dataclass(frozen=True)
class Speed:
    """The resolved speed settings of one stage on one device."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    compile: bool = False
    cache_teacher: Optional[bool] = None  # None: when possible

    @classmethod
    def resolve(cls, recipe, device: torch.device) -> "Speed":
        channels_last = parse_switch(recipe.channels_last, "train.channels_last")
        return cls(
            device=device,
            dtype=resolve_dtype(recipe.precision, device),
            channels_last=device.type in ("cuda", "cpu") if channels_last is None else channels_last,
            compile=bool(parse_switch(recipe.compile, "train.compile")),
            cache_teacher=parse_switch(recipe.cache_teacher, "train.cache_teacher"),
        )

    def autocast(self):
        """The context the models' forwards run in: autocast to bf16, or nothing."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_model(self, model: Optional[nn.Module]) -> None:
        """Memory format and compilation, in place (parameters and state-dict keys stay the same)."""
        if model is None:
            return
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile and not getattr(model, "_kdrun_compiled", False):
            model.compile()
            model._kdrun_compiled = True

    def describe(self) -> str:
        precision = {torch.float32: "fp32", torch.bfloat16: "bf16 autocast"}.get(self.dtype, str(self.dtype))
        return (f"{precision}, {'channels_last' if self.channels_last else 'NCHW'}"
                f"{', torch.compile' if self.compile else ''}")


def configure_backends(device: torch.device) -> None:
    """cuDNN autotuning: the input shapes of a training loop repeat, so the search pays off."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def start_stage(distiller: nn.Module, data, recipe):
    """Resolve the stage's speed settings, prepare the models; returns the settings and the stage's
    teacher-output cache (or None), which the training loop owns and passes to every step."""
    from kdrun.training.teacher_outputs import teacher_output_cache

    speed = Speed.resolve(recipe, data.device)
    configure_backends(speed.device)
    teacher = getattr(distiller, "teacher", None)
    cache = teacher_output_cache(distiller, data, speed.cache_teacher, speed)
    if speed.channels_last:
        distiller.to(memory_format=torch.channels_last)  # the student and the method's own modules
    speed.prepare_model(distiller.student)
    speed.prepare_model(teacher)
    log.info("Training runs in %s on %s.", speed.describe(), speed.device)
    return speed, cache


def end_epoch(cache) -> None:
    """After a full epoch every training example has passed once: the teacher cache is complete."""
    if cache is not None:
        cache.epoch_done()
