"""A training recipe (`train.*`, `teacher.train.*`, a stage's recipe): the optimiser (SGD or RMSprop),
its learning-rate decay (step or linear), an optional momentum ramp, and per-module learning-rate scales."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Callable, List, Optional, get_type_hints

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from kdrun.data.augment import build_augment
from kdrun.data.base import Dataset
from kdrun.errors import UserError, require
from kdrun.schema.choice import Choice, plain
from kdrun.training.speed import RUNTIME_KEYS, check_precision, parse_switch

class Optimizer(Choice):
    sgd = "sgd"
    rmsprop = "rmsprop"


class LrDecay(Choice):
    step = "step"  # x gamma at each milestone
    linear = "linear"  # from lr in epoch 1 to lr * gamma in epoch milestones[0]


class Precision(Choice):
    auto = "auto"  # bf16 on CUDA and on CPUs with native bf16, else fp32
    bf16 = "bf16"
    fp32 = "fp32"


@dataclass
class Recipe:
    """The schema of `train`, `teacher.train` (and, as a `RecipeDelta`, of a stage's recipe), and the
    recipe a stage trains with (`Recipe.from_config`)."""
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: Optional[List[int]] = field(default_factory=lambda: [20, 25])  # null: none
    gamma: float = 0.1
    nesterov: bool = False
    optimizer: Optimizer = Optimizer.sgd  # sgd | rmsprop (torch RMSprop: alpha rmsprop_decay, eps rmsprop_eps)
    # pylearn2's RMSProp(decay=0.9, max_scaling=1e5) divides by max(rms, 1e-5); torch divides by rms + eps.
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1e-5
    lr_decay: LrDecay = LrDecay.step
    momentum_ramp: Optional[List[float]] = None  # [E, m]: momentum rises linearly to m in epoch E, then stays
    # The training batches' augmentation (dataset.augment's keys) in place of the dataset's; None: the dataset's.
    augment: Any = None  # a group of dataset.augment's keys; build_augment names a wrong one
    # How fast, not what: speed and rounding only (kdrun.training.speed); not in the teacher cache key.
    precision: Precision = Precision.auto
    channels_last: Any = "auto"  # auto | true | false
    compile: bool = False
    cache_teacher: Any = "auto"  # auto | true | false
    # Several processes (torchrun, SLURM tasks): batch norm over the whole batch, not each process's share
    # (torch's SyncBatchNorm, GPUs only). One process: no effect.
    sync_bn: bool = False

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones or ())
        if self.momentum_ramp is not None and len(self.momentum_ramp) == 2 and float(self.momentum_ramp[0]).is_integer():
            self.momentum_ramp = (int(self.momentum_ramp[0]), float(self.momentum_ramp[1]))

    @classmethod
    def from_config(cls, node: DictConfig, where: str = "train", delta: Optional[DictConfig] = None) -> "Recipe":
        """The recipe of a config node (typed by this schema), with a stage's `delta` (a `RecipeDelta`:
        its non-null keys) over it; checked for ranges and cross-key rules."""
        from kdrun.schema.errors import typed

        kind = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if isinstance(kind, type) and issubclass(kind, cls) and delta is None:
            cls = kind  # the node's own schema (teacher.train is a TeacherRecipe)
        values = OmegaConf.to_container(node, resolve=True)
        if delta is not None:
            values.update({k: v for k, v in OmegaConf.to_container(delta, resolve=True).items() if v is not None})
        r = typed(cls, values, where)  # a node the schema did not type at composition (your own schedule's)
        r.check(where)
        return r

    def check(self, where: str) -> None:
        r = self
        if r.augment is not None:
            build_augment(r.augment, f"{where}.augment")  # the user's mistakes named now, not mid-run
        for key in ("lr", "momentum", "weight_decay", "gamma", "rmsprop_decay", "rmsprop_eps"):
            require(math.isfinite(getattr(r, key)), f"{where}.{key}={getattr(r, key)}: expected a finite number.")
        if r.momentum_ramp is not None:
            require(len(r.momentum_ramp) == 2 and float(r.momentum_ramp[0]).is_integer()
                    and math.isfinite(r.momentum_ramp[1]),
                    f"{where}.momentum_ramp={numbers(r.momentum_ramp)}: expected null or [last epoch, final momentum], "
                    f"e.g. [250, 0.7].")
        require(float(r.gamma) > 0, f"{where}.gamma must be positive, got {r.gamma}.")
        require(all(m >= 1 for m in r.milestones), f"{where}.milestones are epochs, 1 or more: got {list(r.milestones)}.")
        require(int(r.epochs) >= 1, f"{where}.epochs must be at least 1, got {r.epochs}.")
        require(int(r.batch_size) >= 1, f"{where}.batch_size must be at least 1, got {r.batch_size}.")
        require(float(r.lr) > 0, f"{where}.lr must be positive, got {r.lr}.")
        require(0 <= float(r.momentum) < 1, f"{where}.momentum must lie in [0, 1), got {r.momentum}.")
        require(float(r.weight_decay) >= 0, f"{where}.weight_decay must be 0 or more, got {r.weight_decay}.")
        check_optimizer(r, where)
        check_lr_decay(r, where)
        check_momentum_ramp(r, where)
        check_precision(r.precision, f"{where}.precision")
        for key in ("channels_last", "compile", "cache_teacher"):
            parse_switch(getattr(r, key), f"{where}.{key}")


    def make_optimizer(self, params, model: Optional[nn.Module] = None) -> torch.optim.Optimizer:
        """The optimiser of `params`. Those owned by a module of `model` with an `lr_scale` attribute get
        their own param group at lr * lr_scale; without such modules there is one group, as always."""
        params = list(params)
        groups = lr_scaled_groups(params, model) if model is not None else []
        target = [{"params": ps, "lr": self.lr * scale} for scale, ps in groups] if groups else params
        if self.optimizer == "rmsprop":
            return torch.optim.RMSprop(target, lr=self.lr, alpha=self.rmsprop_decay, eps=self.rmsprop_eps,
                                       momentum=self.momentum, weight_decay=self.weight_decay, centered=False)
        # One fused kernel for the whole update on CUDA (same arithmetic as the per-tensor loop).
        fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
        return torch.optim.SGD(target, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                               nesterov=self.nesterov and self.momentum > 0, **fused)

    def data_for(self, data: Dataset) -> Dataset:
        """`data` with this recipe's augmentation, when it has its own."""
        if self.augment is None:
            return data
        return dataclasses.replace(data, augment=build_augment(self.augment, "augment"))

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Stepped once per epoch; each param group's lr follows the decay relative to its own initial lr."""
        if self.lr_decay == "linear":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(self.gamma, self.milestones[0]))
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(self.milestones), gamma=self.gamma)

    def momentum_in(self, epoch: int) -> float:
        """The momentum of epoch `epoch` (1-based): `momentum`, or along the ramp to its final value.

        pylearn2's MomentumAdjustor(start=1, saturate=S, final_momentum=f) is exactly `momentum_ramp: [S, f]`:
        Train runs its extensions once before the first epoch, so its counter is e during epoch e and
        alpha = clip((e - 1) / (S - 1), 0, 1), as here."""
        if self.momentum_ramp is None:
            return self.momentum
        last, final = self.momentum_ramp
        alpha = min(epoch - 1, last - 1) / (last - 1)
        return self.momentum * (1 - alpha) + final * alpha

    def as_dict(self) -> dict:
        """The keys that decide what is computed (the teacher cache key): the speed keys are left out."""
        d = {k: plain(v) for k, v in self.__dict__.items()
             if k not in RUNTIME_KEYS and k not in KEPT_KEYS and not self.left_out_of_key(k)}
        d["milestones"] = list(self.milestones)
        if "momentum_ramp" in d:
            d["momentum_ramp"] = list(self.momentum_ramp)
        return d

    def left_out_of_key(self, key: str) -> bool:
        """A key added after teachers were first cached, at its default (or an RMSprop key under SGD): left
        out of `as_dict`, so that recipes that do not use it keep their cache key and find their teachers."""
        if key == "sync_bn" and not self.sync_bn:
            return True
        if key in ("rmsprop_decay", "rmsprop_eps") and self.optimizer != "rmsprop":
            return True
        return key in LATER_KEYS and getattr(self, key) == LATER_KEYS[key]


