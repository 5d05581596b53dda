"""Pooling family: replearn.ops.<pool> against torch.nn.functional's, float32, forward and forward+backward.

Rows per op: `fwd` (inference: the input does not require grad), `fwd+bwd` (a training step: forward,
then the input gradient), and two per-call overhead rows on a tiny tensor, in microseconds.

Shapes are those of the CNNs of the course: the ResNet stem's 3×3 stride-2 max pooling on the output
of its first convolution (N32 C64 112×112), a 2×2 average pooling on the same tensor (the transition
layers of DenseNet), and ResNet-50's global average pooling before the classifier (N32 C2048 7×7).

Byte model for achieved GB/s: the minimal traffic, with N the input's element count and M the output's.
    fwd                      read x, write y                                  = (N + M) · itemsize
    fwd+bwd (average)        fwd, then read dy and write dx                   = 2·(N + M) · itemsize
    fwd+bwd (max)            as average, plus the int64 indices written by
                             forward and read by backward                     = 2·(N + M) · itemsize + 16·M
Inference max pooling writes no indices here (torch's CPU kernel always does), so the forward rows
count none.

Goal (issue 4, with memory reuse): every forward+backward at least as fast as torch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

import replearn.ops as ops
from _harness import Case, Spec, forward, forward_backward, forward_recording_graph


def _functional(side: str):
    return torch.nn.functional if side == "torch" else ops


def _input(shape, dtype, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)


def max_pool2d(shape, dtype, device, side):
    x = _input(shape, dtype, device)
    F = _functional(side)
    return [x], lambda: F.max_pool2d(x, 3, 2, 1)


def avg_pool2d(shape, dtype, device, side):
    x = _input(shape, dtype, device)
    F = _functional(side)
    return [x], lambda: F.avg_pool2d(x, 2)


def global_avg_pool2d(shape, dtype, device, side):
    x = _input(shape, dtype, device)
    F = _functional(side)
    return [x], lambda: F.adaptive_avg_pool2d(x, 1)


def max_pool1d(shape, dtype, device, side):
    x = _input(shape, dtype, device)
    F = _functional(side)
    return [x], lambda: F.max_pool1d(x, 3, 2, 1)


def avg_pool1d(shape, dtype, device, side):
    x = _input(shape, dtype, device)
    F = _functional(side)
    return [x], lambda: F.avg_pool1d(x, 2)


def global_avg_pool1d(shape, dtype, device, side):
    x = _input(shape, dtype, device)
    F = _functional(side)
    return [x], lambda: F.adaptive_avg_pool1d(x, 1)


@dataclasses.dataclass(frozen=True)
class _Op:
    name: str
    spec: Spec
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    tiny_shape: tuple[int, ...]
    output_numel: Callable[[tuple[int, ...]], int]
    index_bytes_per_output: int = 0  # max pooling's int64 indices, written and read in a training step


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _pooled1d(shape, kernel, stride, padding) -> int:
    *lead, length = shape
    return _numel(lead) * ((length + 2 * padding - kernel) // stride + 1)


def _pooled(shape, kernel, stride, padding) -> int:
    *lead, h, w = shape
    return _numel(lead) * ((h + 2 * padding - kernel) // stride + 1) * ((w + 2 * padding - kernel) // stride + 1)


_OPS = [
    _Op("max_pool2d(3, 2, 1)", max_pool2d, (32, 64, 112, 112), (4, 16, 32, 32), (2, 4, 8, 8),
        lambda s: _pooled(s, 3, 2, 1), index_bytes_per_output=16),  # fmt: skip
    _Op("avg_pool2d(2)", avg_pool2d, (32, 64, 112, 112), (4, 16, 32, 32), (2, 4, 8, 8), lambda s: _pooled(s, 2, 2, 0)),
    _Op("adaptive_avg_pool2d(1)", global_avg_pool2d, (32, 2048, 7, 7), (4, 256, 7, 7), (2, 8, 7, 7),
        lambda s: _numel(s[:-2])),  # fmt: skip
    # The 1-D forms on a sequence batch (N32 C64 L16384, the same 33.5 M values as the 2-D rows).
    _Op("max_pool1d(3, 2, 1)", max_pool1d, (32, 64, 16384), (4, 16, 1024), (2, 4, 64),
        lambda s: _pooled1d(s, 3, 2, 1), index_bytes_per_output=16),  # fmt: skip
    _Op("avg_pool1d(2)", avg_pool1d, (32, 64, 16384), (4, 16, 1024), (2, 4, 64), lambda s: _pooled1d(s, 2, 2, 0)),
    _Op("adaptive_avg_pool1d(1)", global_avg_pool1d, (32, 2048, 49), (4, 256, 49), (2, 8, 49), lambda s: _numel(s[:-1])),
]

OVERHEAD_GOAL_US = 10.0


def _cases(op: _Op) -> list[Case]:
    def fwd_bytes(shape, itemsize):
        return (_numel(shape) + op.output_numel(shape)) * itemsize

    def train_bytes(shape, itemsize):
        return 2 * fwd_bytes(shape, itemsize) + op.index_bytes_per_output * op.output_numel(shape)

    return [
        Case(f"{op.name} fwd+bwd", op.shape, op.quick_shape, forward_backward(op.spec), train_bytes, min_speedup=1.0),
        Case(f"{op.name} fwd", op.shape, op.quick_shape, forward(op.spec), fwd_bytes, min_speedup=1.0),
        Case(f"{op.name} overhead", op.tiny_shape, op.tiny_shape, forward(op.spec), None,
             max_overhead_us=OVERHEAD_GOAL_US),  # fmt: skip
        Case(f"{op.name} overhead, requires_grad", op.tiny_shape, op.tiny_shape, forward_recording_graph(op.spec), None,
             max_overhead_us=OVERHEAD_GOAL_US),  # fmt: skip
    ]


_CPU_CASES = [case for op in _OPS for case in _cases(op)]
# The same cases on a GPU, where one and the CUDA kernels are present: float32, and bfloat16 as CNNs
# train in mixed precision. They report without goals (the goals were set for the CPU machine).
CASES = _CPU_CASES + [
    dataclasses.replace(case, device="cuda", dtype=dtype, min_speedup=None, max_overhead_us=None)
    for dtype in (torch.float32, torch.bfloat16)
    for case in _CPU_CASES
]
