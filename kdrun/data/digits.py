"""The 8x8 handwritten digits that scikit-learn ships: kdrun's embedded default, no download."""
from __future__ import annotations

import numpy as np
import torch

from kdrun.data.base import RawData, Split
from kdrun.data.registry import DATASETS

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the split is part of the dataset's definition: never tied to the run's seed


def load_digits_raw(cfg) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)  # values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    # Fixed stratified split: a fifth of each class, rounded (359 of the 1797
    # images), the same test images on every machine.
    rng = np.random.RandomState(SPLIT_SEED)
    test_idx = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        test_idx.extend(members[: int(round(len(members) * TEST_FRACTION))])
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[test_idx] = True
    x = torch.from_numpy(images).unsqueeze(1)

    def split(mask):
        return Split(x[torch.from_numpy(mask)], torch.from_numpy(labels[mask]))

    return RawData(split(~test_mask), split(test_mask), num_classes=10, class_names=[str(i) for i in range(10)])


DATASETS.register("digits", load_digits_raw)
