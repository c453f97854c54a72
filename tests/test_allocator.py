"""keep_freed_memory: a large malloc comes from the heap afterwards, not a fresh mmap; the user's
GLIBC_TUNABLES wins. Each check runs in a fresh interpreter (mallopt is process-wide)."""
import json
import os
import subprocess
import sys

import pytest

from tfrec_kuai import allocator

PROBE = r"""
import ctypes, json, sys
from tfrec_kuai.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
before = libc.mallinfo2().hblkhd
block = libc.malloc(20 << 20)                 # 20 MiB, above glibc's initial 128 KiB mmap threshold
mmapped = libc.mallinfo2().hblkhd - before    # bytes of it served by a fresh mmap
libc.free(block)
print(json.dumps({"tuned": tuned, "mmapped": mmapped}))
"""


def _probe(mode, **env):
    if allocator._glibc() is None:
        pytest.skip("the C library is not glibc")
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return json.loads(done.stdout)


def test_a_large_allocation_comes_from_the_heap_once_freed_memory_is_kept():
    assert _probe("default") == {"tuned": False, "mmapped": pytest.approx(20 << 20, rel=0.01)}
    assert _probe("tuned") == {"tuned": True, "mmapped": 0}


def test_the_users_glibc_tunables_are_left_alone():
    # The user asked for a 1 MiB mmap threshold: not overridden, so 20 MiB is mmapped again.
    assert _probe("tuned", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=1048576") == {
        "tuned": False, "mmapped": pytest.approx(20 << 20, rel=0.01)}