@dataclass
class TeacherRecipe(Recipe):
    """`teacher.train`: a recipe, and the epochs whose weights the teacher cache keeps besides the last
    (for `teacher.epoch=E` and `schedule=rco`'s anchors). Which epochs are kept changes nothing the
    teacher computes: they are not in its cache key nor in a run's config_id."""
    keep_epochs: List[int] = field(default_factory=list)  # epochs (1 .. epochs) whose weights are kept
    keep_every: Optional[int] = None  # also keep every k-th epoch's weights

    def kept_epochs(self) -> list[int]:
        """The epochs before the last whose weights the cache keeps (the last epoch's are the teacher's)."""
        every = range(self.keep_every, self.epochs, self.keep_every) if self.keep_every else ()
        return sorted({int(e) for e in (*self.keep_epochs, *every) if int(e) < self.epochs})

    def check(self, where: str) -> None:
        super().check(where)
        for e in self.keep_epochs:
            require(1 <= int(e) <= self.epochs, f"{where}.keep_epochs={list(self.keep_epochs)}: each is an epoch "
                                                f"of the teacher's recipe, 1 to {where}.epochs ({self.epochs}).")
        require(self.keep_every is None or int(self.keep_every) >= 1,
                f"{where}.keep_every={self.keep_every}: expected null or a number of epochs, 1 or more.")


