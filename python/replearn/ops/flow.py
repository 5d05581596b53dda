"""Normalizing-flow ops: affine coupling, ActNorm, invertible 1×1 convolution, planar flow.

Every op maps x to ``(y, logdet)`` with ``logdet[b] = log|det ∂y/∂x|`` for sample b (batch = dim 0)
and runs in reverse (``reverse=True``: y → x, logdet = −(forward logdet at x)). Each is a torch library
op (`torch.ops.replearn.<name>`) whose forward, reverse and backward all run native kernels
(csrc/flow), with a fake implementation for torch.compile and a plain-PyTorch `reference` written
from the equations (course notes §10):

    affine coupling   y = m·x + (1−m)·(x·σ + t),  logdet = Σ (1−m)·log σ     (Dinh et al. 2015, 2017)
    ActNorm           y = scale[c]·x + bias[c],  logdet = S·Σ log|scale|       (Kingma & Dhariwal 2018)
    1×1 convolution   y = W x per pixel, W = P·L·(U + diag(s)),  logdet = S·Σ log|s|          (Glow)
    planar flow       f = z + û·tanh(wᵀz + b),  logdet = log|1 + ûᵀψ(z)|      (Rezende & Mohamed 2015)

with S the number of pixels (product of the spatial dims). The decisions behind the mask convention,
the scale options, the LU parameterization and the planar inverse are in docs/design.md ("Flows").
"""

from __future__ import annotations

import weakref
from typing import Iterable

import torch
import torch.nn.functional as F

from .. import _native
from ._registry import BadInput, OpInfo, Sample, check_tensor, define, register_info
from .norm import _check_devices, _empty_or_none, _randn

__all__ = ["affine_coupling", "actnorm", "invconv1x1", "planar_flow", "checkerboard_mask", "channel_mask"]

_SCALES = {"exp": 0, "tanh": 1, "sigmoid": 2}


def _scale_code(fn: str, scale: str) -> int:
    if scale not in _SCALES:
        raise ValueError(f"{fn}: argument 'scale' expected one of 'exp', 'tanh', 'sigmoid' but got {scale!r}")
    return _SCALES[scale]


def _logdet_like(x: torch.Tensor) -> torch.Tensor:
    # An int, not x.shape[:1]: half the cost with cold caches. A 0-d x gets a placeholder, so that the
    # kernel's validation names 'x' (rather than an IndexError here).
    return x.new_empty(x.shape[0] if x.dim() else 0)


def _sum_per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Σ over every dim but the batch of v broadcast to like's shape: (B,)."""
    return v.expand_as(like).reshape(like.shape[0], -1).sum(1)


def _contiguous(t):
    return None if t is None else t.contiguous()


