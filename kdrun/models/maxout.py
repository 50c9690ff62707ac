"""The maxout networks of FitNets' CIFAR experiments (Romero et al. 2015): the teacher `maxout_cifar`
(Goodfellow et al. 2013's CIFAR-10 maxout network, FitNets A.1.1) and the students `fitnet1` ...
`fitnet4` (FitNets Table 7), as the authors' pylearn2 configs build them.

A maxout layer is one module: conv (or linear) -> max over `pieces` consecutive channels -> max-pool,
so the hook at `layers.<i>` reads layer i + 1 as the paper counts them (FitNet 4's hint "11 <- 2" is
student `layers.10` <- teacher `layers.1`). As in pylearn2: weights start in U(-irange, irange) and
biases at 0; conv layers learn at 0.05x the recipe's lr (`W_lr_scale`, `b_lr_scale`: the `lr_scale`
attribute); after every step each unit's weight norm is capped (`max_kernel_norm`, `max_col_norm`:
`constrain_()`). The teacher's pools overlap and round up (cuda-convnet's pooling): 32 -> 33 -> 16
-> 15 -> 7 -> 9 -> 5, which gives the paper's ~725M multiplications.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from kdrun.models import args
from kdrun.models.registry import MODELS

CONV_LR_SCALE = 0.05  # W_lr_scale and b_lr_scale of every conv layer in the authors' configs
IRANGE = 0.005


def uniform_(layer: nn.Module, irange: float) -> None:
    nn.init.uniform_(layer.weight, -irange, irange)
    nn.init.zeros_(layer.bias)


def cap_norms_(weight: torch.Tensor, max_norm: float) -> None:
    """Scale down each output unit's weights (dim 0) whose L2 norm exceeds `max_norm`."""
    weight.copy_(torch.renorm(weight, p=2, dim=0, maxnorm=max_norm))


