"""A multi-layer perceptron with a normalization layer after every hidden linear layer.

    x (N, in) → [Linear → Norm → ReLU] × len(hidden_sizes) → Linear → logits (N, out)

Normalizing each hidden layer's pre-activations keeps their scale steady while the weights move,
which is what lets such a network train quickly at a large learning rate (Ioffe & Szegedy 2015 for
batch norm; Ba et al. 2016 for layer norm).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .create_norm import create_norm

__all__ = ["MLP"]

# Norms that subtract a mean make the bias of the linear layer before them redundant.
_CENTERING_NORMS = ("batch", "layer", "group")


class MLP(nn.Module):
    """Linear → Norm → ReLU blocks, then a linear head.

    Args:
        in_features: size of each input vector.
        hidden_sizes: width of each hidden layer.
        out_features: size of each output vector (the number of classes of a classifier).
        norm: the normalization after each hidden linear layer, a kind of `create_norm`.
        dropout: dropout probability after each ReLU (0 for none).
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        out_features: int,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            blocks += [nn.Linear(width, hidden, bias=norm not in _CENTERING_NORMS), create_norm(norm, hidden), nn.ReLU()]
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            width = hidden
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_features) → (N, out_features)."""
        return self.head(self.features(x))
