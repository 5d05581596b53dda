"""Normalization ops: layer, RMS, batch, group and instance normalization, and weight normalization.

Every op here is a torch library op (`torch.ops.replearn.<name>`) whose forward and backward both run
native kernels (csrc/norm), with a fake implementation for torch.compile and a plain-PyTorch
`reference` written from the formulas of the course notes (§3.2) that the tests treat as ground truth:

    x̂ = (x − μ) / √(σ² + ε),   y = γ·x̂ + β

where μ, σ² are taken over the last dims (layer norm; Ba et al. 2016), per channel over the batch
and spatial dims (batch norm; Ioffe & Szegedy 2015), per sample and channel (instance norm; Ulyanov
et al. 2016) or per sample and group of channels (group norm; Wu & He 2018). RMS norm divides by
√(mean(x²) + ε) without centering (Zhang & Sennrich 2019). Weight normalization reparameterizes a
weight as w = g·v/‖v‖ (Salimans & Kingma 2016).

The public functions mirror `torch.nn.functional`'s signatures and return what they return. The
torch ops return the saved statistics as extra outputs, which backward reuses; ops that update
running averages are functional (they return the new averages, which the public function copies
into the caller's buffers), because torch only accepts autograd formulas for functional ops.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from .. import _native
from ._registry import BadInput, OpInfo, Sample, check_tensor, define, register_info

__all__ = ["layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm", "weight_norm", "spectral_norm"]


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    # Statistics are float64 for float64 inputs and float32 otherwise (csrc/core/check.h).
    return torch.float64 if x.dtype == torch.float64 else torch.float32


_FLOAT32, _FLOAT64 = torch.float32, torch.float64


def _new_stats(x: torch.Tensor, *sizes: int) -> torch.Tensor:
    """An uninitialized statistics tensor of `sizes` in x's statistics dtype, on x's device."""
    # Sizes passed as separate ints, without a dtype argument where x's is the statistics dtype:
    # ~0.4 µs cheaper per call than a shape tuple plus a dtype (the per-call overhead row).
    dtype = x.dtype
    if sizes and (dtype is _FLOAT32 or dtype is _FLOAT64):
        return x.new_empty(*sizes)
    return x.new_empty(sizes, dtype=_stats_dtype(x))


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _normalized_ndim(fn: str, x: torch.Tensor, normalized_shape: Sequence[int]) -> int:
    return _normalized_rows(fn, x, normalized_shape)[0]


def _normalized_rows(fn: str, x: torch.Tensor, normalized_shape: Sequence[int]) -> tuple[int, int]:
    """(k, rows): the number of normalized trailing dims, and of rows, the product of the others."""
    k = len(normalized_shape)
    shape = x.shape  # read once: each read builds a torch.Size (~1k instructions)
    ndim = len(shape)
    if k == 1:  # the common case, on the per-call overhead path: one size to compare
        if ndim >= 1 and shape[-1] == normalized_shape[0]:
            return 1, shape[0] if ndim == 2 else math.prod(shape[: ndim - 1])
    elif 0 < k <= ndim and tuple(shape[ndim - k :]) == tuple(normalized_shape):
        return k, math.prod(shape[: ndim - k])
    raise ValueError(
        f"{fn}: argument 'normalized_shape' expected the trailing dimensions of x "
        f"(shape {tuple(shape)}) but got {list(normalized_shape)}"
    )


def _check_devices(fn: str, x: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Fake implementations run where no kernel validates devices (torch.compile, meta): check here."""
    for arg, t in others.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{fn}: argument '{arg}' expected a tensor on {x.device} like 'x' but got one on {t.device}")


def _check_momentum(fn: str, momentum) -> None:
    """TypeError unless momentum is a number, as torch.nn.functional (None is the modules' cumulative
    average, which they turn into a number per step themselves)."""
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"{fn}: argument 'momentum' expected a float but got {type(momentum).__name__}")


def _as_shape(normalized_shape: int | Sequence[int]) -> list[int]:
    return [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)


def _empty_or_none(need: bool, like: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor | None:
    """An uninitialized contiguous tensor like `like` (of `shape` when given) if needed, else None."""
    if not need:
        return None
    if shape is None:  # empty_like: ~20 µs less than new_empty(like.shape) with cold caches (ops/flow.py)
        return torch.empty_like(like, memory_format=torch.contiguous_format)
    return like.new_empty(shape)


def _channel_grads(x: torch.Tensor, mask: Sequence[bool]) -> tuple[torch.Tensor | None, ...]:
    """Uninitialized (dx, dweight, dbias) of a per-channel norm (batch, group), None where mask says so."""
    channels = (x.shape[1],)
    return _empty_or_none(mask[0], x), _empty_or_none(mask[1], x, channels), _empty_or_none(mask[2], x, channels)


def _randn(shape, dtype, device, generator, scale=1.0, offset=0.0) -> torch.Tensor:
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset).to(dtype).to(device)


# ==================================================================================== layer_norm


# What a row norm's forward allocates for the statistics backward reads: nothing (inference), one
# flat (count, rows) tensor (the eager autograd.Function: ~5k instructions cheaper than reading the
# leading shape), or (count, *leading shape) (the dispatcher: what the fake implementation says).
_NO_STATS, _FLAT_STATS, _SHAPED_STATS = 0, 1, 2


def _row_stats(x: torch.Tensor, k: int, rows: int, count: int | None, stats: int) -> torch.Tensor | None:
    """Uninitialized statistics for a row norm: (count, ...) — 2 for mean and rstd — or, with count
    None, rstd alone shaped like the rows."""
    if stats == _NO_STATS:
        return None
    leading = (rows,) if stats == _FLAT_STATS else tuple(x.shape[: x.dim() - k])
    return _new_stats(x, *leading) if count is None else _new_stats(x, count, *leading)


def _layer_norm_run(x, normalized_shape, weight, bias, eps, stats=_NO_STATS):
    """The forward; with the default `stats`, the inference path itself (a default costs nothing per
    call, a wrapper function ~0.6k instructions)."""
    k, rows = _normalized_rows("layer_norm", x, normalized_shape)
    x = x.contiguous()
    y = torch.empty_like(x)
    saved = _row_stats(x, k, rows, 2, stats)  # mean, rstd
    _native.launch("layer_norm_forward", x, x, k, _contiguous(weight), _contiguous(bias), eps, y, saved)
    return y, saved


def _layer_norm_impl(x, normalized_shape, weight, bias, eps):
    return _layer_norm_run(x, normalized_shape, weight, bias, eps, _SHAPED_STATS)


def _layer_norm_eager(x, normalized_shape, weight, bias, eps):
    return _layer_norm_run(x, normalized_shape, weight, bias, eps, _FLAT_STATS)


def _layer_norm_fake(x, normalized_shape, weight, bias, eps):
    _check_devices("layer_norm", x, weight=weight, bias=bias)
    k = _normalized_ndim("layer_norm", x, normalized_shape)
    return x.new_empty(x.shape), x.new_empty((2, *x.shape[: x.dim() - k]), dtype=_stats_dtype(x))


def _row_norm_backward_impl(kernel, grad_y, x, k, stats, weight, mask):
    """layer_norm_backward (stats: mean and rstd) and rms_norm_backward (stats: rstd): dx (x's shape),
    dweight/dbias (normalized shape)."""
    x = x.contiguous()
    grad_y = grad_y.contiguous()
    param_shape = x.shape[x.dim() - k :]
    grads = [_empty_or_none(mask[0], x)] + [_empty_or_none(m, x, param_shape) for m in mask[1:]]
    ws = _native.workspace(kernel, x, x, k) if any(mask[1:]) else None
    _native.launch(kernel, x, grad_y, x, k, stats, _contiguous(weight), *grads, ws)
    return tuple(grads)


