"""Trees of image files as they come: `imagefolder` (any class folders), `imagenet` (ILSVRC-2012) and
`tiny_imagenet` (tiny-imagenet-200.zip unpacked). Each loader lists the files and their labels
(`FolderData`); the images are read as the run trains (kdrun.data.folder).

Classes are numbered in the sorted order of their folder names (wnids), as torchvision's ImageFolder
numbers them, so a model trained on such a tree elsewhere keeps its labels. A split's examples are the
classes interleaved (the first image of every class, then the second, ...), each class's files sorted by
path: `dataset.train_size=N` keeps about N / classes images of each class. A missing or malformed
tree stops the run before training, with where kdrun looked, what it expected and how to get the data.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from kdrun.console import plural
from kdrun.data.files import data_root, require_files
from kdrun.data.folder import FolderData, FolderSplit
from kdrun.data.registry import DATASETS
from kdrun.errors import UserError

log = logging.getLogger("kdrun")

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's ImageFolder
IMAGENET_HOW = ("ImageNet comes from https://image-net.org (an account): unpack ILSVRC2012_img_train.tar into "
                "train/ (each class's .tar into a folder of its name) and ILSVRC2012_img_val.tar into val/, then sort "
                "val/ into class folders (valprep.sh, see kdrun's docs/datasets.md)")
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


def is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def images_under(folder: Path) -> list[str]:
    """The image files below `folder` (any depth, links followed), as sorted paths relative to it."""
    out = []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            out += [f"{entry.name}/{name}" for name in images_under(Path(entry.path))]
        elif is_image(entry.name):
            out.append(entry.name)
    return sorted(out)


def interleaved(per_class: list[list[str]]) -> tuple[np.ndarray, torch.Tensor]:
    """The files of every class (lists in class order) as one split: the classes interleaved."""
    labels = np.concatenate([np.full(len(f), c, dtype=np.int64) for c, f in enumerate(per_class)])
    ranks = np.concatenate([np.arange(len(f)) for f in per_class])
    order = np.lexsort((labels, ranks))  # by rank within the class, then by class
    files = np.array([os.fsencode(p) for f in per_class for p in f], dtype=np.bytes_)
    return files[order], torch.from_numpy(labels[order])


def class_tree(dataset: str, root: Path, split_dir: str, classes: list[str] | None, flat_advice: str
               ) -> tuple[FolderSplit, list[str]]:
    """The split under root/split_dir/CLASS/... and its classes: `classes` None reads them from the folders
    (the training split); else the folders must be among them. `flat_advice`: what to do when the folder
    holds images but no class folders."""
    folder = root / split_dir
    if not folder.is_dir():
        raise UserError(f"dataset={dataset}: no folder {folder} (expected {folder}/CLASS/IMAGE: one folder of "
                        f"images per class).")
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not found:
        images = sum(1 for e in os.scandir(folder) if e.is_file() and is_image(e.name))
        what = f"{plural(images, 'image')} but no class folders" if images else "no class folders"
        raise UserError(f"dataset={dataset}: {folder} holds {what} (expected {folder}/CLASS/IMAGE: one folder of "
                        f"images per class). {flat_advice if images else ''}".rstrip())
    if classes is not None:
        strangers = [c for c in found if c not in classes]
        if strangers:
            raise UserError(f"dataset={dataset}: {folder} has class folders that the training split has not: "
                            f"{', '.join(strangers[:5])}{', ...' if len(strangers) > 5 else ''}. Give the test split "
                            f"the training split's class folders (a class may be missing), or remove these.")
    per_class = []
    for name in found if classes is None else classes:  # a test split may lack a class: it has no images of it
        present = (folder / name).is_dir()
        images = images_under(folder / name) if present else []
        if present and not images:
            raise UserError(f"dataset={dataset}: the class folder {folder / name} holds no images "
                            f"({', '.join(EXTENSIONS)}). Put the class's images there, or remove the folder.")
        per_class.append([f"{split_dir}/{name}/{p}" for p in images])
    files, y = interleaved(per_class)
    return FolderSplit(root, files, y), found if classes is None else classes


def require_folder(dataset: str, root: Path, expected: str, how: str) -> None:
    if not root.is_dir():
        raise UserError(f"dataset={dataset}: dataset.root={root} is not a folder (expected {expected}). Set "
                        f"dataset.root=DIR to the folder that holds them. {how}")


def timed_scan(dataset: str, root: Path, read) -> FolderData:
    start = time.perf_counter()
    data: FolderData = read()
    log.info("Dataset %s: %d training and %d test images of %d classes listed under %s in %.1f s.", dataset,
             len(data.train), len(data.test), data.num_classes, root, time.perf_counter() - start)
    return data


def load_imagefolder(cfg) -> FolderData:
    if cfg.get("root") in (None, ""):
        raise UserError("dataset=imagefolder needs dataset.root: the folder that holds the class folders of the "
                        f"training split ({cfg.train_dir}/CLASS/IMAGE) and of the test split ({cfg.test_dir}/CLASS/IMAGE).")
    root = data_root(cfg)
    train_dir, test_dir = str(cfg.train_dir), str(cfg.test_dir)
    require_folder("imagefolder", root, f"{train_dir}/CLASS/IMAGE and {test_dir}/CLASS/IMAGE",
                   "dataset.train_dir and dataset.test_dir name the two folders.")
    flat = f"Sort them into one folder per class, named as the class folders of {root / train_dir}."

    def read() -> FolderData:
        train, classes = class_tree("imagefolder", root, train_dir, None, flat)
        test, _ = class_tree("imagefolder", root, test_dir, classes, flat)
        return FolderData(train, test, len(classes), classes)

    return timed_scan("imagefolder", root, read)


def load_imagenet(cfg) -> FolderData:
    if cfg.get("download"):
        raise UserError(f"dataset=imagenet cannot be downloaded by kdrun (dataset.download=true). {IMAGENET_HOW}; "
                        f"then set dataset.download=false and dataset.root to the folder that holds train/ and val/.")
    root = data_root(cfg)
    require_folder("imagenet", root, "train/WNID/*.JPEG and val/WNID/*.JPEG", IMAGENET_HOW + ".")
    flat = (f"ILSVRC-2012's validation images come in one flat folder; kdrun reads them sorted into class folders, "
            f"as the training images are. Sort them once: run the well-known valprep.sh (from "
            f"soumith/imagenetloader.torch) inside {root / 'val'}; it moves each image into the folder of its class "
            f"(val/n01751748/ILSVRC2012_val_00000001.JPEG, ...).")

    def read() -> FolderData:
        train, classes = class_tree("imagenet", root, "train", None, "Each class's images go in a folder named by its wnid.")
        if len(classes) != 1000:
            log.warning("Dataset imagenet: %s under %s, where ILSVRC-2012 has 1000.", plural(len(classes), "class"),
                        root / "train")
        test, _ = class_tree("imagenet", root, "val", classes, flat)
        return FolderData(train, test, len(classes), classes)

    return timed_scan("imagenet", root, read)


def tiny_val(folder: Path, classes: list[str]) -> FolderSplit:
    """val/images/*.JPEG labelled by val/val_annotations.txt (file, wnid, box), as the archive has them."""
    annotations = folder / "val" / "val_annotations.txt"
    present = set(os.listdir(folder / "val" / "images")) if (folder / "val" / "images").is_dir() else set()
    index = {c: i for i, c in enumerate(classes)}
    per_class: list[list[str]] = [[] for _ in classes]
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise UserError(f"dataset=tiny_imagenet: line {number} of {annotations} does not name an image and one "
                            f"of the wnids of wnids.txt ({line[:80]!r}). Replace the file with the archive's.")
        if fields[0] not in present:
            raise UserError(f"dataset=tiny_imagenet: {folder / 'val' / 'images' / fields[0]}, listed on line {number} "
                            f"of {annotations}, is missing. Restore val/images/ from tiny-imagenet-200.zip.")
        per_class[index[fields[1]]].append(f"val/images/{fields[0]}")
    if not any(per_class):
        raise UserError(f"dataset=tiny_imagenet: {annotations} lists no images. Replace it with the archive's.")
    files, y = interleaved([sorted(f) for f in per_class])
    return FolderSplit(folder, files, y)


def tiny_train(folder: Path, classes: list[str]) -> FolderSplit:
    per_class = []
    for wnid in classes:
        images = images_under(folder / "train" / wnid) if (folder / "train" / wnid).is_dir() else []
        if not images:
            raise UserError(f"dataset=tiny_imagenet: no images under {folder / 'train' / wnid} for class {wnid} of "
                            f"wnids.txt (expected train/{wnid}/images/*.JPEG). Restore it from tiny-imagenet-200.zip.")
        per_class.append([f"train/{wnid}/{p}" for p in images])
    files, y = interleaved(per_class)
    return FolderSplit(folder, files, y)


def load_tiny_imagenet(cfg) -> FolderData:
    root = data_root(cfg)
    folder = root / "tiny-imagenet-200"
    from torchvision.datasets.utils import download_and_extract_archive

    files = require_files(
        dataset="tiny_imagenet", root=root, folder=folder, names=["wnids.txt", "val/val_annotations.txt"],
        expected="wnids.txt, train/WNID/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt, the layout "
                 "of tiny-imagenet-200.zip",
        download=bool(cfg.get("download")), source=TINY_URL,
        fetch=lambda: download_and_extract_archive(TINY_URL, download_root=str(root), md5=TINY_MD5),
    )
    classes = sorted({line.strip() for line in files["wnids.txt"].read_text().splitlines() if line.strip()})
    if not classes:
        raise UserError(f"dataset=tiny_imagenet: {files['wnids.txt']} lists no wnids. Replace it with the archive's.")
    return timed_scan("tiny_imagenet", folder, lambda: FolderData(
        tiny_train(folder, classes), tiny_val(folder, classes), len(classes), classes))


DATASETS.register("imagefolder", load_imagefolder)
DATASETS.register("imagenet", load_imagenet)
DATASETS.register("tiny_imagenet", load_tiny_imagenet)
