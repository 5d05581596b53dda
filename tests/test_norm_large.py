"""Norm kernels on outputs at least the last-level cache's size: the CPU path that writes with streaming
stores (csrc/core/memory.h) and, for layer/rms norm, handles rows two at a time with the parameter
gradients accumulated in a float block, and for batch norm (56×56 runs, 64-byte aligned) computes the
next channel block's statistics inside the current block's output loop (csrc/norm/cpu.cpp). The
registry's parity tests use small shapes, which never reach that path; these cases do, with the same
rule (tests/op_harness.py: at most twice torch's float32 error against float64, plus a floor), on
forward and every gradient.
"""

from __future__ import annotations

import math

import pytest
import torch

import replearn.ops as ops
from replearn import _C
from op_harness import max_error, parity_bound

LLC_FLOATS = _C.last_level_cache_bytes() // 4

# Each case holds a dozen tensors of the output's size in float32 and float64; past 64 MiB of cache
# (sysconf's whole-socket answer where sysfs lists no cache) that is gigabytes and minutes.
pytestmark = pytest.mark.skipif(
    _C.last_level_cache_bytes() > 64 << 20, reason="last-level cache over 64 MiB: these outputs would be too large"
)


def _rows(cols: int, extra: int) -> int:
    """Rows of `cols` float32 values that make an output at least the last-level cache, plus `extra`."""
    return math.ceil(LLC_FLOATS / cols) + extra


def _check(fn_ours, fn_torch, inputs: list[torch.Tensor], grad_out_shape) -> None:
    grad = torch.randn(grad_out_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = {}
    for side, fn, dtype in (("ref", fn_torch, torch.float64), ("torch", fn_torch, torch.float32),
                            ("ours", fn_ours, torch.float32)):  # fmt: skip
        leaves = [t.to(dtype).detach().clone().requires_grad_() for t in inputs]
        y = fn(*leaves)
        y.backward(grad.to(dtype))
        results[side] = [y.detach(), *(t.grad for t in leaves)]
        del y, leaves
    for i, (ours, theirs, ref) in enumerate(zip(results["ours"], results["torch"], results["ref"])):
        bound = parity_bound(max_error(theirs, ref), ref, torch.float32)
        assert max_error(ours, ref) <= bound, f"output {i}: error {max_error(ours, ref):.3g} > bound {bound:.3g}"


def _randn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cols, extra", [(1024, 1), (1000, 0)], ids=["aligned-rows-odd-count", "unaligned-rows"])
def test_layer_norm_beyond_the_cache(cols, extra):
    rows = _rows(cols, extra)
    x = _randn(rows, cols) * 2 + 0.5
    _check(lambda x, w, b: ops.layer_norm(x, [cols], w, b, 1e-5),
           lambda x, w, b: torch.nn.functional.layer_norm(x, [cols], w, b, 1e-5),
           [x, _randn(cols, seed=2), _randn(cols, seed=3)], (rows, cols))  # fmt: skip


def test_rms_norm_beyond_the_cache():
    cols = 1024
    rows = _rows(cols, 1)
    _check(lambda x, w: ops.rms_norm(x, [cols], w, 1e-5), lambda x, w: torch.nn.functional.rms_norm(x, [cols], w, 1e-5),
           [_randn(rows, cols), _randn(cols, seed=2)], (rows, cols))  # fmt: skip


def test_batch_norm_training_beyond_the_cache():
    spatial = 56 * 56
    batch = math.ceil(LLC_FLOATS / (64 * spatial))
    shape = (batch, 64, 56, 56)
    _check(lambda x, w, b: ops.batch_norm(x, torch.zeros(64), torch.ones(64), w, b, True, 0.1, 1e-5),
           lambda x, w, b: torch.nn.functional.batch_norm(x, torch.zeros(64, dtype=x.dtype), torch.ones(64, dtype=x.dtype),
                                                          w, b, True, 0.1, 1e-5),
           [_randn(*shape) + 1, _randn(64, seed=2), _randn(64, seed=3)], shape)  # fmt: skip


def test_group_norm_beyond_the_cache():
    batch = math.ceil(LLC_FLOATS / (64 * 56 * 56))
    shape = (batch, 64, 56, 56)
    _check(lambda x, w, b: ops.group_norm(x, 8, w, b, 1e-5),
           lambda x, w, b: torch.nn.functional.group_norm(x, 8, w, b, 1e-5),
           [_randn(*shape), _randn(64, seed=2), _randn(64, seed=3)], shape)  # fmt: skip


def test_weight_norm_beyond_the_cache():
    cols = 2048
    rows = _rows(cols, 3)
    _check(lambda v, g: ops.weight_norm(v, g, 0), lambda v, g: torch._weight_norm(v, g, 0),
           [_randn(rows, cols), _randn(rows, 1, seed=2)], (rows, cols))  # fmt: skip
