"""glibc's malloc against TensorFlow's large tensors: keep freed memory for the next step.

Why: TensorFlow's CPU allocator takes its buffers from ``malloc``. glibc serves a request above
its mmap threshold (128 KiB at start; raised, up to 32 MiB, by what is freed) with a fresh
``mmap`` and returns it to the kernel on ``free``, and trims a freed heap top back to the kernel
too. A training step's ``[B, L, ...]`` tensors (tens of MB at L = 200, batch 512) then come back
as new pages every step, and every page is faulted in and zeroed by the kernel again. Measured
with ``benchmarks/bench_attention.py --shapes main --fills 1.0`` (B=1024, L=100, full history):
the fused op's forward + backward took 27.2 ms (median) with glibc's defaults and 8.0 ms with the
thresholds below; the composite 108.9 and 64.4 ms (benchmarks/RESULTS.md, *The allocator*).

``keep_freed_memory()`` sets, with ``mallopt``, the mmap threshold to glibc's maximum (32 MiB:
below it requests are served from the heap) and the trim threshold to 4 GiB (freed memory stays
in the process for reuse). The cost is that the process keeps its peak memory until it exits —
what a training or serving process does anyway. The ``tfrec-kuai`` commands call it first; a
``GLIBC_TUNABLES`` that sets any ``glibc.malloc`` tunable is the user's choice and is left alone.
"""
import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 4 << 30


def _glibc():
    """The process's C library when it is glibc, else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory():
    """Sets the two thresholds in this process; True when set, False where the C library is not
    glibc or ``GLIBC_TUNABLES`` already sets malloc (the module docstring says why)."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                     TRIM_THRESHOLD))
