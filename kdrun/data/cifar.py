"""CIFAR-10 and CIFAR-100 from the python layout of the official archives.

ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} and ROOT/cifar-100-python/
{train,test,meta} (the fine labels). Each file is a pickled dict with "data" (N x 3072 uint8, planar
RGB) and the labels. The pickles are read by an unpickler that only builds numpy arrays, so a file
from elsewhere cannot run code.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdrun.data.base import RawData, Split
from kdrun.data.files import data_root, require_files
from kdrun.errors import UserError
from kdrun.data.registry import DATASETS

# What the pickles of CIFAR (written by Python 2, or by Python 3 copies) may refer to: numpy arrays.
SAFE_GLOBALS = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR file never holds")


def read_batch(path: Path) -> dict:
    """One CIFAR pickle as a dict with str keys."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise UserError(f"Cannot read {path} as a CIFAR file ({type(e).__name__}: {e}). Replace it with the "
                        f"file of that name from the official archive.") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR file.")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


@dataclass
class CifarLayout:
    name: str  # the dataset's kdrun name
    folder: str  # under dataset.root
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    url: str
    md5: str  # of the archive, checked on a fresh download only

    def load(self, cfg) -> RawData:
        root = data_root(cfg)
        folder = root / self.folder
        names = [*self.train_files, self.test_file, self.meta_file]
        files = require_files(
            dataset=self.name, root=root, folder=folder, names=names,
            expected=f"{', '.join(names)}, the layout of {self.url.rsplit('/', 1)[1]}",
            download=bool(cfg.get("download")), fetch=lambda: self._download(root), source=self.url,
        )
        train = [self._split(files[n]) for n in self.train_files]
        train = Split(torch.cat([s.x for s in train]), torch.cat([s.y for s in train]))
        test = self._split(files[self.test_file])
        class_names = [str(n) for n in read_batch(files[self.meta_file]).get(self.names_key, [])]
        if len(class_names) != self.num_classes:
            class_names = [str(i) for i in range(self.num_classes)]
        return RawData(train, test, num_classes=self.num_classes, class_names=class_names)

    def _split(self, path: Path) -> Split:
        batch = read_batch(path)
        if "data" not in batch or self.label_key not in batch:
            raise UserError(f"{path} lacks the keys 'data' and {self.label_key!r} of a {self.name} file "
                            f"(it has {', '.join(map(str, batch))}).")
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[self.label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
            raise UserError(f"{path} does not hold N x 3072 images with N labels (data {data.shape}, "
                            f"labels {labels.shape}).")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise UserError(f"{path} has labels outside 0..{self.num_classes - 1}: is it a {self.name} file?")
        return Split(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels))

    def _download(self, root: Path) -> None:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(self.url, download_root=str(root), md5=self.md5)


CIFAR10 = CifarLayout(
    name="cifar10", folder="cifar-10-batches-py", train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch", meta_file="batches.meta", label_key="labels", names_key="label_names",
    num_classes=10, url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
)
CIFAR100 = CifarLayout(
    name="cifar100", folder="cifar-100-python", train_files=("train",), test_file="test", meta_file="meta",
    label_key="fine_labels", names_key="fine_label_names", num_classes=100,
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85",
)

DATASETS.register("cifar10", CIFAR10.load)
DATASETS.register("cifar100", CIFAR100.load)
