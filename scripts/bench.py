"""Time kdrun's KD training step against a plain RepDistiller-style loop, in the same run, same device.

    python scripts/bench.py                                   # wrn40_2 -> wrn16_2, batch 64, KD
    python scripts/bench.py --teacher resnet32x4 --student resnet8x4 --batch-size 128
    python scripts/bench.py train.precision=fp32              # any kdrun override after the options

kdrun: the real code path (the composed config, build_dataset, build_model, build_method, and the
training loop `fit`) on CIFAR-100-shaped synthetic data (3x32x32, 100 classes) held on the device,
with CIFAR's augmentation (random crop with 4 pixels of padding, horizontal flip) on the device.
Reference: the same models, trained the way RepDistiller's train_distill does it: a torchvision
DataLoader over PIL images with RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize
(num_workers 8, capped at the cores available), fp32, NCHW, the teacher in eval mode under no_grad,
SGD, CE + KD loss, and the per-batch loss and accuracy bookkeeping (`loss.item()`, top-1/top-5).
Both see the same number of images after a warm-up; images/s and the ratio are printed, with the
estimated epoch time for CIFAR-100's 50,000 training images.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdrun.data import build_dataset  # noqa: E402
from kdrun.methods import build_method  # noqa: E402
from kdrun.models import build_model  # noqa: E402
from kdrun.training.device import available_cores, configure_threads, resolve_device  # noqa: E402
from kdrun.training.loop import fit  # noqa: E402
from kdrun.training.recipe import Recipe  # noqa: E402
from kdrun.training.speed import Speed  # noqa: E402

CIFAR100_IMAGES = 50_000
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)  # RepDistiller's
REPDISTILLER_WORKERS = 8


def compose(args) -> "DictConfig":  # noqa: F821
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdrun.configs import CONFIG_DIR, register_configs

    overrides = [f"teacher={args.teacher}", f"student={args.student}", f"method={args.method}",
                 "dataset=synthetic", "dataset.channels=3", "dataset.image_size=32", "dataset.num_classes=100",
                 f"dataset.test_size={args.batch_size}",
                 f"train.batch_size={args.batch_size}", "train.epochs=1", f"device={args.device}"]
    if args.augment:
        overrides += ["+dataset.augment.crop_padding=4", "+dataset.augment.flip=true"]
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return hydra_compose("config", overrides=overrides + list(args.overrides))


def kdrun_loop(cfg, device, student, teacher, warmup_batches: int):
    """A function timing one epoch of kdrun's `fit` over the training split (images/s), after a warm-up."""
    data = build_dataset(cfg.dataset, device)
    if cfg.dataset.get("augment") and not data.augment:
        raise SystemExit("This kdrun has no on-device augmentation (dataset.augment), so the comparison "
                         "would not be fair; run with --no-augment to time without augmentation on both sides.")
    recipe = Recipe.from_config(cfg.train)
    distiller = build_method(cfg.method, student, teacher, data.info).to(device)
    n_warm = min(len(data.train), warmup_batches * recipe.batch_size)
    warm = dataclasses.replace(data, train=data.train.take(torch.arange(n_warm, device=device)))
    fit(distiller, warm, recipe, stage="warmup", seed=1)

    def one_epoch(round_: int) -> float:
        result = fit(distiller, data, recipe, stage=f"bench{round_}", seed=round_)
        return result.train_images / result.train_seconds

    return one_epoch, Speed.resolve(recipe, device).describe()


