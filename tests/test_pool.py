"""Pooling beyond the registry-driven op tests (tests/test_ops.py covers parity, gradcheck, opcheck,
compile and bad inputs for every pooling op).

- Output size, values, indices and gradients against torch over a grid of kernel sizes, strides,
  paddings, dilations, ceil_mode and input sizes (1-D and 2-D), and the same errors where torch refuses.
- Max pooling's conventions: ties go to the first max in row-major order, so indices and gradients
  equal torch's exactly; a NaN in a window is its max.
- Layouts: channels-last, unbatched and non-contiguous inputs; determinism of backward.
- replearn.nn's pooling layers: constructor arguments, repr and state_dict as torch's, same outputs.
The same checks run on CUDA (marked `gpu`, skipped without one), against torch's CUDA kernels.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import replearn
import replearn.ops as ops
from conftest import device_params

# (kernel, stride, padding, dilation) along one axis, every combination torch accepts or refuses.
_AXIS_GRID = [
    (k, s, p, d)
    for k, s, d in itertools.product((1, 2, 3, 4), (1, 2, 3), (1, 2))
    for p in range(0, k // 2 + 2)  # one past the largest padding torch allows
]
_SIZES = (1, 2, 5, 8, 9)


def _torch_or_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:  # torch's geometry errors
        return e


def _ours_or_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        return e


def _integers(shape, device, low=-3, high=3, seed=0):
    """Small integers: many ties in every window."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g).float().to(device)


def _check_same(ours, theirs, what, exact=False):
    if isinstance(theirs, Exception):
        assert isinstance(ours, Exception), f"{what}: torch refused ({theirs}) but replearn returned a result"
        return
    assert not isinstance(ours, Exception), f"{what}: replearn refused ({ours}) but torch returned a result"
    for a, b in zip(ours if isinstance(ours, tuple) else (ours,), theirs if isinstance(theirs, tuple) else (theirs,)):
        assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs torch {tuple(b.shape)}"
        if exact:
            assert torch.equal(a, b), f"{what}: values differ from torch"
        else:
            torch.testing.assert_close(a, b, msg=what)


@pytest.mark.parametrize("device", device_params())
def test_max_pool1d_grid_matches_torch(device):
    for (k, s, p, d), ceil_mode, size in itertools.product(_AXIS_GRID, (False, True), _SIZES):
        x = _integers((2, 3, size), device)
        args = (k, s, p, d, ceil_mode, True)
        what = f"max_pool1d L={size} k={k} s={s} p={p} d={d} ceil={ceil_mode}"
        _check_same(_ours_or_error(ops.max_pool1d, x, *args), _torch_or_error(F.max_pool1d, x, *args), what, exact=True)


@pytest.mark.parametrize("device", device_params())
def test_max_pool2d_grid_matches_torch_with_ties(device):
    """Indices and gradients equal torch's exactly on inputs full of ties (first max in row-major order)."""
    grid = [(a, b) for a, b in itertools.product(_AXIS_GRID, repeat=2) if a[0] <= 3 and b[0] <= 3 and a[3] == b[3]]
    for ((kh, sh, ph, d), (kw, sw, pw, _)), ceil_mode in itertools.product(grid[::3], (False, True)):
        x = _integers((2, 2, 7, 6), device)
        args = ((kh, kw), (sh, sw), (ph, pw), d, ceil_mode, True)
        what = f"max_pool2d k={(kh, kw)} s={(sh, sw)} p={(ph, pw)} d={d} ceil={ceil_mode}"
        ours, theirs = _ours_or_error(ops.max_pool2d, x, *args), _torch_or_error(F.max_pool2d, x, *args)
        _check_same(ours, theirs, what, exact=True)
        if isinstance(theirs, Exception):
            continue
        grads = []
        for fn in (ops.max_pool2d, F.max_pool2d):
            xg = x.clone().requires_grad_(True)
            y = fn(xg, *args[:-1])
            (y * torch.arange(y.numel(), device=device).reshape(y.shape)).sum().backward()
            grads.append(xg.grad)
        assert torch.equal(grads[0], grads[1]), f"{what}: gradients differ from torch's"


