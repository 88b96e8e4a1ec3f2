"""Neural-network ops: activations, softmax, normalisation and dropout.
(Losses live in :mod:`.loss`, attention in :mod:`.attention`.)

These are *composite* ops: each could be written as a chain of the
primitives in :mod:`.basic`, but every one of them has a short closed-form
derivative, so each gets a hand-written, fused ``backward`` next to its
forward. That is both what a student comes to read (the derivation is in the
docstring, the code follows it line by line) and what makes training fast
(one pass over memory instead of a dozen intermediate arrays).

Conventions used below:

- ``g`` is the gradient arriving from above, ``dL/d(out)``; it is never
  modified in place. Arrays created inside an op are ours, so we update them
  in place (``out=``, ``*=``) to save memory traffic.
- float32 stays float32: constants are Python floats (NumPy never upcasts an
  array for those) or are cast to the input's dtype.
- Names and argument orders are those of ``torch.nn.functional``.
"""
from __future__ import annotations

import math

import numpy as np

from minivit.tensor import Tensor, get_rng
from minivit._threads import parallel_for
from . import _normal
from ._util import as_tensor, norm_axes, sum_rows

__all__ = ["gelu", "softmax", "log_softmax", "layer_norm", "batch_norm", "dropout", "drop_path"]

_make = Tensor._make


# ------------------------------------------------------------------ input checks
def _float(op: str, x, name: str = "input", like: Tensor | None = None) -> Tensor:
    """``x`` as a floating-point Tensor (constants take ``like``'s dtype)."""
    t = as_tensor(x, like=like)
    if t.data.dtype.kind != "f":
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {t.data.dtype}")
    if like is not None and t.data.dtype != like.data.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.data.dtype} but input has dtype "
                        f"{like.data.dtype}; convert one of them (e.g. .astype(np.float32))")
    return t


def _dim(op: str, dim, ndim: int) -> int:
    """One axis, possibly negative, checked against ``ndim``."""
    if ndim == 0:
        raise ValueError(f"{op}: input must have at least 1 dimension, got a 0-d tensor")
    if not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{op}: dim must be an int, got {dim!r}")
    return norm_axes(int(dim), ndim)[0]


def _reduction(op: str, reduction: str, allowed=("none", "mean", "sum")) -> None:
    if reduction not in allowed:
        raise ValueError(f"{op}: reduction must be one of {', '.join(map(repr, allowed))}, "
                         f"got {reduction!r}")


def _prob(op: str, name: str, p, high_inclusive: bool = False) -> float:
    p = float(p)
    if not (0.0 <= p < 1.0 or (high_inclusive and p == 1.0)):
        rng = "[0, 1]" if high_inclusive else "[0, 1)"
        raise ValueError(f"{op}: {name} must be in {rng}, got {p}")
    return p


def _affine_param(op: str, name: str, p, shape: tuple, x: Tensor) -> Tensor | None:
    """A weight or bias of the given shape, in x's dtype (or None)."""
    if p is None:
        return None
    p = _float(op, p, name, like=x)
    if p.shape != shape:
        raise ValueError(f"{op}: {name} has shape {p.shape} but expected {shape}")
    return p


def _with_params(x: Tensor, *params) -> tuple:
    """Parents of a normalisation op: x, then the affine params that were given."""
    return (x,) + tuple(p for p in params if p is not None)


def _grads_for(parents_given, gx, *grads) -> tuple:
    """Keep the gradients of the params that were given (matches :func:`_with_params`)."""
    return (gx,) + tuple(gp for gp, p in zip(grads, parents_given) if p is not None)


