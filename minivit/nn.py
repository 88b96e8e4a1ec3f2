"""Modules: ``Parameter``, ``Module`` and the standard layers (``torch.nn`` names).

A :class:`Module` finds its Parameters and sub-Modules by looking at what
you assign to ``self`` (as PyTorch does)::

    class TwoLayer(nn.Module):
        def __init__(self):
            super().__init__()                  # must come first
            self.fc1 = nn.Linear(4, 8)          # registered as a child "fc1"
            self.fc2 = nn.Linear(8, 2)
            self.scale = nn.Parameter(np.ones(2))
            self.register_buffer("calls", np.zeros((), np.int64))

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x))) * self.scale

Registration follows assignment order, so ``named_parameters()`` yields
``fc1.weight, fc1.bias, fc2.weight, fc2.bias, scale`` and ``state_dict()``
has those keys (plus persistent buffers, here ``calls``). Parameter names
follow timm, so a timm checkpoint converted to NumPy loads 1:1.

Three kinds of state:

- **Parameters** (:class:`Parameter`, a Tensor with ``requires_grad=True``)
  are trained. ``num_params()`` counts them, frozen ones included.
- **Buffers** (``register_buffer(name, ndarray, persistent=True)``) are
  plain ndarrays that are not trained but belong to the model: BatchNorm's
  running statistics, Swin's relative position index. Persistent buffers
  are saved in ``state_dict()``; ``num_params()`` never counts buffers.
- Everything else (ints, floats, functions) is an ordinary attribute.

The two blocks that every transformer paper reuses, :class:`Attention` and
:class:`Mlp`, live here with timm's names (``qkv``, ``proj``, ``fc1``,
``fc2``).
"""
from __future__ import annotations

import math
from collections import OrderedDict, namedtuple

import numpy as np

from minivit import functional as F
from minivit import init
from minivit.tensor import Tensor

__all__ = ["Parameter", "Module", "StateDictError", "IncompatibleKeys",
           "Linear", "Conv2d", "LayerNorm", "BatchNorm1d", "BatchNorm2d", "Dropout", "DropPath",
           "GELU", "ReLU", "Tanh", "Sigmoid", "Softmax", "Identity", "Flatten",
           "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Sequential", "ModuleList",
           "Attention", "Mlp"]


