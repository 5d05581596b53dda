"""The bindings: zero-copy tensor views from torch tensors, numpy arrays and DLPack capsules, the
error translation, and the build's CUDA module."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import replearn
from replearn import _C, _native


@pytest.mark.parametrize(
    "dtype,name",
    [(torch.float32, "float32"), (torch.float64, "float64"), (torch.float16, "float16"), (torch.bfloat16, "bfloat16"),
     (torch.int64, "int64"), (torch.int32, "int32"), (torch.uint8, "uint8"), (torch.bool, "bool"),
     (torch.complex64, "complex64")],  # fmt: skip
)
def test_torch_tensor_view_is_zero_copy(dtype, name):
    t = torch.zeros(3, 4, 5, dtype=dtype)[:, 1:, ::2]
    d = _C.describe(t)
    assert d["data_ptr"] == t.data_ptr()
    assert d["dtype"] == name
    assert d["device"] == "cpu"
    assert d["shape"] == tuple(t.shape)
    assert d["strides"] == t.stride()


def test_tensor_requiring_grad_is_viewed_without_copy():
    t = torch.randn(4, 3, requires_grad=True)
    assert _C.describe(t)["data_ptr"] == t.data_ptr()


def test_numpy_array_through_dlpack():
    a = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2]
    d = _C.describe(a)
    assert d["data_ptr"] == a.ctypes.data
    assert d["dtype"] == "float64"
    assert d["shape"] == (4, 3)
    assert d["strides"] == tuple(s // a.itemsize for s in a.strides)


def test_torch_tensor_strides_read_only_when_not_contiguous():
    """The caster computes a contiguous tensor's strides from its shape and reads stride() otherwise."""
    t = torch.randn(4, 6, 5)
    assert _C.describe(t)["strides"] == (30, 5, 1)
    assert _C.describe(t.transpose(0, 2))["strides"] == (1, 5, 30)
    assert _C.describe(t[:, ::2])["strides"] == (30, 10, 1)
    assert _C.describe(t[:1].expand(3, 6, 5))["strides"] == (0, 5, 1)
    # A size-1 dimension's stride is arbitrary in torch and canonical here: the same elements either way.
    odd = torch.randn(4, 3).as_strided((4, 1), (1, 7))
    assert odd.is_contiguous() and _C.describe(odd)["strides"] == (1, 1)
    assert _C.describe(odd)["data_ptr"] == odd.data_ptr()


class _Subclass(torch.Tensor):
    pass


_LAYOUTS = {
    "contiguous": lambda: torch.randn(4, 6, 5),
    "transposed": lambda: torch.randn(4, 6, 5).transpose(0, 2),
    "sliced with an offset": lambda: torch.randn(4, 6, 5)[1:, 2:, ::2],
    "expanded": lambda: torch.randn(1, 6, 1).expand(3, 6, 4),
    "size-1 dim with an odd stride": lambda: torch.randn(4, 3).as_strided((4, 1), (1, 7)),
    "unsqueezed": lambda: torch.randn(3, 5)[:, None],
    "channels_last": lambda: torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
    "0-d": lambda: torch.tensor(2.5),
    "empty": lambda: torch.empty(0, 3),
    "requires_grad": lambda: torch.randn(4, 3, requires_grad=True),
    "non-leaf": lambda: torch.randn(4, 3, requires_grad=True) * 2,
    "Parameter": lambda: torch.nn.Parameter(torch.randn(5)),
    "subclass": lambda: torch.randn(2, 3).as_subclass(_Subclass),
    "float64": lambda: torch.randn(3, 2, dtype=torch.float64).t(),
    "bfloat16": lambda: torch.randn(3, 2).to(torch.bfloat16),
    "int64": lambda: torch.arange(6).reshape(2, 3),
    "bool": lambda: torch.ones(4, dtype=torch.bool),
    "negative bit": lambda: torch._neg_view(torch.randn(4, 3)),
    "negative bit from conj().imag": lambda: torch.randn(3, dtype=torch.complex64).conj().imag,
}