def _row_norm_backward_fake(x, k, mask):
    param_shape = x.shape[x.dim() - k :]
    return (_empty_or_none(mask[0], x),) + tuple(_empty_or_none(m, x, param_shape) for m in mask[1:])


_layer_norm_backward = define(
    "layer_norm_backward(Tensor grad_y, Tensor x, int normalized_ndim, Tensor stats, Tensor? weight, "
    "bool[3] output_mask) -> (Tensor?, Tensor?, Tensor?)",
    lambda grad_y, x, k, stats, weight, mask: _row_norm_backward_impl(
        "layer_norm_backward", grad_y, x, k, stats, weight, mask
    ),
    lambda grad_y, x, k, stats, weight, mask: _row_norm_backward_fake(x, k, mask),
)


def _layer_norm_setup(ctx, inputs, output):
    x, normalized_shape, weight, _bias, _eps = inputs
    ctx.normalized_ndim = len(normalized_shape)
    ctx.save_for_backward(x, weight, output[1])


def _layer_norm_grad(ctx, grad_y, *_stats_grad):
    x, weight, stats = ctx.saved_tensors
    need = ctx.needs_input_grad  # (x, normalized_shape, weight, bias, eps)
    dx, dw, db = _layer_norm_backward(grad_y, x, ctx.normalized_ndim, stats, weight, [need[0], need[2], need[3]])
    return dx, None, dw, db, None


_layer_norm = define(
    "layer_norm(Tensor x, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor)",
    _layer_norm_impl,
    _layer_norm_fake,
    backward=_layer_norm_grad,
    setup_context=_layer_norm_setup,
    inference=_layer_norm_run,
    eager=_layer_norm_eager,
    differentiable_outputs=1,  # the rest: statistics saved for backward
)


def layer_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalization over the trailing `normalized_shape` dims (Ba et al. 2016).

    y = (x − μ) / √(σ² + ε) · weight + bias, with μ and the biased σ² over the normalized dims.
    Same signature and result as `torch.nn.functional.layer_norm`.

    Args:
        x: input of shape (*, *normalized_shape); float32/float64 on CPU, float32/16/bfloat16 on CUDA.
        normalized_shape: the trailing shape to normalize over (an int for the last dim).
        weight: optional scale γ of shape normalized_shape.
        bias: optional shift β of shape normalized_shape.
        eps: added to the variance.

    Returns:
        The normalized tensor, shaped like x.
    """
    return _layer_norm(x, _as_shape(normalized_shape), weight, bias, eps)[0]


def _mean(x, dims, keepdim=False):
    """The mean with one correction step, m + mean(x − m) (the corrected two-pass algorithm of Chan,
    Golub & LeVeque 1983): for the float64 references. A plain x.mean() of values near 300 can be an
    ulp off, which is all the parity floor allows; the kernels' means are correctly rounded there."""
    m = x.mean(dims, keepdim=True)
    m = m + (x - m).mean(dims, keepdim=True)
    return m if keepdim else m.squeeze(dims)


