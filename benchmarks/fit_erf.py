"""Refit the rational erf approximation used by minivit's float32 GELU.

    python benchmarks/fit_erf.py

Fits erf(z) ~= z * P(z^2) / Q(z^2) on [0, 4] (P of degree 6, Q of degree 4,
Q(0) = 1) by iteratively reweighted linear least squares on Chebyshev nodes,
pushing towards the smallest maximum error, then prints the coefficients
(paste them into minivit/functional/_normal.py) and the float64 and float32
errors of Phi(x) = (1 + erf(x / sqrt 2)) / 2 against scipy.
"""
import sys
from pathlib import Path

import numpy as np
import scipy.special as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def fit(deg_p=6, deg_q=4, zmax=4.0, nodes=4000, iters=40):
    z = zmax / 2 * (1 - np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes))
    t = z * z
    f = sp.erf(z) / z                      # target R(t) = erf(z) / z (z > 0 at every node)
    w = z + 1e-3                           # weight: the error of erf is z * (error of R)
    q_prev = np.ones_like(t)
    for _ in range(iters):
        # linearised: P(t) - f * (Q(t) - 1) = f, unknowns p_0..p_dp, q_1..q_dq
        A = np.concatenate([t[:, None] ** np.arange(deg_p + 1),
                            -f[:, None] * t[:, None] ** np.arange(1, deg_q + 1)], axis=1)
        W = (w / q_prev)[:, None]
        c, *_ = np.linalg.lstsq(A * W, f * W[:, 0], rcond=None)
        p, q = c[:deg_p + 1], np.concatenate([[1.0], c[deg_p + 1:]])
        q_prev = np.polyval(q[::-1], t)
        err = z * np.polyval(p[::-1], t) / q_prev - sp.erf(z)
        w = w * (np.abs(err) / np.abs(err).max() + 0.05) ** 0.3   # upweight the worst nodes
        w /= w.max()
    return p, q, float(np.abs(err).max())


def main():
    p, q, e = fit()
    print("ERF_P =", tuple(float(v) for v in p))
    print("ERF_Q =", tuple(float(v) for v in q))
    print(f"max |erf error| of the fit in float64 on [0, 4]: {e:.2e}")
    from minivit.functional import _normal
    x = np.linspace(-12, 12, 2_400_001)
    ref = sp.ndtr(x)
    got = _normal.ndtr(x.astype(np.float32)).astype(np.float64)
    print(f"max |Phi error| of minivit's float32 path on [-12, 12]: {np.abs(got - ref).max():.2e}")
    f32 = sp.ndtr(x.astype(np.float32)).astype(np.float64)
    print(f"  (scipy's own float32 ndtr on the same grid: {np.abs(f32 - ref).max():.2e})")


if __name__ == "__main__":
    main()
