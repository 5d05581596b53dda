"""The contract every normalizing flow in replearn follows.

A flow is an invertible map f with a tractable Jacobian determinant (course notes §10; Rezende &
Mohamed 2015; Dinh et al. 2017). Every flow layer is a `Flow`:

- ``forward(x) -> (y, logdet)``: ``y = f(x)`` and ``logdet = log|det ∂f/∂x|`` per sample, a tensor
  of shape ``(batch,)`` in ``x``'s dtype;
- ``inverse(y) -> (x, logdet)``: ``x = f⁻¹(y)`` and ``logdet = log|det ∂f⁻¹/∂y|`` per sample, which
  is minus the forward logdet at the same point.

Batch is always dim 0. Composing flows sums their logdets, and the change of variables
``log p_X(x) = log p_Z(f(x)) + log|det ∂f/∂x|`` turns any composition into a density model.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Flow"]


class Flow(nn.Module):
    """Base class of invertible layers: subclasses implement `forward` and `inverse`."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement inverse")
