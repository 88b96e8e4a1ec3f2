"""Neural-network ops: activations, softmax, normalisation, dropout, losses
and attention.

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
from scipy.special import erf as _erf, xlogy as _xlogy

from minivit.tensor import Tensor, get_rng
from ._util import as_tensor, broadcast_shapes, norm_axes

__all__ = ["gelu", "softmax", "log_softmax", "layer_norm", "batch_norm", "dropout",
           "drop_path", "cross_entropy", "nll_loss", "kl_div", "mse_loss",
           "cosine_similarity", "normalize", "scaled_dot_product_attention"]

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
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
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

    ``erf`` is ``scipy.special.erf`` (accurate to ~1e-16 in float64; it has
    a float32 loop, so float32 stays float32).
    """
    x = _float("gelu", input)
    xd = x.data
    if approximate == "none":
        cdf = xd * _SQRT_HALF                # Phi(x) = 0.5 (1 + erf(x/sqrt2)), built in place
        _erf(cdf, out=cdf)
        cdf += 1.0
        cdf *= 0.5
        out = xd * cdf

        def backward(g):
            d = xd * xd                      # phi(x) = exp(-x^2/2)/sqrt(2 pi), in place
            d *= -0.5
            np.exp(d, out=d)
            d *= _INV_SQRT_2PI
            d *= xd                          # x phi(x)
            d += cdf                         # Phi(x) + x phi(x)
            d *= g
            return (d,)
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
    xhat = x2 - x2.mean(axis=1, keepdims=True)            # x - mu  (ours: updated in place)
    rstd = np.einsum("md,md->m", xhat, xhat)[:, None]     # sum (x - mu)^2, no temporary
    rstd /= D                                             # var
    rstd += eps
    np.sqrt(rstd, out=rstd)
    np.reciprocal(rstd, out=rstd)                         # rstd (M, 1)
    xhat *= rstd
    w2 = w.data.reshape(D) if w is not None else None
    b2 = b.data.reshape(D) if b is not None else None
    if w2 is not None:
        out = xhat * w2
        if b2 is not None:
            out += b2
    else:
        out = xhat + b2 if b2 is not None else xhat
    out = out.reshape(x.shape)

    def backward(g):
        g2 = g.reshape(-1, D)
        gx = gw = gb = None
        if x.requires_grad:
            gh = g2 * w2 if w2 is not None else g2
            mean_gh = gh.mean(axis=1, keepdims=True)                  # (M, 1)
            mean_ghx = np.einsum("md,md->m", gh, xhat)[:, None]       # (M, 1)
            mean_ghx /= D
            gx = xhat * mean_ghx
            np.subtract(gh, gx, out=gx)
            gx -= mean_gh
            gx *= rstd
            gx = gx.reshape(x.shape)
        if w is not None and w.requires_grad:
            gw = np.einsum("md,md->d", g2, xhat).reshape(shape)
        if b is not None and b.requires_grad:
            gb = g2.sum(axis=0).reshape(shape)
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


# ================================================================== classification losses
def _classes_last(a: np.ndarray) -> np.ndarray:
    """(N, C, d1, ...) -> (M, C) with M = N*d1*...;  (C,) -> (1, C)."""
    if a.ndim == 1:
        return a[None, :]
    if a.ndim == 2:
        return a
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _classes_back(a2: np.ndarray, shape: tuple) -> np.ndarray:
    """Inverse of :func:`_classes_last`."""
    if len(shape) <= 2:
        return a2.reshape(shape)
    lead = (shape[0],) + shape[2:] + (shape[1],)
    return np.moveaxis(a2.reshape(lead), -1, 1)


def _class_weight(op: str, weight, C: int, x: Tensor) -> np.ndarray | None:
    if weight is None:
        return None
    if isinstance(weight, Tensor) and weight.requires_grad:
        raise ValueError(f"{op}: weight is a constant rescaling of the classes and gets no "
                         f"gradient; pass weight.detach()")
    wd = weight.data if isinstance(weight, Tensor) else np.asarray(weight)
    if wd.shape != (C,):
        raise ValueError(f"{op}: weight has shape {wd.shape} but input has C={C} classes, expected ({C},)")
    return wd.astype(x.dtype, copy=False)