@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_exchange_and_attribute_paths_describe_tensors_alike(layout):
    """DLPack's C exchange table and torch's attributes give the same view, stride for stride."""
    t = _LAYOUTS[layout]()
    if not _C.uses_tensor_exchange(t):
        pytest.skip("this torch publishes no DLPack C exchange table")
    through_exchange = _C.describe(t)
    previous = _C.set_tensor_exchange(False)
    try:
        assert not _C.uses_tensor_exchange(t)
        through_attributes = _C.describe(t)
    finally:
        _C.set_tensor_exchange(previous)
    assert through_exchange == through_attributes
    assert through_exchange["data_ptr"] == t.data_ptr()


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "attributes"])
def test_negative_bit_is_reported_on_both_paths(exchange):
    """The memory of a tensor with torch's negative bit holds −value: both paths say so, and validation
    refuses it by name (tests/test_ops.py checks every op)."""
    previous = _C.set_tensor_exchange(exchange)
    try:
        assert _C.describe(torch._neg_view(torch.randn(3)))["negated"]
        assert not _C.describe(torch._neg_view(torch.randn(3)).resolve_neg())["negated"]
        assert not _C.describe(torch.randn(3))["negated"]
        x = torch._neg_view(torch.randn(2, 8))
        with pytest.raises(ValueError, match="layer_norm_forward: argument 'x' has torch's negative bit set"):
            _C.layer_norm_forward(x, 1, None, None, 1e-5, torch.empty(2, 8), None)
    finally:
        _C.set_tensor_exchange(previous)


def test_exchange_is_used_wherever_torch_publishes_it():
    """The fast path is taken, not silently skipped, on a torch that has the table (torch ≥ 2.10)."""
    published = hasattr(torch.Tensor, "__dlpack_c_exchange_api__")
    assert _C.uses_tensor_exchange(torch.empty(1)) == published
    assert _C.uses_tensor_exchange(torch.nn.Parameter(torch.empty(1))) == published
    assert not _C.uses_tensor_exchange(np.zeros(1)) or hasattr(np.ndarray, "__dlpack_c_exchange_api__")


def test_dlpack_capsule():
    t = torch.randn(2, 3)
    d = _C.describe(torch.utils.dlpack.to_dlpack(t))
    assert d["data_ptr"] == t.data_ptr() and d["shape"] == (2, 3) and d["strides"] == (3, 1)


def test_kernel_runs_on_numpy_arrays_in_place():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7))
    y, stats = np.empty_like(x), np.empty((2, 5))
    _C.layer_norm_forward(x, 1, None, None, 1e-5, y, stats)
    expected = torch.nn.functional.layer_norm(torch.from_numpy(x), [7]).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats[0], x.mean(1), rtol=1e-12, atol=1e-15)  # the means, then the rstds
    np.testing.assert_allclose(stats[1], 1 / np.sqrt(x.var(1) + 1e-5), rtol=1e-12)


