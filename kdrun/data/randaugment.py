"""RandAugment with Cutout on whole uint8 batches on the run's device: the strong view of MLKD.

MLKD's authors (Jin et al., CVPR 2023; their `mdistiller/dataset/cifar100.py`) build the strong view of a
training image as its own random crop and flip (drawn independently of the weak view's), then FixMatch's
RandAugment: two of the 14 ops below, drawn uniformly with replacement, each at a magnitude drawn
uniformly from the op's range (the `m=10` of `RandAugment(2, 10)` is unused there), then Cutout of a
square of side U(0, 0.5) x the image width filled with (125, 123, 114). The ops follow PIL's definitions
on 8-bit pixels (nearest-neighbour geometry about pixel centres with a black fill, PIL's grey
conversion and lookup tables, blends truncated to integers as PIL's are): tests/test_randaugment.py finds
them equal to PIL's pixel for pixel, but for a rotated pixel whose position falls on a pixel boundary
(under 0.5% of them), which PIL may round the other way.

Every image has its own ops and magnitudes; the work is vectorised over the batch: the geometric ops
(rotate, shear, translate) are one per-image affine map and one gather, each colour op one batched
computation. On an accelerator every op runs on the whole batch and is kept where it was drawn, so
nothing waits on the host; on the CPU each op runs on its own images only. Every random number comes from
the given generator, so a view is a function of the batch and the generator's seed.
"""
from __future__ import annotations

from typing import Optional

import torch

from kdrun.data.base import Dataset
from kdrun.errors import UserError

# (name, low, high): the op's magnitude is low + (high - low) * U(0, 1), as the reference's augment_list.
OPS = (
    ("auto_contrast", 0.0, 1.0),
    ("brightness", 0.05, 0.95),  # PIL ImageEnhance factors: below 1, so darker, greyer, flatter, blurrier
    ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95),
    ("equalize", 0.0, 1.0),
    ("identity", 0.0, 1.0),
    ("posterize", 4.0, 8.0),  # bits kept: int(v), 4 to 7
    ("rotate", -30.0, 30.0),  # degrees, counter-clockwise about the centre
    ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("solarize", 0.0, 256.0),  # pixels at or above the threshold inverted
    ("translate_x", -0.3, 0.3),  # fraction of the width
    ("translate_y", -0.3, 0.3),  # fraction of the height
)
OP_INDEX = {name: i for i, (name, _, _) in enumerate(OPS)}
CUTOUT_FILL = (125, 123, 114)  # the reference's Cutout colour (RGB); other channel counts get their mean
CUTOUT_MAX = 0.5  # the square's side is U(0, CUTOUT_MAX) x the image width
# PIL's RGB -> L conversion, in 1/65536: L = (R * 19595 + G * 38470 + B * 7471 + 32768) >> 16
GREY_WEIGHTS = (19595.0, 38470.0, 7471.0)


