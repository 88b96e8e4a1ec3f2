"""Where does a training step (batch 128, random data) spend its time? Per-op
forward and backward totals (ms per step), measured by wrapping every functional op.

    python benchmarks/profile_step.py [--steps 5] [--model vit_fmnist]
"""
import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import minivit.functional as F  # noqa: E402
from minivit import nn  # noqa: E402
from minivit.tensor import Tensor  # noqa: E402

fwd = collections.Counter()
bwd = collections.Counter()
calls = collections.Counter()
_orig_make = Tensor._make


def timed_make(data, parents, backward, op):
    if backward is not None:
        def wrapped(g, _b=backward, _op=op):
            t0 = time.perf_counter()
            r = _b(g)
            bwd[_op] += time.perf_counter() - t0
            return r
    return _orig_make(data, parents, wrapped if backward is not None else None, op)


def wrap_forward(name, fn):
    def inner(*a, **k):
        t0 = time.perf_counter()
        r = fn(*a, **k)
        fwd[name] += time.perf_counter() - t0
        calls[name] += 1
        return r
    return inner


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--model", default="vit_fmnist", help="registered model name (default vit_fmnist)")
    a = p.parse_args()
    import importlib
    for mod in ("basic", "shape", "nn_ops", "loss", "attention", "conv"):
        importlib.import_module(f"minivit.functional.{mod}")._make = timed_make
    for name in F.__all__ if hasattr(F, "__all__") else dir(F):
        fn = getattr(F, name)
        if callable(fn) and not name.startswith("_") and not isinstance(fn, type):
            setattr(F, name, wrap_forward(name, fn))
    nn.F = F
    from bench_train import minivit_step_fn
    from minivit._allocator import tune_allocator
    tune_allocator()
    step = minivit_step_fn(128, a.model)
    step()
    fwd.clear(); bwd.clear(); calls.clear()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    total = (time.perf_counter() - t0) / a.steps * 1000
    print(f"total {total:.1f} ms/step (instrumented)")
    rows = sorted(set(fwd) | set(bwd), key=lambda k: -(fwd[k] + bwd[k]))
    print(f"{'op':32s} {'calls':>6s} {'fwd ms':>8s} {'bwd ms':>8s}")
    for k in rows:
        print(f"{k:32s} {calls[k] // a.steps:6d} {fwd[k] / a.steps * 1000:8.1f} {bwd[k] / a.steps * 1000:8.1f}")
    print(f"{'sum':32s} {'':6s} {sum(fwd.values()) / a.steps * 1000:8.1f} {sum(bwd.values()) / a.steps * 1000:8.1f}")


if __name__ == "__main__":
    main()
