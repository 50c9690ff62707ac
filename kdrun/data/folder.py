"""Datasets read from image files by DataLoader workers, for trees too large to hold in memory (ImageNet).

`FolderSplit` is a split as file paths and labels, with the `take` and `__len__` of a tensor `Split`, so
subsets, the validation hold-out and transfer sets work unchanged. `FolderDataset` batches it as the
tensor `Dataset` does: the same order (`torch.randperm` of the epoch's seed), (index, x, y) with x
normalised on the run's device. Workers decode and crop each example (`kdrun.data.images`) into a
uint8 batch, which is copied to the device (pinned, on CUDA) and normalised there with the ImageNet
mean and std.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from kdrun import distributed
from kdrun.data.base import DataInfo, Dataset
from kdrun.data.images import ImagePipeline, example_seed
from kdrun.errors import UserError


@dataclass(eq=False)  # hashed by identity: the key of its loaders
class FolderSplit:
    root: Path
    files: np.ndarray  # paths under root as bytes (os.fsencode): one array, not a million Python strings
    y: torch.Tensor  # N, int64, on the run's device

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, index: torch.Tensor) -> "FolderSplit":
        return FolderSplit(self.root, self.files[index.cpu().numpy()], self.y[index.to(self.y.device)])

    def to(self, device: torch.device) -> "FolderSplit":
        return FolderSplit(self.root, self.files, self.y.to(device))


@dataclass
class FolderData:
    """What a folder loader returns (in place of a `RawData`): both splits, CPU labels."""

    train: FolderSplit
    test: FolderSplit
    num_classes: int
    class_names: list[str] = field(default_factory=list)


class ImageReader(torch.utils.data.Dataset):
    """Example `i` of a split as its uint8 crop and an error message ("" when the image was read)."""

    def __init__(self, split: FolderSplit, pipeline: ImagePipeline, train: bool):
        self.root, self.files = split.root, split.files  # not the labels: they may be on a GPU
        self.pipeline, self.augment = pipeline, train and pipeline.random

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, str]:
        i, seed = key
        path = os.path.join(self.root, os.fsdecode(self.files[i]))
        generator = torch.Generator().manual_seed(example_seed(seed, i)) if self.augment else None
        try:
            return self.pipeline(path, generator), ""
        except Exception as e:  # reported by the main process, which names the file
            size = self.pipeline.size
            return torch.zeros(3, size, size, dtype=torch.uint8), f"{path} ({type(e).__name__}: {e})"


class PassBatches:
    """The batch sampler of one loader: the keys (position, seed) of the current pass, one batch per chunk of
    positions. Set before each pass, in the main process (persistent workers keep their reader)."""

    def __init__(self):
        self.chunks, self.seed = [], 0

    def __iter__(self):
        for chunk in self.chunks:
            yield [(i, self.seed) for i in chunk.tolist()]

    def __len__(self) -> int:
        return len(self.chunks)


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores)


@dataclass
class FolderDataset(Dataset):
    pipeline: Optional[ImagePipeline] = None
    workers: int = 0  # DataLoader worker processes (0: the images are read in the main process)
    # (split, train, pipeline) -> its DataLoader; shared by the copies dataclasses.replace makes
    loaders: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        # Workers stop as soon as the dataset is dropped: left to the cyclic garbage collector, a DataLoader's
        # queues may be torn down first, and each worker then takes its 5 s time-out to stop.
        weakref.finalize(self, self.loaders.clear)
        if self.augment is not None:
            raise UserError(
                f"A recipe's `augment` (train.augment, teacher.train.augment or a stage's) is the batch "
                f"augmentation of in-memory datasets (crop_padding, translate, flip); dataset={self.name} "
                f"augments each image as it is read, as dataset.augment says (crop_scale, crop_ratio, flip). "
                f"Leave the recipe's augment null and set dataset.augment's keys instead.")

    @property
    def info(self) -> DataInfo:
        size = self.pipeline.size
        return DataInfo(3, (size, size), self.num_classes, len(self.train), self.train.y)

    @property
    def device(self) -> torch.device:
        return self.train.y.device

    @property
    def augmented(self) -> bool:
        return self.pipeline.random

    def batches(self, split: FolderSplit, batch_size: int, shuffle: bool, seed: int = 0, train: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (index, x, y) in the order of `Dataset.batches`; an example's crop depends on (seed, index) alone."""
        n = len(split)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        yield from self.read(split, list(order.split(batch_size)), seed, train)

    def train_batches(self, split: FolderSplit, batch_size: int, seed: int):
        """Several processes (DDP): each reads only its share of every batch (the images are the same: an
        image's crop depends on (seed, index) alone)."""
        if not distributed.active():
            yield from super().train_batches(split, batch_size, seed)
            return
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
        shares = [(len(chunk), *distributed.share(chunk)) for chunk in order.split(batch_size)]
        read = self.read(split, [part for _, _, (part,) in shares], seed, train=True)
        for (batch, count, _), (idx, x, y) in zip(shares, read):
            yield batch, count, idx, x, y

    def read(self, split: FolderSplit, chunks: list, seed: int, train: bool):
        """(index, x, y) for each chunk of positions in `split`, read by the split's loader."""
        loader = self.loader(split, train, single=len(chunks) <= 1)
        loader.batch_sampler.chunks, loader.batch_sampler.seed = chunks, seed
        cuda = self.device.type == "cuda"
        for idx, (x, errors) in zip(chunks, loader):
            bad = [e for e in errors if e]
            if bad:
                raise UserError(f"dataset={self.name}: cannot read the image {bad[0]}"
                                f"{f' (and {len(bad) - 1} more in its batch)' if len(bad) > 1 else ''}. Replace "
                                f"the file with a readable image, or delete it.")
            idx = idx.to(self.device)
            yield idx, self.prepare(x.to(self.device, non_blocking=cuda), train), split.y.index_select(0, idx)

    def loader(self, split: FolderSplit, train: bool, single: bool) -> torch.utils.data.DataLoader:
        """The DataLoader of a pass. The dataset's own splits keep theirs, workers and all, from pass to pass;
        another split (a part of one) gets workers for its pass alone; a pass of one batch (a probe, a small
        test split) reads its images in this process instead of starting workers."""
        if single or not self.workers:
            return self._make_loader(split, train, 0)
        if not any(split is own for own in (self.train, self.val, self.test)):
            return self._make_loader(split, train, self.workers, persistent=False)
        key = (split, train, self.pipeline)
        if key not in self.loaders:
            self.loaders[key] = self._make_loader(split, train, self.workers)
        return self.loaders[key]

    def _make_loader(self, split: FolderSplit, train: bool, workers: int, persistent: bool = True
                     ) -> torch.utils.data.DataLoader:
        # Its own generator: the worker seeds it draws would otherwise come from the run's random numbers.
        return torch.utils.data.DataLoader(
            ImageReader(split, self.pipeline, train), batch_sampler=PassBatches(), num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=persistent and workers > 0,
            generator=torch.Generator())
