"""The Tensor itself: dtype rules, operators, properties, errors."""
import numpy as np
import pytest

import minivit
from minivit import Tensor, functional as F


def test_dtype_follows_input_like_torch_from_numpy():
    assert minivit.tensor(1.5).dtype == np.float32                   # Python numbers -> float32
    assert minivit.tensor([1, 2, 3]).dtype == np.float32             # lists -> float32
    assert minivit.tensor(np.zeros(3)).dtype == np.float64           # float64 arrays stay float64
    assert minivit.tensor(np.zeros(3, np.float32)).dtype == np.float32
    assert minivit.tensor(np.arange(3)).dtype == np.int64            # integer labels stay integer
    assert minivit.tensor(np.zeros(3), dtype=np.float32).dtype == np.float32
    with pytest.raises(TypeError, match="floating-point"):
        minivit.tensor(np.arange(3), requires_grad=True)


@pytest.mark.parametrize("const", [2, 2.5, np.float64(2.5), np.ones(3), np.ones(3, np.float64)])
def test_constants_never_upcast_float32(const):
    x = minivit.tensor(np.ones(3, np.float32), requires_grad=True)
    for y in (x + const, const + x, x - const, const - x, x * const, const * x, x / const,
              const / x, x ** 2, -x):
        assert y.dtype == np.float32


def test_operators_match_numpy_and_reflect():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    t = minivit.tensor(a)
    np.testing.assert_array_equal((t + 1).data, a + 1)
    np.testing.assert_array_equal((1 - t).data, 1 - a)
    np.testing.assert_array_equal((2 / t).data, 2 / a)
    np.testing.assert_array_equal((2 ** t).data, 2 ** a)
    np.testing.assert_array_equal((a @ t).data, a @ a)                # ndarray @ Tensor -> Tensor.__rmatmul__
    assert isinstance(a + t, Tensor) and isinstance(a * t, Tensor)
    np.testing.assert_array_equal(t.T.data, a.T)
    np.testing.assert_array_equal(abs(-t).data, a)
    np.testing.assert_array_equal(t[0, 1:].data, a[0, 1:])


def test_comparisons_are_boolean_without_grad():
    t = minivit.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    m = t > 1.5
    assert m.dtype == bool and not m.requires_grad
    np.testing.assert_array_equal(m.data, [False, True, True])
    np.testing.assert_array_equal((t == 2.0).data, [False, True, False])
    np.testing.assert_array_equal((t <= 2.0).data, [True, True, False])


def test_properties_item_numpy_detach():
    t = minivit.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert t.shape == (2, 3) and t.ndim == 2 and t.dtype == np.float64 and len(t) == 2
    assert t.sum().item() == 15.0
    assert t.numpy() is t.data
    d = (t * 2).detach()
    assert not d.requires_grad and d.is_leaf
    assert "requires_grad=True" in repr(t)


def test_backward_needs_grad_for_non_scalars_and_a_graph():
    t = minivit.tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(RuntimeError, match="shape \\(2, 2\\).*grad="):
        (t * 2).backward()
    (t * 2).backward(np.ones((2, 2)))
    np.testing.assert_array_equal(t.grad, 2 * np.ones((2, 2)))
    with pytest.raises(ValueError, match="grad has shape"):
        (t * 2).backward(np.ones(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        minivit.tensor(np.ones(2)).sum().backward()


def test_broadcast_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\) cannot be broadcast"):
        minivit.tensor(np.ones((2, 3))) + minivit.tensor(np.ones(4))


def test_no_grad_records_nothing_and_manual_seed_repeats():
    x = minivit.tensor(np.ones(3), requires_grad=True)
    with minivit.no_grad():
        y = x * 2
    assert not y.requires_grad and y.is_leaf
    assert minivit.is_grad_enabled()
    minivit.manual_seed(3)
    a = F.dropout(minivit.tensor(np.ones(100, np.float32)), 0.5).data
    minivit.manual_seed(3)
    b = F.dropout(minivit.tensor(np.ones(100, np.float32)), 0.5).data
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="seed must be an int"):
        minivit.manual_seed(1.5)


def test_unbroadcast_sums_broadcast_axes():
    from minivit.tensor import unbroadcast
    g = np.ones((4, 2, 3))
    np.testing.assert_array_equal(unbroadcast(g, (2, 1)), 12 * np.ones((2, 1)))   # summed over 4 and 3
    np.testing.assert_array_equal(unbroadcast(g, (3,)), 8 * np.ones(3))
    np.testing.assert_array_equal(unbroadcast(g, ()), 24)
