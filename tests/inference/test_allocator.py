"""keep_freed_memory: a freed block of tens of MB is reused, not faulted in anew (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc"
)

# Three times: allocate and touch two 24 MiB blocks (as a forward pass's activations), free both;
# print the page faults of the last two rounds.
CHILD = r"""
import ctypes, resource, sys
from clipforge.inference.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 24 << 20
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(size) for _ in range(2)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_after_tuning() -> None:
    pages = (4 * (24 << 20)) // 4096  # what re-faulting the blocks of two rounds costs (4 KiB pages)
    assert _faults("default") > pages // 2  # glibc gives such blocks back and faults them in anew
    assert _faults("tuned") < pages // 20
