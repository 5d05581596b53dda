"""Invertible 1×1 convolution (Kingma & Dhariwal 2018, Glow §3.2).

A learned channel mixing y[:, :, p] = W x[:, :, p] at every pixel p, generalizing the fixed channel
permutations of RealNVP. In the LU form W = P·L·(U + diag(s)) (P a fixed permutation, L unit lower
triangular, U strictly upper triangular) the logdet S·Σ log|s| costs O(C) and the inverse is two
triangular solves; both run in the native op `replearn.ops.invconv1x1`.
"""

from __future__ import annotations

import torch
from torch import nn

from ...ops.flow import invconv1x1
from .base import Flow

__all__ = ["InvConv1x1"]


class InvConv1x1(Flow):
    """Glow's invertible 1×1 convolution over dim 1 of (B, C, *spatial) or (B, C) inputs.

    Initialized with a random rotation (QR of a Gaussian matrix), LU-decomposed once at
    construction (``torch.linalg.lu``). Parameters: ``lower`` and ``upper`` (C, C; only their strict
    triangles are used and get gradients) and ``log_s`` (C,); buffers ``perm`` (int64) and
    ``sign_s``, with s = sign_s·exp(log_s) so the sign of det W never changes during training.
    Forward and inverse are the native `replearn.ops.invconv1x1` (the paper's O(C³) plain-weight
    variant is not offered: its logdet and inverse would be torch's, not native).

    Args:
        num_channels: C.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels
        rotation = torch.linalg.qr(torch.randn(num_channels, num_channels, dtype=torch.float64))[0]
        p, lower, upper = torch.linalg.lu(rotation)  # rotation = p @ lower @ upper
        s = torch.diagonal(upper)
        # (P z)[i] = z[perm[i]]: row i of the permutation matrix has its one at column perm[i].
        self.register_buffer("perm", p.argmax(dim=1))
        self.register_buffer("sign_s", torch.sign(s).float())
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(s.abs()).float())

    def weight_matrix(self) -> torch.Tensor:
        """W as a dense (C, C) matrix (for inspection and tests)."""
        eye = torch.eye(self.num_channels, dtype=self.lower.dtype, device=self.lower.device)
        s = self.sign_s * torch.exp(self.log_s)
        return eye[self.perm] @ (torch.tril(self.lower, -1) + eye) @ (torch.triu(self.upper, 1) + torch.diag(s))

    def _transform(self, x: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sign_s.to(self.log_s.dtype) * torch.exp(self.log_s)
        return invconv1x1(x, self.perm, self.lower, self.upper, s, reverse)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(x, reverse=False)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(y, reverse=True)

    def extra_repr(self) -> str:
        return f"{self.num_channels}"
