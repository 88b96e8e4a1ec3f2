"""minivit.init: statistics of each initialiser, absolute truncation bounds,
determinism under manual_seed, dtype preservation, fan computation."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minivit
from minivit import init, nn
from minivit.tensor import Tensor

BIG = (400, 500)  # 200,000 draws: sample mean/std within ~1% of the truth


def big(dtype=np.float32, shape=BIG):
    return nn.Parameter(np.zeros(shape), dtype=dtype)


# ------------------------------------------------------------------ simple fills
def test_normal_statistics():
    t = init.normal_(big(), mean=1.5, std=0.3)
    assert abs(t.data.mean() - 1.5) < 0.01
    assert abs(t.data.std() - 0.3) < 0.01 * 0.3 * 3


def test_uniform_statistics_and_bounds():
    t = init.uniform_(big(), -2.0, 3.0)
    assert t.data.min() >= -2.0 and t.data.max() <= 3.0
    assert abs(t.data.mean() - 0.5) < 0.02
    assert abs(t.data.std() - 5 / math.sqrt(12)) < 0.01


@pytest.mark.parametrize("fn,val", [(init.zeros_, 0.0), (init.ones_, 1.0),
                                    (lambda t: init.constant_(t, -0.25), -0.25)])
def test_constant_fills(fn, val):
    t = fn(big(shape=(3, 4)))
    assert np.all(t.data == val)


# ------------------------------------------------------------------ trunc_normal_
def test_trunc_normal_bounds_are_absolute():
    # timm's trunc_normal_(std=.02) cuts at +-2 (= 100 std): nothing is cut in practice
    t = init.trunc_normal_(big(), std=0.02)
    assert abs(t.data.std() - 0.02) < 0.0005
    assert np.abs(t.data).max() > 0.06      # values beyond 3 std exist: bounds are not +-2 std
    # with std=1 the bounds +-2 do cut, at the absolute values
    t = init.trunc_normal_(big(), mean=0.0, std=1.0, a=-2.0, b=2.0)
    assert t.data.min() >= -2.0 and t.data.max() <= 2.0
    assert t.data.max() > 1.99 and t.data.min() < -1.99
    # std of N(0,1) truncated to [-2, 2]: 0.8796
    assert abs(t.data.std() - 0.8796) < 0.01


def test_trunc_normal_asymmetric_interval_statistics():
    # N(0, 1) truncated to [0, 1]: mean = (phi(0) - phi(1)) / (Phi(1) - Phi(0))
    t = init.trunc_normal_(big(np.float64), mean=0.0, std=1.0, a=0.0, b=1.0)
    assert t.data.min() >= 0.0 and t.data.max() <= 1.0
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))         # noqa: E731
    mean = (phi(0) - phi(1)) / (Phi(1) - Phi(0))
    assert abs(t.data.mean() - mean) < 0.005


@given(mean=st.floats(-3, 3), std=st.floats(0.05, 3), lo=st.floats(-4, 4), width=st.floats(0.2, 5))
def test_trunc_normal_always_within_bounds(mean, std, lo, width):
    a, b = lo, lo + width
    Phi = lambda z: 0.5 * (1 + math.erf((z - mean) / (std * math.sqrt(2))))  # noqa: E731
    t = nn.Parameter(np.zeros(2000), dtype=np.float64)
    if Phi(b) - Phi(a) < 1e-3:
        with pytest.raises(ValueError, match="trunc_normal_"):
            init.trunc_normal_(t, mean, std, a, b)
        return
    init.trunc_normal_(t, mean, std, a, b)
    assert t.data.min() >= a and t.data.max() <= b
    assert np.isfinite(t.data).all()


def test_trunc_normal_bad_arguments():
    with pytest.raises(ValueError, match="a < b"):
        init.trunc_normal_(big(shape=(3,)), a=1.0, b=-1.0)
    with pytest.raises(ValueError, match="std"):
        init.trunc_normal_(big(shape=(3,)), std=-1.0)


# ------------------------------------------------------------------ fan-scaled inits
def test_fan_in_and_fan_out_like_torch():
    assert init._calculate_fan_in_and_fan_out(np.zeros((8, 3))) == (3, 8)            # Linear (out, in)
    assert init._calculate_fan_in_and_fan_out(np.zeros((16, 4, 3, 5))) == (60, 240)  # Conv (out, in, kh, kw)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init._calculate_fan_in_and_fan_out(np.zeros(5))


def test_xavier_uniform_bound_and_std():
    t = init.xavier_uniform_(big(shape=(300, 700)), gain=2.0)
    bound = 2.0 * math.sqrt(6 / (300 + 700))
    assert t.data.max() <= bound and t.data.min() >= -bound
    assert abs(t.data.std() - bound / math.sqrt(3)) < 0.01 * bound
    t = init.xavier_normal_(big(shape=(300, 700)))
    assert abs(t.data.std() - math.sqrt(2 / 1000)) < 0.01 * math.sqrt(2 / 1000)


@pytest.mark.parametrize("mode,fan", [("fan_in", 700 * 9), ("fan_out", 30 * 9)])
def test_kaiming_normal_std(mode, fan):
    t = init.kaiming_normal_(big(shape=(30, 700, 3, 3)), mode=mode, nonlinearity="relu")
    std = math.sqrt(2.0) / math.sqrt(fan)
    assert abs(t.data.std() - std) < 0.01 * std
    assert abs(t.data.mean()) < 0.01 * std


def test_kaiming_uniform_torch_default_is_one_over_sqrt_fan_in():
    t = init.kaiming_uniform_(big(shape=(256, 1000)), a=math.sqrt(5))
    bound = 1 / math.sqrt(1000)
    assert t.data.max() <= bound and t.data.min() >= -bound
    assert t.data.max() > 0.99 * bound
    assert abs(t.data.std() - bound / math.sqrt(3)) < 0.01 * bound


def test_calculate_gain():
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("linear") == 1.0
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        init.calculate_gain("swish")


def test_kaiming_bad_mode():
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out'"):
        init.kaiming_normal_(big(shape=(3, 3)), mode="fan_avg")


# ------------------------------------------------------------------ determinism, dtype, in place
ALL = [lambda t: init.normal_(t), lambda t: init.uniform_(t), lambda t: init.trunc_normal_(t, std=.02),
       lambda t: init.xavier_uniform_(t), lambda t: init.xavier_normal_(t),
       lambda t: init.kaiming_normal_(t), lambda t: init.kaiming_uniform_(t, a=math.sqrt(5))]


@pytest.mark.parametrize("fn", ALL)
def test_deterministic_under_manual_seed(fn):
    minivit.manual_seed(123)
    a = fn(big(shape=(5, 7))).data.copy()
    minivit.manual_seed(123)
    b = fn(big(shape=(5, 7))).data.copy()
    c = fn(big(shape=(5, 7))).data.copy()
    assert np.array_equal(a, b)
    assert not np.array_equal(b, c)


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_kept_and_filled_in_place(fn, dtype):
    t = big(dtype, shape=(6, 5))
    arr = t.data
    out = fn(t)
    assert out is t and t.data is arr and t.data.dtype == dtype
    assert np.any(arr != 0)


def test_works_on_plain_tensor_and_ndarray_rejects_integers():
    t = Tensor(np.zeros((4, 4), np.float32))
    init.ones_(t)
    assert np.all(t.data == 1)
    with pytest.raises(TypeError, match="floating-point"):
        init.normal_(Tensor(np.zeros(3, np.int64)))


def test_linear_and_conv_default_init_match_torch_bounds():
    lin = nn.Linear(400, 300)
    b = 1 / math.sqrt(400)
    assert np.abs(lin.weight.data).max() <= b and np.abs(lin.bias.data).max() <= b
    assert np.abs(lin.weight.data).max() > 0.99 * b
    conv = nn.Conv2d(8, 16, 3, groups=2)
    b = 1 / math.sqrt(8 // 2 * 9)
    assert np.abs(conv.weight.data).max() <= b and np.abs(conv.bias.data).max() <= b
    assert lin.weight.dtype == np.float32 and conv.weight.dtype == np.float32


def test_transformer_linears_matches_the_explicit_loop_and_resets_layer_norms():
    import minivit
    from minivit import init, nn
    net = nn.Sequential(nn.Linear(8, 300), nn.LayerNorm(300), nn.Linear(300, 4, bias=False))
    net[1].weight.data[:] = 3.0
    minivit.manual_seed(1)
    init.transformer_linears_(net)
    ref = nn.Sequential(nn.Linear(8, 300), nn.LayerNorm(300), nn.Linear(300, 4, bias=False))
    minivit.manual_seed(1)
    for lin in (ref[0], ref[2]):                       # the loop each model file used to write
        init.trunc_normal_(lin.weight, std=0.02)
    np.testing.assert_array_equal(net[0].weight.data, ref[0].weight.data)
    np.testing.assert_array_equal(net[2].weight.data, ref[2].weight.data)
    assert abs(float(net[0].weight.data.std()) - 0.02) < 0.002 and not np.any(net[0].bias.data)
    assert np.all(net[1].weight.data == 1.0) and not np.any(net[1].bias.data)
