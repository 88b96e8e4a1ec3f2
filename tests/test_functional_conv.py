"""Tests for minivit.functional.conv: conv2d, unfold/fold, pooling, interpolate.

Each op gets (1) a hypothesis-driven float64 gradcheck on tiny random
geometries and (2) a value check against a slow explicit loop written from
the definition (PyTorch's formulas), plus float32, fast-path and error tests.
"""
import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit import functional as F
from minivit.functional import conv as conv_mod
from minivit.gradcheck import gradcheck

EXAMPLES = 20          # hypothesis examples per gradcheck (tiny shapes keep each test ~1 s)
seeds = st.integers(0, 2**16)


def randn(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def out_len(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


# ================================================================== slow references
def conv2d_loop(x, w, b, stride, padding, dilation, groups):
    """out[n,o,i,j] = b[o] + sum_{c,ki,kj} w[o,c,ki,kj] xp[n, g*Cg + c, i*s + ki*d, j*s + kj*d]."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    Ho, Wo = out_len(H, kh, sh, ph, dh), out_len(W, kw, sw, pw, dw)
    Og = O // groups
    out = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            grp = o // Og
            for i in range(Ho):
                for j in range(Wo):
                    acc = 0.0 if b is None else b[o]
                    for c in range(Cg):
                        for ki in range(kh):
                            for kj in range(kw):
                                acc += w[o, c, ki, kj] * xp[n, grp * Cg + c, i * sh + ki * dh, j * sw + kj * dw]
                    out[n, o, i, j] = acc
    return out


def unfold_loop(x, k, s, p, d):
    """Gather each window: row c*kh*kw + ki*kw + kj, column i*Wo + j."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = k, s, p, d
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    Ho, Wo = out_len(H, kh, sh, ph, dh), out_len(W, kw, sw, pw, dw)
    out = np.zeros((N, C * kh * kw, Ho * Wo))
    for n in range(N):
        for c in range(C):
            for ki in range(kh):
                for kj in range(kw):
                    for i in range(Ho):
                        for j in range(Wo):
                            out[n, c * kh * kw + ki * kw + kj, i * Wo + j] = \
                                xp[n, c, i * sh + ki * dh, j * sw + kj * dw]
    return out


def pool_loop(x, k, s, p, d, reduce):
    """Apply ``reduce(window_values, n_real_pixels)`` to every window; padding is NaN here."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = k, s, p, d
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=np.nan)
    Ho, Wo = out_len(H, kh, sh, ph, dh), out_len(W, kw, sw, pw, dw)
    out = np.zeros((N, C, Ho, Wo))
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    vals = [xp[n, c, i * sh + ki * dh, j * sw + kj * dw] for ki in range(kh) for kj in range(kw)]
                    out[n, c, i, j] = reduce(vals)
    return out


def adaptive_loop(x, oh, ow):
    N, C, H, W = x.shape
    out = np.zeros((N, C, oh, ow))
    for i in range(oh):
        h0, h1 = math.floor(i * H / oh), math.ceil((i + 1) * H / oh)
        for j in range(ow):
            w0, w1 = math.floor(j * W / ow), math.ceil((j + 1) * W / ow)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


def nearest_loop(x, Ho, Wo, scale_factor=None):
    """torch: src = min(floor(dst * scale), in - 1), scale = in/out or 1/scale_factor (exact here)."""
    N, C, H, W = x.shape
    def src(i, n_in, n_out):
        scale = 1 / Fraction(scale_factor) if scale_factor else Fraction(n_in, n_out)
        return min(math.floor(i * scale), n_in - 1)
    out = np.zeros((N, C, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            out[:, :, i, j] = x[:, :, src(i, H, Ho), src(j, W, Wo)]
    return out


def bilinear_loop(x, Ho, Wo, align_corners, scale_factor=None):
    """torch's upsample_bilinear2d, one output pixel at a time."""
    N, C, H, W = x.shape
    def src(i, n_in, n_out):
        if align_corners:
            return i * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        scale = 1 / scale_factor if scale_factor else n_in / n_out
        return max(scale * (i + 0.5) - 0.5, 0.0)
    out = np.zeros((N, C, Ho, Wo))
    for i in range(Ho):
        h = src(i, H, Ho)
        h0 = int(math.floor(h)); h1 = h0 + (1 if h0 < H - 1 else 0); lh = h - h0
        for j in range(Wo):
            w_ = src(j, W, Wo)
            w0 = int(math.floor(w_)); w1 = w0 + (1 if w0 < W - 1 else 0); lw = w_ - w0
            out[:, :, i, j] = ((1 - lh) * ((1 - lw) * x[:, :, h0, w0] + lw * x[:, :, h0, w1])
                               + lh * ((1 - lw) * x[:, :, h1, w0] + lw * x[:, :, h1, w1]))
    return out


# ================================================================== strategies
@st.composite
def windows(draw, max_k=3, max_s=3, max_p=2, max_d=2, pool=False):
    """kernel, stride, padding, dilation pairs and an input size they fit in."""
    k = (draw(st.integers(1, max_k)), draw(st.integers(1, max_k)))
    s = (draw(st.integers(1, max_s)), draw(st.integers(1, max_s)))
    d = (draw(st.integers(1, max_d)), draw(st.integers(1, max_d)))
    if pool:   # PyTorch: padding <= kernel_size // 2
        p = tuple(draw(st.integers(0, ki // 2)) for ki in k)
    else:
        p = (draw(st.integers(0, max_p)), draw(st.integers(0, max_p)))
    hw = []
    for ki, pi, di in zip(k, p, d):
        lo = max(1, di * (ki - 1) + 1 - 2 * pi)
        hw.append(draw(st.integers(lo, lo + 4)))
    return k, s, p, d, tuple(hw)


@st.composite
def conv_cases(draw):
    kind = draw(st.sampled_from(["plain", "grouped", "depthwise"]))
    if kind == "plain":
        groups, C, O = 1, draw(st.integers(1, 3)), draw(st.integers(1, 3))
    elif kind == "grouped":
        groups = draw(st.integers(2, 3))
        C, O = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    else:
        groups = C = draw(st.integers(2, 4))
        O = C * draw(st.integers(1, 2))
    k, s, p, d, (H, W) = draw(windows())
    N = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    return dict(N=N, C=C, H=H, W=W, O=O, groups=groups, k=k, s=s, p=p, d=d, bias=bias,
                seed=draw(seeds))


def conv_arrays(c):
    x = randn(c["seed"], c["N"], c["C"], c["H"], c["W"])
    w = randn(c["seed"] + 1, c["O"], c["C"] // c["groups"], *c["k"])
    b = randn(c["seed"] + 2, c["O"]) if c["bias"] else None
    return x, w, b


# ================================================================== conv2d
@settings(max_examples=25)
@given(conv_cases())
def test_conv2d_matches_loop(c):
    x, w, b = conv_arrays(c)
    out = F.conv2d(minivit.tensor(x), minivit.tensor(w), None if b is None else minivit.tensor(b),
                   stride=c["s"], padding=c["p"], dilation=c["d"], groups=c["groups"])
    ref = conv2d_loop(x, w, b, c["s"], c["p"], c["d"], c["groups"])
    np.testing.assert_allclose(out.data, ref, atol=1e-12)


@settings(max_examples=EXAMPLES)
@given(conv_cases())
def test_conv2d_gradcheck(c):
    x, w, b = conv_arrays(c)
    kw = dict(stride=c["s"], padding=c["p"], dilation=c["d"], groups=c["groups"])
    if b is None:
        gradcheck(lambda x, w: F.conv2d(x, w, None, **kw), [x, w], max_checks=60)
    else:
        gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b], max_checks=60)


def test_conv2d_int_arguments_and_torch_output_size():
    x = randn(0, 2, 3, 11, 9)
    w = randn(1, 4, 3, 3, 2)
    out = F.conv2d(minivit.tensor(x), minivit.tensor(w), None, 2, 1, 2)
    assert out.shape == (2, 4, out_len(11, 3, 2, 1, 2), out_len(9, 2, 2, 1, 2))
    np.testing.assert_allclose(out.data, conv2d_loop(x, w, None, (2, 2), (1, 1), (2, 2), 1), atol=1e-12)


def _conv_all(x, w, b, fast, monkeypatch, **kw):
    monkeypatch.setattr(conv_mod, "_FAST_PATHS", fast)
    xt, wt = minivit.tensor(x, requires_grad=True), minivit.tensor(w, requires_grad=True)
    bt = minivit.tensor(b, requires_grad=True)
    out = F.conv2d(xt, wt, bt, **kw)
    out.backward(np.cos(np.arange(out.data.size)).reshape(out.shape))
    return out.data, xt.grad, wt.grad, bt.grad


@pytest.mark.parametrize("H, C, O, k, groups", [
    (28, 1, 8, 4, 1),          # patch embedding, 28 = 7 * 4
    (30, 2, 4, 4, 1),          # 30 is not a multiple of 4: the last 2 rows/cols are unused
    (12, 4, 6, (2, 3), 2),     # rectangular patches, groups
    (7, 3, 5, 1, 1),           # 1x1 conv
    (5, 4, 8, 1, 4),           # grouped 1x1 conv
])
def test_conv2d_fast_paths_equal_general_path(H, C, O, k, groups, monkeypatch):
    x, w, b = randn(0, 2, C, H, H + 1), randn(1, O, C // groups, *np.broadcast_to(k, 2)), randn(2, O)
    assert conv_mod._is_patchify(conv_mod._geometry("t", (H, H + 1), k, k, 0, 1))
    fast = _conv_all(x, w, b, True, monkeypatch, stride=k, groups=groups)
    slow = _conv_all(x, w, b, False, monkeypatch, stride=k, groups=groups)
    for a, r in zip(fast, slow):
        np.testing.assert_allclose(a, r, atol=1e-12)
    k2 = tuple(np.broadcast_to(k, 2))
    np.testing.assert_allclose(fast[0], conv2d_loop(x, w, b, k2, (0, 0), (1, 1), groups), atol=1e-12)


@pytest.mark.parametrize("C, k, s, p, d, bias", [
    (4, 3, 1, 1, 1, True),          # CeiT's LeFF: 3x3, same size
    (3, (3, 2), 2, (1, 0), 1, True),  # rectangular kernel, stride 2
    (5, 3, 1, 2, 2, False),         # dilation, no bias
    (2, 5, 3, 0, 1, True),          # no padding, stride 3
])
def test_depthwise_conv2d_equals_general_path_and_loop(C, k, s, p, d, bias, monkeypatch):
    """groups == in == out channels takes the shifted-views path; it must equal the
    grouped-matmul path (values and all gradients) and the loop."""
    x, w = randn(0, 2, C, 9, 8), randn(1, C, 1, *np.broadcast_to(k, 2))
    b = randn(2, C) if bias else None
    assert conv_mod._is_depthwise(C, C, C)

    def run(fast):
        monkeypatch.setattr(conv_mod, "_FAST_PATHS", fast)
        ts = [minivit.tensor(a, requires_grad=True) for a in (x, w) + ((b,) if bias else ())]
        out = F.conv2d(ts[0], ts[1], ts[2] if bias else None, stride=s, padding=p, dilation=d, groups=C)
        out.backward(np.cos(np.arange(out.data.size)).reshape(out.shape))
        return [out.data] + [t.grad for t in ts]
    fast, slow = run(True), run(False)
    for a, r in zip(fast, slow):
        np.testing.assert_allclose(a, r, atol=1e-12)
    pair2 = lambda v: tuple(int(a) for a in np.broadcast_to(v, 2))  # noqa: E731
    np.testing.assert_allclose(fast[0], conv2d_loop(x, w, b, pair2(s), pair2(p), pair2(d), C), atol=1e-12)
    monkeypatch.setattr(conv_mod, "_FAST_PATHS", True)
    kw = dict(stride=s, padding=p, dilation=d, groups=C)
    if bias:
        gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kw), [minivit.tensor(a, requires_grad=True)
                                                          for a in (x, w, b)], max_checks=60)
    else:
        gradcheck(lambda x, w: F.conv2d(x, w, None, **kw), [minivit.tensor(a, requires_grad=True)
                                                            for a in (x, w)], max_checks=60)


# ================================================================== unfold / fold
@settings(max_examples=25)
@given(windows(), st.integers(1, 2), st.integers(1, 3), seeds)
def test_unfold_matches_loop(win, N, C, seed):
    k, s, p, d, (H, W) = win
    x = randn(seed, N, C, H, W)
    out = F.unfold(minivit.tensor(x), k, dilation=d, padding=p, stride=s)
    np.testing.assert_array_equal(out.data, unfold_loop(x, k, s, p, d))


@settings(max_examples=EXAMPLES)
@given(windows(), st.integers(1, 2), st.integers(1, 2), seeds)
def test_unfold_gradcheck(win, N, C, seed):
    k, s, p, d, (H, W) = win
    gradcheck(lambda x: F.unfold(x, k, d, p, s), [randn(seed, N, C, H, W)], max_checks=60)


def _fold_input(seed, N, C, k, s, p, d, hw):
    L = out_len(hw[0], k[0], s[0], p[0], d[0]) * out_len(hw[1], k[1], s[1], p[1], d[1])
    return randn(seed, N, C * k[0] * k[1], L)


@settings(max_examples=25)
@given(windows(), st.integers(1, 2), st.integers(1, 3), seeds)
def test_fold_is_the_adjoint_of_unfold(win, N, C, seed):
    """<fold(y), x> == <y, unfold(x)> for every x, y: fold is unfold's transpose."""
    k, s, p, d, hw = win
    x = randn(seed, N, C, *hw)
    y = _fold_input(seed + 1, N, C, k, s, p, d, hw)
    folded = F.fold(minivit.tensor(y), hw, k, d, p, s)
    assert folded.shape == x.shape
    lhs = np.sum(folded.data * x)
    rhs = np.sum(y * unfold_loop(x, k, s, p, d))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


@settings(max_examples=EXAMPLES)
@given(windows(), st.integers(1, 2), st.integers(1, 2), seeds)
def test_fold_gradcheck(win, N, C, seed):
    k, s, p, d, hw = win
    y = _fold_input(seed, N, C, k, s, p, d, hw)
    gradcheck(lambda y: F.fold(y, hw, k, d, p, s), [y], max_checks=60)


def test_fold_of_unfold_without_overlap_is_identity_and_overlaps_sum():
    x = randn(0, 2, 3, 6, 8)
    y = F.fold(F.unfold(minivit.tensor(x), 2, stride=2), (6, 8), 2, stride=2)
    np.testing.assert_allclose(y.data, x)
    ones = F.fold(F.unfold(minivit.tensor(np.ones((1, 1, 4, 4))), 3, padding=1), (4, 4), 3, padding=1)
    counts = np.array([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]])
    np.testing.assert_allclose(ones.data[0, 0], counts)   # pixel = number of windows covering it


# ================================================================== pooling
def distinct(seed, *shape):
    """Values at least 0.01 apart, so a finite difference never changes the argmax."""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(n).reshape(shape) * 0.01 - 0.5


@settings(max_examples=25)
@given(windows(pool=True), st.integers(1, 2), st.integers(1, 3), st.booleans(), seeds)
def test_max_pool2d_matches_loop(win, N, C, default_stride, seed):
    k, s, p, d, hw = win
    s = k if default_stride else s
    x = randn(seed, N, C, *hw)
    out = F.max_pool2d(minivit.tensor(x), k, None if default_stride else s, p, d)
    # a window that lies wholly in the padding (possible with dilation) gives -inf, like PyTorch
    ref = pool_loop(x, k, s, p, d, lambda vals: max((v for v in vals if not np.isnan(v)), default=-np.inf))
    np.testing.assert_array_equal(out.data, ref)


@settings(max_examples=EXAMPLES)
@given(windows(pool=True), st.integers(1, 2), st.integers(1, 2), seeds)
def test_max_pool2d_gradcheck(win, N, C, seed):
    k, s, p, d, hw = win
    gradcheck(lambda x: F.max_pool2d(x, k, s, p, d), [distinct(seed, N, C, *hw)], max_checks=60)


@pytest.mark.parametrize("k, s, p, d", [(3, 2, 1, 1), (2, 2, 0, 1), ((3, 2), (1, 2), (1, 0), 1), (3, 1, 1, 2)])
def test_max_pool2d_fast_path_equals_general_path(k, s, p, d, monkeypatch):
    """The running maximum over shifted views equals argmax over the im2col view,
    values and gradients, with many ties (0/1 inputs)."""
    x = np.random.default_rng(1).integers(0, 2, size=(2, 3, 9, 8)).astype(np.float64)
    g = None

    def run(fast):
        nonlocal g
        monkeypatch.setattr(conv_mod, "_FAST_PATHS", fast)
        xt = minivit.tensor(x, requires_grad=True)
        out = F.max_pool2d(xt, k, s, p, d)
        g = np.cos(np.arange(out.data.size)).reshape(out.shape) if g is None else g
        out.backward(g)
        return out.data, xt.grad
    fast, slow = run(True), run(False)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_allclose(fast[1], slow[1], atol=1e-12)


@pytest.mark.parametrize("k, hw, div", [(2, (8, 8), None), (2, (9, 7), None), ((2, 3), (8, 9), None),
                                       (3, (9, 9), 5)])
def test_avg_pool2d_tiles_equal_general_path(k, hw, div, monkeypatch):
    """kernel == stride without padding (SASA's AvgPool2d(2)) takes the tiles path; it must
    equal the im2col path, values and gradients, also when the windows leave rows/cols out."""
    x = randn(3, 2, 3, *hw)

    def run(fast):
        monkeypatch.setattr(conv_mod, "_FAST_PATHS", fast)
        xt = minivit.tensor(x, requires_grad=True)
        out = F.avg_pool2d(xt, k, divisor_override=div)
        out.backward(np.cos(np.arange(out.data.size)).reshape(out.shape))
        return out.data, xt.grad
    fast, slow = run(True), run(False)
    for a, r in zip(fast, slow):
        assert a.shape == r.shape
        np.testing.assert_allclose(a, r, atol=1e-12)


def test_max_pool2d_ties_send_gradient_to_the_first_max():
    """PyTorch's rule: the first maximum in row-major window order wins."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(2, 2, 6, 6)).astype(np.float64)   # many ties
    xt = minivit.tensor(x, requires_grad=True)
    out = F.max_pool2d(xt, 3, 2, 1)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    ref = np.zeros_like(x)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    for n in range(2):
        for c in range(2):
            for i in range(out.shape[2]):
                for j in range(out.shape[3]):
                    win = xp[n, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
                    ki, kj = np.unravel_index(np.argmax(win), win.shape)   # first max
                    ref[n, c, 2 * i + ki - 1, 2 * j + kj - 1] += g[n, c, i, j]
    np.testing.assert_allclose(xt.grad, ref)


@settings(max_examples=25)
@given(windows(max_d=1, pool=True), st.integers(1, 2), st.integers(1, 3), st.booleans(),
       st.sampled_from([None, 3]), seeds)
def test_avg_pool2d_matches_loop(win, N, C, include_pad, divisor, seed):
    k, s, p, d, hw = win
    x = randn(seed, N, C, *hw)
    out = F.avg_pool2d(minivit.tensor(x), k, s, p, count_include_pad=include_pad, divisor_override=divisor)
    def reduce(vals):
        real = [v for v in vals if not np.isnan(v)]
        div = divisor or (len(vals) if include_pad else len(real))
        return sum(real) / div
    np.testing.assert_allclose(out.data, pool_loop(x, k, s, p, d, reduce), atol=1e-12)


@settings(max_examples=EXAMPLES)
@given(windows(max_d=1, pool=True), st.integers(1, 2), st.integers(1, 2), st.booleans(), seeds)
def test_avg_pool2d_gradcheck(win, N, C, include_pad, seed):
    k, s, p, d, hw = win
    gradcheck(lambda x: F.avg_pool2d(x, k, s, p, False, include_pad), [randn(seed, N, C, *hw)],
              max_checks=60)


sizes = st.integers(1, 7)


@settings(max_examples=25)
@given(sizes, sizes, sizes, sizes, seeds)
def test_adaptive_avg_pool2d_matches_loop(H, W, oh, ow, seed):
    x = randn(seed, 2, 3, H, W)
    out = F.adaptive_avg_pool2d(minivit.tensor(x), (oh, ow))
    np.testing.assert_allclose(out.data, adaptive_loop(x, oh, ow), atol=1e-12)


@settings(max_examples=EXAMPLES)
@given(sizes, sizes, sizes, sizes, seeds)
def test_adaptive_avg_pool2d_gradcheck(H, W, oh, ow, seed):
    gradcheck(lambda x: F.adaptive_avg_pool2d(x, (oh, ow)), [randn(seed, 1, 2, H, W)], max_checks=60)


def test_adaptive_avg_pool2d_block_path_equals_matrix_path_and_none():
    x = randn(0, 2, 3, 8, 6)
    block = F.adaptive_avg_pool2d(minivit.tensor(x), (4, 3)).data            # divisible: reshape + mean
    Ah, Aw = conv_mod._adaptive_matrix(8, 4), conv_mod._adaptive_matrix(6, 3)
    np.testing.assert_allclose(block, Ah @ x @ Aw.T, atol=1e-12)
    assert F.adaptive_avg_pool2d(minivit.tensor(x), (None, 2)).shape == (2, 3, 8, 2)
    np.testing.assert_allclose(F.adaptive_avg_pool2d(minivit.tensor(x), 1).data,
                               x.mean(axis=(2, 3), keepdims=True))


# ================================================================== interpolate
@st.composite
def resize_cases(draw):
    mode = draw(st.sampled_from(["nearest", "bilinear"]))
    align = None if mode == "nearest" else draw(st.booleans())
    H, W = draw(sizes), draw(sizes)
    if draw(st.booleans()):
        size, sf = (draw(st.integers(1, 12)), draw(st.integers(1, 12))), None
    else:
        size = None
        sf = draw(st.sampled_from([0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]))
        H, W = max(H, 2), max(W, 2)    # keep floor(H * sf) >= 1
    return dict(mode=mode, align=align, H=H, W=W, size=size, sf=sf, seed=draw(seeds))


@settings(max_examples=25)
@given(resize_cases())
def test_interpolate_matches_loop(c):
    x = randn(c["seed"], 2, 2, c["H"], c["W"])
    out = F.interpolate(minivit.tensor(x), c["size"], c["sf"], c["mode"], c["align"])
    Ho, Wo = c["size"] or (math.floor(c["H"] * c["sf"]), math.floor(c["W"] * c["sf"]))
    assert out.shape == (2, 2, Ho, Wo)
    if c["mode"] == "nearest":
        np.testing.assert_array_equal(out.data, nearest_loop(x, Ho, Wo, c["sf"]))
    else:
        np.testing.assert_allclose(out.data, bilinear_loop(x, Ho, Wo, c["align"], c["sf"]), atol=1e-12)


@settings(max_examples=EXAMPLES)
@given(resize_cases())
def test_interpolate_gradcheck(c):
    x = randn(c["seed"], 1, 2, c["H"], c["W"])
    gradcheck(lambda x: F.interpolate(x, c["size"], c["sf"], c["mode"], c["align"]), [x], max_checks=60)


def test_interpolate_simple_cases():
    x = randn(0, 1, 2, 3, 4)
    up = F.interpolate(minivit.tensor(x), scale_factor=2).data
    np.testing.assert_array_equal(up, x.repeat(2, axis=2).repeat(2, axis=3))
    same = F.interpolate(minivit.tensor(x), size=(3, 4), mode="bilinear", align_corners=True).data
    np.testing.assert_allclose(same, x)
    same = F.interpolate(minivit.tensor(x), size=(3, 4), mode="bilinear").data
    np.testing.assert_allclose(same, x)
    # align_corners=True keeps the four corners exactly
    big = F.interpolate(minivit.tensor(x), size=(7, 9), mode="bilinear", align_corners=True).data
    np.testing.assert_allclose(big[..., [0, 0, -1, -1], [0, -1, 0, -1]], x[..., [0, 0, -1, -1], [0, -1, 0, -1]])
    # scale_factor, not the rounded size, sets the scale (PyTorch): 5 * 1.5 -> 7 rows, src = floor(i / 1.5)
    rows = F.interpolate(minivit.tensor(np.arange(5.0).reshape(1, 1, 5, 1)), scale_factor=(1.5, 1)).data
    np.testing.assert_array_equal(rows[0, 0, :, 0], [0, 0, 1, 2, 2, 3, 4])


def test_interpolate_nearest_uses_float32_like_torch():
    """PyTorch computes floorf(dst * (float)(in/out)); for 14 -> 46, dst 23 reads row 6, not 7."""
    x = np.arange(14.0).reshape(1, 1, 14, 1)
    out = F.interpolate(minivit.tensor(x), size=(46, 1)).data[0, 0, :, 0]
    assert out[23] == 6
    exact = [min(i * 14 // 46, 13) for i in range(46)]
    assert sum(o != e for o, e in zip(out, exact)) == 1


# ================================================================== dtypes
def _cases32():
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = r.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = r.standard_normal(4).astype(np.float32)
    y = r.standard_normal((2, 4 * 4, 9)).astype(np.float32)
    return [
        ("conv2d", lambda t: F.conv2d(t[0], t[1], t[2], 1, 1, 1, 2), [x, w, b]),
        ("conv2d patch", lambda t: F.conv2d(t[0], t[1], None, 3), [x, w[:, :, :3, :3].repeat(2, 1)]),
        ("conv2d 1x1", lambda t: F.conv2d(t[0], t[1]), [x, w[:, :, :1, :1].repeat(2, 1)]),
        ("unfold", lambda t: F.unfold(t[0], 2, 1, 1, 2), [x]),
        ("fold", lambda t: F.fold(t[0], (4, 4), 2, 1, 0, 1), [y[:, :, :9]]),
        ("max_pool2d", lambda t: F.max_pool2d(t[0], 3, 2, 1), [x]),
        ("avg_pool2d", lambda t: F.avg_pool2d(t[0], 3, 2, 1, count_include_pad=False), [x]),
        ("adaptive block", lambda t: F.adaptive_avg_pool2d(t[0], 3), [x]),
        ("adaptive matrix", lambda t: F.adaptive_avg_pool2d(t[0], 4), [x]),
        ("nearest", lambda t: F.interpolate(t[0], size=(9, 5)), [x]),
        ("bilinear", lambda t: F.interpolate(t[0], scale_factor=1.5, mode="bilinear"), [x]),
    ]


@pytest.mark.parametrize("name, fn, arrays", _cases32(), ids=[c[0] for c in _cases32()])
def test_float32_stays_float32(name, fn, arrays):
    ts = [minivit.tensor(a, requires_grad=True) for a in arrays]
    out = fn(ts)
    assert out.dtype == np.float32
    g = np.ones(out.shape, dtype=np.float32)
    raw = out._backward(g)                       # what the op itself returns, before the engine casts
    for gr, t in zip(raw, ts):
        assert gr.dtype == np.float32 and gr.shape == t.shape
    out.backward(g)
    assert all(t.grad.dtype == np.float32 for t in ts)


# ================================================================== errors
def _t(*shape, dtype=np.float64):
    return minivit.tensor(np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("call, exc, message", [
    (lambda: F.conv2d(_t(3, 28, 28), _t(4, 3, 3, 3)), ValueError,
     "conv2d: expected input of shape (N, C, H, W), got (3, 28, 28)"),
    (lambda: F.conv2d(_t(1, 3, 8, 8, dtype=np.int64), _t(4, 3, 3, 3)), TypeError,
     "conv2d: expected a floating-point input, got dtype int64"),
    (lambda: F.conv2d(_t(2, 3, 8, 8), _t(4, 1, 3, 3)), ValueError,
     "conv2d: input has 3 channels but weight expects 1 (weight shape (4, 1, 3, 3), groups=1)"),
    (lambda: F.conv2d(_t(2, 4, 8, 8), _t(4, 1, 3, 3), groups=2), ValueError,
     "conv2d: input has 4 channels but weight expects 2 (weight shape (4, 1, 3, 3), groups=2)"),
    (lambda: F.conv2d(_t(2, 3, 8, 8), _t(4, 1, 3, 3), groups=2), ValueError,
     "conv2d: groups=2 does not divide the 3 input channels"),
    (lambda: F.conv2d(_t(2, 4, 8, 8), _t(3, 2, 3, 3), groups=2), ValueError,
     "conv2d: groups=2 does not divide the 3 output channels"),
    (lambda: F.conv2d(_t(1, 1, 4, 4), _t(1, 1, 5, 5)), ValueError,
     "conv2d: kernel_size (5, 5) is larger than the padded input (4, 4) (input (4, 4), padding (0, 0))"),
    (lambda: F.conv2d(_t(1, 1, 4, 4), _t(1, 1, 3, 3), dilation=2), ValueError,
     "conv2d: kernel_size (3, 3) with dilation (2, 2) (spanning (5, 5)) is larger than the padded input"),
    (lambda: F.conv2d(_t(1, 1, 4, 4), _t(1, 1, 3, 3, dtype=np.float32)), TypeError,
     "conv2d: input is float64 but weight is float32"),
    (lambda: F.conv2d(_t(1, 1, 4, 4), _t(2, 1, 3, 3), _t(3)), ValueError,
     "conv2d: bias must have shape (2,)"),
    (lambda: F.conv2d(_t(1, 1, 4, 4), _t(2, 1, 3, 3), stride=0), ValueError,
     "conv2d: stride must be >= 1, got 0"),
    (lambda: F.conv2d(_t(1, 1, 4, 4), _t(2, 1, 3, 3), padding="same"), TypeError,
     "conv2d: padding must be an int or a pair of ints, got 'same'"),
    (lambda: F.conv2d(_t(1, 1, 4, 4), _t(2, 1, 3)), ValueError,
     "conv2d: expected weight of shape (out_channels, in_channels/groups, kh, kw), got (2, 1, 3)"),
    (lambda: F.unfold(_t(3, 8, 8), 2), ValueError,
     "unfold: expected input of shape (N, C, H, W), got (3, 8, 8)"),
    (lambda: F.unfold(_t(1, 3, 2, 2), 3), ValueError,
     "unfold: kernel_size (3, 3) is larger than the padded input (2, 2)"),
    (lambda: F.fold(_t(1, 8, 9), (5, 5), 2), ValueError,
     "fold: input has L=9 windows, but output_size (5, 5) with kernel_size (2, 2), stride (1, 1), "
     "padding (0, 0), dilation (1, 1) has 4x4 = 16"),
    (lambda: F.fold(_t(1, 7, 9), (4, 4), 2), ValueError,
     "fold: input has 7 rows, which is not a multiple of kh*kw = 4"),
    (lambda: F.fold(_t(8, 9), (4, 4), 2), ValueError,
     "fold: expected input of shape (N, C*kh*kw, L), got (8, 9)"),
    (lambda: F.max_pool2d(_t(1, 1, 8, 8), 3, 1, 2), ValueError,
     "max_pool2d: padding (2, 2) must be at most half the kernel_size (3, 3)"),
    (lambda: F.max_pool2d(_t(1, 1, 8, 8), 2, ceil_mode=True), NotImplementedError,
     "max_pool2d: ceil_mode=True is not implemented"),
    (lambda: F.avg_pool2d(_t(8, 8), 2), ValueError,
     "avg_pool2d: expected input of shape (N, C, H, W), got (8, 8)"),
    (lambda: F.avg_pool2d(_t(1, 1, 8, 8), 2, divisor_override=0), ValueError,
     "avg_pool2d: divisor_override must not be zero"),
    (lambda: F.adaptive_avg_pool2d(_t(1, 1, 8, 8), 0), ValueError,
     "adaptive_avg_pool2d: output_size must be >= 1, got (0, 0)"),
    (lambda: F.interpolate(_t(1, 1, 4, 4), size=8, mode="bicubic"), NotImplementedError,
     "interpolate: mode='bicubic' is not implemented"),
    (lambda: F.interpolate(_t(1, 1, 4, 4), size=8, mode="bilinear", antialias=True), NotImplementedError,
     "interpolate: antialias=True is not implemented"),
    (lambda: F.interpolate(_t(1, 1, 4, 4), size=8, align_corners=True), ValueError,
     "interpolate: align_corners can only be set with mode='bilinear'"),
    (lambda: F.interpolate(_t(1, 1, 4, 4), size=8, scale_factor=2), ValueError,
     "interpolate: give exactly one of size and scale_factor"),
    (lambda: F.interpolate(_t(1, 1, 4, 4)), ValueError,
     "interpolate: give exactly one of size and scale_factor"),
])
def test_errors(call, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        call()
