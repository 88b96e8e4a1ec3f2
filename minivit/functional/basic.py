"""Arithmetic, elementwise maths, matmul/linear and reductions.

Every op computes its value with NumPy and, right next to it, the
``backward(g)`` that maps the output gradient ``g = dL/d(out)`` to one
gradient per input. Broadcasting is undone by the engine
(:func:`minivit.tensor.unbroadcast`), so a backward may return a gradient
of the broadcast shape.
"""
from __future__ import annotations

import numpy as np

from minivit.tensor import Tensor
from ._util import as_tensor, broadcast_shapes, norm_axes, sum_rows

_make = Tensor._make


# ------------------------------------------------------------------ arithmetic
def _binary(a, b):
    if not isinstance(a, Tensor):
        b = as_tensor(b)
        a = as_tensor(a, like=b)
    else:
        b = as_tensor(b, like=a)
    return a, b


def add(a, b) -> Tensor:
    """out = a + b (broadcasting)."""
    a, b = _binary(a, b)
    broadcast_shapes("add", a.shape, b.shape)
    return _make(a.data + b.data, (a, b), lambda g: (g, g), "add")


def sub(a, b) -> Tensor:
    """out = a - b (broadcasting)."""
    a, b = _binary(a, b)
    broadcast_shapes("sub", a.shape, b.shape)
    return _make(a.data - b.data, (a, b), lambda g: (g, -g), "sub")


def mul(a, b) -> Tensor:
    """out = a * b;  da = g*b,  db = g*a."""
    a, b = _binary(a, b)
    broadcast_shapes("mul", a.shape, b.shape)

    def backward(g):
        return (g * b.data if a.requires_grad else None,
                g * a.data if b.requires_grad else None)
    return _make(a.data * b.data, (a, b), backward, "mul")


def div(a, b) -> Tensor:
    """out = a / b;  da = g/b,  db = -g*a/b^2 = -g*out/b."""
    a, b = _binary(a, b)
    broadcast_shapes("div", a.shape, b.shape)
    out = a.data / b.data

    def backward(g):
        return (g / b.data if a.requires_grad else None,
                -g * out / b.data if b.requires_grad else None)
    return _make(out, (a, b), backward, "div")


def neg(x) -> Tensor:
    """out = -x."""
    x = as_tensor(x)
    return _make(-x.data, (x,), lambda g: (-g,), "neg")


def pow(x, exponent) -> Tensor:
    """out = x ** p;  dx = g * p * x^(p-1),  dp = g * out * log(x)."""
    x, p = _binary(x, exponent)
    out = x.data ** p.data

    def backward(g):
        gx = g * p.data * x.data ** (p.data - 1) if x.requires_grad else None
        gp = None
        if p.requires_grad:
            with np.errstate(divide="ignore", invalid="ignore"):
                gp = g * out * np.where(x.data > 0, np.log(np.where(x.data > 0, x.data, 1)), 0)
        return gx, gp
    return _make(out, (x, p), backward, "pow")


# ------------------------------------------------------------------ elementwise maths
def exp(x) -> Tensor:
    """out = e^x;  dx = g * out."""
    x = as_tensor(x)
    out = np.exp(x.data)
    return _make(out, (x,), lambda g: (g * out,), "exp")


def log(x) -> Tensor:
    """out = ln x;  dx = g / x."""
    x = as_tensor(x)
    return _make(np.log(x.data), (x,), lambda g: (g / x.data,), "log")


def sqrt(x) -> Tensor:
    """out = sqrt(x);  dx = g / (2 out)."""
    x = as_tensor(x)
    out = np.sqrt(x.data)
    return _make(out, (x,), lambda g: (g / (2 * out),), "sqrt")


def abs(x) -> Tensor:
    """out = |x|;  dx = g * sign(x)  (0 at x = 0, like PyTorch)."""
    x = as_tensor(x)
    return _make(np.abs(x.data), (x,), lambda g: (g * np.sign(x.data),), "abs")


def clamp(x, min=None, max=None) -> Tensor:
    """out = min(max(x, min), max);  the gradient passes where x is inside [min, max]."""
    x = as_tensor(x)
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    out = np.clip(x.data, min, max)

    def backward(g):
        inside = np.ones(x.shape, dtype=bool)
        if min is not None:
            inside &= x.data >= min
        if max is not None:
            inside &= x.data <= max
        return (g * inside,)
    return _make(out, (x,), backward, "clamp")


