"""The datasets' schemas (`dataset=NAME`): what every dataset has, and each dataset's own keys."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

from kdrun.schema.choice import Choice


@dataclass
class Whiten:
    gcn_scale: Optional[float] = None  # global contrast normalisation: each image to zero mean and this L2 norm
    zca_bias: Optional[float] = None  # ZCA whitening fitted on the training split, with this added to the diagonal


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: Optional[str] = None  # where the files are read from and downloaded to
    download: bool = False  # true: fetch the official archives when the files are missing
    train_size: Optional[int] = None  # use only the first N training examples
    test_size: Optional[int] = None  # use only the first N test examples
    val_size: int = 0  # hold out N training examples for validation (val_acc in metrics.json)
    whiten: Optional[Whiten] = field(default_factory=Whiten)  # null: off
    # On the device, on whole training batches (kdrun.data.augment: crop_padding, padding_mode, flip,
    # translate); null switches all off. Open: a dataset lists the augmentations it uses.
    augment: Any = None
    # The transfer set (Hinton et al. 2015, section 3): the students' training data without these classes,
    # or with these classes only (class ids). The teacher trains on the whole training split; the
    # validation and test splits are left as they are (kdrun.data.transfer). null: all classes.
    transfer_exclude: Optional[List[int]] = None
    transfer_only: Optional[List[int]] = None
    transfer_size: Optional[int] = None  # the students train on the first N training examples (AB's 10 %)


@dataclass
class SyntheticConfig(DatasetConfig):
    name: str = "synthetic"
    train_size: Optional[int] = 512
    test_size: Optional[int] = 256
    channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    noise: float = 1.0  # noise std relative to the class prototypes
    data_seed: int = 0


class Decoder(Choice):
    torchvision = "torchvision"  # torchvision.io's decoders and uint8 resizes (the faster: docs/datasets.md)
    pil = "pil"  # PIL, as torchvision's ImageFolder reads


@dataclass
class FolderConfig(DatasetConfig):
    """A dataset read from image files by DataLoader workers (kdrun.data.folder): imagenet, tiny_imagenet."""
    image_size: int = 224  # the side of the square crops, in training and in evaluation
    resize: Optional[int] = None  # evaluation: the shorter side resized to this, then the centre crop; null: size*256/224
    decoder: Decoder = Decoder.torchvision
    workers: Optional[int] = None  # DataLoader workers; null: min(8, CPU cores). Not in a run's identity


@dataclass
class ImageFolderConfig(FolderConfig):
    root: Optional[str] = None
    train_dir: str = "train"  # under root: one folder of images per class
    test_dir: str = "val"  # under root, the same class folders: the test split (test_acc)


NO_AUGMENT_KEY = ("digits", "synthetic")  # their configs had no `augment` before the schema gave every dataset one
TRANSFER_KEYS = ("transfer_exclude", "transfer_only", "transfer_size")  # the students' data only: not in a teacher's cache key
RUNTIME_KEYS = ("workers",)  # how fast the data is read, not what it is: in no identity


def identity_of(dataset: dict) -> dict:
    """A dataset node as the identities see it (a run's config_id, a teacher's cache key): a null `augment`
    is left out where the dataset's config had no such key, and the transfer-set keys at their default
    (null), so runs and teachers from before keep theirs; `workers` (how fast, not what) always."""
    if dataset.get("name") in NO_AUGMENT_KEY and dataset.get("augment") is None:
        dataset = {k: v for k, v in dataset.items() if k != "augment"}
    if any(k in dataset for k in RUNTIME_KEYS):
        dataset = {k: v for k, v in dataset.items() if k not in RUNTIME_KEYS}
    if any(k in dataset and dataset[k] is None for k in TRANSFER_KEYS):
        dataset = {k: v for k, v in dataset.items() if not (k in TRANSFER_KEYS and v is None)}
    return dataset


SCHEMAS = {"digits": DatasetConfig, "synthetic": SyntheticConfig, "mnist": DatasetConfig, "cifar10": DatasetConfig,
           "cifar100": DatasetConfig, "imagefolder": ImageFolderConfig, "imagenet": FolderConfig,
           "tiny_imagenet": FolderConfig}
