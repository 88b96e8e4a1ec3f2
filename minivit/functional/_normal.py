"""The standard normal CDF Phi(x) and the exact GELU, fast in float32.

Exact GELU is ``x * Phi(x)`` with ``Phi(x) = 0.5 (1 + erf(x / sqrt 2))``.
NumPy has no ``erf``; ``scipy.special.ndtr`` computes Phi to ~1e-16, but it
evaluates in double precision one element at a time and costs ~25 ms for the
819,200 activations of one ``vit_fmnist`` MLP at batch 128 -- more than the
layer's two matrix products together. So:

- **float64** (gradient checks, parity tests): ``scipy.special.ndtr``.
- **float32** (training): a rational approximation, evaluated with NumPy's
  SIMD loops on cache-sized chunks::

      z = clip(x / sqrt 2, -4, 4),  t = z^2
      erf(z) ~= z * P(t) / Q(t)       P of degree 6, Q of degree 4, Q(0) = 1

  Beyond |z| = 4, erf(z) = +-1 to float32 precision (1 - erf(4) = 1.5e-8),
  which is what the clip gives. The coefficients are a weighted least-squares
  fit to ``scipy.special.erf`` on [0, 4]; ``benchmarks/fit_erf.py`` refits them
  and prints the error. The float64 fit error is 5.5e-8; in float32 the max
  absolute error of Phi is ~2e-7 (three float32 ulps near 1), which
  ``tests/test_functional_nn.py`` checks against scipy on a dense grid.

Chunking (128k elements = 512 KB per buffer) keeps the dozen intermediate
passes of the polynomial in the CPU's cache instead of main memory: ~6 ms
instead of ~25 ms for the array above, measured by ``benchmarks/bench_ops.py``.
The chunks are independent, so they are shared out over the CPU's cores
(:mod:`minivit._threads`). Smaller chunks fit the cache better but cost more
NumPy calls, and two threads then queue for Python's GIL between calls; with
two threads, 128k-element chunks were faster than 64k or 256k.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr as _ndtr_f64

from minivit._threads import parallel_for

# erf(z) ~= z * P(z^2) / Q(z^2), coefficients lowest order first (benchmarks/fit_erf.py)
ERF_P = (1.1283786781467262, 0.2139468613734529, 0.052433791099987005, 0.004293077789628319,
         0.00015553209835552024, -1.9902021418452542e-06, 1.9215535079775137e-08)
ERF_Q = (1.0, 0.5229331323894064, 0.12080053069702358, 0.015551245968628722, 0.0010980247872231642)
ERF_CLIP = 4.0

_CHUNK = 1 << 17
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_P32 = [np.float32(c) for c in reversed(ERF_P)]     # highest order first, for Horner
_Q32 = [np.float32(c) for c in reversed(ERF_Q)]


def _for_chunks(n: int, body) -> None:
    """body(slice) for every _CHUNK-element chunk of range(n); chunks run in parallel threads."""
    def run(block):
        for i in range(block.start, block.stop):
            body(slice(i * _CHUNK, min((i + 1) * _CHUNK, n)))
    parallel_for(run, -(-n // _CHUNK), work=n)


def _ndtr32_into(x: np.ndarray, cdf: np.ndarray) -> None:
    """cdf[...] = Phi(x) for flat float32 arrays of one chunk."""
    m = x.size
    z = np.multiply(x, np.float32(_SQRT_HALF))
    np.clip(z, -ERF_CLIP, ERF_CLIP, out=z)
    t = np.multiply(z, z)
    num = np.full(m, _P32[0], dtype=np.float32)
    for c in _P32[1:]:                               # Horner: P(t)
        num *= t
        num += c
    den = np.multiply(t, _Q32[0])
    den += _Q32[1]
    for c in _Q32[2:]:                               # Horner: Q(t)
        den *= t
        den += c
    num *= z
    num /= den                                       # erf(z)
    np.add(num, np.float32(1.0), out=cdf)
    cdf *= np.float32(0.5)                           # Phi(x) = (1 + erf(x/sqrt2)) / 2


def ndtr(x: np.ndarray) -> np.ndarray:
    """Phi(x), the standard normal CDF, elementwise (float32 fast path, else scipy)."""
    if x.dtype != np.float32:
        return _ndtr_f64(x)
    xf = np.ascontiguousarray(x).reshape(-1)
    cdf = np.empty_like(xf)
    _for_chunks(xf.size, lambda s: _ndtr32_into(xf[s], cdf[s]))
    return cdf.reshape(x.shape)


def gelu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x * Phi(x), Phi(x)); Phi is kept for the backward pass."""
    if x.dtype != np.float32:
        cdf = _ndtr_f64(x)
        return x * cdf, cdf
    xf = np.ascontiguousarray(x).reshape(-1)
    cdf = np.empty_like(xf)
    out = np.empty_like(xf)

    def body(s):
        _ndtr32_into(xf[s], cdf[s])
        np.multiply(xf[s], cdf[s], out=out[s])
    _for_chunks(xf.size, body)
    return out.reshape(x.shape), cdf.reshape(x.shape)


def gelu_backward(g: np.ndarray, x: np.ndarray, cdf: np.ndarray) -> np.ndarray:
    """g * (Phi(x) + x phi(x)),  phi(x) = exp(-x^2/2) / sqrt(2 pi)."""
    g = np.ascontiguousarray(g, dtype=x.dtype).reshape(-1)
    xf = np.ascontiguousarray(x).reshape(-1)
    cf = cdf.reshape(-1)
    d = np.empty_like(xf)
    half = x.dtype.type(-0.5)
    c = x.dtype.type(_INV_SQRT_2PI)

    def body(s):
        ds, xs = d[s], xf[s]
        np.multiply(xs, xs, out=ds)
        ds *= half
        np.exp(ds, out=ds)
        ds *= c
        ds *= xs                                     # x phi(x)
        ds += cf[s]                                  # Phi(x) + x phi(x)
        ds *= g[s]
    _for_chunks(xf.size, body)
    return d.reshape(x.shape)