def layer_norm_reference(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalization written from the formula, in plain PyTorch."""
    dims = tuple(range(x.dim() - len(_as_shape(normalized_shape)), x.dim()))
    mean = _mean(x, dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


# Shapes for the row norms: (x shape, number of normalized trailing dims); odd sizes, a batch of one,
# a single feature, a long row, and more than one normalized dim.
_ROW_SHAPES = [((1, 1), 1), ((1, 5), 1), ((7, 33), 1), ((3, 4, 17), 1), ((2, 3, 5, 7), 2), ((5, 1031), 1), ((6,), 1)]


def _row_samples(device, dtype, gen, with_bias: bool) -> Iterable[Sample]:
    for shape, k in _ROW_SHAPES:
        norm_shape = list(shape[len(shape) - k :])
        x = _randn(shape, dtype, device, gen, scale=2.0, offset=0.5)
        w = _randn(norm_shape, dtype, device, gen, offset=1.0)
        b = _randn(norm_shape, dtype, device, gen)
        yield Sample((x, norm_shape, w, b) if with_bias else (x, norm_shape, w), name="affine")
        yield Sample((x, norm_shape), name="plain")
    # Large offset relative to the spread: catches statistics computed with cancellation.
    x = _randn((4, 64), dtype, device, gen, scale=1.0, offset=300.0)
    yield Sample((x, [64]), {"eps": 1e-3}, name="offset")


def _row_gradcheck_samples(device, gen, with_bias: bool) -> Iterable[Sample]:
    for shape, k in [((3, 5), 1), ((2, 3, 4), 2), ((1, 1), 1)]:
        norm_shape = list(shape[len(shape) - k :])
        x = _randn(shape, torch.float64, device, gen)
        w = _randn(norm_shape, torch.float64, device, gen, offset=1.0)
        b = _randn(norm_shape, torch.float64, device, gen)
        yield Sample((x, norm_shape, w, b) if with_bias else (x, norm_shape, w))
        yield Sample((x, norm_shape))


def _row_bad_inputs(fn, device, with_bias: bool) -> Iterable[BadInput]:
    x = torch.randn(4, 8, device=device)
    w = torch.ones(8, device=device)
    extra = (torch.zeros(8, device=device),) if with_bias else ()
    yield BadInput((x.long(), [8]), {}, TypeError, "'x'", "integer x")
    yield BadInput(([[1.0] * 8] * 4, [8]), {}, TypeError, "'x'", "x not a tensor")
    yield BadInput((x, [7]), {}, ValueError, "'normalized_shape'", "normalized_shape not trailing")
    yield BadInput((x, [8], torch.ones(7, device=device)) + extra, {}, ValueError, "'weight'", "weight shape")
    yield BadInput((x, [8], w.double()) + extra, {}, TypeError, "'weight'", "weight dtype")
    yield BadInput((x, [8], torch.ones(8, device="meta")) + extra, {}, ValueError, "'weight'", "weight device")
    yield BadInput((x, [8], w) + extra, {"eps": -1.0}, ValueError, "'eps'", "negative eps")
    if with_bias:
        yield BadInput((x, [8], w, torch.zeros(2, 4, device=device)), {}, ValueError, "'bias'", "bias shape")


register_info(
    OpInfo(
        name="layer_norm",
        public=layer_norm,
        reference=layer_norm_reference,
        torch_counterpart=torch.nn.functional.layer_norm,
        samples=lambda device, dtype, gen: _row_samples(device, dtype, gen, with_bias=True),
        bad_inputs=lambda device: _row_bad_inputs("layer_norm", device, with_bias=True),
        differentiable_args=(0, 2, 3),
        gradcheck_samples=lambda device, gen: _row_gradcheck_samples(device, gen, with_bias=True),
        backward_ops=("layer_norm_backward",),
    )
)


# ====================================================================================== rms_norm


def _rms_eps(x: torch.Tensor, eps: float | None) -> float:
    # torch.nn.functional.rms_norm's convention: eps=None means the dtype's machine epsilon.
    if eps is not None:
        return eps
    # A non-floating x gets no epsilon here: the kernel's validation rejects it, naming 'x'.
    return _default_rms_eps(x.dtype) if x.is_floating_point() else 0.0


def _default_rms_eps(dtype: torch.dtype) -> float:
    # torch.nn.functional.rms_norm computes float16/bfloat16 in float32 and takes float32's epsilon.
    return torch.finfo(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype).eps


def _rms_norm_run(x, normalized_shape, weight, eps, stats=_NO_STATS):
    """The forward; with the default `stats`, the inference path itself (see _layer_norm_run)."""
    k, rows = _normalized_rows("rms_norm", x, normalized_shape)
    x = x.contiguous()
    y = torch.empty_like(x)
    rstd = _row_stats(x, k, rows, None, stats)
    _native.launch("rms_norm_forward", x, x, k, _contiguous(weight), _rms_eps(x, eps), y, rstd)
    return y, rstd


def _rms_norm_impl(x, normalized_shape, weight, eps):
    return _rms_norm_run(x, normalized_shape, weight, eps, _SHAPED_STATS)


def _rms_norm_eager(x, normalized_shape, weight, eps):
    return _rms_norm_run(x, normalized_shape, weight, eps, _FLAT_STATS)


def _rms_norm_fake(x, normalized_shape, weight, eps):
    _check_devices("rms_norm", x, weight=weight)
    k = _normalized_ndim("rms_norm", x, normalized_shape)
    return x.new_empty(x.shape), x.new_empty(x.shape[: x.dim() - k], dtype=_stats_dtype(x))


_rms_norm_backward = define(
    "rms_norm_backward(Tensor grad_y, Tensor x, int normalized_ndim, Tensor rstd, Tensor? weight, "
    "bool[2] output_mask) -> (Tensor?, Tensor?)",
    lambda grad_y, x, k, rstd, weight, mask: _row_norm_backward_impl(
        "rms_norm_backward", grad_y, x, k, rstd, weight, mask
    ),
    lambda grad_y, x, k, rstd, weight, mask: _row_norm_backward_fake(x, k, mask),
)


def _rms_norm_setup(ctx, inputs, output):
    x, normalized_shape, weight, _eps = inputs
    ctx.normalized_ndim = len(normalized_shape)
    ctx.save_for_backward(x, weight, output[1])


def _rms_norm_grad(ctx, grad_y, *_rstd_grad):
    x, weight, rstd = ctx.saved_tensors
    need = ctx.needs_input_grad  # (x, normalized_shape, weight, eps)
    dx, dw = _rms_norm_backward(grad_y, x, ctx.normalized_ndim, rstd, weight, [need[0], need[2]])
    return dx, None, dw, None


_rms_norm = define(
    "rms_norm(Tensor x, SymInt[] normalized_shape, Tensor? weight, float? eps) -> (Tensor, Tensor)",
    _rms_norm_impl,
    _rms_norm_fake,
    backward=_rms_norm_grad,
    setup_context=_rms_norm_setup,
    inference=_rms_norm_run,
    eager=_rms_norm_eager,
    differentiable_outputs=1,  # the rest: statistics saved for backward
)


def rms_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """RMS normalization over the trailing `normalized_shape` dims (Zhang & Sennrich 2019).

    y = x / √(mean(x²) + ε) · weight: no centering. Same signature and result as
    `torch.nn.functional.rms_norm`; eps=None uses `torch.finfo(x.dtype).eps`.

    Args:
        x: input of shape (*, *normalized_shape).
        normalized_shape: the trailing shape to normalize over.
        weight: optional scale of shape normalized_shape.
        eps: added to the mean square; None for the dtype's machine epsilon.

    Returns:
        The normalized tensor, shaped like x.
    """
    return _rms_norm(x, _as_shape(normalized_shape), weight, eps)[0]


def rms_norm_reference(x, normalized_shape, weight=None, eps=None):
    """RMS normalization written from the formula, in plain PyTorch."""
    dims = tuple(range(x.dim() - len(_as_shape(normalized_shape)), x.dim()))
    eps = _default_rms_eps(x.dtype) if eps is None else eps
    y = x / torch.sqrt((x * x).mean(dims, keepdim=True) + eps)
    return y if weight is None else y * weight


register_info(
    OpInfo(
        name="rms_norm",
        public=rms_norm,
        reference=rms_norm_reference,
        torch_counterpart=torch.nn.functional.rms_norm,
        samples=lambda device, dtype, gen: _row_samples(device, dtype, gen, with_bias=False),
        bad_inputs=lambda device: _row_bad_inputs("rms_norm", device, with_bias=False),
        differentiable_args=(0, 2),
        gradcheck_samples=lambda device, gen: _row_gradcheck_samples(device, gen, with_bias=False),
        backward_ops=("rms_norm_backward",),
    )
)


# ==================================================================================== batch_norm


def _batch_norm_launch(x, weight, bias, running_mean, running_var, training, momentum, eps, stats=True):
    """Runs the kernel; updates running_mean/running_var in place when training. Returns y and the
    statistics saved for backward, (2, C): the means and rstds used (None without `stats`)."""
    x = x.contiguous()
    y = torch.empty_like(x)
    saved = _new_stats(x, 2, x.shape[1] if x.dim() >= 2 else 0) if stats else None
    _native.launch(
        "batch_norm_forward", x, x, _contiguous(weight), _contiguous(bias), running_mean, running_var,
        training, momentum, eps, y, saved,
    )  # fmt: skip
    return y, saved


def _batch_norm_impl(x, weight, bias, running_mean, running_var, training, momentum, eps):
    # Functional: the kernel updates copies of the running averages, returned as outputs.
    update = training and running_mean is not None
    new_mean = running_mean.clone() if update else None
    new_var = running_var.clone() if update and running_var is not None else None
    y, saved = _batch_norm_launch(
        x, weight, bias, new_mean if update else running_mean, new_var if update else running_var,
        training, momentum, eps,
    )  # fmt: skip
    return y, saved, new_mean, new_var


def _batch_norm_in_place(x, weight, bias, running_mean, running_var, training, momentum, eps):
    # Eager calls that record no graph update the caller's running averages directly (no copies) and
    # keep no statistics: backward reads them, and the CPU kernel needs none (CUDA's kernels pass them
    # between launches). One allocation and one tensor conversion less, ~12k instructions.
    y, saved = _batch_norm_launch(x, weight, bias, running_mean, running_var, training, momentum, eps, x.is_cuda)
    return y, saved, None, None


def _batch_norm_fake(x, weight, bias, running_mean, running_var, training, momentum, eps):
    _check_devices("batch_norm", x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    channels = x.shape[1]
    update = training and running_mean is not None
    return (
        x.new_empty(x.shape),
        x.new_empty((2, channels), dtype=_stats_dtype(x)),
        running_mean.new_empty(running_mean.shape) if update else None,
        running_var.new_empty(running_var.shape) if update and running_var is not None else None,
    )


def _batch_norm_backward_impl(grad_y, x, stats, weight, training, mask):
    x = x.contiguous()
    grad_y = grad_y.contiguous()
    grads = _channel_grads(x, mask)
    _native.launch("batch_norm_backward", x, grad_y, x, stats, _contiguous(weight), training, *grads)
    return grads


def _batch_norm_backward_fake(grad_y, x, stats, weight, training, mask):
    return _channel_grads(x, mask)


_batch_norm_backward = define(
    "batch_norm_backward(Tensor grad_y, Tensor x, Tensor stats, Tensor? weight, "
    "bool training, bool[3] output_mask) -> (Tensor?, Tensor?, Tensor?)",
    _batch_norm_backward_impl,
    _batch_norm_backward_fake,
)


def _batch_norm_setup(ctx, inputs, output):
    x, weight, _bias, _rm, _rv, training, _momentum, _eps = inputs
    ctx.training = training
    ctx.save_for_backward(x, weight, output[1])


def _batch_norm_grad(ctx, grad_y, *_stat_grads):
    x, weight, stats = ctx.saved_tensors
    need = ctx.needs_input_grad  # (x, weight, bias, running_mean, running_var, ...)
    dx, dw, db = _batch_norm_backward(grad_y, x, stats, weight, ctx.training, [need[0], need[1], need[2]])
    return dx, dw, db, None, None, None, None, None


_batch_norm = define(
    "batch_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, bool training, "
    "float momentum, float eps) -> (Tensor, Tensor, Tensor?, Tensor?)",
    _batch_norm_impl,
    _batch_norm_fake,
    backward=_batch_norm_grad,
    setup_context=_batch_norm_setup,
    inference=_batch_norm_in_place,
    eager=_batch_norm_launch,  # (y, saved): the Function returns y, and setup_context reads saved
    differentiable_outputs=1,  # the rest: saved statistics, updated running averages
)


def _copy_running(running: torch.Tensor | None, new: torch.Tensor | None) -> None:
    if running is not None and new is not None:
        with torch.no_grad():
            running.copy_(new)


def batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch normalization of x (N, C, *) per channel (Ioffe & Szegedy 2015).

    Training uses the batch statistics (biased variance) and, when running averages are given,
    updates them in place: r ← (1 − momentum)·r + momentum·s, with the unbiased variance for
    running_var. Evaluation normalizes with the running averages. Same signature and result as
    `torch.nn.functional.batch_norm`, also for an empty x (batch or spatial size 0): an empty
    output, running averages unchanged.

    Args:
        x: input of shape (N, C, *).
        running_mean, running_var: running averages of shape (C), or None (training only).
        weight, bias: optional affine parameters of shape (C).
        training: use batch statistics (True) or the running averages (False).
        momentum: weight of the new statistic in the running averages.
        eps: added to the variance.

    Returns:
        The normalized tensor, shaped like x.
    """
    if type(momentum) is not float:  # the common case costs one comparison, not a call
        _check_momentum("batch_norm", momentum)
    if training and isinstance(x, torch.Tensor) and x.numel() == 0 and x.dim() >= 2 and x.shape[1] > 0:
        # An empty batch: nothing to normalize and no statistics, so the running averages stay as
        # they are. torch returns an empty output chained to weight and bias (their gradients come
        # out as zeros); so does this, with no kernel to run.
        y = x.clone()
        if weight is not None:
            y = y * weight[0]
        return y if bias is None else y + bias[0]
    y, _, new_mean, new_var = _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps)
    if new_mean is not None or new_var is not None:  # only the dispatcher's functional path returns copies
        _copy_running(running_mean, new_mean)
        _copy_running(running_var, new_var)
    return y


