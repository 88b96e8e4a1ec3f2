"""Parameter initialisers (``torch.nn.init`` names and semantics).

Every function fills ``tensor.data`` **in place** and returns the tensor, so
it can be used on a Parameter that an optimizer already holds. Values are
drawn from :func:`minivit.get_rng` at call time, so ``minivit.manual_seed(s)``
makes every initialisation repeatable. The tensor keeps its dtype: values are
drawn in float64 and cast on assignment.

Fan-in and fan-out follow PyTorch (:func:`_calculate_fan_in_and_fan_out`):
for a weight of shape ``(out, in, *kernel)``

    fan_in  = in  * prod(kernel)        fan_out = out * prod(kernel)

so a Linear weight ``(out, in)`` has fan_in = in, and a Conv2d weight
``(out, in/groups, kh, kw)`` has fan_in = in/groups * kh * kw.

Which init a paper uses (PAPERS.md section 0): timm's ViT family uses
``trunc_normal_(w, std=.02)`` for Linear weights, zeros for biases, ones/zeros
for LayerNorm; convolutions keep PyTorch's default, which is
``kaiming_uniform_(w, a=math.sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""
from __future__ import annotations

import math

import numpy as np

from minivit.tensor import Tensor, get_rng

__all__ = ["calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_",
           "ones_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]


def _array(tensor, name: str) -> np.ndarray:
    """The ndarray to fill: a Tensor's ``.data`` (or an ndarray itself)."""
    arr = tensor.data if isinstance(tensor, Tensor) else tensor
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a Tensor (or ndarray), got {type(tensor).__name__}")
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: can only initialise floating-point tensors, got dtype {arr.dtype}")
    return arr


def _fill(tensor, values, name: str):
    arr = _array(tensor, name)
    arr[...] = values          # in place; casts float64 draws to the tensor's dtype
    return tensor


def _calculate_fan_in_and_fan_out(tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel), as in PyTorch."""
    shape = tensor.shape
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out cannot be computed for a tensor with fewer than 2 "
                         f"dimensions (got shape {tuple(shape)}); use normal_/uniform_ for biases")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fan(tensor, mode: str, name: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"{name}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The recommended gain for a nonlinearity (``torch.nn.init.calculate_gain``).

    linear/conv/sigmoid: 1;  tanh: 5/3;  relu: sqrt(2);
    leaky_relu with slope a (default 0.01): sqrt(2 / (1 + a^2));  selu: 3/4.
    """
    linear_fns = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                  "conv_transpose2d", "conv_transpose3d", "sigmoid")
    if nonlinearity in linear_fns:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"calculate_gain: negative_slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; expected one of "
                     f"{', '.join(linear_fns + ('tanh', 'relu', 'leaky_relu', 'selu'))}")


# ------------------------------------------------------------------ simple fills
def uniform_(tensor, a: float = 0.0, b: float = 1.0):
    """Fill with U(a, b)."""
    if not a <= b:
        raise ValueError(f"uniform_: need a <= b, got a={a}, b={b}")
    arr = _array(tensor, "uniform_")
    return _fill(tensor, get_rng().uniform(a, b, size=arr.shape), "uniform_")


