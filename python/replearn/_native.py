"""Loading of the native modules and the plumbing every op shares to call them.

`replearn._C` holds the CPU kernels and is always built. `replearn._C_cuda` holds the CUDA kernels
and exists when the package was built with nvcc; it imports on machines without a GPU (static CUDA
runtime) and is only called for CUDA tensors.
"""

from __future__ import annotations

import scipy_openblas32  # noqa: F401  loads libscipy_openblas.so, which _C links (core/gemm.h)
import torch

from . import _C

try:  # built only where nvcc was found (REPLEARN_CUDA=AUTO|ON)
    from . import _C_cuda
except ImportError:  # pragma: no cover - depends on the build
    _C_cuda = None

__all__ = ["has_cuda_kernels", "launch"]

_threads = [0]
_get_num_threads = torch.get_num_threads


def has_cuda_kernels() -> bool:
    """Whether this build carries the CUDA module (a GPU is a separate question)."""
    return _C_cuda is not None


def _current_stream(index: int) -> int:
    """torch's current CUDA stream on device `index`, as an integer cudaStream_t."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # what torch's own compiler uses; ~10x cheaper
    return raw(index) if raw is not None else torch.cuda.current_stream(index).cuda_stream


def _sync_threads() -> None:
    # ARCHITECTURE.md: CPU kernels use as many threads as torch.get_num_threads(); reading it costs
    # ~35 ns, so it is checked on every call and forwarded only when it changed.
    n = _get_num_threads()
    if n != _threads[0]:
        _C.set_num_threads(n)
        _threads[0] = n


def launch(name: str, like: torch.Tensor, *args) -> None:
    """Calls native kernel `name` on the device of tensor `like`.

    CPU kernels get the thread count of torch; CUDA kernels run on `like`'s device, on torch's
    current stream, so they order correctly with every torch op around them.
    """
    if like.is_cpu:  # the common case first: one attribute read, no torch.device object
        _sync_threads()
        getattr(_C, name)(*args)
        return
    if like.is_cuda:
        if _C_cuda is None:
            raise RuntimeError(
                "replearn was built without its CUDA kernels (nvcc was not found at build time); "
                "rebuild with REPLEARN_CUDA=ON to use CUDA tensors"
            )
        index = like.get_device()
        if index == torch.cuda.current_device():
            getattr(_C_cuda, name)(*args, stream=_current_stream(index))
        else:
            with torch.cuda.device(index):
                getattr(_C_cuda, name)(*args, stream=_current_stream(index))
        return
    raise ValueError(f"replearn: {name} has kernels for cpu and cuda tensors, got one on {like.device}")


def workspace(name: str, like: torch.Tensor, *args) -> torch.Tensor:
    """Allocates the scratch buffer native kernel `name` asks for (through torch's allocator)."""
    module = _C_cuda if like.is_cuda else _C
    if like.is_cuda:
        nbytes = getattr(module, name + "_workspace_size")(*args)
    else:
        _sync_threads()
        nbytes = getattr(module, name + "_workspace_size")(*args)
    return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=like.device)
