"""Reshapes, indexing, concatenation, padding, roll and selection."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit import functional as F
from minivit import gradcheck

dims = st.integers(1, 4)
shapes = st.lists(dims, min_size=1, max_size=4).map(tuple)


def T(a):
    return minivit.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@given(shape=shapes, data=st.data())
@settings(max_examples=20)
def test_reshape_flatten_squeeze_unsqueeze(shape, data):
    x = rand(shape)
    np.testing.assert_array_equal(F.reshape(T(x), (-1,)).data, x.reshape(-1))
    gradcheck(lambda a: F.reshape(a, (1, -1)), [T(x)])
    s = data.draw(st.integers(0, len(shape) - 1))
    e = data.draw(st.integers(s, len(shape) - 1))
    ref = x.reshape(shape[:s] + (-1,) + shape[e + 1:])
    np.testing.assert_array_equal(F.flatten(T(x), s, e).data, ref)
    gradcheck(lambda a: F.flatten(a, s, e), [T(x)])
    np.testing.assert_array_equal(F.squeeze(T(x)).data, np.squeeze(x))
    d = data.draw(st.integers(-len(shape) - 1, len(shape)))
    np.testing.assert_array_equal(F.unsqueeze(T(x), d).data, np.expand_dims(x, d))
    gradcheck(lambda a: F.squeeze(F.unsqueeze(a, d)), [T(x)])


@given(shape=shapes, data=st.data())
@settings(max_examples=20)
def test_permute_transpose(shape, data):
    x = rand(shape)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    np.testing.assert_array_equal(F.permute(T(x), perm).data, x.transpose(perm))
    gradcheck(lambda a: F.permute(a, perm), [T(x)])
    i, j = data.draw(st.integers(0, len(shape) - 1)), data.draw(st.integers(0, len(shape) - 1))
    np.testing.assert_array_equal(F.transpose(T(x), i, j).data, np.swapaxes(x, i, j))
    np.testing.assert_array_equal(T(x).T.data, x.T)


@given(shape=shapes, data=st.data())
@settings(max_examples=20)
def test_expand(shape, data):
    src = tuple(1 if data.draw(st.booleans()) else s for s in shape)
    x = rand(src)
    target = (2,) + shape
    np.testing.assert_array_equal(F.expand(T(x), target).data, np.broadcast_to(x, target))
    gradcheck(lambda a: F.expand(a, target), [T(x)])


def test_getitem_slices_ints_none_ellipsis():
    x = rand((4, 5, 6))
    for idx in [(slice(1, 3), 2), (Ellipsis, slice(None, None, -2)), (None, 0, slice(1, None)), 3]:
        np.testing.assert_array_equal(T(x)[idx].data, x[idx])
        np.testing.assert_array_equal(F.getitem(T(x), idx).data, x[idx])
        gradcheck(lambda a: a[idx], [T(x)])


def test_getitem_integer_gather_accumulates_repeats():
    # relative-position-bias style gather: a table indexed by a repeated index array
    table = rand((7, 3))
    index = np.array([[0, 1, 1], [6, 0, 0]])
    t = T(table)
    out = t[index]
    np.testing.assert_array_equal(out.data, table[index])
    out.sum().backward()
    counts = np.bincount(index.ravel(), minlength=7)[:, None] * np.ones((1, 3))
    np.testing.assert_array_equal(t.grad, counts)
    gradcheck(lambda a: a[index] * a[index], [T(table)])
    idx_t = minivit.tensor(index)                  # an integer Tensor works as an index too
    np.testing.assert_array_equal(T(table)[idx_t].data, table[index])


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 4), T_=st.integers(1, 6), K=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_getitem_row_gather_without_and_with_repeats_adds_like_add_at(B, T_, K, seed):
    """A per-sample row gather x[arange(B)[:, None], rows] (PatchDropout's): distinct rows take the
    plain `+=` path, repeated rows np.add.at; both must give add.at's gradient. Negative indices too."""
    from minivit.functional.shape import _distinct_int_index
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T_, 3))
    rows = rng.integers(-T_, T_, size=(B, K))
    idx = (np.arange(B)[:, None], rows)
    distinct = all(len(set(r % T_)) == K for r in rows)
    assert _distinct_int_index(idx, x.shape) == distinct
    t = T(x)
    g = rng.standard_normal((B, K, 3))
    t[idx].backward(g)
    want = np.zeros_like(x)
    np.add.at(want, idx, g)
    np.testing.assert_array_equal(t.grad, want)
    gradcheck(lambda a: a[idx], [T(x)])


