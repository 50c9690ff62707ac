"""Train one stage: epochs of the recipe's optimiser over on-device batches, a test and a checkpoint each epoch.

The per-epoch randomness (batch order, augmentation, dropout) is derived from (seed, stage, epoch),
so a stage resumed from its checkpoint continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from kdrun.data.base import Dataset, Split
from kdrun.data.randaugment import StrongView
from kdrun.errors import UserError
from kdrun.methods.base import Distiller
from kdrun import packed
from kdrun import distributed
from kdrun.training.checkpoint import load_torch, save_torch
from kdrun.training.progress import StageProgress
from kdrun.training.recipe import Recipe
from kdrun.training.speed import Speed, end_epoch, start_stage

log = logging.getLogger("kdrun")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite. `details` (stage, epoch, step) go into metrics.json."""

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.details = {"diverged": details}


@dataclass
class StageResult:
    history: list[dict] = field(default_factory=list)
    train_images: int = 0
    train_seconds: float = 0.0

    @property
    def test_acc(self) -> float:
        return self.history[-1]["test_acc"]

    @property
    def val_acc(self) -> Optional[float]:
        return self.history[-1].get("val_acc")


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    digest = hashlib.sha256(f"{seed}/{stage}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def evaluation_batch_size(device: torch.device) -> int:
    """Large batches keep a GPU busy; on the CPU, batches of 64 that fit the cache evaluate about 2.5x
    as fast as batches of 1000 (scripts/bench_eval.py: wrn16_2, resnet8)."""
    return 1000 if device.type == "cuda" else 64


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, split: Split, batch_size: Optional[int] = None,
             speed: Optional[Speed] = None) -> float:
    """Top-1 accuracy in percent; the order of batches and their size do not change it."""
    speed = speed or Speed(device=data.device)
    batch_size = batch_size or evaluation_batch_size(data.device)
    was_training = model.training
    model.eval()
    n = len(split)
    share = distributed.evaluation_share(n, split.y.device)  # several processes: each scores its share
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    for _, x, y in data.batches(split if share is None else split.take(share), batch_size, shuffle=False):
        with speed.autocast():
            correct += (model(speed.batch(x)).argmax(1) == y).sum()
    model.train(was_training)
    return round(100.0 * distributed.sum_over_processes(correct).item() / max(n, 1), 4)


