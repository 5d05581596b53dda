"""Stochastic depth: DropPath drops whole residual branches per sample (Huang et al. 2016).

A layer (the model zoo's ConvNeXt and EfficientNet blocks wrap their residual branch in it), also
re-exported by `replearn.train.regularize` beside the other regularizers.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath", "drop_path"]


def drop_path(x: torch.Tensor, p: float, training: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zeroes whole samples of a residual branch with probability p and scales the rest by 1/(1−p).

    Stochastic depth (Huang et al. 2016): applied to a residual branch f in x + f(x), each sample
    skips the block with probability p during training; the 1/(1−p) scaling keeps the branch's
    expected value, so at test time the block is used as is.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop_path: 'p' expected a value in [0, 1) but got {p}")
    if not training or p == 0.0:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


class DropPath(nn.Module):
    """`drop_path` as a layer, to wrap the residual branch of a block."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: 'p' expected a value in [0, 1) but got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
