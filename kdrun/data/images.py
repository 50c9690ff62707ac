"""One image file -> one uint8 crop: the standard ImageNet pipeline, run per example by DataLoader workers.

Training: torchvision's RandomResizedCrop(size, scale, ratio) and RandomHorizontalFlip; evaluation (and
training without augmentation): Resize(resize) of the shorter side, then CenterCrop(size). The crops
stay uint8 (a quarter of the bytes of float to copy to the device); `FolderDataset` normalises them
there. Every random number of an example comes from its own generator, seeded from (the epoch's seed,
the example's position in its split): the same crop whatever the worker count, the worker or the batch.
The draws are torchvision's, in its order, so under `torch.manual_seed(example_seed(seed, i))`
torchvision's own transforms give the same crop (tests/test_imagefolder.py checks it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

DECODERS = ("torchvision", "pil")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation, of pixels in 0..1
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK64 = (1 << 64) - 1


def example_seed(seed: int, index: int) -> int:
    """A seed for example `index` in the epoch of `seed` (SplitMix64's mix of the two): torch's CPU
    generator keeps 32 bits of a seed, so neighbouring indices must differ in every bit."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
             generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop: torchvision's RandomResizedCrop.get_params with a generator."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height  # ten misses: the central crop of the nearest allowed ratio
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def read_image(path: str, decoder: str):
    """The image at `path` in RGB: a 3 x H x W uint8 tensor (torchvision.io, which reads JPEG, PNG, GIF and
    WebP by their content; anything else goes to PIL) or a PIL image."""
    if decoder == "torchvision":
        from torchvision.io import ImageReadMode, decode_image, read_file

        try:
            return decode_image(read_file(path), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # a format torchvision does not decode (BMP, TIFF, ...): PIL's turn
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


@dataclass(frozen=True)
class ImagePipeline:
    """How the images of a folder dataset become crops (the `dataset.*` keys of kdrun.data.config.FolderConfig)."""

    size: int  # the crop's side, in training and in evaluation
    resize: int  # evaluation: the shorter side is resized to this, then the centre `size` x `size` is cut
    scale: Optional[tuple[float, float]] = (0.08, 1.0)  # training crops' share of the area; None: no random crop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # training crops' aspect ratio range (width / height)
    flip: bool = True  # training: mirror left-right with probability 1/2
    decoder: str = "torchvision"

    @property
    def random(self) -> bool:
        """Whether training crops differ from epoch to epoch (the teacher-output cache needs them fixed)."""
        return self.scale is not None or self.flip

    def __call__(self, path: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The crop of the image at `path`: augmented with `generator` (training), else the evaluation crop."""
        import torchvision.transforms.v2.functional as F  # here: importing torchvision costs every command a second

        image = read_image(path, self.decoder)
        if generator is not None and self.scale is not None:
            height, width = F.get_size(image)
            top, left, h, w = crop_box(height, width, self.scale, self.ratio, generator)
            image = F.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        else:
            image = F.center_crop(F.resize(image, [self.resize], antialias=True), [self.size, self.size])
        if generator is not None and self.flip and torch.rand(1, generator=generator).item() < 0.5:
            image = F.horizontal_flip(image)
        return image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)
