"""Keep freed memory in the process instead of handing it back to the OS (glibc's malloc tunables).

glibc serves blocks above its mmap threshold (128 KiB, rising dynamically up to 32 MiB) with fresh
`mmap`s and returns them to the OS on free, and trims the heap's top beyond 128 KiB; every new tensor
of that size then pays a page fault per 4 KiB page on first touch. A training step allocates and
frees the same large activations every iteration, so on these machines that alone made PyTorch's
CPU layer_norm forward+backward 4x slower (bench/RESULTS.md).

Two ways to change it. `GLIBC_TUNABLES` is read once, when the process starts, so it needs the
command to re-execute itself; `mallopt` changes the same two parameters in a running process. Both
were measured on this project's machines (glibc 2.36; a probe allocating, filling and freeing
float32 tensors of 64 MiB and 256 MiB in a loop, counting minor page faults): with the defaults
every allocation faults in every page (16,385 per 64 MiB, 65,537 per 256 MiB); with either setting
the first allocations of a size still fault while the heap grows (from 1 to about 8 of them at
64 MiB, depending on what else the heap holds), and every later one faults 0 pages — tensors of
32 MB and more are reused either way, mallopt and GLIBC_TUNABLES alike. `replearn` therefore calls `mallopt`
at start-up: no re-exec, and it also holds in the processes torchrun starts. Some glibc versions
refuse an mmap threshold above 32 MiB through mallopt (it returns 0); `configure` reports that and
the command then re-executes itself with GLIBC_TUNABLES.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["MODES", "REUSE_TUNABLES", "configure", "tunables_active"]

MODES = ("reuse", "default")
# The same setting bench/_harness.py uses: mmap threshold and trim threshold at their maxima.
REUSE_TUNABLES = "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967296"
_M_TRIM_THRESHOLD = -1  # malloc.h
_M_MMAP_THRESHOLD = -3
_MAX_INT = 2**31 - 1  # mallopt takes an int


def tunables_active() -> bool:
    """Whether this process started with replearn's GLIBC_TUNABLES."""
    return REUSE_TUNABLES in os.environ.get("GLIBC_TUNABLES", "")


def configure(mode: str = "reuse") -> tuple[str, bool]:
    """Applies the malloc setting `mode` to this process.

    Args:
        mode: "reuse" (keep freed memory) or "default" (leave glibc's defaults).

    Returns:
        (a description for the run summary, whether the setting is in force). For "reuse" the
        second value is False when neither GLIBC_TUNABLES nor mallopt could set it (not glibc, or
        a glibc that refuses the values); the caller may then re-execute with `REUSE_TUNABLES`.
    """
    if mode not in MODES:
        raise ValueError(f"malloc: expected one of {', '.join(MODES)} but got {mode!r}")
    if mode == "default":
        return "default (glibc returns freed memory to the OS)", True
    if tunables_active():
        return "reuse (GLIBC_TUNABLES)", True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "default (no glibc mallopt here)", False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, _MAX_INT) == 1 and mallopt(_M_TRIM_THRESHOLD, _MAX_INT) == 1:
        return "reuse (mallopt: mmap and trim thresholds 2 GiB)", True
    return "default (glibc refused mallopt)", False
