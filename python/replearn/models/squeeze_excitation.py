"""Squeeze-and-excitation (Hu et al. 2018, "Squeeze-and-Excitation Networks", CVPR).

A channel-attention block: squeeze each channel to one number by global average pooling (§3.1,
z_c = 1/(HW)·Σ u_c(i, j)), excite with a bottleneck of two fully connected layers
s = σ(W₂·δ(W₁·z)) with W₁ ∈ R^{C/r × C} and W₂ ∈ R^{C × C/r} (§3.2, eq. 3), then recalibrate:
x̃_c = s_c·u_c (eq. 4). SE-ResNet puts it on the residual branch before the addition (Fig. 3);
EfficientNet's MBConv uses it with swish as δ and C/r set from the block's input width.
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import AdaptiveAvgPool2d

__all__ = ["SqueezeExcitation"]


class SqueezeExcitation(nn.Module):
    """Args:
    channels: C, the channels recalibrated.
    reduced_channels: C/r, the width of the excitation bottleneck.
    activation: δ between the two FC layers (ReLU in SENet, swish in EfficientNet).
    """

    def __init__(self, channels: int, reduced_channels: int, activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.squeeze = AdaptiveAvgPool2d(1)
        self.reduce = nn.Linear(channels, reduced_channels)  # W₁ (and a bias, as the released models have)
        self.activation = activation()
        self.expand = nn.Linear(reduced_channels, channels)  # W₂

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.squeeze(x).flatten(1)  # (B, C)
        s = torch.sigmoid(self.expand(self.activation(self.reduce(z))))  # (B, C) in (0, 1)
        return x * s[:, :, None, None]