def fit(
    distiller: Distiller,
    data: Dataset,
    recipe: Recipe,
    *,
    stage: str,
    seed: int,
    checkpoint: Optional[Path] = None,
    progress: bool = False,
    on_epoch: Optional[Callable[[dict], None]] = None,
    parameters: Optional[list] = None,
    stamp: Optional[dict] = None,
    phase: str = "main",
    stop_after: Optional[int] = None,
    after_epoch: Optional[Callable[[int, dict], None]] = None,
    data_seed: Optional[int] = None,
) -> StageResult:
    """Train `parameters` (default: every trainable parameter of the method, student included).

    `stamp`: what the checkpoint was made under (the run's `config_id`, a cache key): saved with every
    checkpoint, and a checkpoint with another stamp is refused instead of resumed.
    `stop_after`: the last epoch to train now (the recipe's schedule stays that of all its epochs; a later
    call resumes from the checkpoint). `after_epoch(epoch, entry)`: called for each epoch trained in this
    call (not for those of a resumed history), before its checkpoint is written.
    `data_seed`: what the batch order and augmentation follow (None: `seed`)."""
    stamp = dict(stamp or {})
    params = parameters if parameters is not None else [p for p in distiller.parameters() if p.requires_grad]
    data = recipe.data_for(data)
    speed, teacher_cache = start_stage(distiller, data, recipe)  # before the optimiser: it may change memory formats
    teacher_cache = packed.teacher_pass(stage, teacher_cache)  # a packed sweep's member: one teacher pass per batch
    optimizer = recipe.make_optimizer(params, distiller)
    scheduler = recipe.make_scheduler(optimizer)
    constrained = constrained_modules(distiller, params)
    forward = distributed.data_parallel(distiller, data.device, recipe) or distiller.forward_train
    world = distributed.world_size()
    packed.batch_students(distiller, params, data.device, stage, forward)
    result = StageResult()
    start = 1
    if checkpoint is not None and checkpoint.exists():
        state = load_torch(checkpoint, f"checkpoint of stage {stage!r}")
        check_stamp(state, stamp, checkpoint, stage)
        try:
            distiller.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            result = StageResult(state["history"], state["train_images"], state["train_seconds"])
            start = state["epoch"] + 1
            restore_rng(state.get("rng"))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(
                f"The checkpoint {checkpoint} does not belong to this stage ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}). kdrun does not start over silently: restore the file, "
                f"or delete it to redo stage {stage!r}."
            ) from None
        for entry in result.history if on_epoch else ():
            on_epoch(entry)
        if start <= recipe.epochs:
            log.info("Stage %s: resuming from %s after epoch %d.", stage, checkpoint, state["epoch"])

    n = len(data.train)
    batches = data.num_batches(data.train, recipe.batch_size)
    strong = StrongView(data, method=str(distiller.cfg.name)) if distiller.strong_view and phase == "main" else None
    with StageProgress(progress, stage, recipe.epochs, batches, start) as bar:
        for epoch in range(start, min(recipe.epochs, stop_after or recipe.epochs) + 1):
            distiller.train()
            seed_e = epoch_seed(seed, stage, epoch)
            torch.manual_seed(seed_e)
            total = torch.zeros((), device=data.device)
            bad_step = torch.zeros((), dtype=torch.long, device=data.device)  # first non-finite loss, 0: none
            bad_loss = torch.zeros((), device=data.device)
            step = 0
            terms: dict[str, torch.Tensor] = {}
            t0 = time.perf_counter()
            if recipe.momentum_ramp is not None:  # a function of the epoch alone: resumes exactly
                set_momentum(optimizer, recipe.momentum_in(epoch))
            lr = optimizer.param_groups[0]["lr"]  # the epoch's lr: the scheduler steps once, at its end
            data_seed_e = seed_e if data_seed is None else epoch_seed(data_seed, stage, epoch)
            strong_seed = seed if data_seed is None else data_seed
            strong_gen = strong.generator(epoch_seed(strong_seed, f"{stage}/strong", epoch)) if strong else None
            drawn = data.train_batches(data.train, recipe.batch_size, seed=data_seed_e)  # DDP: this process's share
            for batch, count, idx, x, y in packed.shared_batches(drawn, stage=stage, epoch=epoch, key=data_seed_e):
                views = {"x_strong": speed.batch(strong(idx, strong_gen))} if strong else {}
                with speed.autocast():
                    _, losses = forward(speed.batch(x), y, epoch, idx, phase=phase,
                                        teacher_cache=teacher_cache, **views)
                loss = sum(losses.values())
                step += 1
                if not losses:
                    raise UserError(f"Stage {stage}: nothing to train, every loss term of the method is "
                                    f"switched off ({switched_off(distiller, epoch, phase)}). "
                                    f"Give at least one loss weight a positive value.")
                # Record the first non-finite step on the device: no host sync inside the epoch.
                first = (bad_step == 0) & ~torch.isfinite(loss.detach())
                bad_step = torch.where(first, step, bad_step)
                bad_loss = torch.where(first, loss.detach().float(), bad_loss)
                optimizer.zero_grad(set_to_none=True)
                # DDP averages the processes' gradients: weighting each share's mean loss by its size makes
                # that the gradient of the whole batch's mean, also when the shares differ by one example
                packed.backward(loss * (count * world / batch) if world > 1 else loss)
                optimizer.step()
                if constrained:
                    constrain(constrained)
                total += loss.detach() * count
                for k, v in losses.items():
                    terms[k] = terms.get(k, 0) + v.detach() * count
                bar.batch_done()
            scheduler.step()
            end_epoch(teacher_cache)
            if world > 1:
                total, bad_step = distributed.sum_over_processes(total), distributed.max_over_processes(bad_step)
                bad_loss = distributed.max_over_processes(bad_loss)
                terms = {k: distributed.sum_over_processes(v) for k, v in terms.items()}
            train_loss = total.item() / n  # the one host sync of the epoch
            seconds = time.perf_counter() - t0
            result.train_seconds += seconds
            result.train_images += n
            if int(bad_step) or not math.isfinite(train_loss):
                raise diverged(distiller, recipe, stage, epoch, int(bad_step), float(bad_loss), train_loss, batches)
            entry = {"stage": stage, "epoch": epoch, "train_loss": round(train_loss, 6),
                     "losses": {k: round(v.item() / n, 6) for k, v in terms.items()},
                     "lr": lr,
                     "test_acc": packed.accuracy_on_test(distiller, data, speed, evaluate)}
            if data.val is not None:
                entry["val_acc"] = evaluate(distiller.student, data, data.val, speed=speed)
            result.history.append(entry)
            if after_epoch:
                after_epoch(epoch, entry)
            if checkpoint is not None:
                save_torch(checkpoint, {
                    **stamp, "stage": stage, "epoch": epoch, "model": distiller.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "history": result.history, "train_images": result.train_images,
                    "train_seconds": result.train_seconds, "rng": rng_state(),
                })
            info = f"loss {train_loss:.4f}  test {entry['test_acc']:.2f}%"
            if "val_acc" in entry:
                info += f"  val {entry['val_acc']:.2f}%"
            log.info("%s epoch %d/%d: %s", stage, epoch, recipe.epochs, info)
            bar.epoch_done(info)
            if on_epoch:  # images/s for the trackers (kdrun.tracking): not in the history, which reruns reproduce
                on_epoch({**entry, "images_per_s": round(n / seconds, 1)})
    return result


