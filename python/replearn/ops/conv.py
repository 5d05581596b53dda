"""Convolution ops: conv1d/2d, their transposes, and causal dilated conv1d.

Every op here is a torch library op (`torch.ops.replearn.<name>`) whose forward and backward run
native kernels (csrc/conv), with a fake implementation for torch.compile and a plain-PyTorch
`reference` written from the definition (course notes §4, convolutional networks):

    y[n, o, p] = b[o] + Σ_{c, k} w[o, c, k] · x[n, g(o)·C_in/G + c, p·S − P + k·D]

with stride S, zero padding P, dilation D (Yu & Koltun 2016) and G groups (Krizhevsky et al. 2012;
depthwise when G = C_in, Chollet 2017). The transposed convolution is the adjoint of this map with
respect to x (Dumoulin & Visin 2016). The causal convolution pads D·(K − 1) zeros at the beginning
only, so y[t] sees x[≤ t] (van den Oord et al. 2016, WaveNet; Kalchbrenner et al. 2016, ByteNet).

The public functions have the signatures of their `torch.nn.functional` counterparts and return
what they return; padding takes ints, tuples, "same" and "valid". The torch ops take padding per
side (`padding_begin`, `padding_end`), which covers "same" with even kernels and causal padding.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from .. import _native
from ._registry import BadInput, OpInfo, Sample, as_int, check_tensor, define, register_info
from .norm import _check_devices, _contiguous, _empty_or_none, _randn

__all__ = ["conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d", "dilated_causal_conv1d"]

_IntOrSeq = int | Sequence[int]


# ============================================================================ argument handling


def _ints(fn: str, arg: str, value, spatial: int, minimum: int) -> list[int]:
    """An int or a sequence of `spatial` ints (or one, repeated), each at least `minimum`."""
    single = as_int(value)
    if single is None and not isinstance(value, (tuple, list, torch.Size)):
        raise TypeError(f"{fn}: argument '{arg}' expected an int or a tuple of {spatial} ints but got {value!r}")
    values = [single] * spatial if single is not None else [as_int(v) for v in value]
    if len(values) == 1:
        values = values * spatial
    if len(values) != spatial or any(v is None for v in values):
        raise ValueError(f"{fn}: argument '{arg}' expected an int or {spatial} ints but got {value!r}")
    if any(v < minimum for v in values):
        expected = "positive values" if minimum == 1 else "non-negative values"
        raise ValueError(f"{fn}: argument '{arg}' expected {expected} but got {value!r}")
    return values


def _padding(fn: str, padding, weight: torch.Tensor, stride: list[int], dilation: list[int], spatial: int):
    """(padding_begin, padding_end) from an int, a tuple, "valid" or "same".

    "same" pads D·(K − 1) in total per dim, the extra element of an odd total at the end, as torch.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return [0] * spatial, [0] * spatial
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{fn}: argument 'padding' 'same' expected stride 1 but got stride {tuple(stride)}")
            total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
            return [t // 2 for t in total], [t - t // 2 for t in total]
        raise ValueError(f"{fn}: argument 'padding' expected an int, a tuple, 'same' or 'valid' but got {padding!r}")
    begin = _ints(fn, "padding", padding, spatial, 0)
    return begin, list(begin)


def _check_ranks(fn: str, x: torch.Tensor, weight: torch.Tensor, spatial: int) -> None:
    if x.dim() != spatial + 2:
        raise ValueError(f"{fn}: argument 'x' expected {spatial + 2} dimensions (N, C, spatial) but got shape "
                         f"{tuple(x.shape)}")  # fmt: skip
    if weight.dim() != spatial + 2:
        raise ValueError(f"{fn}: argument 'weight' expected {spatial + 2} dimensions but got shape {tuple(weight.shape)}")


def _check_groups(fn: str, x: torch.Tensor, groups: int) -> None:
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or x.shape[1] % groups:
        raise ValueError(f"{fn}: argument 'groups' expected a positive divisor of the {x.shape[1]} input channels of "
                         f"x but got {groups!r}")  # fmt: skip


def _conv_output_shape(fn, x, weight, stride, padding_begin, padding_end, dilation, groups) -> list[int]:
    """(N, C_out, *O) with O = ⌊(I + P_begin + P_end − D·(K − 1) − 1)/S⌋ + 1; errors as the kernels'."""
    spatial = x.dim() - 2
    _check_ranks(fn, x, weight, spatial)
    _check_groups(fn, x, groups)
    if weight.shape[1] != x.shape[1] // groups:
        raise ValueError(f"{fn}: argument 'weight' expected {x.shape[1] // groups} input channels per group "
                         f"(x has {x.shape[1]} channels in {groups} groups) but got shape {tuple(weight.shape)}")
    if weight.shape[0] % groups:
        raise ValueError(f"{fn}: argument 'weight' expected a number of output channels divisible by groups = "
                         f"{groups} but got shape {tuple(weight.shape)}")  # fmt: skip
    out = []
    for d in range(spatial):
        padded = x.shape[2 + d] + padding_begin[d] + padding_end[d]
        span = dilation[d] * (weight.shape[2 + d] - 1) + 1
        if weight.shape[2 + d] < 1 or padded < span:
            raise ValueError(f"{fn}: argument 'weight' expected a kernel whose dilated size {span} fits the padded "
                             f"input size {padded} in spatial dimension {d} but got kernel shape "
                             f"{tuple(weight.shape)} for x of shape {tuple(x.shape)}")  # fmt: skip
        out.append((padded - span) // stride[d] + 1)
    return [x.shape[0], weight.shape[0], *out]


def _transpose_output_shape(fn, x, weight, stride, padding, output_padding, dilation, groups) -> list[int]:
    """(N, C_out, *O) with O = (I − 1)·S − 2P + D·(K − 1) + 1 + output_padding."""
    spatial = x.dim() - 2
    _check_ranks(fn, x, weight, spatial)
    _check_groups(fn, x, groups)
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"{fn}: argument 'weight' expected {x.shape[1]} rows (the input channels of x) in shape "
                         f"(C_in, C_out/groups, kernel) but got {tuple(weight.shape)}")  # fmt: skip
    out = []
    for d in range(spatial):
        limit = max(stride[d], dilation[d])
        if output_padding[d] >= limit:
            raise ValueError(f"{fn}: argument 'output_padding' expected values smaller than max(stride, dilation) = "
                             f"{limit} but got {tuple(output_padding)}")  # fmt: skip
        size = (x.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.shape[2 + d] - 1) + 1
        if weight.shape[2 + d] < 1 or size + output_padding[d] < 1:  # torch's rule: the total, output_padding included
            raise ValueError(f"{fn}: argument 'padding' expected a padding that leaves a positive output size but "
                             f"got padding {tuple(padding)} for x of shape {tuple(x.shape)} and weight of shape "
                             f"{tuple(weight.shape)}")  # fmt: skip
        out.append(size + output_padding[d])
    return [x.shape[0], weight.shape[1] * groups, *out]


def _batched(fn: str, x: torch.Tensor, spatial: int) -> tuple[torch.Tensor, bool]:
    """torch.nn.functional accepts unbatched (C, *spatial) inputs: add the batch dim."""
    if x.dim() == spatial + 1:
        return x.unsqueeze(0), True
    return x, False


# ========================================================================================= conv


def _conv_impl(fn, x, weight, bias, stride, padding_begin, padding_end, dilation, groups):
    x, weight = x.contiguous(), weight.contiguous()
    y = x.new_empty(_conv_output_shape(fn, x, weight, stride, padding_begin, padding_end, dilation, groups))
    geometry = (stride, padding_begin, padding_end, dilation, groups)
    ws = _native.workspace("conv_forward", x, x, weight, *geometry, y)
    _native.launch("conv_forward", x, x, weight, _contiguous(bias), *geometry, y, ws)
    return y


def _conv_fake(fn, x, weight, bias, stride, padding_begin, padding_end, dilation, groups):
    _check_devices(fn, x, weight=weight, bias=bias)
    return x.new_empty(_conv_output_shape(fn, x, weight, stride, padding_begin, padding_end, dilation, groups))


def _conv_backward_impl(grad_y, x, weight, stride, padding_begin, padding_end, dilation, groups, mask):
    x, weight, grad_y = x.contiguous(), weight.contiguous(), grad_y.contiguous()
    dx, dw = _empty_or_none(mask[0], x), _empty_or_none(mask[1], weight)
    db = _empty_or_none(mask[2], x, [weight.shape[0]])
    geometry = (stride, padding_begin, padding_end, dilation, groups)
    ws = _native.workspace("conv_backward", x, grad_y, x, weight, *geometry) if mask[0] or mask[1] else None
    _native.launch("conv_backward", x, grad_y, x, weight, *geometry, dx, dw, db, ws)
    return dx, dw, db


def _conv_backward_fake(grad_y, x, weight, stride, padding_begin, padding_end, dilation, groups, mask):
    return _empty_or_none(mask[0], x), _empty_or_none(mask[1], weight), _empty_or_none(mask[2], x, [weight.shape[0]])


def _conv_backward_setup(ctx, inputs, output):
    grad_y, x, weight, *geometry, _mask = inputs
    ctx.geometry = geometry
    ctx.save_for_backward(grad_y, x, weight)


def _bilinear_double_backward(ctx, grad_dx, grad_dw, grad_db, forward, backward):
    """Double backward of a convolution-like y = T(x, w) + b, T bilinear, from its first backward
    (dx, dw, db) = (T_xᵀ dy, T_wᵀ dy, Σ dy): dx is linear in dy and in w, dw in dy and in x, so

        ∂/∂dy = T(g_dx, w) + T(x, g_dw) + g_db (broadcast),
        ∂/∂x  = backward(dy, x, g_dw).dx,        ∂/∂w = backward(dy, g_dx, w).dw,

    with `forward(x, w)` = T and `backward(dy, x, w, mask)` the native ops: what a gradient penalty
    or i-ResNet's differentiable log-determinant needs. ctx saved (dy, x, w)."""
    grad_y, x, weight = ctx.saved_tensors
    need = ctx.needs_input_grad  # (grad_y, x, weight, ...)
    d_grad_y = d_x = d_weight = None
    if need[0]:
        terms = [forward(grad_dx, weight)] if grad_dx is not None else []
        if grad_dw is not None:
            terms.append(forward(x, grad_dw))
        if grad_db is not None:
            terms.append(grad_db.reshape(1, -1, *[1] * (x.dim() - 2)).expand_as(grad_y))
        d_grad_y = sum(terms[1:], terms[0]) if terms else None
    if need[1] and grad_dw is not None:
        d_x = backward(grad_y, x, grad_dw, [True, False, False])[0]
    if need[2] and grad_dx is not None:
        d_weight = backward(grad_y, grad_dx, weight, [False, True, False])[1]
    return d_grad_y, d_x, d_weight


def _conv_backward_grad(ctx, grad_dx, grad_dw, grad_db):
    conv = _conv1d if ctx.saved_tensors[1].dim() == 3 else _conv2d
    grads = _bilinear_double_backward(
        ctx, grad_dx, grad_dw, grad_db,
        lambda x, w: conv(x, w, None, *ctx.geometry),
        lambda dy, x, w, mask: _conv_backward(dy, x, w, *ctx.geometry, mask),
    )  # fmt: skip
    return grads + (None,) * 6


_conv_backward = define(
    "conv_backward(Tensor grad_y, Tensor x, Tensor weight, int[] stride, int[] padding_begin, int[] padding_end, "
    "int[] dilation, int groups, bool[3] output_mask) -> (Tensor?, Tensor?, Tensor?)",
    _conv_backward_impl,
    _conv_backward_fake,
    backward=_conv_backward_grad,
    setup_context=_conv_backward_setup,
    # Its formula is made of conv and conv_backward again, both differentiable: any order.
    differentiable_backward=True,
)


def _conv_setup(ctx, inputs, output):
    x, weight, _bias, *geometry = inputs
    ctx.geometry = geometry
    ctx.save_for_backward(x, weight)


def _conv_grad(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need = ctx.needs_input_grad  # (x, weight, bias, stride, padding_begin, padding_end, dilation, groups)
    dx, dw, db = _conv_backward(grad_y, x, weight, *ctx.geometry, [need[0], need[1], need[2]])
    return dx, dw, db, None, None, None, None, None


_CONV_SCHEMA = ("(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding_begin, int[] padding_end, "
                "int[] dilation, int groups) -> Tensor")  # fmt: skip
_conv1d, _conv2d = (
    define(name + _CONV_SCHEMA, functools.partial(_conv_impl, name), functools.partial(_conv_fake, name),
           backward=_conv_grad, setup_context=_conv_setup, differentiable_backward=True)  # fmt: skip
    for name in ("conv1d", "conv2d")
)


def _conv_public(fn, op, spatial, x, weight, bias, stride, padding, dilation, groups):
    check_tensor(fn, "x", x)
    check_tensor(fn, "weight", weight)
    check_tensor(fn, "bias", bias, optional=True)
    x, unbatched = _batched(fn, x, spatial)
    _check_ranks(fn, x, weight, spatial)
    stride = _ints(fn, "stride", stride, spatial, 1)
    dilation = _ints(fn, "dilation", dilation, spatial, 1)
    begin, end = _padding(fn, padding, weight, stride, dilation, spatial)
    y = op(x, weight, bias, stride, begin, end, dilation, groups)
    return y.squeeze(0) if unbatched else y


def conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _IntOrSeq = 1,
    padding: _IntOrSeq | str = 0,
    dilation: _IntOrSeq = 1,
    groups: int = 1,
) -> torch.Tensor:
    """1-D convolution (cross-correlation, as in deep learning), `torch.nn.functional.conv1d`'s signature.

    Args:
        x: (N, C_in, L) or unbatched (C_in, L); float32/float64 on CPU, float32/16/bfloat16 on CUDA.
        weight: (C_out, C_in/groups, K).
        bias: optional (C_out).
        stride, dilation: an int or a 1-tuple.
        padding: zeros on both sides: an int, a 1-tuple, "valid" (none) or "same" (output length L;
            stride 1 only; an odd total puts the extra zero at the end).
        groups: C_in and C_out split into this many independent groups.

    Returns:
        (N, C_out, ⌊(L + 2P − D·(K − 1) − 1)/S⌋ + 1).
    """
    return _conv_public("conv1d", _conv1d, 1, x, weight, bias, stride, padding, dilation, groups)


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _IntOrSeq = 1,
    padding: _IntOrSeq | str = 0,
    dilation: _IntOrSeq = 1,
    groups: int = 1,
) -> torch.Tensor:
    """2-D convolution, `torch.nn.functional.conv2d`'s signature and result.

    Args:
        x: (N, C_in, H, W) or unbatched (C_in, H, W); channels-last inputs are accepted (copied to
            NCHW first).
        weight: (C_out, C_in/groups, kH, kW).
        bias: optional (C_out).
        stride, dilation: an int or an (h, w) pair.
        padding: an int, an (h, w) pair, "valid" or "same" (stride 1 only).
        groups: groups = C_in with C_out a multiple of it is a depthwise convolution.

    Returns:
        (N, C_out, H_out, W_out), each ⌊(I + 2P − D·(K − 1) − 1)/S⌋ + 1.
    """
    return _conv_public("conv2d", _conv2d, 2, x, weight, bias, stride, padding, dilation, groups)