def maximum(a, b) -> Tensor:
    """Elementwise max; on ties the gradient is split equally (like PyTorch)."""
    a, b = _binary(a, b)
    out = np.maximum(a.data, b.data)

    def backward(g):
        wa = (a.data > b.data) + 0.5 * (a.data == b.data)
        wa = wa.astype(g.dtype)
        return g * wa, g * (1 - wa)
    return _make(out, (a, b), backward, "maximum")


def minimum(a, b) -> Tensor:
    """Elementwise min; on ties the gradient is split equally."""
    a, b = _binary(a, b)
    out = np.minimum(a.data, b.data)

    def backward(g):
        wa = ((a.data < b.data) + 0.5 * (a.data == b.data)).astype(g.dtype)
        return g * wa, g * (1 - wa)
    return _make(out, (a, b), backward, "minimum")


def tanh(x) -> Tensor:
    """out = tanh x;  dx = g (1 - out^2)."""
    x = as_tensor(x)
    out = np.tanh(x.data)
    return _make(out, (x,), lambda g: (g * (1 - out * out),), "tanh")


def sigmoid(x) -> Tensor:
    """out = 1 / (1 + e^-x) (computed stably);  dx = g out (1 - out)."""
    x = as_tensor(x)
    d = x.data
    e = np.exp(-np.abs(d))
    out = np.where(d >= 0, 1 / (1 + e), e / (1 + e)).astype(d.dtype, copy=False)
    return _make(out, (x,), lambda g: (g * out * (1 - out),), "sigmoid")


def relu(x) -> Tensor:
    """out = max(x, 0);  dx = g [x > 0]."""
    x = as_tensor(x)
    out = np.maximum(x.data, 0)
    return _make(out, (x,), lambda g: (g * (x.data > 0),), "relu")


def astype(x, dtype) -> Tensor:
    """Cast to ``dtype``; the gradient is cast back."""
    x = as_tensor(x)
    dt = x.data.dtype
    return _make(x.data.astype(dtype), (x,), lambda g: (g.astype(dt),), "astype")


# ------------------------------------------------------------------ matmul and linear
def matmul(a, b) -> Tensor:
    """Batched, broadcasting ``a @ b`` (1-D operands as in ``np.matmul``).

    For 2-D: da = g @ b^T, db = a^T @ g; batch dimensions that were broadcast
    are summed by the engine.
    """
    a, b = _binary(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: both operands need at least 1 dimension, "
                         f"got shapes {a.shape} and {b.shape}")
    ka = a.shape[-1]
    kb = b.shape[-2] if b.ndim >= 2 else b.shape[0]
    if ka != kb:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned "
                         f"(last dim of a is {ka}, {'second-last' if b.ndim >= 2 else 'only'} dim of b is {kb})")
    if a.ndim > 2 and b.ndim > 2:
        broadcast_shapes("matmul (batch dims)", a.shape[:-2], b.shape[:-2])
    out = np.matmul(a.data, b.data)

    def backward(g):
        # Treat 1-D operands as (1, k) and (k, 1) matrices, as np.matmul does.
        A = a.data[None, :] if a.ndim == 1 else a.data        # (..., n, k)
        B = b.data[:, None] if b.ndim == 1 else b.data        # (..., k, m)
        G = np.expand_dims(g, -2) if a.ndim == 1 else g
        G = np.expand_dims(G, -1) if b.ndim == 1 else G       # (..., n, m)
        ga = gb = None
        if a.requires_grad:
            ga = np.matmul(G, np.swapaxes(B, -1, -2))         # dA = G B^T
            if a.ndim == 1:
                ga = ga[..., 0, :]
        if b.requires_grad:
            if B.ndim == 2 and A.ndim > 2:
                # b is shared by every batch item: one 2-D matmul sums over the batch
                gb = A.reshape(-1, A.shape[-1]).T @ G.reshape(-1, G.shape[-1])
            else:
                gb = np.matmul(np.swapaxes(A, -1, -2), G)     # dB = A^T G
            if b.ndim == 1:
                gb = gb[..., 0]
        return ga, gb
    return _make(out, (a, b), backward, "matmul")


