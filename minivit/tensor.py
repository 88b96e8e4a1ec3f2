"""The Tensor and the reverse-mode graph engine.

A :class:`Tensor` wraps one NumPy array (``.data``). When an op from
:mod:`minivit.functional` produces a tensor from inputs that require
gradients, the result remembers its parents and a *backward function* that
maps the gradient of the result to one gradient per parent. Calling
``loss.backward()`` then

1. orders the graph topologically (iteratively: a 10,000-op chain is fine),
2. walks it from the output back to the leaves, calling each backward function,
3. reduces broadcast gradients to each parent's shape (:func:`unbroadcast`,
   the *only* place broadcasting is undone), and
4. accumulates into ``.grad`` of the leaves that require gradients.

Accumulation rule (as in PyTorch): ``.grad`` of a leaf is **added to** by
every ``backward()`` call; nothing clears it except ``zero_grad()`` (on a
Module or optimizer) or setting ``t.grad = None``. Intermediate (non-leaf)
tensors do not keep ``.grad``. After ``backward()`` the graph is released
(parents and closures dropped, so the activations can be freed) unless
``retain_graph=True``; a second ``backward()`` through a released graph
raises.

Dtypes follow ``torch.from_numpy``: an ndarray keeps its dtype (float64 stays
float64, integer labels stay integer); Python numbers and lists become
float32. Ops never upcast float32 work: constants mixed into an op are cast
to the tensor's dtype.
"""
from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["Tensor", "tensor", "no_grad", "enable_grad", "is_grad_enabled",
           "manual_seed", "get_rng", "unbroadcast", "IndexedGrad"]

# --------------------------------------------------------------------------
# global state: grad mode and the random generator
# --------------------------------------------------------------------------
_grad_enabled = True
_rng = np.random.default_rng(0)


def is_grad_enabled() -> bool:
    """True unless inside a ``no_grad()`` block."""
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Context manager: ops inside record no graph (inference, teachers, EMA)."""
    global _grad_enabled
    prev, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = prev


@contextlib.contextmanager
def enable_grad():
    """Context manager that turns graph recording back on inside ``no_grad``."""
    global _grad_enabled
    prev, _grad_enabled = _grad_enabled, True
    try:
        yield
    finally:
        _grad_enabled = prev


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed minivit's generator (parameter init, dropout, drop-path).

    Returns the new generator. Same seed, same numbers.
    """
    global _rng
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"manual_seed: seed must be an int, got {type(seed).__name__}")
    _rng = np.random.default_rng(int(seed))
    return _rng


def get_rng() -> np.random.Generator:
    """The generator used by init, dropout and drop-path (see ``manual_seed``)."""
    return _rng