def normal_(tensor, mean: float = 0.0, std: float = 1.0):
    """Fill with N(mean, std^2)."""
    if std < 0:
        raise ValueError(f"normal_: std must be >= 0, got {std}")
    arr = _array(tensor, "normal_")
    return _fill(tensor, get_rng().normal(mean, std, size=arr.shape), "normal_")


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    """Fill with N(mean, std^2) truncated to the interval [a, b].

    As in timm and ``torch.nn.init.trunc_normal_``, **a and b are absolute
    values, not multiples of std**: timm's ``trunc_normal_(w, std=.02)``
    cuts at +-2 = +-100 std, so it is in effect an untruncated N(0, .02^2).
    (timm's ``trunc_normal_tf_`` is the variant that cuts at +-2 std.)

    Sampling is by rejection: draw normals, and redraw those outside [a, b]
    until none is left; the result has exactly the truncated distribution.
    Each round draws ``remaining / mass`` values, where ``mass`` is the
    probability of [a, b] under the normal, so a few rounds suffice.
    """
    if std < 0:
        raise ValueError(f"trunc_normal_: std must be >= 0, got {std}")
    if not a < b:
        raise ValueError(f"trunc_normal_: need a < b (absolute bounds), got a={a}, b={b}")
    arr = _array(tensor, "trunc_normal_")
    if std == 0:
        return _fill(tensor, min(max(mean, a), b), "trunc_normal_")
    cdf = lambda v: 0.5 * (1.0 + math.erf((v - mean) / (std * math.sqrt(2.0))))  # noqa: E731
    mass = cdf(b) - cdf(a)
    if mass < 1e-3:
        raise ValueError(f"trunc_normal_: the interval [a, b] = [{a}, {b}] holds only {mass:.2g} of "
                         f"the probability of N({mean}, {std}^2); rejection sampling would be too "
                         f"slow. Move mean inside [a, b] or widen the interval (a and b are absolute).")
    rng = get_rng()
    out = np.empty(arr.size, dtype=np.float64)
    todo = np.arange(arr.size)                      # flat indices still to fill
    while todo.size:
        n = int(todo.size / mass * 1.1) + 16        # enough draws to keep about todo.size
        draw = rng.normal(mean, std, size=n)
        draw = draw[(draw >= a) & (draw <= b)][:todo.size]
        out[todo[:draw.size]] = draw
        todo = todo[draw.size:]
    return _fill(tensor, out.reshape(arr.shape), "trunc_normal_")


def constant_(tensor, val: float):
    """Fill with ``val``."""
    return _fill(tensor, val, "constant_")


def zeros_(tensor):
    """Fill with 0."""
    return _fill(tensor, 0.0, "zeros_")


def ones_(tensor):
    """Fill with 1."""
    return _fill(tensor, 1.0, "ones_")


# ------------------------------------------------------------------ fan-scaled inits
def xavier_uniform_(tensor, gain: float = 1.0):
    """Glorot/Xavier uniform: U(-bound, bound) with
    bound = gain * sqrt(6 / (fan_in + fan_out))  (std = gain * sqrt(2 / (fan_in + fan_out)))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(_array(tensor, "xavier_uniform_"))
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor, gain: float = 1.0):
    """Glorot/Xavier normal: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(_array(tensor, "xavier_normal_"))
    std = gain * math.sqrt(2.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return normal_(tensor, 0.0, std)


def kaiming_uniform_(tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """He/Kaiming uniform: U(-bound, bound) with std = gain / sqrt(fan),
    bound = sqrt(3) * std, gain = calculate_gain(nonlinearity, a).

    PyTorch's default for Linear and Conv2d weights is ``a=sqrt(5)``: gain =
    sqrt(2 / 6), so bound = 1 / sqrt(fan_in).
    """
    arr = _array(tensor, "kaiming_uniform_")
    if arr.size == 0:           # as torch: nothing to fill
        return tensor
    fan = _fan(arr, mode, "kaiming_uniform_")
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """He/Kaiming normal: N(0, std^2) with std = gain / sqrt(fan),
    gain = calculate_gain(nonlinearity, a)."""
    arr = _array(tensor, "kaiming_normal_")
    if arr.size == 0:
        return tensor
    fan = _fan(arr, mode, "kaiming_normal_")
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return normal_(tensor, 0.0, std)


# ------------------------------------------------------------------ whole-model inits
def transformer_linears_(module, std: float = 0.02, layer_norms: bool = True):
    """The init every ViT-family reference code applies to a whole model:
    each ``nn.Linear`` weight trunc-normal(0, ``std``) with a zero bias and, with
    ``layer_norms``, each ``nn.LayerNorm`` weight 1 and bias 0. Visits modules in
    ``module.modules()`` order, so the random draws (and results) are the same as
    the loop each model file used to write out. Returns ``module``."""
    from minivit import nn                           # here: minivit.nn imports this module
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                zeros_(m.bias)
        elif layer_norms and isinstance(m, nn.LayerNorm) and m.weight is not None:
            ones_(m.weight)
            zeros_(m.bias)
    return module
