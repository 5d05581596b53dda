"""Helpers of the registry-driven op tests: cloning samples, the parity rule, recording op calls."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

EPS = {
    torch.float64: torch.finfo(torch.float64).eps,
    torch.float32: torch.finfo(torch.float32).eps,
    torch.float16: torch.finfo(torch.float16).eps,
    torch.bfloat16: torch.finfo(torch.bfloat16).eps,
}


def map_tensors(fn, value):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    return value


def clone_args(args, kwargs, dtype=None):
    def clone(t):
        t = t.detach().clone()
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    return map_tensors(clone, args), map_tensors(clone, kwargs)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in memory where every row has a gap: strides no kernel can take as they are."""
    if t.dim() == 0 or t.numel() == 0:
        return t
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous() or t.shape[-1] == 1
    return view


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def max_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return (value.double() - reference.double()).abs().max().item() if value.numel() else 0.0


def parity_bound(torch_error: float, reference: torch.Tensor, dtype: torch.dtype) -> float:
    """ARCHITECTURE.md: at most twice PyTorch's own error at this dtype, plus a small absolute floor.

    The floor is 8 ulps of the dtype at the reference's scale (at least 1), so that a case where
    PyTorch happens to be exact does not demand exactness of a differently ordered sum.
    """
    scale = max(1.0, reference.double().abs().max().item()) if reference.numel() else 1.0
    return 2.0 * torch_error + 8.0 * EPS[dtype] * scale


class RecordReplearnOps(TorchDispatchMode):
    """Records every torch.ops.replearn call (op, args, kwargs) made while active."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "replearn":
            self.calls.append((func, *clone_args(args, kwargs)))
        return func(*args, **kwargs)
