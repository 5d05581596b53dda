"""Pooling ops: max, average and adaptive average pooling in 1-D and 2-D.

Every op here is a torch library op (`torch.ops.replearn.<name>`) whose forward and backward both run
native kernels (csrc/pool), with a fake implementation for torch.compile and a plain-PyTorch
`reference` written from the definitions (course notes, convolutional networks) that the tests treat as
ground truth. Along each spatial axis output o reads the taps i = o·stride − pad + j·dilation,
j < kernel, that fall inside the input, and

    max pooling       y = max over the taps (LeCun et al. 1998; overlapping windows: Krizhevsky et al. 2012)
    average pooling   y = Σ taps / divisor
    adaptive average  y = mean over [⌊o·in/out⌋, ⌈(o+1)·in/out⌉) per axis; 1×1 is global average
                      pooling (Lin et al. 2014)

Output sizes, padding limits, `ceil_mode` and the divisor rules are torch's (csrc/pool/windows.h).
The public functions have `torch.nn.functional`'s signatures and return what it returns: max pooling
indices are flat positions h·W + w in each input plane, ties go to the first max in row-major order
and a NaN in a window is its max. Inputs are NCHW (or CHW, unbatched); channels-last and other
strided inputs are accepted and copied to NCHW first, and outputs are NCHW-contiguous.
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

import torch

from .. import _native
from ._registry import BadInput, NativeOp, OpInfo, Sample, as_int, check_tensor, define, register_info

__all__ = [
    "max_pool1d",
    "max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
]

_IntOrInts = int | Sequence[int]


# ======================================================================================= geometry


def _ints(fn: str, arg: str, value, n: int, minimum: int) -> list[int]:
    """`value` as n ints (an int is repeated), each ≥ minimum; ValueError naming `arg` otherwise."""
    if type(value) is int and value >= minimum:  # the common case, first: this runs on every call
        return [value] * n
    single = as_int(value)
    if single is not None:
        values = [single] * n
    else:
        values = [as_int(v) for v in value] if isinstance(value, (tuple, list)) else [None]
    if len(values) == 1 and n == 2:
        values = values * 2
    if len(values) != n or not all(v is not None and v >= minimum for v in values):
        bound = "≥ 0" if minimum == 0 else "> 0"
        raise ValueError(f"{fn}: argument '{arg}' expected {n} integer(s) {bound} but got {value!r}")
    return values


def _check_input(fn: str, x: torch.Tensor, n: int, channels_may_be_empty: bool = False) -> None:
    """x (N, C, *spatial) or (C, *spatial) with non-empty non-batch dims (only spatial for adaptive ops)."""
    shape = x.shape
    ndim = len(shape)
    if ndim != n + 1 and ndim != n + 2:
        raise ValueError(
            f"{fn}: argument 'x' expected {n + 1} (unbatched) or {n + 2} (batched) dimensions "
            f"but got shape {tuple(shape)}"
        )
    first = ndim - n if channels_may_be_empty else ndim - n - 1
    if 0 in shape[first:]:
        raise ValueError(f"{fn}: argument 'x' expected non-empty non-batch dimensions but got shape {tuple(shape)}")


def _pooled_size(size, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool):
    """torch's pooling output size (csrc/pool/windows.h: pooled_size)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _normalize(fn: str, n: int, kernel_size, stride, padding, dilation=1) -> tuple:
    """Normalized (kernel, stride, padding, dilation) lists of n ints, validated as torch does."""
    kernel = _ints(fn, "kernel_size", kernel_size, n, 1)
    unset = stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)  # torch's default: the kernel
    stride = kernel if unset else _ints(fn, "stride", stride, n, 1)
    padding = _ints(fn, "padding", padding, n, 0)
    dilation = _ints(fn, "dilation", dilation, n, 1)
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        raise ValueError(f"{fn}: argument 'padding' expected at most half of kernel_size {kernel} but got {padding}")
    return kernel, stride, padding, dilation