# --------------------------------------------------------------------------
# broadcasting: the one place where it is undone
# --------------------------------------------------------------------------
def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` down to ``shape`` (the inverse of NumPy broadcasting).

    If ``x`` of shape ``shape`` was broadcast to ``grad.shape`` in the forward
    pass, each element of ``x`` was used once per copy, so its gradient is
    the sum over the copies: sum the leading extra axes, then every axis
    where ``shape`` has size 1.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class IndexedGrad:
    """The gradient of ``x[idx]`` handed back to ``x``: ``g`` belongs at ``idx``.

    Returned by ``getitem``'s backward instead of a full-size array that is
    zero almost everywhere; the engine adds ``g`` into the entries at ``idx``
    of the parent's gradient buffer (``np.add.at`` for integer-array indices,
    so repeated indices accumulate). ``basic``: no entry is picked twice (basic
    indexing, or integer arrays without repeats), so a plain ``+=`` does.
    """
    __slots__ = ("idx", "g", "basic")

    def __init__(self, idx, g, basic):
        self.idx, self.g, self.basic = idx, g, basic

    def add_to(self, buf):
        if self.basic:
            buf[self.idx] += self.g
        else:
            np.add.at(buf, self.idx, self.g)

    def dense(self, shape, dtype):
        buf = np.zeros(shape, dtype)
        self.add_to(buf)
        return buf


def _released(_g):
    raise RuntimeError(
        "Trying to backward through the graph a second time: its saved values were "
        "freed by the first backward(). Call backward(retain_graph=True) the first time "
        "if you need to backward twice.")


# --------------------------------------------------------------------------
# the Tensor
# --------------------------------------------------------------------------
def _to_array(data) -> np.ndarray:
    """ndarrays keep their dtype; Python numbers and lists become float32."""
    if isinstance(data, Tensor):
        return data.data
    if isinstance(data, np.ndarray):
        return data
    if isinstance(data, np.generic):
        return np.asarray(data)
    arr = np.asarray(data)
    if arr.dtype.kind in "iuf":
        return arr.astype(np.float32)
    return arr


class Tensor:
    """An ndarray with a gradient and a place in the computation graph.

    Attributes
    ----------
    data : np.ndarray          the value
    grad : np.ndarray | None   accumulated gradient (leaves only)
    requires_grad : bool       whether gradients flow to / through it
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_op",
                 "__weakref__")
    __array_priority__ = 1000  # ndarray + Tensor -> Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        arr = _to_array(data)
        if dtype is not None:
            arr = arr.astype(dtype, copy=False)
        if requires_grad and arr.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {arr.dtype}")
        self.data = arr
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._op = ""

    # ---------------- construction of op results ----------------
    @staticmethod
    def _make(data: np.ndarray, parents: tuple, backward, op: str) -> "Tensor":
        """Wrap an op's result; record the graph if any parent needs a gradient.

        ``backward(g)`` must return one gradient (or None) per parent, each
        either of the parent's shape or broadcastable to it, and must not
        modify ``g`` in place.
        """
        out = Tensor.__new__(Tensor)
        out.data = data
        out.grad = None
        out._op = op
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
            out._backward = backward
        else:
            out.requires_grad = False
            out._parents = ()
            out._backward = None
        return out

    @property
    def is_leaf(self) -> bool:
        return self._backward is None

    # ---------------- properties ----------------
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        return len(self.data)

    def item(self):
        return self.data.item()

    def numpy(self) -> np.ndarray:
        return self.data

    def detach(self) -> "Tensor":
        """A new leaf sharing the same data, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {self.data.dtype}")
        self.requires_grad = bool(flag)
        return self

    def astype(self, dtype) -> "Tensor":
        return F.astype(self, dtype)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(self.data, precision=4, threshold=20, separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.data.dtype}{grad})"

    def __bool__(self):
        return bool(self.data)

    def __hash__(self):
        return id(self)

    # ---------------- the engine ----------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf.

        ``grad`` is the gradient of some scalar with respect to ``self``; it
        may be omitted only when ``self`` has one element (a loss).
        """
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad and has no graph "
                               "(was it computed inside no_grad(), or from inputs without requires_grad?)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a grad argument needs a one-element tensor "
                                   f"(a loss); this one has shape {self.data.shape}. Pass grad= of that shape.")
            grad = np.ones_like(self.data)
        else:
            grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.data.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(f"backward(): grad has shape {grad.shape} but the tensor has shape {self.data.shape}")

        # 1. topological order, iteratively (no recursion limit)
        order, visited = [], set()
        stack = [(self, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:          # post-order: every parent is already in `order`
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for p in node._parents:
                if p.requires_grad and id(p) not in visited:
                    stack.append((p, False))

        # 2. walk from the output to the leaves. `grads` holds the gradient
        # summed so far for each node; `owned` marks the arrays this loop
        # allocated itself, which may be added to in place (any other array
        # may be shared with an op's saved values, so it is never written).
        grads, owned = {id(self): grad}, set()
        for node in reversed(order):
            k = id(node)
            g = grads.pop(k, None)
            if g is None:
                continue
            if node._backward is None:  # a leaf
                if node.grad is None:
                    # a fresh, writable array the leaf owns (g may be shared or a broadcast view)
                    node.grad = g if k in owned else np.array(g, dtype=node.data.dtype, copy=True)
                else:
                    node.grad = node.grad + g
                continue
            parent_grads = node._backward(g)
            for p, pg in zip(node._parents, parent_grads):
                if pg is None or not p.requires_grad:
                    continue
                pk = id(p)
                if isinstance(pg, IndexedGrad):     # x[idx] was used: add g into those entries only
                    buf = grads.get(pk)
                    if buf is None or pk not in owned:
                        buf = np.zeros(p.data.shape, p.data.dtype) if buf is None \
                            else np.array(buf, dtype=p.data.dtype, copy=True)
                        grads[pk] = buf
                        owned.add(pk)
                    pg.add_to(buf)
                    continue
                if pg.shape != p.data.shape:
                    pg = unbroadcast(pg, p.data.shape)
                if pg.dtype != p.data.dtype:
                    pg = pg.astype(p.data.dtype)
                if pk not in grads:
                    grads[pk] = pg
                elif pk in owned:
                    grads[pk] += pg
                else:
                    grads[pk] = grads[pk] + pg
                    owned.add(pk)
            if not retain_graph:
                node._parents = ()
                node._backward = _released

    # ---------------- operators (thin calls into functional) ----------------
    def __add__(self, o): return F.add(self, o)
    def __radd__(self, o): return F.add(o, self)
    def __sub__(self, o): return F.sub(self, o)
    def __rsub__(self, o): return F.sub(o, self)
    def __mul__(self, o): return F.mul(self, o)
    def __rmul__(self, o): return F.mul(o, self)
    def __truediv__(self, o): return F.div(self, o)
    def __rtruediv__(self, o): return F.div(o, self)
    def __matmul__(self, o): return F.matmul(self, o)
    def __rmatmul__(self, o): return F.matmul(o, self)
    def __pow__(self, o): return F.pow(self, o)
    def __rpow__(self, o): return F.pow(o, self)
    def __neg__(self): return F.neg(self)
    def __pos__(self): return self
    def __abs__(self): return F.abs(self)
    def __getitem__(self, idx): return F.getitem(self, idx)

    # comparisons give boolean tensors without grad
    def __lt__(self, o): return Tensor(self.data < _to_array(o))
    def __le__(self, o): return Tensor(self.data <= _to_array(o))
    def __gt__(self, o): return Tensor(self.data > _to_array(o))
    def __ge__(self, o): return Tensor(self.data >= _to_array(o))
    def __eq__(self, o): return Tensor(self.data == _to_array(o))
    def __ne__(self, o): return Tensor(self.data != _to_array(o))

    @property
    def T(self): return F.permute(self, tuple(range(self.ndim))[::-1])

    # methods
    def exp(self): return F.exp(self)
    def log(self): return F.log(self)
    def sqrt(self): return F.sqrt(self)
    def abs(self): return F.abs(self)
    def tanh(self): return F.tanh(self)
    def sigmoid(self): return F.sigmoid(self)
    def relu(self): return F.relu(self)
    def clamp(self, min=None, max=None): return F.clamp(self, min, max)
    def sum(self, dim=None, keepdim=False): return F.sum(self, dim, keepdim)
    def mean(self, dim=None, keepdim=False): return F.mean(self, dim, keepdim)
    def var(self, dim=None, keepdim=False, unbiased=True): return F.var(self, dim, keepdim, unbiased)
    def max(self, dim=None, keepdim=False): return F.max(self, dim, keepdim)
    def min(self, dim=None, keepdim=False): return F.min(self, dim, keepdim)
    def amax(self, dim=None, keepdim=False): return F.amax(self, dim, keepdim)
    def reshape(self, *shape): return F.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
    def view(self, *shape): return self.reshape(*shape)
    def transpose(self, dim0, dim1): return F.transpose(self, dim0, dim1)
    def permute(self, *dims): return F.permute(self, dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)
    def flatten(self, start_dim=0, end_dim=-1): return F.flatten(self, start_dim, end_dim)
    def expand(self, *shape): return F.expand(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
    def squeeze(self, dim=None): return F.squeeze(self, dim)
    def unsqueeze(self, dim): return F.unsqueeze(self, dim)
    def softmax(self, dim=-1): return F.softmax(self, dim)
    def log_softmax(self, dim=-1): return F.log_softmax(self, dim)
    def masked_fill(self, mask, value): return F.masked_fill(self, mask, value)
    def split(self, split_size_or_sections, dim=0): return F.split(self, split_size_or_sections, dim)
    def chunk(self, chunks, dim=0): return F.chunk(self, chunks, dim)
    def argmax(self, dim=None): return self.data.argmax(axis=dim)


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """Make a leaf Tensor (``minivit.tensor([1., 2.], requires_grad=True)``)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


from minivit import functional as F  # noqa: E402  (methods above call into it)
