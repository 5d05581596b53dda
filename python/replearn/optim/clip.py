"""Gradient clipping, as torch.nn.utils.clip_grad_norm_ and clip_grad_value_.

clip_grad_norm_ computes the norm of all gradients together, ‖(g₁, …, gₙ)‖_p, in one native pass
per (device, dtype) bucket, then scales every gradient by c = min(1, max_norm/(‖g‖ + 1e-6)) in a
second pass that is skipped when c = 1 (on CUDA the coefficient is read on the device, so there is
no host synchronization unless error_if_nonfinite asks for one, as in torch).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

from .. import _native
from ._native_step import row_major_lists

__all__ = ["clip_grad_norm_", "clip_grad_value_"]

_Params = torch.Tensor | Iterable[torch.Tensor]


def _grads_by_bucket(parameters: _Params, name: str) -> list[list[torch.Tensor]]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in parameters:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            raise RuntimeError(f"replearn.optim.{name} does not support sparse gradients")
        if g.is_complex():
            raise TypeError(f"replearn.optim.{name} does not support complex gradients ({g.dtype})")
        buckets.setdefault((g.device, g.dtype), []).append(g)
    return list(buckets.values())


def _launch_in_place(name: str, grads: list[torch.Tensor], *rest) -> None:
    """Kernel `name` updating `grads` in place, whatever their layouts (`row_major_lists`)."""
    lists, write_back = row_major_lists([grads])
    _native.launch(name, grads[0], lists[0], *rest)
    for destination, copy in write_back:
        destination.copy_(copy)


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def clip_grad_norm_(parameters: _Params, max_norm: float, norm_type: float | str = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> torch.Tensor:
    """Scales the gradients of `parameters` so that their joint p-norm is at most `max_norm`.

    Args:
        parameters: a tensor or an iterable of tensors whose `.grad` is clipped (None grads are skipped).
        max_norm: the largest norm allowed.
        norm_type: p > 0, or 'inf' / float('inf') for the largest absolute value.
        error_if_nonfinite: raise (leaving the gradients untouched) when the norm is NaN or infinite.
        foreach: accepted for torch's signature and ignored (the native path is always fused).

    Returns:
        The total norm of the gradients before clipping, a 0-dim tensor on the first gradient's
        device, in the gradients' (promoted) dtype; float32 when there are no gradients.
    """
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    if not (norm_type > 0):
        raise ValueError(f"replearn.optim.clip_grad_norm_: norm_type must be positive or inf, got {norm_type}")
    buckets = _grads_by_bucket(parameters, "clip_grad_norm_")
    if not buckets:
        return torch.tensor(0.0)
    norms = []
    for grads in buckets:
        norm = torch.empty((), dtype=_stats_dtype(grads[0].dtype), device=grads[0].device)
        views = row_major_lists([grads], read_only=(0,))[0][0]  # only read
        workspace = _native.workspace("grad_norm", grads[0], views)
        _native.launch("grad_norm", grads[0], views, norm_type, norm, workspace)
        norms.append(norm)
    first = buckets[0][0]
    if len(norms) == 1:
        total_norm = norms[0]
    else:  # combine the buckets' norms (a few scalars) as torch does
        total_norm = torch.linalg.vector_norm(torch.stack([n.to(first.device, torch.float64) for n in norms]),
                                              norm_type)
    if error_if_nonfinite and (total_norm.isnan() or total_norm.isinf()):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
            "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`")
    for grads, norm in zip(buckets, norms):
        if len(norms) > 1:
            norm = total_norm.to(norm.device, norm.dtype)
        _launch_in_place("clip_grads_by_norm", grads, norm, max_norm)
    return total_norm.to(functools.reduce(torch.promote_types, [grads[0].dtype for grads in buckets]))


def clip_grad_value_(parameters: _Params, clip_value: float, foreach: bool | None = None) -> None:
    """Clamps every gradient of `parameters` into [−clip_value, clip_value] in place (NaN stays NaN).

    Args:
        parameters: a tensor or an iterable of tensors whose `.grad` is clipped (None grads are skipped).
        clip_value: the largest absolute value allowed.
        foreach: accepted for torch's signature and ignored.
    """
    clip_value = float(clip_value)
    for grads in _grads_by_bucket(parameters, "clip_grad_value_"):
        _launch_in_place("clip_grads_by_value", grads, clip_value)
