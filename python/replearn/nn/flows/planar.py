"""Planar flow (Rezende & Mohamed 2015, §4.1): f(z) = z + û·tanh(wᵀz + b).

A single-unit residual layer whose Jacobian I + û·ψ(z)ᵀ has the determinant 1 + ûᵀψ(z) (matrix
determinant lemma). The paper's appendix A reparameterizes u into û with wᵀû ≥ −1, which makes f
invertible; the native op `replearn.ops.planar_flow` does that reparameterization, the logdet and
the inverse (a scalar monotone equation solved by safeguarded Newton).
"""

from __future__ import annotations

import torch
from torch import nn

from ...ops.flow import planar_flow
from .base import Flow

__all__ = ["PlanarFlow"]


class PlanarFlow(Flow):
    """A planar flow on (B, D) inputs with parameters u, w (D,) and b (1,).

    Args:
        dim: D.
        init_std: standard deviation of the Gaussian initialization of u and w (b starts at 0).
    """

    def __init__(self, dim: int, init_std: float = 0.1):
        super().__init__()
        self.dim = dim
        self.u = nn.Parameter(torch.randn(dim) * init_std)
        self.w = nn.Parameter(torch.randn(dim) * init_std)
        self.b = nn.Parameter(torch.zeros(1))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return planar_flow(z, self.u, self.w, self.b)

    def inverse(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return planar_flow(f, self.u, self.w, self.b, reverse=True)

    def extra_repr(self) -> str:
        return f"{self.dim}"