# ================================================================================ causal conv1d


def _causal_geometry(weight, stride, dilation):
    k = weight.shape[-1] if weight.dim() == 3 else 1
    return [stride], [dilation * (k - 1)], [0], [dilation]


def _causal_impl(x, weight, bias, stride, dilation, groups):
    s, begin, end, d = _causal_geometry(weight, stride, dilation)
    return _conv_impl("dilated_causal_conv1d", x, weight, bias, s, begin, end, d, groups)


def _causal_fake(x, weight, bias, stride, dilation, groups):
    s, begin, end, d = _causal_geometry(weight, stride, dilation)
    return _conv_fake("dilated_causal_conv1d", x, weight, bias, s, begin, end, d, groups)


def _causal_setup(ctx, inputs, output):
    x, weight, _bias, stride, dilation, groups = inputs
    ctx.geometry = (*_causal_geometry(weight, stride, dilation), groups)
    ctx.save_for_backward(x, weight)


def _causal_grad(ctx, grad_y):
    return _conv_grad(ctx, grad_y)[:3] + (None, None, None)


_causal_conv1d = define(
    "dilated_causal_conv1d(Tensor x, Tensor weight, Tensor? bias, int stride, int dilation, int groups) -> Tensor",
    _causal_impl,
    _causal_fake,
    backward=_causal_grad,
    setup_context=_causal_setup,
    differentiable_backward=True,
)