def _channel_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum over every axis but 1 of a * b, for (N, C, ...) arrays: a (C,) vector.

    (Reshaped to (N, C, rest) first: NumPy's einsum mishandles an ellipsis
    whose dims all have size 1 when the output has no ellipsis.)
    """
    N, C = a.shape[:2]
    return np.einsum("ncl,ncl->c", a.reshape(N, C, -1), b.reshape(N, C, -1))


def _bc(v: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector (C,) reshaped to (1, C, 1, ...) for (N, C, ...) data."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


# ================================================================== activations
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(input, approximate: str = "none") -> Tensor:
    """Gaussian Error Linear Unit, elementwise (any shape).

    exact (``approximate="none"``, ``nn.GELU()``, timm)::

        gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
        d/dx    = Phi(x) + x phi(x),        phi(x) = exp(-x^2/2) / sqrt(2 pi)

    tanh approximation (``approximate="tanh"``, JAX/Flax ``nn.gelu``)::

        u = sqrt(2/pi) (x + 0.044715 x^3),  t = tanh(u)
        gelu(x) ~= 0.5 x (1 + t)
        d/dx     = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

    Phi comes from :mod:`._normal`: ``scipy.special.ndtr`` in float64 (accurate
    to ~1e-16, for gradient checks and parity), and in float32 a rational
    approximation of erf evaluated in cache-sized chunks (max error ~2e-7,
    four times faster than scipy, whose float32 loop computes in double).
    """
    x = _float("gelu", input)
    xd = x.data
    if approximate == "none":
        out, cdf = _normal.gelu_forward(xd)  # x Phi(x), and Phi(x) kept for backward

        def backward(g):
            return (_normal.gelu_backward(g, xd, cdf),)   # g (Phi(x) + x phi(x))
        return _make(out, (x,), backward, "gelu")

    if approximate == "tanh":
        c, a = _SQRT_2_OVER_PI, 0.044715
        x2 = xd * xd
        t = x2 * a                           # u = c (x + a x^3) = c x (1 + a x^2)
        t += 1.0
        t *= xd
        t *= c
        np.tanh(t, out=t)                    # t = tanh(u)
        out = t + 1.0
        out *= xd
        out *= 0.5

        def backward(g):
            du = x2 * (3.0 * a)              # du/dx = c (1 + 3 a x^2)
            du += 1.0
            du *= c
            d = t * t                        # 0.5 x (1 - t^2) du/dx
            np.subtract(1.0, d, out=d)
            d *= du
            d *= xd
            d += t                           # + (1 + t)
            d += 1.0
            d *= 0.5
            d *= g
            return (d,)
        return _make(out, (x,), backward, "gelu")

    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


# ================================================================== softmax
def _softmax_array(xd: np.ndarray, axis: int) -> np.ndarray:
    """softmax along ``axis`` of an ndarray (a new array), max subtracted first."""
    y = xd - xd.max(axis=axis, keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def _log_softmax_array(xd: np.ndarray, axis: int) -> np.ndarray:
    """log softmax along ``axis``: (x - m) - log sum exp(x - m)."""
    z = xd - xd.max(axis=axis, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=axis, keepdims=True))
    z -= lse
    return z


def softmax(input, dim: int = -1) -> Tensor:
    """y_i = exp(x_i) / sum_j exp(x_j) along ``dim`` (any shape).

    Computed as exp(x - max x) so large logits do not overflow. A slice whose
    entries are all -inf gives NaN (0/0), as in PyTorch.

    Backward (Jacobian dy_i/dx_j = y_i (delta_ij - y_j))::

        dx = y * (g - sum(g * y, dim))
    """
    x = _float("softmax", input)
    ax = _dim("softmax", dim, x.ndim)
    y = _softmax_array(x.data, ax)

    def backward(g):
        gx = g * y
        s = gx.sum(axis=ax, keepdims=True)
        np.subtract(g, s, out=gx)
        gx *= y
        return (gx,)
    return _make(y, (x,), backward, "softmax")


def log_softmax(input, dim: int = -1) -> Tensor:
    """out = x - log sum_j exp(x_j) along ``dim`` (computed with the max subtracted).

    Backward (d out_i / dx_j = delta_ij - softmax_j)::

        dx = g - softmax(x) * sum(g, dim),   softmax(x) = exp(out)
    """
    x = _float("log_softmax", input)
    ax = _dim("log_softmax", dim, x.ndim)
    out = _log_softmax_array(x.data, ax)

    def backward(g):
        gx = np.exp(out)
        gx *= -g.sum(axis=ax, keepdims=True)
        gx += g
        return (gx,)
    return _make(out, (x,), backward, "log_softmax")


# ================================================================== normalisation
def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the last ``len(normalized_shape)`` dims.

    x (..., *normalized_shape) -> same shape. With D = prod(normalized_shape)
    and statistics per leading index (biased variance, as PyTorch)::

        mu = mean(x),  var = mean((x - mu)^2),  rstd = 1 / sqrt(var + eps)
        xhat = (x - mu) * rstd
        out  = xhat * weight + bias              (weight, bias: normalized_shape)

    Backward, with gh = g * weight (g if no weight) and means over the D
    normalised entries::

        dx      = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))
        dweight = sum over leading dims of g * xhat
        dbias   = sum over leading dims of g

    (The two mean terms are the gradient flowing through mu and through
    rstd; the derivation is in chapter 00.)
    """
    op = "layer_norm"
    x = _float(op, input)
    shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) \
        else tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0 or x.ndim < k or x.shape[x.ndim - k:] != shape:
        raise ValueError(f"{op}: normalized_shape {shape} does not match the last dims of "
                         f"input shape {x.shape}")
    w = _affine_param(op, "weight", weight, shape, x)
    b = _affine_param(op, "bias", bias, shape, x)
    eps = float(eps)
    D = math.prod(shape)
    x2 = x.data.reshape(-1, D)                            # (M, D), one row per leading index
    M = x2.shape[0]
    w2 = w.data.reshape(D) if w is not None else None
    b2 = b.data.reshape(D) if b is not None else None
    xhat = np.empty_like(x2)
    rstd = np.empty((M, 1), dtype=x2.dtype)
    out = np.empty_like(x2) if (w2 is not None or b2 is not None) else xhat

    def forward_rows(r):                                  # rows are independent: threads share them
        xh, rs = xhat[r], rstd[r]
        np.subtract(x2[r], x2[r].mean(axis=1, keepdims=True), out=xh)   # x - mu
        np.einsum("md,md->m", xh, xh, out=rs[:, 0])       # sum (x - mu)^2, no temporary
        rs /= D                                           # var
        rs += eps
        np.sqrt(rs, out=rs)
        np.reciprocal(rs, out=rs)                         # rstd (M, 1)
        xh *= rs
        if w2 is not None:
            np.multiply(xh, w2, out=out[r])
            if b2 is not None:
                out[r] += b2
        elif b2 is not None:
            np.add(xh, b2, out=out[r])

    parallel_for(forward_rows, M, work=x2.size)
    out = out.reshape(x.shape)

    def backward(g):
        g2 = g.reshape(-1, D)
        gx = gw = gb = None
        if x.requires_grad:
            gx = np.empty_like(xhat)

            def backward_rows(r):
                gh = g2[r] * w2 if w2 is not None else g2[r]
                mean_gh = gh.mean(axis=1, keepdims=True)              # (m, 1)
                mean_ghx = np.einsum("md,md->m", gh, xhat[r])[:, None]  # (m, 1)
                mean_ghx /= D
                gxr = gx[r]
                np.multiply(xhat[r], mean_ghx, out=gxr)
                np.subtract(gh, gxr, out=gxr)
                gxr -= mean_gh
                gxr *= rstd[r]

            parallel_for(backward_rows, M, work=xhat.size)
            gx = gx.reshape(x.shape)
        if w is not None and w.requires_grad:
            gw = np.einsum("md,md->d", g2, xhat).reshape(shape)
        if b is not None and b.requires_grad:
            gb = sum_rows(g2).reshape(shape)
        return _grads_for((w, b), gx, gw, gb)
    return _make(out, _with_params(x, w, b), backward, "layer_norm")


