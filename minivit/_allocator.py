"""Keep freed memory for reuse (Linux/glibc only; a no-op elsewhere).

A training step allocates and frees many large temporaries (a few MB each).
By default glibc serves such blocks with fresh ``mmap`` calls and hands them
back to the system when freed, so every step page-faults its way through new
memory. Raising the mmap threshold and the trim threshold lets the allocator
reuse the same pages instead; on the benchmark machine this made a
``vit_fmnist`` training step about 13% faster (``benchmarks/bench_train.py``).
It changes no numbers, only where the arrays live.
"""
import ctypes
import sys

_done = False


def tune_allocator() -> bool:
    """Apply the setting once per process; returns True if it took effect."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        ok = (libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
              and libc.mallopt(M_TOP_PAD, 64 << 20) == 1)
    except (OSError, AttributeError):
        ok = False
    _done = ok
    return ok
