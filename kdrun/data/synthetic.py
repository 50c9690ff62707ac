"""Random images of a configurable shape: one smooth prototype per class plus noise, stored as uint8.

Learnable (so tests can check that training works) and held like real image data, so it exercises the
same on-device pipeline and serves benchmarks at any size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdrun.data.base import RawData, Split
from kdrun.errors import require
from kdrun.data.registry import DATASETS


def make_synthetic(cfg) -> RawData:
    channels, size, classes = int(cfg.channels), int(cfg.image_size), int(cfg.num_classes)
    require(channels > 0 and size > 0, f"synthetic data needs positive channels and image_size, got {channels}, {size}.")
    require(classes >= 2, f"dataset.num_classes must be at least 2, got {classes}.")
    n_train, n_test = int(cfg.train_size or 512), int(cfg.test_size or 256)
    g = torch.Generator().manual_seed(int(cfg.get("data_seed", 0)))
    coarse = torch.randn(classes, channels, 4, 4, generator=g)
    prototypes = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noise = float(cfg.get("noise", 1.0))

    def split(n: int) -> Split:
        y = torch.randint(0, classes, (n,), generator=g)
        x = prototypes[y] + noise * torch.randn(n, channels, size, size, generator=g)
        return Split((128 + 40 * x).round().clamp(0, 255).to(torch.uint8), y)

    return RawData(split(n_train), split(n_test), num_classes=classes)


DATASETS.register("synthetic", make_synthetic)
