"""Convolution family: replearn.ops.conv* against torch.nn.functional's (oneDNN), float32.

Rows per case: `fwd` (inference) and `fwd+bwd` (a training step: forward, then the gradients of x, the
weight and, where there is one, the bias). The cases are the issue's (issue 4): the layers that
dominate ResNet, MobileNet/ConvNeXt (depthwise 7×7), DCGAN/U-Net decoders (transposed 4×4 stride 2)
and WaveNet (causal dilated 1-D, written in torch as left padding then conv1d).

Flop model for achieved GFLOP/s (a multiply-add counts two; padding taps are not subtracted):
    conv            fwd = 2 · N · C_out · O · (C_in / G) · K      O output positions, K kernel taps
    conv_transpose  fwd = 2 · N · C_in · I · (C_out / G) · K      I input positions
    fwd+bwd         3 · fwd (the input and weight gradients are each a product of the forward's size)
The limit is the machine's GEMM rate, torch.mm on 1024×1024 float32 timed beside every row
(_harness.GemmReference); torch's own GFLOP/s is shown in brackets.

Goals (issue 4, with memory reuse, same run): dense 3×3 and transposed ≥ 0.8× torch; depthwise
fwd+bwd ≥ 2×; dilated 1-D fwd+bwd ≥ 1.2×.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

import replearn.ops as ops
from _harness import Case, forward, forward_backward


def _tensors(*shapes, dtype, device):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(s, generator=generator) * (1.0 if i == 0 else 0.05)).to(device=device, dtype=dtype)
            for i, s in enumerate(shapes)]  # fmt: skip


def conv2d_spec(kernel: int, padding: int, groups: int = 1, bias: bool = False):
    """x (N, C_in, H, W), weight (C_out, C_in/G, k, k); shape = (N, C_in, C_out, H, W)."""

    def spec(shape, dtype, device, side):
        n, cin, cout, h, w = shape
        x, weight, b = _tensors((n, cin, h, w), (cout, cin // groups, kernel, kernel), (cout,), dtype=dtype, device=device)
        b = b if bias else None
        fn = F.conv2d if side == "torch" else ops.conv2d
        return [x, weight] + ([b] if bias else []), lambda: fn(x, weight, b, 1, padding, 1, groups)

    return spec


def conv_transpose2d_spec(kernel: int, stride: int, padding: int):
    """x (N, C_in, H, W), weight (C_in, C_out, k, k); shape = (N, C_in, C_out, H, W)."""

    def spec(shape, dtype, device, side):
        n, cin, cout, h, w = shape
        x, weight, b = _tensors((n, cin, h, w), (cin, cout, kernel, kernel), (cout,), dtype=dtype, device=device)
        fn = F.conv_transpose2d if side == "torch" else ops.conv_transpose2d
        return [x, weight, b], lambda: fn(x, weight, b, stride, padding)

    return spec


def conv1d_spec(kernel: int, padding: int):
    """x (N, C_in, L), weight (C_out, C_in, k); shape = (N, C_in, C_out, L)."""

    def spec(shape, dtype, device, side):
        n, cin, cout, length = shape
        x, weight, b = _tensors((n, cin, length), (cout, cin, kernel), (cout,), dtype=dtype, device=device)
        fn = F.conv1d if side == "torch" else ops.conv1d
        return [x, weight, b], lambda: fn(x, weight, b, 1, padding)

    return spec


def conv_transpose1d_spec(kernel: int, stride: int, padding: int):
    """x (N, C_in, L), weight (C_in, C_out, k); shape = (N, C_in, C_out, L)."""

    def spec(shape, dtype, device, side):
        n, cin, cout, length = shape
        x, weight, b = _tensors((n, cin, length), (cin, cout, kernel), (cout,), dtype=dtype, device=device)
        fn = F.conv_transpose1d if side == "torch" else ops.conv_transpose1d
        return [x, weight, b], lambda: fn(x, weight, b, stride, padding)

    return spec


def causal_conv1d_spec(kernel: int, dilation: int):
    """x (N, C, L), weight (C, C, k); shape = (N, C, C, L). torch: left padding, then conv1d."""

    def spec(shape, dtype, device, side):
        n, cin, cout, length = shape
        x, weight, b = _tensors((n, cin, length), (cout, cin, kernel), (cout,), dtype=dtype, device=device)
        if side == "torch":
            return [x, weight, b], lambda: F.conv1d(F.pad(x, (dilation * (kernel - 1), 0)), weight, b, dilation=dilation)
        return [x, weight, b], lambda: ops.dilated_causal_conv1d(x, weight, b, dilation=dilation)

    return spec


def _conv_flops(kernel_taps: int, groups: int = 1) -> Callable[[tuple[int, ...]], float]:
    """Same-size output (stride 1, 'same' padding): 2·N·C_out·O·(C_in/G)·K."""

    def flops(shape):
        n, cin, cout, *spatial = shape
        positions = 1
        for s in spatial:
            positions *= s
        return 2.0 * n * cout * positions * (cin // groups) * kernel_taps

    return flops


def _transpose_flops(kernel_taps: int) -> Callable[[tuple[int, ...]], float]:
    def flops(shape):
        n, cin, cout, *spatial = shape
        positions = 1
        for s in spatial:
            positions *= s
        return 2.0 * n * cin * positions * cout * kernel_taps

    return flops


@dataclasses.dataclass(frozen=True)
class _Layer:
    name: str
    spec: Callable
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    flops: Callable[[tuple[int, ...]], float]
    min_speedup_fwd_bwd: float | None
    min_speedup_fwd: float | None = None


_LAYERS = [
    _Layer("conv2d 3×3 (ResNet)", conv2d_spec(3, 1), (32, 64, 64, 56, 56), (2, 16, 16, 14, 14), _conv_flops(9), 0.8, 0.8),
    _Layer("conv2d 3×3 (ResNet, deep)", conv2d_spec(3, 1), (32, 256, 256, 14, 14), (2, 32, 32, 7, 7), _conv_flops(9),
           0.8, 0.8),  # fmt: skip
    _Layer("conv2d depthwise 7×7", conv2d_spec(7, 3, groups=96, bias=True), (32, 96, 96, 56, 56), (2, 96, 96, 14, 14),
           _conv_flops(49, groups=96), 2.0),  # fmt: skip
    _Layer("conv_transpose2d 4×4 s2", conv_transpose2d_spec(4, 2, 1), (16, 64, 32, 32, 32), (2, 16, 8, 8, 8),
           _transpose_flops(16), 0.8, 0.8),  # fmt: skip
    # 1-D rows without goals of their own (the issue sets none): a ByteNet-width k3 conv1d and a k4 s2
    # transposed conv1d (a decoder's upsampling).
    _Layer("conv1d k3", conv1d_spec(3, 1), (16, 256, 256, 2048), (2, 32, 32, 256), _conv_flops(3), None),
    _Layer("conv_transpose1d k4 s2", conv_transpose1d_spec(4, 2, 1), (16, 128, 64, 2048), (2, 16, 8, 256),
           _transpose_flops(4), None),  # fmt: skip
    _Layer("dilated_causal_conv1d k2 d512 (WaveNet)", causal_conv1d_spec(2, 512), (16, 64, 64, 16000), (2, 16, 16, 2048),
           _conv_flops(2), 1.2),  # fmt: skip
]


def _cases(layer: _Layer) -> list[Case]:
    return [
        Case(f"{layer.name} fwd+bwd", layer.shape, layer.quick_shape, forward_backward(layer.spec), None,
             min_speedup=layer.min_speedup_fwd_bwd, flops=lambda s, f=layer.flops: 3 * f(s)),  # fmt: skip
        Case(f"{layer.name} fwd", layer.shape, layer.quick_shape, forward(layer.spec), None,
             min_speedup=layer.min_speedup_fwd, flops=layer.flops),  # fmt: skip
    ]


_CPU_CASES = [case for layer in _LAYERS for case in _cases(layer)]
# The same cases on a GPU where one and the CUDA kernels are present; the goals were set for the CPU.
CASES = _CPU_CASES + [dataclasses.replace(case, device="cuda", min_speedup=None) for case in _CPU_CASES]
