"""Keep freed memory in the process, so big activation buffers are reused instead of faulted in
anew on every call.

glibc's malloc hands blocks above a moving threshold to ``mmap`` and gives freed memory at the
top of the heap back to the kernel; a forward pass that frees and re-allocates tens of MB then
page-faults every page of them again, each call. In a process that also does other large
allocations (other models, image decoding, FAISS), that cost 10-15 % of ViT-B/32 bf16 throughput
here (4,000-17,000 page faults per batch of 32; none after this). It is process-wide, so it is
called by clipforge's own commands (``embed``, ``serve``) and its benchmarks, not on import or by
the library's engine; other processes opt in by calling it or by setting the same environment
variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) or using jemalloc/tcmalloc.
The cost: the process keeps its high-water mark of heap memory instead of returning it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
_TRIM_THRESHOLD = 1 << 30  # give memory back only when 1 GiB is free at the top of the heap


def keep_freed_memory() -> bool:
    """Tune glibc's malloc to keep and reuse freed blocks of up to 32 MiB; True when applied
    (False on other C libraries and platforms, where it does nothing)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