class PILImages(torch.utils.data.Dataset):
    """CIFAR's torchvision layout: HWC uint8 arrays, one PIL image per __getitem__, then the transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i]), i


def distill_kl(y_s, y_t, T):
    p_s = F.log_softmax(y_s / T, dim=1)
    p_t = F.softmax(y_t / T, dim=1)
    return F.kl_div(p_s, p_t, reduction="sum") * (T ** 2) / y_s.shape[0]


def accuracy(output, target, topk=(1, 5)):
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0) * 100.0 / target.size(0) for k in topk]


def reference_loop(cfg, device, student, teacher, workers: int, augment: bool, warmup_batches: int):
    """A function timing one RepDistiller-style epoch over the same images (images/s, worker start-up
    excluded), after a warm-up."""
    import torchvision.transforms as T

    raw = build_dataset(cfg.dataset, torch.device("cpu")).train
    images = raw.x.permute(0, 2, 3, 1).contiguous().numpy()
    labels = raw.y.numpy()
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    transform = T.Compose(steps + [T.ToTensor(), T.Normalize(CIFAR100_MEAN, CIFAR100_STD)])
    dataset = PILImages(images, labels, transform)
    temperature = float(cfg.method.get("T", 4.0))
    alpha = float(cfg.method.get("alpha", 0.9))
    gamma = 1.0 - alpha
    optimizer = torch.optim.SGD(student.parameters(), lr=float(cfg.train.lr), momentum=float(cfg.train.momentum),
                                weight_decay=float(cfg.train.weight_decay))
    student.train()
    teacher.eval()

    def epoch(loader, limit=None):
        seen, start = 0, None
        for i, (x, target, _) in enumerate(loader):
            if start is None:
                start = time.perf_counter()
            x, target = x.float().to(device), target.to(device)
            logit_s = student(x)
            with torch.no_grad():
                logit_t = teacher(x)
            loss = gamma * F.cross_entropy(logit_s, target) + alpha * distill_kl(logit_s, logit_t, temperature)
            acc1, acc5 = accuracy(logit_s, target)
            loss.item(), acc1.item(), acc5.item()  # RepDistiller's AverageMeter updates
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += x.shape[0]
            if limit is not None and i + 1 >= limit:
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seen / (time.perf_counter() - start)

    def loader():
        return torch.utils.data.DataLoader(dataset, batch_size=int(cfg.train.batch_size), shuffle=True,
                                           num_workers=workers, pin_memory=device.type == "cuda")

    epoch(loader(), limit=warmup_batches)
    return lambda round_: epoch(loader())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="wrn40_2")
    parser.add_argument("--student", default="wrn16_2")
    parser.add_argument("--method", default="kd", help="kdrun method (the reference always runs KD)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=None,
                        help="images timed per loop, after the warm-up (default: 1280 on a CPU, 25600 on a GPU)")
    parser.add_argument("--warmup-batches", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"reference DataLoader workers (default: RepDistiller's {REPDISTILLER_WORKERS}, "
                             f"capped at the cores available)")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="no crop/flip on either side (kdrun may then cache the teacher's outputs)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the two loops this many times and report the median of each "
                             "(fairer on a machine whose load changes)")
    parser.add_argument("--no-reference", dest="reference", action="store_false")
    parser.add_argument("overrides", nargs="*", help="kdrun config overrides, e.g. train.precision=fp32")
    args = parser.parse_args(argv)

    cfg = compose(args)
    device = resolve_device(cfg.device)
    if args.images is None:
        args.images = 25_600 if device.type == "cuda" else 1280
    cfg.dataset.train_size = args.images
    configure_threads()
    torch.manual_seed(0)
    info_data = build_dataset(cfg.dataset, torch.device("cpu")).info
    student = build_model(cfg.student, info_data).to(device)
    teacher = build_model(cfg.teacher, info_data).to(device)
    ref_student, ref_teacher = copy.deepcopy(student), copy.deepcopy(teacher)  # before kdrun prepares its own
    workers = args.workers if args.workers is not None else min(REPDISTILLER_WORKERS, available_cores())

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {available_cores()} cores"
    print(f"{args.teacher} -> {args.student}, {args.method}, batch {args.batch_size}, {args.images} images, "
          f"{'crop+flip augmentation' if args.augment else 'no augmentation'}; {where}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, load average {load:.2f}")
    loops = [("kdrun",) + kdrun_loop(cfg, device, student, teacher, args.warmup_batches)]
    if args.reference:
        ref = reference_loop(cfg, device, ref_student, ref_teacher, workers, args.augment, args.warmup_batches)
        loops.append(("reference (RepDistiller-style)", ref, f"fp32, NCHW, DataLoader+PIL, {workers} workers"))
    rates = {name: [] for name, _, _ in loops}
    for round_ in range(args.rounds):
        for name, one_epoch, _ in loops:
            rates[name].append(one_epoch(round_))
    print(f"{'loop':32s} {'setup':44s} {'images/s':>9s} {'ms/batch':>9s} {'CIFAR-100 epoch':>16s}")
    for name, _, setup in loops:
        rate = statistics.median(rates[name])
        print(f"{name:32s} {setup:44s} {rate:9.1f} {1000 * args.batch_size / rate:9.1f} "
              f"{CIFAR100_IMAGES / rate:15.1f}s")
    if args.reference:
        kd, ref = (statistics.median(rates[name]) for name, _, _ in loops)
        per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(*rates.values()))
        end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"kdrun / reference: {kd / ref:.2f}x" + (f" (rounds: {per_round})" if args.rounds > 1 else "")
              + f"; load average {end_load:.2f} at the end")


if __name__ == "__main__":
    main()
