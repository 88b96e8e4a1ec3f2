"""Arithmetic, elementwise maths, matmul/linear and reductions:
float64 gradchecks driven by hypothesis, and value checks against NumPy."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit import functional as F
from minivit import gradcheck

dims = st.integers(1, 4)


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast together, with size-1 and missing dims."""
    shape = draw(st.lists(dims, min_size=1, max_size=3))
    other = [1 if draw(st.booleans()) else s for s in shape]
    other = other[draw(st.integers(0, len(other) - 1)):]
    return (tuple(shape), tuple(other)) if draw(st.booleans()) else (tuple(other), tuple(shape))


def rand(shape, positive=False, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.abs(x) + 0.5 if positive else x


def T(a):
    return minivit.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


BINARY = {"add": (F.add, np.add, False), "sub": (F.sub, np.subtract, False),
          "mul": (F.mul, np.multiply, False), "div": (F.div, np.divide, True),
          "maximum": (F.maximum, np.maximum, False), "minimum": (F.minimum, np.minimum, False),
          "pow": (F.pow, np.power, True)}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(shapes=broadcast_pair())
@settings(max_examples=15)
def test_binary_ops_broadcasting(name, shapes):
    op, ref, positive = BINARY[name]
    a, b = rand(shapes[0], positive, 1), rand(shapes[1], positive, 2)
    if name == "pow":
        b = rand(shapes[1], False, 2)
    np.testing.assert_allclose(op(T(a), T(b)).data, ref(a, b), rtol=1e-12)
    gradcheck(op, [T(a), T(b)])


UNARY = {"exp": (F.exp, np.exp, False), "log": (F.log, np.log, True), "sqrt": (F.sqrt, np.sqrt, True),
         "abs": (F.abs, np.abs, False), "neg": (F.neg, np.negative, False),
         "tanh": (F.tanh, np.tanh, False), "sigmoid": (F.sigmoid, lambda x: 1 / (1 + np.exp(-x)), False),
         "relu": (F.relu, lambda x: np.maximum(x, 0), False)}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(shape=st.lists(dims, min_size=0, max_size=3))
@settings(max_examples=10)
def test_unary_ops(name, shape):
    op, ref, positive = UNARY[name]
    x = rand(tuple(shape), positive)
    np.testing.assert_allclose(op(T(x)).data, ref(x), rtol=1e-12)
    gradcheck(op, [T(x)])


def test_clamp_value_and_grad():
    x = np.array([-2.0, -0.3, 0.2, 1.7])
    np.testing.assert_allclose(F.clamp(T(x), -1, 1).data, np.clip(x, -1, 1))
    t = T(x)
    F.clamp(t, min=0.0).sum().backward()
    np.testing.assert_array_equal(t.grad, [0, 0, 1, 1])
    gradcheck(lambda a: F.clamp(a, -1.0, 1.0), [T(x)])
    with pytest.raises(ValueError, match="clamp"):
        F.clamp(T(x))


def test_sigmoid_is_stable_for_large_inputs():
    x = minivit.tensor(np.array([-1000.0, 1000.0], dtype=np.float32))
    np.testing.assert_array_equal(F.sigmoid(x).data, [0.0, 1.0])


def test_maximum_splits_ties():
    a, b = T([1.0, 2.0]), T([1.0, 3.0])
    F.maximum(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad, [0.5, 0.0])
    np.testing.assert_array_equal(b.grad, [0.5, 1.0])


@st.composite
def matmul_shapes(draw):
    n, k, m = draw(dims), draw(dims), draw(dims)
    batch = tuple(draw(st.lists(dims, max_size=2)))
    bb = tuple(1 if draw(st.booleans()) else s for s in batch)[draw(st.integers(0, len(batch))):]
    kind = draw(st.sampled_from(["mm", "vec_left", "vec_right", "shared_b"]))
    if kind == "vec_left":
        return (k,), batch + (k, m)
    if kind == "vec_right":
        return batch + (n, k), (k,)
    if kind == "shared_b":
        return batch + (n, k), (k, m)
    return batch + (n, k), bb + (k, m)


@given(shapes=matmul_shapes())
@settings(max_examples=30)
def test_matmul(shapes):
    a, b = rand(shapes[0], seed=1), rand(shapes[1], seed=2)
    np.testing.assert_allclose(F.matmul(T(a), T(b)).data, np.matmul(a, b), rtol=1e-12)
    gradcheck(F.matmul, [T(a), T(b)])


def test_matmul_error_names_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\)"):
        F.matmul(T(np.ones((2, 3))), T(np.ones((4, 5))))


