"""The transfer set (Hinton, Vinyals & Dean 2015, section 3): the data the students are trained on.

`dataset.transfer_exclude=[3]` leaves the examples of class 3 out of the students' training data,
`dataset.transfer_only=[7,8]` keeps only those of classes 7 and 8. The teacher trains on the whole
training split (its cache key leaves these keys out), the validation and test splits stay as they are,
and the students' inputs are normalised with the statistics of the whole training split, so that the
teacher sees the inputs of the transfer set as it saw its own. The filter applies after
`dataset.train_size` and the `dataset.val_size` hold-out: `train_size=N` keeps the first N training
examples, then the transfer set keeps those of its classes.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch
from omegaconf import DictConfig, ListConfig

from kdrun.console import plural
from kdrun.data.base import Dataset
from kdrun.errors import UserError

log = logging.getLogger("kdrun")


def _classes(cfg: DictConfig, key: str) -> Optional[list[int]]:
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple, ListConfig)):
        raise UserError(f"dataset.{key}={value}: give a list of class ids, e.g. dataset.{key}=[3], or null.")
    out = []
    for c in value:
        if isinstance(c, bool) or not isinstance(c, int):
            raise UserError(f"dataset.{key}={list(value)}: {c!r} is not a class id; give integer class ids, "
                            f"e.g. dataset.{key}=[3].")
        out.append(int(c))
    return out


def transfer_classes(cfg: DictConfig, num_classes: Optional[int] = None) -> Optional[tuple[str, list[int]]]:
    """("transfer_exclude" or "transfer_only", its classes), or None when neither is set. Refuses both set
    and, given `num_classes`, a class id outside 0 .. num_classes - 1."""
    exclude, only = _classes(cfg, "transfer_exclude"), _classes(cfg, "transfer_only")
    if exclude is not None and only is not None:
        raise UserError(f"dataset.transfer_exclude={exclude} and dataset.transfer_only={only} are both set: give "
                        f"one of them (the classes the students' training data leaves out, or the only classes "
                        f"it keeps) and set the other to null.")
    if exclude is None and only is None:
        return None
    key, classes = ("transfer_exclude", exclude) if exclude is not None else ("transfer_only", only)
    if num_classes is not None:
        wrong = [c for c in classes if not 0 <= c < num_classes]
        if wrong:
            raise UserError(f"dataset.{key}={classes}: {', '.join(map(str, wrong))} "
                            f"{'is not a class' if len(wrong) == 1 else 'are not classes'} of dataset "
                            f"{cfg.get('name')}, whose classes are 0 to {num_classes - 1}.")
    return key, classes


def transfer_size(cfg: DictConfig) -> Optional[int]:
    """`dataset.transfer_size`: the students train on the first N examples of the training split (AB's
    Table 3: 10 % of CIFAR-10's); null: all of them."""
    size = cfg.get("transfer_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"dataset.transfer_size={size}: give the number of training examples the students train "
                        f"on (1 or more, e.g. dataset.transfer_size=5000), or null for the whole training split.")
    return int(size)


def transfer_set(data: Dataset, cfg: DictConfig) -> Dataset:
    """The students' dataset: `data` with its training split cut to `dataset.transfer_size` and filtered by
    `dataset.transfer_exclude` or `dataset.transfer_only` (the same object when none is set). The other
    splits, the normalisation and the augmentation are `data`'s."""
    size = transfer_size(cfg)
    if size is not None:
        if size > len(data.train):
            raise UserError(f"dataset.transfer_size={size} is more than the training split holds "
                            f"({plural(len(data.train), 'example')}, after dataset.train_size and dataset.val_size). "
                            f"Give at most {len(data.train)}, or null for all of them.")
        log.info("Transfer set (dataset.transfer_size=%d): the students train on the first %d of the %d training "
                 "examples; the teacher on all of them.", size, size, len(data.train))
        data = dataclasses.replace(data, train=data.train.take(torch.arange(size, device=data.train.y.device)))
    chosen = transfer_classes(cfg, data.num_classes)
    if chosen is None:
        return data
    key, classes = chosen
    listed = torch.tensor(classes, dtype=data.train.y.dtype, device=data.train.y.device)
    inside = torch.isin(data.train.y, listed)
    keep = ~inside if key == "transfer_exclude" else inside
    index = keep.nonzero().flatten()
    if len(index) == 0:
        raise UserError(f"dataset.{key}={classes} leaves the students no training data: the training split "
                        f"({plural(len(data.train), 'example')}, after dataset.train_size and dataset.val_size) "
                        + ("has no example of another class." if key == "transfer_exclude"
                           else f"has no example of {'class' if len(classes) == 1 else 'classes'} "
                                f"{', '.join(map(str, classes))}.")
                        + f" Change dataset.{key}, or set it to null to train the students on every class.")
    names = ", ".join(map(str, classes))
    log.info("Transfer set (dataset.%s=[%s]): the students train on %d of the %d training examples (%s); the "
             "teacher on all of them.", key, names, len(index), len(data.train),
             f"without class{'es' if len(classes) > 1 else ''} {names}" if key == "transfer_exclude"
             else f"class{'es' if len(classes) > 1 else ''} {names} only")
    return dataclasses.replace(data, train=data.train.take(index))


__all__ = ["transfer_classes", "transfer_set", "transfer_size"]
