"""Optimizers, gradient clipping and the learning-rate schedule.

The update rules are PyTorch's, written out in NumPy (``torch.optim`` names
and arguments)::

    opt = optim.AdamW(optim.param_groups_weight_decay(model, 0.05, ("cls_token", "pos_embed")),
                      lr=2e-3)
    sched = optim.CosineWarmupScheduler(opt, warmup_steps=100, total_steps=1000)
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()

Performance: the optimizers are on the training hot path, so each update is
done in place with ``out=`` into preallocated scratch arrays of the
parameter's own dtype (no float64 temporaries for float32 parameters, no
allocation per step). They only *read* ``p.grad``, so a gradient array that
the caller set by hand and shares elsewhere is never changed behind its back.

Saving: ``state_dict()`` has PyTorch's layout, and every value in it is an
ndarray, a number, a string, a bool or a list of these, so it can be
flattened into an ``.npz`` file without pickle::

    {"state": {0: {"step": 10, "exp_avg": ndarray, "exp_avg_sq": ndarray}, ...},
     "param_groups": [{"lr": 1e-3, "betas": [0.9, 0.999], ..., "params": [0, 1, 2]}, ...]}

Parameters are numbered consecutively over the groups, in order.
``load_state_dict`` accepts what comes back from such a file (0-d arrays
for numbers, arrays for lists, string keys for the indices).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from minivit.tensor import Tensor

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm_", "param_groups_weight_decay",
           "CosineWarmupScheduler"]


def _number(name: str, arg: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: {arg} must be a number, got {value!r}")
    return float(value)


def _check_range(name: str, arg: str, value, lo=0.0, hi=None, hi_open=False):
    v = _number(name, arg, value)
    if v < lo or math.isnan(v):
        raise ValueError(f"{name}: {arg} must be >= {lo:g}, got {value}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ValueError(f"{name}: {arg} must be {'<' if hi_open else '<='} {hi:g}, got {value}")


def _plain(v):
    """A value loaded from .npz back to a Python number / list."""
    if isinstance(v, np.ndarray):
        return v.item() if v.ndim == 0 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


class Optimizer:
    """Base class: holds ``param_groups`` and per-parameter ``state``.

    ``params`` is an iterable of Parameters, or of dicts
    ``{"params": [...], "lr": ..., ...}`` (param groups); a group's own
    values override the optimizer's defaults, as in PyTorch. ``state[p]`` is
    a dict of arrays and counters for parameter ``p``.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.state: dict = {}
        self.param_groups: list = []
        self._scratch: dict = {}        # per-parameter work arrays; never saved
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Parameters "
                            f"(e.g. model.parameters()), got a single Tensor")
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)
        if not any(g["params"] for g in self.param_groups):
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")

    def _validate(self, group: dict) -> None:
        """Check a group's hyper-parameters (subclasses)."""

    def add_param_group(self, group: dict) -> None:
        """Add a group ``{"params": [...], hyper-parameter: value, ...}``."""
        if not isinstance(group, dict):
            raise TypeError(f"{type(self).__name__}: a param group must be a dict, got {type(group).__name__}")
        group = dict(group)
        params = group.get("params")
        if params is None:
            raise KeyError(f"{type(self).__name__}: a param group needs a 'params' entry")
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: can only optimize Tensors/Parameters, "
                                f"got {type(p).__name__}")
            if p.data.dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}: can only optimize floating-point tensors, "
                                f"got dtype {p.data.dtype}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError(f"{type(self).__name__}: a parameter appears twice in the param groups")
        group["params"] = params
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._validate(group)
        self.param_groups.append(group)

    def zero_grad(self) -> None:
        """Set ``.grad`` of every parameter to None (gradients accumulate otherwise)."""
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self) -> None:
        raise NotImplementedError

    def _tmp(self, p, n: int = 1):
        """``n`` scratch arrays shaped and typed like ``p`` (allocated once)."""
        bufs = self._scratch.get(p)
        if bufs is None or len(bufs) < n or bufs[0].shape != p.data.shape or bufs[0].dtype != p.data.dtype:
            bufs = self._scratch[p] = [np.empty_like(p.data) for _ in range(n)]
        return bufs

    # -------------------------------------------------- saving
    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        """PyTorch's layout (see the module docstring); arrays are copies."""
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {index[id(p)]: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                 for p, s in self.state.items() if id(p) in index}
        groups = []
        for g in self.param_groups:
            d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
            d["params"] = [index[id(p)] for p in g["params"]]
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore state and hyper-parameters saved by :meth:`state_dict`.

        The optimizer must have been built over the same parameters, in the
        same groups (sizes are checked). Arrays are copied and cast to each
        parameter's dtype.
        """
        name = type(self).__name__
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the saved state has {len(saved)} parameter "
                             f"groups but this optimizer has {len(self.param_groups)}")
        for i, (sg, g) in enumerate(zip(saved, self.param_groups)):
            n = int(np.size(sg["params"]))
            if n != len(g["params"]):
                raise ValueError(f"{name}.load_state_dict: saved group {i} has {n} parameters "
                                 f"but this optimizer's group {i} has {len(g['params'])}")
        params = self._params()
        new_state = {}
        for key, s in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(params):
                raise ValueError(f"{name}.load_state_dict: state for parameter {i}, but there are "
                                 f"only {len(params)}")
            p = params[i]
            entry = {}
            for k, v in s.items():
                if isinstance(v, np.ndarray) and v.ndim > 0:
                    if v.shape != p.data.shape:
                        raise ValueError(f"{name}.load_state_dict: state {k!r} of parameter {i} has "
                                         f"shape {v.shape}, but the parameter has shape {p.data.shape}")
                    entry[k] = v.astype(p.data.dtype, copy=True)
                else:
                    entry[k] = _plain(v)
            new_state[p] = entry
        for sg, g in zip(saved, self.param_groups):
            for k, v in sg.items():
                if k == "params":
                    continue
                v = _plain(v)
                g[k] = tuple(v) if isinstance(g.get(k, self.defaults.get(k)), tuple) else v
            self._validate(g)
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"  group {i}: {len(g['params'])} params, " +
                         ", ".join(f"{k}={v}" for k, v in g.items() if k != "params"))
        return "\n".join(lines) + "\n)"


# ==========================================================================
class SGD(Optimizer):
    """Stochastic gradient descent with momentum (PyTorch's rule exactly).

    For each parameter p with gradient g, at step t:

        d = g + weight_decay * p                          (L2 in the gradient)
        if momentum:
            buf = d                                    at the first step
            buf = momentum * buf + (1 - dampening) * d   afterwards
            d = d + momentum * buf   if nesterov   else   buf
        p = p - lr * d
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _validate(self, g):
        for arg in ("lr", "momentum", "weight_decay"):
            _check_range("SGD", arg, g[arg])
        _number("SGD", "dampening", g["dampening"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError(f"SGD: nesterov=True needs momentum > 0 and dampening == 0, "
                             f"got momentum={g['momentum']}, dampening={g['dampening']}")

    def step(self) -> None:
        for group in self.param_groups:
            lr, mom, damp = group["lr"], group["momentum"], group["dampening"]
            wd, nesterov = group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                tmp = self._tmp(p, 2 if nesterov else 1)
                d = p.grad                                       # read only
                if wd != 0:
                    d = np.multiply(p.data, wd, out=tmp[0])      # d = wd p
                    d += p.grad                                  # d = g + wd p
                if mom != 0:
                    state = self.state.setdefault(p, {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = np.array(d, dtype=p.data.dtype)
                    else:
                        buf *= mom                               # buf = mom buf + (1-damp) d
                        if damp == 0:
                            buf += d
                        else:
                            buf += np.multiply(d, 1 - damp, out=tmp[0])
                    if nesterov:
                        d = np.multiply(buf, mom, out=tmp[1])    # d = d + mom buf
                        d += p.grad if wd == 0 else tmp[0]
                    else:
                        d = buf
                p.data -= np.multiply(d, lr, out=tmp[-1])         # p = p - lr d


# ==========================================================================
class Adam(Optimizer):
    """Adam (Kingma & Ba), PyTorch's rule with bias correction.

    For each parameter p with gradient g, at step t = 1, 2, ...:

        g = g + weight_decay * p                      (L2: Adam's weight decay is in the gradient)
        m = beta1 m + (1 - beta1) g
        v = beta2 v + (1 - beta2) g^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    For decoupled weight decay use :class:`AdamW`.
    """

    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _validate(self, g):
        name = type(self).__name__
        _check_range(name, "lr", g["lr"])
        _check_range(name, "eps", g["eps"])
        _check_range(name, "weight_decay", g["weight_decay"])
        betas = g["betas"]
        if len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        g["betas"] = tuple(float(b) for b in betas)
        for i, b in enumerate(betas):
            _check_range(name, f"betas[{i}]", b, 0.0, 1.0, hi_open=True)

    def step(self) -> None:
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(p)
                if not state:
                    state = self.state[p] = {"step": 0, "exp_avg": np.zeros_like(p.data),
                                             "exp_avg_sq": np.zeros_like(p.data)}
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                g = p.grad
                if self._decoupled:
                    tmp, = self._tmp(p, 1)
                    if wd != 0:
                        p.data *= 1 - lr * wd                  # AdamW: p = p - lr wd p
                else:
                    tmp, gbuf = self._tmp(p, 2)
                    if wd != 0:                                # Adam: g = g + wd p
                        g = np.multiply(p.data, wd, out=gbuf)
                        g += p.grad
                # m = beta1 m + (1 - beta1) g  (as m += (1 - beta1)(g - m), torch's lerp)
                np.subtract(g, m, out=tmp)
                tmp *= 1 - b1
                m += tmp
                # v = beta2 v + (1 - beta2) g^2
                v *= b2
                np.multiply(g, g, out=tmp)
                tmp *= 1 - b2
                v += tmp
                # p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
                step_size = lr / (1 - b1 ** t)
                np.sqrt(v, out=tmp)
                tmp /= math.sqrt(1 - b2 ** t)
                tmp += eps
                np.divide(m, tmp, out=tmp)
                tmp *= step_size
                p.data -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's rule.

    At step t = 1, 2, ...: first ``p = p - lr * weight_decay * p`` (the decay
    does not pass through m and v), then the Adam step of :class:`Adam`
    with the raw gradient g.
    """

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# ==========================================================================
def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale all gradients together so that their joint norm is at most ``max_norm``.

    total = ||(||g_1||, ||g_2||, ...)||  (the norm of all gradients as one vector)
    coef  = min(1, max_norm / (total + 1e-6));   every g <- coef * g

    Returns ``total`` (before clipping) as a float; ``norm_type`` may be
    ``float("inf")`` (largest absolute entry). A non-finite total (a NaN or
    inf gradient) leaves the gradients unchanged; check the returned value to
    skip such a step. Each ``p.grad`` is replaced by
    a new array ``coef * p.grad`` rather than scaled in place, so a gradient
    array set by hand and shared by two parameters is scaled once, not twice.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    _check_range("clip_grad_norm_", "max_norm", max_norm)
    norm_type = _number("clip_grad_norm_", "norm_type", norm_type)
    if norm_type <= 0:
        raise ValueError(f"clip_grad_norm_: norm_type must be > 0 or inf, got {norm_type}")
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    norms = []
    for p in params:
        g = p.grad.reshape(-1)
        if norm_type == math.inf:
            norms.append(float(np.max(np.abs(g))) if g.size else 0.0)
        elif norm_type == 2.0:
            norms.append(math.sqrt(float(np.dot(g, g))))
        else:
            norms.append(float(np.sum(np.abs(g) ** norm_type)) ** (1 / norm_type))
    if norm_type == math.inf:
        total = max(norms)
    else:
        total = float(np.sum(np.asarray(norms) ** norm_type) ** (1 / norm_type))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for p in params:
            p.grad = p.grad * np.asarray(coef, dtype=p.grad.dtype)
    return total


def param_groups_weight_decay(model, weight_decay: float = 1e-5, no_weight_decay_list=()) -> list:
    """Split a model's trainable parameters into two groups, timm's rule:

    no decay for 1-D (and 0-D) parameters (biases, norm weights), names
    ending in ".bias", and names in ``no_weight_decay_list`` (e.g.
    ``("cls_token", "pos_embed")``); ``weight_decay`` for the rest. Frozen
    parameters are left out. Returns
    ``[{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]``.
    """
    skip = set(no_weight_decay_list)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


# ==========================================================================
class CosineWarmupScheduler:
    """Linear warm-up, then cosine decay, stepped once per optimizer step.

    Let W = ``warmup_steps``, T = ``total_steps``, ``base`` = each group's lr
    when the scheduler is made, ``start`` = ``warmup_start_lr`` and ``min`` =
    ``min_lr``. The s-th optimizer step (s = 1, 2, ..., T) uses

        s <= W:   lr = start + (base - start) * s / W
        s >  W:   lr = min + (base - min) * (1 + cos(pi * (s - W) / (T - W))) / 2

    so the first step uses base/W (not 0: no step is wasted), step W uses
    ``base``, and step T uses ``min``; after T the lr stays at ``min``.

    The constructor sets the lr of step 1; each ``step()`` call (after
    ``optimizer.step()``) sets the lr of the next one by writing
    ``group["lr"]``. ``last_step`` counts the ``step()`` calls.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0,
                 warmup_start_lr: float = 0.0):
        name = "CosineWarmupScheduler"
        if not isinstance(total_steps, numbers.Integral) or total_steps < 1:
            raise ValueError(f"{name}: total_steps must be an int >= 1, got {total_steps!r}")
        if not isinstance(warmup_steps, numbers.Integral) or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"{name}: warmup_steps must be an int in [0, total_steps={total_steps}], "
                             f"got {warmup_steps!r}")
        _check_range(name, "min_lr", min_lr)
        _check_range(name, "warmup_start_lr", warmup_start_lr)
        self.optimizer = optimizer
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.min_lr, self.warmup_start_lr = float(min_lr), float(warmup_start_lr)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def lr_at(self, s: int, base: float) -> float:
        """The learning rate of the s-th optimizer step (s >= 1) for a group with ``base``."""
        W, T = self.warmup_steps, self.total_steps
        s = min(s, T)
        if s <= W:
            return self.warmup_start_lr + (base - self.warmup_start_lr) * s / W
        return self.min_lr + (base - self.min_lr) * 0.5 * (1 + math.cos(math.pi * (s - W) / (T - W)))

    def _apply(self):
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(self.last_step + 1, base)

    def step(self) -> None:
        """Call once after each ``optimizer.step()``: sets the lr of the next step."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list:
        """The lr of each group, as set for the next optimizer step."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs),
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "min_lr": self.min_lr, "warmup_start_lr": self.warmup_start_lr}

    def load_state_dict(self, state_dict: dict) -> None:
        sd = {k: _plain(v) for k, v in state_dict.items()}
        self.last_step = int(sd["last_step"])
        self.base_lrs = [float(b) for b in np.atleast_1d(sd["base_lrs"])]
        if len(self.base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(f"CosineWarmupScheduler.load_state_dict: saved {len(self.base_lrs)} "
                             f"base lrs but the optimizer has {len(self.optimizer.param_groups)} groups")
        self.warmup_steps, self.total_steps = int(sd["warmup_steps"]), int(sd["total_steps"])
        self.min_lr, self.warmup_start_lr = float(sd["min_lr"]), float(sd["warmup_start_lr"])
        self._apply()