@given(lead=st.lists(dims, min_size=1, max_size=3), fin=dims, fout=dims, bias=st.booleans())
@settings(max_examples=20)
def test_linear(lead, fin, fout, bias):
    x, w, b = rand(tuple(lead) + (fin,), seed=1), rand((fout, fin), seed=2), rand((fout,), seed=3)
    ref = x @ w.T + (b if bias else 0)
    args = [T(x), T(w)] + ([T(b)] if bias else [])
    np.testing.assert_allclose(F.linear(*args).data, ref, rtol=1e-12)
    gradcheck(F.linear, args)


@given(rows=st.integers(0, 70), cols=st.integers(1, 9), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(["c", "f", "strided", "broadcast"]))
@settings(max_examples=40)
def test_sum_rows_equals_the_axis0_sum(rows, cols, dtype, layout):
    """linear's and layer_norm's bias gradient: ``ones @ g`` is ``g.sum(0)`` for any layout."""
    from minivit.functional._util import sum_rows
    g = np.random.default_rng(rows * 10 + cols).standard_normal((rows, 2 * cols)).astype(dtype)
    g = {"c": g[:, :cols], "f": np.asfortranarray(g[:, :cols]), "strided": g[:, ::2],
         "broadcast": np.broadcast_to(g[:1, :cols], (rows, cols)) if rows else g[:, :cols]}[layout]
    got = sum_rows(g)
    assert got.shape == (cols,) and got.dtype == dtype
    np.testing.assert_allclose(got, g.astype(np.float64).sum(0), rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def test_linear_error():
    with pytest.raises(ValueError, match="linear: input has 3 features"):
        F.linear(T(np.ones((2, 3))), T(np.ones((4, 5))))


REDUCE = {"sum": (F.sum, np.sum), "mean": (F.mean, np.mean), "amax": (F.amax, np.max),
          "amin": (F.amin, np.min), "max": (F.max, np.max), "min": (F.min, np.min)}


@st.composite
def shape_and_dims(draw):
    shape = tuple(draw(st.lists(dims, min_size=1, max_size=4)))
    axes = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1),
                          st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True).map(tuple)))
    return shape, axes, draw(st.booleans())


@pytest.mark.parametrize("name", sorted(REDUCE))
@given(sd=shape_and_dims())
@settings(max_examples=15)
def test_reductions(name, sd):
    shape, axes, keep = sd
    op, ref = REDUCE[name]
    x = rand(shape)
    np.testing.assert_allclose(op(T(x), axes, keep).data, ref(x, axis=axes, keepdims=keep), rtol=1e-12)
    gradcheck(lambda a: op(a, axes, keep), [T(x)])


@given(sd=shape_and_dims(), unbiased=st.booleans())
@settings(max_examples=15)
def test_var(sd, unbiased):
    shape, axes, keep = sd
    x = rand(shape)
    n = x.size if axes is None else int(np.prod([shape[a] for a in np.atleast_1d(axes)]))
    if unbiased and n < 2:
        return
    ref = np.var(x, axis=axes, keepdims=keep, ddof=int(unbiased))
    np.testing.assert_allclose(F.var(T(x), axes, keep, unbiased).data, ref, rtol=1e-10, atol=1e-14)
    gradcheck(lambda a: F.var(a, axes, keep, unbiased), [T(x)])


def test_amax_ties_share_gradient():
    x = T([[1.0, 3.0, 3.0]])
    F.amax(x, 1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5]])


@pytest.mark.parametrize("op", [F.exp, F.tanh, F.sigmoid, F.relu, F.sqrt, F.abs, F.log])
def test_float32_stays_float32(op):
    x = minivit.tensor(np.abs(np.random.randn(3, 4)).astype(np.float32) + 0.1, requires_grad=True)
    y = op(x * 2.0 + np.ones(4))      # a float64 ndarray constant must not upcast
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_astype_roundtrip_gradient():
    x = minivit.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = F.astype(x, np.float64)
    assert y.dtype == np.float64
    (y * 2).sum().backward()
    assert x.grad.dtype == np.float32 and np.all(x.grad == 2)
