"""Ops that move values around without changing them: reshapes, indexing,
concatenation, padding, rolling and selection.

Their backward passes move the gradient back to where each value came from.
"""
from __future__ import annotations

import builtins

import numpy as np

from minivit.tensor import IndexedGrad, Tensor
from ._util import as_tensor, norm_axes

_make = Tensor._make


def reshape(x, shape) -> Tensor:
    """View ``x`` with a new shape (one entry may be -1)."""
    x = as_tensor(x)
    shape = tuple(shape)
    try:
        out = x.data.reshape(shape)
    except ValueError:
        raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} "
                         f"({x.size} elements) into shape {shape}") from None
    return _make(out, (x,), lambda g: (g.reshape(x.shape),), "reshape")


def flatten(x, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge dims ``start_dim..end_dim`` into one (``torch.flatten``)."""
    x = as_tensor(x)
    if x.ndim == 0:
        return reshape(x, (1,))
    s, e = start_dim % x.ndim, end_dim % x.ndim
    shape = x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
    return reshape(x, shape)


def permute(x, dims) -> Tensor:
    """Reorder the axes; the backward applies the inverse permutation."""
    x = as_tensor(x)
    dims = tuple(d % x.ndim for d in dims) if x.ndim else ()
    if sorted(dims) != list(range(x.ndim)):
        raise ValueError(f"permute: dims {dims} is not a permutation of the {x.ndim} axes of shape {x.shape}")
    inv = tuple(np.argsort(dims))
    return _make(x.data.transpose(dims), (x,), lambda g: (g.transpose(inv),), "permute")


def transpose(x, dim0: int, dim1: int) -> Tensor:
    """Swap two axes."""
    x = as_tensor(x)
    dims = list(range(x.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return permute(x, dims)


def expand(x, shape) -> Tensor:
    """Broadcast to ``shape`` (-1 keeps a dim); the engine sums the gradient back."""
    x = as_tensor(x)
    shape = tuple(shape)
    lead = len(shape) - x.ndim
    full = tuple(x.shape[i - lead] if (s == -1 and i >= lead) else s for i, s in enumerate(shape))
    try:
        out = np.broadcast_to(x.data, full)
    except ValueError:
        raise ValueError(f"expand: cannot expand shape {x.shape} to {shape}") from None
    return _make(out, (x,), lambda g: (g,), "expand")


def squeeze(x, dim=None) -> Tensor:
    """Remove size-1 dims (all, or the given ones that have size 1)."""
    x = as_tensor(x)
    if dim is None:
        shape = tuple(s for s in x.shape if s != 1)
    else:
        axes = norm_axes(dim, x.ndim)
        shape = tuple(s for i, s in enumerate(x.shape) if not (i in axes and s == 1))
    return reshape(x, shape)


def unsqueeze(x, dim: int) -> Tensor:
    """Insert a size-1 dim at ``dim``."""
    x = as_tensor(x)
    d = dim % (x.ndim + 1)
    return reshape(x, x.shape[:d] + (1,) + x.shape[d:])


def _index_data(idx):
    """Unwrap Tensors inside an index (integer / boolean index tensors)."""
    if isinstance(idx, Tensor):
        return idx.data
    if isinstance(idx, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in idx)
    return idx


def _is_basic(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, np.integer, slice)) for i in items)


def _distinct_int_index(idx, shape) -> bool:
    """Is ``idx`` a tuple of integer arrays (or one) that picks no entry twice?

    Then the backward may add ``g`` with a plain ``buf[idx] += g``, ~10x faster
    than ``np.add.at`` (PatchDropout's per-image rows are such an index).
    """
    parts = idx if isinstance(idx, tuple) else (idx,)
    if not parts or len(parts) > len(shape) or not all(
            isinstance(p, np.ndarray) and p.dtype.kind in "iu" for p in parts):
        return False
    flat = np.ravel_multi_index([a.ravel() % n for a, n in zip(np.broadcast_arrays(*parts), shape)],
                                shape[:len(parts)])
    return np.unique(flat).size == flat.size


def getitem(x, idx) -> Tensor:
    """``x[idx]`` for slices, integers, None, integer arrays (gathers, as used
    for relative-position-bias tables) and boolean masks.

    Backward scatters ``g`` into zeros of x's shape; repeated integer indices
    accumulate (``np.add.at``), so a gather used twice gets both gradients.
    Integer-array indices without repeats take a plain ``+=``.
    """
    x = as_tensor(x)
    idx = _index_data(idx)
    try:
        out = x.data[idx]
    except IndexError as e:
        raise IndexError(f"getitem: index {idx!r} is invalid for a tensor of shape {x.shape}: {e}") from None
    basic = _is_basic(idx)
    # The gradient of x is g at the indexed entries and zero elsewhere; the
    # engine adds g into x's gradient buffer there (repeated integer indices
    # accumulate), instead of this op allocating a zero array of x's shape.
    # Whether an integer-array index repeats is only asked when a gradient flows.
    return _make(out, (x,), lambda g: (IndexedGrad(idx, g, basic or _distinct_int_index(idx, x.shape)),),
                 "getitem")


def cat(tensors, dim: int = 0) -> Tensor:
    """Concatenate along ``dim``; the gradient is split back into the pieces."""
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    ref = tensors[0]
    tensors = [as_tensor(t.data, like=ref) if not t.requires_grad else t for t in tensors]
    d = dim % ref.ndim
    for i, t in enumerate(tensors):
        if t.ndim != ref.ndim or t.shape[:d] + t.shape[d + 1:] != ref.shape[:d] + ref.shape[d + 1:]:
            raise ValueError(f"cat: tensor {i} has shape {t.shape}, which does not match "
                             f"tensor 0's shape {ref.shape} outside dim {dim}")
    out = np.concatenate([t.data for t in tensors], axis=d)
    bounds = np.cumsum([t.shape[d] for t in tensors])[:-1]
    return _make(out, tuple(tensors), lambda g: tuple(np.split(g, bounds, axis=d)), "cat")


def stack(tensors, dim: int = 0) -> Tensor:
    """Stack equally-shaped tensors along a new axis ``dim``."""
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("stack: expected a non-empty list of tensors")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(f"stack: tensor {i} has shape {t.shape} but tensor 0 has {tensors[0].shape}")
    d = dim % (tensors[0].ndim + 1)
    out = np.stack([t.data for t in tensors], axis=d)
    n = len(tensors)
    return _make(out, tuple(tensors),
                 lambda g: tuple(np.take(g, i, axis=d) for i in range(n)), "stack")


def split(x, split_size_or_sections, dim: int = 0) -> list:
    """Split into pieces of ``split_size`` (last may be smaller) or of the given sizes."""
    x = as_tensor(x)
    d = dim % x.ndim
    n = x.shape[d]
    if isinstance(split_size_or_sections, (int, np.integer)):
        s = int(split_size_or_sections)
        if s <= 0:
            raise ValueError(f"split: split_size must be positive, got {s}")
        sizes = [s] * (n // s) + ([n % s] if n % s else [])
    else:
        sizes = list(split_size_or_sections)
        if builtins.sum(sizes) != n:
            raise ValueError(f"split: sections {sizes} sum to {builtins.sum(sizes)}, "
                             f"but dim {dim} has size {n}")
    out, start = [], 0
    for s in sizes:
        sl = [slice(None)] * x.ndim
        sl[d] = slice(start, start + s)
        out.append(getitem(x, tuple(sl)))
        start += s
    return out


def chunk(x, chunks: int, dim: int = 0) -> list:
    """Split into ``chunks`` nearly equal pieces (``torch.chunk``)."""
    x = as_tensor(x)
    n = x.shape[dim]
    size = -(-n // chunks)
    return split(x, size, dim)


def pad(x, pad, mode: str = "constant", value: float = 0.0) -> Tensor:
    """Pad like ``torch.nn.functional.pad``: ``pad`` lists (before, after)
    pairs starting from the **last** dim: (left, right, top, bottom, ...).
    Only constant padding. Backward slices the padding off."""
    x = as_tensor(x)
    if mode != "constant":
        raise NotImplementedError(f"pad: mode={mode!r} is not implemented; only 'constant'")
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: expected an even number of values, at most 2*{x.ndim}, got {pad}")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    if builtins.any(a < 0 or b < 0 for a, b in widths):
        raise ValueError(f"pad: negative padding is not supported, got {pad}")
    out = np.pad(x.data, widths, mode="constant", constant_values=value)
    sl = tuple(slice(a, a + s) for (a, _), s in zip(widths, x.shape))
    return _make(out, (x,), lambda g: (g[sl],), "pad")


def roll(x, shifts, dims) -> Tensor:
    """Cyclic shift (``torch.roll``: out[i] = x[(i - shift) mod n]); backward rolls back."""
    x = as_tensor(x)
    out = np.roll(x.data, shifts, axis=dims)
    neg = tuple(-s for s in shifts) if isinstance(shifts, (tuple, list)) else -shifts
    return _make(out, (x,), lambda g: (np.roll(g, neg, axis=dims),), "roll")


def where(condition, x, y) -> Tensor:
    """``condition ? x : y`` elementwise (broadcasting); no gradient to ``condition``."""
    cond = condition.data if isinstance(condition, Tensor) else np.asarray(condition)
    if cond.dtype != bool:
        raise TypeError(f"where: condition must be boolean, got dtype {cond.dtype}")
    if not isinstance(x, Tensor):
        y = as_tensor(y)
        x = as_tensor(x, like=y)
    else:
        y = as_tensor(y, like=x)
    out = np.where(cond, x.data, y.data)
    return _make(out, (x, y), lambda g: (np.where(cond, g, 0), np.where(cond, 0, g)), "where")


def masked_fill(x, mask, value: float) -> Tensor:
    """Set positions where ``mask`` is True to ``value``; they get no gradient."""
    x = as_tensor(x)
    m = mask.data if isinstance(mask, Tensor) else np.asarray(mask)
    if m.dtype != bool:
        raise TypeError(f"masked_fill: mask must be boolean, got dtype {m.dtype}")
    out = np.where(m, np.asarray(value, dtype=x.dtype), x.data)
    return _make(out, (x,), lambda g: (np.where(m, 0, g),), "masked_fill")