def _class_targets(op: str, t: np.ndarray, C: int, ignore_index: int):
    """Flatten integer targets; check the range. Returns (tc, valid) of shape (M,)."""
    t = t.reshape(-1)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= C))
    if bad.any():
        v = int(t[bad][0])
        raise IndexError(f"{op}: target contains class index {v}, but input has C={C} classes "
                         f"(valid: 0..{C - 1}, or ignore_index={ignore_index})")
    tc = np.where(valid, t, 0)
    return tc, valid


def _check_class_input(op: str, input) -> tuple[Tensor, int]:
    x = _float(op, input)
    if x.ndim == 0:
        raise ValueError(f"{op}: input must be (N, C), (N, C, d1, ...) or (C,), got a 0-d tensor")
    return x, (x.shape[1] if x.ndim >= 2 else x.shape[0])


def _index_shape(shape: tuple) -> tuple:
    """Shape of class-index targets for an input of ``shape``: (N, d1, ...) or ()."""
    return shape[:1] + shape[2:] if len(shape) >= 2 else ()


def cross_entropy(input, target, weight=None, reduction: str = "mean",
                  label_smoothing: float = 0.0, ignore_index: int = -100) -> Tensor:
    """Softmax cross-entropy from logits, as ``torch.nn.functional.cross_entropy``.

    input: logits (N, C), (N, C, d1, ...) (e.g. segmentation (N, C, H, W)) or (C,);
    the class axis is dim 1. target is either

    - class indices: integers of shape (N, d1, ...) (an ndarray or integer
      Tensor); entries equal to ``ignore_index`` are skipped, or
    - class probabilities: floats of the input's shape (soft targets, e.g.
      mixup/cutmix, distillation); ``ignore_index`` does not apply.

    With logp = log_softmax(input, 1), per position i, class weights w_c
    (1 if ``weight`` is None) and smoothing eps::

        indices:        loss_i = (1-eps) w_{y_i} (-logp_{i,y_i}) + eps/C sum_c w_c (-logp_ic)
        probabilities:  loss_i = -sum_c w_c q_ic logp_ic,   q = (1-eps) target + eps/C

    Both read loss_i = -sum_c A_ic logp_ic for a "weighted target" A.
    ``reduction``: "none" (shape (N, d1, ...)), "sum", or "mean" = sum /
    (sum of w_{y_i} over non-ignored i) for indices, sum / (number of
    positions) for probabilities (PyTorch's two rules).

    Fused backward (the softmax and the log cancel)::

        dinput_ic = c_i * (softmax_ic * sum_c' A_ic' - A_ic)

    i.e. (softmax - target) / N for plain one-hot targets with mean
    reduction; c_i is the upstream gradient times the reduction's scale.
    Soft targets that require grad get dtarget_ic = -c_i (1-eps) w_c logp_ic.
    """
    op = "cross_entropy"
    x, C = _check_class_input(op, input)
    _reduction(op, reduction)
    eps = _prob(op, "label_smoothing", label_smoothing, high_inclusive=True)
    w = _class_weight(op, weight, C, x)
    td = target.data if isinstance(target, Tensor) else np.asarray(target)
    idx_shape = _index_shape(x.shape)
    logp = _log_softmax_array(_classes_last(x.data), 1)              # (M, C)
    M = logp.shape[0]

    if td.dtype.kind == "f":  # ------------------------------------------- probabilities
        if td.shape != x.shape:
            raise ValueError(f"{op}: float target of shape {td.shape} must have the input's shape "
                             f"{x.shape} (class probabilities), or use integer class indices "
                             f"of shape {idx_shape}")
        t = _float(op, target, "target", like=x)
        q = _classes_last(t.data)
        if eps > 0.0:
            q = q * (1.0 - eps)
            q += eps / C
        A = q * w if w is not None else q                             # (M, C)
        rows = -np.einsum("mc,mc->m", A, logp)
        S = A.sum(axis=1)                                             # sum_c A_ic
        denom = float(M)
        out_shape = idx_shape

        def backward(g):
            c = _row_scale(g, reduction, denom, M)                    # (M,)
            gx = gt = None
            if x.requires_grad:
                gx = np.exp(logp)
                gx *= (S * c)[:, None]
                gx -= A * c[:, None]
                gx = _classes_back(gx, x.shape)
            if t.requires_grad:
                gt = logp * (-(1.0 - eps) * c)[:, None]
                if w is not None:
                    gt *= w
                gt = _classes_back(gt, x.shape)
            return gx, gt
        value = _reduce_rows(rows, reduction, denom, out_shape, x.dtype)
        return _make(value, (x, t), backward, "cross_entropy")

    # ------------------------------------------------------------------ class indices
    if td.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class indices or float class "
                        f"probabilities, got dtype {td.dtype}")
    if td.shape != idx_shape:
        raise ValueError(f"{op}: target of shape {td.shape} does not match input of shape {x.shape}: "
                         f"class indices need shape {idx_shape} (input without its class dim 1), "
                         f"probabilities need {x.shape}")
    tc, valid = _class_targets(op, td, C, ignore_index)
    ar = np.arange(M)
    wt = (w[tc] * valid) if w is not None else valid.astype(x.dtype)  # w_{y_i}, 0 if ignored
    rows = logp[ar, tc] * (-(1.0 - eps))
    rows *= wt
    if eps > 0.0:
        smooth = logp @ w if w is not None else logp.sum(axis=1)      # sum_c w_c logp_ic
        smooth *= valid
        smooth *= -(eps / C)
        rows += smooth
    denom = float(wt.sum())
    out_shape = idx_shape

    def backward(g):
        c = _row_scale(g, reduction, denom, M)                        # (M,)
        # A_ik = (1-eps) w_{y_i} [k == y_i] + eps/C w_k  (rows of ignored i are 0), so
        # S_i = sum_k A_ik = (1-eps) w_{y_i} + eps/C sum_k w_k
        vc = valid * c
        S = (1.0 - eps) * wt + (eps / C) * (w.sum() if w is not None else C) * valid
        gx = np.exp(logp)
        gx *= (S * c)[:, None]
        gx[ar, tc] -= (1.0 - eps) * wt * c
        if eps > 0.0:
            gx -= (eps / C) * (w[None, :] if w is not None else 1.0) * vc[:, None]
        return (_classes_back(gx, x.shape),)
    value = _reduce_rows(rows, reduction, denom, out_shape, x.dtype)
    return _make(value, (x,), backward, "cross_entropy")


