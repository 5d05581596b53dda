"""core/gemm through its test binding (_C.gemm): both float32 backends against a float64 product
written with torch.mm (the stored product and gemm_panels, B through a PanelSource), and REPLEARN_GEMM's handling (docs/design.md, "GEMM"). The C++ tests
(tests/cpp/test_gemm.cpp) cover the kernel's edges against a naive loop; these check the binding,
the backend switch and the environment variable, and the same results from Python's side.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from replearn import _native

C = _native._C
BACKENDS = ["openblas"] + (["native"] if C.gemm_native_supported() else [])


@pytest.fixture
def backend(request):
    saved = C.gemm_backend()
    C.set_gemm_backend(request.param)
    yield request.param
    C.set_gemm_backend(saved)


def _matrix(rows, cols, pad, generator):
    """A (rows, cols) view with leading dimension cols + pad, NaN in the padding."""
    full = torch.full((rows, cols + pad), float("nan"))
    full[:, :cols] = torch.randn(rows, cols, generator=generator)
    return full[:, :cols]


SHAPES = [(1, 1, 1), (7, 5, 3), (29, 16, 513), (15, 33, 300), (100, 70, 260), (337, 40, 20), (3, 1000, 0), (64, 200, 64)]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_matches_float64_product(backend, m, n, k, ta, tb):
    g = torch.Generator().manual_seed(m * 1000 + n * 10 + k)
    a = _matrix(*((k, m) if ta else (m, k)), 3, g)
    b = _matrix(*((n, k) if tb else (k, n)), 1, g)
    c0 = _matrix(m, n, 2, g)
    op_a, op_b = (a.t() if ta else a).double(), (b.t() if tb else b).double()
    for alpha, beta in [(1.0, 0.0), (-0.5, 1.0), (2.0, 0.25)]:
        c = c0.clone() if beta != 0 else _matrix(m, n, 2, g).fill_(float("nan"))
        C.gemm(a, b, c, ta, tb, alpha, beta)
        want = alpha * (op_a @ op_b) + (beta * c0.double() if beta != 0 else 0)
        tol = 2e-6 * (k + 1) ** 0.5 * 4
        torch.testing.assert_close(c.double(), want, rtol=tol, atol=tol)


# Odd sizes; k = 257, 300 and 513 are not multiples of any KC (192, 256, 512) nor of the OpenBLAS
# path's 256-row blocks; n = 1000 crosses several 64-column panels; (3, 1000, 0): k = 0.
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("source", ["panels", "rows"])
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gemm_panels_matches_float64_product(backend, source, m, n, k, ta, tb, dtype):
    """gemm_panels (B through a PanelSource, the convolutions' implicit GEMM) in both layouts."""
    g = torch.Generator().manual_seed(m * 1000 + n * 10 + k + 7)
    a = _matrix(*((k, m) if ta else (m, k)), 3, g).to(dtype)
    b = _matrix(*((n, k) if tb else (k, n)), 1, g).to(dtype)
    c0 = _matrix(m, n, 2, g).to(dtype)
    op_a, op_b = (a.t() if ta else a).double(), (b.t() if tb else b).double()
    for alpha, beta in [(1.0, 0.0), (-0.5, 1.0)]:
        c = c0.clone() if beta != 0 else torch.full_like(c0, float("nan"))  # beta = 0 must not read c
        C.gemm(a, b, c, ta, tb, alpha, beta, source)
        want = alpha * (op_a @ op_b) + (beta * c0.double() if beta != 0 else 0)
        tol = (2e-6 * (k + 1) ** 0.5 * 4) if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(c.double(), want, rtol=tol, atol=tol)


PACKED_SHAPES = [(1, 1, 1), (7, 5, 3), (32, 1024, 512), (33, 70, 641), (15, 17, 300), (400, 64, 250), (3, 4100, 9)]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m,n,k", PACKED_SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_packed_b_matches_float64_product(backend, dtype, m, n, k, ta, tb):
    # op(b) packed once, used twice (C.gemm_packed_b), with a row-count hint equal to m and another.
    # k = 641, 512 and 300 are not multiples of the native kernel's k blocks (KC = 192/256/512).
    g = torch.Generator().manual_seed(m * 1000 + n * 10 + k + 7)
    a = _matrix(*((k, m) if ta else (m, k)), 3, g).to(dtype)
    b = _matrix(*((n, k) if tb else (k, n)), 1, g).to(dtype)
    c0 = _matrix(m, n, 2, g).to(dtype)
    op_a, op_b = (a.t() if ta else a).double(), (b.t() if tb else b).double()
    for m_hint in (0, 32):
        for alpha, beta in [(1.0, 0.0), (1.0, 1.0), (-0.5, 0.25)]:
            c = c0.clone() if beta != 0 else c0.clone().fill_(float("nan"))
            C.gemm_packed_b(a, b, c, ta, tb, alpha, beta, m_hint)
            want = alpha * (op_a @ op_b) + (beta * c0.double() if beta != 0 else 0)
            tol = (2e-6 if dtype == torch.float32 else 1e-14) * (k + 1) ** 0.5 * 4
            torch.testing.assert_close(c.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("packed", [False, True])
def test_gemm_threads_split_large_products(backend, packed):
    # ≥ 2 M multiply-adds: the native kernel splits C over torch's threads (the packed product: its rows).
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(300, 257, generator=g), torch.randn(257, 190, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _native._sync_threads()
        c = torch.empty(300, 190)
        (C.gemm_packed_b if packed else C.gemm)(a, b, c)
    finally:
        torch.set_num_threads(before)
        _native._sync_threads()
    torch.testing.assert_close(c.double(), a.double() @ b.double(), rtol=1e-4, atol=1e-4)


def test_gemm_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        C.gemm(torch.zeros(3, 4), torch.zeros(5, 2), torch.zeros(3, 2))
    with pytest.raises(TypeError, match="share a dtype"):
        C.gemm(torch.zeros(3, 4), torch.zeros(4, 2, dtype=torch.float64), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="'native' or 'openblas'"):
        C.set_gemm_backend("mkl")


def _backend_under(value: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("REPLEARN_GEMM", None)
    if value is not None:
        env["REPLEARN_GEMM"] = value
    code = (
        "import torch; from replearn import _native as n; c = torch.empty(2, 2); "
        "n._C.gemm(torch.ones(2, 3), torch.ones(3, 2), c); assert (c == 3).all(); print(n._C.gemm_backend())"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_selects_the_backend():
    default = "native" if C.gemm_native_supported() else "openblas"
    assert _backend_under(None).stdout.strip() == default
    assert _backend_under("openblas").stdout.strip() == "openblas"
    forced = _backend_under("native")
    if C.gemm_native_supported():
        assert forced.stdout.strip() == "native"
    else:
        assert "needs a CPU with AVX-512F" in forced.stderr
    bad = _backend_under("mkl")
    assert bad.returncode != 0 and "REPLEARN_GEMM=mkl is not a GEMM backend" in bad.stderr
