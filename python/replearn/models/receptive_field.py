"""Receptive fields of convolution stacks (course notes §5.5 and §5.7).

For a chain of layers with kernels k_i, strides s_i and dilations d_i, the receptive field of one
output of layer i, counted in input samples, is

    r_i = r_{i−1} + (k̂_i − 1)·S_{i−1},   r_0 = 1,   S_{i−1} = s_1·…·s_{i−1},

where k̂_i = d_i·(k_i − 1) + 1 is the effective size of a dilated kernel (§5.7); with d = 1 this is
the course's r_i = r_{i−1} + (k_i − 1)·S_{i−1} and r_1 = k_1. Layers on parallel branches (a
residual's 1×1 skip, WaveNet's skip outputs) do not widen the field; list only the main path.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

__all__ = ["ConvSpec", "receptive_field"]


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One layer of the main path: a convolution or pooling of this kernel, stride and dilation."""

    kernel_size: int
    stride: int = 1
    dilation: int = 1

    def __post_init__(self) -> None:
        if min(self.kernel_size, self.stride, self.dilation) < 1:
            raise ValueError(f"ConvSpec: expected kernel_size, stride and dilation ≥ 1 but got {self}")

    @property
    def effective_kernel_size(self) -> int:
        return self.dilation * (self.kernel_size - 1) + 1


def receptive_field(layers: Iterable[ConvSpec]) -> int:
    """The receptive field, in input samples, of one output of the last of `layers`.

    Args:
        layers: the main path, input side first.

    Returns:
        r_n of the recursion above (1 for an empty stack).
    """
    field, jump = 1, 1  # r_0 and S_0
    for layer in layers:
        field += (layer.effective_kernel_size - 1) * jump
        jump *= layer.stride
    return field