def batch_norm_reference(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalization written from the formula, in plain PyTorch (updates running stats too)."""
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    dims = [0] + list(range(2, x.dim()))
    if training:
        mean = _mean(x, dims)
        var = ((x - mean.view(shape)) ** 2).mean(dims)
        if running_mean is not None:
            count = x.numel() // x.shape[1]
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                running_var.mul_(1 - momentum).add_(momentum * var.detach() * count / (count - 1))
    else:
        mean, var = running_mean, running_var
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


_CHANNEL_SHAPES = [(1, 3, 5), (4, 1, 7), (2, 5, 3, 3), (3, 4, 1, 9), (6, 2), (2, 3, 2, 2, 3), (3, 16, 33)]


def _batch_norm_samples(device, dtype, gen) -> Iterable[Sample]:
    for shape in _CHANNEL_SHAPES:
        c = shape[1]
        x = _randn(shape, dtype, device, gen, scale=1.5, offset=0.3)
        w = _randn((c,), dtype, device, gen, offset=1.0)
        b = _randn((c,), dtype, device, gen)
        rm = _randn((c,), dtype, device, gen, scale=0.1)
        rv = _randn((c,), dtype, device, gen, scale=0.1).abs() + 0.5
        yield Sample((x, rm, rv, w, b), {"training": True, "momentum": 0.2}, name="train")
        yield Sample((x, None, None), {"training": True}, name="train-no-running")
        yield Sample((x, rm, rv, w, b), {"training": False}, name="eval")
        yield Sample((x, rm, rv), {"training": False, "eps": 1e-3}, name="eval-plain")
    x = _randn((8, 3, 10), dtype, device, gen, offset=200.0)
    yield Sample((x, None, None), {"training": True}, name="offset")


def _batch_norm_gradcheck_samples(device, gen) -> Iterable[Sample]:
    for shape in [(3, 2, 4), (2, 3), (1, 2, 5)]:
        c = shape[1]
        x = _randn(shape, torch.float64, device, gen)
        w = _randn((c,), torch.float64, device, gen, offset=1.0)
        b = _randn((c,), torch.float64, device, gen)
        rv = torch.rand(c, dtype=torch.float64, generator=gen).to(device) + 0.5
        yield Sample((x, None, None, w, b), {"training": True})
        yield Sample((x, torch.zeros(c, dtype=torch.float64, device=device), rv, w, b), {"training": False})


def _batch_norm_bad_inputs(device) -> Iterable[BadInput]:
    x = torch.randn(4, 3, 5, device=device)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    yield BadInput((x.long(), rm, rv), {}, TypeError, "'x'", "integer x")
    yield BadInput((x, rm, rv, torch.ones(4, device=device)), {"training": True}, ValueError, "'weight'", "weight size")
    yield BadInput((x, torch.zeros(2, device=device), rv), {"training": True}, ValueError, "'running_mean'", "stats size")
    yield BadInput((x, rm, rv.double()), {"training": True}, TypeError, "'running_var'", "stats dtype")
    yield BadInput((x, None, None), {"training": False}, ValueError, "'running_mean'", "eval without stats")
    yield BadInput((x[:1, :, :1], rm, rv), {"training": True}, ValueError, "'x'", "one value per channel")
    yield BadInput((x, rm, rv), {"training": True, "momentum": 1.5}, ValueError, "'momentum'", "momentum range")
    yield BadInput((torch.randn(5, device=device), None, None), {"training": True}, ValueError, "'x'", "1-d x")
    yield BadInput((x, rm, rv, None, "zeros"), {}, TypeError, "'bias'", "bias not a tensor")


register_info(
    OpInfo(
        name="batch_norm",
        public=batch_norm,
        reference=batch_norm_reference,
        torch_counterpart=torch.nn.functional.batch_norm,
        samples=_batch_norm_samples,
        bad_inputs=_batch_norm_bad_inputs,
        differentiable_args=(0, 3, 4),
        gradcheck_samples=_batch_norm_gradcheck_samples,
        mutated_args=(1, 2),
        backward_ops=("batch_norm_backward",),
    )
)


# ==================================================================================== group_norm


def _group_norm_impl(x, num_groups, weight, bias, eps, stats=True, batch=None):
    """batch: x.shape[0] when the caller has it (one shape read less on the per-call overhead path)."""
    x = x.contiguous()
    y = torch.empty_like(x)
    saved = None
    if stats:  # mean and rstd (2, N, G), saved for backward; inference skips them
        if batch is None:
            batch = x.shape[0] if x.dim() >= 1 else 0
        saved = _new_stats(x, 2, batch, num_groups)
    _native.launch("group_norm_forward", x, x, num_groups, _contiguous(weight), _contiguous(bias), eps, y, saved)
    return y, saved


def _group_norm_fake(x, num_groups, weight, bias, eps):
    _check_devices("group_norm", x, weight=weight, bias=bias)
    return x.new_empty(x.shape), x.new_empty((2, x.shape[0], num_groups), dtype=_stats_dtype(x))


def _group_norm_backward_impl(grad_y, x, num_groups, stats, weight, mask):
    x = x.contiguous()
    grad_y = grad_y.contiguous()
    grads = _channel_grads(x, mask)
    ws = _native.workspace("group_norm_backward", x, x, num_groups)
    _native.launch("group_norm_backward", x, grad_y, x, num_groups, stats, _contiguous(weight), *grads, ws)
    return grads


def _group_norm_backward_fake(grad_y, x, num_groups, stats, weight, mask):
    return _channel_grads(x, mask)


_group_norm_backward = define(
    "group_norm_backward(Tensor grad_y, Tensor x, int num_groups, Tensor stats, Tensor? weight, "
    "bool[3] output_mask) -> (Tensor?, Tensor?, Tensor?)",
    _group_norm_backward_impl,
    _group_norm_backward_fake,
)


def _group_norm_setup(ctx, inputs, output):
    x, num_groups, weight, _bias, _eps = inputs
    ctx.num_groups = num_groups
    ctx.save_for_backward(x, weight, output[1])


def _group_norm_grad(ctx, grad_y, *_stats_grad):
    x, weight, stats = ctx.saved_tensors
    need = ctx.needs_input_grad  # (x, num_groups, weight, bias, eps)
    dx, dw, db = _group_norm_backward(grad_y, x, ctx.num_groups, stats, weight, [need[0], need[2], need[3]])
    return dx, None, dw, db, None


def _group_norm_inference(x, num_groups, weight, bias, eps):
    return _group_norm_impl(x, num_groups, weight, bias, eps, False)


_group_norm = define(
    "group_norm(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor)",
    _group_norm_impl,
    _group_norm_fake,
    backward=_group_norm_grad,
    setup_context=_group_norm_setup,
    inference=_group_norm_inference,
    differentiable_outputs=1,  # the rest: statistics saved for backward
)


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Group normalization (Wu & He 2018): statistics per sample over each group of C/G channels.

    Same signature and result as `torch.nn.functional.group_norm`.

    Args:
        x: input of shape (N, C, *), C divisible by num_groups.
        num_groups: number of groups G.
        weight, bias: optional per-channel affine parameters of shape (C).
        eps: added to the variance.

    Returns:
        The normalized tensor, shaped like x.
    """
    if not isinstance(num_groups, int) or isinstance(num_groups, bool):
        raise TypeError(f"group_norm: argument 'num_groups' expected an int but got {type(num_groups).__name__}")
    # The kernel's validation rejects what torch rejects, one value per group included (norm/validate.cpp).
    return _group_norm(x, num_groups, weight, bias, eps)[0]


def group_norm_reference(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Group normalization written from the formula, in plain PyTorch."""
    n, c = x.shape[:2]
    g = x.reshape(n, num_groups, -1)
    mean = _mean(g, -1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = [1, c] + [1] * (x.dim() - 2)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


def _group_norm_samples(device, dtype, gen) -> Iterable[Sample]:
    for shape, groups in [((1, 4, 5), 2), ((3, 6, 7), 3), ((2, 6, 3, 5), 6), ((2, 8, 4, 4), 1), ((5, 3), 3), ((2, 32, 9), 8)]:
        c = shape[1]
        x = _randn(shape, dtype, device, gen, scale=1.5, offset=-0.4)
        w = _randn((c,), dtype, device, gen, offset=1.0)
        b = _randn((c,), dtype, device, gen)
        yield Sample((x, groups, w, b), name="affine")
        yield Sample((x, groups), {"eps": 1e-3}, name="plain")
    x = _randn((2, 4, 16), dtype, device, gen, offset=-500.0)
    yield Sample((x, 2), name="offset")


def _group_norm_gradcheck_samples(device, gen) -> Iterable[Sample]:
    for shape, groups in [((2, 4, 3), 2), ((1, 3, 2, 2), 3), ((3, 2), 1)]:
        c = shape[1]
        yield Sample(
            (
                _randn(shape, torch.float64, device, gen),
                groups,
                _randn((c,), torch.float64, device, gen, offset=1.0),
                _randn((c,), torch.float64, device, gen),
            )
        )


def _group_norm_bad_inputs(device) -> Iterable[BadInput]:
    x = torch.randn(2, 6, 5, device=device)
    yield BadInput((x, 4), {}, ValueError, "'num_groups'", "groups not dividing channels")
    yield BadInput((x, 0), {}, ValueError, "'num_groups'", "zero groups")
    yield BadInput((x, 2.0), {}, TypeError, "'num_groups'", "float groups")
    yield BadInput((x.int(), 2), {}, TypeError, "'x'", "integer x")
    yield BadInput((x, 2, torch.ones(5, device=device)), {}, ValueError, "'weight'", "weight size")
    yield BadInput((x, 2, torch.ones(6, device=device), torch.zeros(6, device=device).double()), {}, TypeError,
                   "'bias'", "bias dtype")  # fmt: skip
    yield BadInput((x, 2), {"eps": -1e-5}, ValueError, "'eps'", "negative eps")
    yield BadInput((torch.randn(1, 3, device=device), 3), {}, ValueError, "'x'", "one value per group")


register_info(
    OpInfo(
        name="group_norm",
        public=group_norm,
        reference=group_norm_reference,
        torch_counterpart=torch.nn.functional.group_norm,
        samples=_group_norm_samples,
        bad_inputs=_group_norm_bad_inputs,
        differentiable_args=(0, 2, 3),
        gradcheck_samples=_group_norm_gradcheck_samples,
        backward_ops=("group_norm_backward",),
    )
)


# ================================================================================= instance_norm
# Instance normalization is group normalization with one channel per group; in evaluation with
# running averages it is batch normalization in evaluation mode. It reuses those kernels.


def _instance_norm_launch(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, stats=True):
    """Runs the kernels; updates running_mean/running_var in place when using input statistics.

    stats=False (inference) may leave the instance statistics out when no running average needs them.
    """
    shape = x.shape
    if len(shape) < 2:
        raise ValueError(f"instance_norm: argument 'x' expected at least 2 dimensions (N, C, *) but got shape {tuple(shape)}")
    if not use_input_stats:  # CUDA's batch-norm kernels need the statistics buffer (_batch_norm_in_place)
        return _batch_norm_launch(x, weight, bias, running_mean, running_var, False, momentum, eps, stats or x.is_cuda)
    instances, numel = shape[0] * shape[1], x.numel()
    spatial = numel // instances if instances > 0 else 0
    if spatial <= 1 and numel > 0:
        raise ValueError(
            f"instance_norm: argument 'x' expected more than 1 spatial element per channel but got shape {tuple(shape)}"
        )
    update = running_mean is not None or running_var is not None
    y, saved = _group_norm_impl(x, shape[1], weight, bias, eps, stats=stats or update, batch=shape[0])
    if update:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm: arguments 'running_mean' and 'running_var' expected both or neither")
        _native.launch(
            "running_stats_update", x, saved, shape[0], shape[1], spatial, momentum, eps, running_mean, running_var
        )  # fmt: skip
    return y, saved


def _instance_norm_impl(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps):
    update = use_input_stats and running_mean is not None
    new_mean = running_mean.clone() if update else running_mean
    new_var = running_var.clone() if update and running_var is not None else running_var
    y, saved = _instance_norm_launch(x, weight, bias, new_mean, new_var, use_input_stats, momentum, eps)
    return y, saved, (new_mean if update else None), (new_var if update else None)


def _instance_norm_in_place(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, stats=True):
    # Eager calls update the caller's running averages directly: no copies.
    launched = _instance_norm_launch(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, stats)
    return (*launched, None, None)


def _instance_norm_fake(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps):
    _check_devices("instance_norm", x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    stats = (2, x.shape[0], x.shape[1]) if use_input_stats else (2, x.shape[1])
    update = use_input_stats and running_mean is not None
    return (
        x.new_empty(x.shape),
        x.new_empty(stats, dtype=_stats_dtype(x)),
        running_mean.new_empty(running_mean.shape) if update else None,
        running_var.new_empty(running_var.shape) if update and running_var is not None else None,
    )


def _instance_norm_setup(ctx, inputs, output):
    x, weight, _bias, _rm, _rv, use_input_stats, _momentum, _eps = inputs
    ctx.use_input_stats = use_input_stats
    ctx.save_for_backward(x, weight, output[1])


def _instance_norm_grad(ctx, grad_y, *_stat_grads):
    x, weight, stats = ctx.saved_tensors
    need = ctx.needs_input_grad  # (x, weight, bias, running_mean, running_var, ...)
    mask = [need[0], need[1], need[2]]
    if ctx.use_input_stats:
        dx, dw, db = _group_norm_backward(grad_y, x, x.shape[1], stats, weight, mask)
    else:
        dx, dw, db = _batch_norm_backward(grad_y, x, stats, weight, False, mask)
    return dx, dw, db, None, None, None, None, None


def _instance_norm_inference(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps):
    return _instance_norm_in_place(
        x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, stats=False
    )


_instance_norm = define(
    "instance_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, "
    "bool use_input_stats, float momentum, float eps) -> (Tensor, Tensor, Tensor?, Tensor?)",
    _instance_norm_impl,
    _instance_norm_fake,
    backward=_instance_norm_grad,
    setup_context=_instance_norm_setup,
    inference=_instance_norm_inference,
    eager=_instance_norm_launch,  # (y, saved): the Function returns y, and setup_context reads saved
    differentiable_outputs=1,  # the rest: saved statistics, updated running averages
)


def instance_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Instance normalization (Ulyanov et al. 2016): statistics per sample and channel.

    With use_input_stats, running averages (when given) are updated in place with the batch mean
    of the per-instance statistics (unbiased variance); without, x is normalized with them. Same
    signature and result as `torch.nn.functional.instance_norm`.

    Args:
        x: input of shape (N, C, *) with more than one spatial element.
        running_mean, running_var: optional running averages of shape (C).
        weight, bias: optional per-channel affine parameters of shape (C).
        use_input_stats: normalize with the instance statistics (True) or the running averages.
        momentum: weight of the new statistic in the running averages.
        eps: added to the variance.

    Returns:
        The normalized tensor, shaped like x.
    """
    if type(momentum) is not float:  # the common case costs one comparison, not a call
        _check_momentum("instance_norm", momentum)
    y, _, new_mean, new_var = _instance_norm(
        x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps
    )
    if new_mean is not None or new_var is not None:  # only the dispatcher's functional path returns copies
        _copy_running(running_mean, new_mean)
        _copy_running(running_var, new_var)
    return y


def instance_norm_reference(
    x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True, momentum=0.1, eps=1e-5
):
    """Instance normalization written from the formula, in plain PyTorch (updates running stats too)."""
    n, c = x.shape[:2]
    shape = [1, c] + [1] * (x.dim() - 2)
    if use_input_stats:
        flat = x.reshape(n, c, -1)
        mean = _mean(flat, -1, keepdim=True)
        var = ((flat - mean) ** 2).mean(-1, keepdim=True)
        y = ((flat - mean) / torch.sqrt(var + eps)).reshape(x.shape)
        if running_mean is not None:
            s = flat.shape[-1]
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean.detach().mean(0).flatten())
                running_var.mul_(1 - momentum).add_(momentum * (var.detach() * s / (s - 1)).mean(0).flatten())
    else:
        y = (x - running_mean.view(shape)) / torch.sqrt(running_var.view(shape) + eps)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


def _instance_norm_samples(device, dtype, gen) -> Iterable[Sample]:
    for shape in [(1, 3, 5), (4, 2, 7), (2, 3, 4, 5), (3, 1, 2, 2), (2, 5, 33)]:
        c = shape[1]
        x = _randn(shape, dtype, device, gen, scale=1.2, offset=0.7)
        w = _randn((c,), dtype, device, gen, offset=1.0)
        b = _randn((c,), dtype, device, gen)
        rm = _randn((c,), dtype, device, gen, scale=0.1)
        rv = _randn((c,), dtype, device, gen, scale=0.1).abs() + 0.5
        yield Sample((x,), name="plain")
        yield Sample((x, rm, rv, w, b), {"use_input_stats": True, "momentum": 0.3}, name="running")
        yield Sample((x, rm, rv, w, b), {"use_input_stats": False}, name="eval")


def _instance_norm_gradcheck_samples(device, gen) -> Iterable[Sample]:
    for shape in [(2, 3, 4), (1, 2, 2, 3)]:
        c = shape[1]
        x = _randn(shape, torch.float64, device, gen)
        w = _randn((c,), torch.float64, device, gen, offset=1.0)
        b = _randn((c,), torch.float64, device, gen)
        rv = torch.rand(c, dtype=torch.float64, generator=gen).to(device) + 0.5
        yield Sample((x, None, None, w, b))
        yield Sample((x, torch.zeros(c, dtype=torch.float64, device=device), rv, w, b), {"use_input_stats": False})


def _instance_norm_bad_inputs(device) -> Iterable[BadInput]:
    x = torch.randn(2, 3, 6, device=device)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    yield BadInput((x[:, :, :1],), {}, ValueError, "'x'", "one spatial element")
    yield BadInput((x.long(),), {}, TypeError, "'x'", "integer x")
    yield BadInput((x, rm, rv, torch.ones(2, device=device)), {}, ValueError, "'weight'", "weight size")
    yield BadInput((x, torch.zeros(4, device=device), rv), {}, ValueError, "'running_mean'", "stats size")
    yield BadInput((x, None, None), {"use_input_stats": False}, ValueError, "'running_mean'", "eval without stats")
    yield BadInput((x, rm, rv), {"momentum": -0.5}, ValueError, "'momentum'", "momentum range")


register_info(
    OpInfo(
        name="instance_norm",
        public=instance_norm,
        reference=instance_norm_reference,
        torch_counterpart=torch.nn.functional.instance_norm,
        samples=_instance_norm_samples,
        bad_inputs=_instance_norm_bad_inputs,
        differentiable_args=(0, 3, 4),
        gradcheck_samples=_instance_norm_gradcheck_samples,
        mutated_args=(1, 2),
        backward_ops=("group_norm_backward", "batch_norm_backward"),
    )
)


# =================================================================================== weight_norm


def _weight_norm_dim(v: torch.Tensor, dim: int | None) -> int:
    # torch's convention (torch.nn.utils.weight_norm): None or -1 normalize over the whole tensor.
    if dim is None or dim == -1:
        return -1
    rank = v.dim()
    if not -rank <= dim < rank:
        raise ValueError(f"weight_norm: argument 'dim' expected None, -1 or a dimension of v (rank {rank}) but got {dim}")
    return dim + rank if dim < 0 else dim


def _weight_norm_impl(v, g, dim, stats=True):
    """The forward; with stats=False, the inference path, which keeps no norms (backward's)."""
    dim = _weight_norm_dim(v, dim)
    v = v.contiguous()
    w = torch.empty_like(v)
    norm = None
    if stats:
        # The norms, shaped like g in the statistics dtype. empty_like: a shape argument costs ~8k
        # instructions more per call (the per-call overhead row).
        dtype = _stats_dtype(v)
        if g.dtype == dtype:
            norm = torch.empty_like(g, memory_format=torch.contiguous_format)
        else:
            norm = torch.empty_like(g, dtype=dtype, memory_format=torch.contiguous_format)
    _native.launch("weight_norm_forward", v, v, g.contiguous(), dim, w, norm)
    return w, norm


def _weight_norm_inference(v, g, dim):
    return _weight_norm_impl(v, g, dim, False)


def _weight_norm_fake(v, g, dim):
    _check_devices("weight_norm", v, g=g)
    _weight_norm_dim(v, dim)
    return v.new_empty(v.shape), g.new_empty(g.shape, dtype=_stats_dtype(v))


def _weight_norm_backward_impl(grad_w, v, g, norm, dim, mask):
    v = v.contiguous()
    dv, dg = _empty_or_none(mask[0], v), _empty_or_none(mask[1], g)
    _native.launch("weight_norm_backward", v, grad_w.contiguous(), v, g.contiguous(), norm, dim, dv, dg)
    return dv, dg


_weight_norm_backward = define(
    "weight_norm_backward(Tensor grad_w, Tensor v, Tensor g, Tensor norm, int dim, bool[2] output_mask) "
    "-> (Tensor?, Tensor?)",
    _weight_norm_backward_impl,
    lambda grad_w, v, g, norm, dim, mask: (_empty_or_none(mask[0], v), _empty_or_none(mask[1], g)),
)


def _weight_norm_setup(ctx, inputs, output):
    v, g, dim = inputs
    ctx.dim = _weight_norm_dim(v, dim)
    ctx.save_for_backward(v, g, output[1])


def _weight_norm_grad(ctx, grad_w, *_norm_grad):
    v, g, norm = ctx.saved_tensors
    dv, dg = _weight_norm_backward(grad_w, v, g, norm, ctx.dim, [ctx.needs_input_grad[0], ctx.needs_input_grad[1]])
    return dv, dg, None


_weight_norm = define(
    "weight_norm(Tensor v, Tensor g, int dim) -> (Tensor, Tensor)",
    _weight_norm_impl,
    _weight_norm_fake,
    backward=_weight_norm_grad,
    setup_context=_weight_norm_setup,
    inference=_weight_norm_inference,
    differentiable_outputs=1,  # the rest: statistics saved for backward
)


def weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int | None = 0) -> torch.Tensor:
    """Weight normalization w = g · v / ‖v‖ (Salimans & Kingma 2016).

    ‖v‖ is the L2 norm over every dim of v except `dim`; dim=None or -1 takes it over the whole
    tensor (torch's convention). Same result as `torch._weight_norm(v, g, dim)`.

    Args:
        v: the direction, any shape.
        g: the magnitude, with v.size(dim) elements (one element for dim=None/-1), e.g. shaped
            (out, 1, 1, 1) for a conv weight and dim=0.
        dim: the dim whose slices are normalized separately.

    Returns:
        w, shaped like v.
    """
    # The op checks dim against v's rank (its implementations and its fake) and names a non-tensor.
    return _weight_norm(v, g, -1 if dim is None else dim)[0]


