"""Tests for minivit.functional.nn_ops: activations, softmax, normalisation,
dropout, losses and attention.

For every op: a hypothesis-driven float64 gradcheck (random shapes with
size-1 dims, axes, masks, targets, reductions) and a value check against a
NumPy one-liner or a slow explicit loop. Then dtype (float32 in, float32 out
and float32 gradients), randomness (dropout, drop_path) and error messages.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import minivit
from minivit import Tensor, functional as F, gradcheck

SETTINGS = settings(max_examples=20)


def rnd(shape, seed=0, scale=1.0, dtype=np.float64):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def leaf(shape, seed=0, scale=1.0):
    return Tensor(rnd(shape, seed, scale), requires_grad=True)


shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4)
seeds = st.integers(0, 2**31 - 1)


# ====================================================================== gelu
@SETTINGS
@given(shape=shapes, seed=seeds, approximate=st.sampled_from(["none", "tanh"]))
def test_gelu_gradcheck(shape, seed, approximate):
    gradcheck(lambda x: F.gelu(x, approximate), [leaf(shape, seed, 2.0)])


def test_gelu_exact_matches_math_erf_per_element():
    x = np.concatenate([np.linspace(-8, 8, 161), rnd(50, 1, 3.0)])
    out = F.gelu(Tensor(x)).data
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-15)


def test_gelu_exact_derivative_is_cdf_plus_x_pdf():
    x = Tensor(np.linspace(-5, 5, 41), requires_grad=True)
    F.gelu(x).sum().backward()
    ref = [0.5 * (1 + math.erf(v / math.sqrt(2))) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
           for v in x.data]
    np.testing.assert_allclose(x.grad, ref, rtol=1e-12, atol=1e-15)


def test_gelu_tanh_value():
    x = rnd((3, 7), 2, 3.0)
    ref = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(F.gelu(Tensor(x), approximate="tanh").data, ref, rtol=1e-13)
    # the approximation is close to the exact GELU
    np.testing.assert_allclose(F.gelu(Tensor(x), "tanh").data, F.gelu(Tensor(x)).data, atol=1e-3)


def test_float32_normal_cdf_is_within_3e7_of_scipy_on_a_dense_grid():
    from scipy.special import ndtr
    from minivit.functional import _normal
    x = np.linspace(-12, 12, 480_001)          # several 64k chunks, the last one partial
    got = _normal.ndtr(x.astype(np.float32))
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.abs(got.astype(np.float64) - ndtr(x)).max() < 3e-7
    assert got[0] == 0.0 and got[-1] == 1.0 and np.all(np.diff(got) >= -3e-7)


@SETTINGS
@given(shape=shapes, seed=seeds, big=st.booleans())
def test_gelu_float32_fast_path_matches_float64(shape, seed, big):
    if big:                                    # crosses a chunk boundary
        shape = (3, 70_001)
    x64 = rnd(shape, seed, 3.0)
    g64 = rnd(shape, seed + 1)
    x32 = Tensor(x64.astype(np.float32)[..., ::1], requires_grad=True)
    y32 = F.gelu(x32)
    y32.backward(Tensor(g64.astype(np.float32)))
    x = Tensor(x32.data.astype(np.float64), requires_grad=True)
    y = F.gelu(x)
    y.backward(Tensor(g64.astype(np.float32).astype(np.float64)))
    assert y32.data.dtype == np.float32 and x32.grad.dtype == np.float32
    np.testing.assert_allclose(y32.data, y.data, rtol=0, atol=2e-6)
    assert np.all(np.abs(x32.grad - x.grad) <= 2e-6 * (1 + np.abs(g64)))


def test_gelu_float32_accepts_non_contiguous_input():
    x = rnd((6, 8), 3, 2.0, np.float32)
    xt = Tensor(x.T, requires_grad=True)       # a transposed view
    F.gelu(xt).sum().backward()
    ref = Tensor(np.ascontiguousarray(x.T), requires_grad=True)
    F.gelu(ref).sum().backward()
    np.testing.assert_array_equal(F.gelu(xt).data, F.gelu(ref).data)
    np.testing.assert_array_equal(xt.grad, ref.grad)


def test_gelu_bad_approximate():
    with pytest.raises(ValueError, match="gelu: approximate must be 'none' or 'tanh', got 'fast'"):
        F.gelu(Tensor(np.ones(3)), approximate="fast")


def test_gelu_rejects_integer_input():
    with pytest.raises(TypeError, match="gelu: input must be a floating-point tensor, got dtype int64"):
        F.gelu(np.arange(3))


# ====================================================================== softmax
@SETTINGS
@given(shape=shapes, seed=seeds, data=st.data(), log=st.booleans())
def test_softmax_gradcheck(shape, seed, data, log):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    fn = F.log_softmax if log else F.softmax
    gradcheck(lambda x: fn(x, dim), [leaf(shape, seed, 2.0)])


@SETTINGS
@given(shape=shapes, seed=seeds, data=st.data())
def test_softmax_values(shape, seed, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = rnd(shape, seed, 3.0)
    ref = np.exp(x) / np.exp(x).sum(axis=dim, keepdims=True)
    np.testing.assert_allclose(F.softmax(Tensor(x), dim).data, ref, rtol=1e-12)
    np.testing.assert_allclose(F.log_softmax(Tensor(x), dim).data, np.log(ref), rtol=1e-10, atol=1e-12)


def test_softmax_is_stable_for_large_logits():
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])
    small = np.array([[0.0, 1.0, 2.0], [0.0, -1.0, -2.0]])
    np.testing.assert_allclose(F.softmax(Tensor(x)).data, F.softmax(Tensor(small)).data, rtol=1e-12)
    np.testing.assert_allclose(F.log_softmax(Tensor(x)).data, F.log_softmax(Tensor(small)).data, rtol=1e-12)


def test_softmax_bad_dim():
    with pytest.raises(IndexError, match="dim 2 is out of range"):
        F.softmax(Tensor(np.ones((2, 3))), dim=2)


# ====================================================================== layer_norm
@SETTINGS
@given(shape=shapes, seed=seeds, data=st.data(), affine=st.sampled_from(["none", "weight", "both"]))
def test_layer_norm_gradcheck(shape, seed, data, affine):
    k = data.draw(st.integers(1, len(shape)))
    ns = shape[len(shape) - k:]
    x = leaf(shape, seed)
    w = leaf(ns, seed + 1) if affine != "none" else None
    b = leaf(ns, seed + 2) if affine == "both" else None
    ins = [t for t in (x, w, b) if t is not None]

    def fn(*ts):
        return F.layer_norm(ts[0], ns, *ts[1:], eps=1e-5)
    gradcheck(fn, ins)


@SETTINGS
@given(shape=shapes, seed=seeds, data=st.data())
def test_layer_norm_values(shape, seed, data):
    k = data.draw(st.integers(1, len(shape)))
    ns = shape[len(shape) - k:]
    axes = tuple(range(len(shape) - k, len(shape)))
    x, w, b = rnd(shape, seed, 3.0) + 1.0, rnd(ns, seed + 1), rnd(ns, seed + 2)
    ref = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + 1e-6) * w + b
    np.testing.assert_allclose(F.layer_norm(Tensor(x), ns, Tensor(w), Tensor(b), eps=1e-6).data, ref,
                               rtol=1e-10, atol=1e-12)


def test_layer_norm_int_normalized_shape_and_no_affine():
    x = rnd((2, 3, 5), 3)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(F.layer_norm(Tensor(x), 5).data, ref, rtol=1e-10)


def test_layer_norm_errors():
    x = Tensor(np.zeros((8, 50, 32), np.float32))
    with pytest.raises(ValueError, match=r"layer_norm: normalized_shape \(64,\) does not match the last "
                                         r"dims of input shape \(8, 50, 32\)"):
        F.layer_norm(x, (64,))
    with pytest.raises(ValueError, match=r"layer_norm: weight has shape \(16,\) but expected \(32,\)"):
        F.layer_norm(x, (32,), Tensor(np.ones(16, np.float32)))
    with pytest.raises(TypeError, match="layer_norm: weight has dtype float64 but input has dtype float32"):
        F.layer_norm(x, (32,), Tensor(np.ones(32)))


# ====================================================================== batch_norm
bn_shapes = st.tuples(st.integers(1, 3), st.integers(1, 3)).flatmap(
    lambda nc: st.lists(st.integers(1, 3), max_size=2).map(lambda rest: nc + tuple(rest)))


@SETTINGS
@given(shape=bn_shapes, seed=seeds, training=st.booleans(), affine=st.booleans())
def test_batch_norm_gradcheck(shape, seed, training, affine):
    C = shape[1]
    if training and np.prod(shape) // C < 2:
        shape = (shape[0] + 1,) + shape[1:]
    x = leaf(shape, seed)
    rm, rv = rnd(C, seed + 3), np.abs(rnd(C, seed + 4)) + 0.5
    ins = [x] + ([leaf(C, seed + 1), leaf(C, seed + 2)] if affine else [])

    def fn(x, *wb):
        # copies: training updates the running stats in place on every call
        return F.batch_norm(x, rm.copy(), rv.copy(), *wb, training=training)
    gradcheck(fn, ins)


@SETTINGS
@given(shape=bn_shapes, seed=seeds)
def test_batch_norm_training_values_and_running_stats(shape, seed):
    if np.prod(shape) // shape[1] < 2:
        shape = (shape[0] + 1,) + shape[1:]
    C = shape[1]
    axes = (0,) + tuple(range(2, len(shape)))
    n = np.prod(shape) // C
    x, w, b = rnd(shape, seed, 2.0) + 1.0, rnd(C, seed + 1), rnd(C, seed + 2)
    rm, rv = rnd(C, seed + 3), np.abs(rnd(C, seed + 4)) + 0.5
    rm0, rv0 = rm.copy(), rv.copy()
    out = F.batch_norm(Tensor(x), rm, rv, Tensor(w), Tensor(b), training=True, momentum=0.2, eps=1e-5)
    mean, var = x.mean(axes), x.var(axes)
    bc = (1, C) + (1,) * (len(shape) - 2)
    ref = (x - mean.reshape(bc)) / np.sqrt(var.reshape(bc) + 1e-5) * w.reshape(bc) + b.reshape(bc)
    np.testing.assert_allclose(out.data, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rm, 0.8 * rm0 + 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(rv, 0.8 * rv0 + 0.2 * x.var(axes, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(x.var(axes, ddof=1), var * n / (n - 1), rtol=1e-12)


def test_batch_norm_eval_uses_running_stats():
    x = rnd((4, 3, 2, 2), 5)
    rm, rv, w, b = np.array([0.5, -1.0, 2.0]), np.array([1.0, 4.0, 0.25]), rnd(3, 6), rnd(3, 7)
    rm0, rv0 = rm.copy(), rv.copy()
    out = F.batch_norm(Tensor(x), rm, rv, Tensor(w), Tensor(b), training=False)
    bc = (1, 3, 1, 1)
    ref = (x - rm.reshape(bc)) / np.sqrt(rv.reshape(bc) + 1e-5) * w.reshape(bc) + b.reshape(bc)
    np.testing.assert_allclose(out.data, ref, rtol=1e-12)
    np.testing.assert_array_equal(rm, rm0)       # eval never updates the buffers
    np.testing.assert_array_equal(rv, rv0)


def test_batch_norm_training_without_running_stats():
    x = rnd((5, 2), 8)
    out = F.batch_norm(Tensor(x), None, None, training=True)
    np.testing.assert_allclose(out.data, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-12)


def test_batch_norm_errors():
    x = Tensor(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"batch_norm: running_mean has shape \(2,\) but input has C=3"):
        F.batch_norm(x, np.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match="batch_norm: evaluation .* needs running_mean and running_var"):
        F.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match=r"more than 1 value per channel, got input shape \(1, 3\)"):
        F.batch_norm(Tensor(np.ones((1, 3))), None, None, training=True)
    with pytest.raises(ValueError, match=r"batch_norm: input must be \(N, C\)"):
        F.batch_norm(Tensor(np.ones(3)), np.zeros(3), np.ones(3))


# ====================================================================== dropout
@SETTINGS
@given(shape=shapes, seed=seeds, p=st.sampled_from([0.0, 0.2, 0.5, 0.9]))
def test_dropout_gradcheck(shape, seed, p):
    def fn(x):
        minivit.manual_seed(seed)
        return F.dropout(x, p, training=True)
    gradcheck(fn, [leaf(shape, seed)])


def test_dropout_train_eval_seed_and_expectation():
    x = Tensor(np.ones((200, 500), np.float32))
    assert F.dropout(x, 0.3, training=False) is x
    assert F.dropout(x, 0.0, training=True) is x
    minivit.manual_seed(1)
    a = F.dropout(x, 0.3).data
    minivit.manual_seed(1)
    b = F.dropout(x, 0.3).data
    np.testing.assert_array_equal(a, b)                          # same seed, same mask
    assert not np.array_equal(a, F.dropout(x, 0.3).data)         # next call: new mask
    assert set(np.unique(a)) == {np.float32(0), np.float32(1 / 0.7)}
    assert abs((a == 0).mean() - 0.3) < 0.01                     # drop rate
    assert abs(a.mean() - 1.0) < 0.01                            # expectation preserved
    # the mask does not depend on the dtype
    minivit.manual_seed(1)
    np.testing.assert_allclose(F.dropout(Tensor(np.ones((200, 500))), 0.3).data, a, rtol=1e-6)


def test_dropout_p_one_and_errors():
    x = Tensor(np.ones(4), requires_grad=True)
    y = F.dropout(x, 1.0)
    np.testing.assert_array_equal(y.data, 0)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, 0)
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\], got 1.5"):
        F.dropout(x, 1.5)
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\], got -0.1"):
        F.dropout(x, -0.1)


def test_dropout_backward_uses_the_mask():
    x = Tensor(rnd((50, 40), 3), requires_grad=True)
    y = F.dropout(x, 0.4)
    y.sum().backward()
    mask = y.data / x.data
    np.testing.assert_allclose(x.grad, mask, rtol=1e-12)


# ====================================================================== drop_path
@SETTINGS
@given(shape=shapes, seed=seeds, p=st.sampled_from([0.0, 0.25, 0.5, 1.0]), sbk=st.booleans())
def test_drop_path_gradcheck(shape, seed, p, sbk):
    def fn(x):
        minivit.manual_seed(seed)
        return F.drop_path(x, p, training=True, scale_by_keep=sbk)
    gradcheck(fn, [leaf(shape, seed)])


def test_drop_path_per_sample_mask_train_eval_and_expectation():
    x = Tensor(rnd((4000, 3, 5), 9))
    assert F.drop_path(x, 0.3, training=False) is x
    assert F.drop_path(x, 0.0, training=True) is x
    minivit.manual_seed(2)
    y = F.drop_path(x, 0.3, training=True).data
    kept = np.all(y != 0, axis=(1, 2))
    dropped = np.all(y == 0, axis=(1, 2))
    assert np.all(kept | dropped)                                # whole samples
    np.testing.assert_allclose(y[kept], x.data[kept] / 0.7, rtol=1e-12)
    assert abs(dropped.mean() - 0.3) < 0.03
    ones = Tensor(np.ones((20000, 2)))
    assert abs(F.drop_path(ones, 0.3, training=True).data.mean() - 1.0) < 0.03
    minivit.manual_seed(2)
    np.testing.assert_array_equal(F.drop_path(x, 0.3, training=True).data, y)
    y2 = F.drop_path(x, 0.3, training=True, scale_by_keep=False).data
    assert set(np.unique(y2 / x.data).round(12)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match=r"drop_path: drop_prob must be in \[0, 1\], got 2.0"):
        F.drop_path(x, 2.0, training=True)


# ====================================================================== cross_entropy / nll_loss
def _ce_layout(shape):
    """(N, C, d...) -> list of positions (as index tuples into the target) and C."""
    C = shape[1] if len(shape) >= 2 else shape[0]
    tshape = shape[:1] + shape[2:] if len(shape) >= 2 else ()
    return C, tshape, list(np.ndindex(*tshape))


def _logits_at(x, pos):
    """The C logits of position pos = (n, d1, ...) of x (N, C, d1, ...) or (C,)."""
    if x.ndim == 1:
        return x
    return x[(pos[0], slice(None)) + pos[1:]]


def ce_ref(x, target, weight=None, reduction="mean", eps=0.0, ignore_index=-100):
    """Slow, explicit PyTorch cross-entropy: one position at a time."""
    C, tshape, positions = _ce_layout(x.shape)
    w = np.ones(C) if weight is None else weight
    soft = target.dtype.kind == "f"
    losses, denom = np.zeros(tshape), 0.0
    for pos in positions:
        z = _logits_at(x, pos)
        logp = z - math.log(sum(math.exp(v) for v in z))
        if soft:
            q = _logits_at(target, pos) * (1 - eps) + eps / C
            losses[pos] = -sum(w[c] * q[c] * logp[c] for c in range(C))
            denom += 1
        else:
            y = int(target[pos])
            if y == ignore_index:
                continue
            losses[pos] = ((1 - eps) * w[y] * -logp[y]
                           + eps / C * sum(w[c] * -logp[c] for c in range(C)))
            denom += w[y]
    if reduction == "none":
        return losses
    return losses.sum() / denom if reduction == "mean" else losses.sum()


ce_shapes = st.tuples(st.integers(1, 3), st.integers(1, 4)).flatmap(
    lambda nc: st.lists(st.integers(1, 3), max_size=2).map(lambda rest: nc + tuple(rest))) | \
    st.integers(1, 4).map(lambda c: (c,))


@st.composite
def ce_case(draw):
    shape = draw(ce_shapes)
    seed = draw(seeds)
    C, tshape, _ = _ce_layout(shape)
    rng = np.random.default_rng(seed)
    soft = draw(st.booleans())
    if soft:
        target = rng.dirichlet(np.ones(C), size=int(np.prod(shape)) // C)       # (M, C)
        # contiguous: gradcheck perturbs through reshape(-1), which copies other layouts
        target = np.ascontiguousarray(np.moveaxis(target.reshape((shape[0],) + shape[2:] + (C,)), -1, 1)
                                      if len(shape) >= 2 else target.reshape(shape))
    else:
        target = rng.integers(0, C, size=tshape)
        if draw(st.booleans()) and target.ndim:                  # some positions ignored
            flat = target.reshape(-1)
            flat[rng.random(flat.size) < 0.3] = -100
            flat[0] = 0                                          # keep one valid position
    weight = rng.uniform(0.5, 2.0, C) if draw(st.booleans()) else None
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    eps = draw(st.sampled_from([0.0, 0.1, 0.3]))
    return rnd(shape, seed, 2.0), target, weight, reduction, eps


@SETTINGS
@given(case=ce_case())
def test_cross_entropy_gradcheck(case):
    x, target, weight, reduction, eps = case
    ins = [Tensor(x, requires_grad=True)]
    if target.dtype.kind == "f":
        ins.append(Tensor(target, requires_grad=True))           # soft targets get a gradient too
    else:
        ins.append(target)

    def fn(x, t):
        return F.cross_entropy(x, t, weight, reduction=reduction, label_smoothing=eps)
    gradcheck(fn, ins)


@SETTINGS
@given(case=ce_case())
def test_cross_entropy_values_vs_loop(case):
    x, target, weight, reduction, eps = case
    out = F.cross_entropy(Tensor(x), target, weight, reduction, label_smoothing=eps)
    np.testing.assert_allclose(out.data, ce_ref(x, target, weight, reduction, eps), rtol=1e-10, atol=1e-12)


def test_cross_entropy_simple_cases():
    C = 7
    # uniform logits: the loss is log C
    assert abs(F.cross_entropy(Tensor(np.zeros((3, C))), np.array([0, 3, 6])).item() - math.log(C)) < 1e-12
    # one-hot probabilities give the same loss and gradient as indices
    x = rnd((4, C), 1)
    y = np.array([1, 0, 6, 2])
    a, b = Tensor(x, requires_grad=True), Tensor(x, requires_grad=True)
    F.cross_entropy(a, y, label_smoothing=0.1).backward()
    F.cross_entropy(b, np.eye(C)[y], label_smoothing=0.1).backward()
    np.testing.assert_allclose(a.grad, b.grad, rtol=1e-12)
    # the fused gradient is (softmax - one_hot) / N
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    c = Tensor(x, requires_grad=True)
    F.cross_entropy(c, Tensor(y)).backward()
    np.testing.assert_allclose(c.grad, (p - np.eye(C)[y]) / 4, rtol=1e-12)


def test_cross_entropy_segmentation_shape():
    x = rnd((2, 3, 4, 5), 2)
    y = np.random.default_rng(0).integers(0, 3, (2, 4, 5))
    out = F.cross_entropy(Tensor(x), y, reduction="none")
    assert out.shape == (2, 4, 5)
    np.testing.assert_allclose(out.data, ce_ref(x, y, reduction="none"), rtol=1e-12)


def test_cross_entropy_errors():
    x = Tensor(np.zeros((4, 10)))
    with pytest.raises(ValueError, match=r"target of shape \(5,\) does not match input of shape \(4, 10\)"):
        F.cross_entropy(x, np.zeros(5, dtype=int))
    with pytest.raises(IndexError, match="target contains class index 10, but input has C=10 classes"):
        F.cross_entropy(x, np.array([0, 1, 10, 2]))
    with pytest.raises(IndexError, match="class index -3"):
        F.cross_entropy(x, np.array([0, 1, -3, 2]))
    with pytest.raises(ValueError, match=r"float target of shape \(4,\) must have the input's shape \(4, 10\)"):
        F.cross_entropy(x, np.zeros(4))
    with pytest.raises(ValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'avg'"):
        F.cross_entropy(x, np.zeros(4, dtype=int), reduction="avg")
    with pytest.raises(ValueError, match=r"weight has shape \(3,\) but input has C=10 classes"):
        F.cross_entropy(x, np.zeros(4, dtype=int), weight=np.ones(3))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        F.cross_entropy(x, np.zeros(4, dtype=int), label_smoothing=1.5)


@st.composite
def nll_case(draw):
    shape = draw(ce_shapes)
    seed = draw(seeds)
    C, tshape, _ = _ce_layout(shape)
    rng = np.random.default_rng(seed)
    target = rng.integers(0, C, size=tshape)
    if target.ndim and draw(st.booleans()):
        flat = target.reshape(-1)
        flat[rng.random(flat.size) < 0.3] = -1
        flat[0] = 0
    weight = rng.uniform(0.5, 2.0, C) if draw(st.booleans()) else None
    return rnd(shape, seed), target, weight, draw(st.sampled_from(["none", "mean", "sum"]))


@SETTINGS
@given(case=nll_case())
def test_nll_loss_gradcheck_and_values(case):
    x, target, weight, reduction = case
    gradcheck(lambda x, t: F.nll_loss(x, t, weight, reduction, ignore_index=-1), [leaf(x.shape, 1), target])
    C, tshape, positions = _ce_layout(x.shape)
    w = np.ones(C) if weight is None else weight
    losses, denom = np.zeros(tshape), 0.0
    for pos in positions:
        y = int(target[pos])
        if y != -1:
            losses[pos] = -w[y] * _logits_at(x, pos)[y]
            denom += w[y]
    ref = losses if reduction == "none" else (losses.sum() / denom if reduction == "mean" else losses.sum())
    out = F.nll_loss(Tensor(x), target, weight, reduction, ignore_index=-1)
    np.testing.assert_allclose(out.data, ref, rtol=1e-12, atol=1e-15)
    # cross_entropy = nll_loss(log_softmax)
    np.testing.assert_allclose(F.nll_loss(F.log_softmax(Tensor(x), 1 if x.ndim > 1 else 0), target, weight,
                                          reduction, ignore_index=-1).data,
                               F.cross_entropy(Tensor(x), target, weight, reduction, ignore_index=-1).data,
                               rtol=1e-12, atol=1e-15)


def test_nll_loss_errors():
    with pytest.raises(TypeError, match="nll_loss: target must hold integer class indices, got dtype float64"):
        F.nll_loss(Tensor(np.zeros((2, 3))), np.zeros(2))
    with pytest.raises(IndexError, match="nll_loss: target contains class index 3"):
        F.nll_loss(Tensor(np.zeros((2, 3))), np.array([3, 0]))


# ====================================================================== kl_div / mse_loss
@SETTINGS
@given(shape=shapes, seed=seeds, log_target=st.booleans(),
       reduction=st.sampled_from(["none", "sum", "mean", "batchmean"]))
def test_kl_div_gradcheck(shape, seed, log_target, reduction):
    rng = np.random.default_rng(seed)
    x = Tensor(np.log(rng.uniform(0.1, 1.0, shape)), requires_grad=True)
    p = rng.uniform(0.1, 1.0, shape)
    t = Tensor(np.log(p) if log_target else p, requires_grad=True)
    gradcheck(lambda x, t: F.kl_div(x, t, reduction, log_target), [x, t])


@SETTINGS
@given(shape=shapes, seed=seeds, reduction=st.sampled_from(["none", "sum", "mean", "batchmean"]))
def test_kl_div_values(shape, seed, reduction):
    rng = np.random.default_rng(seed)
    x = np.log(rng.uniform(0.1, 1.0, shape))
    p = rng.uniform(0.0, 1.0, shape)
    p.reshape(-1)[0] = 0.0                                       # 0 log 0 = 0
    pw = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - x), 0.0)
    ref = {"none": pw, "sum": pw.sum(), "mean": pw.mean(), "batchmean": pw.sum() / shape[0]}[reduction]
    np.testing.assert_allclose(F.kl_div(Tensor(x), Tensor(p), reduction).data, ref, rtol=1e-12, atol=1e-15)
    lp = np.log(np.maximum(p, 1e-300))
    np.testing.assert_allclose(F.kl_div(Tensor(x), Tensor(lp), reduction, log_target=True).data, ref,
                               rtol=1e-10, atol=1e-12)


def test_kl_div_batchmean_is_the_kl_divergence():
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(5), 3), rng.dirichlet(np.ones(5), 3)
    ref = np.mean([sum(p[i, c] * math.log(p[i, c] / q[i, c]) for c in range(5)) for i in range(3)])
    assert abs(F.kl_div(Tensor(np.log(q)), Tensor(p), "batchmean").item() - ref) < 1e-12


def test_kl_div_errors():
    with pytest.raises(ValueError, match=r"kl_div: target has shape \(3,\) but input has shape \(2, 3\)"):
        F.kl_div(Tensor(np.zeros((2, 3))), np.ones(3))
    with pytest.raises(ValueError, match="kl_div: reduction must be one of"):
        F.kl_div(Tensor(np.zeros(3)), np.ones(3), reduction="avg")


@SETTINGS
@given(shape=shapes, seed=seeds, reduction=st.sampled_from(["none", "sum", "mean"]))
def test_mse_loss_gradcheck_and_values(shape, seed, reduction):
    x, t = leaf(shape, seed), leaf(shape, seed + 1)
    gradcheck(lambda x, t: F.mse_loss(x, t, reduction), [x, t])
    d2 = (x.data - t.data) ** 2
    ref = {"none": d2, "sum": d2.sum(), "mean": d2.mean()}[reduction]
    np.testing.assert_allclose(F.mse_loss(x, t, reduction).data, ref, rtol=1e-12)


def test_mse_loss_shape_error():
    with pytest.raises(ValueError, match=r"mse_loss: target has shape \(4, 1\) but input has shape \(4,\)"):
        F.mse_loss(Tensor(np.zeros(4)), np.zeros((4, 1)))


# ====================================================================== cosine_similarity / normalize
@st.composite
def broadcast_pair(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    s1 = tuple(d if draw(st.booleans()) else 1 for d in shape)
    s2 = tuple(d if draw(st.booleans()) else 1 for d in shape)
    s1 = s1[draw(st.integers(0, len(s1) - 1)):]                  # maybe drop leading dims
    full = np.broadcast_shapes(s1, s2)
    return s1, s2, draw(st.integers(-len(full), len(full) - 1))


@SETTINGS
@given(case=broadcast_pair(), seed=seeds)
def test_cosine_similarity_gradcheck(case, seed):
    s1, s2, dim = case
    gradcheck(lambda a, b: F.cosine_similarity(a, b, dim), [leaf(s1, seed), leaf(s2, seed + 1)])


@SETTINGS
@given(case=broadcast_pair(), seed=seeds)
def test_cosine_similarity_values_vs_loop(case, seed):
    s1, s2, dim = case
    a, b = rnd(s1, seed), rnd(s2, seed + 1)
    shape = np.broadcast_shapes(s1, s2)
    A, B = np.moveaxis(np.broadcast_to(a, shape), dim, -1), np.moveaxis(np.broadcast_to(b, shape), dim, -1)
    ref = np.zeros(A.shape[:-1])
    for i in np.ndindex(*A.shape[:-1]):
        u, v = A[i], B[i]
        ref[i] = sum(u * v) / (max(math.sqrt(sum(u * u)), 1e-8) * max(math.sqrt(sum(v * v)), 1e-8))
    np.testing.assert_allclose(F.cosine_similarity(Tensor(a), Tensor(b), dim).data, ref, rtol=1e-10, atol=1e-12)


def test_cosine_similarity_clamps_each_norm():
    a = Tensor(np.array([[0.0, 0.0], [3.0, 4.0]]), requires_grad=True)
    b = Tensor(np.array([[1.0, 0.0], [1e-9, 0.0]]), requires_grad=True)
    out = F.cosine_similarity(a, b, dim=1, eps=1e-8)
    # row 1: (3e-9) / (5 * max(1e-9, 1e-8)) = 0.06, the per-norm clamp (not max(|a||b|, eps))
    np.testing.assert_allclose(out.data, [0.0, 3e-9 / (5 * 1e-8)], rtol=1e-12)
    out.sum().backward()
    assert np.all(np.isfinite(a.grad)) and np.all(np.isfinite(b.grad))


def test_cosine_similarity_broadcast_error():
    with pytest.raises(ValueError, match=r"cosine_similarity: shapes \(2, 3\) and \(4, 3\) cannot be broadcast"):
        F.cosine_similarity(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 3))))


@SETTINGS
@given(shape=shapes, seed=seeds, data=st.data(), p=st.sampled_from([1.0, 2.0, 3.0]))
def test_normalize_gradcheck_and_values(shape, seed, data, p):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = leaf(shape, seed)
    gradcheck(lambda x: F.normalize(x, p, dim), [x])
    ref = x.data / np.maximum(np.linalg.norm(x.data, ord=p, axis=dim, keepdims=True), 1e-12)
    np.testing.assert_allclose(F.normalize(x, p, dim).data, ref, rtol=1e-12)


def test_normalize_zero_vector_and_errors():
    x = Tensor(np.zeros((2, 3)), requires_grad=True)
    out = F.normalize(x, dim=1)
    np.testing.assert_array_equal(out.data, 0)
    out.sum().backward()
    np.testing.assert_allclose(x.grad, 1e12)                     # the clamped norm is a constant
    with pytest.raises(ValueError, match="normalize: p must be a finite number >= 1, got 0.5"):
        F.normalize(x, p=0.5)


# ====================================================================== attention
def attention_ref(q, k, v, mask=None, scale=None):
    """Slow attention: one (batch, query) at a time, with Python loops over keys."""
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    L, E, S, Ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    if mask is not None:
        batch = np.broadcast_shapes(batch + (L, S), mask.shape)[:-2]
        mask = np.broadcast_to(mask, batch + (L, S))
    q, k, v = (np.broadcast_to(t, batch + t.shape[-2:]) for t in (q, k, v))
    scale = 1 / math.sqrt(E) if scale is None else scale
    out, weights = np.zeros(batch + (L, Ev)), np.zeros(batch + (L, S))
    for b in np.ndindex(*batch):
        for i in range(L):
            logits = []
            for j in range(S):
                s = sum(q[b][i, e] * k[b][j, e] for e in range(E)) * scale
                if mask is not None:
                    m = mask[b][i, j]
                    s = (s if m else -math.inf) if mask.dtype == bool else s + m
                logits.append(s)
            top = max(logits)
            if top == -math.inf:                                 # fully masked row: zeros
                continue
            ex = [math.exp(s - top) for s in logits]
            for j in range(S):
                weights[b][i, j] = ex[j] / sum(ex)
                out[b][i] += weights[b][i, j] * v[b][j]
    return out, weights


@st.composite
def attention_case(draw):
    batch = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    L, S, E, Ev = (draw(st.integers(1, 4)) for _ in range(4))

    def sub(shape):                                              # broadcast some batch dims
        return tuple(d if draw(st.booleans()) else 1 for d in shape)
    qs, ks, vs = batch + (L, E), sub(batch) + (S, E), sub(batch) + (S, Ev)
    kind = draw(st.sampled_from(["none", "bool", "float", "float_inf", "float_grad", "causal"]))
    mshape = sub(batch)[draw(st.integers(0, len(batch))):] + (draw(st.sampled_from([1, L])), S)
    scale = draw(st.sampled_from([None, 1.0, 0.3]))
    return qs, ks, vs, kind, mshape, scale, draw(seeds)


def make_mask(kind, mshape, seed):
    rng = np.random.default_rng(seed)
    if kind == "bool":
        return rng.random(mshape) < 0.7
    if kind in ("float", "float_grad"):
        return rng.standard_normal(mshape)
    if kind == "float_inf":
        return np.where(rng.random(mshape) < 0.7, rng.standard_normal(mshape), -np.inf)
    return None


@SETTINGS
@given(case=attention_case(), dropout=st.booleans())
def test_attention_gradcheck(case, dropout):
    qs, ks, vs, kind, mshape, scale, seed = case
    q, k, v = leaf(qs, seed), leaf(ks, seed + 1), leaf(vs, seed + 2)
    mask = make_mask(kind, mshape, seed)
    ins = [q, k, v]
    if mask is not None:
        ins.append(Tensor(mask, requires_grad=kind == "float_grad") if mask.dtype != bool else mask)
    p = 0.3 if dropout else 0.0

    def fn(q, k, v, m=None):
        minivit.manual_seed(seed)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=p,
                                              is_causal=kind == "causal", scale=scale)
    gradcheck(fn, ins)


@SETTINGS
@given(case=attention_case())
def test_attention_values_vs_loop(case):
    qs, ks, vs, kind, mshape, scale, seed = case
    q, k, v = rnd(qs, seed), rnd(ks, seed + 1), rnd(vs, seed + 2)
    mask = make_mask(kind, mshape, seed)
    if kind == "causal":
        mask = np.tril(np.ones((qs[-2], ks[-2]), dtype=bool))
        out, w = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=True,
                                                scale=scale, return_weights=True)
    else:
        out, w = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), attn_mask=mask,
                                                scale=scale, return_weights=True)
    ref_out, ref_w = attention_ref(q, k, v, mask, scale)
    np.testing.assert_allclose(out.data, ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w, ref_w, rtol=1e-10, atol=1e-12)
    assert isinstance(w, np.ndarray) and not w.flags.writeable


def test_attention_fully_masked_row_gives_zeros():
    q, k, v = (Tensor(rnd((2, 3, 4), s), requires_grad=True) for s in range(3))
    mask = np.ones((3, 3), dtype=bool)
    mask[1] = False
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert np.all(np.isfinite(out.data))
    np.testing.assert_array_equal(out.data[:, 1], 0)
    out.sum().backward()
    np.testing.assert_array_equal(q.grad[:, 1], 0)
    assert all(np.all(np.isfinite(t.grad)) for t in (q, k, v))


def test_attention_scale_and_equivalence_of_masks():
    q, k, v = rnd((2, 5, 3), 0), rnd((2, 7, 3), 1), rnd((2, 7, 4), 2)
    boolean = np.random.default_rng(0).random((5, 7)) < 0.6
    boolean[:, 0] = True
    additive = np.where(boolean, 0.0, -np.inf)
    a = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), attn_mask=boolean).data
    b = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), attn_mask=additive).data
    np.testing.assert_allclose(a, b, rtol=1e-13)
    # scale=1.0 is "no scaling"; scale=None is 1/sqrt(E)
    un = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), scale=1.0).data
    np.testing.assert_allclose(un, attention_ref(q, k, v, scale=1.0)[0], rtol=1e-10)
    default = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).data
    np.testing.assert_allclose(default, F.scaled_dot_product_attention(
        Tensor(q), Tensor(k), Tensor(v), scale=1 / math.sqrt(3)).data, rtol=1e-15)


def test_attention_dropout_train_and_seed():
    q, k, v = (Tensor(rnd((2, 6, 4), s)) for s in range(3))
    minivit.manual_seed(3)
    a, w = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, return_weights=True)
    minivit.manual_seed(3)
    b = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-12)      # weights are pre-dropout
    plain = F.scaled_dot_product_attention(q, k, v)
    assert not np.allclose(a.data, plain.data)


def test_attention_errors():
    q, k, v = Tensor(np.ones((2, 5, 8))), Tensor(np.ones((2, 7, 8))), Tensor(np.ones((2, 7, 4)))
    sdpa = F.scaled_dot_product_attention
    with pytest.raises(ValueError, match=r"query has E=8 features \(shape \(2, 5, 8\)\) but key has 6"):
        sdpa(q, Tensor(np.ones((2, 7, 6))), v)
    with pytest.raises(ValueError, match=r"key has S=7 positions .* but value has 6"):
        sdpa(q, k, Tensor(np.ones((2, 6, 4))))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(5, 5\) cannot be broadcast .* \(2, 5, 7\)"):
        sdpa(q, k, v, attn_mask=np.ones((5, 5), dtype=bool))
    with pytest.raises(TypeError, match="attn_mask must be boolean .* got dtype int64"):
        sdpa(q, k, v, attn_mask=np.ones((5, 7), dtype=np.int64))
    with pytest.raises(ValueError, match="either attn_mask or is_causal=True, not both"):
        sdpa(q, k, v, attn_mask=np.ones((5, 7), dtype=bool), is_causal=True)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\), got 1.0"):
        sdpa(q, k, v, dropout_p=1.0)
    with pytest.raises(TypeError, match="key has dtype float32 but input has dtype float64"):
        sdpa(q, Tensor(np.ones((2, 7, 8), np.float32)), v)
    with pytest.raises(ValueError, match=r"batch dims .* shapes \(2,\) and \(3,\)"):
        sdpa(q, Tensor(np.ones((3, 7, 8))), v)


# ====================================================================== float32 everywhere
def _f32(shape, seed=0, scale=1.0):
    return Tensor(rnd(shape, seed, scale, np.float32), requires_grad=True)


def _probs32(shape, seed):
    p = np.random.default_rng(seed).uniform(0.1, 1.0, shape).astype(np.float32)
    return Tensor(p / p.sum(-1, keepdims=True), requires_grad=True)


FLOAT32_CASES = {
    "gelu": lambda: (F.gelu, [_f32((3, 4))]),
    "gelu_tanh": lambda: (lambda x: F.gelu(x, "tanh"), [_f32((3, 4))]),
    "softmax": lambda: (lambda x: F.softmax(x, 0), [_f32((3, 4))]),
    "log_softmax": lambda: (F.log_softmax, [_f32((3, 4))]),
    "layer_norm": lambda: (lambda x, w, b: F.layer_norm(x, (4,), w, b), [_f32((3, 4)), _f32(4, 1), _f32(4, 2)]),
    "batch_norm_train": lambda: (lambda x, w, b: F.batch_norm(x, np.zeros(2, np.float32), np.ones(2, np.float32),
                                                              w, b, training=True),
                                 [_f32((3, 2, 4)), _f32(2, 1), _f32(2, 2)]),
    "batch_norm_eval": lambda: (lambda x, w, b: F.batch_norm(x, np.zeros(2), np.ones(2), w, b),
                                [_f32((3, 2, 4)), _f32(2, 1), _f32(2, 2)]),
    "dropout": lambda: (lambda x: F.dropout(x, 0.5), [_f32((3, 4))]),
    "drop_path": lambda: (lambda x: F.drop_path(x, 0.5, training=True), [_f32((8, 4))]),
    "cross_entropy": lambda: (lambda x: F.cross_entropy(x, np.array([0, 2, 1]), np.ones(4), label_smoothing=0.1),
                              [_f32((3, 4))]),
    "cross_entropy_soft": lambda: (lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1),
                                   [_f32((3, 4)), _probs32((3, 4), 1)]),
    "cross_entropy_2d": lambda: (lambda x: F.cross_entropy(x, np.zeros((2, 3, 3), int), reduction="sum"),
                                 [_f32((2, 4, 3, 3))]),
    "nll_loss": lambda: (lambda x: F.nll_loss(x, np.array([0, 2, 1])), [_f32((3, 4))]),
    "kl_div": lambda: (lambda x, t: F.kl_div(x, t, "batchmean"), [_f32((3, 4)), _probs32((3, 4), 2)]),
    "kl_div_log": lambda: (lambda x, t: F.kl_div(x, t, "mean", log_target=True), [_f32((3, 4)), _f32((3, 4), 3)]),
    "mse_loss": lambda: (F.mse_loss, [_f32((3, 4)), _f32((3, 4), 1)]),
    "cosine_similarity": lambda: (lambda a, b: F.cosine_similarity(a, b, -1), [_f32((3, 4)), _f32((1, 4), 1)]),
    "normalize": lambda: (lambda x: F.normalize(x, 3.0), [_f32((3, 4))]),
    "attention": lambda: (lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, m, dropout_p=0.2),
                          [_f32((2, 3, 4)), _f32((2, 5, 4), 1), _f32((2, 5, 2), 2), _f32((3, 5), 3)]),
}


@pytest.mark.parametrize("name", sorted(FLOAT32_CASES))
def test_float32_stays_float32_and_g_is_untouched(name):
    fn, ins = FLOAT32_CASES[name]()
    out = fn(*ins)
    assert out.dtype == np.float32, f"{name}: output dtype {out.dtype}"
    # call the op's own backward (the engine would cast, hiding an upcast)
    g = rnd(out.shape, 7, dtype=np.float32)
    g0 = g.copy()
    grads = out._backward(g)
    np.testing.assert_array_equal(g, g0)                         # g was not modified in place
    assert len(grads) == len(ins)
    for i, gr in enumerate(grads):
        assert gr is not None, f"{name}: no gradient for input {i}"
        assert gr.dtype == np.float32, f"{name}: gradient {i} has dtype {gr.dtype}"
        assert np.broadcast_shapes(gr.shape, ins[i].shape) == gr.shape


def test_float64_inputs_give_float64_outputs():
    x = Tensor(rnd((2, 3)))
    for out in (F.gelu(x), F.softmax(x), F.layer_norm(x, 3), F.cross_entropy(x, np.array([0, 1]))):
        assert out.dtype == np.float64


def test_ops_inside_no_grad_record_nothing():
    x = _f32((2, 3))
    with minivit.no_grad():
        for out in (F.gelu(x), F.softmax(x), F.layer_norm(x, 3), F.cross_entropy(x, np.array([0, 1])),
                    F.scaled_dot_product_attention(x, x, x)):
            assert not out.requires_grad
