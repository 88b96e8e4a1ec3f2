"""Helpers shared by the op families (not part of the public API)."""
from __future__ import annotations

import numpy as np

from minivit.tensor import Tensor


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """Wrap a constant as a Tensor; float constants take ``like``'s dtype.

    This is what keeps float32 work float32: ``x * 0.5`` or ``x + np_array``
    never upcasts ``x``.
    """
    if isinstance(x, Tensor):
        return x
    arr = np.asarray(x)
    if like is not None and like.data.dtype.kind == "f" and arr.dtype.kind in "fiub":
        arr = arr.astype(like.data.dtype, copy=False)
    elif arr.dtype.kind in "iuf" and not isinstance(x, np.ndarray):
        arr = arr.astype(np.float32)
    return Tensor(arr)


def sum_rows(g2: np.ndarray) -> np.ndarray:
    """``g2.sum(axis=0)`` for a 2-D (rows, features) array, as one matrix-vector
    product ``ones @ g2``: the bias gradient of ``linear`` and ``layer_norm``.

    BLAS's gemv is ~4x faster here than NumPy's axis-0 reduction, which adds
    the rows one by one (0.05 vs 0.22 ms for a 6400 x 64 float32 array).
    """
    if g2.dtype.kind != "f" or g2.shape[0] == 0:
        return g2.sum(axis=0)
    return np.ones(g2.shape[0], dtype=g2.dtype) @ g2


def pair(v, name: str = "value") -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(2, 3) -> (2, 3)``."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def norm_axes(dim, ndim: int) -> tuple[int, ...] | None:
    """Normalise ``dim`` (None, int or tuple, possibly negative) to a sorted tuple."""
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    out = []
    for d in dims:
        if not -ndim <= d < max(ndim, 1):
            raise IndexError(f"dim {d} is out of range for a tensor with {ndim} dimensions")
        out.append(d % max(ndim, 1))
    return tuple(sorted(out))


def check_same_shape(op: str, a, b):
    if a.shape != b.shape:
        raise ValueError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} must be equal")


def broadcast_shapes(op: str, *shapes):
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"{op}: shapes {' and '.join(str(tuple(s)) for s in shapes)} "
                         f"cannot be broadcast together") from None