# ==========================================================================
# Parameter
# ==========================================================================
class Parameter(Tensor):
    """A Tensor that is a trainable part of a Module (``requires_grad=True``).

    Parameters are float32 unless ``dtype`` says otherwise: NumPy's default
    is float64, and one float64 parameter would silently turn a whole float32
    model's activations into float64. Use ``model.to(np.float64)`` to convert
    a finished model (e.g. for a gradcheck).
    """

    __slots__ = ()  # Tensor uses __slots__; a Parameter adds no fields

    def __init__(self, data, requires_grad: bool = True, dtype=np.float32):
        if isinstance(data, Tensor):
            data = data.data
        arr = np.asarray(data)
        if dtype is not None:
            arr = arr.astype(dtype, copy=False)
        super().__init__(arr, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


# ==========================================================================
# Module
# ==========================================================================
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = "What ``load_state_dict(..., strict=False)`` could not match, by name."


class StateDictError(KeyError, ValueError):
    """Raised by ``load_state_dict``: lists missing, unexpected and mis-shaped keys.

    It is both a ``KeyError`` (missing/unexpected names) and a ``ValueError``
    (shape mismatches), so either ``except`` catches it. The lists are kept
    as attributes ``missing_keys``, ``unexpected_keys`` and
    ``mismatched_keys`` (tuples ``(name, checkpoint_shape, model_shape)``).
    """

    def __init__(self, message, missing_keys=(), unexpected_keys=(), mismatched_keys=()):
        super().__init__(message)
        self.message = message
        self.missing_keys = list(missing_keys)
        self.unexpected_keys = list(unexpected_keys)
        self.mismatched_keys = list(mismatched_keys)

    def __str__(self):  # KeyError would show repr(message), quotes and escaped newlines
        return self.message


def _shape(s) -> str:
    return "(" + ", ".join(str(int(v)) for v in s) + ("," if len(s) == 1 else "") + ")"


class Module:
    """Base class of every layer and model. Subclasses define ``forward``.

    Attributes: ``training`` (bool; ``train()``/``eval()`` set it recursively).
    Parameters, buffers and sub-modules are kept in three ordered dicts,
    ``_parameters``, ``_buffers`` and ``_modules``, and read back through
    attribute access (``self.fc1``), as in PyTorch.
    """

    # -------------------------------------------------- registration
    def __init__(self):
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent_buffers"] = set()
        d["_modules"] = OrderedDict()

    def _registries(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"cannot assign {name!r} before Module.__init__() is called: put "
                f"super().__init__() at the top of {type(self).__name__}.__init__")
        return self._parameters, self._buffers, self._modules

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, (Parameter, Module)):
            params, buffers, modules = self._registries(name, value)
            for reg in (params, buffers, modules):
                reg.pop(name, None)
            self.__dict__.pop(name, None)
            self._non_persistent_buffers.discard(name)
            (params if isinstance(value, Parameter) else modules)[name] = value
            return
        params = self.__dict__.get("_parameters")
        if params is not None:
            if name in params:
                if value is not None:
                    raise TypeError(f"cannot assign a {type(value).__name__} to parameter {name!r} of "
                                    f"{type(self).__name__}: wrap it in nn.Parameter, or set "
                                    f"{name}.data to change its value")
                params[name] = None
                return
            if name in self._modules:
                if value is not None:
                    raise TypeError(f"cannot assign a {type(value).__name__} to sub-module {name!r} of "
                                    f"{type(self).__name__}: expected a Module or None")
                self._modules[name] = None
                return
            if name in self._buffers:
                self._buffers[name] = self._check_buffer(name, value)
                return
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        # Only called when normal lookup fails: look in the three registries.
        d = self.__dict__
        for reg in ("_parameters", "_buffers", "_modules"):
            if reg in d and name in d[reg]:
                return d[reg][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for reg in (self._parameters, self._buffers, self._modules):
            if name in reg:
                del reg[name]
                self._non_persistent_buffers.discard(name)
                return
        object.__delattr__(self, name)

    @staticmethod
    def _check_buffer(name, array):
        if array is None:
            return None
        if isinstance(array, Tensor):
            raise TypeError(f"buffer {name!r}: buffers are plain ndarrays, got a Tensor "
                            f"(pass tensor.data, or use nn.Parameter if it should be trained)")
        return np.asarray(array)

    def register_buffer(self, name: str, array, persistent: bool = True) -> None:
        """Add a non-trained ndarray (running statistics, index tables ...).

        Persistent buffers appear in ``state_dict()``; non-persistent ones
        (e.g. tables recomputed from the config) do not. Neither is counted
        by ``num_params()`` or returned by ``parameters()``.
        """
        if "." in name or not name:
            raise KeyError(f"buffer name must be a non-empty string without '.', got {name!r}")
        params, buffers, modules = self._registries(name, array)
        if name in params or name in modules:
            raise KeyError(f"register_buffer: {name!r} is already a parameter or sub-module")
        self.__dict__.pop(name, None)
        buffers[name] = self._check_buffer(name, array)
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def register_parameter(self, name: str, param) -> None:
        """Add a Parameter (or None, e.g. ``bias=False``) under ``name``."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None, "
                            f"got {type(param).__name__}")
        params, buffers, modules = self._registries(name, param)
        if name in buffers or name in modules:
            raise KeyError(f"register_parameter: {name!r} is already a buffer or sub-module")
        self.__dict__.pop(name, None)
        params[name] = param

    def add_module(self, name: str, module) -> None:
        """Add a sub-module (or None) under ``name``."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module or None, got {type(module).__name__}")
        params, buffers, modules = self._registries(name, module)
        if name in params or name in buffers:
            raise KeyError(f"add_module: {name!r} is already a parameter or buffer")
        self.__dict__.pop(name, None)
        modules[name] = module

    # -------------------------------------------------- forward
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -------------------------------------------------- traversal
    def named_modules(self, memo=None, prefix: str = ""):
        """Yield ``(dotted_name, module)`` for self ("") and every descendant, each once."""
        if memo is None:
            memo = set()
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        """Yield ``(name, module)`` for the direct sub-modules."""
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, get, recurse: bool):
        seen = set()
        mods = self.named_modules() if recurse else [("", self)]
        for mprefix, m in mods:
            for name, v in get(m):
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))   # a shared (tied) parameter is listed once, under its first name
                yield (f"{mprefix}.{name}" if mprefix else name), v

    def named_parameters(self, recurse: bool = True):
        """Yield ``(dotted_name, Parameter)`` in registration order."""
        return self._named_members(lambda m: m._parameters.items(), recurse)

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse):
            yield p

    def named_buffers(self, recurse: bool = True):
        """Yield ``(dotted_name, ndarray)`` for every buffer (persistent or not)."""
        return self._named_members(lambda m: m._buffers.items(), recurse)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse):
            yield b

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameter entries (frozen ones included unless
        ``trainable_only``); buffers are never counted. This is how the
        published parameter counts are made."""
        return int(sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only))

    # -------------------------------------------------- state dict
    def _state_items(self):
        """(name, array) of every parameter and persistent buffer; the arrays themselves."""
        out = OrderedDict()
        for mprefix, m in self.named_modules():
            pre = f"{mprefix}." if mprefix else ""
            for name, p in m._parameters.items():
                if p is not None:
                    out.setdefault(pre + name, p.data)
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent_buffers:
                    out.setdefault(pre + name, b)
        return out

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """``{dotted.name: ndarray}`` of parameters and persistent buffers.

        The arrays are copies: training on after saving does not change them.
        """
        return OrderedDict((k, v.copy()) for k, v in self._state_items().items())

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays from ``state_dict`` into this module's parameters and buffers.

        Everything is checked before anything is copied. Shape mismatches are
        always an error. With ``strict=True`` (default) missing and unexpected
        keys are errors too; all three lists are reported by name in one
        :class:`StateDictError`. With ``strict=False`` the matching keys are
        loaded and ``IncompatibleKeys(missing_keys, unexpected_keys)`` is
        returned. Values are cast to the dtype the module already has
        (float64 checkpoint -> float32 model stays float32).
        """
        own = self._state_items()
        given = {k: (v.data if isinstance(v, Tensor) else np.asarray(v)) for k, v in state_dict.items()}
        missing = [k for k in own if k not in given]
        unexpected = [k for k in given if k not in own]
        mismatched = [(k, given[k].shape, own[k].shape) for k in own
                      if k in given and given[k].shape != own[k].shape]
        if mismatched or (strict and (missing or unexpected)):
            lines = [f"Error(s) in loading state_dict for {type(self).__name__}:"]
            if missing and strict:
                lines.append(f"  missing keys ({len(missing)}): " + ", ".join(repr(k) for k in missing))
            if unexpected and strict:
                lines.append(f"  unexpected keys ({len(unexpected)}): "
                             + ", ".join(repr(k) for k in unexpected))
            if mismatched:
                lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(
                    f"{k!r}: checkpoint {_shape(a)} vs model {_shape(b)}" for k, a, b in mismatched))
            raise StateDictError("\n".join(lines), missing if strict else (),
                                 unexpected if strict else (), mismatched)
        for k, target in own.items():
            if k in given:
                np.copyto(target, given[k], casting="unsafe")
        return IncompatibleKeys(missing, unexpected)

    # -------------------------------------------------- modes, grads, dtype
    def train(self, mode: bool = True) -> "Module":
        """Set training mode (dropout active, BatchNorm uses batch statistics) recursively."""
        for m in self.modules():
            m.__dict__["training"] = bool(mode)
        return self

    def eval(self) -> "Module":
        """``train(False)``: dropout off, BatchNorm uses running statistics."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze every parameter (e.g. a distillation teacher)."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None (the next backward starts afresh)."""
        for p in self.parameters():
            p.grad = None

    def to(self, dtype) -> "Module":
        """Convert parameters (and their grads) and floating-point buffers to
        ``dtype``, e.g. ``model.to(np.float64)`` before a gradcheck. Integer
        buffers (indices, ``num_batches_tracked``) are left alone.

        The Parameter objects stay the same (only their ``.data`` changes);
        create the optimizer after converting, as its state has the old dtype.
        """
        dt = np.dtype(dtype)
        if dt.kind != "f":
            raise TypeError(f"to(): expected a floating-point dtype, got {dt}")
        for p in self.parameters():
            p.data = p.data.astype(dt, copy=False)
            if p.grad is not None:
                p.grad = p.grad.astype(dt, copy=False)
        for m in self.modules():
            for name, b in m._buffers.items():
                if b is not None and b.dtype.kind == "f":
                    m._buffers[name] = b.astype(dt, copy=False)
        return self

    def apply(self, fn) -> "Module":
        """Call ``fn(module)`` on every sub-module (children first) and on self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # -------------------------------------------------- repr
    def extra_repr(self) -> str:
        """One-line summary of the configuration, shown in the repr."""
        return ""

    def __repr__(self) -> str:
        # torch's layout: the extra_repr line(s), then one "(name): child" line per child
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        if not extra:
            # a container with its own parameters (cls_token, pos_embed ...): show their shapes
            for name, p in self._parameters.items():
                if p is not None:
                    lines.append(f"({name}): Parameter{_shape(p.shape)}")
            for name, b in self._buffers.items():
                if b is not None:
                    lines.append(f"({name}): buffer{_shape(b.shape)} {b.dtype}")
        for name, m in self._modules.items():
            lines.append(f"({name}): " + repr(m).replace("\n", "\n  "))
        if not self._modules and len(lines) <= 1 and extra:
            return f"{type(self).__name__}({extra})"
        if not lines:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _check_x(name: str, x, ndim: int, dims: dict, layout: str):
    """Raise a clear error if ``x`` is not an ndim-array with the given sizes.

    ``dims`` maps an axis to its required size; ``layout`` is e.g. "(B, N, {})".
    """
    shape = tuple(x.shape) if hasattr(x, "shape") else None
    ok = shape is not None and len(shape) == ndim and all(shape[a] == s for a, s in dims.items())
    if not ok:
        expected = layout.format(*dims.values())
        got = _shape(shape) if shape is not None else type(x).__name__
        raise ValueError(f"{name}: expected x of shape {expected}, got {got}")


def _check_p(name: str, arg: str, value, lo=0.0, hi=1.0):
    if not lo <= value <= hi:
        raise ValueError(f"{name}: {arg} must be in [{lo}, {hi}], got {value}")


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


# ==========================================================================
# The two blocks every transformer paper reuses (timm names)
# ==========================================================================
class Attention(Module):
    """Multi-head self-attention (timm's ``Attention``).

    For x (B, N, C) with H heads of size d = C / H:

        [Q, K, V] = x W_qkv^T + b_qkv             W_qkv: (3C, C)
        head_h    = softmax(scale * Q_h K_h^T + mask) V_h     scale = d^-1/2
        out       = concat_h(head_h) W_proj^T + b_proj

    The output channels of ``qkv`` are ordered [Q (all heads); K; V], and
    head-major inside each block (channel h*d + i), as in timm, so timm's
    ``qkv.weight`` (3C, C) loads 1:1.

    ``forward(x, attn_mask=None, return_attention=False)``: ``attn_mask`` is
    passed to ``F.scaled_dot_product_attention`` (boolean: True = may attend;
    float: added to the logits), broadcastable to (B, H, N, N).
    ``return_attention=True`` also returns the attention weights, an ndarray
    (B, H, N, N), for the chapters' attention maps.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, scale=None):
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"Attention: dim={dim} is not divisible by num_heads={num_heads}")
        _check_p("Attention", "attn_drop", attn_drop)
        self.dim, self.num_heads = int(dim), int(num_heads)
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5 if scale is None else float(scale)
        self.attn_drop = float(attn_drop)      # a probability: dropout happens inside the attention op
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x, attn_mask=None, return_attention: bool = False):
        _check_x("Attention", x, 3, {2: self.dim}, "(B, N, {})")
        B, N, C = x.shape
        H, d = self.num_heads, self.head_dim
        qkv = self.qkv(x)                                   # (B, N, 3C)
        qkv = qkv.reshape(B, N, 3, H, d)                    # (B, N, 3, H, d)
        qkv = qkv.permute(2, 0, 3, 1, 4)                    # (3, B, H, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]                    # each (B, H, N, d)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale, return_weights=return_attention)
        if return_attention:
            out, attn = out                                 # attn: ndarray (B, H, N, N)
        x = out.transpose(1, 2)                             # (B, H, N, d) -> (B, N, H, d)
        x = x.reshape(B, N, C)                              # (B, N, H, d) -> (B, N, C)
        x = self.proj_drop(self.proj(x))                    # (B, N, C)
        return (x, attn) if return_attention else x

    def extra_repr(self):
        s = f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, scale={self.scale:.4g}"
        return s + (f", attn_drop={self.attn_drop}" if self.attn_drop else "")


