"""Use every core for the elementwise work: split rows across threads.

A training step spends about half its time outside the big matrix products:
the softmax inside attention, layer norm, GELU, and attention's many small
per-head matrix products. NumPy runs each of these on **one core** (only
OpenBLAS's large matrix products use them all). NumPy does release Python's
GIL inside its loops, so plain Python threads that each take a block of rows
run truly in parallel. ``benchmarks/profile_step.py`` on the 2-core machine,
one ``vit_fmnist`` training step at batch 128, before -> after: attention
182 -> 103 ms, GELU 65 -> 45 ms, layer norm 53 -> 40 ms, the whole step
513 -> 403 ms (the matrix products of ``linear``, ~175 ms, were already on
both cores).

:func:`parallel_for` is the one tool: it cuts ``range(n)`` into contiguous
blocks, one per thread, and calls ``fn(block_slice)`` for each. ``fn`` reads
its rows of the inputs and writes its rows of preallocated outputs; no two
blocks touch the same output row, and every row is computed by the same
NumPy calls as in one piece, so **the result is bitwise the same for any
number of threads**. (Sums *across* rows, like a bias gradient, stay in one
thread for that reason.)

The number of threads is the number of CPUs this process may use; set
``MINIVIT_NUM_THREADS`` or call :func:`set_num_threads` to change it
(1 turns the threads off).

**OpenBLAS's idle threads.** After each large matrix product, OpenBLAS keeps
its worker threads spinning on the other cores for about 2^28 CPU cycles
(~0.1 s) before they sleep -- and a training step starts a new product every
few milliseconds, so those cores are never free for our threads, which then
gain nothing. OpenBLAS reads the spin time, as log2 of cycles, from
``OPENBLAS_THREAD_TIMEOUT`` once, when NumPy is first imported. minivit sets
it to 18 (~0.1 ms) if NumPy is not imported yet and the variable is unset:
``python -m minivit`` and the benchmarks get it; in your own script, import
minivit before NumPy or set the variable yourself. Without it, the threads
above gained nothing in a training step (``profile_step.py``: attention 190 ms
with the default spin, 103 ms with 18); the large products were not slower.
"""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["parallel_for", "get_num_threads", "set_num_threads"]

if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")

_MIN_WORK = 1 << 15            # elements; below this a thread costs more than it saves
_pool: ThreadPoolExecutor | None = None
_inside = threading.local()    # set in worker threads: nested calls run serially


def _default_threads() -> int:
    env = os.environ.get("MINIVIT_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"MINIVIT_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"MINIVIT_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        return os.cpu_count() or 1


_num_threads = _default_threads()


def get_num_threads() -> int:
    """How many threads :func:`parallel_for` uses."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (``n >= 1``; 1 = no extra threads). Results do not change."""
    global _num_threads, _pool
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    if n != _num_threads and _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    _num_threads = n


def _mark_worker():
    _inside.active = True


def parallel_for(fn, n: int, work: int | None = None) -> None:
    """Call ``fn(slice(a, b))`` for contiguous blocks that cover ``range(n)``.

    The blocks run in parallel threads (the caller's thread takes the first).
    ``work`` is the number of array elements the whole call touches; small
    jobs (or ``n`` < 2, one thread, or a call from inside a worker) run as
    one block in the caller's thread. An exception in any block is raised
    after every block has finished.
    """
    global _pool
    t = min(_num_threads, n)
    if t < 2 or (work is not None and work < _MIN_WORK) or getattr(_inside, "active", False):
        fn(slice(0, n))
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_num_threads - 1, thread_name_prefix="minivit",
                                   initializer=_mark_worker)
    bounds = [n * i // t for i in range(t + 1)]
    futures = [_pool.submit(fn, slice(bounds[i], bounds[i + 1])) for i in range(1, t)]
    _inside.active = True
    try:
        fn(slice(bounds[0], bounds[1]))
    finally:
        _inside.active = False
        errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e
