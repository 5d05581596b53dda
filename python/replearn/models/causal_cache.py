"""Fast autoregressive decoding of stacks of causal dilated convolutions (Paine, Khorrami, Chang,
Zhang, Ramachandran, Hasegawa-Johnson & Huang 2016, "Fast Wavenet Generation Algorithm",
arXiv:1611.09482).

A causal convolution of width k and dilation d computes its output at time t from the inputs at
t − (k−1)·d, …, t − d, t. Generating one symbol at a time, a full recompute of the stack costs
O(T) per symbol (O(T²) per sequence); but every input it needs except the newest one was already
computed at an earlier step. Fast WaveNet keeps, per layer, a queue of the last (k−1)·d inputs of
that layer's convolution: a new symbol then costs one k-tap product per layer, O(layers) per symbol
whatever the length so far. WaveNet's `generate` and ByteNet's decoder use these two pieces:

    queue = TapQueue(batch, channels, kernel_size, dilation, like=conv.weight)
    y_t = causal_conv_step(conv, queue.taps(x_t))   # (B, C_out, 1), equal to conv(x)[:, :, t:t+1]
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TapQueue", "causal_conv_step"]


def causal_conv_step(conv: nn.Module, taps: torch.Tensor) -> torch.Tensor:
    """The output at the newest time step of a causal convolution, from its k input taps.

    Args:
        conv: a Conv1d-like module with torch's weight layout, `weight` (C_out, C_in, k) and `bias`
            (C_out,) or None (groups = 1).
        taps: (B, C_in, k) the inputs at t − (k−1)·d, …, t − d, t (oldest first), exactly what the
            kernel of width k and dilation d reads for output t.

    Returns:
        (B, C_out, 1): the same weights as `conv`, applied to the k cached inputs.
    """
    out = torch.einsum("bck,ock->bo", taps, conv.weight)
    if conv.bias is not None:
        out = out + conv.bias
    return out[:, :, None]


class TapQueue:
    """The last (k−1)·d inputs of a dilated causal layer, in a ring buffer.

    Before the first input the buffer holds zeros, which is what the full forward's left padding
    reads, so the cached outputs equal the full ones from the first step on.

    Args:
        batch: B, sequences decoded together.
        channels: C, the layer's input channels.
        kernel_size: k.
        dilation: d.
        like: a tensor whose dtype and device the buffer takes (the layer's weight).
    """

    def __init__(self, batch: int, channels: int, kernel_size: int, dilation: int, like: torch.Tensor):
        self.dilation, self.kernel_size = dilation, kernel_size
        self.buffer = like.new_zeros(batch, channels, (kernel_size - 1) * dilation)  # (B, C, (k−1)·d)
        self.position = 0  # where the oldest stored input lives

    def taps(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: (B, C, 1) the newest input.
        Returns:
            (B, C, k) the taps of the newest output (oldest first); x is stored for later steps.
        """
        size = self.buffer.shape[-1]
        if size == 0:
            return x
        # Stored inputs are at times t−size … t−1 from `position` on; tap j reads time t − (k−1−j)·d.
        index = [(self.position + j * self.dilation) % size for j in range(self.kernel_size - 1)]
        taps = torch.cat([self.buffer[:, :, index], x], dim=-1)
        self.buffer[:, :, self.position] = x[:, :, 0]
        self.position = (self.position + 1) % size
        return taps