class Mlp(Module):
    """The transformer feed-forward block (timm's ``Mlp``):

        fc1 (in -> hidden) -> act -> drop1 -> norm -> fc2 (hidden -> out) -> drop2

    ``norm`` is an Identity (timm keeps the slot for variants that
    normalise there), so the state-dict keys are ``fc1.weight``, ``fc1.bias``,
    ``fc2.weight``, ``fc2.bias``. ``drop`` may be one probability or a pair
    (drop1, drop2). x (..., in_features) -> (..., out_features).
    """

    def __init__(self, in_features: int, hidden_features=None, out_features=None, act_layer=GELU,
                 drop=0.0, bias: bool = True):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        drop1, drop2 = (drop, drop) if isinstance(drop, (int, float)) else tuple(drop)
        self.in_features = int(in_features)
        self.fc1 = Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer if isinstance(act_layer, Module) else act_layer()
        self.drop1 = Dropout(drop1)
        self.norm = Identity()
        self.fc2 = Linear(hidden_features, out_features, bias=bias)
        self.drop2 = Dropout(drop2)

    def forward(self, x):
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"Mlp: expected x of shape (..., {self.in_features}), got {_shape(x.shape)}")
        x = self.drop1(self.act(self.fc1(x)))               # (..., hidden)
        x = self.drop2(self.fc2(self.norm(x)))              # (..., out)
        return x
