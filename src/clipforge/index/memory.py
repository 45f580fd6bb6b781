"""Give freed heap memory back to the kernel after the index's big, short-lived arrays.

Reconciling or building an index of 10M vectors makes and frees several arrays of 80-160 MB
(ids, sorted copies, masks) and many smaller ones; glibc keeps much of that freed memory in the
process (measured: opening a 10M index left 1240 MiB resident, 782 MiB after ``malloc_trim``,
the index itself being 756 MiB). ``malloc_trim(0)`` returns it explicitly, whatever the trim
threshold (``inference.allocator.keep_freed_memory`` raises that threshold for the engine's
benefit; this call still trims). A no-op on other C libraries and platforms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["return_freed_memory"]

_TRIM = None  # libc's malloc_trim, looked up once (False: not available)


def return_freed_memory() -> bool:
    """malloc_trim(0) where glibc has it -> whether any memory was returned."""
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        if sys.platform.startswith("linux"):
            try:
                trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
                trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
                _TRIM = trim
            except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
                pass
    return bool(_TRIM(0)) if _TRIM else False