def max_of_pieces(z: torch.Tensor, pieces: int) -> torch.Tensor:
    """Maxout: unit j is the max of channels j * pieces ... j * pieces + pieces - 1 (pylearn2's grouping)."""
    return z.unflatten(1, (z.shape[1] // pieces, pieces)).amax(2)


class ScaledDropout(nn.Dropout):
    """pylearn2's dropout: in training, x * mask * scale (kept with probability 1 - p); unchanged in eval.
    scale = 1 / (1 - p) is the usual inverted dropout; Goodfellow et al.'s CIFAR-10 network gives its
    input `input_scales: {h0: 1.}`, so kept pixels stay as they are while training, and the test images,
    which nothing drops, are seen at full strength."""

    def __init__(self, p: float, scale: float):
        super().__init__(p)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * (self.scale * (1 - self.p)) if self.training else x


class MaxoutConv(nn.Module):
    """Dropout on the input (teacher only), conv, maxout, then an optional max-pool."""

    def __init__(self, in_channels: int, units: int, pieces: int, kernel: int | tuple[int, int], padding: int,
                 pool: nn.Module | None, max_norm: float, irange: float = IRANGE,
                 lr_scale: float | None = CONV_LR_SCALE, dropout: float = 0.0, dropout_scale: float | None = None):
        super().__init__()
        self.pieces, self.max_norm = pieces, max_norm
        self.drop = (ScaledDropout(dropout, 1 / (1 - dropout) if dropout_scale is None else dropout_scale)
                     if dropout else nn.Identity())
        self.conv = nn.Conv2d(in_channels, units * pieces, kernel, padding=padding)
        uniform_(self.conv, irange)
        if lr_scale is not None:
            self.conv.lr_scale = lr_scale
        self.pool = pool or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(max_of_pieces(self.conv(self.drop(x)), self.pieces))

    def constrain_(self) -> None:
        cap_norms_(self.conv.weight, self.max_norm)


class MaxoutLinear(nn.Module):
    def __init__(self, in_features: int, units: int, pieces: int, max_norm: float, dropout: float = 0.0):
        super().__init__()
        self.pieces, self.max_norm = pieces, max_norm
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.linear = nn.Linear(in_features, units * pieces)
        uniform_(self.linear, IRANGE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_of_pieces(self.linear(self.drop(x.flatten(1))), self.pieces)

    def constrain_(self) -> None:
        cap_norms_(self.linear.weight, self.max_norm)


class SoftmaxLayer(nn.Linear):
    """The top layer (pylearn2's Softmax: its output is the logits here), max_col_norm 1.9365."""

    def __init__(self, in_features: int, num_classes: int, max_norm: float = 1.9365, dropout: float = 0.0):
        super().__init__(in_features, num_classes)
        self.max_norm = max_norm
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        uniform_(self, IRANGE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.drop(x))

    def constrain_(self) -> None:
        cap_norms_(self.weight, self.max_norm)


class MaxoutNet(nn.Module):
    """`layers` (maxout conv layers), `fc` (maxout, 500 units x 5 pieces), `classifier`."""

    def __init__(self, layers: list[MaxoutConv], out_shape: tuple[int, int, int], num_classes: int,
                 stage_ends: list[int], dropout: float = 0.0):
        super().__init__()
        self.layers = nn.Sequential(*layers)
        c, h, w = out_shape
        self.fc = MaxoutLinear(c * h * w, 500, 5, max_norm=1.9, dropout=dropout)
        self.classifier = SoftmaxLayer(500, num_classes, dropout=dropout)
        self._stage_ends = stage_ends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.layers(x)))

    def feature_points(self) -> dict[str, list[str]]:
        stages = [f"layers.{i}" for i in self._stage_ends]
        return {"stages": stages, "preact": stages, "embedding": ["classifier:in"]}


def _side(image_size) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def pooled(size: int, kernel: int, stride: int) -> int:
    """Output side of a max-pool that rounds up (ceil_mode), as cuda-convnet's."""
    return -(-(size - kernel) // stride) + 1


MAXOUT_CIFAR = [(96, 8, 4, 4, 2, 0.9), (192, 8, 3, 4, 2, 1.9365), (192, 5, 3, 2, 2, 1.9365)]  # units, kernel,
# pad, pool, pool stride, max_norm of each maxout conv layer


def _maxout_cifar_fits(side: int) -> bool:
    for _, kernel, pad, pool, stride, _ in MAXOUT_CIFAR:
        side = side + 2 * pad - kernel + 1
        if side < pool:
            return False
        side = pooled(side, pool, stride)
    return True


MAXOUT_CIFAR_SMALLEST = next(s for s in range(1, 64) if _maxout_cifar_fits(s))  # the smallest image side it takes


def maxout_cifar(num_classes: int, in_channels: int, image_size, input_dropout: float = 0.2,
                 input_dropout_scale: float = 1.0, dropout: float = 0.5) -> MaxoutNet:
    """Goodfellow et al. 2013's CIFAR-10 network (pylearn2 scripts/papers/maxout/cifar10.yaml): maxout
    conv 96-192-192 (2 pieces; kernels 8, 8, 5; pads 4, 3, 3; pools 4/2, 4/2, 2/2), maxout fc 500 x 5,
    softmax; dropout 0.2 on the input (kept pixels not rescaled), 0.5 on every other layer's input."""
    args.probability("input_dropout", input_dropout)
    args.positive("input_dropout_scale", input_dropout_scale)
    args.probability("dropout", dropout)
    h, w = _side(image_size)
    if min(h, w) < MAXOUT_CIFAR_SMALLEST:
        raise args.InputTooSmall(MAXOUT_CIFAR_SMALLEST, " (its kernels and pools are fixed)")
    layers, channels = [], in_channels
    for i, (units, kernel, pad, pool, stride, max_norm) in enumerate(MAXOUT_CIFAR):
        h, w = h + 2 * pad - kernel + 1, w + 2 * pad - kernel + 1
        h, w = pooled(h, pool, stride), pooled(w, pool, stride)
        layers.append(MaxoutConv(channels, units, 2, kernel, pad, nn.MaxPool2d(pool, stride, ceil_mode=True),
                                 max_norm, dropout=input_dropout if i == 0 else dropout,
                                 dropout_scale=input_dropout_scale if i == 0 else None))
        channels = units
    return MaxoutNet(layers, (channels, h, w), num_classes, stage_ends=[0, 1, 2], dropout=dropout)


# FitNets Table 7: the conv widths of each block; a 2x2 max-pool ends blocks 1 and 2, a max over all
# positions ends block 3. Guided layer (hint): the end of block 2.
FITNETS = {
    1: [[16, 16, 16], [32, 32, 32], [48, 48, 64]],
    2: [[16, 32, 32], [48, 64, 80], [96, 96, 128]],
    3: [[32, 48, 64, 64], [80, 80, 80, 80], [128, 128, 128]],
    4: [[32, 32, 32, 48, 48], [80] * 6, [128] * 6],
}


def fitnet(num_classes: int, in_channels: int, image_size, version: int = 4) -> MaxoutNet:
    """FitNet 1-4: zero-padded 3x3 maxout convs (2 pieces, max_kernel_norm 0.9), no dropout."""
    args.one_of("version", version, FITNETS)
    h, w = _side(image_size)
    if min(h, w) < 4:
        raise args.InputTooSmall(4, " (it halves the image twice)")
    layers, stage_ends, channels = [], [], in_channels
    for b, block in enumerate(FITNETS[version]):
        for j, units in enumerate(block):
            pool = None
            if j == len(block) - 1:
                pool = nn.MaxPool2d(2, 2) if b < 2 else nn.AdaptiveMaxPool2d(1)
                stage_ends.append(len(layers))
            layers.append(MaxoutConv(channels, units, 2, 3, 1, pool, max_norm=0.9))
            channels = units
    return MaxoutNet(layers, (channels, 1, 1), num_classes, stage_ends)


MODELS.register("maxout_cifar", maxout_cifar)
for _v in FITNETS:
    MODELS.register(f"fitnet{_v}", partial(fitnet, version=_v))
