"""Datasets by name. Each loader takes the dataset config and returns `RawData` on the CPU."""
from __future__ import annotations

import logging
import time
from typing import Callable

import torch
from omegaconf import DictConfig

from kdrun.data.augment import build_augment
from kdrun.data.base import DataInfo, Dataset, RawData, Split, channel_stats, hold_out
from kdrun.data.whiten import whiten_splits, whitening_from_config
from kdrun.data.folder import FolderData, FolderDataset
from kdrun.data.folder_config import pipeline_of, reads_files, workers_of
from kdrun.data.images import IMAGENET_MEAN, IMAGENET_STD
from kdrun.data import cifar, digits, imagefolder, mnist, synthetic  # noqa: F401  (loaders register themselves)
from kdrun.data.registry import DATASETS
from kdrun.errors import require
from kdrun.registry import locate

log = logging.getLogger("kdrun")


def dataset_loader(cfg: DictConfig) -> Callable[[DictConfig], RawData]:
    """A dataset's loader: by name from the registry, or your own (`_target_: mypackage.load_mine`, a
    function of the dataset's config node that returns a `kdrun.data.base.RawData`)."""
    if not cfg.get("_target_"):
        return DATASETS.get(str(cfg.name))
    return locate(str(cfg._target_), "dataset._target_")


def build_dataset(cfg: DictConfig, device: torch.device) -> Dataset:
    loader = dataset_loader(cfg)
    for key in ("train_size", "test_size"):
        value = cfg.get(key)
        require(value is None or int(value) > 0, f"dataset.{key} must be a positive number or null, got {value}.")
    val_size = int(cfg.get("val_size") or 0)
    require(val_size >= 0, f"dataset.val_size must be 0 or more, got {val_size}.")
    folder = reads_files(cfg)  # read from image files as it trains (kdrun.data.folder), else held in memory
    # `dataset.augment` (when the dataset's config has the key) decides the training augmentation.
    augment = build_augment(cfg.augment) if "augment" in cfg and not folder else None
    pipeline, workers = (pipeline_of(cfg), workers_of(cfg)) if folder else (None, 0)
    whitening = whitening_from_config(cfg.get("whiten"))
    require(whitening is None or not folder, f"dataset.whiten whitens datasets held in memory; dataset={cfg.name} "
                                             f"reads its images from disk as it trains. Leave dataset.whiten's keys null.")
    raw: RawData = loader(cfg)
    kind = FolderData if folder else RawData
    require(isinstance(raw, kind), f"The loader of dataset {cfg.name!r} returned {type(raw).__name__}, not a "
                                   f"{kind.__module__}.{kind.__name__} (its train and test splits).")
    train, test = raw.train, raw.test
    if cfg.get("test_size"):
        test = test.take(torch.arange(min(int(cfg.test_size), len(test))))
    val = None
    if val_size:
        require(
            val_size < len(train),
            f"dataset.val_size={val_size} leaves no training data: the training split has {len(train)} examples.",
        )
        train, val = hold_out(train, val_size, seed=int(cfg.get("val_seed", 0)))
    if cfg.get("train_size"):
        train = train.take(torch.arange(min(int(cfg.train_size), len(train))))
    train, test = train.to(device), test.to(device)
    val = val.to(device) if val is not None else None
    if folder:  # normalised with the ImageNet statistics, as torchvision's models expect
        mean, std = (255 * torch.tensor(s, device=device).view(1, 3, 1, 1) for s in (IMAGENET_MEAN, IMAGENET_STD))
        return FolderDataset(name=str(cfg.name), train=train, test=test, val=val, num_classes=raw.num_classes,
                             mean=mean, std=std, class_names=raw.class_names, pipeline=pipeline, workers=workers)
    if whitening is None:
        mean, std = channel_stats(train.x)
    else:  # fitted on the training data actually used (after the hold-out and train_size)
        start = time.perf_counter()
        train, val, test = whiten_splits(whitening, train, val, test)
        if train.x.is_cuda:
            torch.cuda.synchronize(train.x.device)  # so the time logged is the time taken
        log.info("Data whitened (GCN scale %g, ZCA bias %g; ZCA fitted on the %d training images) in %.1f s.",
                 whitening.gcn_scale, whitening.zca_bias, len(train), time.perf_counter() - start)
        # prepare() then passes the whitened values through unchanged
        mean, std = torch.zeros(1, train.x.shape[1], 1, 1), torch.ones(1, train.x.shape[1], 1, 1)
    return Dataset(
        name=str(cfg.name),
        train=train,
        test=test,
        val=val,
        num_classes=raw.num_classes,
        mean=mean.to(device),
        std=std.to(device),
        augment=augment if "augment" in cfg else raw.augment,
        class_names=raw.class_names,
    )


__all__ = ["DATASETS", "DataInfo", "Dataset", "FolderData", "FolderDataset", "RawData", "Split", "build_dataset"]
