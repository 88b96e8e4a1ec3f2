"""minivit._threads: row blocks in parallel threads give bitwise the same results.

Every op that splits its rows over threads (attention, SASA's local attention,
layer norm, GELU, the depth-wise convolution) is run once with one thread and
once with three (uneven blocks), with the size threshold lowered so that even
these small arrays are split, and the forward values and all gradients must be
identical bit for bit.
"""
import threading

import numpy as np
import pytest

import minivit
from minivit import Tensor, functional as F
from minivit import _threads
from minivit.functional import _normal


@pytest.fixture
def split_everything(monkeypatch):
    """Split even tiny arrays (no size threshold), and restore the thread count afterwards."""
    monkeypatch.setattr(_threads, "_MIN_WORK", 0)
    before = minivit.get_num_threads()
    yield
    minivit.set_num_threads(before)


def run_with_threads(n, fn):
    minivit.set_num_threads(n)
    return fn()


# ------------------------------------------------------------------ parallel_for itself
@pytest.mark.parametrize("n", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_blocks_cover_range_once(split_everything, n, threads):
    minivit.set_num_threads(threads)
    seen, lock = [], threading.Lock()

    def fn(sl):
        with lock:
            seen.append((sl.start, sl.stop))
    _threads.parallel_for(fn, n)
    seen.sort()
    assert seen[0][0] == 0 and seen[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))       # contiguous, no gaps or overlap
    assert len(seen) == min(threads, n)
    assert all(b > a for a, b in seen)                               # no empty block


def test_blocks_run_on_several_threads(split_everything):
    minivit.set_num_threads(2)
    names, lock = set(), threading.Lock()

    def fn(sl):
        with lock:
            names.add(threading.current_thread().name)
    _threads.parallel_for(fn, 2)
    assert len(names) == 2


def test_small_work_stays_in_one_block():
    minivit.set_num_threads(2)
    seen = []
    _threads.parallel_for(lambda sl: seen.append(sl), 10, work=_threads._MIN_WORK - 1)
    assert seen == [slice(0, 10)]


def test_nested_call_runs_serially(split_everything):
    minivit.set_num_threads(2)
    inner, lock = [], threading.Lock()

    def outer(sl):
        def fn(s):
            with lock:
                inner.append(s)
        _threads.parallel_for(fn, 4)
    _threads.parallel_for(outer, 2)
    assert sorted((s.start, s.stop) for s in inner) == [(0, 4), (0, 4)]


@pytest.mark.parametrize("bad_block", [0, 1])
def test_exception_in_any_block_is_raised(split_everything, bad_block):
    minivit.set_num_threads(2)
    done, lock = [], threading.Lock()

    def fn(sl):
        if sl.start == bad_block:
            raise KeyError("boom")
        with lock:
            done.append(sl.start)
    with pytest.raises(KeyError, match="boom"):
        _threads.parallel_for(fn, 2)
    assert done == [1 - bad_block]                                   # the other block still ran


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="set_num_threads: n must be a positive int"):
        minivit.set_num_threads(bad)


@pytest.mark.parametrize("env, expected", [("3", 3), ("1", 1)])
def test_env_sets_thread_count(monkeypatch, env, expected):
    monkeypatch.setenv("MINIVIT_NUM_THREADS", env)
    assert _threads._default_threads() == expected


@pytest.mark.parametrize("env", ["0", "-2", "two", "1.5"])
def test_env_bad_thread_count_is_a_clear_error(monkeypatch, env):
    monkeypatch.setenv("MINIVIT_NUM_THREADS", env)
    with pytest.raises(ValueError, match="MINIVIT_NUM_THREADS must be a positive integer"):
        _threads._default_threads()


# ------------------------------------------------------------------ ops: 1 thread == 3 threads, bitwise
def _grads(fn, arrays):
    """Forward value and every input's gradient for a random upstream gradient."""
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    minivit.manual_seed(3)                                           # dropout draws the same mask
    out = fn(*ts)
    g = np.random.default_rng(9).standard_normal(out.shape).astype(out.dtype)
    (out * Tensor(g)).sum().backward()
    return [out.data] + [t.grad for t in ts]


def assert_same_bits(fn, arrays):
    one = run_with_threads(1, lambda: _grads(fn, arrays))
    three = run_with_threads(3, lambda: _grads(fn, arrays))
    for a, b in zip(one, three):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


R = np.random.default_rng(0)


def _rand(*shape, dtype=np.float32):
    return R.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_threads_bitwise(split_everything, dtype):
    q, k, v = (_rand(5, 2, 7, 4, dtype=dtype) for _ in range(3))
    assert_same_bits(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [q, k, v])


def test_attention_threads_bitwise_with_masks_dropout_and_broadcast(split_everything):
    q = _rand(5, 2, 7, 4)
    k, v = _rand(1, 2, 6, 4), _rand(2, 6, 3)                         # broadcast batch dims
    bool_mask = R.random((5, 1, 7, 6)) > 0.3
    bool_mask[0, 0, 2] = False                                       # a fully masked row
    assert_same_bits(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask),
                     [q, k, v])
    assert_same_bits(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.3), [q, k, v])
    bias = _rand(2, 7, 6)                                            # float mask that learns (Swin's bias)
    assert_same_bits(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                     [q, k, v, bias])


def test_attention_without_batch_dims(split_everything):
    q, k, v = _rand(7, 4), _rand(6, 4), _rand(6, 3)
    assert_same_bits(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [q, k, v])


@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm_threads_bitwise(split_everything, affine):
    x = _rand(5, 7, 6)
    w, b = _rand(6), _rand(6)
    if affine == "both":
        assert_same_bits(lambda x, w, b: F.layer_norm(x, 6, w, b), [x, w, b])
    elif affine == "weight":
        assert_same_bits(lambda x, w: F.layer_norm(x, 6, w), [x, w])
    else:
        assert_same_bits(lambda x: F.layer_norm(x, 6), [x])


def test_gelu_threads_bitwise(split_everything, monkeypatch):
    monkeypatch.setattr(_normal, "_CHUNK", 16)                       # 1003 elements: 63 chunks
    x = _rand(17, 59) * 3
    assert_same_bits(lambda x: F.gelu(x), [x])


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_depthwise_conv_threads_bitwise(split_everything, stride, padding, dilation):
    x, w, b = _rand(5, 4, 9, 8), _rand(4, 1, 3, 3), _rand(4)
    assert_same_bits(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation,
                                              groups=4), [x, w, b])


def test_sasa_local_attention_threads_bitwise(split_everything):
    from minivit.models.sasa import local_attention2d
    q, k, v = (_rand(2, 6, 5, 4) for _ in range(3))                 # 3 heads of 2 channels
    rel = _rand(6, 3, 3)
    assert_same_bits(lambda q, k, v, r: local_attention2d(q, k, v, 3, 3, r), [q, k, v, rel])
    assert_same_bits(lambda q, k, v: local_attention2d(q, k, v, 3, 3), [q, k, v])
