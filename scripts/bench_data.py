#!/usr/bin/env python3
"""Training batches per second: kdrun's on-device pipeline against a torchvision DataLoader.

Both make the same CIFAR batches from the same uint8 images: random 32x32 crop of the image padded by
4 black pixels, random horizontal flip, per-channel normalisation. kdrun does it on whole batches of a
uint8 tensor (`Dataset.batches`); the reference is the usual per-image PIL pipeline (`RandomCrop(32,
padding=4)`, `RandomHorizontalFlip`, `ToTensor`, `Normalize`) in a `DataLoader`. Both are measured in
this run, one after the other.

usage: python scripts/bench_data.py [--root DIR] [--images N] [--batch-size B] [--workers W]
                                    [--threads T] [--device D]
  --root DIR: a dataset.root holding cifar-10-batches-py/ (e.g. from ../shared/data/cifar10-jpeg's
  materialize.py); without it, random uint8 images of the same shape.
  --threads T: torch's CPU threads, 1 by default so that both sides use one core (a DataLoader with
  no workers runs its transforms in the main process). On a machine shared with other busy jobs,
  more threads than free cores make every small tensor operation wait for a descheduled thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's kdrun, not an installed one


def cifar_images(root: str | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if root:
        from kdrun.data.cifar import CIFAR10

        raw = CIFAR10.load(OmegaConf.create({"name": "cifar10", "root": root, "download": False}))
        x, y = raw.train.x[:n], raw.train.y[:n]
        print(f"images: the first {len(y)} training images of CIFAR-10 under {Path(root).resolve()}")
        return x, y
    g = torch.Generator().manual_seed(0)
    print(f"images: {n} random 3x32x32 uint8 images (pass --root for CIFAR-10)")
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return x, torch.randint(0, 10, (n,), generator=g)


def on_device(x, y, batch_size: int, device: torch.device) -> tuple[float, int]:
    from kdrun.data.augment import Augmentation
    from kdrun.data.base import Dataset, Split, channel_stats

    mean, std = channel_stats(x)
    data = Dataset("cifar10", Split(x, y).to(device), Split(x[:1], y[:1]).to(device), None, 10,
                   mean.to(device), std.to(device), augment=Augmentation(crop_padding=4, flip=True))
    list(data.batches(data.train, batch_size, shuffle=True, seed=0, train=True))  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    count = 0
    for _ in data.batches(data.train, batch_size, shuffle=True, seed=1, train=True):
        count += 1
    sync()
    return count / (time.perf_counter() - t0), count


class PILImages(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: an HWC uint8 array -> PIL image -> transforms."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.images = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def torchvision_loader(x, y, batch_size: int, workers: int) -> tuple[float, int]:
    import torchvision.transforms as T

    from kdrun.data.base import channel_stats

    mean, std = channel_stats(x)
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize((mean / 255).flatten().tolist(), (std / 255).flatten().tolist())])
    loader = torch.utils.data.DataLoader(PILImages(x, y, transform), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    for _ in zip(range(2), loader):  # warm-up (and worker start-up)
        pass
    t0 = time.perf_counter()
    count = 0
    for _ in loader:
        count += 1
    return count / (time.perf_counter() - t0), count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", help="dataset.root with cifar-10-batches-py/ (default: random images)")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the torchvision pipeline")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: one core each)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x, y = cifar_images(a.root, a.images)
    device = torch.device(a.device)
    print(f"batch size {a.batch_size}, torch threads {torch.get_num_threads()}, device {device}, "
          f"DataLoader workers {a.workers}")
    ours, n_ours = on_device(x, y, a.batch_size, device)
    theirs, n_theirs = torchvision_loader(x, y, a.batch_size, a.workers)
    print(f"{'pipeline':<46} {'batches':>8} {'batches/s':>10} {'images/s':>10}")
    for label, rate, count in (("kdrun on-device (uint8 tensor, crop+flip+norm)", ours, n_ours),
                               ("torchvision DataLoader (PIL transforms)", theirs, n_theirs)):
        print(f"{label:<46} {count:>8} {rate:>10.1f} {rate * a.batch_size:>10.0f}")
    print(f"speed-up: {ours / theirs:.1f}x")


if __name__ == "__main__":
    np.random.seed(0)
    torch.manual_seed(0)
    main()
