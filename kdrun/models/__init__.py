"""The model zoo: one registry of names, selectable as `teacher=NAME` and `student=NAME`.

A constructor takes the dataset's shape (`num_classes`, `in_channels`, `image_size` as (H, W)) plus
its own keyword arguments; those with defaults become the config keys of the model (e.g.
`teacher.dropout`). A config node with `_target_` builds a user's own model class instead, with the
same shape arguments. One file per family: mlp, wrn, resnet, resnet_imagenet, vgg, mobilenetv2, shufflenet, plain,
maxout, nin, densenet, torchvision_models (torchvision's ImageNet models, `tv_*`).
Architectures, initialisation and state_dict keys follow RepDistiller (TAKD for the plain CNNs), so
their checkpoints load; fixed-size pools became adaptive so MNIST's 28x28 works too.

Features are read with forward hooks by module path (`kdrun.models.features`); forwards are never
rewritten. Every model declares its default points with `feature_points()`:

- `stages`: the output of each stage, in order (RepDistiller's f1..fN, the stem and the embedding
  left out): FitNet's hint (a middle stage), AT, NST, FSP, VID, FT.
- `preact`: one per stage, the same shape: the tensor whose ReLU is that stage's output (AB,
  overhaul). A block's last ReLU is its own module used once (`relu_out`), so `PATH.relu_out:in`
  reads it. Where a stage ends without a ReLU (MobileNetV2's linear bottlenecks) it is the stage
  itself; for the pre-activation WRNs it is the input of the ReLU that next consumes the stage
  (`block2.layer.0.relu1:in`, ..., `relu:in`), RepDistiller's `preact=True` features.
- `embedding`: the classifier's input (`fc:in`): CRD, RKD, PKT, CC, SP-style methods.
- `stem` (optional): the stem's output, the first stage's input (RepDistiller's f0): FSP's first map.
- `feature_layers` (optional): module paths of the layers that compute the features, the head left out
  (RepDistiller's `get_feat_modules()`): what AB's and FSP's initialisation stages train.

ReLUs are never in-place: a hook on a module's input would otherwise see the activated tensor.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from kdrun.data.base import DataInfo
from kdrun.errors import UserError
from kdrun.models import (  # noqa: F401  (importing a family registers its names)
    args, densenet, maxout, mlp, mobilenetv2, nin, plain, resnet, resnet_imagenet, shufflenet, torchvision_models, vgg,
    wrn)
from kdrun.models.registry import MODELS
from kdrun.registry import call_with_supported, locate

SHAPE_ARGS = ("num_classes", "in_channels", "image_size")
NODE_KEYS = ("name", "checkpoint", "pretrained", "train", "seed", "epoch", "_target_")  # config keys that are not constructor arguments


def model_defaults(name: str) -> dict:
    """Constructor keywords with defaults, as plain config values (tuples become lists)."""
    out = {}
    for p in inspect.signature(MODELS.get(name)).parameters.values():
        if p.name in SHAPE_ARGS or p.default is inspect.Parameter.empty or p.kind is p.VAR_KEYWORD:
            continue
        out[p.name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out


def build_model(cfg: DictConfig, info: DataInfo, role: Optional[str] = None) -> nn.Module:
    """The model of a config node (`teacher`, `student`, or a stage's model) for the dataset's shapes.
    Its arguments are checked by its constructor (kdrun.models.args); `role` names the node in messages
    (`teacher`, `student`; None for a stage's own model)."""
    label = model_label(cfg)
    shape = dict(num_classes=info.num_classes, in_channels=info.channels, image_size=info.image_size)
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NODE_KEYS}
    clash = [k for k in kwargs if k in SHAPE_ARGS]
    if clash:
        raise UserError(shape_arg_message(role, label, clash[0], kwargs[clash[0]], info))
    if cfg.get("_target_"):
        key = f"{role}._target_" if role else "_target_"
        ctor = locate(str(cfg._target_), key)  # a class or a function that returns the model
        return call_with_supported(ctor, **shape, **kwargs)
    ctor = MODELS.get(cfg.name)
    who = f"{role}={label}" if role else label
    try:
        return ctor(**shape, **kwargs)
    except args.ModelArgError as e:
        key = f"{role}.{e.arg}" if role else e.arg
        raise UserError(f"{key}={args.show(e.value)}: {who} takes {e.expected}. Give {key} such a value.") from None
    except args.InputTooSmall as e:
        raise UserError(args.too_small_message(who, info.image_size, e.minimum, e.reason)) from None
    except TypeError as e:
        raise UserError(f"Model {cfg.name!r} cannot be built with {kwargs}: {e}.") from None
    except (ValueError, RuntimeError, IndexError, KeyError, ZeroDivisionError) as e:  # what torch's layers refuse
        given = ", ".join(f"{k}={args.show(v)}" for k, v in kwargs.items())
        raise UserError(f"{who} cannot be built with {given} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                        f"Check the values you gave its arguments; `kdrun --cfg job` shows them.") from None


DATASET_KEYS = {"num_classes": "dataset.num_classes", "in_channels": "dataset.channels",
                "image_size": "dataset.image_size"}  # the keys of dataset=synthetic that set each shape


def shape_arg_message(role: Optional[str], label: str, arg: str, value, info: DataInfo) -> str:
    key = f"{role}.{arg}" if role else arg
    h, w = info.image_size
    return (f"{key}={args.show(value)}: the dataset sets {arg}, not the model's config. kdrun builds "
            f"{f'{role}={label}' if role else label} for the dataset's shape (here {info}). Leave out "
            f"+{key}=...; for another shape choose a dataset that has it (dataset=synthetic takes "
            f"{DATASET_KEYS[arg]}=N).")


def model_label(cfg: DictConfig) -> str:
    return str(cfg.get("name") or cfg.get("_target_"))


__all__ = ["MODELS", "build_model", "model_defaults", "model_label"]
