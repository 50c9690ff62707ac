"""MNIST from its idx files as torchvision lays them out: ROOT/MNIST/raw/{train,t10k}-*-ubyte[.gz]."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from kdrun.data.base import RawData, Split
from kdrun.data.files import data_root, require_files
from kdrun.errors import UserError
from kdrun.data.registry import DATASETS

# torchvision's mirrors and archives (the MD5s check a fresh download only, never files already there).
MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
RESOURCES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """An idx file (Y. LeCun's format, optionally gzipped) of unsigned bytes, as an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"Cannot read {path} ({e}). Replace the file, or delete it and download again.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != UBYTE:
        raise UserError(f"{path} is not an idx file of unsigned bytes (its header is {data[:4].hex()}). "
                        f"Replace it with the MNIST file of that name.")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated or padded: its header announces {dims} values, it holds {body.size}.")
    return body.reshape(dims)


def _download(raw: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    raw.mkdir(parents=True, exist_ok=True)
    for name, md5 in RESOURCES.items():
        if (raw / name).is_file() or (raw / f"{name}.gz").is_file():
            continue
        errors = []
        for mirror in MIRRORS:
            try:
                download_and_extract_archive(f"{mirror}{name}.gz", download_root=str(raw), filename=f"{name}.gz",
                                             md5=md5)
                break
            except Exception as e:
                errors.append(f"{mirror}: {type(e).__name__}: {e}")
        else:
            raise OSError(f"{name}.gz could not be downloaded from any mirror ({'; '.join(errors)})")


def load_mnist(cfg) -> RawData:
    root = data_root(cfg)
    raw = root / "MNIST" / "raw"
    files = require_files(
        dataset="mnist", root=root, folder=raw, names=list(RESOURCES), suffixes=("", ".gz"),
        expected="train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                 "t10k-labels-idx1-ubyte, each optionally .gz",
        download=bool(cfg.get("download")), fetch=lambda: _download(raw),
        source=f"the four MNIST archives from {MIRRORS[0]}",
    )

    def split(prefix: str) -> Split:
        images, labels = read_idx(files[f"{prefix}-images-idx3-ubyte"]), read_idx(files[f"{prefix}-labels-idx1-ubyte"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"The MNIST {prefix} files in {raw} do not match: images {images.shape}, labels "
                            f"{labels.shape} (expected N x 28 x 28 images and N labels).")
        if labels.size and labels.max() > 9:
            raise UserError(f"The MNIST {prefix} labels in {raw} go up to {labels.max()}: expected digits 0..9.")
        return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))

    return RawData(split("train"), split("t10k"), num_classes=10, class_names=[str(i) for i in range(10)])


DATASETS.register("mnist", load_mnist)