def _uniform(shape: tuple, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's luminance (n x 1 x h x w) of float pixel values 0..255: ITU-R 601 weights in PIL's integer
    arithmetic for RGB, the channel itself for one channel, the channels' mean otherwise."""
    c = x.shape[1]
    if c == 1:
        return x
    if c == 3:
        w = x.new_tensor(GREY_WEIGHTS).view(1, 3, 1, 1)
        return torch.floor(((x * w).sum(1, keepdim=True) + 32768.0) / 65536.0)
    return torch.floor(x.mean(1, keepdim=True))


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend(degenerate, x, factor) for factors in [0, 1]: truncated to an integer."""
    return torch.floor(degenerate + _per_image(factor) * (x - degenerate)).clamp(0, 255)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, over 13, rounded), the border pixels kept.
    The sums are of whole numbers, so exact whatever the batch."""
    h, w = x.shape[-2:]
    if h < 3 or w < 3:
        return x
    total = 4.0 * x[..., 1:-1, 1:-1]  # the centre's weight 5, less the 1 the window sum below counts
    for dy in range(3):
        for dx in range(3):
            total = total + x[..., dy:h - 2 + dy, dx:w - 2 + dx]
    out = x.clone()
    out[..., 1:-1, 1:-1] = torch.floor(total / 13.0 + 0.5).clamp(0, 255)
    return out


def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """Each channel of each image stretched to 0..255 (PIL's ImageOps.autocontrast, no cutoff: the lookup
    int(i * scale - lo * scale), scale = 255 / (hi - lo), in double precision as PIL computes it)."""
    lo = x.amin(dim=(2, 3), keepdim=True).double()
    hi = x.amax(dim=(2, 3), keepdim=True).double()
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp_min(1.0)  # (a scalar / tensor multiplies by a reciprocal)
    stretched = torch.floor(x.double() * scale - lo * scale).clamp(0, 255).to(x.dtype)
    return torch.where(hi > lo, stretched, x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Each channel of each image histogram-equalised with PIL's ImageOps.equalize lookup table:
    step = (pixels - count of the highest value present) // 255, lut[i] = (step // 2 + pixels below i) // step
    (at most 255), the identity where step is 0."""
    n, c, h, w = x.shape
    values = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, values, torch.ones_like(values))
    top = hist.gather(1, values.amax(dim=1, keepdim=True))
    step = (h * w - top) // 255
    below = hist.cumsum(1) - hist
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp(0, 255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand(n * c, 256))
    return lut.gather(1, values).to(x.dtype).view(n, c, h, w)


def posterize(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Keep the top max(1, int(v)) bits of each pixel."""
    drop = torch.pow(2.0, 8 - v.floor().clamp(1, 8))
    return torch.floor(x / _per_image(drop)) * _per_image(drop)


def solarize(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Pixels at or above the threshold v inverted (PIL: i if i < v else 255 - i)."""
    return torch.where(x < _per_image(v), x, 255.0 - x)


def affine_maps(op: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per image, the 2 x 3 map from an output pixel's centre to the input position it reads (PIL's
    AFFINE data): rotate, shear and translate by `v`; the identity for every other op."""
    n = op.shape[0]
    A = torch.zeros(n, 2, 3, dtype=torch.float64, device=v.device)
    v = v.double()
    A[:, 0, 0] = A[:, 1, 1] = 1.0
    rot = op == OP_INDEX["rotate"]
    theta = torch.deg2rad(v)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    # PIL's Image.rotate(v): input = R (p - centre) + centre, R = [[cos, -sin], [sin, cos]] (counter-clockwise
    # on screen, y pointing down).
    rotation = torch.stack([
        torch.stack([cos, -sin, cx - cos * cx + sin * cy], 1),
        torch.stack([sin, cos, cy - sin * cx - cos * cy], 1),
    ], 1)
    A = torch.where(rot.view(n, 1, 1), rotation, A)
    A[:, 0, 1] = torch.where(op == OP_INDEX["shear_x"], v, A[:, 0, 1])  # input x = x + v y
    A[:, 1, 0] = torch.where(op == OP_INDEX["shear_y"], v, A[:, 1, 0])  # input y = y + v x
    A[:, 0, 2] = torch.where(op == OP_INDEX["translate_x"], v * w, A[:, 0, 2])
    A[:, 1, 2] = torch.where(op == OP_INDEX["translate_y"], v * h, A[:, 1, 2])
    return A


def warp(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour affine resampling as PIL's transform(AFFINE, NEAREST): output pixel (i, j) reads
    the input at floor(A (j + 1/2, i + 1/2, 1)); positions outside the image read black."""
    n, c, h, w = x.shape
    ys = (torch.arange(h, device=x.device, dtype=torch.float64) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, device=x.device, dtype=torch.float64) + 0.5).view(1, 1, w)
    a = A.double().view(n, 6, 1, 1)  # in double precision, as PIL computes the positions
    px = torch.floor(a[:, 0] * xs + a[:, 1] * ys + a[:, 2]).long()
    py = torch.floor(a[:, 3] * xs + a[:, 4] * ys + a[:, 5]).long()
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    flat = (py.clamp(0, h - 1) * w + px.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, flat).view(n, c, h, w)
    return torch.where(inside.unsqueeze(1), out, torch.zeros((), dtype=x.dtype, device=x.device))


def mean_grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance.Contrast degenerate: the image's mean luminance, rounded (n x 1 x 1 x 1)."""
    return torch.floor(grey(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)


# The colour ops: (float batch, per-image magnitudes) -> float batch.
COLOUR = {
    "auto_contrast": lambda x, v: auto_contrast(x),
    "brightness": lambda x, v: blend(torch.zeros_like(x), x, v),
    "color": lambda x, v: blend(grey(x).expand_as(x), x, v),
    "contrast": lambda x, v: blend(mean_grey(x).expand_as(x), x, v),
    "equalize": lambda x, v: equalize(x),
    "posterize": posterize,
    "sharpness": lambda x, v: blend(smooth(x), x, v),
    "solarize": solarize,
}
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def apply_ops(x: torch.Tensor, op: torch.Tensor, v: torch.Tensor, select: Optional[str] = None) -> torch.Tensor:
    """Image k of the float batch x (pixel values 0..255) through op `op[k]` at magnitude `v[k]`.

    Every op works on each image alone, so how the images are grouped does not change a pixel. `select`:
    `where` computes each op for the whole batch and keeps it where it was drawn (no host sync: the
    default on accelerators); `index` computes each op on its own images only (the default on the CPU,
    about three times as fast there)."""
    n, c, h, w = x.shape
    select = select or ("index" if x.device.type == "cpu" else "where")
    # PIL blends with a single-precision factor and places pixels in double precision.
    v_colour = v.to(x.dtype)
    if select == "where":
        out = warp(x, affine_maps(op, v, h, w))  # the geometric ops; the others' map is the identity
        for name, compute in COLOUR.items():
            out = torch.where(_per_image(op == OP_INDEX[name]), compute(x, v_colour), out)
        return out
    out = x.clone()
    geometric = torch.zeros_like(op, dtype=torch.bool)
    for name in GEOMETRIC:
        geometric |= op == OP_INDEX[name]
    groups = [(geometric, lambda xs, os, vs, _: warp(xs, affine_maps(os, vs, h, w)))]
    groups += [(op == OP_INDEX[name], lambda xs, os, _, vs, f=compute: f(xs, vs)) for name, compute in COLOUR.items()]
    for chosen, compute in groups:
        index = chosen.nonzero().view(-1)
        if index.numel():
            out.index_copy_(0, index, compute(x.index_select(0, index), op.index_select(0, index),
                                              v.index_select(0, index), v_colour.index_select(0, index)))
    return out


def cutout(x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """The reference's Cutout: side s = U(0, 0.5) x width, centre (cx, cy) drawn as numpy's
    uniform(w), i.e. in (1, w] (and (1, h]); the square from (int(max(0, cx - s/2)), same for y) to that
    corner + s, both ends included as PIL's rectangle includes them, filled with CUTOUT_FILL.
    `draws`: 3 x n uniforms in [0, 1) (side, centre x, centre y)."""
    n, c, h, w = x.shape
    side = draws[0] * CUTOUT_MAX * w
    cx = w - (w - 1) * draws[1]
    cy = h - (h - 1) * draws[2]
    x0 = torch.floor((cx - side / 2).clamp_min(0))
    y0 = torch.floor((cy - side / 2).clamp_min(0))
    x1 = torch.floor(torch.minimum(x0 + side, torch.full_like(x0, w)))
    y1 = torch.floor(torch.minimum(y0 + side, torch.full_like(y0, h)))
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    inside = ((cols >= x0.view(n, 1, 1)) & (cols <= x1.view(n, 1, 1)) &
              (rows >= y0.view(n, 1, 1)) & (rows <= y1.view(n, 1, 1)) & (side > 0).view(n, 1, 1))
    fill = CUTOUT_FILL if c == 3 else (round(sum(CUTOUT_FILL) / 3),) * c
    fill = x.new_tensor(fill).view(1, c, 1, 1)
    return torch.where(inside.unsqueeze(1), fill, x)


class RandAugment:
    """`num_ops` ops per image drawn with replacement from OPS at uniform magnitudes, then Cutout: uint8
    batch -> uint8 batch. The random numbers are drawn in a fixed order from `generator`."""

    def __init__(self, num_ops: int = 2, cutout: bool = True):
        self.num_ops = num_ops
        self.cutout = cutout
        self._low = torch.tensor([low for _, low, _ in OPS])
        self._span = torch.tensor([high - low for _, low, high in OPS])

    def draw(self, n: int, generator: Optional[torch.Generator], device: torch.device):
        """(ops num_ops x n, magnitudes num_ops x n, cutout draws 3 x n), every one from `generator`."""
        gen_device = generator.device if generator is not None else device
        ops = torch.randint(0, len(OPS), (self.num_ops, n), generator=generator, device=gen_device).to(device)
        u = _uniform((self.num_ops, n), generator, device)
        magnitudes = self._low.to(device)[ops] + self._span.to(device)[ops] * u
        return ops, magnitudes, _uniform((3, n), generator, device)

    def apply(self, x: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor,
              cut: Optional[torch.Tensor]) -> torch.Tensor:
        out = x.float()
        for op, v in zip(ops, magnitudes):
            out = apply_ops(out, op, v)
        if self.cutout and cut is not None:
            out = cutout(out, cut)
        return out.round().clamp(0, 255).to(torch.uint8)

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise UserError(f"RandAugment works on 8-bit images (uint8 pixels), got {x.dtype}.")
        ops, magnitudes, cut = self.draw(x.shape[0], generator, x.device)
        return self.apply(x, ops, magnitudes, cut)


class StrongView:
    """MLKD's strong view of training batches of `data` (a stage's dataset, with its augmentation):
    the images' own crop and flip (the dataset's augmentation with the view's generator, so independent
    of the weak view's), RandAugment with Cutout, normalised with the dataset's mean and std as the weak
    view is. `generator(seed)` gives an epoch's generator; the loop seeds it from (seed, stage, epoch)."""

    def __init__(self, data: Dataset, num_ops: int = 2, method: str = "mlkd"):
        if not isinstance(getattr(data.train, "x", None), torch.Tensor):
            raise UserError(
                f"method {method} trains on a strongly augmented view (RandAugment) made from the training "
                f"images held in memory, and dataset={data.name} reads its images from disk as it trains. Set "
                f"method.strong_view=false (the method on the usual view only), or use an in-memory dataset.")
        if data.train.x.dtype != torch.uint8:
            raise UserError(
                f"method {method} trains on a strongly augmented view (RandAugment), which works on 8-bit "
                f"images, but the training images of dataset {data.name} are {data.train.x.dtype} "
                f"(whitened data: set dataset.whiten's keys to null).")
        self.data = data
        self.randaugment = RandAugment(num_ops)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.data.device).manual_seed(seed)

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.data.train.x.index_select(0, index)
        if self.data.augment is not None:
            x = self.data.augment(x, generator)
        return (self.randaugment(x, generator).float() - self.data.mean) / self.data.std
