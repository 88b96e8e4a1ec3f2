"""Scaled dot-product attention with its fused, hand-written backward.

Conventions as in :mod:`.nn_ops` (g is never modified; float32 stays float32).
"""
from __future__ import annotations

import math

import numpy as np

from minivit.tensor import Tensor
from ._util import broadcast_shapes
from .nn_ops import _float, _prob, _keep_mask
from minivit._threads import parallel_for

__all__ = ["scaled_dot_product_attention"]

_make = Tensor._make


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
    Q, K, V = q.data, k.data, v.data
    Qs = Q * scale if scale != 1.0 else Q     # scale the (L, E) queries, not the (L, S) logits

    parents = (q, k, v)
    mask_t = m = None
    if is_causal:
        if attn_mask is not None:
            raise ValueError(f"{op}: pass either attn_mask or is_causal=True, not both")
        attn_mask = np.tril(np.ones((L, S), dtype=bool))
    if attn_mask is not None:
        m = attn_mask.data if isinstance(attn_mask, Tensor) else np.asarray(attn_mask)
        try:
            batch = np.broadcast_shapes(batch + (L, S), m.shape)[:-2]  # the mask may add batch dims
        except ValueError:
            raise ValueError(f"{op}: attn_mask of shape {m.shape} cannot be broadcast to the "
                             f"attention shape (..., L={L}, S={S}) = {batch + (L, S)}") from None
        if m.dtype == bool:
            m = ~m                                     # True = drop: logit -inf
        elif m.dtype.kind == "f":
            m = m.astype(Q.dtype, copy=False)
            if isinstance(attn_mask, Tensor) and attn_mask.requires_grad:
                mask_t = attn_mask
                parents = (q, k, v, mask_t)
        else:
            raise TypeError(f"{op}: attn_mask must be boolean (True = take part) or floating "
                            f"(added to the logits), got dtype {m.dtype}")
        m = np.broadcast_to(m, batch + (L, S))

    # Every batch entry (image, head, window) is independent, so the work is
    # split over the first batch dim and runs in parallel threads
    # (minivit._threads); each block computes exactly what one piece would.
    Qb = np.broadcast_to(Qs, batch + (L, E))
    Kb = np.broadcast_to(K, batch + (S, E))
    Vb = np.broadcast_to(V, batch + (S, V.shape[-1]))
    P = np.empty(batch + (L, S), dtype=Q.dtype)                         # s, then softmax(s)
    out = np.empty(batch + (L, V.shape[-1]), dtype=Q.dtype)
    D = _keep_mask(P.shape, 1.0 - dropout_p, P.dtype) if dropout_p > 0.0 else None
    PD = np.empty_like(P) if D is not None else P
    n = batch[0] if batch else 1
    rows = (lambda sl: sl) if batch else (lambda sl: ...)            # no batch dims: one block

    def forward_rows(sl):
        sl = rows(sl)
        s = P[sl]
        np.matmul(Qb[sl], Kb[sl].swapaxes(-1, -2), out=s)             # s = (Q scale) K^T
        if m is not None:
            if m.dtype == bool:
                np.copyto(s, -np.inf, where=m[sl])
            else:
                s += m[sl]
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
        if D is not None:
            np.multiply(s, D[sl], out=PD[sl])
        np.matmul(PD[sl], Vb[sl], out=out[sl])                         # (P * D) V

    parallel_for(forward_rows, n, work=P.size)

    def backward(g):
        dQ = np.empty(Qb.shape, Q.dtype) if q.requires_grad else None
        dK = np.empty(Kb.shape, Q.dtype) if k.requires_grad else None
        dV = np.empty(Vb.shape, Q.dtype) if v.requires_grad else None
        dS_all = np.empty_like(P) if mask_t is not None else None
        g = np.broadcast_to(g, out.shape)

        def backward_rows(sl):
            sl = rows(sl)
            Ps, gs = P[sl], g[sl]
            if dV is not None:
                np.matmul(PD[sl].swapaxes(-1, -2), gs, out=dV[sl])     # dV = (P*D)^T g
            dS = dS_all[sl] if dS_all is not None else np.empty_like(Ps)
            np.matmul(gs, Vb[sl].swapaxes(-1, -2), out=dS)             # dP = g V^T
            if D is not None:
                dS *= D[sl]
            dS -= np.einsum("...s,...s->...", dS, Ps)[..., None]
            dS *= Ps                                                    # dS = P (dP - sum(dP P))
            if dQ is not None:
                np.matmul(dS, Kb[sl], out=dQ[sl])                      # dQ = dS K scale
                if scale != 1.0:
                    dQ[sl] *= scale
            if dK is not None:
                np.matmul(dS.swapaxes(-1, -2), Qb[sl], out=dK[sl])     # dK = dS^T (Q scale)

        parallel_for(backward_rows, n, work=P.size)
        return (dQ, dK, dV, dS_all) if mask_t is not None else (dQ, dK, dV)

    res = _make(out, parents, backward, "scaled_dot_product_attention")
    if return_weights:
        weights = P.view()
        weights.flags.writeable = False
        return res, weights
    return res
