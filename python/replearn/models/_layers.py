"""Every layer class the model zoo uses, from one place.

The zoo builds its models from replearn.nn layers only (issue #10): no torch.nn convolution,
normalization or pooling appears in a model file; they import their layers from here. While the
convolution, pooling and regularization issues are being written, the layers that do not exist in
replearn yet are mapped to torch.nn (each such line carries a `TODO(lead): replearn.nn` mark); the
lead switches them at integration, and no model file changes.

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
import torch.nn.functional as F

from replearn.nn import AdaptiveAvgPool2d, BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm, MaxPool2d, RMSNorm

Conv1d = torch.nn.Conv1d  # TODO(lead): replearn.nn.Conv1d
Conv2d = torch.nn.Conv2d  # TODO(lead): replearn.nn.Conv2d
ConvTranspose1d = torch.nn.ConvTranspose1d  # TODO(lead): replearn.nn.ConvTranspose1d


class CausalConv1d(Conv1d):  # TODO(lead): replearn.nn.Conv1d's causal option (keep this name as an alias)
    """Conv1d padded on the left by (k−1)·dilation only, so no output sees a later input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.left_padding = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_padding, 0)))


class DropPath(torch.nn.Module):  # TODO(lead): replearn.train.regularize.DropPath
    """Stochastic depth on a residual branch (Huang et al. 2016): zero a sample's branch with
    probability p in training, scale the survivors by 1/(1−p); the identity in evaluation."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


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
