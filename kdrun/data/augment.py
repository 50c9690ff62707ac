"""Training-time augmentation on whole batches on the run's device: random shifts and horizontal flips.

Applied to raw pixel values before normalisation, so the zero fill of a shift is the black padding of
torchvision's `RandomCrop(padding=p)`; `padding_mode` takes torchvision's other fills (edge, reflect,
symmetric) for the crop. Every random number comes from the given generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from kdrun.errors import UserError, require

KEYS = ("crop_padding", "padding_mode", "translate", "flip")
PADDING_MODES = ("constant", "edge", "reflect", "symmetric")  # torchvision's names (and numpy's)


def pad_index(n: int, p: int, mode: str, device: torch.device) -> torch.Tensor:
    """The source index of each of the n + 2p positions of a side padded by p (edge, reflect, symmetric).

    reflect mirrors about the edge pixel (dcb|abcd), symmetric repeats it (cba|abcd: OpenCV's
    BORDER_REFLECT), edge repeats the edge pixel (aaa|abcd)."""
    i = torch.arange(-p, n + p, device=device)
    if mode == "edge":
        return i.clamp(0, n - 1)
    if mode == "reflect":
        i = i.abs()
        return torch.where(i > n - 1, 2 * (n - 1) - i, i)
    i = torch.where(i < 0, -i - 1, i)
    return torch.where(i > n - 1, 2 * n - 1 - i, i)


def pad(x: torch.Tensor, p: int, mode: str = "constant") -> torch.Tensor:
    """Pad the last two dims of x by p on each side: zeros, or a fill taken from the image itself."""
    if mode == "constant":
        return F.pad(x, (p, p, p, p))
    h, w = x.shape[-2:]
    if mode != "edge":  # a mirror needs as many pixels as it pads (reflect: one more, the edge it mirrors about)
        limit = min(h, w) - (mode == "reflect")
        require(p <= limit, f"padding_mode={mode} can pad a {h}x{w} image by at most {limit} pixels, "
                            f"got crop_padding={p}.")
    return x[..., pad_index(h, p, mode, x.device), :][..., pad_index(w, p, mode, x.device)]


def _randint(high: int, shape: tuple, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randint(0, high, shape, generator=generator, device=device).to(x.device)


def random_shift(x: torch.Tensor, max_shift: int, generator: Optional[torch.Generator] = None,
                 flip: bool = False, mode: str = "constant") -> torch.Tensor:
    """Shift each image by its own (dy, dx) in [-max_shift, max_shift], filling with zeros (or `mode`).

    The same as padding by `max_shift` and cropping back to the original size at a random place. With
    `flip`, each image is also mirrored left-right with probability 1/2, in the same single copy.
    """
    if max_shift <= 0:
        return random_flip(x, generator) if flip else x
    n, c, h, w = x.shape
    padded = pad(x, max_shift, mode)
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
    padding_mode: str = "constant"  # the crop's fill

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = random_shift(x, self.crop_padding, generator, flip=self.flip and not self.translate,
                         mode=self.padding_mode)
        return random_shift(x, self.translate, generator, flip=self.flip) if self.translate else x

    def __bool__(self) -> bool:
        return bool(self.crop_padding or self.translate or self.flip)


def build_augment(cfg, where: str = "dataset.augment") -> Optional[Augmentation]:
    """`dataset.augment` (or a recipe's `augment`) -> the batch augmentation, or None when it is null or
    switches nothing on."""
    if cfg is None:
        return None
    if not isinstance(cfg, (DictConfig, dict)):
        raise UserError(f"{where} must be a group of keys ({', '.join(KEYS)}) or null, got {cfg!r}.")
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    unknown = sorted(map(str, set(values) - set(KEYS)))
    require(not unknown, f"Unknown {where} key(s) {', '.join(unknown)}; valid keys: {', '.join(KEYS)}.")
    for key in ("crop_padding", "translate"):
        value = values.get(key) or 0
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"{where}.{key} must be a whole number of pixels, 0 or more; got {value!r}.")
    flip = values.get("flip") or False
    require(isinstance(flip, bool), f"{where}.flip must be true or false, got {flip!r}.")
    mode = values.get("padding_mode") or "constant"
    require(mode in PADDING_MODES, f"{where}.padding_mode must be one of {', '.join(PADDING_MODES)}; got {mode!r}.")
    aug = Augmentation(int(values.get("crop_padding") or 0), int(values.get("translate") or 0), flip, mode)
    return aug if aug else None
