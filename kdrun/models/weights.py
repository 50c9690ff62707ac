"""The initialisation the reference CIFAR code (RepDistiller, TAKD) gives its models."""
from __future__ import annotations

import math
from typing import Optional

import torch.nn as nn


def init_reference(model: nn.Module, linear_std: Optional[float] = None, linear_zero_bias: bool = True) -> None:
    """He-normal (fan-out) convolutions with zero bias, batch norm 1 and 0; linear layers get
    N(0, linear_std) weights when it is given and a zero bias when `linear_zero_bias`."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                m.weight.data.normal_(0, linear_std)
            if linear_zero_bias:
                m.bias.data.zero_()