def _reduce_rows(rows: np.ndarray, reduction: str, denom: float, shape: tuple, dtype) -> np.ndarray:
    """Per-position losses (M,) -> "none" (shape), "sum" or "mean" (sum / denom)."""
    if reduction == "none":
        return rows.reshape(shape).astype(dtype, copy=False)
    s = rows.sum()
    return np.asarray(s / denom if reduction == "mean" else s, dtype=dtype)


def _row_scale(g: np.ndarray, reduction: str, denom: float, M: int) -> np.ndarray:
    """d(reduced loss)/d(loss_i) times the upstream g, as an (M,) vector."""
    if reduction == "none":
        return g.reshape(M)
    gs = g / denom if reduction == "mean" else g
    return np.broadcast_to(gs.reshape(1), (M,))


def nll_loss(input, target, weight=None, reduction: str = "mean", ignore_index: int = -100) -> Tensor:
    """Negative log-likelihood of log-probabilities (use after ``log_softmax``).

    input (N, C), (N, C, d1, ...) or (C,); target integer class indices (N, d1, ...)::

        loss_i = -w_{y_i} input[i, y_i]      (0 where y_i == ignore_index)

    "mean" divides by sum_i w_{y_i} over non-ignored i. Backward: only the
    picked entries get a gradient, dinput[i, y_i] = -c_i w_{y_i}.
    """
    op = "nll_loss"
    x, C = _check_class_input(op, input)
    _reduction(op, reduction)
    w = _class_weight(op, weight, C, x)
    td = target.data if isinstance(target, Tensor) else np.asarray(target)
    idx_shape = _index_shape(x.shape)
    if td.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class indices, got dtype {td.dtype}")
    if td.shape != idx_shape:
        raise ValueError(f"{op}: target of shape {td.shape} does not match input of shape "
                         f"{x.shape}: class indices need shape {idx_shape}")
    tc, valid = _class_targets(op, td, C, ignore_index)
    z = _classes_last(x.data)
    M = z.shape[0]
    ar = np.arange(M)
    wt = (w[tc] * valid) if w is not None else valid.astype(x.dtype)
    rows = -z[ar, tc] * wt
    denom = float(wt.sum())

    def backward(g):
        c = _row_scale(g, reduction, denom, M)
        gx = np.zeros_like(z)
        gx[ar, tc] = -wt * c
        return (_classes_back(gx, x.shape),)
    return _make(_reduce_rows(rows, reduction, denom, idx_shape, x.dtype), (x,), backward, "nll_loss")