def linear(x, weight, bias=None) -> Tensor:
    """y = x W^T + b, with W stored as (out_features, in_features) like PyTorch.

    x (..., in) -> y (..., out).  Backward: dx = g W, dW = g^T x (summed over
    all leading dims, done as one 2-D matmul), db = sum of g (``ones @ g``).
    """
    x = as_tensor(x)
    weight = as_tensor(weight, like=x)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features (shape {x.shape}) but weight "
                         f"has shape {weight.shape} (out_features, in_features={weight.shape[1]})")
    W = weight.data
    x2 = x.data.reshape(-1, x.shape[-1])
    out = x2 @ W.T
    parents = (x, weight)
    if bias is not None:
        bias = as_tensor(bias, like=x)
        out += bias.data
        parents = (x, weight, bias)
    out = out.reshape(x.shape[:-1] + (W.shape[0],))

    def backward(g):
        g2 = g.reshape(-1, W.shape[0])
        gx = (g2 @ W).reshape(x.shape) if x.requires_grad else None
        gw = g2.T @ x2 if weight.requires_grad else None
        if bias is None:
            return gx, gw
        return gx, gw, (sum_rows(g2) if bias.requires_grad else None)
    return _make(out, parents, backward, "linear")


# ------------------------------------------------------------------ reductions
def _expand_back(g, shape, axes, keepdim):
    """Reshape a reduced gradient so it broadcasts against the input shape."""
    if axes is None:
        return np.reshape(g, (1,) * len(shape))
    if not keepdim:
        g = np.expand_dims(g, axes)
    return g


def sum(x, dim=None, keepdim: bool = False) -> Tensor:
    """Sum over ``dim`` (None = all);  dx = g broadcast back."""
    x = as_tensor(x)
    axes = norm_axes(dim, x.ndim)
    out = np.sum(x.data, axis=axes, keepdims=keepdim)
    return _make(np.asarray(out), (x,),
                 lambda g: (np.broadcast_to(_expand_back(g, x.shape, axes, keepdim), x.shape),), "sum")


def mean(x, dim=None, keepdim: bool = False) -> Tensor:
    """Mean over ``dim``;  dx = g / n broadcast back."""
    x = as_tensor(x)
    axes = norm_axes(dim, x.ndim)
    out = np.mean(x.data, axis=axes, keepdims=keepdim)
    n = x.data.size // np.asarray(out).size if x.data.size else 1
    return _make(np.asarray(out, dtype=x.dtype), (x,),
                 lambda g: (np.broadcast_to(_expand_back(g, x.shape, axes, keepdim) / n, x.shape),), "mean")


def var(x, dim=None, keepdim: bool = False, unbiased: bool = True) -> Tensor:
    """Variance over ``dim`` (``unbiased`` divides by n-1, as torch.var);
    dx = g * 2 (x - mean) / (n - ddof)."""
    x = as_tensor(x)
    axes = norm_axes(dim, x.ndim)
    ddof = 1 if unbiased else 0
    mu = np.mean(x.data, axis=axes, keepdims=True)
    n = x.data.size // mu.size
    d = x.data - mu
    out = np.sum(d * d, axis=axes, keepdims=keepdim) / (n - ddof)
    return _make(np.asarray(out, dtype=x.dtype), (x,),
                 lambda g: (_expand_back(g, x.shape, axes, keepdim) * (2 / (n - ddof)) * d,), "var")


def _extreme(x, dim, keepdim, fn, name):
    x = as_tensor(x)
    axes = norm_axes(dim, x.ndim)
    out = fn(x.data, axis=axes, keepdims=True)

    def backward(g):
        # ties share the gradient equally (torch.amax semantics)
        hit = (x.data == out)
        hit = hit / hit.sum(axis=axes, keepdims=True)
        return (_expand_back(g, x.shape, axes, keepdim) * hit,)
    res = out if keepdim else (np.squeeze(out, axis=axes) if axes is not None else out.reshape(()))
    return _make(np.asarray(res), (x,), backward, name)


def amax(x, dim=None, keepdim: bool = False) -> Tensor:
    """Maximum over ``dim``; ties share the gradient equally."""
    return _extreme(x, dim, keepdim, np.max, "amax")


def amin(x, dim=None, keepdim: bool = False) -> Tensor:
    """Minimum over ``dim``; ties share the gradient equally."""
    return _extreme(x, dim, keepdim, np.min, "amin")


def max(x, dim=None, keepdim: bool = False) -> Tensor:
    """Maximum over ``dim`` (values only; use ``x.argmax(dim)`` for indices)."""
    return amax(x, dim, keepdim)


def min(x, dim=None, keepdim: bool = False) -> Tensor:
    """Minimum over ``dim`` (values only)."""
    return amin(x, dim, keepdim)
