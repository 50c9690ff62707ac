#!/usr/bin/env python3
"""Training images per second read from JPEG files: kdrun's folder pipeline against torchvision's ImageFolder.

Both read the same class-folder tree with the same DataLoader workers and batch size and make the same
training batches: RandomResizedCrop(size), RandomHorizontalFlip, normalised with the ImageNet mean and std.
kdrun (`dataset=imagefolder`, kdrun.data.folder) is measured with each of its decoders (torchvision.io
and PIL; its workers hand over uint8 crops, normalised in the main process); the reference is
torchvision's `ImageFolder` with `RandomResizedCrop`, `RandomHorizontalFlip`, `ToTensor`, `Normalize`
(PIL, as the PyTorch ImageNet example). They take turns epoch by epoch; each one's median is printed,
per second and per CPU second of the process and its workers (which a busy machine changes little).

usage: python scripts/bench_folder.py [--root DIR] [--images N] [--size S] [--batch-size B] [--workers W]
                                      [--epochs E]
  --root DIR: a tree with DIR/train/CLASS/IMAGE (e.g. ImageNet's); without it, N generated JPEGs of
  ImageNet's typical sizes (500x375 and the like, about 90 KB each) in a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's kdrun, not an installed one

SIZES = [(500, 375), (375, 500), (500, 333), (640, 480), (400, 400)]


def make_tree(root: Path, images: int, classes: int = 10) -> None:
    """Smooth random pictures with noise, saved as JPEG quality 90 in `classes` class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        w, h = SIZES[i % len(SIZES)]
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(coarse).astype(np.int16) + rng.normal(0, 14, (h, w, 3)).astype(np.int16)
        folder = root / "train" / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:06d}.JPEG", quality=90)


def kdrun_epochs(root: Path, size: int, batch_size: int, workers: int, decoder: str):
    from kdrun.data.folder import FolderDataset
    from kdrun.data.imagefolder import class_tree
    from kdrun.data.images import IMAGENET_MEAN, IMAGENET_STD, ImagePipeline

    train, classes = class_tree("imagefolder", root, "train", None, "")
    mean, std = (255 * torch.tensor(s).view(1, 3, 1, 1) for s in (IMAGENET_MEAN, IMAGENET_STD))
    data = FolderDataset("imagefolder", train, train, None, len(classes), mean, std,
                         pipeline=ImagePipeline(size=size, resize=round(size * 256 / 224), decoder=decoder),
                         workers=workers)
    return lambda epoch: sum(len(y) for _, _, y in data.batches(data.train, batch_size, True, epoch, True))


def torchvision_epochs(root: Path, size: int, batch_size: int, workers: int):
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    from kdrun.data.images import IMAGENET_MEAN, IMAGENET_STD

    transform = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    loader = torch.utils.data.DataLoader(ImageFolder(str(root / "train"), transform), batch_size=batch_size,
                                         shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    return lambda epoch: sum(len(y) for _, y in loader)


def cpu_seconds() -> float:
    """CPU time of this process and of its children (the DataLoader workers), their share read from /proc
    (Linux; elsewhere this process's alone)."""
    total, me, tick = time.process_time(), os.getpid(), os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command's name: state, ppid, ...
        except OSError:
            continue
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def measure(pipelines: dict, rounds: int) -> dict:
    """Median images/s of each pipeline (wall clock, and per CPU second of this process and its workers) over `rounds`
    epochs each, after a warm-up epoch (worker start-up, file cache). The pipelines take turns, epoch by
    epoch, so a change in the machine's load falls on all of them alike."""
    for one_epoch in pipelines.values():
        one_epoch(0)
    wall, cpu = {k: [] for k in pipelines}, {k: [] for k in pipelines}
    for epoch in range(1, rounds + 1):
        for label, one_epoch in pipelines.items():
            start, start_cpu = time.perf_counter(), cpu_seconds()
            n = one_epoch(epoch)
            wall[label].append(n / (time.perf_counter() - start))
            cpu[label].append(n / max(cpu_seconds() - start_cpu, 1e-9))
    return {k: (float(np.median(wall[k])), float(np.median(cpu[k]))) for k in pipelines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", help="a folder with train/CLASS/IMAGE (default: generated JPEGs)")
    ap.add_argument("--images", type=int, default=512, help="how many JPEGs to generate (without --root)")
    ap.add_argument("--size", type=int, default=224, help="the crops' side")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers of both")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs of each, taking turns, after one of warm-up")
    a = ap.parse_args()
    torch.set_num_threads(1)  # the main process only normalises (kdrun) or collects (torchvision) batches
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root).expanduser() if a.root else Path(tmp)
        if not a.root:
            make_tree(root, a.images)
        n = sum(len(files) for _, _, files in os.walk(root / "train"))
        print(f"{n} images under {root / 'train'}; crops {a.size}x{a.size}, batch size {a.batch_size}, "
              f"{a.workers} DataLoader workers, {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.2f}")
        pipelines = {"kdrun, decoder=torchvision (torchvision.io)": kdrun_epochs(root, a.size, a.batch_size, a.workers,
                                                                                 "torchvision"),
                     "kdrun, decoder=pil": kdrun_epochs(root, a.size, a.batch_size, a.workers, "pil"),
                     "torchvision ImageFolder + DataLoader (PIL)": torchvision_epochs(root, a.size, a.batch_size,
                                                                                      a.workers)}
        rates = measure(pipelines, a.epochs)
    reference = rates["torchvision ImageFolder + DataLoader (PIL)"]
    print(f"{'pipeline':<46} {'images/s':>9} {'ratio':>6} {'images/CPU-s':>13} {'ratio':>6}")
    for label, (rate, cpu_rate) in rates.items():
        print(f"{label:<46} {rate:>9.1f} {rate / reference[0]:>5.2f}x {cpu_rate:>13.1f} {cpu_rate / reference[1]:>5.2f}x")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