def _running(op: str, name: str, r, C: int) -> np.ndarray | None:
    """A running-statistics buffer: the (C,) float ndarray itself (updated in place)."""
    if r is None:
        return None
    arr = r.data if isinstance(r, Tensor) else r
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
        got = f"dtype {arr.dtype}" if isinstance(arr, np.ndarray) else type(r).__name__
        raise TypeError(f"{op}: {name} must be a floating-point ndarray (it is updated in "
                        f"place), got {got}")
    if arr.shape != (C,):
        raise ValueError(f"{op}: {name} has shape {arr.shape} but input has C={C} channels, "
                         f"expected ({C},)")
    return arr


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation per channel of x (N, C), (N, C, L) or (N, C, H, W).

    Statistics are taken over every axis except the channel axis 1, so
    n = N * L (or N * H * W) values per channel.

    Training (``training=True``): normalise with the batch statistics::

        mu = mean(x),  var = mean((x - mu)^2)  (biased),  rstd = 1/sqrt(var + eps)
        xhat = (x - mu) * rstd,   out = xhat * weight + bias

    and, if given, update the running statistics **in place**::

        running_mean = (1 - momentum) running_mean + momentum mu
        running_var  = (1 - momentum) running_var  + momentum var * n / (n - 1)

    (the running variance uses the *unbiased* estimate, as PyTorch).
    Backward, per channel, with sums over the n values::

        dx      = weight * rstd * (g - mean(g) - xhat * mean(g * xhat))
        dweight = sum(g * xhat),   dbias = sum(g)

    Evaluation (``training=False``): a fixed affine map using the running
    statistics, ``out = (x - running_mean) / sqrt(running_var + eps) * weight + bias``,
    so ``dx = g * weight * rstd``.

    ``running_mean``/``running_var`` are ndarrays of shape (C,) (or None in
    training); ``weight``/``bias`` are (C,) Tensors or None.
    """
    op = "batch_norm"
    x = _float(op, input)
    if x.ndim < 2:
        raise ValueError(f"{op}: input must be (N, C), (N, C, L) or (N, C, H, W), got shape {x.shape}")
    C = x.shape[1]
    rm = _running(op, "running_mean", running_mean, C)
    rv = _running(op, "running_var", running_var, C)
    w = _affine_param(op, "weight", weight, (C,), x)
    b = _affine_param(op, "bias", bias, (C,), x)
    eps = float(eps)
    momentum = _prob(op, "momentum", momentum, high_inclusive=True)
    axes = (0,) + tuple(range(2, x.ndim))
    n = x.size // C if C else 0
    xd = x.data
    wv = w.data if w is not None else None
    parents = _with_params(x, w, b)

    if training:
        if n <= 1:
            raise ValueError(f"{op}: training needs more than 1 value per channel, got input shape "
                             f"{x.shape}")
        mu = xd.mean(axis=axes)                                       # (C,)
        xhat = xd - _bc(mu, x.ndim)
        var = _channel_dot(xhat, xhat) / n                            # biased, (C,)
        rstd = 1.0 / np.sqrt(var + eps)
        xhat *= _bc(rstd, x.ndim)
        if wv is not None:
            out = xhat * _bc(wv, x.ndim)
            if b is not None:
                out += _bc(b.data, x.ndim)
        else:
            out = xhat + _bc(b.data, x.ndim) if b is not None else xhat
        if rm is not None:
            rm *= 1.0 - momentum
            rm += momentum * mu
        if rv is not None:
            rv *= 1.0 - momentum
            rv += (momentum * n / (n - 1)) * var

        def backward(g):
            sg = g.sum(axis=axes)                                     # sum(g)        (C,)
            sgx = _channel_dot(g, xhat)                               # sum(g * xhat) (C,)
            gx = None
            if x.requires_grad:
                k = rstd * wv if wv is not None else rstd
                gx = xhat * _bc(sgx / n, x.ndim)
                np.subtract(g, gx, out=gx)
                gx -= _bc(sg / n, x.ndim)
                gx *= _bc(k, x.ndim)
            return _grads_for((w, b), gx, sgx, sg)
        return _make(out, parents, backward, "batch_norm")

    if rm is None or rv is None:
        raise ValueError(f"{op}: evaluation (training=False) needs running_mean and running_var")
    mu = rm.astype(xd.dtype)                                          # copies: the buffers may
    rstd = 1.0 / np.sqrt(rv.astype(xd.dtype) + eps)                   # change before backward
    scale = rstd * wv if wv is not None else rstd
    shift = -mu * scale
    if b is not None:
        shift += b.data
    out = xd * _bc(scale, x.ndim)
    out += _bc(shift, x.ndim)

    def backward(g):
        gx = g * _bc(scale, x.ndim) if x.requires_grad else None
        sg = g.sum(axis=axes)
        gw = None
        if w is not None and w.requires_grad:
            # sum(g * xhat) = rstd * (sum(g * x) - mu * sum(g))
            gw = _channel_dot(g, xd)
            gw -= mu * sg
            gw *= rstd
        return _grads_for((w, b), gx, gw, sg)
    return _make(out, parents, backward, "batch_norm")


# ================================================================== dropout
def _keep_mask(shape: tuple, keep: float, dtype) -> np.ndarray:
    """Bernoulli(keep) mask scaled by 1/keep, in ``dtype``, from minivit's generator.

    Uniforms are drawn in float32 whatever ``dtype`` is, so the same seed
    gives the same mask for float32 and float64 inputs.
    """
    u = get_rng().random(shape, dtype=np.float32)
    m = (u < keep).astype(dtype)
    m *= 1.0 / keep
    return m


def dropout(input, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).

    out = x * m / (1 - p),  m ~ Bernoulli(1 - p) elementwise, so E[out] = x.
    Backward: dx = g * m / (1 - p) (the same mask). With ``training=False``
    or p == 0 the input itself is returned; p == 1 gives zeros. The mask
    comes from minivit's generator: ``minivit.manual_seed`` makes it repeatable.
    """
    x = _float("dropout", input)
    p = _prob("dropout", "p", p, high_inclusive=True)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return _make(np.zeros_like(x.data), (x,), lambda g: (np.zeros_like(g),), "dropout")
    m = _keep_mask(x.shape, 1.0 - p, x.dtype)
    return _make(x.data * m, (x,), lambda g: (g * m,), "dropout")


def drop_path(x, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True) -> Tensor:
    """Stochastic depth (timm ``drop_path``): drop whole samples of a residual branch.

    One Bernoulli(keep = 1 - drop_prob) draw per sample (first dim), shared
    by all its other dims::

        out[i] = x[i] * m_i / keep   (m_i in {0, 1};  no "/ keep" if not scale_by_keep)

    Backward: dx[i] = g[i] * m_i / keep. Identity when not training or
    drop_prob == 0; drop_prob == 1 drops every sample (no division, as timm).
    """
    op = "drop_path"
    x = _float(op, x)
    drop_prob = _prob(op, "drop_prob", drop_prob, high_inclusive=True)
    if not training or drop_prob == 0.0:
        return x
    if x.ndim == 0:
        raise ValueError(f"{op}: input must have a batch dimension, got a 0-d tensor")
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    u = get_rng().random(shape, dtype=np.float32)
    m = (u < keep).astype(x.dtype)
    if keep > 0.0 and scale_by_keep:
        m *= 1.0 / keep
    return _make(x.data * m, (x,), lambda g: (g * m,), "drop_path")
