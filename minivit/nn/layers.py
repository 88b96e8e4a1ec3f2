"""The standard layers, with ``torch.nn`` names, arguments and default inits."""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from minivit import functional as F
from minivit import init
from minivit.tensor import get_rng

from .module import Module, Parameter, _check_p, _check_x, _shape

__all__ = ["Linear", "Conv2d", "LayerNorm", "BatchNorm1d", "BatchNorm2d", "Dropout", "DropPath", "PatchDropout",
           "GELU", "ReLU", "Tanh", "Sigmoid", "Softmax", "Identity", "Flatten",
           "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Sequential", "ModuleList"]


# ==========================================================================
# Layers with parameters
# ==========================================================================
class Linear(Module):
    """y = x W^T + b, with W of shape (out_features, in_features).

    x (..., in_features) -> y (..., out_features). PyTorch's default init:
    W and b ~ U(-1/sqrt(in_features), 1/sqrt(in_features)) (that is
    ``kaiming_uniform_(W, a=sqrt(5))``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear: in_features and out_features must be positive, "
                             f"got {in_features} and {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(np.zeros((out_features, in_features)))
        self.register_parameter("bias", Parameter(np.zeros(out_features)) if bias else None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"Linear: expected x of shape (..., {self.in_features}), got {_shape(x.shape)}")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D cross-correlation, weight (out_channels, in_channels/groups, kh, kw).

    x (B, C_in, H, W) -> (B, C_out, H', W') with H' = floor((H + 2p - d(k-1) - 1)/s) + 1.
    PyTorch's default init (kaiming_uniform_ with a=sqrt(5)): U(+-1/sqrt(fan_in)),
    fan_in = in_channels/groups * kh * kw, for weight and bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels={in_channels} and out_channels={out_channels} "
                             f"must both be divisible by groups={groups}")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding", allow_zero=True)
        self.dilation = _pair(dilation, "dilation")
        kh, kw = self.kernel_size
        self.weight = Parameter(np.zeros((out_channels, in_channels // groups, kh, kw)))
        self.register_parameter("bias", Parameter(np.zeros(out_channels)) if bias else None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        _check_x("Conv2d", x, 4, {1: self.in_channels}, "(B, {}, H, W)")
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


def _pair(v, name, allow_zero=False):
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2 or any(int(a) != a or a < (0 if allow_zero else 1) for a in t):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} int "
                         f"or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])


class LayerNorm(Module):
    """Normalise over the last ``len(normalized_shape)`` dims with the biased
    variance: y = (x - mean) / sqrt(var + eps) * weight + bias.

    The default eps is PyTorch's 1e-5; timm's ViT family uses 1e-6 (PAPERS.md 0).
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else normalized_shape
        self.normalized_shape = tuple(int(s) for s in shape)
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape))
            self.register_parameter("bias", Parameter(np.zeros(self.normalized_shape)) if bias else None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        k = len(self.normalized_shape)
        if tuple(x.shape[-k:]) != self.normalized_shape or x.ndim < k:
            raise ValueError(f"LayerNorm: expected x of shape (..., "
                             f"{', '.join(map(str, self.normalized_shape))}), got {_shape(x.shape)}")
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class _BatchNorm(Module):
    """Shared code of BatchNorm1d/2d (see BatchNorm2d)."""

    _layout = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True):
        super().__init__()
        self.num_features, self.eps, self.affine = int(num_features), float(eps), bool(affine)
        if momentum is not None:
            _check_p(type(self).__name__, "momentum", momentum)
        self.momentum = momentum
        if affine:
            self.weight = Parameter(np.ones(num_features))
            self.bias = Parameter(np.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def _check(self, x):
        raise NotImplementedError

    def forward(self, x):
        self._check(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training:
            self.num_batches_tracked += 1          # in place on the 0-d int64 buffer
            if self.momentum is None:              # cumulative moving average, as torch
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, momentum, self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (B, H, W) for each of C channels; x (B, C, H, W).

    Training: normalise with the batch mean and the **biased** batch
    variance, and update ``running_mean = (1-m) running_mean + m mean``,
    ``running_var = (1-m) running_var + m var_unbiased`` (m = momentum, 0.1;
    ``momentum=None`` gives the cumulative average), ``num_batches_tracked += 1``.
    Eval: normalise with the running statistics. All three buffers are in the
    state dict, as in PyTorch.
    """

    def _check(self, x):
        _check_x("BatchNorm2d", x, 4, {1: self.num_features}, "(B, {}, H, W)")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of x (B, C) or (B, C, L) per channel (see BatchNorm2d)."""

    def _check(self, x):
        if not (x.ndim in (2, 3) and x.shape[1] == self.num_features):
            raise ValueError(f"BatchNorm1d: expected x of shape (B, {self.num_features}) or "
                             f"(B, {self.num_features}, L), got {_shape(x.shape)}")


# ==========================================================================
# Layers without parameters
# ==========================================================================
class Dropout(Module):
    """Zero each entry with probability p and scale the rest by 1/(1-p) (training only)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        _check_p("Dropout", "p", p)
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class DropPath(Module):
    """Stochastic depth: drop a whole residual branch per sample (training only).

    ``x * bernoulli(1 - drop_prob) / (1 - drop_prob)``, one draw per sample.
    Models set the rate per block with ``linspace(0, drop_path_rate, depth)``.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        _check_p("DropPath", "drop_prob", drop_prob)
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        return F.drop_path(x, self.drop_prob, self.training)

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class PatchDropout(Module):
    """Keep a random subset of the patch tokens in training (timm ``PatchDropout``).

    PatchDropout (Liu et al., 2022, "PatchDropout: Economizing Vision
    Transformers Using Patch Dropout"): each sample keeps
    ``max(1, int(N * (1 - prob)))`` of its N patch tokens, chosen at random,
    after the position embedding was added, so every kept token still knows
    where it came from. The ``num_prefix_tokens`` leading tokens (the class
    token) are always kept. (B, P + N, D) -> (B, P + keep, D); an identity in
    eval mode. Fewer tokens make a training step cheaper (the blocks' cost
    is linear in the tokens, attention's quadratic). The kept tokens come in
    random order, as in timm (``ordered=False``); a transformer without
    position-dependent ops after this point does not care.
    """

    def __init__(self, prob: float = 0.5, num_prefix_tokens: int = 1):
        super().__init__()
        if not 0 <= prob < 1:
            raise ValueError(f"PatchDropout: prob must be in [0, 1), got {prob}")
        self.prob, self.num_prefix_tokens = float(prob), int(num_prefix_tokens)

    def forward(self, x):
        if not self.training or self.prob == 0.0:
            return x
        _check_x("PatchDropout", x, 3, {}, "(B, tokens, D)")
        B, T, _ = x.shape
        P = self.num_prefix_tokens
        keep = max(1, int((T - P) * (1.0 - self.prob)))
        order = np.argsort(get_rng().random((B, T - P), dtype=np.float32), axis=1)[:, :keep]
        rows = np.concatenate([np.broadcast_to(np.arange(P), (B, P)), order + P], axis=1)
        return x[np.arange(B)[:, None], rows]                      # (B, P + keep, D)

    def extra_repr(self):
        return f"prob={self.prob}"


class GELU(Module):
    """GELU(x) = x Phi(x) (exact, ``approximate="none"``, timm's default) or the
    tanh approximation (``approximate="tanh"``, JAX/Flax's default)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return "" if self.approximate == "none" else f"approximate={self.approximate!r}"


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x):
        return F.relu(x)


class Tanh(Module):
    """tanh(x)."""

    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, x):
        return F.sigmoid(x)


class Softmax(Module):
    """Softmax over ``dim``."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class Identity(Module):
    """Returns its input (a placeholder, e.g. ``norm`` in timm's Mlp); ignores constructor args."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Flatten(Module):
    """Merge dims ``start_dim..end_dim`` (default: everything but the batch dim)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class _Pool2d(Module):
    """Shared constructor of MaxPool2d/AvgPool2d; ``stride`` defaults to ``kernel_size``."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max over k x k windows (padding counts as -inf); x (B, C, H, W)."""

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """Mean over k x k windows (zero padding is counted, as torch's default); x (B, C, H, W)."""

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(Module):
    """Average-pool to a fixed ``output_size`` (1 gives global average pooling)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


# ==========================================================================
# Containers
# ==========================================================================
class Sequential(Module):
    """Apply modules in order; children are named "0", "1", ... (or by an OrderedDict's keys)."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def _index(self, idx: int) -> str:
        n = len(self._modules)
        if not -n <= idx < n:
            raise IndexError(f"{type(self).__name__} index {idx} is out of range (length {n})")
        return list(self._modules)[idx % n]

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return type(self)(OrderedDict(list(self._modules.items())[idx]))
        return self._modules[self._index(idx)]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module) -> "Sequential":
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(Module):
    """A list of modules, registered as children "0", "1", ... (e.g. ``blocks``).

    It has no forward: loop over it in the parent's forward.
    """

    def __init__(self, modules=None):
        super().__init__()
        for m in modules or ():
            self.append(m)

    def _index(self, idx: int) -> str:
        n = len(self._modules)
        if not -n <= idx < n:
            raise IndexError(f"ModuleList index {idx} is out of range (length {n})")
        return str(idx % n)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return ModuleList(list(self._modules.values())[idx])
        return self._modules[self._index(idx)]

    def __setitem__(self, idx: int, module) -> None:
        self.add_module(self._index(idx), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module) -> "ModuleList":
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules) -> "ModuleList":
        for m in modules:
            self.append(m)
        return self
