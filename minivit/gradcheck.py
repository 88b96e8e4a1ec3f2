"""Finite-difference gradient checking.

For a function ``f`` of tensors we compare the analytic gradient from
``backward()`` with the central difference

    dL/dx_i ~= (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)

in float64, where ``L = sum(f(x) * R)`` for a fixed random ``R`` (so every
output element takes part, with a different weight). On a mismatch the error
says which input, which index, and both numbers, so the bug can be found.
"""
from __future__ import annotations

import numpy as np

from minivit.tensor import Tensor, no_grad

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when analytic and numeric gradients differ."""


def _scalar(out: Tensor, R: np.ndarray) -> Tensor:
    return (out * R).sum() if out.data.size > 1 or out.ndim else out * R


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              params=(), max_checks: int | None = 200, seed: int = 0) -> bool:
    """Check ``fn``'s gradients with respect to ``inputs`` (and ``params``).

    Parameters
    ----------
    fn : callable(*inputs) -> Tensor
    inputs : sequence of Tensors or arrays. Floating inputs are copied to
        float64 leaves; those with ``requires_grad`` are checked (all floating
        inputs if none has it). Integer inputs (labels) are passed unchanged.
    params : extra float64 tensors that ``fn`` uses through a closure (e.g.
        ``model.parameters()`` after ``model.to(np.float64)``); checked too.
    max_checks : entries sampled per tensor (None = every entry).

    Returns True, or raises :class:`GradcheckError` naming the input, the
    index and the analytic vs numeric value of the worst mismatch.
    """
    rng = np.random.default_rng(seed)
    ins, wanted = [], []
    for x in inputs:
        arr = x.data if isinstance(x, Tensor) else np.asarray(x)
        if arr.dtype.kind == "f":
            ins.append(Tensor(np.array(arr, dtype=np.float64, order="C"), requires_grad=True))
            wanted.append(isinstance(x, Tensor) and x.requires_grad)
        else:
            ins.append(Tensor(arr))
            wanted.append(False)
    floats = [i for i, t in enumerate(ins) if t.dtype.kind == "f"]
    checked = [i for i in floats if wanted[i]] or floats
    for i in floats:
        ins[i].requires_grad = i in checked
    params = list(params)
    for j, p in enumerate(params):
        if p.dtype != np.float64:
            raise TypeError(f"gradcheck: params[{j}] has dtype {p.dtype}; convert the model with "
                            f".to(np.float64) first (finite differences need float64)")
    named = [(f"inputs[{i}]", ins[i]) for i in checked] + [(f"params[{j}]", p) for j, p in enumerate(params)]
    if not named:
        raise ValueError("gradcheck: nothing to check (no floating-point inputs or params)")

    out = fn(*ins)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    if out.dtype != np.float64:
        raise TypeError(f"gradcheck: fn returned dtype {out.dtype}; it must compute in float64")
    R = rng.standard_normal(out.shape)
    for _, t in named:
        t.grad = None
    _scalar(out, R).backward()
    analytic = {name: (t.grad if t.grad is not None else np.zeros_like(t.data)).copy() for name, t in named}

    def loss() -> float:
        with no_grad():
            return float((fn(*ins).data * R).sum())

    for name, t in named:
        n = t.data.size
        idx = np.arange(n) if max_checks is None or n <= max_checks else rng.choice(n, max_checks, replace=False)
        numeric = np.empty(len(idx))
        for k, i in enumerate(idx):
            at = np.unravel_index(i, t.shape)   # works for any memory layout
            old = t.data[at]
            t.data[at] = old + eps
            lp = loss()
            t.data[at] = old - eps
            lm = loss()
            t.data[at] = old
            numeric[k] = (lp - lm) / (2 * eps)
        a = analytic[name].reshape(-1)[idx]
        err = np.abs(a - numeric)
        bad = err > atol + rtol * np.abs(numeric)
        if bad.any():
            w = int(np.argmax(err - (atol + rtol * np.abs(numeric))))
            where = np.unravel_index(idx[w], t.shape)
            raise GradcheckError(
                f"gradcheck failed for {name} (shape {t.shape}) at index {tuple(int(v) for v in where)}: "
                f"analytic {a[w]:.8g} vs numeric {numeric[w]:.8g} (|diff| {err[w]:.3g}, "
                f"allowed {atol + rtol * abs(numeric[w]):.3g}); {int(bad.sum())} of {len(idx)} "
                f"checked entries differ.\n  analytic: {np.array2string(a[:8], precision=5)}\n"
                f"  numeric:  {np.array2string(numeric[:8], precision=5)}")
    return True