# ================================================================== other losses
def _pointwise_scale(g: np.ndarray, reduction: str, n: float) -> np.ndarray:
    """Upstream gradient for each element of a pointwise loss reduced by ``reduction``."""
    if reduction in ("none", "sum"):
        return g
    return g / n


def _reduce_all(a: np.ndarray, reduction: str, n: float, dtype) -> np.ndarray:
    if reduction == "none":
        return a
    s = a.sum()
    return np.asarray(s if reduction == "sum" else s / n, dtype=dtype)


def kl_div(input, target, reduction: str = "mean", log_target: bool = False) -> Tensor:
    """Kullback-Leibler divergence, pointwise as ``torch.nn.functional.kl_div``.

    ``input`` holds log-probabilities log q; ``target`` holds probabilities p
    (or log p with ``log_target=True``); same shapes::

        log_target=False:  L = p (log p - input)    (0 where p == 0, via xlogy)
        log_target=True:   L = e^t (t - input),  t = log p

    Reductions: "none", "sum", "mean" (over all elements: not the KL
    divergence, kept for PyTorch parity) and "batchmean" (sum / input.shape[0],
    the true mean KL per sample). Gradients::

        dinput  = -p * c                       (p = e^t with log_target)
        dtarget = (log p + 1 - input) * c      (log_target: e^t (t - input + 1) * c)

    where c is the upstream gradient times the reduction's scale (dtarget
    is -inf at p == 0 without log_target).
    """
    op = "kl_div"
    x = _float(op, input)
    _reduction(op, reduction, ("none", "sum", "mean", "batchmean"))
    t = _float(op, target, "target", like=x)
    if t.shape != x.shape:
        raise ValueError(f"{op}: target has shape {t.shape} but input has shape {x.shape}; "
                         f"they must be equal")
    xd, td = x.data, t.data
    if log_target:
        p = np.exp(td)
        pw = td - xd
        pw *= p
    else:
        p = td
        pw = _xlogy(td, td)
        pw -= td * xd
    if reduction == "batchmean":
        n = float(x.shape[0]) if x.ndim else 1.0       # per sample
    else:
        n = float(x.size)                               # used by "mean" only

    def backward(g):
        c = _pointwise_scale(g, reduction, n)
        gx = -p * c if x.requires_grad else None
        gt = None
        if t.requires_grad:
            if log_target:
                gt = td - xd
                gt += 1.0
                gt *= p
            else:
                with np.errstate(divide="ignore"):
                    gt = np.log(td)
                gt += 1.0
                gt -= xd
            gt *= c
        return gx, gt
    red = "mean" if reduction == "batchmean" else reduction
    return _make(_reduce_all(pw, red, n, x.dtype), (x, t), backward, "kl_div")


def mse_loss(input, target, reduction: str = "mean") -> Tensor:
    """Mean squared error: L = (input - target)^2, reduced by "none", "mean" or "sum".

    Backward: dinput = 2 (input - target) * c, dtarget = -dinput (c: upstream
    gradient times 1/n for "mean"). Shapes must be equal (PyTorch only warns).
    """
    op = "mse_loss"
    x = _float(op, input)
    _reduction(op, reduction)
    t = _float(op, target, "target", like=x)
    if t.shape != x.shape:
        raise ValueError(f"{op}: target has shape {t.shape} but input has shape {x.shape}; "
                         f"they must be equal")
    d = x.data - t.data
    n = float(max(x.size, 1))

    def backward(g):
        gx = d * (2.0 * _pointwise_scale(g, reduction, n))
        return (gx if x.requires_grad else None), (-gx if t.requires_grad else None)
    return _make(_reduce_all(d * d, reduction, n, x.dtype), (x, t), backward, "mse_loss")


