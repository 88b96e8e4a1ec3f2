"""Losses and similarities: cross_entropy, nll_loss, kl_div, mse_loss,
cosine_similarity, normalize; each with its hand-written backward.

Conventions as in :mod:`.nn_ops` (g is never modified; float32 stays float32).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import xlogy as _xlogy

from minivit.tensor import Tensor
from ._util import broadcast_shapes
from .nn_ops import _float, _dim, _reduction, _prob, _log_softmax_array

__all__ = ["cross_entropy", "nll_loss", "kl_div", "mse_loss", "cosine_similarity", "normalize"]

_make = Tensor._make


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
