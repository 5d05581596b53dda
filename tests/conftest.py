"""Shared fixtures: seeded generators, the devices and dtypes each test runs on."""

from __future__ import annotations

import pytest
import torch

CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def has_gpu() -> bool:
    import replearn._native as native

    return torch.cuda.is_available() and native.has_cuda_kernels()


def device_dtype_params():
    """(device, dtype) pairs: CPU always; CUDA ones marked `gpu` and skipped without a GPU."""
    params = [pytest.param("cpu", dt, id=f"cpu-{str(dt)[6:]}") for dt in CPU_DTYPES]
    skip = pytest.mark.skipif(not has_gpu(), reason="needs a CUDA device and the CUDA kernels")
    params += [pytest.param("cuda", dt, id=f"cuda-{str(dt)[6:]}", marks=[pytest.mark.gpu, skip]) for dt in CUDA_DTYPES]
    return params


def device_params():
    skip = pytest.mark.skipif(not has_gpu(), reason="needs a CUDA device and the CUDA kernels")
    return [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, skip])]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
