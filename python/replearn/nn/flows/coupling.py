"""Affine and additive coupling layers (Dinh et al. 2015, NICE; Dinh et al. 2017, RealNVP).

A coupling layer leaves part of its input unchanged and transforms the rest elementwise with a
shift and scale computed from the unchanged part, so the Jacobian is triangular and the inverse is
as cheap as the forward: y₁ = x₁, y₂ = x₂·σ(s(x₁)) + t(x₁). The transform itself is the native op
`replearn.ops.affine_coupling`; the layer adds the conditioner and the bookkeeping of which part is
which, in one of two modes:

- mask mode (``mask`` given): RealNVP's checkerboard or channel masks. The conditioner sees m·x and
  returns (shift, log_scale) for the whole tensor; the op transforms where m = 0.
- split mode (``mask=None``): x is split in two halves along ``split_dim``; the conditioner sees
  x₁ (the first ⌈C/2⌉ entries) and returns (shift, log_scale) for x₂, which the op transforms.
"""

from __future__ import annotations

import torch
from torch import nn

from ...ops.flow import affine_coupling
from .base import Flow

__all__ = ["AffineCoupling", "AdditiveCoupling"]


class AffineCoupling(Flow):
    """RealNVP's affine coupling layer (NICE's additive coupling with ``additive=True``).

    Args:
        conditioner: a module mapping the conditioning input (m·x in mask mode, x₁ in split mode) to
            ``torch.cat([shift, log_scale], dim=1)``: twice the channels of the transformed part,
            shift first. With ``additive=True`` it returns the shift alone.
        mask: None for split mode, or a 0/1 tensor broadcastable to the input with batch dim 1 or
            absent (`replearn.ops.checkerboard_mask`, `replearn.ops.channel_mask`); 1 = passed through.
        scale: "exp" (RealNVP), "tanh" (bounded log-scale) or "sigmoid" (Glow's released code).
        additive: NICE's additive coupling (no scale, logdet 0).
        split_dim: the dim split in halves in split mode.
    """

    def __init__(self, conditioner: nn.Module, mask: torch.Tensor | None = None, scale: str = "exp",
                 additive: bool = False, split_dim: int = 1):  # fmt: skip
        super().__init__()
        if scale not in ("exp", "tanh", "sigmoid"):
            raise ValueError(f"AffineCoupling: scale expected 'exp', 'tanh' or 'sigmoid' but got {scale!r}")
        self.conditioner = conditioner
        self.scale = scale
        self.additive = additive
        self.split_dim = split_dim
        self.register_buffer("mask", None if mask is None else mask.detach().to(torch.bool).clone())

    def _parameters_for(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.conditioner(condition)
        if self.additive:
            return out, None
        shift, log_scale = out.chunk(2, dim=1)
        return shift, log_scale

    def _transform(self, x: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask is not None:
            shift, log_scale = self._parameters_for(x * self.mask.to(x.dtype))
            return affine_coupling(x, shift, log_scale, self.mask, reverse, self.scale)
        size = x.shape[self.split_dim]
        x1, x2 = x.split([(size + 1) // 2, size // 2], dim=self.split_dim)
        shift, log_scale = self._parameters_for(x1)
        y2, logdet = affine_coupling(x2, shift, log_scale, None, reverse, self.scale)
        return torch.cat([x1, y2], dim=self.split_dim), logdet

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(x, reverse=False)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(y, reverse=True)


class AdditiveCoupling(AffineCoupling):
    """NICE's additive coupling (Dinh et al. 2015): y₂ = x₂ + t(x₁), volume preserving (logdet 0)."""

    def __init__(self, conditioner: nn.Module, mask: torch.Tensor | None = None, split_dim: int = 1):
        super().__init__(conditioner, mask, additive=True, split_dim=split_dim)