def weight_norm_reference(v, g, dim=0):
    """Weight normalization written from the formula, in plain PyTorch."""
    dim = _weight_norm_dim(v, dim)
    if dim == -1:
        return v * (g.reshape(()) / torch.sqrt((v * v).sum()))
    dims = [d for d in range(v.dim()) if d != dim]
    shape = [1] * v.dim()
    shape[dim] = v.shape[dim]
    return v * (g.reshape(shape) / torch.sqrt((v * v).sum(dims, keepdim=True)))


def _g_shape(v_shape, dim):
    if dim is None or dim == -1:
        return ()
    shape = [1] * len(v_shape)
    shape[dim] = v_shape[dim]
    return tuple(shape)


def _weight_norm_samples(device, dtype, gen) -> Iterable[Sample]:
    for shape, dim in [((5, 3), 0), ((5, 3), 1), ((4, 3, 3, 3), 0), ((2, 7, 5), 1), ((6, 4), None), ((1, 1), 0), ((3, 1000), 0)]:
        v = _randn(shape, dtype, device, gen)
        g = _randn(_g_shape(shape, dim), dtype, device, gen, offset=1.0)
        yield Sample((v, g, -1 if dim is None else dim))


def _weight_norm_gradcheck_samples(device, gen) -> Iterable[Sample]:
    for shape, dim in [((4, 3), 0), ((2, 3, 2), 1), ((3, 2), None), ((3, 4), 1)]:
        v = _randn(shape, torch.float64, device, gen)
        g = _randn(_g_shape(shape, dim), torch.float64, device, gen, offset=1.0)
        yield Sample((v, g, -1 if dim is None else dim))