def _zeros_if_none(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if t is None else t.contiguous()


def _logdet_grad(grad_logdet: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The incoming gradient of logdet, zeros (B,) when autograd passes None."""
    return x.new_zeros(x.shape[:1]) if grad_logdet is None else grad_logdet.contiguous()


def _workspace_on_cuda(name: str, x: torch.Tensor, *args) -> torch.Tensor | None:
    """The workspace of kernel `name` for a CUDA x; None for a CPU x.

    The CPU kernels of the coupling and ActNorm need none (their *_workspace_size is 0, and the
    native validation rejects a missing buffer when it is not); asking costs a binding call and an
    allocation, ~50 µs per call with cold caches, as each call of a 1 ms benchmark starts.
    """
    return _native.workspace(name, x, x, *args) if x.is_cuda else None


# =============================================================================== affine_coupling


def checkerboard_mask(h: int, w: int, parity: int = 0, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """RealNVP's checkerboard mask, shape (1, 1, h, w): 1 where (i + j + parity) is even (passed through)."""
    i = torch.arange(h, device=device).reshape(h, 1)
    j = torch.arange(w, device=device).reshape(1, w)
    return ((i + j + parity) % 2 == 0).to(dtype).reshape(1, 1, h, w)


def channel_mask(c: int, parity: int = 0, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """RealNVP's channel mask, shape (1, c, 1, 1): 1 on the first ⌈c/2⌉ channels (parity 0) or the rest."""
    first = torch.arange(c, device=device) < (c + 1) // 2
    return (first if parity % 2 == 0 else ~first).to(dtype).reshape(1, c, 1, 1)


def _mask_shape(fn: str, mask: torch.Tensor | None, x: torch.Tensor) -> tuple | None:
    """The mask's shape without its batch dim, checked to broadcast to x's (non-batch) shape."""
    if mask is None:
        return None
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{fn}: argument 'mask' expected a bool or floating tensor but got {mask.dtype}")
    if mask.device != x.device:
        raise ValueError(f"{fn}: argument 'mask' expected a tensor on {x.device} like 'x' but got one on {mask.device}")
    features = tuple(x.shape[1:])
    shape = tuple(mask.shape)
    if len(shape) == x.dim() and x.dim() > 0 and shape[0] == 1:
        shape = shape[1:]
    ok = len(shape) <= len(features) and all(s in (1, f) for s, f in zip(reversed(shape), reversed(features)))
    if not ok:
        raise ValueError(
            f"{fn}: argument 'mask' expected a shape broadcastable to {features} (x's shape without the batch "
            f"dim, with the batch dim 1 or absent) but got {tuple(mask.shape)}"
        )
    return shape


# Flattened masks, by the mask tensor's id: (weak reference, key, flat mask) with key = (version,
# shape, dtype, x's feature shape, x's device). A coupling layer passes the same mask tensor on
# every call, and building the flat mask takes four torch ops (~120 µs per call with cold caches,
# in forward and again in backward); an entry is used only while the same tensor is alive with the
# same key (an in-place change bumps the version).
_FLAT_MASKS: dict[int, tuple] = {}
_FLAT_MASKS_MAX = 64


def _native_mask(fn: str, mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The mask as the kernels take it: bool, one value per feature of a sample, contiguous."""
    if mask is None:
        return None
    features = x.shape[1:]
    entry = _FLAT_MASKS.get(id(mask))
    version = None if mask.is_inference() else mask._version  # inference tensors have no version
    key = (version, mask.shape, mask.dtype, features, x.device)
    if entry is not None and entry[0]() is mask and version is not None and entry[1] == key:
        return entry[2]
    shape = _mask_shape(fn, mask, x)
    flat = mask
    if flat.dtype != torch.bool:
        # Values are checked where the kernel runs (a device sync for CUDA float masks; bool masks,
        # as the modules build them, need none).
        if bool(((flat != 0) & (flat != 1)).any()):
            raise ValueError(f"{fn}: argument 'mask' expected only 0 and 1 values but got others")
        flat = flat != 0
    flat = flat.reshape(shape).expand(features).contiguous().reshape(-1)
    if version is not None:
        if len(_FLAT_MASKS) >= _FLAT_MASKS_MAX:
            _FLAT_MASKS.clear()
        ident = id(mask)  # the entry goes when the mask does
        _FLAT_MASKS[ident] = (weakref.ref(mask, lambda _, ident=ident: _FLAT_MASKS.pop(ident, None)), key, flat)
    return flat


def _coupling_impl(x, shift, log_scale, mask, reverse, scale):
    code = _scale_code("affine_coupling", scale)
    m = _native_mask("affine_coupling", mask, x)
    x = x.contiguous()
    y, logdet = torch.empty_like(x), _logdet_like(x)
    ws = _workspace_on_cuda("affine_coupling", x)
    _native.launch("affine_coupling_forward", x, x, _contiguous(shift), _contiguous(log_scale), m, reverse, code, y,
                   logdet, ws)  # fmt: skip
    return y, logdet


def _coupling_fake(x, shift, log_scale, mask, reverse, scale):
    _scale_code("affine_coupling", scale)
    _mask_shape("affine_coupling", mask, x)
    _check_devices("affine_coupling", x, shift=shift, log_scale=log_scale)
    return x.new_empty(x.shape), _logdet_like(x)


def _coupling_backward_impl(grad_y, grad_logdet, x, shift, log_scale, mask, reverse, scale, output_mask):
    code = _scale_code("affine_coupling", scale)
    m = _native_mask("affine_coupling", mask, x)
    x = x.contiguous()
    grads = (
        _empty_or_none(output_mask[0], x),
        _empty_or_none(output_mask[1] and shift is not None, x),
        _empty_or_none(output_mask[2] and log_scale is not None, x),
    )
    _native.launch("affine_coupling_backward", x, grad_y.contiguous(), grad_logdet.contiguous(), x, _contiguous(shift),
                   _contiguous(log_scale), m, reverse, code, *grads)  # fmt: skip
    return grads


def _coupling_backward_fake(grad_y, grad_logdet, x, shift, log_scale, mask, reverse, scale, output_mask):
    return (
        _empty_or_none(output_mask[0], x),
        _empty_or_none(output_mask[1] and shift is not None, x),
        _empty_or_none(output_mask[2] and log_scale is not None, x),
    )


_affine_coupling_backward = define(
    "affine_coupling_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor? shift, Tensor? log_scale, "
    "Tensor? mask, bool reverse, str scale, bool[3] output_mask) -> (Tensor?, Tensor?, Tensor?)",
    _coupling_backward_impl,
    _coupling_backward_fake,
)


def _coupling_setup(ctx, inputs, output):
    x, shift, log_scale, mask, reverse, scale = inputs
    ctx.reverse, ctx.scale = reverse, scale
    ctx.save_for_backward(x, shift, log_scale, mask)


def _coupling_grad(ctx, grad_y, grad_logdet):
    x, shift, log_scale, mask = ctx.saved_tensors
    need = ctx.needs_input_grad
    grads = _affine_coupling_backward(
        _zeros_if_none(grad_y, x), _logdet_grad(grad_logdet, x), x, shift, log_scale, mask,
        ctx.reverse, ctx.scale, [need[0], need[1], need[2]],
    )  # fmt: skip
    return (*grads, None, None, None)


_affine_coupling = define(
    "affine_coupling(Tensor x, Tensor? shift, Tensor? log_scale, Tensor? mask, bool reverse, str scale) "
    "-> (Tensor, Tensor)",
    _coupling_impl,
    _coupling_fake,
    backward=_coupling_grad,
    setup_context=_coupling_setup,
)


def affine_coupling(
    x: torch.Tensor,
    shift: torch.Tensor | None = None,
    log_scale: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reverse: bool = False,
    scale: str = "exp",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine coupling transform of RealNVP (Dinh et al. 2017), additive (NICE) without log_scale.

    forward: y = m·x + (1−m)·(x·σ + t), logdet = Σ (1−m)·log σ;
    reverse: x = m·y + (1−m)·(y − t)/σ, logdet = −Σ (1−m)·log σ,
    with σ from log_scale s by `scale`: "exp" (log σ = s), "tanh" (log σ = tanh s) or "sigmoid"
    (σ = sigmoid(s + 2), Glow's released code). The conditioner that produced t and s must see only
    the passed-through part (m = 1) of x; that is the caller's business (nn.flows.AffineCoupling).

    Args:
        x: (B, *) input (y when reverse).
        shift: t, shaped like x, or None.
        log_scale: s, shaped like x, or None (additive coupling, logdet 0). At least one is given.
        mask: None (every element transformed: the split form, where x is the half x₂) or a 0/1
            bool or float tensor broadcastable to x with batch dim 1 or absent, e.g.
            `checkerboard_mask(h, w)` (1, 1, H, W), `channel_mask(c)` (1, C, 1, 1) or (D,);
            1 = passed through. It takes no gradient.
        reverse: run the inverse.
        scale: "exp", "tanh" or "sigmoid".

    Returns:
        (y, logdet) with y shaped like x and logdet (B,).
    """
    fn = "affine_coupling"
    check_tensor(fn, "x", x)
    check_tensor(fn, "shift", shift, optional=True)
    check_tensor(fn, "log_scale", log_scale, optional=True)
    check_tensor(fn, "mask", mask, optional=True)
    _scale_code(fn, scale)
    return _affine_coupling(x, shift, log_scale, mask, bool(reverse), scale)


def affine_coupling_reference(x, shift=None, log_scale=None, mask=None, reverse=False, scale="exp"):
    """The affine coupling written from its equations, in plain PyTorch."""
    t = torch.zeros_like(x) if shift is None else shift
    if log_scale is None:  # additive (NICE): σ = 1 whatever the parameterization
        log_sigma = torch.zeros_like(x)
    elif scale == "exp":
        log_sigma = log_scale
    elif scale == "tanh":
        log_sigma = torch.tanh(log_scale)
    else:
        log_sigma = F.logsigmoid(log_scale + 2)
    m = torch.zeros_like(x) if mask is None else mask.to(x.dtype)
    if mask is not None and mask.dim() == x.dim():
        m = m.reshape(mask.shape[1:])
    if reverse:
        y = m * x + (1 - m) * ((x - t) * torch.exp(-log_sigma))
    else:
        y = m * x + (1 - m) * (x * torch.exp(log_sigma) + t)
    logdet = _sum_per_sample((1 - m) * log_sigma, x) if log_scale is not None else x.new_zeros(x.shape[:1])
    return y, -logdet if reverse else logdet


# (x shape, mask builder or None, has shift, has log_scale)
_COUPLING_CASES = [
    ((4, 6), lambda dev: torch.tensor([1.0, 0, 1, 0, 1, 0], device=dev), True, True),
    ((2, 3, 5, 5), lambda dev: checkerboard_mask(5, 5, 1, device=dev, dtype=torch.bool), True, True),
    ((3, 4, 3, 3), lambda dev: channel_mask(4, device=dev), True, True),
    ((1, 7), None, True, True),
    ((3, 2, 7), None, False, True),
    ((2, 5, 4), lambda dev: torch.tensor([0, 1, 1, 0], device=dev, dtype=torch.bool), True, False),
    ((5,), None, True, True),
    ((2, 1031), None, True, True),
]


def _coupling_samples(device, dtype, gen) -> Iterable[Sample]:
    for k, (shape, make_mask, has_t, has_s) in enumerate(_COUPLING_CASES):
        for reverse in (False, True):
            scale = ("exp", "tanh", "sigmoid")[(k + reverse) % 3]
            x = _randn(shape, dtype, device, gen)
            t = _randn(shape, dtype, device, gen) if has_t else None
            s = _randn(shape, dtype, device, gen, scale=0.5) if has_s else None
            mask = make_mask(device) if make_mask else None
            yield Sample((x, t, s, mask), {"reverse": reverse, "scale": scale}, f"{scale}{'-rev' if reverse else ''}")


def _coupling_gradcheck_samples(device, gen) -> Iterable[Sample]:
    for k, (shape, make_mask, has_t, has_s) in enumerate(_COUPLING_CASES[:6]):
        small = shape
        for reverse in (False, True):
            scale = ("exp", "tanh", "sigmoid")[(k + reverse) % 3]
            x = _randn(small, torch.float64, device, gen)
            t = _randn(small, torch.float64, device, gen) if has_t else None
            s = _randn(small, torch.float64, device, gen, scale=0.5) if has_s else None
            mask = make_mask(device) if make_mask else None
            yield Sample((x, t, s, mask), {"reverse": reverse, "scale": scale})


def _coupling_bad_inputs(device) -> Iterable[BadInput]:
    x = torch.randn(2, 4, 3, 3, device=device)
    t, s = torch.randn_like(x), torch.randn_like(x)
    mask = checkerboard_mask(3, 3, device=device)
    yield BadInput((x, t[:, :3], s, mask), {}, ValueError, "'shift'", "shift shape")
    yield BadInput((x, t, s.double(), mask), {}, TypeError, "'log_scale'", "log_scale dtype")
    yield BadInput((x, None, None, mask), {}, ValueError, "'log_scale'", "neither shift nor log_scale")
    yield BadInput((x, t, s, checkerboard_mask(4, 4, device=device)), {}, ValueError, "'mask'", "mask shape")
    yield BadInput((x, t, s, mask.expand(2, 1, 3, 3)), {}, ValueError, "'mask'", "mask with a batch dim")
    yield BadInput((x, t, s, mask * 0.5), {}, ValueError, "'mask'", "mask not 0/1")
    yield BadInput((x, t, s, mask.long()), {}, TypeError, "'mask'", "integer mask")
    yield BadInput((x, t, s, mask), {"scale": "softplus"}, ValueError, "'scale'", "unknown scale")
    yield BadInput((x.long(), t, s, mask), {}, TypeError, "'x'", "integer x")
    yield BadInput((x, [1.0], s, mask), {}, TypeError, "'shift'", "shift not a tensor")
    scalar = torch.randn((), device=device)
    yield BadInput((scalar, scalar.clone(), scalar.clone(), torch.ones((), device=device)), {}, ValueError, "'x'",
                   "0-d x")  # fmt: skip


register_info(
    OpInfo(
        name="affine_coupling",
        public=affine_coupling,
        reference=affine_coupling_reference,
        torch_counterpart=affine_coupling_reference,
        samples=_coupling_samples,
        bad_inputs=_coupling_bad_inputs,
        differentiable_args=(0, 1, 2),
        gradcheck_samples=_coupling_gradcheck_samples,
        backward_ops=("affine_coupling_backward",),
    )
)


# ======================================================================================= actnorm


def _actnorm_impl(x, scale, bias, reverse):
    x = x.contiguous()
    y, logdet = torch.empty_like(x), _logdet_like(x)
    _native.launch("actnorm_forward", x, x, scale.contiguous(), bias.contiguous(), reverse, y, logdet)
    return y, logdet


def _actnorm_fake(x, scale, bias, reverse):
    _check_devices("actnorm", x, scale=scale, bias=bias)
    return x.new_empty(x.shape), _logdet_like(x)


def _actnorm_backward_impl(grad_y, grad_logdet, x, scale, bias, reverse, output_mask):
    x = x.contiguous()
    grads = (_empty_or_none(output_mask[0], x), _empty_or_none(output_mask[1], scale),
             _empty_or_none(output_mask[2], bias))  # fmt: skip
    ws = _workspace_on_cuda("actnorm_backward", x)
    _native.launch("actnorm_backward", x, grad_y.contiguous(), grad_logdet.contiguous(), x, scale.contiguous(),
                   bias.contiguous(), reverse, *grads, ws)  # fmt: skip
    return grads


_actnorm_backward = define(
    "actnorm_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor scale, Tensor bias, bool reverse, "
    "bool[3] output_mask) -> (Tensor?, Tensor?, Tensor?)",
    _actnorm_backward_impl,
    lambda grad_y, grad_logdet, x, scale, bias, reverse, mask: (
        _empty_or_none(mask[0], x), _empty_or_none(mask[1], scale), _empty_or_none(mask[2], bias)
    ),
)


def _actnorm_setup(ctx, inputs, output):
    x, scale, bias, reverse = inputs
    ctx.reverse = reverse
    ctx.save_for_backward(x, scale, bias)


def _actnorm_grad(ctx, grad_y, grad_logdet):
    x, scale, bias = ctx.saved_tensors
    need = ctx.needs_input_grad
    grads = _actnorm_backward(_zeros_if_none(grad_y, x), _logdet_grad(grad_logdet, x), x, scale, bias,
                              ctx.reverse, [need[0], need[1], need[2]])  # fmt: skip
    return (*grads, None)


_actnorm = define(
    "actnorm(Tensor x, Tensor scale, Tensor bias, bool reverse) -> (Tensor, Tensor)",
    _actnorm_impl,
    _actnorm_fake,
    backward=_actnorm_grad,
    setup_context=_actnorm_setup,
)


def actnorm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, reverse: bool = False):
    """Activation normalization of Glow (Kingma & Dhariwal 2018): a per-channel affine map.

    forward: y = scale[c]·x + bias[c], logdet = S·Σ_c log|scale_c| (S = pixels per channel);
    reverse: x = (y − bias[c]) / scale[c], logdet = −S·Σ_c log|scale_c|.

    Args:
        x: (B, C, *spatial) or (B, C).
        scale: (C,), nonzero.
        bias: (C,).
        reverse: run the inverse.

    Returns:
        (y, logdet) with y shaped like x and logdet (B,).
    """
    for arg, value in (("x", x), ("scale", scale), ("bias", bias)):
        check_tensor("actnorm", arg, value)
    return _actnorm(x, scale, bias, bool(reverse))


def _channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


def _pixels(x: torch.Tensor) -> int:
    return x[0, 0].numel() if x.dim() > 2 else 1


def actnorm_reference(x, scale, bias, reverse=False):
    """ActNorm written from its equations, in plain PyTorch."""
    a, b = _channel_view(scale, x), _channel_view(bias, x)
    logdet = (_pixels(x) * torch.log(scale.abs()).sum()).expand(x.shape[0])
    if reverse:
        return (x - b) / a, -logdet
    return a * x + b, logdet


_CHANNEL_SHAPES = [(4, 3, 5, 5), (1, 2, 3), (6, 4), (2, 3, 2, 2, 3), (3, 16, 33), (2, 1, 4, 4)]


def _signed_scale(c, dtype, device, gen):
    """Scales of both signs with |scale| in [0.5, 1.5]: invertible, and log|·| matters."""
    magnitude = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
    sign = torch.where(torch.rand(c, generator=gen, dtype=torch.float64) < 0.3, -1.0, 1.0)
    return (magnitude * sign).to(dtype).to(device)


def _actnorm_samples(device, dtype, gen) -> Iterable[Sample]:
    for k, shape in enumerate(_CHANNEL_SHAPES):
        for reverse in (False, True):
            x = _randn(shape, dtype, device, gen, scale=2.0, offset=0.5)
            scale = _signed_scale(shape[1], dtype, device, gen)
            bias = _randn(shape[1:2], dtype, device, gen)
            yield Sample((x, scale, bias), {"reverse": reverse})


def _actnorm_gradcheck_samples(device, gen) -> Iterable[Sample]:
    for shape in [(3, 2, 2, 2), (1, 3), (2, 2, 3)]:
        for reverse in (False, True):
            x = _randn(shape, torch.float64, device, gen)
            yield Sample((x, _signed_scale(shape[1], torch.float64, device, gen),
                          _randn(shape[1:2], torch.float64, device, gen)), {"reverse": reverse})  # fmt: skip


def _actnorm_bad_inputs(device) -> Iterable[BadInput]:
    x = torch.randn(2, 3, 4, device=device)
    scale, bias = torch.ones(3, device=device), torch.zeros(3, device=device)
    yield BadInput((x, torch.ones(4, device=device), bias), {}, ValueError, "'scale'", "scale size")
    yield BadInput((x, scale, torch.zeros(3, 1, device=device)), {}, ValueError, "'bias'", "bias shape")
    yield BadInput((x, scale.double(), bias), {}, TypeError, "'scale'", "scale dtype")
    yield BadInput((torch.randn(5, device=device), torch.ones(1, device=device), torch.zeros(1, device=device)), {},
                   ValueError, "'x'", "1-D x")  # fmt: skip
    yield BadInput((x.long(), scale, bias), {}, TypeError, "'x'", "integer x")
    yield BadInput((x, 1.0, bias), {}, TypeError, "'scale'", "scale not a tensor")
    yield BadInput((torch.randn((), device=device), scale, bias), {}, ValueError, "'x'", "0-d x")


register_info(
    OpInfo(
        name="actnorm",
        public=actnorm,
        reference=actnorm_reference,
        torch_counterpart=actnorm_reference,
        samples=_actnorm_samples,
        bad_inputs=_actnorm_bad_inputs,
        differentiable_args=(0, 1, 2),
        gradcheck_samples=_actnorm_gradcheck_samples,
        backward_ops=("actnorm_backward",),
    )
)


# ==================================================================================== invconv1x1


def _check_permutation(fn: str, perm: torch.Tensor, channels: int) -> None:
    """CUDA permutations are checked here (a C-element device sync); the CPU kernels check their own."""
    if perm.is_cuda and perm.dtype == torch.int64 and perm.shape == (channels,):
        if not torch.equal(perm.sort().values, torch.arange(channels, device=perm.device)):
            raise ValueError(f"{fn}: argument 'perm' expected a permutation of 0..{channels - 1} but got {perm.tolist()}")


def _invconv_impl(x, perm, lower, upper, s, reverse):
    x = x.contiguous()
    if x.dim() >= 2:
        _check_permutation("invconv1x1_forward", perm, x.shape[1])
    y, logdet = torch.empty_like(x), _logdet_like(x)
    ws = _native.workspace("invconv1x1", x, x, reverse)
    _native.launch("invconv1x1_forward", x, x, perm.contiguous(), lower.contiguous(), upper.contiguous(),
                   s.contiguous(), reverse, y, logdet, ws)  # fmt: skip
    return y, logdet


def _invconv_fake(x, perm, lower, upper, s, reverse):
    _check_devices("invconv1x1", x, perm=perm, lower=lower, upper=upper, s=s)
    return x.new_empty(x.shape), _logdet_like(x)


def _invconv_backward_impl(grad_y, grad_logdet, x, out, perm, lower, upper, s, reverse, output_mask):
    x = x.contiguous()
    grad_x = torch.empty_like(x)  # the kernel needs it even when x takes no gradient (reverse's dW)
    params = (_empty_or_none(output_mask[1], lower), _empty_or_none(output_mask[2], upper),
              _empty_or_none(output_mask[3], s))  # fmt: skip
    ws = _native.workspace("invconv1x1", x, x, reverse)
    _native.launch("invconv1x1_backward", x, grad_y.contiguous(), grad_logdet.contiguous(), x, out.contiguous(),
                   perm.contiguous(), lower.contiguous(), upper.contiguous(), s.contiguous(), reverse, grad_x,
                   *params, ws)  # fmt: skip
    return (grad_x if output_mask[0] else None, *params)


_invconv1x1_backward = define(
    "invconv1x1_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor out, Tensor perm, Tensor lower, "
    "Tensor upper, Tensor s, bool reverse, bool[4] output_mask) -> (Tensor?, Tensor?, Tensor?, Tensor?)",
    _invconv_backward_impl,
    lambda grad_y, grad_logdet, x, out, perm, lower, upper, s, reverse, mask: (
        _empty_or_none(mask[0], x), _empty_or_none(mask[1], lower), _empty_or_none(mask[2], upper),
        _empty_or_none(mask[3], s),
    ),  # fmt: skip
)


def _invconv_setup(ctx, inputs, output):
    x, perm, lower, upper, s, reverse = inputs
    ctx.reverse = reverse
    ctx.save_for_backward(x, output[0], perm, lower, upper, s)


def _invconv_grad(ctx, grad_y, grad_logdet):
    x, out, perm, lower, upper, s = ctx.saved_tensors
    need = ctx.needs_input_grad
    grads = _invconv1x1_backward(_zeros_if_none(grad_y, x), _logdet_grad(grad_logdet, x), x, out,
                                 perm, lower, upper, s, ctx.reverse, [need[0], need[2], need[3], need[4]])  # fmt: skip
    return grads[0], None, grads[1], grads[2], grads[3], None


_invconv1x1 = define(
    "invconv1x1(Tensor x, Tensor perm, Tensor lower, Tensor upper, Tensor s, bool reverse) -> (Tensor, Tensor)",
    _invconv_impl,
    _invconv_fake,
    backward=_invconv_grad,
    setup_context=_invconv_setup,
)


def invconv1x1(
    x: torch.Tensor,
    perm: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    s: torch.Tensor,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invertible 1×1 convolution in Glow's LU form, W = P·L·(U + diag(s)) (Kingma & Dhariwal 2018).

    forward: y[b, :, p] = W x[b, :, p] for every pixel p, logdet = S·Σ log|s|;
    reverse: x = W⁻¹ y by Pᵀ, forward substitution with L and back substitution with U + diag(s)
    (triangular solves, no general inverse), logdet = −S·Σ log|s|.

    Args:
        x: (B, C, *spatial) or (B, C).
        perm: int64 (C,), a permutation: (P z)[i] = z[perm[i]]. No gradient.
        lower: (C, C); only its strictly lower part is used (L has a unit diagonal).
        upper: (C, C); only its strictly upper part is used.
        s: (C,), the diagonal of U + diag(s); nonzero.
        reverse: run the inverse.

    Returns:
        (y, logdet) with y shaped like x and logdet (B,). lower and upper get gradients on their
        strict parts only (zeros elsewhere).
    """
    for arg, value in (("x", x), ("perm", perm), ("lower", lower), ("upper", upper), ("s", s)):
        check_tensor("invconv1x1", arg, value)
    return _invconv1x1(x, perm, lower, upper, s, bool(reverse))


def invconv_weight_reference(perm, lower, upper, s):
    """W = P·L·(U + diag(s)) built from its factors."""
    c = s.shape[0]
    eye = torch.eye(c, dtype=s.dtype, device=s.device)
    return eye[perm] @ (torch.tril(lower, -1) + eye) @ (torch.triu(upper, 1) + torch.diag(s))


def invconv1x1_reference(x, perm, lower, upper, s, reverse=False):
    """The LU-parameterized 1×1 convolution written from its equations, in plain PyTorch."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    logdet = (_pixels(x) * torch.log(s.abs()).sum()).expand(b)
    if not reverse:
        return (invconv_weight_reference(perm, lower, upper, s) @ flat).reshape(x.shape), logdet
    # torch's CUDA triangular solve has no float16/bfloat16 kernel: those solve in float32 and round.
    work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    lower, upper, s, flat = lower.to(work), upper.to(work), s.to(work), flat.to(work)
    eye = torch.eye(c, dtype=work, device=s.device)
    v = eye[perm].T @ flat
    v = torch.linalg.solve_triangular(torch.tril(lower, -1) + eye, v, upper=False, unitriangular=True)
    v = torch.linalg.solve_triangular(torch.triu(upper, 1) + torch.diag(s), v, upper=True)
    return v.to(x.dtype).reshape(x.shape), -logdet


_INVCONV_SHAPES = [(2, 4, 3, 3), (1, 3, 5), (5, 6), (3, 8, 4, 4), (2, 1, 2, 2), (1, 16, 7)]


def _invconv_params(c, dtype, device, gen):
    perm = torch.randperm(c, generator=gen).to(device)
    lower = _randn((c, c), dtype, device, gen, scale=0.3)  # full matrices: the kernels must ignore
    upper = _randn((c, c), dtype, device, gen, scale=0.3)  # the diagonal and the other triangle
    return perm, lower, upper, _signed_scale(c, dtype, device, gen)


def _invconv_samples(device, dtype, gen) -> Iterable[Sample]:
    for shape in _INVCONV_SHAPES:
        for reverse in (False, True):
            x = _randn(shape, dtype, device, gen)
            yield Sample((x, *_invconv_params(shape[1], dtype, device, gen)), {"reverse": reverse})


def _invconv_gradcheck_samples(device, gen) -> Iterable[Sample]:
    for shape in [(2, 3, 2, 2), (1, 4), (2, 1, 3)]:
        for reverse in (False, True):
            x = _randn(shape, torch.float64, device, gen)
            yield Sample((x, *_invconv_params(shape[1], torch.float64, device, gen)), {"reverse": reverse})


def _invconv_bad_inputs(device) -> Iterable[BadInput]:
    x = torch.randn(2, 3, 4, device=device)
    perm, lower, upper, s = torch.tensor([2, 0, 1], device=device), torch.zeros(3, 3, device=device), \
        torch.zeros(3, 3, device=device), torch.ones(3, device=device)  # fmt: skip
    yield BadInput((x, torch.tensor([0, 0, 1], device=device), lower, upper, s), {}, ValueError, "'perm'", "repeated perm")
    yield BadInput((x, torch.tensor([0, 3, 1], device=device), lower, upper, s), {}, ValueError, "'perm'", "perm range")
    yield BadInput((x, perm.int(), lower, upper, s), {}, TypeError, "'perm'", "int32 perm")
    yield BadInput((x, perm, torch.zeros(3, 4, device=device), upper, s), {}, ValueError, "'lower'", "lower shape")
    yield BadInput((x, perm, lower, upper.double(), s), {}, TypeError, "'upper'", "upper dtype")
    yield BadInput((x, perm, lower, upper, torch.ones(4, device=device)), {}, ValueError, "'s'", "s size")
    yield BadInput((x[0, 0], perm, lower, upper, s), {}, ValueError, "'x'", "1-D x")
    yield BadInput((x, [2, 0, 1], lower, upper, s), {}, TypeError, "'perm'", "perm not a tensor")


register_info(
    OpInfo(
        name="invconv1x1",
        public=invconv1x1,
        reference=invconv1x1_reference,
        torch_counterpart=invconv1x1_reference,
        samples=_invconv_samples,
        bad_inputs=_invconv_bad_inputs,
        differentiable_args=(0, 2, 3, 4),
        gradcheck_samples=_invconv_gradcheck_samples,
        backward_ops=("invconv1x1_backward",),
    )
)


# =================================================================================== planar_flow


def _planar_impl(z, u, w, b, reverse):
    z = z.contiguous()
    f, logdet = torch.empty_like(z), _logdet_like(z)
    ws = _native.workspace("planar_flow", z, z, False)
    _native.launch("planar_flow_forward", z, z, u.contiguous(), w.contiguous(), b.contiguous(), reverse, f, logdet, ws)
    return f, logdet


def _planar_fake(z, u, w, b, reverse):
    _check_devices("planar_flow", z, u=u, w=w, b=b)
    return z.new_empty(z.shape), _logdet_like(z)


def _planar_backward_impl(grad_f, grad_logdet, z, out, u, w, b, reverse, output_mask):
    z = z.contiguous()
    grads = (_empty_or_none(output_mask[0], z), _empty_or_none(output_mask[1], u), _empty_or_none(output_mask[2], w),
             _empty_or_none(output_mask[3], b))  # fmt: skip
    ws = _native.workspace("planar_flow", z, z, True)
    _native.launch("planar_flow_backward", z, grad_f.contiguous(), grad_logdet.contiguous(), z, out.contiguous(),
                   u.contiguous(), w.contiguous(), b.contiguous(), reverse, *grads, ws)  # fmt: skip
    return grads


_planar_flow_backward = define(
    "planar_flow_backward(Tensor grad_f, Tensor grad_logdet, Tensor z, Tensor out, Tensor u, Tensor w, Tensor b, "
    "bool reverse, bool[4] output_mask) -> (Tensor?, Tensor?, Tensor?, Tensor?)",
    _planar_backward_impl,
    lambda grad_f, grad_logdet, z, out, u, w, b, reverse, mask: (
        _empty_or_none(mask[0], z), _empty_or_none(mask[1], u), _empty_or_none(mask[2], w),
        _empty_or_none(mask[3], b),
    ),  # fmt: skip
)


def _planar_setup(ctx, inputs, output):
    z, u, w, b, reverse = inputs
    ctx.reverse = reverse
    ctx.save_for_backward(z, output[0], u, w, b)


def _planar_grad(ctx, grad_f, grad_logdet):
    z, out, u, w, b = ctx.saved_tensors
    need = ctx.needs_input_grad
    grads = _planar_flow_backward(_zeros_if_none(grad_f, z), _logdet_grad(grad_logdet, z), z, out, u,
                                  w, b, ctx.reverse, [need[0], need[1], need[2], need[3]])  # fmt: skip
    return (*grads, None)


_planar_flow = define(
    "planar_flow(Tensor z, Tensor u, Tensor w, Tensor b, bool reverse) -> (Tensor, Tensor)",
    _planar_impl,
    _planar_fake,
    backward=_planar_grad,
    setup_context=_planar_setup,
)


def planar_flow(z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor, reverse: bool = False):
    """Planar flow f(z) = z + û·tanh(wᵀz + b) (Rezende & Mohamed 2015).

    û = u + (m(wᵀu) − wᵀu)·w/‖w‖² with m(a) = −1 + softplus(a) (the paper's appendix A, done
    inside the op), so wᵀû ≥ −1 and f is invertible for every u, w.
    forward: logdet = log|1 + ûᵀψ(z)|, ψ(z) = tanh'(wᵀz + b)·w;
    reverse: α = wᵀz solves wᵀf = α + (wᵀû)·tanh(α + b) (monotone; safeguarded Newton to float64
    resolution), z = f − û·tanh(α + b), logdet = −(forward logdet at z); gradients by the implicit
    function theorem.

    Args:
        z: (B, D) (f when reverse).
        u, w: (D,).
        b: shape () or (1,).
        reverse: run the inverse.

    Returns:
        (f, logdet) with f (B, D) and logdet (B,).
    """
    for arg, value in (("z", z), ("u", u), ("w", w), ("b", b)):
        check_tensor("planar_flow", arg, value)
    return _planar_flow(z, u, w, b, bool(reverse))


def planar_u_hat_reference(u, w):
    """û = u + (m(wᵀu) − wᵀu)·w/‖w‖², m(a) = −1 + softplus(a)."""
    wu = w @ u
    return u + (F.softplus(wu) - 1 - wu) * w / (w @ w)


def _planar_solve_reference(c, m, b):
    """α with α + m·tanh(α + b) = c, by bisection on [c − |m|, c + |m|] (no gradient), then one Newton
    step that carries the implicit-function gradient dα = −∂g/g' (and leaves the converged value)."""
    with torch.no_grad():
        lo, hi = c - m.abs(), c + m.abs()
        for _ in range(120):
            mid = (lo + hi) / 2
            below = mid + m * torch.tanh(mid + b) - c < 0
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        alpha = (lo + hi) / 2
    th = torch.tanh(alpha + b)
    return alpha - (alpha + m * th - c) / (1 + m * (1 - th * th))


def planar_flow_reference(z, u, w, b, reverse=False):
    """The planar flow written from its equations, in plain PyTorch."""
    u_hat = planar_u_hat_reference(u, w)
    m = w @ u_hat
    b = b.reshape(())
    if reverse:
        alpha = _planar_solve_reference(z @ w, m, b)
        h = torch.tanh(alpha + b)
        return z - u_hat * h[:, None], -torch.log((1 + m * (1 - h * h)).abs())
    h = torch.tanh(z @ w + b)
    return z + u_hat * h[:, None], torch.log((1 + m * (1 - h * h)).abs())


def _planar_params(d, dtype, device, gen, shape_b=()):
    # |wᵀz| and |wᵀu| of order 1, so 1 + m·tanh' stays away from 0: the parity samples test the
    # kernels, not the conditioning of log|1 + m·tanh'| near wᵀû = −1 (tests/test_flow.py has those).
    u = _randn((d,), dtype, device, gen, scale=d**-0.5)
    w = _randn((d,), dtype, device, gen, scale=d**-0.5)
    return u, w, _randn(shape_b, dtype, device, gen, scale=0.5)


def _planar_samples(device, dtype, gen) -> Iterable[Sample]:
    for k, (batch, d) in enumerate([(7, 5), (1, 3), (16, 64), (3, 1), (33, 17)]):
        for reverse in (False, True):
            z = _randn((batch, d), dtype, device, gen, scale=0.7)
            yield Sample((z, *_planar_params(d, dtype, device, gen, (1,) if k % 2 else ())), {"reverse": reverse})


def _planar_gradcheck_samples(device, gen) -> Iterable[Sample]:
    for batch, d in [(3, 4), (1, 2), (4, 1)]:
        for reverse in (False, True):
            z = _randn((batch, d), torch.float64, device, gen, scale=0.7)
            yield Sample((z, *_planar_params(d, torch.float64, device, gen)), {"reverse": reverse})


def _planar_bad_inputs(device) -> Iterable[BadInput]:
    z = torch.randn(4, 3, device=device)
    u, w, b = torch.randn(3, device=device), torch.randn(3, device=device), torch.zeros((), device=device)
    yield BadInput((z, torch.randn(4, device=device), w, b), {}, ValueError, "'u'", "u size")
    yield BadInput((z, u, w.double(), b), {}, TypeError, "'w'", "w dtype")
    yield BadInput((z, u, w, torch.zeros(2, device=device)), {}, ValueError, "'b'", "b size")
    yield BadInput((z[None], u, w, b), {}, ValueError, "'z'", "3-D z")
    yield BadInput((z.long(), u, w, b), {}, TypeError, "'z'", "integer z")
    yield BadInput((z, u, w, 0.0), {}, TypeError, "'b'", "b not a tensor")


register_info(
    OpInfo(
        name="planar_flow",
        public=planar_flow,
        reference=planar_flow_reference,
        torch_counterpart=planar_flow_reference,
        samples=_planar_samples,
        bad_inputs=_planar_bad_inputs,
        differentiable_args=(0, 1, 2, 3),
        gradcheck_samples=_planar_gradcheck_samples,
        backward_ops=("planar_flow_backward",),
    )
)
