"""Convolution family tests beyond the registry-driven ones (tests/test_ops.py).

- Output-size arithmetic ⌊(N − D(K − 1) − 1 + 2P)/S⌋ + 1 (and its transpose) against torch over a
  grid of sizes, kernels, strides, paddings and dilations, forward values included;
- bad geometry: clear errors, for the ops and the modules;
- layouts torch accepts: channels-last, unbatched, non-contiguous weights;
- the causal convolution's defining property (no output sees a later input);
- nn.Conv*/ConvTranspose* against torch.nn's: constructor arguments, initialization, state_dict
  swapped both ways, padding modes, output_size.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import replearn
from conftest import device_params

ops = replearn.ops


def _close(a, b, dtype=torch.float64):
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ============================================================================ output-size arithmetic

_SIZES = [1, 4, 7]
_KERNELS = [1, 2, 3]
_STRIDES = [1, 2, 3]
_PADDINGS = [0, 1, 2]
_DILATIONS = [1, 2]


@pytest.mark.parametrize("size,kernel", list(itertools.product(_SIZES, _KERNELS)))
def test_conv1d_output_size_matches_torch_over_the_grid(size, kernel, gen):
    x = torch.randn(2, 2, size, dtype=torch.float64, generator=gen)
    w = torch.randn(3, 2, kernel, dtype=torch.float64, generator=gen)
    for stride, padding, dilation in itertools.product(_STRIDES, _PADDINGS, _DILATIONS):
        expected = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        if expected < 1:
            with pytest.raises(ValueError, match="'weight'"):
                ops.conv1d(x, w, None, stride, padding, dilation)
            with pytest.raises(RuntimeError):
                F.conv1d(x, w, None, stride, padding, dilation)
            continue
        ours = ops.conv1d(x, w, None, stride, padding, dilation)
        theirs = F.conv1d(x, w, None, stride, padding, dilation)
        assert ours.shape == theirs.shape == (2, 3, expected)
        _close(ours, theirs)


@pytest.mark.parametrize("stride,padding,dilation", list(itertools.product(_STRIDES, _PADDINGS, _DILATIONS)))
def test_conv2d_output_size_matches_torch_over_the_grid(stride, padding, dilation, gen):
    for (h, w_), (kh, kw) in itertools.product([(5, 7), (1, 4), (8, 3)], [(1, 1), (3, 2), (2, 3)]):
        x = torch.randn(1, 2, h, w_, dtype=torch.float64, generator=gen)
        w = torch.randn(2, 1, kh, kw, dtype=torch.float64, generator=gen)
        sizes = [(n + 2 * padding - dilation * (k - 1) - 1) // stride + 1 for n, k in ((h, kh), (w_, kw))]
        if min(sizes) < 1:
            with pytest.raises(ValueError, match="kernel whose dilated size"):
                ops.conv2d(x, w, None, stride, padding, dilation, groups=2)
            continue
        ours = ops.conv2d(x, w, None, stride, padding, dilation, groups=2)
        theirs = F.conv2d(x, w, None, stride, padding, dilation, groups=2)
        assert ours.shape == theirs.shape == (1, 2, *sizes)
        _close(ours, theirs)


@pytest.mark.parametrize("stride,padding,dilation", list(itertools.product(_STRIDES, [0, 1], _DILATIONS)))
def test_conv_transpose_output_size_matches_torch(stride, padding, dilation, gen):
    for size, kernel in itertools.product([1, 3, 6], [1, 2, 3]):
        x = torch.randn(2, 4, size, size + 1, dtype=torch.float64, generator=gen)
        w = torch.randn(4, 3, kernel, kernel, dtype=torch.float64, generator=gen)
        for output_padding in range(max(stride, dilation)):
            base = (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1
            args = (None, stride, padding, output_padding, 2, dilation)
            if base + output_padding < 1:  # torch rejects an empty output too
                with pytest.raises(RuntimeError):
                    F.conv_transpose2d(x, w, *args)
                with pytest.raises(ValueError, match="'padding'"):
                    ops.conv_transpose2d(x, w, *args)
                continue
            ours, theirs = ops.conv_transpose2d(x, w, *args), F.conv_transpose2d(x, w, *args)
            assert ours.shape == theirs.shape
            assert ours.shape[2] == base + output_padding
            _close(ours, theirs)
            if base < 1:  # an output made only of output_padding: gradients too
                xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
                dy = torch.randn_like(theirs)
                expected = torch.autograd.grad(F.conv_transpose2d(xg, wg, *args), (xg, wg), dy)
                got = torch.autograd.grad(ops.conv_transpose2d(xg, wg, *args), (xg, wg), dy)
                for a, b in zip(got, expected):
                    _close(a, b)


@pytest.mark.parametrize("kernel,dilation", [(1, 1), (2, 1), (3, 2), (4, 3), (5, 1)])
def test_same_padding_keeps_the_size_like_torch(kernel, dilation, gen):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, generator=gen)
    w = torch.randn(4, 3, kernel, kernel, dtype=torch.float64, generator=gen)
    ours = ops.conv2d(x, w, padding="same", dilation=dilation)
    assert ours.shape == (2, 4, 9, 8)
    _close(ours, F.conv2d(x, w, padding="same", dilation=dilation))
    _close(ops.conv2d(x, w, padding="valid"), F.conv2d(x, w, padding="valid"))


# ============================================================================ bad geometry


@pytest.mark.parametrize("device", device_params())
def test_bad_geometry_is_a_clear_error(device):
    x = torch.randn(2, 6, 5, 5, device=device)
    with pytest.raises(ValueError, match=r"conv2d: argument 'groups' expected a positive divisor of the 6"):
        ops.conv2d(x, torch.randn(4, 2, 3, 3, device=device), groups=4)
    with pytest.raises(ValueError, match=r"kernel whose dilated size 9 fits the padded input size 7"):
        ops.conv2d(x, torch.randn(4, 6, 5, 5, device=device), padding=1, dilation=2)
    with pytest.raises(ValueError, match=r"output channels divisible by groups"):
        ops.conv2d(x, torch.randn(5, 3, 3, 3, device=device), groups=2)
    with pytest.raises(ValueError, match=r"'output_padding' expected values smaller than max\(stride, dilation\) = 2"):
        ops.conv_transpose2d(x, torch.randn(6, 2, 3, 3, device=device), stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"'x' expected 4 dimensions"):
        ops.conv2d(torch.randn(2, 3, 4, 5, 6, device=device), torch.randn(4, 3, 3, 3, device=device))


def test_native_validation_names_the_argument_and_leaves_outputs_untouched():
    """The kernels validate on their own (callers other than the op layer): y is never written."""
    from replearn import _C

    x, w = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3)
    y = torch.full((1, 3, 3, 3), 7.0)  # wrong: the output is (1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"conv_forward: argument 'y' expected shape \(1, 3, 2, 2\)"):
        _C.conv_forward(x, w, None, [1, 1], [0, 0], [0, 0], [1, 1], 1, y, None)
    assert torch.all(y == 7)
    # Dense convolutions read x through padded planes in the workspace: without one, a clear error
    # and y untouched; with the size the kernel asks for, the product.
    y = torch.full((1, 3, 2, 2), 7.0)
    with pytest.raises(ValueError, match=r"conv_forward: argument 'workspace' expected a buffer of \d+ bytes"):
        _C.conv_forward(x, w, None, [1, 1], [0, 0], [0, 0], [1, 1], 1, y, None)
    assert torch.all(y == 7)
    size = _C.conv_forward_workspace_size(x, w, [1, 1], [0, 0], [0, 0], [1, 1], 1, y)
    _C.conv_forward(x, w, None, [1, 1], [0, 0], [0, 0], [1, 1], 1, y, torch.empty(size, dtype=torch.uint8))
    torch.testing.assert_close(y, F.conv2d(x, w))
    # A strided input gradient (col2im) needs one too.
    dx = torch.full_like(x, 7.0)
    with pytest.raises(ValueError, match=r"argument 'workspace' expected a buffer"):
        _C.conv_backward(torch.randn(1, 3, 1, 1), x, w, [2, 2], [0, 0], [0, 0], [1, 1], 1, dx, None, None, None)
    assert torch.all(dx == 7)
    y = torch.full((1, 3, 5, 5), 7.0)
    with pytest.raises(ValueError, match=r"conv_transpose_forward: argument 'y' expected spatial size 4"):
        _C.conv_transpose_forward(torch.randn(1, 2, 2, 2), torch.randn(2, 3, 3, 3), None, [1, 1], [0, 0], [1, 1], 1, y,
                                  None)  # fmt: skip
    assert torch.all(y == 7)


# ============================================================================ layouts


def test_channels_last_unbatched_and_strided_inputs(gen):
    x = torch.randn(2, 4, 9, 7, dtype=torch.float64, generator=gen)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, generator=gen)
    b = torch.randn(6, dtype=torch.float64, generator=gen)
    expected = F.conv2d(x, w, b, 2, 1, 1, 2)
    _close(ops.conv2d(x.to(memory_format=torch.channels_last), w, b, 2, 1, 1, 2), expected)
    _close(ops.conv2d(x, w.to(memory_format=torch.channels_last), b, 2, 1, 1, 2), expected)
    _close(ops.conv2d(x[0], w, b, 2, 1, 1, 2), expected[0])
    _close(ops.conv1d(x[0, :, 0], w[..., 0], b, 1, 1, 1, 2), F.conv1d(x[0, :, 0], w[..., 0], b, 1, 1, 1, 2))
    wide = torch.randn(2, 4, 9, 14, dtype=torch.float64, generator=gen)[..., ::2]
    _close(ops.conv2d(wide, w, b, groups=2), F.conv2d(wide, w, b, groups=2))


def test_gradients_with_channels_last_input(gen):
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=gen).to(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ws = [w.clone().requires_grad_(True) for _ in range(2)]
    ops.conv2d(xs[0], ws[0], padding=1).square().sum().backward()
    F.conv2d(xs[1], ws[1], padding=1).square().sum().backward()
    _close(xs[0].grad, xs[1].grad)
    _close(ws[0].grad, ws[1].grad)


def test_large_batch_splits_over_threads_deterministically(gen):
    """Enough samples for the batch-parallel path: per-chunk weight-gradient partials, summed in order."""
    x = torch.randn(9, 8, 12, 11, generator=gen)
    w = torch.randn(16, 8, 3, 3, generator=gen)
    dy = torch.randn(9, 16, 12, 11, generator=gen)

    def grads():
        xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        ops.conv2d(xr, wr, padding=1).backward(dy)
        return xr.grad, wr.grad

    first, second = grads(), grads()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    xr, wr = x.double().requires_grad_(True), w.double().requires_grad_(True)
    F.conv2d(xr, wr, padding=1).backward(dy.double())
    torch.testing.assert_close(first[0].double(), xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(first[1].double(), wr.grad, rtol=1e-4, atol=1e-3)


# ============================================================================ causal convolution


def test_causal_conv1d_never_sees_the_future(gen):
    x = torch.randn(2, 3, 20, dtype=torch.float64, generator=gen)
    w = torch.randn(4, 3, 2, dtype=torch.float64, generator=gen)
    y = ops.dilated_causal_conv1d(x, w, dilation=4)
    assert y.shape == (2, 4, 20)
    changed = x.clone()
    changed[..., 11:] += 1.0  # only the future of t = 10
    y2 = ops.dilated_causal_conv1d(changed, w, dilation=4)
    _close(y[..., :11], y2[..., :11])
    assert not torch.allclose(y[..., 11:], y2[..., 11:])
    _close(y, F.conv1d(F.pad(x, (4, 0)), w, dilation=4))


# ============================================================================ nn modules


_MODULE_CASES = [
    ("Conv1d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2), (3, 4, 11)),
    ("Conv1d", dict(in_channels=3, out_channels=5, kernel_size=4, padding="same", dilation=2, bias=False), (2, 3, 9)),
    ("Conv2d", dict(in_channels=4, out_channels=8, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)), (2, 4, 7, 6)),
    ("Conv2d", dict(in_channels=6, out_channels=6, kernel_size=7, padding=3, groups=6), (2, 6, 9, 9)),
    ("Conv2d", dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"), (2, 3, 6, 5)),
    ("Conv2d", dict(in_channels=2, out_channels=4, kernel_size=3, padding=2, padding_mode="circular"), (1, 2, 5, 5)),
    ("Conv1d", dict(in_channels=2, out_channels=2, kernel_size=3, padding="same", padding_mode="replicate"), (2, 2, 6)),
    ("ConvTranspose1d", dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=1, groups=2), (2, 4, 5)),
    ("ConvTranspose2d", dict(in_channels=4, out_channels=2, kernel_size=3, stride=2, padding=1, output_padding=1,
                             dilation=1, bias=False), (2, 4, 4, 3)),  # fmt: skip
]


@pytest.mark.parametrize("name,kwargs,shape", _MODULE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(_MODULE_CASES)])
def test_module_is_a_drop_in_for_torch(name, kwargs, shape, gen):
    torch.manual_seed(5)
    theirs = getattr(torch.nn, name)(**kwargs).double()
    torch.manual_seed(5)
    ours = getattr(replearn.nn, name)(**kwargs).double()
    # Same initialization from the same seed, same keys and shapes.
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert repr(ours).split("(", 1)[1] == repr(theirs).split("(", 1)[1]
    # A trained torch checkpoint loads into ours and back.
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(generator=gen)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(shape, dtype=torch.float64, generator=gen)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    y_ours, y_theirs = ours(xs[0]), theirs(xs[1])
    _close(y_ours, y_theirs)
    y_ours.square().sum().backward()
    y_theirs.square().sum().backward()
    _close(xs[0].grad, xs[1].grad)
    for (key, p), q in zip(ours.named_parameters(), theirs.parameters()):
        _close(p.grad, q.grad)
    theirs.load_state_dict(ours.state_dict())


def test_conv_transpose_module_output_size(gen):
    ours, theirs = replearn.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1), torch.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 4, 5, generator=gen)
    for size in ([7, 9], [8, 10], (1, 2, 8, 9)):
        torch.testing.assert_close(ours(x, output_size=size), theirs(x, output_size=size))
    with pytest.raises(ValueError, match="'output_size'"):
        ours(x, output_size=[9, 9])


def test_module_constructor_errors():
    with pytest.raises(ValueError, match="'in_channels' expected a multiple of groups"):
        replearn.nn.Conv2d(5, 4, 3, groups=2)
    with pytest.raises(ValueError, match="'out_channels' expected a multiple of groups"):
        replearn.nn.Conv1d(4, 5, 3, groups=2)
    with pytest.raises(ValueError, match="'padding_mode'"):
        replearn.nn.Conv2d(2, 2, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="'padding_mode' expected 'zeros'"):
        replearn.nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="'same' expected stride 1"):
        replearn.nn.Conv2d(2, 2, 3, stride=2, padding="same")
    assert not isinstance(replearn.nn.Conv2d(2, 2, 3), torch.nn.Conv2d)


def test_images_larger_than_one_im2col_block(gen):
    """160 channels × 3×3 on 40×37: the column matrix (1440 × 1480) exceeds one im2col block of 2²¹
    elements (csrc/conv/cpu.cpp), so it is processed in blocks, the last one partial."""
    x = torch.randn(2, 160, 40, 37, dtype=torch.float64, generator=gen)
    w = torch.randn(4, 160, 3, 3, dtype=torch.float64, generator=gen) * 0.03
    dy = torch.randn(2, 4, 40, 37, dtype=torch.float64, generator=gen)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ws = [w.clone().requires_grad_(True) for _ in range(2)]
    ours, theirs = ops.conv2d(xs[0], ws[0], None, 1, 1), F.conv2d(xs[1], ws[1], None, 1, 1)
    _close(ours, theirs)
    ours.backward(dy)
    theirs.backward(dy)
    _close(xs[0].grad, xs[1].grad)
    _close(ws[0].grad, ws[1].grad)


@pytest.mark.parametrize(
    "batch,cin,cout,h,w,kernel,stride,padding,dilation,groups",
    [
        (1, 16, 32, 40, 70, 3, 1, 1, 1, 1),  # rows wider than a 64-column panel; one sample: the GEMM splits n
        (3, 6, 5, 13, 13, 3, 1, 1, 1, 1),  # short rows: several output rows per panel
        (2, 4, 6, 9, 37, 3, 2, 1, 1, 2),  # stride 2 (two-register gather), groups
        (2, 3, 4, 16, 16, 4, 2, 1, 1, 1),  # the 4×4 stride-2 decoder geometry
        (2, 5, 7, 11, 20, 3, 1, 2, 2, 1),  # dilation: taps beyond the padding
        (2, 4, 3, 8, 9, 5, 3, 2, 1, 1),  # stride 3 (scalar copies)
        (4, 3, 2, 3, 4, 3, 1, 1, 1, 1),  # output of 12 positions: one narrow panel
        (5, 32, 8, 5, 6, 3, 1, 1, 1, 1),  # P = 30 < Ci·K = 288: samples share a product (odd batch)
        (7, 16, 6, 4, 4, 3, 1, 1, 1, 2),  # the same with groups, 4×4 like ResNet's last stage
        (3, 24, 4, 6, 5, 3, 2, 1, 1, 1),  # shared products with stride 2
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_implicit_gemm_float32_matches_float64(batch, cin, cout, h, w, kernel, stride, padding, dilation, groups, threads, gen):
    """float32 forward, input and weight gradients (the implicit GEMM's im2col panels and row blocks,
    csrc/conv/cpu.cpp) over panel and row edges, strides, dilation and groups, against float64."""
    x = torch.randn(batch, cin, h, w, generator=gen)
    weight = torch.randn(cout, cin // groups, kernel, kernel, generator=gen) / (cin * kernel) ** 0.5
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        xs, ws = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        y = ops.conv2d(xs, ws, None, stride, padding, dilation, groups)
        dy = torch.randn(y.shape, generator=gen)
        dx, dw = torch.autograd.grad(y, (xs, ws), dy)
    finally:
        torch.set_num_threads(before)
    x64, w64 = x.double().requires_grad_(True), weight.double().requires_grad_(True)
    y64 = F.conv2d(x64, w64, None, stride, padding, dilation, groups)
    dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
    for ours, want in ((y, y64), (dx, dx64), (dw, dw64)):
        torch.testing.assert_close(ours.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_integer_like_arguments_as_torch_takes_them():
    """numpy integers (sizes computed with numpy) count as ints, as in torch.nn.functional; floats
    and bools do not."""
    import numpy as np

    x, w = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3)
    torch.testing.assert_close(replearn.ops.conv2d(x, w, stride=np.int64(2), padding=(np.int32(1), 1)),
                               torch.nn.functional.conv2d(x, w, stride=2, padding=1))  # fmt: skip
    torch.testing.assert_close(replearn.ops.avg_pool2d(x, (np.int64(2), 2)), torch.nn.functional.avg_pool2d(x, 2))
    torch.testing.assert_close(replearn.ops.max_pool2d(x, np.int64(3), stride=np.int16(2)),
                               torch.nn.functional.max_pool2d(x, 3, stride=2))  # fmt: skip
    for bad in (2.0, True, (1.5, 1)):
        with pytest.raises((TypeError, ValueError), match="'stride'"):
            replearn.ops.conv2d(x, w, stride=bad)
        with pytest.raises(ValueError, match="'kernel_size'"):
            replearn.ops.max_pool2d(x, bad)


@pytest.mark.parametrize("name", ["conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"])
def test_third_derivative_matches_torch(name):
    """The backward ops' formulas are made of differentiable ops again, so the convolutions
    differentiate to any order: a third derivative, against torch's."""
    generator = torch.Generator().manual_seed(0)
    spatial = (5,) if name.endswith("1d") else (5, 4)
    x = torch.randn(2, 3, *spatial, generator=generator, dtype=torch.float64)
    w_shape = (3, 2, *(3,) * len(spatial)) if "transpose" in name else (2, 3, *(3,) * len(spatial))
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64)

    def third(conv):
        inputs = [x.clone().requires_grad_(True), w.clone().requires_grad_(True)]
        y = conv(*inputs)
        first = torch.autograd.grad((y**3).sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum((g**3).sum() for g in first), inputs, create_graph=True)
        return torch.autograd.grad(sum((h**2).sum() for h in second), inputs)

    for ours, theirs in zip(third(getattr(replearn.ops, name)), third(getattr(torch.nn.functional, name))):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