def _weight_norm_bad_inputs(device) -> Iterable[BadInput]:
    v = torch.randn(4, 3, device=device)
    yield BadInput((v, torch.ones(3, 1, device=device), 0), {}, ValueError, "'g'", "g size")
    yield BadInput((v, torch.ones(4, 1, device=device).double(), 0), {}, TypeError, "'g'", "g dtype")
    yield BadInput((v.long(), torch.ones(4, 1, device=device), 0), {}, TypeError, "'v'", "integer v")
    yield BadInput((v, torch.ones(4, 1, device=device), 2), {}, ValueError, "'dim'", "dim out of range")
    yield BadInput((v, [1.0] * 4, 0), {}, TypeError, "'g'", "g not a tensor")


register_info(
    OpInfo(
        name="weight_norm",
        public=weight_norm,
        reference=weight_norm_reference,
        torch_counterpart=torch._weight_norm,
        samples=_weight_norm_samples,
        bad_inputs=_weight_norm_bad_inputs,
        differentiable_args=(0, 1),
        gradcheck_samples=_weight_norm_gradcheck_samples,
        backward_ops=("weight_norm_backward",),
    )
)


# ================================================================================= spectral_norm
# Miyato et al. 2018, as torch.nn.utils.spectral_norm computes it; `coeff` is i-ResNet's soft
# variant (Behrmann et al. 2019): w = W / max(1, σ/coeff).


