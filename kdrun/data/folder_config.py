"""The keys of the datasets read from image files (kdrun.data.config.FolderConfig) -> how they are read,
checked before any file is: `dataset.image_size`, `resize`, `decoder`, `workers` and `augment`."""
from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from kdrun.data.folder import default_workers
from kdrun.data.images import DECODERS, ImagePipeline
from kdrun.errors import UserError, require

AUGMENT_KEYS = ("crop_scale", "crop_ratio", "flip")


def reads_files(cfg: DictConfig) -> bool:
    """A dataset read from image files as it trains (FolderConfig's keys), not held in memory."""
    return "decoder" in cfg


def _number(value, key: str, what: str) -> int:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"dataset.{key} must be {what} (a whole number of pixels, 1 or more); got {value!r}.")
    return int(value)


def _range(value, key: str, high: Optional[float], example: str) -> tuple[float, float]:
    ok = isinstance(value, (list, tuple, ListConfig)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    require(ok and 0 < value[0] <= value[1] <= (high or float("inf")),
            f"dataset.augment.{key} must be two numbers [min, max] with 0 < min <= max"
            f"{f' <= {high}' if high else ''}, e.g. dataset.augment.{key}={example}; got {value!r}.")
    return float(value[0]), float(value[1])


def augment_of(cfg) -> dict:
    """`dataset.augment` -> ImagePipeline's scale, ratio and flip; null: no random crop, no flip."""
    if cfg is None:
        return {"scale": None, "flip": False}
    if not isinstance(cfg, (DictConfig, dict)):
        raise UserError(f"dataset.augment must be a group of keys ({', '.join(AUGMENT_KEYS)}) or null, got {cfg!r}.")
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    unknown = sorted(map(str, set(values) - set(AUGMENT_KEYS)))
    require(not unknown, f"Unknown dataset.augment key(s) {', '.join(unknown)}: the datasets read from image files "
                         f"take {', '.join(AUGMENT_KEYS)}.")
    scale = values.get("crop_scale")
    flip = values.get("flip", False)
    require(isinstance(flip, bool), f"dataset.augment.flip must be true or false, got {flip!r}.")
    out = {"scale": None if scale is None else _range(scale, "crop_scale", 1, "[0.08,1.0]"), "flip": flip}
    if values.get("crop_ratio") is not None:
        out["ratio"] = _range(values["crop_ratio"], "crop_ratio", None, "[0.75,1.3333]")
    return out


def pipeline_of(cfg: DictConfig) -> ImagePipeline:
    size = _number(cfg.get("image_size"), "image_size", "the crops' side")
    resize = cfg.get("resize")
    resize = round(size * 256 / 224) if resize is None else _number(resize, "resize", "the evaluation resize")
    require(resize >= size, f"dataset.resize={resize} is smaller than dataset.image_size={size}: evaluation "
                            f"resizes the shorter side to dataset.resize, then cuts the centre {size}x{size}. Give "
                            f"dataset.resize={size} or more, or null for {round(size * 256 / 224)} (size*256/224).")
    decoder = str(cfg.get("decoder"))
    require(decoder in DECODERS, f"dataset.decoder must be one of {', '.join(DECODERS)}; got {decoder!r}.")
    return ImagePipeline(size=size, resize=resize, decoder=decoder, **augment_of(cfg.get("augment")))


def workers_of(cfg: DictConfig) -> int:
    workers: Optional[int] = cfg.get("workers")
    if workers is None:
        return default_workers()
    require(isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0,
            f"dataset.workers must be 0 or more (0: the images are read in the main process), or null for "
            f"min(8, CPU cores); got {workers!r}.")
    return int(workers)