# ================================================================== similarity and norms
def cosine_similarity(x1, x2, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Cosine of the angle between x1 and x2 along ``dim`` (broadcasting; dim removed).

    PyTorch's current definition, which clamps each norm separately::

        cos = (x1 . x2) / (max(||x1||, eps) * max(||x2||, eps))

    With r_k = max(||x_k||, eps), u = x1 / r1, v = x2 / r2 (so cos = u . v)::

        dx1 = g / r1 * (v - [||x1|| > eps] cos u)
        dx2 = g / r2 * (u - [||x2|| > eps] cos v)

    (the bracket is 1 where the norm was not clamped; a clamped norm is a constant).
    """
    op = "cosine_similarity"
    a = _float(op, x1, "x1")
    b = _float(op, x2, "x2", like=a)
    shape = broadcast_shapes(op, a.shape, b.shape)
    ax = _dim(op, dim, len(shape))
    eps = float(eps)
    A, B = np.broadcast_to(a.data, shape), np.broadcast_to(b.data, shape)
    n1 = np.sqrt((A * A).sum(axis=ax, keepdims=True))
    n2 = np.sqrt((B * B).sum(axis=ax, keepdims=True))
    r1, r2 = np.maximum(n1, eps), np.maximum(n2, eps)
    u, v = A / r1, B / r2
    cos = (u * v).sum(axis=ax, keepdims=True)

    def backward(g):
        gk = np.expand_dims(g, ax)
        ga = gb = None
        if a.requires_grad:
            ga = u * (cos * (n1 > eps))
            np.subtract(v, ga, out=ga)
            ga *= gk / r1
        if b.requires_grad:
            gb = v * (cos * (n2 > eps))
            np.subtract(u, gb, out=gb)
            gb *= gk / r2
        return ga, gb
    return _make(np.squeeze(cos, axis=ax), (a, b), backward, "cosine_similarity")


def normalize(input, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """x / max(||x||_p, eps) along ``dim`` (``torch.nn.functional.normalize``).

    ||x||_p = (sum |x|^p)^(1/p), p >= 1 finite. With r = max(||x||_p, eps)
    and out = x / r::

        dx = (g - [||x||_p > eps] * sum(g * out) * sign(out) |out|^(p-1)) / r

    which for p = 2 is (g - out * sum(g * out)) / r: the gradient loses its
    component along out (moving along x does not change x/||x||).
    """
    op = "normalize"
    x = _float(op, input)
    p = float(p)
    if not (1.0 <= p < math.inf):
        raise ValueError(f"{op}: p must be a finite number >= 1, got {p}")
    ax = _dim(op, dim, x.ndim)
    eps = float(eps)
    xd = x.data
    if p == 2.0:
        nrm = np.sqrt(np.square(xd).sum(axis=ax, keepdims=True))
    elif p == 1.0:
        nrm = np.abs(xd).sum(axis=ax, keepdims=True)
    else:
        nrm = (np.abs(xd) ** p).sum(axis=ax, keepdims=True) ** (1.0 / p)
    r = np.maximum(nrm, eps)
    out = xd / r

    def backward(g):
        s = (g * out).sum(axis=ax, keepdims=True)
        s *= nrm > eps
        if p == 2.0:
            gx = out * s
        elif p == 1.0:
            gx = np.sign(out) * s
        else:
            gx = np.abs(out) ** (p - 1.0)
            gx *= np.sign(out)
            gx *= s
        np.subtract(g, gx, out=gx)
        gx /= r
        return (gx,)
    return _make(out, (x,), backward, "normalize")


# ================================================================== attention
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale=None, *, return_weights: bool = False):
    """Attention(Q, K, V) = softmax(Q K^T * scale + mask) V.

    Shapes: query (..., L, E), key (..., S, E), value (..., S, Ev) -> out
    (..., L, Ev); the batch dims ``...`` (batch, heads) broadcast. ``scale``
    defaults to 1/sqrt(E); pass ``scale=1.0`` for none (SASA) or the paper's
    own (T2T: input dim^-0.5).

    ``attn_mask``, broadcastable to (..., L, S), is either

    - boolean: True = the key **takes part** (PyTorch's convention; False
      positions get logit -inf), or
    - floating: added to the logits (Swin's -100 shift mask, a relative
      position bias, -inf). A float mask Tensor that requires grad gets one.

    ``is_causal=True`` uses the lower-triangular mask tril(ones(L, S)) (not
    together with attn_mask). Rows where every logit is -inf (fully masked)
    give zero weights and a zero output, like PyTorch's math backend
    (``_safe_softmax``, PyTorch >= 2.5), and get zero gradient.

    ``dropout_p > 0`` drops attention weights (inverted dropout, minivit's
    generator) whenever it is given, as PyTorch: pass 0.0 in evaluation.
    With ``return_weights=True`` the result is ``(out, weights)``, weights
    a read-only ndarray (..., L, S) after softmax, before dropout.

    Forward, with s the logits and P the weights (D: the dropout mask / keep)::

        s = (Q * scale) K^T + mask,  P = softmax(s),  out = (P * D) V

    Fused backward::

        dV = (P*D)^T g,   dP = (g V^T) * D,   dS = P * (dP - sum(dP * P, -1))
        dQ = dS K * scale,   dK = dS^T Q * scale,   dmask = dS
    """
    op = "scaled_dot_product_attention"
    q = _float(op, query, "query")
    k = _float(op, key, "key", like=q)
    v = _float(op, value, "value", like=q)
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.ndim < 2:
            raise ValueError(f"{op}: {name} must have shape (..., seq, features), got {t.shape}")
    L, E = q.shape[-2:]
    S = k.shape[-2]
    if k.shape[-1] != E:
        raise ValueError(f"{op}: query has E={E} features (shape {q.shape}) but key has "
                         f"{k.shape[-1]} (shape {k.shape})")
    if v.shape[-2] != S:
        raise ValueError(f"{op}: key has S={S} positions (shape {k.shape}) but value has "
                         f"{v.shape[-2]} (shape {v.shape})")
    batch = broadcast_shapes(op + " (batch dims of query, key, value)",
                             q.shape[:-2], k.shape[:-2], v.shape[:-2])
    dropout_p = _prob(op, "dropout_p", dropout_p)
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    Q, K, V = (np.ascontiguousarray(t.data) for t in (q, k, v))
    Qs = Q * scale if scale != 1.0 else Q     # scale the (L, E) queries, not the (L, S) logits

    s = np.matmul(Qs, K.swapaxes(-1, -2))                              # (..., L, S)
    parents = (q, k, v)
    mask_t = None
    if is_causal:
        if attn_mask is not None:
            raise ValueError(f"{op}: pass either attn_mask or is_causal=True, not both")
        attn_mask = np.tril(np.ones((L, S), dtype=bool))
    if attn_mask is not None:
        m = attn_mask.data if isinstance(attn_mask, Tensor) else np.asarray(attn_mask)
        full = batch + (L, S)
        try:
            full = np.broadcast_shapes(full, m.shape)
        except ValueError:
            raise ValueError(f"{op}: attn_mask of shape {m.shape} cannot be broadcast to the "
                             f"attention shape (..., L={L}, S={S}) = {batch + (L, S)}") from None
        if s.shape != full:                            # the mask adds batch dims
            s = np.broadcast_to(s, full).copy()
        if m.dtype == bool:
            np.copyto(s, -np.inf, where=~m)
        elif m.dtype.kind == "f":
            s += m.astype(s.dtype, copy=False)
            if isinstance(attn_mask, Tensor) and attn_mask.requires_grad:
                mask_t = attn_mask
                parents = (q, k, v, mask_t)
        else:
            raise TypeError(f"{op}: attn_mask must be boolean (True = take part) or floating "
                            f"(added to the logits), got dtype {m.dtype}")

    # P = softmax(s) in place; fully masked rows (max = -inf) become zeros, not NaN
    mx = s.max(axis=-1, keepdims=True)
    dead = mx == -np.inf
    any_dead = bool(dead.any())
    if any_dead:
        mx[dead] = 0.0
    s -= mx
    np.exp(s, out=s)
    den = s.sum(axis=-1, keepdims=True)
    if any_dead:
        den[dead] = 1.0
    s /= den
    P = s                                                              # (..., L, S)

    if dropout_p > 0.0:
        D = _keep_mask(P.shape, 1.0 - dropout_p, P.dtype)
        PD = P * D
    else:
        D, PD = None, P
    out = np.matmul(PD, V)                                             # (..., L, Ev)

    def backward(g):
        dQ = dK = dV = None
        if v.requires_grad:
            dV = np.matmul(PD.swapaxes(-1, -2), g)                     # (..., S, Ev)
        dS = np.matmul(g, V.swapaxes(-1, -2))                          # dP (..., L, S)
        if D is not None:
            dS *= D
        dS -= np.einsum("...s,...s->...", dS, P)[..., None]
        dS *= P                                                        # dS = P (dP - sum(dP P))
        if q.requires_grad:
            dQ = np.matmul(dS, K)                                      # (..., L, E)
            if scale != 1.0:
                dQ *= scale
        if k.requires_grad:
            dK = np.matmul(dS.swapaxes(-1, -2), Qs)                    # (..., S, E), Qs = Q*scale
        return (dQ, dK, dV, dS) if mask_t is not None else (dQ, dK, dV)

    res = _make(out, parents, backward, "scaled_dot_product_attention")
    if return_weights:
        weights = P.view()
        weights.flags.writeable = False
        return res, weights
    return res