def _matrix_shape(weight: torch.Tensor) -> tuple[int, int]:
    # weight viewed as (size(0), the rest); a 0-dim weight is left for the kernel's validation to reject.
    rows = weight.shape[0] if weight.dim() else 1
    return rows, (weight.numel() // rows if rows else 0)


def _spectral_norm_impl(weight, u, v, n_power_iterations, eps, coeff):
    weight = weight.contiguous()
    rows, cols = _matrix_shape(weight)
    w = torch.empty_like(weight)
    u_out, v_out = weight.new_empty(rows), weight.new_empty(cols)
    sigma = weight.new_empty((), dtype=_stats_dtype(weight))
    ws = _native.workspace("spectral_norm_forward", weight, weight)
    _native.launch("spectral_norm_forward", weight, weight, u.contiguous(), _contiguous(v), n_power_iterations,
                   eps, coeff, w, u_out, v_out, sigma, ws)  # fmt: skip
    return w, u_out, v_out, sigma


def _spectral_norm_fake(weight, u, v, n_power_iterations, eps, coeff):
    _check_devices("spectral_norm", weight, u=u, v=v)
    rows, cols = _matrix_shape(weight)
    return (weight.new_empty(weight.shape), weight.new_empty(rows), weight.new_empty(cols),
            weight.new_empty((), dtype=_stats_dtype(weight)))  # fmt: skip


def _spectral_norm_backward_impl(grad_w, grad_sigma, weight, u, v, sigma, coeff):
    weight = weight.contiguous()
    grad_weight = torch.empty_like(weight)
    ws = _native.workspace("spectral_norm_backward", weight, weight)
    _native.launch("spectral_norm_backward", weight, grad_w.contiguous(), _contiguous(grad_sigma), weight, u, v,
                   sigma, coeff, grad_weight, ws)  # fmt: skip
    return grad_weight


_spectral_norm_backward = define(
    "spectral_norm_backward(Tensor grad_w, Tensor? grad_sigma, Tensor weight, Tensor u, Tensor v, Tensor sigma, "
    "float? coeff) -> Tensor",
    _spectral_norm_backward_impl,
    lambda grad_w, grad_sigma, weight, u, v, sigma, coeff: weight.new_empty(weight.shape),
)


def _spectral_norm_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.coeff = inputs[5]
    ctx.save_for_backward(inputs[0], output[1], output[2], output[3])


def _spectral_norm_grad(ctx, grad_w, _grad_u, _grad_v, grad_sigma):
    weight, u, v, sigma = ctx.saved_tensors
    if grad_w is None:
        grad_w = torch.zeros_like(weight)
    grad_weight = _spectral_norm_backward(grad_w, grad_sigma, weight, u, v, sigma, ctx.coeff)
    return grad_weight, None, None, None, None, None


_spectral_norm = define(
    "spectral_norm(Tensor weight, Tensor u, Tensor? v, int n_power_iterations, float eps, float? coeff) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    _spectral_norm_impl,
    _spectral_norm_fake,
    backward=_spectral_norm_grad,
    setup_context=_spectral_norm_setup,
)


def spectral_norm(
    weight: torch.Tensor,
    u: torch.Tensor,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    coeff: float | None = None,
    v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spectral normalization w = W / σ(W) (Miyato et al. 2018), σ estimated by power iteration.

    weight is viewed as the matrix W (size(0), the rest), as torch.nn.utils.spectral_norm does for
    dim=0 (permute first for another dim). n_power_iterations steps of v = normalize(Wᵀu),
    u = normalize(W v), with normalize(x) = x / max(‖x‖, eps), start from u as given; then
    σ = uᵀ W v and w = W / σ, or with `coeff` (i-ResNet, Behrmann et al. 2019) w = W / max(1, σ/coeff),
    which only shrinks W when σ exceeds coeff. u and v are constants for autograd, as in torch:
    the gradient reaches `weight` only, through W and σ.

    Args:
        weight: the weight, at least 1-D.
        u: the left singular vector estimate, weight.size(0) elements.
        n_power_iterations: power-iteration steps (0: use u and v as given, as torch's eval mode).
        eps: floor of the norms in normalize().
        coeff: the i-ResNet bound on the spectral norm; None for plain spectral normalization.
        v: the right singular vector estimate (numel / size(0) elements); required when
            n_power_iterations is 0, ignored otherwise.

    Returns:
        (w, u_new, v_new, sigma): w shaped like weight; the vectors σ was computed with (to store
        back, as torch updates its buffers in training mode); σ as a 0-dim tensor (float32 for
        float16/bfloat16 weights).
    """
    check_tensor("spectral_norm", "weight", weight)
    check_tensor("spectral_norm", "u", u)
    check_tensor("spectral_norm", "v", v, optional=True)
    if n_power_iterations > 0:
        v = None
    return _spectral_norm(weight, u, v, int(n_power_iterations), float(eps), None if coeff is None else float(coeff))


def spectral_norm_reference(weight, u, n_power_iterations=1, eps=1e-12, coeff=None, v=None):
    """Spectral normalization written from the formulas with the torch ops torch.nn.utils.spectral_norm uses."""
    matrix = weight.reshape(weight.shape[0], -1)
    with torch.no_grad():
        u = u.detach().reshape(-1)
        v = None if v is None else v.detach().reshape(-1)
        for _ in range(n_power_iterations):
            v = torch.nn.functional.normalize(torch.mv(matrix.t(), u), dim=0, eps=eps)
            u = torch.nn.functional.normalize(torch.mv(matrix, v), dim=0, eps=eps)
    sigma = torch.dot(u, torch.mv(matrix, v))
    factor = sigma if coeff is None else torch.clamp(sigma / coeff, min=1.0)
    return weight / factor, u.clone(), v.clone(), sigma.to(_stats_dtype(weight))


def _spectral_norm_samples(device, dtype, gen) -> Iterable[Sample]:
    cases = [((5, 3), 1, None), ((4, 3, 3, 3), 2, None), ((3, 40), 1, 0.9), ((6, 4), 3, 100.0), ((1, 1), 1, None),
             ((7,), 1, None), ((64, 2), 5, 0.97), ((16, 9), 0, None), ((5, 6), 0, 0.5)]  # fmt: skip
    for shape, iterations, coeff in cases:
        weight = _randn(shape, dtype, device, gen)
        rows = shape[0]
        u = _randn((rows,), dtype, device, gen)
        kwargs = {"n_power_iterations": iterations, "coeff": coeff}
        if iterations == 0:  # torch's eval mode: the stored unit vectors
            v = torch.nn.functional.normalize(_randn((weight.numel() // rows,), torch.float64, device, gen), dim=0)
            kwargs["v"] = v.to(dtype)
            u = torch.nn.functional.normalize(u.double(), dim=0).to(dtype)
        yield Sample((weight, u), kwargs, name=f"iters={iterations} coeff={coeff}")


def _spectral_norm_gradcheck_samples(device, gen) -> Iterable[Sample]:
    # u and v are constants for autograd, so gradcheck uses fixed vectors (n_power_iterations=0).
    for shape, coeff in [((4, 3), None), ((2, 3, 2), 0.5), ((3, 2), 100.0)]:
        weight = _randn(shape, torch.float64, device, gen)
        u = _randn((shape[0],), torch.float64, device, gen)
        v = _randn((weight.numel() // shape[0],), torch.float64, device, gen)
        yield Sample((weight, u), {"n_power_iterations": 0, "coeff": coeff, "v": v})


def _spectral_norm_bad_inputs(device) -> Iterable[BadInput]:
    w = torch.randn(4, 3, device=device)
    u = torch.randn(4, device=device)
    yield BadInput((w, torch.randn(3, device=device)), {}, ValueError, "'u'", "u size")
    yield BadInput((w, u.double()), {}, TypeError, "'u'", "u dtype")
    yield BadInput((w.long(), u), {}, TypeError, "'weight'", "integer weight")
    yield BadInput((w, u), {"n_power_iterations": -1}, ValueError, "'n_power_iterations'", "negative iterations")
    yield BadInput((w, u), {"n_power_iterations": 0}, ValueError, "'v'", "eval without v")
    yield BadInput((w, u), {"n_power_iterations": 0, "v": torch.randn(4, device=device)}, ValueError, "'v'", "v size")
    yield BadInput((w, u), {"coeff": 0.0}, ValueError, "'coeff'", "zero coeff")
    yield BadInput((w, u), {"eps": -1.0}, ValueError, "'eps'", "negative eps")
    yield BadInput((w, [1.0] * 4), {}, TypeError, "'u'", "u not a tensor")
    yield BadInput((torch.tensor(2.0, device=device), u[:1]), {}, ValueError, "'weight'", "0-dim weight")


register_info(
    OpInfo(
        name="spectral_norm",
        public=spectral_norm,
        reference=spectral_norm_reference,
        torch_counterpart=spectral_norm_reference,  # torch's own ops at the test dtype (no functional op exists)
        samples=_spectral_norm_samples,
        bad_inputs=_spectral_norm_bad_inputs,
        differentiable_args=(0,),
        gradcheck_samples=_spectral_norm_gradcheck_samples,
        backward_ops=("spectral_norm_backward",),
    )
)