def test_getitem_boolean_mask():
    x = rand((3, 4))
    m = x > 0
    np.testing.assert_array_equal(T(x)[m].data, x[m])
    gradcheck(lambda a: a[m] ** 2, [T(x)])


def test_getitem_error_names_shape():
    with pytest.raises(IndexError, match=r"shape \(2, 3\)"):
        T(np.ones((2, 3)))[5]


@given(shape=shapes, n=st.integers(1, 3), data=st.data())
@settings(max_examples=20)
def test_cat_stack_split_chunk(shape, n, data):
    d = data.draw(st.integers(0, len(shape) - 1))
    xs = [rand(shape, seed=i) for i in range(n)]
    np.testing.assert_array_equal(F.cat([T(x) for x in xs], d).data, np.concatenate(xs, d))
    gradcheck(lambda *a: F.cat(a, d), [T(x) for x in xs])
    np.testing.assert_array_equal(F.stack([T(x) for x in xs], d).data, np.stack(xs, d))
    gradcheck(lambda *a: F.stack(a, d), [T(x) for x in xs])
    big = np.concatenate(xs, d)
    size = data.draw(st.integers(1, big.shape[d]))
    parts = F.split(T(big), size, d)
    ref = np.split(big, range(size, big.shape[d], size), axis=d)
    assert len(parts) == len(ref)
    for p, r in zip(parts, ref):
        np.testing.assert_array_equal(p.data, r)
    gradcheck(lambda a: F.cat([p * (i + 1) for i, p in enumerate(F.split(a, size, d))], d), [T(big)])
    chunks = F.chunk(T(big), 2, d)
    np.testing.assert_array_equal(F.cat(chunks, d).data, big)


def test_split_sections_and_errors():
    x = T(np.arange(6.0))
    a, b = F.split(x, [2, 4])
    assert a.shape == (2,) and b.shape == (4,)
    with pytest.raises(ValueError, match="sum to 5"):
        F.split(x, [2, 3])
    with pytest.raises(ValueError, match="cat: tensor 1 has shape"):
        F.cat([T(np.ones((2, 3))), T(np.ones((2, 4)))], 0)


@given(shape=st.lists(dims, min_size=1, max_size=3).map(tuple), data=st.data())
@settings(max_examples=20)
def test_pad(shape, data):
    x = rand(shape)
    npairs = data.draw(st.integers(1, len(shape)))
    pad = tuple(data.draw(st.integers(0, 2)) for _ in range(2 * npairs))
    widths = [(0, 0)] * len(shape)
    for i in range(npairs):
        widths[len(shape) - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    np.testing.assert_array_equal(F.pad(T(x), pad, value=1.5).data, np.pad(x, widths, constant_values=1.5))
    gradcheck(lambda a: F.pad(a, pad), [T(x)])


@given(shape=shapes, data=st.data())
@settings(max_examples=20)
def test_roll(shape, data):
    x = rand(shape)
    d = tuple(data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True)))
    s = tuple(data.draw(st.integers(-5, 5)) for _ in d)
    np.testing.assert_array_equal(F.roll(T(x), s, d).data, np.roll(x, s, d))
    gradcheck(lambda a: F.roll(a, s, d) * np.arange(a.size).reshape(a.shape), [T(x)])


def test_roll_matches_torch_semantics():
    # out[i] = x[(i - shift) mod n]
    x = np.arange(5.0)
    out = F.roll(T(x), 2, 0).data
    assert all(out[i] == x[(i - 2) % 5] for i in range(5))


@given(shape=shapes)
@settings(max_examples=20)
def test_where_and_masked_fill(shape):
    x, y = rand(shape, 1), rand(shape, 2)
    c = rand(shape, 3) > 0
    np.testing.assert_array_equal(F.where(c, T(x), T(y)).data, np.where(c, x, y))
    gradcheck(lambda a, b: F.where(c, a, b), [T(x), T(y)])
    np.testing.assert_array_equal(F.masked_fill(T(x), c, -100.0).data, np.where(c, -100.0, x))
    gradcheck(lambda a: F.masked_fill(a, c, 0.0), [T(x)])
    with pytest.raises(TypeError, match="boolean"):
        F.masked_fill(T(x), c.astype(int), 0.0)