def _output_shape(fn: str, x: torch.Tensor, kernel, stride, padding, dilation, ceil_mode) -> list:
    n = len(kernel)
    _check_input(fn, x, n)
    lead = x.dim() - n
    out = [_pooled_size(x.shape[lead + i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode) for i in range(n)]
    if min(out) < 1:
        raise ValueError(
            f"{fn}: input of shape {tuple(x.shape)} is too small for kernel_size {kernel}, padding {padding} "
            f"and dilation {dilation}: the output would be empty ({out})"
        )
    return list(x.shape[:lead]) + out


def _randn(shape, dtype, device, generator, scale=1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype).to(device)


# ===================================================================================== max pooling


def _max_pool_impl(fn, x, kernel_size, stride, padding, dilation, ceil_mode, indices=True):
    shape = _output_shape(fn, x, kernel_size, stride, padding, dilation, ceil_mode)
    x = x.contiguous()
    y = x.new_empty(shape)
    idx = x.new_empty(shape, dtype=torch.int64) if indices else None
    _native.launch("max_pool_forward", x, x, kernel_size, stride, padding, dilation, ceil_mode, y, idx)
    return y, idx


def _max_pool_fake(fn, x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _output_shape(fn, x, kernel_size, stride, padding, dilation, ceil_mode)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


def _max_pool_backward_impl(grad_y, indices, input_shape, kernel_size, stride, padding, dilation, ceil_mode):
    grad_x = grad_y.new_empty(input_shape)
    _native.launch(
        "max_pool_backward", grad_y, grad_y.contiguous(), indices.contiguous(), kernel_size, stride, padding,
        dilation, ceil_mode, grad_x,
    )  # fmt: skip
    return grad_x


_max_pool_backward = define(
    "max_pool_backward(Tensor grad_y, Tensor indices, SymInt[] input_shape, int[] kernel_size, int[] stride, "
    "int[] padding, int[] dilation, bool ceil_mode) -> Tensor",
    _max_pool_backward_impl,
    lambda grad_y, indices, input_shape, *_: grad_y.new_empty(input_shape),
)


def _max_pool_setup(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, ceil_mode = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero int64 "gradient" of the indices per backward (ops/rnn.py: setup)
    ctx.input_shape = list(x.shape)
    ctx.geometry = (kernel_size, stride, padding, dilation, ceil_mode)
    ctx.save_for_backward(output[1])


def _max_pool_grad(ctx, grad_y, _grad_indices):
    if grad_y is None:  # only the indices were used: nothing flows back
        return None, None, None, None, None, None
    (indices,) = ctx.saved_tensors
    return _max_pool_backward(grad_y, indices, ctx.input_shape, *ctx.geometry), None, None, None, None, None


def _define_max_pool(n: int) -> tuple[NativeOp, NativeOp]:
    """max_pool{n}d: the op, called for values only, and the same op called when indices are wanted."""
    fn = f"max_pool{n}d"
    impl = functools.partial(_max_pool_impl, fn)

    def inference(x, kernel_size, stride, padding, dilation, ceil_mode):  # without indices: a third of the bytes
        return _max_pool_impl(fn, x, kernel_size, stride, padding, dilation, ceil_mode, indices=False)

    values = define(
        f"{fn}(Tensor x, int[{n}] kernel_size, int[{n}] stride, int[{n}] padding, int[{n}] dilation, "
        "bool ceil_mode) -> (Tensor, Tensor)",
        impl,
        functools.partial(_max_pool_fake, fn),
        backward=_max_pool_grad,
        setup_context=_max_pool_setup,
        inference=inference,
    )
    with_indices = NativeOp(fn, values.overload, impl, _max_pool_setup, _max_pool_grad)
    return values, with_indices


_max_pool1d, _max_pool1d_indexed = _define_max_pool(1)
_max_pool2d, _max_pool2d_indexed = _define_max_pool(2)


def _max_pool(n, ops, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    fn = f"max_pool{n}d"
    check_tensor(fn, "x", x)
    geometry = _normalize(fn, n, kernel_size, stride, padding, dilation)
    y, indices = ops[1 if return_indices else 0](x, *geometry, bool(ceil_mode))  # a bool index breaks dynamo
    return (y, indices) if return_indices else y


def max_pool1d(
    x: torch.Tensor,
    kernel_size: _IntOrInts,
    stride: _IntOrInts | None = None,
    padding: _IntOrInts = 0,
    dilation: _IntOrInts = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """1-D max pooling over the last dim; `torch.nn.functional.max_pool1d`'s signature and result.

    Args:
        x: (N, C, L) or (C, L).
        kernel_size: window size; stride: step (default: kernel_size); padding: implicit −∞ on both
            sides, at most kernel_size // 2; dilation: spacing of the taps.
        ceil_mode: round the output size up (the last window must start inside the input or left padding).
        return_indices: also return the int64 position of each max in its input row.

    Returns:
        y of shape (N, C, L_out), and the indices when asked for.
    """
    return _max_pool(1, (_max_pool1d, _max_pool1d_indexed), x, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)  # fmt: skip


def max_pool2d(
    x: torch.Tensor,
    kernel_size: _IntOrInts,
    stride: _IntOrInts | None = None,
    padding: _IntOrInts = 0,
    dilation: _IntOrInts = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """2-D max pooling over the last two dims; `torch.nn.functional.max_pool2d`'s signature and result.

    Args:
        x: (N, C, H, W) or (C, H, W).
        kernel_size, stride, padding, dilation: an int or an (h, w) pair each; stride defaults to
            kernel_size, padding is at most half the kernel.
        ceil_mode: round the output size up (the last window must start inside the input or left padding).
        return_indices: also return the int64 position h·W + w of each max in its input plane.

    Returns:
        y of shape (N, C, H_out, W_out), and the indices when asked for.
    """
    return _max_pool(2, (_max_pool2d, _max_pool2d_indexed), x, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)  # fmt: skip


def _window_taps(x: torch.Tensor, dim: int, out: int, kernel: int, stride: int, pad: int, dilation: int, fill):
    """x padded with `fill` along dim, then unfolded into (..., out, ..., kernel) taps (appended last)."""
    extent = dilation * (kernel - 1) + 1
    right = max(pad, (out - 1) * stride + extent - x.shape[dim] - pad)
    shape = list(x.shape)
    shape[dim] = pad
    left_fill = torch.full(shape, fill, dtype=x.dtype, device=x.device)
    shape[dim] = right
    right_fill = torch.full(shape, fill, dtype=x.dtype, device=x.device)
    padded = torch.cat([left_fill, x, right_fill], dim)
    windows = padded.unfold(dim, extent, stride).narrow(dim, 0, out)
    return windows[..., ::dilation]


def _reference_windows(x, kernel, stride, padding, dilation, out_sizes, fill):
    """(..., *out, k1·k2) taps of x's trailing len(kernel) dims."""
    n = len(kernel)
    taps = x
    for i in range(n):
        dim = x.dim() - n + i
        taps = _window_taps(taps, dim, out_sizes[i], kernel[i], stride[i], padding[i], dilation[i], fill)
    return taps.flatten(-n)


def _max_pool_reference(n, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling from the definition: −∞ padding, the taps of each window, their max."""
    kernel, stride, padding, dilation = _normalize(f"max_pool{n}d", n, kernel_size, stride, padding, dilation)
    out = _output_shape(f"max_pool{n}d", x, kernel, stride, padding, dilation, ceil_mode)[-n:]
    return _reference_windows(x, kernel, stride, padding, dilation, out, float("-inf")).max(-1).values


# ================================================================================= average pooling


def _avg_pool_impl(fn, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override=None):
    shape = _output_shape(fn, x, kernel_size, stride, padding, [1] * len(kernel_size), ceil_mode)
    x = x.contiguous()
    y = x.new_empty(shape)
    _native.launch(
        "avg_pool_forward", x, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override or 0, y
    )
    return y


def _avg_pool_fake(fn, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override=None):
    return x.new_empty(_output_shape(fn, x, kernel_size, stride, padding, [1] * len(kernel_size), ceil_mode))


def _avg_pool_backward_impl(grad_y, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                            divisor_override):  # fmt: skip
    grad_x = grad_y.new_empty(input_shape)
    _native.launch(
        "avg_pool_backward", grad_y, grad_y.contiguous(), kernel_size, stride, padding, ceil_mode, count_include_pad,
        divisor_override or 0, grad_x,
    )  # fmt: skip
    return grad_x


def _avg_pool_backward_setup(ctx, inputs, output):
    ctx.geometry = inputs[2:]  # kernel, stride, padding, ceil_mode, count_include_pad, divisor


def _avg_pool_backward_grad(ctx, grad_grad_x):
    """Double backward: grad_x = Aᵀ·grad_y for the linear map A = avg_pool, so ∂/∂grad_y = A·g."""
    kernel, stride, padding, ceil_mode, count_include_pad, divisor = ctx.geometry
    if len(kernel) == 1:
        grad_grad_y = _avg_pool1d(grad_grad_x, kernel, stride, padding, ceil_mode, count_include_pad)
    else:
        grad_grad_y = _avg_pool2d(grad_grad_x, kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    return (grad_grad_y,) + (None,) * 7


_avg_pool_backward = define(
    "avg_pool_backward(Tensor grad_y, SymInt[] input_shape, int[] kernel_size, int[] stride, int[] padding, "
    "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor",
    _avg_pool_backward_impl,
    lambda grad_y, input_shape, *_: grad_y.new_empty(input_shape),
    backward=_avg_pool_backward_grad,
    setup_context=_avg_pool_backward_setup,
)


def _avg_pool_setup(ctx, inputs, output):
    x, *geometry = inputs
    ctx.input_shape = list(x.shape)
    ctx.geometry = (geometry + [None])[:6]  # kernel, stride, padding, ceil_mode, count_include_pad, divisor


def _avg_pool_grad(ctx, grad_y):
    grad_x = _avg_pool_backward(grad_y, ctx.input_shape, *ctx.geometry)
    return (grad_x,) + (None,) * (len(ctx.needs_input_grad) - 1)


def _check_divisor(fn: str, divisor_override) -> None:
    if divisor_override is not None and (not isinstance(divisor_override, int) or divisor_override <= 0):
        raise ValueError(f"{fn}: argument 'divisor_override' expected a positive integer or None but got {divisor_override!r}")


_avg_pool1d = define(
    "avg_pool1d(Tensor x, int[1] kernel_size, int[1] stride, int[1] padding, bool ceil_mode, "
    "bool count_include_pad) -> Tensor",
    functools.partial(_avg_pool_impl, "avg_pool1d"),
    functools.partial(_avg_pool_fake, "avg_pool1d"),
    backward=_avg_pool_grad,
    setup_context=_avg_pool_setup,
    differentiable_backward=True,
)
_avg_pool2d = define(
    "avg_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
    "bool count_include_pad, int? divisor_override) -> Tensor",
    functools.partial(_avg_pool_impl, "avg_pool2d"),
    functools.partial(_avg_pool_fake, "avg_pool2d"),
    backward=_avg_pool_grad,
    setup_context=_avg_pool_setup,
    differentiable_backward=True,
)


def avg_pool1d(
    x: torch.Tensor,
    kernel_size: _IntOrInts,
    stride: _IntOrInts | None = None,
    padding: _IntOrInts = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> torch.Tensor:
    """1-D average pooling over the last dim; `torch.nn.functional.avg_pool1d`'s signature and result.

    Args:
        x: (N, C, L) or (C, L).
        kernel_size: window size; stride: step (default: kernel_size); padding: implicit zeros on both
            sides, at most kernel_size // 2.
        ceil_mode: round the output size up (the last window must start inside the input or left padding).
        count_include_pad: divide by the window's size in the padded input rather than its taps inside x.

    Returns:
        y of shape (N, C, L_out).
    """
    check_tensor("avg_pool1d", "x", x)
    kernel, stride, padding, _ = _normalize("avg_pool1d", 1, kernel_size, stride, padding)
    return _avg_pool1d(x, kernel, stride, padding, bool(ceil_mode), bool(count_include_pad))


def avg_pool2d(
    x: torch.Tensor,
    kernel_size: _IntOrInts,
    stride: _IntOrInts | None = None,
    padding: _IntOrInts = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """2-D average pooling over the last two dims; `torch.nn.functional.avg_pool2d`'s signature and result.

    Args:
        x: (N, C, H, W) or (C, H, W).
        kernel_size, stride, padding: an int or an (h, w) pair each; stride defaults to kernel_size,
            padding (implicit zeros) is at most half the kernel.
        ceil_mode: round the output size up (the last window must start inside the input or left padding).
        count_include_pad: divide by the window's size in the padded input rather than its taps inside x.
        divisor_override: divide every window's sum by this instead.

    Returns:
        y of shape (N, C, H_out, W_out).
    """
    check_tensor("avg_pool2d", "x", x)
    _check_divisor("avg_pool2d", divisor_override)
    kernel, stride, padding, _ = _normalize("avg_pool2d", 2, kernel_size, stride, padding)
    return _avg_pool2d(x, kernel, stride, padding, bool(ceil_mode), bool(count_include_pad), divisor_override)


def _avg_pool_reference(n, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                        divisor_override=None):  # fmt: skip
    """Average pooling from the definition: zero padding, Σ taps, and the divisor counted with the same
    windows over a mask of ones (the padded input, clipped at its right edge, or x alone)."""
    fn = f"avg_pool{n}d"
    kernel, stride, padding, dilation = _normalize(fn, n, kernel_size, stride, padding)
    out = _output_shape(fn, x, kernel, stride, padding, dilation, ceil_mode)[-n:]
    sums = _reference_windows(x, kernel, stride, padding, dilation, out, 0.0).sum(-1)
    if divisor_override is not None:
        return sums / divisor_override
    spatial = list(x.shape[x.dim() - n :])
    ones = torch.ones(spatial, dtype=x.dtype, device=x.device)
    if count_include_pad:  # the padded input [−pad, in + pad) counts, what lies beyond it does not
        ones = torch.nn.functional.pad(ones[None], [p for pad in reversed(padding) for p in (pad, pad)], value=1.0)[0]
        counts = _reference_windows(ones, kernel, stride, [0] * n, dilation, out, 0.0).sum(-1)
    else:
        counts = _reference_windows(ones, kernel, stride, padding, dilation, out, 0.0).sum(-1)
    return sums / counts


# ======================================================================== adaptive average pooling


def _adaptive_output_shape(fn: str, x: torch.Tensor, output_size: Sequence[int]) -> list:
    n = len(output_size)
    _check_input(fn, x, n, channels_may_be_empty=True)
    return list(x.shape[: x.dim() - n]) + list(output_size)


def _adaptive_impl(fn, x, output_size):
    y = x.new_empty(_adaptive_output_shape(fn, x, output_size))
    x = x.contiguous()
    _native.launch("adaptive_avg_pool_forward", x, x, len(output_size), y)
    return y


def _adaptive_backward_impl(grad_y, input_shape, spatial_ndim):
    grad_x = grad_y.new_empty(input_shape)
    _native.launch("adaptive_avg_pool_backward", grad_y, grad_y.contiguous(), spatial_ndim, grad_x)
    return grad_x


def _adaptive_backward_setup(ctx, inputs, output):
    grad_y, _input_shape, spatial_ndim = inputs
    ctx.output_size = list(grad_y.shape[grad_y.dim() - spatial_ndim :])


def _adaptive_backward_grad(ctx, grad_grad_x):
    """Double backward: the backward is the transpose of the (linear) pooling, so ∂/∂grad_y = pool(g)."""
    pool = _adaptive_avg_pool1d if len(ctx.output_size) == 1 else _adaptive_avg_pool2d
    return pool(grad_grad_x, ctx.output_size), None, None


_adaptive_avg_pool_backward = define(
    "adaptive_avg_pool_backward(Tensor grad_y, SymInt[] input_shape, int spatial_ndim) -> Tensor",
    _adaptive_backward_impl,
    lambda grad_y, input_shape, spatial_ndim: grad_y.new_empty(input_shape),
    backward=_adaptive_backward_grad,
    setup_context=_adaptive_backward_setup,
)


def _adaptive_setup(ctx, inputs, output):
    x, output_size = inputs
    ctx.input_shape = list(x.shape)
    ctx.spatial_ndim = len(output_size)


def _adaptive_grad(ctx, grad_y):
    return _adaptive_avg_pool_backward(grad_y, ctx.input_shape, ctx.spatial_ndim), None


def _define_adaptive(n: int) -> NativeOp:
    fn = f"adaptive_avg_pool{n}d"
    return define(
        f"{fn}(Tensor x, SymInt[{n}] output_size) -> Tensor",
        functools.partial(_adaptive_impl, fn),
        lambda x, output_size: x.new_empty(_adaptive_output_shape(fn, x, output_size)),
        backward=_adaptive_grad,
        setup_context=_adaptive_setup,
        differentiable_backward=True,
    )


_adaptive_avg_pool1d = _define_adaptive(1)
_adaptive_avg_pool2d = _define_adaptive(2)


def _output_size(fn: str, x: torch.Tensor, output_size, n: int) -> list[int]:
    """torch's output_size: an int, or n entries each an int ≥ 0 or None (keep the input's size)."""
    sizes = [output_size] * n if isinstance(output_size, int) or output_size is None else list(output_size)
    if len(sizes) != n or not all(s is None or (isinstance(s, int) and s >= 0) for s in sizes):
        raise ValueError(f"{fn}: argument 'output_size' expected {n} integer(s) ≥ 0 or None but got {output_size!r}")
    if any(s is None for s in sizes) and x.dim() < n:
        _check_input(fn, x, n, channels_may_be_empty=True)
    return [x.shape[x.dim() - n + i] if s is None else s for i, s in enumerate(sizes)]


def adaptive_avg_pool1d(x: torch.Tensor, output_size: int | Sequence[int]) -> torch.Tensor:
    """1-D adaptive average pooling; `torch.nn.functional.adaptive_avg_pool1d`'s signature and result.

    Args:
        x: (N, C, L) or (C, L), L > 0.
        output_size: L_out; window o averages x[⌊o·L/L_out⌋ : ⌈(o+1)·L/L_out⌉].

    Returns:
        y of shape (N, C, L_out).
    """
    check_tensor("adaptive_avg_pool1d", "x", x)
    return _adaptive_avg_pool1d(x, _output_size("adaptive_avg_pool1d", x, output_size, 1))


def adaptive_avg_pool2d(x: torch.Tensor, output_size: int | Sequence[int | None]) -> torch.Tensor:
    """2-D adaptive average pooling; `torch.nn.functional.adaptive_avg_pool2d`'s signature and result.

    Args:
        x: (N, C, H, W) or (C, H, W), H, W > 0.
        output_size: (H_out, W_out), an int for both, None in a place keeps that input size; 1 is global
            average pooling.

    Returns:
        y of shape (N, C, H_out, W_out).
    """
    check_tensor("adaptive_avg_pool2d", "x", x)
    return _adaptive_avg_pool2d(x, _output_size("adaptive_avg_pool2d", x, output_size, 2))


def _adaptive_reference(n, x, output_size):
    """Adaptive average pooling from the definition: each window's mean, one window at a time."""
    sizes = _output_size(f"adaptive_avg_pool{n}d", x, output_size, n)
    spatial = x.shape[x.dim() - n :]

    def windows(size_in, size_out):
        return [(o * size_in // size_out, -((-(o + 1) * size_in) // size_out)) for o in range(size_out)]

    axes = [windows(i, o) for i, o in zip(spatial, sizes)]
    if n == 1:
        columns = [x[..., b:e].mean(-1) for b, e in axes[0]]
        return torch.stack(columns, -1) if columns else x.new_empty(list(x.shape[:-1]) + [0])
    rows = []
    for hb, he in axes[0]:
        cells = [x[..., hb:he, wb:we].mean((-2, -1)) for wb, we in axes[1]]
        rows.append(torch.stack(cells, -1) if cells else x.new_empty(list(x.shape[:-2]) + [0]))
    return torch.stack(rows, -2) if rows else x.new_empty(list(x.shape[:-2]) + [0, sizes[1]])


# ========================================================================================== tests

# (x shape, kernel, stride, padding, dilation, ceil_mode) for 2-D; odd sizes, batch 1, unbatched,
# overlapping and gapped windows, ceil_mode windows hanging past the input.
_MAX2D_CASES = [
    ((2, 3, 9, 11), 3, 2, 1, 1, False),
    ((1, 2, 7, 7), 2, None, 0, 1, False),
    ((2, 3, 9, 11), 3, 2, 1, 1, True),
    ((1, 4, 10, 13), (3, 2), (2, 3), (1, 0), (2, 1), True),
    ((3, 8, 8), 2, 1, 1, 1, False),
    ((2, 2, 5, 6), (2, 3), (3, 2), (1, 1), (2, 2), False),
    ((1, 1, 1, 1), 1, 1, 0, 1, False),
    ((2, 3, 6, 5), 4, 3, 2, 1, True),
]
_MAX1D_CASES = [
    ((2, 3, 13), 3, 2, 1, 1, False),
    ((1, 2, 10), 2, None, 0, 1, True),
    ((4, 11), 3, 2, 1, 2, True),
    ((2, 1, 9), 4, 3, 2, 1, True),
    ((1, 1, 1), 1, 1, 0, 1, False),
]
# (x shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
_AVG2D_CASES = [
    ((2, 3, 9, 11), 3, 2, 1, False, True, None),
    ((2, 3, 9, 11), 3, 2, 1, True, False, None),
    ((1, 2, 8, 8), 2, None, 0, False, True, None),
    ((3, 7, 5), (3, 2), (2, 1), (1, 1), True, True, None),
    ((1, 4, 6, 7), (2, 4), (1, 3), (0, 2), True, False, None),
    ((2, 2, 5, 5), 3, 2, 1, False, True, 4),
]
_AVG1D_CASES = [
    ((2, 3, 13), 3, 2, 1, False, True),
    ((2, 3, 13), 3, 2, 1, True, False),
    ((5, 10), 4, 3, 2, True, True),
    ((1, 1, 1), 1, 1, 0, False, False),
]
_ADAPTIVE2D_CASES = [((2, 3, 7, 7), 1), ((1, 2, 9, 11), (4, 3)), ((3, 5, 6), (8, 2)), ((2, 2, 6, 6), (3, None))]
_ADAPTIVE1D_CASES = [((2, 3, 13), 1), ((1, 2, 10), 4), ((3, 7), 9)]


def _max_samples(cases, device, dtype, gen) -> Iterable[Sample]:
    for shape, kernel, stride, padding, dilation, ceil_mode in cases:
        yield Sample((_randn(shape, dtype, device, gen), kernel, stride, padding, dilation, ceil_mode))


def _avg_samples(cases, device, dtype, gen) -> Iterable[Sample]:
    for shape, *geometry in cases:
        yield Sample((_randn(shape, dtype, device, gen), *geometry))


def _adaptive_samples(cases, device, dtype, gen) -> Iterable[Sample]:
    for shape, size in cases:
        yield Sample((_randn(shape, dtype, device, gen), size))


def _strided_bad_inputs(public_n: int, device, avg: bool) -> Iterable[BadInput]:
    shape = (2, 3, 8, 8)[: 2 + public_n]
    x = torch.randn(shape, device=device)
    yield BadInput((x.long(), 2), {}, TypeError, "'x'", "integer x")
    yield BadInput((x.tolist(), 2), {}, TypeError, "'x'", "x not a tensor")
    yield BadInput((x, 3, 1, 2), {}, ValueError, "'padding'", "padding over half the kernel")
    yield BadInput((x, 9), {}, ValueError, "too small", "kernel larger than the padded input")
    yield BadInput((x, 2, 0), {}, ValueError, "'stride'", "zero stride")
    yield BadInput((x, 0), {}, ValueError, "'kernel_size'", "zero kernel")
    yield BadInput((x, (2, 2, 2)), {}, ValueError, "'kernel_size'", "three kernel sizes")
    yield BadInput((x[0, 0, 0] if public_n == 2 else x[0, 0], 1), {}, ValueError, "'x'", "too few dims")
    yield BadInput((x.new_empty(shape[:1] + (0,) + shape[2:]), 2), {}, ValueError, "'x'", "empty channels")
    if not avg:
        yield BadInput((x, 2, 2, 0, 0), {}, ValueError, "'dilation'", "zero dilation")
    elif public_n == 2:
        yield BadInput((x, 2), {"divisor_override": 0}, ValueError, "'divisor_override'", "zero divisor")


def _adaptive_bad_inputs(n: int, device) -> Iterable[BadInput]:
    shape = (2, 3, 8, 8)[: 2 + n]
    x = torch.randn(shape, device=device)
    yield BadInput((x.long(), 2), {}, TypeError, "'x'", "integer x")
    yield BadInput((x.tolist(), 2), {}, TypeError, "'x'", "x not a tensor")
    yield BadInput((x, -1), {}, ValueError, "'output_size'", "negative size")
    yield BadInput((x, [2] * (n + 1)), {}, ValueError, "'output_size'", "too many sizes")
    yield BadInput((x.new_empty(shape[:-1] + (0,)), 2), {}, ValueError, "'x'", "empty spatial dim")
    yield BadInput((x.sum(tuple(range(x.dim()))), 2), {}, ValueError, "'x'", "a scalar")


for _n, _cases in ((1, _MAX1D_CASES), (2, _MAX2D_CASES)):
    _public = max_pool1d if _n == 1 else max_pool2d
    register_info(
        OpInfo(
            name=f"max_pool{_n}d",
            public=_public,
            reference=functools.partial(_max_pool_reference, _n),
            torch_counterpart=getattr(torch.nn.functional, f"max_pool{_n}d"),
            samples=functools.partial(_max_samples, _cases),
            bad_inputs=functools.partial(_strided_bad_inputs, _n, avg=False),
            differentiable_args=(0,),
            gradcheck_samples=functools.partial(
                lambda cases, device, gen: _max_samples(cases[:4], device, torch.float64, gen), _cases
            ),
            backward_ops=("max_pool_backward",),
        )
    )

for _n, _cases in ((1, _AVG1D_CASES), (2, _AVG2D_CASES)):
    register_info(
        OpInfo(
            name=f"avg_pool{_n}d",
            public=avg_pool1d if _n == 1 else avg_pool2d,
            reference=functools.partial(_avg_pool_reference, _n),
            torch_counterpart=getattr(torch.nn.functional, f"avg_pool{_n}d"),
            samples=functools.partial(_avg_samples, _cases),
            bad_inputs=functools.partial(_strided_bad_inputs, _n, avg=True),
            differentiable_args=(0,),
            gradcheck_samples=functools.partial(
                lambda cases, device, gen: _avg_samples(cases, device, torch.float64, gen), _cases
            ),
            backward_ops=("avg_pool_backward",),
            double_backward=True,
        )
    )

for _n, _cases in ((1, _ADAPTIVE1D_CASES), (2, _ADAPTIVE2D_CASES)):
    register_info(
        OpInfo(
            name=f"adaptive_avg_pool{_n}d",
            public=adaptive_avg_pool1d if _n == 1 else adaptive_avg_pool2d,
            reference=functools.partial(_adaptive_reference, _n),
            torch_counterpart=getattr(torch.nn.functional, f"adaptive_avg_pool{_n}d"),
            samples=functools.partial(_adaptive_samples, _cases),
            bad_inputs=functools.partial(_adaptive_bad_inputs, _n),
            differentiable_args=(0,),
            gradcheck_samples=functools.partial(
                lambda cases, device, gen: _adaptive_samples(cases, device, torch.float64, gen), _cases
            ),
            backward_ops=("adaptive_avg_pool_backward",),
            double_backward=True,
        )
    )
