"""The dataset interface: whole splits held as tensors on the run's device, batches sliced there.

A loader (one per dataset name) returns `RawData` on the CPU; `build_dataset` applies the subsets and
the validation hold-out, computes per-channel statistics on the training split and moves everything
to the device once. Normalisation and augmentation then run on whole batches, never per image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch

from kdrun import distributed

Augment = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]  # raw batch -> raw batch


@dataclass
class Split:
    x: torch.Tensor  # N x C x H x W, uint8 for images (any dtype works), on the run's device
    y: torch.Tensor  # N, int64

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, index: torch.Tensor) -> "Split":
        return Split(self.x[index], self.y[index])

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class RawData:
    """What a loader returns: CPU tensors of both splits and how to augment training batches."""

    train: Split
    test: Split
    num_classes: int
    augment: Optional[Augment] = None
    class_names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DataInfo:
    """The shapes a model is built for; they come from the dataset, never from the user."""

    channels: int
    image_size: tuple[int, int]
    num_classes: int
    train_size: int = 0  # examples in the training split (memory banks are sized by it)
    # the training split's labels, for methods that sample by class (CRD's negatives)
    train_labels: Optional[torch.Tensor] = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        h, w = self.image_size
        return f"{self.channels}x{h}x{w} images, {self.num_classes} classes"


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    val: Optional[Split]
    num_classes: int
    mean: torch.Tensor  # per channel, in the units of x, shaped 1 x C x 1 x 1
    std: torch.Tensor
    augment: Optional[Augment] = None
    class_names: list[str] = field(default_factory=list)

    @property
    def info(self) -> DataInfo:
        _, c, h, w = self.train.x.shape
        return DataInfo(int(c), (int(h), int(w)), self.num_classes, len(self.train), self.train.y)

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    @property
    def augmented(self) -> bool:
        """Whether training batches show other views of the examples each epoch."""
        return self.augment is not None and bool(self.augment)

    def prepare(self, x: torch.Tensor, train: bool, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 (or raw float) batch -> normalised float batch, augmented when training.

        Augmentation sees raw pixel values in the split's dtype (uint8 for images: a quarter of the
        memory traffic of float), so a zero fill is black.
        """
        if train and self.augment is not None:
            x = self.augment(x, generator)
        return (x.float() - self.mean) / self.std

    def batches(
        self, split: Split, batch_size: int, shuffle: bool, seed: int = 0, train: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (index, x, y): x prepared on the device. The order depends only on `seed`."""
        n = len(split)
        if shuffle:
            g = torch.Generator().manual_seed(seed)
            order = torch.randperm(n, generator=g).to(split.y.device)
        else:
            order = torch.arange(n, device=split.y.device)
        aug_gen = None
        if train and self.augment is not None:
            aug_gen = torch.Generator(device=split.x.device).manual_seed(seed + 1)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            # index_select copies whole rows: much faster than x[idx] on a uint8 N x C x H x W tensor
            yield idx, self.prepare(split.x.index_select(0, idx), train, aug_gen), split.y.index_select(0, idx)

    def train_batches(self, split: Split, batch_size: int, seed: int
                      ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The training batches of `seed`'s order as this process trains on them: (examples in the whole batch,
        examples of this process, index, x, y). One process: the whole batch. Several (DDP): its contiguous share,
        cut from the whole augmented batch, so that the batch is the one a single process would see."""
        for idx, x, y in self.batches(split, batch_size, shuffle=True, seed=seed, train=True):
            batch = len(y)
            count, (idx, x, y) = distributed.share(idx, x, y)
            yield batch, count, idx, x, y

    def num_batches(self, split: Split, batch_size: int) -> int:
        return -(-len(split) // batch_size)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over N, H, W, computed in float64 chunks (uint8 splits can be large)."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for chunk in torch.split(x, 4096):
        f = chunk.to(torch.float64).transpose(0, 1).reshape(c, -1)
        total += f.sum(1).cpu()
        total_sq += (f * f).sum(1).cpu()
        count += f.shape[1]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float().view(1, c, 1, 1), std.float().view(1, c, 1, 1)


def hold_out(train: Split, val_size: int, seed: int = 0) -> tuple[Split, Split]:
    """Split off `val_size` training examples as a validation set (fixed permutation of `seed`)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    return train.take(perm[val_size:]), train.take(perm[:val_size])