@pytest.mark.parametrize("device", device_params())
def test_max_pool_nan_is_the_max(device):
    x = torch.randn(2, 3, 8, 9, device=device)
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 5, 5] = float("nan")
    x[1, 2, 5, 6] = float("nan")
    for args in [(3, 2, 1), (2, 2, 0), (3, 1, 1)]:
        y, i = ops.max_pool2d(x, *args, return_indices=True)
        ty, ti = F.max_pool2d(x, *args, return_indices=True)
        assert torch.equal(y.isnan(), ty.isnan()) and y.isnan().any()
        torch.testing.assert_close(y, ty, equal_nan=True)
        assert torch.equal(i, ti)
    y1 = ops.max_pool1d(x[0, :, 2], 3, 1, 1)
    assert torch.equal(y1.isnan(), F.max_pool1d(x[0, :, 2], 3, 1, 1).isnan())


@pytest.mark.parametrize("device", device_params())
def test_avg_pool_grid_matches_torch(device):
    for (k, s, p, _), ceil_mode, include_pad, size in itertools.product(
        [a for a in _AXIS_GRID if a[3] == 1], (False, True), (False, True), _SIZES
    ):
        x = torch.randn(2, 3, size, device=device)
        args = (k, s, p, ceil_mode, include_pad)
        what = f"avg_pool1d L={size} k={k} s={s} p={p} ceil={ceil_mode} include_pad={include_pad}"
        _check_same(_ours_or_error(ops.avg_pool1d, x, *args), _torch_or_error(F.avg_pool1d, x, *args), what)
        if size not in (2, 9):  # 2-D on a subset: the grid is large
            continue
        x2 = torch.randn(2, 2, size, 7, device=device)
        for divisor in (None, 5):
            args2 = ((k, 3), (s, 2), (p, 1), ceil_mode, include_pad, divisor)
            _check_same(_ours_or_error(ops.avg_pool2d, x2, *args2), _torch_or_error(F.avg_pool2d, x2, *args2),
                        f"avg_pool2d H={size} {args2}")  # fmt: skip


@pytest.mark.parametrize("device", device_params())
def test_adaptive_avg_pool_matches_torch(device):
    for h, w, oh, ow in itertools.product((1, 5, 7, 12), (3, 7), (1, 2, 5, 8), (1, 3, None)):
        x = torch.randn(2, 3, h, w, device=device, requires_grad=True)
        ours, theirs = ops.adaptive_avg_pool2d(x, (oh, ow)), F.adaptive_avg_pool2d(x, (oh, ow))
        torch.testing.assert_close(ours, theirs, msg=f"{(h, w)} -> {(oh, ow)}")
        dy = torch.randn_like(theirs)
        g_ours, g_theirs = (torch.autograd.grad(out, x, dy)[0] for out in (ours, theirs))
        torch.testing.assert_close(g_ours, g_theirs, msg=f"grad {(h, w)} -> {(oh, ow)}")
    x = torch.randn(3, 10, device=device)
    for size in (1, 3, 4, 10, 13, 0):
        torch.testing.assert_close(ops.adaptive_avg_pool1d(x, size), F.adaptive_avg_pool1d(x, size))
    assert ops.adaptive_avg_pool2d(torch.randn(2, 0, 4, 4, device=device), 2).shape == (2, 0, 2, 2)