def dilated_causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Causal dilated 1-D convolution: D·(K − 1) zeros before x and none after (WaveNet, ByteNet).

    y[t] depends on x[t'] for t' ≤ t·S only; with stride 1 the output has x's length. Equals
    `conv1d(F.pad(x, (dilation·(K − 1), 0)), weight, bias, stride, 0, dilation, groups)`.

    Args:
        x: (N, C_in, L) or unbatched (C_in, L).
        weight: (C_out, C_in/groups, K).
        bias: optional (C_out).
        stride: an int.
        dilation: an int; WaveNet doubles it layer by layer (1, 2, 4, ..., 512).
        groups: as conv1d.

    Returns:
        (N, C_out, ⌊(L − 1)/S⌋ + 1).
    """
    fn = "dilated_causal_conv1d"
    check_tensor(fn, "x", x)
    check_tensor(fn, "weight", weight)
    check_tensor(fn, "bias", bias, optional=True)
    x, unbatched = _batched(fn, x, 1)
    _check_ranks(fn, x, weight, 1)
    stride = _ints(fn, "stride", stride, 1, 1)[0]
    dilation = _ints(fn, "dilation", dilation, 1, 1)[0]
    y = _causal_conv1d(x, weight, bias, stride, dilation, groups)
    return y.squeeze(0) if unbatched else y


# ============================================================================== conv_transpose


def _conv_transpose_impl(fn, x, weight, bias, stride, padding, output_padding, dilation, groups):
    x, weight = x.contiguous(), weight.contiguous()
    shape = _transpose_output_shape(fn, x, weight, stride, padding, output_padding, dilation, groups)
    y = x.new_empty(shape)
    geometry = (stride, padding, dilation, groups)
    ws = _native.workspace("conv_transpose_forward", x, x, weight, *geometry, y)
    _native.launch("conv_transpose_forward", x, x, weight, _contiguous(bias), *geometry, y, ws)
    return y


def _conv_transpose_fake(fn, x, weight, bias, stride, padding, output_padding, dilation, groups):
    _check_devices(fn, x, weight=weight, bias=bias)
    shape = _transpose_output_shape(fn, x, weight, stride, padding, output_padding, dilation, groups)
    return x.new_empty(shape)


def _conv_transpose_backward_impl(grad_y, x, weight, stride, padding, dilation, groups, mask):
    x, weight, grad_y = x.contiguous(), weight.contiguous(), grad_y.contiguous()
    dx, dw = _empty_or_none(mask[0], x), _empty_or_none(mask[1], weight)
    db = _empty_or_none(mask[2], x, [weight.shape[1] * groups])
    geometry = (stride, padding, dilation, groups)
    ws = _native.workspace("conv_transpose_backward", x, grad_y, x, weight, *geometry) if mask[0] or mask[1] else None
    _native.launch("conv_transpose_backward", x, grad_y, x, weight, *geometry, dx, dw, db, ws)
    return dx, dw, db


def _conv_transpose_backward_fake(grad_y, x, weight, stride, padding, dilation, groups, mask):
    db = _empty_or_none(mask[2], x, [weight.shape[1] * groups])
    return _empty_or_none(mask[0], x), _empty_or_none(mask[1], weight), db


def _conv_transpose_backward_grad(ctx, grad_dx, grad_dw, grad_db):
    grad_y, x, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.geometry
    transpose = _conv_transpose1d if x.dim() == 3 else _conv_transpose2d
    # T(·, w) must give grad_y's size: the output padding the forward had, recovered from the shapes.
    spatial = x.dim() - 2
    unpadded = _transpose_output_shape("conv_transpose_backward", x, weight, stride, padding, [0] * spatial, dilation,
                                       groups)  # fmt: skip
    output_padding = [size - natural for size, natural in zip(grad_y.shape[2:], unpadded[2:])]
    grads = _bilinear_double_backward(
        ctx, grad_dx, grad_dw, grad_db,
        lambda a, w: transpose(a, w, None, stride, padding, output_padding, dilation, groups),
        lambda dy, a, w, mask: _conv_transpose_backward(dy, a, w, *ctx.geometry, mask),
    )  # fmt: skip
    return grads + (None,) * 5


_conv_transpose_backward = define(
    "conv_transpose_backward(Tensor grad_y, Tensor x, Tensor weight, int[] stride, int[] padding, int[] dilation, "
    "int groups, bool[3] output_mask) -> (Tensor?, Tensor?, Tensor?)",
    _conv_transpose_backward_impl,
    _conv_transpose_backward_fake,
    backward=_conv_transpose_backward_grad,
    setup_context=_conv_backward_setup,
    # Its formula is made of the transposed convolution and conv_transpose_backward again: any order.
    differentiable_backward=True,
)


def _conv_transpose_setup(ctx, inputs, output):
    x, weight, _bias, stride, padding, _output_padding, dilation, groups = inputs
    ctx.geometry = (stride, padding, dilation, groups)
    ctx.save_for_backward(x, weight)


def _conv_transpose_grad(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dw, db = _conv_transpose_backward(grad_y, x, weight, *ctx.geometry, [need[0], need[1], need[2]])
    return dx, dw, db, None, None, None, None, None


_TRANSPOSE_SCHEMA = ("(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] output_padding, "
                     "int[] dilation, int groups) -> Tensor")  # fmt: skip
_conv_transpose1d, _conv_transpose2d = (
    define(name + _TRANSPOSE_SCHEMA, functools.partial(_conv_transpose_impl, name),
           functools.partial(_conv_transpose_fake, name), backward=_conv_transpose_grad,
           setup_context=_conv_transpose_setup, differentiable_backward=True)  # fmt: skip
    for name in ("conv_transpose1d", "conv_transpose2d")
)


def _conv_transpose_public(fn, op, spatial, x, weight, bias, stride, padding, output_padding, groups, dilation):
    check_tensor(fn, "x", x)
    check_tensor(fn, "weight", weight)
    check_tensor(fn, "bias", bias, optional=True)
    x, unbatched = _batched(fn, x, spatial)
    _check_ranks(fn, x, weight, spatial)
    stride = _ints(fn, "stride", stride, spatial, 1)
    padding = _ints(fn, "padding", padding, spatial, 0)
    output_padding = _ints(fn, "output_padding", output_padding, spatial, 0)
    dilation = _ints(fn, "dilation", dilation, spatial, 1)
    y = op(x, weight, bias, stride, padding, output_padding, dilation, groups)
    return y.squeeze(0) if unbatched else y


def conv_transpose1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _IntOrSeq = 1,
    padding: _IntOrSeq = 0,
    output_padding: _IntOrSeq = 0,
    groups: int = 1,
    dilation: _IntOrSeq = 1,
) -> torch.Tensor:
    """1-D transposed convolution (the adjoint of conv1d in x), `torch.nn.functional.conv_transpose1d`'s
    signature (note: groups before dilation).

    Args:
        x: (N, C_in, L) or unbatched (C_in, L).
        weight: (C_in, C_out/groups, K).
        bias: optional (C_out).
        stride, padding, dilation: as the conv1d this is the adjoint of.
        output_padding: extra length at the end, 0 ≤ output_padding < max(stride, dilation).
        groups: as conv1d.

    Returns:
        (N, C_out, (L − 1)·S − 2P + D·(K − 1) + 1 + output_padding).
    """
    return _conv_transpose_public("conv_transpose1d", _conv_transpose1d, 1, x, weight, bias, stride, padding,
                                  output_padding, groups, dilation)  # fmt: skip


def conv_transpose2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _IntOrSeq = 1,
    padding: _IntOrSeq = 0,
    output_padding: _IntOrSeq = 0,
    groups: int = 1,
    dilation: _IntOrSeq = 1,
) -> torch.Tensor:
    """2-D transposed convolution, `torch.nn.functional.conv_transpose2d`'s signature and result.

    Args:
        x: (N, C_in, H, W) or unbatched (C_in, H, W).
        weight: (C_in, C_out/groups, kH, kW).
        bias: optional (C_out).
        stride, padding, output_padding, dilation: ints or (h, w) pairs.
        groups: as conv2d.

    Returns:
        (N, C_out, H_out, W_out), each (I − 1)·S − 2P + D·(K − 1) + 1 + output_padding.
    """
    return _conv_transpose_public("conv_transpose2d", _conv_transpose2d, 2, x, weight, bias, stride, padding,
                                  output_padding, groups, dilation)  # fmt: skip


# ================================================================================== references


def _taps(kernel: Sequence[int]) -> Iterable[tuple[int, ...]]:
    return itertools.product(*[range(k) for k in kernel])


def _strided(tap, dilation, stride, size):
    """The slices x[k·D + o·S for o < size] of one kernel tap, per spatial dim."""
    return tuple(slice(t * d, t * d + s * (o - 1) + 1, s) for t, d, s, o in zip(tap, dilation, stride, size))


def _conv_reference(x, weight, bias, stride, padding_begin, padding_end, dilation, groups):
    """y = Σ over kernel taps of (strided slice of zero-padded x) · w[..., tap], per group."""
    spatial = x.dim() - 2
    pads = [p for d in reversed(range(spatial)) for p in (padding_begin[d], padding_end[d])]
    xp = F.pad(x, pads)
    n, c = x.shape[:2]
    kernel = weight.shape[2:]
    out = [(xp.shape[2 + d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in range(spatial)]
    xg = xp.reshape(n, groups, c // groups, *xp.shape[2:])
    wg = weight.reshape(groups, weight.shape[0] // groups, c // groups, *kernel)
    y = 0
    for tap in _taps(kernel):
        patch = xg[(..., *_strided(tap, dilation, stride, out))]  # (N, G, Ci, *out)
        y = y + torch.einsum("ngc...,goc->ngo...", patch, wg[(..., *tap)])
    y = y.reshape(n, weight.shape[0], *out)
    return y if bias is None else y + bias.reshape(1, -1, *[1] * spatial)


def _conv_transpose_reference(x, weight, bias, stride, padding, output_padding, groups, dilation):
    """The adjoint: each x[n, c, i] · w[c, o, tap] lands on y[n, o, i·S + tap·D − P]."""
    spatial = x.dim() - 2
    n, c = x.shape[:2]
    size, kernel, per_group = x.shape[2:], weight.shape[2:], weight.shape[1]
    full = [(size[d] - 1) * stride[d] + dilation[d] * (kernel[d] - 1) + 1 + output_padding[d] for d in range(spatial)]
    xg = x.reshape(n, groups, c // groups, *size)
    wg = weight.reshape(groups, c // groups, per_group, *kernel)
    y = x.new_zeros(n, groups, per_group, *full)
    for tap in _taps(kernel):
        y[(..., *_strided(tap, dilation, stride, size))] += torch.einsum("ngc...,gco->ngo...", xg, wg[(..., *tap)])
    y = y.reshape(n, groups * per_group, *full)
    y = y[(..., *(slice(padding[d], full[d] - padding[d]) for d in range(spatial)))]
    return y if bias is None else y + bias.reshape(1, -1, *[1] * spatial)


def _reference_public(spatial, transpose=False, causal=False):
    """The reference with the public signature (normalizing arguments as the public function does)."""

    def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        s = _ints("reference", "stride", stride, spatial, 1)
        d = _ints("reference", "dilation", dilation, spatial, 1)
        begin, end = _padding("reference", padding, weight, s, d, spatial)
        return _conv_reference(x, weight, bias, s, begin, end, d, groups)

    def causal_conv(x, weight, bias=None, stride=1, dilation=1, groups=1):
        k = weight.shape[-1]
        return _conv_reference(x, weight, bias, [stride], [dilation * (k - 1)], [0], [dilation], groups)

    def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
        args = [_ints("reference", a, v, spatial, 0) for a, v in
                (("stride", stride), ("padding", padding), ("output_padding", output_padding), ("dilation", dilation))]  # fmt: skip
        s, p, op, d = args
        return _conv_transpose_reference(x, weight, bias, s, p, op, groups, d)

    return causal_conv if causal else conv_transpose if transpose else conv


def _causal_torch(x, weight, bias=None, stride=1, dilation=1, groups=1):
    """PyTorch's way of writing a causal convolution: left padding, then conv1d."""
    return F.conv1d(F.pad(x, (dilation * (weight.shape[-1] - 1), 0)), weight, bias, stride, 0, dilation, groups)


# ===================================================================================== samples

# conv2d cases: (N, C_in, C_out, (H, W), kernel, stride, padding, dilation, groups, bias). Odd sizes,
# batch 1, rectangular kernels and strides, "same" with even kernels, depthwise with a channel
# multiplier, pointwise, and a kernel that exactly fills the padded input.
_CONV2D_CASES = [
    (2, 3, 4, (7, 9), 3, 1, 1, 1, 1, True),
    (1, 4, 6, (8, 8), (3, 2), 2, 0, 1, 2, True),
    (3, 6, 6, (11, 10), 3, 1, 2, 2, 6, True),
    (2, 4, 8, (9, 7), 5, 2, 2, 1, 4, False),
    (2, 5, 5, (13, 12), 7, 2, 3, 1, 5, True),
    (5, 8, 7, (6, 6), 1, 1, 0, 1, 1, True),
    (2, 3, 2, (5, 5), 2, (3, 2), (1, 0), (2, 1), 1, True),
    (1, 4, 4, (6, 7), 3, 1, "same", 2, 1, True),
    (2, 2, 3, (5, 6), 4, 1, "same", 1, 1, False),
    (2, 4, 2, (6, 5), 3, 1, "valid", 1, 2, True),
    (1, 2, 3, (3, 4), (5, 6), 1, (1, 1), 1, 1, True),
    (1, 1, 1, (1, 1), 1, 1, 0, 1, 1, False),
]
# conv1d cases: (N, C_in, C_out, L, kernel, stride, padding, dilation, groups, bias)
_CONV1D_CASES = [
    (2, 3, 4, 17, 3, 1, 1, 1, 1, True),
    (1, 4, 6, 20, 4, 3, 2, 2, 2, True),
    (3, 6, 12, 15, 5, 2, 0, 1, 6, False),
    (2, 8, 8, 16, 2, 1, 0, 4, 1, True),
    (2, 4, 4, 9, 3, 1, "same", 3, 4, True),
    (1, 3, 2, 7, 2, 1, "same", 1, 1, True),
    (4, 5, 3, 1, 1, 1, 0, 1, 1, True),
]
# causal conv1d cases: (N, C_in, C_out, L, kernel, stride, dilation, groups, bias)
_CAUSAL_CASES = [
    (2, 4, 6, 17, 2, 1, 4, 1, True),
    (1, 3, 3, 9, 3, 1, 1, 3, True),
    (3, 4, 8, 33, 2, 1, 8, 2, False),
    (2, 2, 4, 11, 3, 2, 2, 1, True),
]
# Small float64 cases for gradcheck (each input element costs two evaluations): dense with padding,
# strided+dilated+grouped, depthwise with a multiplier, "same" with an even kernel, pointwise.
_CONV2D_GRAD_CASES = [
    (2, 2, 3, (4, 5), 3, 1, 1, 1, 1, True),
    (1, 4, 2, (5, 6), (2, 3), 2, (1, 0), (1, 2), 2, True),
    (2, 2, 4, (5, 4), 3, 2, 1, 1, 2, False),
    (1, 2, 2, (3, 4), 2, 1, "same", 1, 1, True),
    (2, 3, 2, (2, 3), 1, 1, 0, 1, 1, True),
]
_CONV1D_GRAD_CASES = [
    (2, 2, 3, 7, 3, 2, 1, 2, 1, True),
    (1, 4, 4, 6, 2, 1, "same", 1, 4, True),
]
_CAUSAL_GRAD_CASES = [
    (2, 2, 3, 9, 2, 1, 3, 1, True),
    (1, 2, 2, 7, 3, 2, 1, 2, False),
]
_TRANSPOSE2D_GRAD_CASES = [
    (1, 2, 3, (3, 4), 3, 2, 1, 1, 1, 1, True),
    (2, 4, 2, (2, 3), (2, 3), (2, 1), 0, (1, 0), 2, (1, 2), False),
]
_TRANSPOSE1D_GRAD_CASES = [(2, 2, 4, 4, 3, 2, 1, 1, 2, 1, True)]
# conv_transpose2d cases: (N, C_in, C_out, (H, W), kernel, stride, padding, output_padding, groups, dilation, bias)
_TRANSPOSE2D_CASES = [
    (2, 4, 3, (5, 6), 4, 2, 1, 0, 1, 1, True),
    (1, 6, 4, (4, 3), 3, 2, 1, 1, 2, 1, True),
    (2, 3, 5, (3, 5), (2, 3), (3, 2), (0, 1), (2, 1), 1, 1, False),
    (3, 4, 4, (6, 5), 3, 1, 1, 0, 4, 2, True),
    (2, 2, 2, (4, 4), 3, 1, 0, 1, 1, 2, True),
    (1, 1, 1, (1, 1), 1, 1, 0, 0, 1, 1, True),
]
# conv_transpose1d cases: (N, C_in, C_out, L, kernel, stride, padding, output_padding, groups, dilation, bias)
_TRANSPOSE1D_CASES = [
    (2, 4, 3, 9, 4, 2, 1, 1, 1, 1, True),
    (1, 6, 6, 7, 3, 3, 2, 2, 3, 2, True),
    (3, 2, 4, 5, 5, 1, 0, 0, 2, 1, False),
]


def _conv_sample(spatial, case, dtype, device, gen) -> Sample:
    n, cin, cout, size, k, stride, padding, dilation, groups, bias = case
    size = (size,) if spatial == 1 else size
    kernel = (k,) * spatial if isinstance(k, int) else k
    x = _randn((n, cin, *size), dtype, device, gen)
    fan_in = cin // groups * math.prod(kernel)
    w = _randn((cout, cin // groups, *kernel), dtype, device, gen, scale=fan_in**-0.5)
    b = _randn((cout,), dtype, device, gen) if bias else None
    return Sample((x, w, b, stride, padding, dilation, groups), name=f"k{k}s{stride}p{padding}d{dilation}g{groups}")


def _transpose_sample(spatial, case, dtype, device, gen) -> Sample:
    n, cin, cout, size, k, stride, padding, output_padding, groups, dilation, bias = case
    size = (size,) if spatial == 1 else size
    kernel = (k,) * spatial if isinstance(k, int) else k
    x = _randn((n, cin, *size), dtype, device, gen)
    w = _randn((cin, cout // groups, *kernel), dtype, device, gen, scale=0.5)
    b = _randn((cout,), dtype, device, gen) if bias else None
    return Sample((x, w, b, stride, padding, output_padding, groups, dilation),
                  name=f"k{k}s{stride}p{padding}op{output_padding}g{groups}d{dilation}")  # fmt: skip


def _causal_sample(case, dtype, device, gen) -> Sample:
    n, cin, cout, length, k, stride, dilation, groups, bias = case
    x = _randn((n, cin, length), dtype, device, gen)
    w = _randn((cout, cin // groups, k), dtype, device, gen, scale=0.5)
    b = _randn((cout,), dtype, device, gen) if bias else None
    return Sample((x, w, b, stride, dilation, groups), name=f"k{k}s{stride}d{dilation}g{groups}")


def _conv_bad_inputs(public, spatial, device) -> Iterable[BadInput]:
    """Bad inputs of conv1d, conv2d and dilated_causal_conv1d (which has no padding argument)."""
    size = (6,) * spatial
    x = torch.randn(2, 4, *size, device=device)
    w = torch.randn(6, 2, *(3,) * spatial, device=device)
    yield BadInput((x.long(), w), {"groups": 2}, TypeError, "'x'", "integer x")
    yield BadInput(([[1.0]], w), {}, TypeError, "'x'", "x not a tensor")
    yield BadInput((x, w.double()), {"groups": 2}, TypeError, "'weight'", "weight dtype")
    yield BadInput((x, w[..., 0]), {"groups": 2}, ValueError, "'weight'", "weight rank")
    yield BadInput((x, w), {"groups": 3}, ValueError, "'groups'", "channels not divisible by groups")
    yield BadInput((x, w), {}, ValueError, "'weight'", "input channels per group")
    yield BadInput((x, w, torch.zeros(5, device=device)), {"groups": 2}, ValueError, "'bias'", "bias shape")
    yield BadInput((x, w, torch.zeros(6, device="meta")), {"groups": 2}, ValueError, "'bias'", "bias device")
    yield BadInput((x, w), {"groups": 2, "stride": 0}, ValueError, "'stride'", "zero stride")
    yield BadInput((x, w), {"groups": 2, "dilation": -1}, ValueError, "'dilation'", "negative dilation")
    if public is dilated_causal_conv1d:
        return
    big = torch.randn(6, 2, *(9,) * spatial, device=device)
    yield BadInput((x, big), {"groups": 2}, ValueError, "'weight'", "kernel larger than the padded input")
    yield BadInput((x, w), {"groups": 2, "dilation": 4}, ValueError, "'weight'", "dilated kernel larger than the input")
    yield BadInput((x, w), {"groups": 2, "padding": -1}, ValueError, "'padding'", "negative padding")
    yield BadInput((x, w), {"groups": 2, "padding": "same", "stride": 2}, ValueError, "'padding'", "'same' with a stride")
    yield BadInput((x, w), {"groups": 2, "padding": "full"}, ValueError, "'padding'", "unknown padding")


def _transpose_bad_inputs(spatial, device) -> Iterable[BadInput]:
    size = (5,) * spatial
    x = torch.randn(2, 4, *size, device=device)
    w = torch.randn(4, 3, *(3,) * spatial, device=device)
    yield BadInput((x.long(), w), {}, TypeError, "'x'", "integer x")
    yield BadInput((x, w.double()), {}, TypeError, "'weight'", "weight dtype")
    yield BadInput((x, w[:3]), {}, ValueError, "'weight'", "weight rows")
    yield BadInput((x, w), {"groups": 3}, ValueError, "'groups'", "channels not divisible by groups")
    yield BadInput((x, w), {"stride": 2, "output_padding": 2}, ValueError, "'output_padding'", "output_padding ≥ stride")
    yield BadInput((x, w), {"padding": 9}, ValueError, "'padding'", "padding larger than the output")
    yield BadInput((x, w, torch.zeros(4, device=device)), {}, ValueError, "'bias'", "bias shape")
    yield BadInput((x, w), {"dilation": 0}, ValueError, "'dilation'", "zero dilation")


def _register_conv(name, public, spatial, cases, grad_cases, torch_counterpart):
    register_info(
        OpInfo(
            name=name,
            public=public,
            reference=_reference_public(spatial),
            torch_counterpart=torch_counterpart,
            samples=lambda device, dtype, gen: (_conv_sample(spatial, c, dtype, device, gen) for c in cases),
            bad_inputs=lambda device: _conv_bad_inputs(public, spatial, device),
            differentiable_args=(0, 1, 2),
            gradcheck_samples=lambda device, gen: (
                _conv_sample(spatial, c, torch.float64, device, gen) for c in grad_cases
            ),
            backward_ops=("conv_backward",),
            double_backward=True,
        )
    )


_register_conv("conv1d", conv1d, 1, _CONV1D_CASES, _CONV1D_GRAD_CASES, F.conv1d)
_register_conv("conv2d", conv2d, 2, _CONV2D_CASES, _CONV2D_GRAD_CASES, F.conv2d)

register_info(
    OpInfo(
        name="dilated_causal_conv1d",
        public=dilated_causal_conv1d,
        reference=_reference_public(1, causal=True),
        torch_counterpart=_causal_torch,
        samples=lambda device, dtype, gen: (_causal_sample(c, dtype, device, gen) for c in _CAUSAL_CASES),
        bad_inputs=lambda device: _conv_bad_inputs(dilated_causal_conv1d, 1, device),
        differentiable_args=(0, 1, 2),
        gradcheck_samples=lambda device, gen: (_causal_sample(c, torch.float64, device, gen) for c in _CAUSAL_GRAD_CASES),
        backward_ops=("conv_backward",),
        double_backward=True,
    )
)


def _register_transpose(name, public, spatial, cases, grad_cases, torch_counterpart):
    register_info(
        OpInfo(
            name=name,
            public=public,
            reference=_reference_public(spatial, transpose=True),
            torch_counterpart=torch_counterpart,
            samples=lambda device, dtype, gen: (_transpose_sample(spatial, c, dtype, device, gen) for c in cases),
            bad_inputs=lambda device: _transpose_bad_inputs(spatial, device),
            differentiable_args=(0, 1, 2),
            gradcheck_samples=lambda device, gen: (
                _transpose_sample(spatial, c, torch.float64, device, gen) for c in grad_cases
            ),
            backward_ops=("conv_transpose_backward",),
            double_backward=True,
        )
    )


_register_transpose("conv_transpose1d", conv_transpose1d, 1, _TRANSPOSE1D_CASES, _TRANSPOSE1D_GRAD_CASES,
                    F.conv_transpose1d)
_register_transpose("conv_transpose2d", conv_transpose2d, 2, _TRANSPOSE2D_CASES, _TRANSPOSE2D_GRAD_CASES,
                    F.conv_transpose2d)