KEPT_KEYS = ("keep_epochs", "keep_every")  # TeacherRecipe's: what the cache keeps, not what is trained

LATER_KEYS = {f.name: f.default for f in fields(Recipe)
              if f.name in ("optimizer", "rmsprop_decay", "rmsprop_eps", "lr_decay", "momentum_ramp", "augment")}


def numbers(values) -> str:
    """[5, 0.9] as typed: whole floats without their ".0" (the schema reads [5] as [5.0])."""
    return "[" + ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in values) + "]"


def recipe_delta() -> type:
    """The schema of a stage's recipe (`schedule.hint`, `schedule.gen`, ...): every key of `Recipe`, null by
    default, meaning "as `train`"; the keys it sets replace train's for that stage."""
    hints = get_type_hints(Recipe)
    delta = make_dataclass("RecipeDelta", [(f.name, Optional[hints[f.name]], field(default=None))
                                           for f in fields(Recipe)])
    delta.__module__ = __name__  # pickled by reference, as kdrun.training.recipe.RecipeDelta
    return delta


RecipeDelta = recipe_delta()


def linear_decay(gamma: float, last: int) -> Callable[[int], float]:
    """LambdaLR's factor after k steps (in epoch k + 1): 1 in epoch 1, falling linearly to gamma in epoch
    `last`, gamma after. pylearn2's LinearDecayOverEpoch(start=1, saturate=S, decay_factor=g) with learning
    rate L is already one step down in epoch 1 (its counter is e during epoch e): L * (1 - (1 - g) * e / S).
    That is exactly lr = L * (S - 1 + g) / S, milestones [S], gamma = g * S / (S - 1 + g) here."""
    def factor(steps: int) -> float:
        done = min(steps, last - 1) / (last - 1)
        return gamma * done + (1 - done)
    return factor


def lr_scaled_groups(params: list, model: nn.Module) -> list[tuple[float, list]]:
    """`params` split by the `lr_scale` of the module that holds them directly (pylearn2's W_lr_scale and
    b_lr_scale), the unscaled ones first (group 0 is the default group); [] when none is scaled."""
    trained = {id(p) for p in params}
    scale_of: dict[int, float] = {}
    for name, module in model.named_modules():
        scale = getattr(module, "lr_scale", None)
        if scale is None:
            continue
        if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and 0 < scale < math.inf):
            raise UserError(f"Module {name or type(module).__name__!r} has lr_scale={scale!r}: "
                            f"expected a positive number (its learning rate is lr * lr_scale).")
        for p in module.parameters(recurse=False):
            if id(p) in trained:
                scale_of.setdefault(id(p), float(scale))
    if not scale_of:
        return []
    groups: dict[float, list] = {1.0: []}
    for p in params:
        groups.setdefault(scale_of.get(id(p), 1.0), []).append(p)
    return [(scale, ps) for scale, ps in groups.items() if ps]


def check_optimizer(r: Recipe, where: str) -> None:
    if r.optimizer == "rmsprop":
        require(not r.nesterov, f"{where}.nesterov=true needs {where}.optimizer=sgd (Nesterov momentum is "
                                f"SGD's); set {where}.nesterov=false for rmsprop.")
    require(0 <= float(r.rmsprop_decay) < 1, f"{where}.rmsprop_decay must lie in [0, 1), got {r.rmsprop_decay}.")
    require(float(r.rmsprop_eps) > 0, f"{where}.rmsprop_eps must be positive, got {r.rmsprop_eps}.")


def check_lr_decay(r: Recipe, where: str) -> None:
    if r.lr_decay == "linear":
        require(len(r.milestones) == 1 and r.milestones[0] >= 2,
                f"{where}.lr_decay=linear needs exactly one milestone, the epoch (2 or more) from which the lr "
                f"is lr * gamma, e.g. {where}.milestones=[250]: got {list(r.milestones)}.")


def check_momentum_ramp(r: Recipe, where: str) -> None:
    if r.momentum_ramp is None:
        return
    last, final = r.momentum_ramp
    require(last >= 2, f"{where}.momentum_ramp=[{last}, {final}]: its first value is the epoch (2 or more) in "
                       f"which the momentum reaches its final value; to start at it, set {where}.momentum.")
    require(0 <= final < 1, f"{where}.momentum_ramp=[{last}, {final}]: the final momentum must lie in [0, 1).")
    # torch's RMSprop keeps no momentum buffer when the first step has none, and its Nesterov SGD
    # refuses a momentum of 0: such a ramp must start above 0.
    require(r.momentum > 0 or not (r.optimizer == "rmsprop" or r.nesterov),
            f"{where}.momentum_ramp with {where}.optimizer={r.optimizer}"
            f"{' and nesterov' if r.nesterov else ''} needs a positive starting {where}.momentum, got 0.")
