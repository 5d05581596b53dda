"""Activation normalization (Kingma & Dhariwal 2018, Glow §3.1).

A per-channel affine map y = scale·x + bias whose parameters are initialized from the first batch
so that the output has zero mean and unit variance per channel (data-dependent initialization), and
then trained freely. The map and its logdet S·Σ log|scale| run in the native op `replearn.ops.actnorm`.
"""

from __future__ import annotations

import torch
from torch import nn

from ...ops.flow import actnorm
from .base import Flow

__all__ = ["ActNorm"]


class ActNorm(Flow):
    """Glow's ActNorm over dim 1 of (B, C, *spatial) or (B, C) inputs.

    The first forward call in training mode sets ``bias = −mean/std`` and ``scale = 1/std`` per
    channel from that batch (std over the batch and spatial dims, plus ``eps``) and marks the
    ``initialized`` buffer, which is saved in the state_dict so a loaded model is not re-initialized.

    Args:
        num_features: C.
        eps: added to the per-channel standard deviation at initialization.
    """

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent initialization from the batch x."""
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False)
        self.scale.copy_(1.0 / (std + self.eps))
        self.bias.copy_(-mean * self.scale)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        return actnorm(x, self.scale, self.bias)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return actnorm(y, self.scale, self.bias, reverse=True)

    def extra_repr(self) -> str:
        return f"{self.num_features}"