def test_errors_name_the_argument_and_map_to_python_types():
    x = np.zeros((4, 6), dtype=np.float32)
    y, stats = np.zeros_like(x), np.empty((2, 4), dtype=np.float32)
    with pytest.raises(TypeError, match="'x' expected float32 or float64 .* got int64"):
        _C.layer_norm_forward(x.astype(np.int64), 1, None, None, 1e-5, y, stats)
    with pytest.raises(ValueError, match="'x' expected contiguous"):
        _C.layer_norm_forward(np.zeros((4, 12), dtype=np.float32)[:, ::2], 1, None, None, 1e-5, y, stats)
    # The saved statistics travel as one (2, rows) tensor; the kernel checks its halves by name.
    with pytest.raises(ValueError, match="'mean' expected 4 elements but got 3"):
        _C.layer_norm_forward(x, 1, None, None, 1e-5, y, np.empty((2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="'mean' expected float32 but got float64"):
        _C.layer_norm_forward(x, 1, None, None, 1e-5, y, np.empty((2, 4)))
    with pytest.raises(ValueError, match=r"'stats' expected a contiguous tensor of shape \(2, \*\) but got shape \(3, 4\)"):
        _C.layer_norm_forward(x, 1, None, None, 1e-5, y, np.empty((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="'stats' expected a contiguous tensor .* but got a non-contiguous"):
        _C.layer_norm_forward(x, 1, None, None, 1e-5, y, np.empty((4, 2), dtype=np.float32).T)
    with pytest.raises(TypeError):  # not a tensor at all: pybind11's argument error
        _C.layer_norm_forward([1.0, 2.0], 1, None, None, 1e-5, y, stats)
    assert not y.any()  # nothing written by any of the refused calls


def test_too_many_dimensions_is_a_clear_error():
    t = torch.zeros([1] * 17)
    with pytest.raises(ValueError, match="at most 16 dimensions"):
        _C.describe(t)


def test_meta_tensor_is_reported_as_an_unsupported_device():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="'weight' expected a .*cpu"):
        replearn.ops.layer_norm(x, [3], torch.ones(3, device="meta"))


def test_thread_count_follows_torch():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        replearn.ops.layer_norm(torch.randn(4, 4), [4])
        assert _C.num_threads() == 1
    finally:
        torch.set_num_threads(before)
    replearn.ops.layer_norm(torch.randn(4, 4), [4])
    assert _C.num_threads() == before


@pytest.mark.skipif(os.environ.get("REPLEARN_CUDA", "").upper() != "ON", reason="only when the build was asked for CUDA")
def test_cuda_module_was_built_when_asked():
    assert _native.has_cuda_kernels(), "REPLEARN_CUDA=ON but replearn._C_cuda is missing"
    assert _native._C_cuda.device_count() >= 0  # imports and runs without a GPU (static runtime)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _native.has_cuda_kernels(), reason="needs a CUDA device")
def test_cuda_tensor_view():
    t = torch.zeros(2, 3, device="cuda")
    d = _native._C_cuda.describe(t) if hasattr(_native._C_cuda, "describe") else _C.describe(t)
    assert d["device"] == "cuda:0" and d["data_ptr"] == t.data_ptr()


# ==================================================================== huge pages (core/memory.h)

_HUGE_PAGE_PROGRAM = r"""
import sys, torch, replearn.ops as ops
x = torch.randn(4096, 4096)
y = ops.layer_norm(x, 4096)  # a 64 MiB output: a fresh mapping under glibc's defaults
inside = (y.data_ptr() + (4 << 20)) & ~((2 << 20) - 1)
flags, current = "", False
for line in open("/proc/self/smaps"):
    head = line.split()[0]
    if "-" in head and all(c in "0123456789abcdef-" for c in head):
        begin, end = (int(v, 16) for v in head.split("-"))
        current = begin <= inside < end
    elif current and line.startswith("VmFlags:"):
        flags = line
print("hg" in flags.split())
torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (4096,)))
"""


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"),
                    reason="Linux with transparent huge pages")  # fmt: skip
@pytest.mark.parametrize("setting", [None, "0"])
def test_fresh_large_outputs_are_advised_huge_pages_unless_disabled(setting):
    """A CPU kernel's fresh output of 8 MiB or more is madvised MADV_HUGEPAGE before its first write
    (docs/design.md, "Large outputs on huge pages"); REPLEARN_HUGE_PAGES=0 turns that off. A fresh
    interpreter under glibc's default malloc settings, so the output is a new mapping."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "REPLEARN_HUGE_PAGES")}
    if setting is not None:
        env["REPLEARN_HUGE_PAGES"] = setting
    result = subprocess.run([sys.executable, "-c", _HUGE_PAGE_PROGRAM], capture_output=True, text=True, env=env,
                            check=True, timeout=120)  # fmt: skip
    assert result.stdout.strip() == str(setting is None), result.stdout + result.stderr
