"""Every layer class the model zoo uses, from one place.

The zoo builds its models from replearn.nn layers only (issue #10): no torch.nn convolution,
normalization or pooling appears in a model file; they import their layers from here, so a
benchmark can bind these names to torch.nn's layers and compare the same architecture.

Contract the models rely on (torch.nn's, which replearn.nn mirrors):
- Conv1d/Conv2d/ConvTranspose1d and the pooling layers take torch's constructor arguments and keep
  `weight` (out, in/groups, *kernel) and `bias` as parameters under those names;
- CausalConv1d(in, out, kernel_size, dilation=1, bias=True) is a Conv1d whose output at time t sees
  the inputs at t, t−d, …, t−(k−1)·d only, with the output as long as the input;
- DropPath(p) drops the whole residual branch of a sample with probability p in training and scales
  the kept ones by 1/(1−p) (stochastic depth, Huang et al. 2016).
"""

from __future__ import annotations

import torch

from replearn.nn import (
    AdaptiveAvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    ConvTranspose1d,
    DropPath,
    GroupNorm,
    LayerNorm,
    MaxPool2d,
    RMSNorm,
)
from replearn.ops import dilated_causal_conv1d


class CausalConv1d(Conv1d):
    """Conv1d whose output at time t sees inputs t, t−d, …, t−(k−1)·d only, as long as the input:
    replearn's dilated_causal_conv1d op (left padding only, no copy of the input)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dilated_causal_conv1d(x, self.weight, self.bias, 1, self.dilation[0], self.groups)


__all__ = [
    "AdaptiveAvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "CausalConv1d",
    "Conv1d",
    "Conv2d",
    "ConvTranspose1d",
    "DropPath",
    "GroupNorm",
    "LayerNorm",
    "MaxPool2d",
    "RMSNorm",
]
