"""Flow family: each fused native op against the same composition written with torch ops.

The torch side is the composition a user would write, float32: for the coupling, RealNVP's masked
form as torch implementations write it (zero s and t on the passed-through half, then x·exp(s) + t,
logdet = Σ s: fewer passes than the op's `reference`, which spells out m·x + (1−m)·(…)); for the
others, the op's `reference` in replearn.ops.flow (the equations in plain PyTorch). Same shapes: batch 64, 32 channels, 32×32 for
the coupling (checkerboard mask, exp scale), ActNorm and the 1×1 convolution; batch 4096, 64 features
for the planar flow. Rows per op: `fwd` (y and logdet, inputs not requiring grad) and `fwd+bwd`
(forward, then the gradients of x and of every parameter for fixed random gradients of y and logdet).

Byte model for achieved GB/s (N: x's element count; parameters of size O(C) or O(D) left out, except
the coupling's shift and log-scale, which are as large as x):
    coupling  fwd  read x, t, s, write y                          = 4·N · itemsize
              fwd+bwd  fwd, then read dy, x, s, write dx, dt, ds  = 10·N · itemsize
    actnorm, invconv1x1, planar
              fwd  read x, write y                                = 2·N · itemsize
              fwd+bwd  fwd, then read dy, x, write dx             = 5·N · itemsize
The 1×1 convolution and the planar flow also do O(C) / O(1) arithmetic per element; their rows
report the same byte model (memory-bound at C = 32 on the CPU).

Goals (issue 8, with memory reuse): couplings and ActNorm fwd+bwd ≥ 2× the torch composition.
"""

from __future__ import annotations

import dataclasses

import torch

import replearn.ops as ops
from replearn.ops import flow as flow_ops
from _harness import Case

BATCH, CHANNELS, SIDE = 64, 32, 32


def _randn(generator, shape, dtype, device, scale=1.0):
    return (torch.randn(shape, generator=generator) * scale).to(device=device, dtype=dtype)


# spec(shape, dtype, device, side) -> (differentiable inputs, call returning (y, logdet))


def coupling_as_users_write_it(x, shift, log_scale, mask):
    """RealNVP's affine coupling with exp scale the way torch implementations write it (Dinh et al.
    2017, eq. 9 with the mask folded into s and t): masked s = 0 gives σ = 1 and t = 0 there."""
    transformed = ~mask
    s, t = log_scale * transformed, shift * transformed
    return x * torch.exp(s) + t, s.flatten(1).sum(1)


def coupling(shape, dtype, device, side):
    g = torch.Generator().manual_seed(0)
    x, t, s = _randn(g, shape, dtype, device), _randn(g, shape, dtype, device), _randn(g, shape, dtype, device, 0.3)
    mask = ops.checkerboard_mask(shape[2], shape[3], device=device, dtype=torch.bool)
    fn = coupling_as_users_write_it if side == "torch" else ops.affine_coupling
    return [x, t, s], lambda: fn(x, t, s, mask)


def actnorm(shape, dtype, device, side):
    g = torch.Generator().manual_seed(0)
    x = _randn(g, shape, dtype, device)
    scale = (torch.rand(shape[1], generator=g) + 0.5).to(device=device, dtype=dtype)
    bias = _randn(g, shape[1:2], dtype, device)
    fn = flow_ops.actnorm_reference if side == "torch" else ops.actnorm
    return [x, scale, bias], lambda: fn(x, scale, bias)


def invconv1x1(shape, dtype, device, side):
    g = torch.Generator().manual_seed(0)
    c = shape[1]
    x = _randn(g, shape, dtype, device)
    perm = torch.randperm(c, generator=g).to(device)
    lower, upper = _randn(g, (c, c), dtype, device, 0.1), _randn(g, (c, c), dtype, device, 0.1)
    s = (torch.rand(c, generator=g) + 0.5).to(device=device, dtype=dtype)
    fn = flow_ops.invconv1x1_reference if side == "torch" else ops.invconv1x1
    return [x, lower, upper, s], lambda: fn(x, perm, lower, upper, s)


def planar(shape, dtype, device, side):
    g = torch.Generator().manual_seed(0)
    d = shape[1]
    z = _randn(g, shape, dtype, device)
    u, w = _randn(g, (d,), dtype, device, d**-0.5), _randn(g, (d,), dtype, device, d**-0.5)
    b = _randn(g, (1,), dtype, device)
    fn = flow_ops.planar_flow_reference if side == "torch" else ops.planar_flow
    return [z, u, w, b], lambda: fn(z, u, w, b)


# --------------------------------------------------------------------------- builds for (y, logdet)


def _forward(spec):
    return lambda shape, dtype, device: tuple(spec(shape, dtype, device, side)[1] for side in ("torch", "replearn"))


def _forward_backward(spec):
    def side(shape, dtype, device, name):
        inputs, call = spec(shape, dtype, device, name)
        for t in inputs:
            t.requires_grad_()
        generator = torch.Generator().manual_seed(1)
        grads = [torch.randn(o.shape, generator=generator).to(device=device, dtype=dtype) for o in call()]
        return lambda: torch.autograd.grad(call(), inputs, grads)

    return lambda shape, dtype, device: (side(shape, dtype, device, "torch"), side(shape, dtype, device, "replearn"))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _bytes(tensors_of_x_size):
    return lambda shape, itemsize: tensors_of_x_size * _numel(shape) * itemsize


@dataclasses.dataclass(frozen=True)
class _Op:
    name: str
    spec: object
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    fwd_tensors: int
    bwd_tensors: int
    min_speedup: float | None = None


IMAGE = (BATCH, CHANNELS, SIDE, SIDE)
_OPS = [
    _Op("affine_coupling", coupling, IMAGE, (4, 8, 8, 8), 4, 10, min_speedup=2.0),
    _Op("actnorm", actnorm, IMAGE, (4, 8, 8, 8), 2, 5, min_speedup=2.0),
    _Op("invconv1x1", invconv1x1, IMAGE, (4, 8, 8, 8), 2, 5),
    _Op("planar_flow", planar, (4096, 64), (64, 16), 2, 5),
]


def _cases(op: _Op) -> list[Case]:
    return [
        Case(f"{op.name} fwd+bwd", op.shape, op.quick_shape, _forward_backward(op.spec), _bytes(op.bwd_tensors),
             min_speedup=op.min_speedup),  # fmt: skip
        Case(f"{op.name} fwd", op.shape, op.quick_shape, _forward(op.spec), _bytes(op.fwd_tensors)),
    ]


_CPU_CASES = [case for op in _OPS for case in _cases(op)]
# The same cases on a GPU, run only where one and the CUDA kernels are present (no goals: the issue
# set them for the CPU machine).
CASES = _CPU_CASES + [dataclasses.replace(case, device="cuda", min_speedup=None) for case in _CPU_CASES]