STAMPS = {"config_id": "another configuration of the run",
          "stage_key": "another teacher or starting point of the stage (their weights differ)",
          "cache_key": "another teacher configuration"}


def check_stamp(state, stamp: dict, checkpoint: Path, stage: str) -> None:
    """A checkpoint is resumed only by the configuration that made it."""
    if not isinstance(state, dict):
        return  # the layout check below says what is wrong
    made = {k: state.get(k) for k in stamp}
    if made == stamp:
        return
    key = next(k for k in stamp if made[k] != stamp[k])
    if made[key] is None:
        how = f"carries no {key}, so kdrun cannot tell what made it (kdrun records one in every checkpoint it writes)"
    else:
        how = f"was made under {STAMPS.get(key, key)} ({key} {made[key]} there, {stamp[key]} here)"
    raise UserError(f"The checkpoint {checkpoint} of stage {stage!r} {how}: kdrun does not resume another "
                    f"configuration's training. Delete {checkpoint} to train stage {stage!r} from its start.")


def set_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    for group in optimizer.param_groups:
        group["momentum"] = momentum


def constrained_modules(distiller: Distiller, params: list) -> list[nn.Module]:
    """The modules with a `constrain_()` (e.g. a max-norm on their weights) that hold trained parameters."""
    trained = {id(p) for p in params}
    return [m for m in distiller.modules()
            if callable(getattr(m, "constrain_", None)) and any(id(p) in trained for p in m.parameters())]


@torch.no_grad()
def constrain(modules: list[nn.Module]) -> None:
    """After each optimiser step, as pylearn2 applies max_kernel_norm / max_col_norm in its update."""
    for module in modules:
        module.constrain_()


def diverged(distiller: Distiller, recipe: Recipe, stage: str, epoch: int, step: int, value: float,
             train_loss: float, batches: int) -> TrainingDiverged:
    """The error for a non-finite loss: where it happened and what to change."""
    where = f"at step {step} of {batches} in epoch {epoch}" if step else \
        f"in epoch {epoch} (the sum of its finite step losses overflowed)"
    value = value if step else train_loss
    kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no epoch had completed"
    weights = method_weights(distiller)
    method_hint = f", or check the method's temperature and loss weights ({', '.join(weights)})" if weights else ""
    return TrainingDiverged(
        f"Stage {stage}: the training loss became {value} {where}. The run stopped and {kept}. "
        f"Lower the learning rate (now {recipe.lr}){method_hint}.",
        stage=stage, epoch=epoch, step=step or None, loss=str(value), lr=recipe.lr,
    )


def method_weights(distiller: Distiller) -> list[str]:
    return [f"method.{k}={v}" for k, v in distiller.cfg.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def switched_off(distiller: Distiller, epoch: int, phase: str) -> str:
    """'weights ce 0, kd 0; method.alpha=0, ...': why a stage has nothing to train."""
    terms = ", ".join(f"{name} {weight:g}" for name, weight in distiller.weights(epoch, phase).items())
    return f"weights {terms or 'none'}; {', '.join(method_weights(distiller))}"


def rng_state() -> dict:
    """Saved for completeness: each epoch reseeds from (seed, stage, epoch), so resuming is exact anyway."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Optional[dict]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
