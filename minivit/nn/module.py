"""``Parameter`` and ``Module``: parameter discovery, buffers, state dicts,
train/eval, dtype conversion. (The package docstring, ``minivit.nn``, explains
the three kinds of state.)"""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np

from minivit.tensor import Tensor

__all__ = ["Parameter", "Module", "StateDictError", "IncompatibleKeys"]


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
