"""Training-time augmentation on whole batches on the run's device: random shifts and horizontal flips.

Applied to raw pixel values before normalisation, so the zero fill of a shift is the black padding of
torchvision's `RandomCrop(padding=p)`. Every random number comes from the given generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from kdrun.errors import UserError, require

KEYS = ("crop_padding", "translate", "flip")


def _randint(high: int, shape: tuple, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randint(0, high, shape, generator=generator, device=device).to(x.device)


def random_shift(x: torch.Tensor, max_shift: int, generator: Optional[torch.Generator] = None,
                 flip: bool = False) -> torch.Tensor:
    """Shift each image by its own (dy, dx) in [-max_shift, max_shift], filling with zeros.

    The same as padding by `max_shift` and cropping back to the original size at a random place. With
    `flip`, each image is also mirrored left-right with probability 1/2, in the same single copy.
    """
    if max_shift <= 0:
        return random_flip(x, generator) if flip else x
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    mirrored = torch.stack([padded, padded.flip(3)], 1) if flip else padded.unsqueeze(1)
    # Every crop position of both orientations as a view (n, 2, c, 2s+1, 2s+1, h, w); one advanced index
    # picks each image's own. Cropping the mirrored padding at the mirrored place = crop, then flip.
    windows = mirrored.unfold(3, h, 1).unfold(4, w, 1)
    top, left = _randint(2 * max_shift + 1, (2, n), x, generator)
    side = _randint(2, (n,), x, generator) if flip else torch.zeros(n, dtype=torch.long, device=x.device)
    return windows[torch.arange(n, device=x.device), side, :, top, left]


def random_flip(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = _randint(2, (x.shape[0], 1, 1, 1), x, generator).bool()
    return torch.where(flip, x.flip(3), x)


@dataclass(frozen=True)
class Augmentation:
    crop_padding: int = 0  # CIFAR's random crop: pad by this many pixels, crop back at a random place
    translate: int = 0  # MNIST's jitter: shift by up to this many pixels in each direction
    flip: bool = False

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = random_shift(x, self.crop_padding, generator, flip=self.flip and not self.translate)
        return random_shift(x, self.translate, generator, flip=self.flip) if self.translate else x

    def __bool__(self) -> bool:
        return bool(self.crop_padding or self.translate or self.flip)


def build_augment(cfg: Optional[DictConfig]) -> Optional[Augmentation]:
    """`dataset.augment` -> the batch augmentation, or None when it is null or switches nothing on."""
    if cfg is None:
        return None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"dataset.augment must be a group of keys ({', '.join(KEYS)}) or null, got {cfg!r}.")
    values = OmegaConf.to_container(cfg, resolve=True)
    unknown = sorted(set(values) - set(KEYS))
    require(not unknown, f"Unknown dataset.augment key(s) {', '.join(unknown)}; valid keys: {', '.join(KEYS)}.")
    for key in ("crop_padding", "translate"):
        value = values.get(key) or 0
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"dataset.augment.{key} must be a whole number of pixels, 0 or more; got {value!r}.")
    flip = values.get("flip") or False
    require(isinstance(flip, bool), f"dataset.augment.flip must be true or false, got {flip!r}.")
    aug = Augmentation(int(values.get("crop_padding") or 0), int(values.get("translate") or 0), flip)
    return aug if aug else None
