"""Weight initializations that torch.nn.init lacks a recurrent-specific use of.

`orthogonal_` is the course's remedy for vanishing gradients in recurrent nets (course notes §6.3.1:
UᵀU = UUᵀ = I keeps ‖U h‖ = ‖h‖, so back-propagated gradients neither shrink nor grow through the
linear part of a step; Saxe et al. 2014). `replearn.nn.RNN/LSTM/GRU(recurrent_init="orthogonal")`
applies it to each gate's H × H block of every recurrent weight.
"""

from __future__ import annotations

import torch

__all__ = ["orthogonal_"]


@torch.no_grad()
def orthogonal_(tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fills a 2-D (or flattened ≥2-D) tensor with a (semi-)orthogonal matrix, in place.

    The Q factor of the QR decomposition of a standard normal matrix, with the signs of R's diagonal
    folded in so that Q is uniformly (Haar) distributed (Mezzadri 2007). Rows are orthonormal when
    rows ≤ columns, columns otherwise.

    Args:
        tensor: the tensor to fill, at least 2-D (dims after the first are flattened).
        gain: scale applied to the orthogonal matrix.
        generator: optional random generator.

    Returns:
        `tensor`.
    """
    if tensor.dim() < 2:
        raise ValueError(f"orthogonal_: argument 'tensor' expected at least 2 dimensions but got {tensor.dim()}")
    rows = tensor.shape[0]
    cols = tensor.numel() // rows
    flat = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(flat)
    q = q * torch.sign(torch.diagonal(r)).masked_fill(torch.diagonal(r) == 0, 1.0)
    if rows < cols:
        q = q.T
    tensor.copy_((gain * q).reshape(tensor.shape).to(tensor.dtype))
    return tensor