@pytest.mark.parametrize("device", device_params())
def test_layouts_channels_last_unbatched_noncontiguous(device):
    x = torch.randn(2, 5, 9, 8, device=device)
    variants = {
        "channels_last": x.to(memory_format=torch.channels_last),
        "transposed": x.transpose(2, 3),
        "sliced": x[:, ::2, 1:, ::2],
        "unbatched": x[0],
    }
    for name, v in variants.items():
        for ours, theirs in [
            (ops.max_pool2d(v, 3, 2, 1, return_indices=True), F.max_pool2d(v, 3, 2, 1, return_indices=True)),
            (ops.avg_pool2d(v, 2, ceil_mode=True), F.avg_pool2d(v, 2, ceil_mode=True)),
            (ops.adaptive_avg_pool2d(v, 1), F.adaptive_avg_pool2d(v, 1)),
            (ops.adaptive_avg_pool2d(v, (3, 2)), F.adaptive_avg_pool2d(v, (3, 2))),
        ]:
            _check_same(ours, theirs, name)
        vg = v.detach().clone().requires_grad_(True)
        ops.max_pool2d(vg, 3, 2, 1).sum().backward()
        vt = v.detach().clone().requires_grad_(True)
        F.max_pool2d(vt, 3, 2, 1).sum().backward()
        torch.testing.assert_close(vg.grad, vt.grad, msg=name)  # sums of several grad_y: order may differ


@pytest.mark.parametrize("device", device_params())
def test_backward_is_deterministic(device):
    x = torch.randn(4, 8, 33, 31, device=device, requires_grad=True)
    for fn in (lambda t: ops.max_pool2d(t, 3, 2, 1), lambda t: ops.avg_pool2d(t, 3, 1, 1), lambda t: ops.adaptive_avg_pool2d(t, 5)):
        y = fn(x)
        dy = torch.randn_like(y)
        first, second = (torch.autograd.grad(fn(x), x, dy)[0] for _ in range(2))
        assert torch.equal(first, second)


def test_errors_name_the_argument_in_python_and_in_the_native_core():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="'padding'"):
        ops.max_pool2d(x, 3, padding=2)
    with pytest.raises(ValueError, match="too small"):
        ops.avg_pool2d(x, 5)
    with pytest.raises(ValueError, match="'dilation'"):
        ops.max_pool2d(x, 2, dilation=0)
    with pytest.raises(ValueError, match="'divisor_override'"):
        ops.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="'x'"):
        ops.adaptive_avg_pool2d(torch.randn(1, 2, 0, 4), 2)
    # The native validation stands on its own: a wrong output shape handed to the kernel is refused.
    from replearn import _C

    with pytest.raises(ValueError, match="'y'"):
        _C.max_pool_forward(x, [2, 2], [2, 2], [0, 0], [1, 1], False, torch.empty(1, 2, 3, 3), None)


# ------------------------------------------------------------------------------------------ nn


_MODULES = [
    ("MaxPool1d", (3,), {}),
    ("MaxPool1d", (3, 2, 1, 2), {"return_indices": True, "ceil_mode": True}),
    ("MaxPool2d", (3, 2, 1), {}),
    ("MaxPool2d", ((3, 2),), {"stride": (2, 1), "dilation": (1, 2), "ceil_mode": True}),
    ("AvgPool1d", (3,), {"stride": 2, "padding": 1, "count_include_pad": False}),
    ("AvgPool2d", (2,), {}),
    ("AvgPool2d", (3, 2, 1), {"ceil_mode": True, "divisor_override": 4}),
    ("AdaptiveAvgPool1d", (4,), {}),
    ("AdaptiveAvgPool2d", (1,), {}),
    ("AdaptiveAvgPool2d", ((None, 3),), {}),
]


@pytest.mark.parametrize("name,args,kwargs", _MODULES, ids=[f"{m[0]}-{i}" for i, m in enumerate(_MODULES)])
def test_modules_mirror_torch(name, args, kwargs):
    ours, theirs = getattr(replearn.nn, name)(*args, **kwargs), getattr(torch.nn, name)(*args, **kwargs)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys() == set()
    ours.load_state_dict(theirs.state_dict())
    for attr in theirs.__constants__:
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    x = torch.randn(2, 3, 11, 10) if name.endswith("2d") else torch.randn(2, 3, 11)
    _check_same(ours(x), theirs(x), name, exact=name.startswith("Max"))
