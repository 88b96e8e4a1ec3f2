"""minivit.optim: each update rule against a hand-written NumPy version of
PyTorch's formula, decoupled vs L2 weight decay, param groups, saving and
resuming, gradient clipping, the LR schedule and argument checks."""
import math

import numpy as np
import pytest

import minivit
from minivit import nn, optim

RNG = np.random.default_rng(42)
P0 = RNG.standard_normal((3, 4))
GRADS = [RNG.standard_normal((3, 4)) for _ in range(4)]


def param(value=P0, dtype=np.float64):
    return nn.Parameter(value.copy(), dtype=dtype)


def run(opt_cls, grads=GRADS, dtype=np.float64, **kw):
    p = param(dtype=dtype)
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.astype(dtype)
        opt.step()
    return p.data


# ------------------------------------------------------------------ SGD
def sgd_reference(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p, buf = p.copy(), None
    for g in grads:
        d = g + weight_decay * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


@pytest.mark.parametrize("kw", [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.8, dampening=0.3),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True),
    dict(lr=0.1, momentum=0.9, weight_decay=0.05, dampening=0.5),
], ids=["plain", "momentum", "dampening", "nesterov", "wd", "nesterov+wd", "momentum+wd+damp"])
def test_sgd_matches_torch_formula(kw):
    np.testing.assert_allclose(run(optim.SGD, **kw), sgd_reference(P0, GRADS, **kw), rtol=1e-12, atol=1e-14)


def test_sgd_one_plain_step_exact():
    p = param()
    p.grad = GRADS[0]
    optim.SGD([p], lr=0.5).step()
    np.testing.assert_array_equal(p.data, P0 - 0.5 * GRADS[0])


# ------------------------------------------------------------------ Adam / AdamW
def adam_reference(p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    p = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p - lr * weight_decay * p
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("kw", [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.1),
                                dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6)])
def test_adam_matches_torch_formula(kw):
    np.testing.assert_allclose(run(optim.Adam, **kw), adam_reference(P0, GRADS, **kw), rtol=1e-10)


@pytest.mark.parametrize("kw", [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.1),
                                dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.5)])
def test_adamw_matches_torch_formula(kw):
    kw.setdefault("weight_decay", 1e-2)
    np.testing.assert_allclose(run(optim.AdamW, **kw), adam_reference(P0, GRADS, decoupled=True, **kw),
                               rtol=1e-10)


def test_adamw_decay_is_decoupled():
    # zero gradient: m = v = 0, so the Adam part is 0 and p shrinks by exactly lr*wd*p
    lr, wd = 0.1, 0.5
    p = param()
    p.grad = np.zeros_like(P0)
    optim.AdamW([p], lr=lr, weight_decay=wd).step()
    np.testing.assert_array_equal(p.data, P0 * (1 - lr * wd))
    # Adam puts wd*p into the gradient: the first step moves each entry by ~lr
    q = param()
    q.grad = np.zeros_like(P0)
    optim.Adam([q], lr=lr, weight_decay=wd).step()
    np.testing.assert_allclose(q.data, P0 - lr * np.sign(P0), atol=1e-6)
    assert not np.allclose(q.data, p.data)


def test_float32_params_stay_float32():
    for cls in (optim.SGD, optim.Adam, optim.AdamW):
        kw = dict(lr=1e-2, momentum=0.9, weight_decay=0.1) if cls is optim.SGD else dict(lr=1e-2, weight_decay=0.1)
        p = param(dtype=np.float32)
        data = p.data
        opt = cls([p], **kw)
        for g in GRADS:
            p.grad = g.astype(np.float32)
            opt.step()
        assert p.data is data and p.data.dtype == np.float32          # updated in place
        assert all(v.dtype == np.float32 for v in opt.state[p].values() if isinstance(v, np.ndarray))
        ref = (sgd_reference(P0, GRADS, **kw) if cls is optim.SGD else
               adam_reference(P0, GRADS, decoupled=cls is optim.AdamW, **kw))
        np.testing.assert_allclose(p.data, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls,kw", [
    (optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.1)),
    (optim.Adam, dict(weight_decay=0.1)), (optim.AdamW, {})])
def test_steps_allocate_nothing_after_the_first(cls, kw):
    import tracemalloc
    p = nn.Parameter(np.ones((250, 400)))                   # float32, 400 kB
    p.grad = np.full((250, 400), 0.5, np.float32)
    opt = cls([p], **kw)
    opt.step()                                              # state and scratch are allocated here
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(3):
            opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 20_000, f"a step allocated {peak - base} bytes (no temporaries expected)"


def test_step_does_not_modify_grad_and_skips_params_without_grad():
    p, q = param(), param()
    g = GRADS[0].copy()
    p.grad = g
    opt = optim.AdamW([p, q], lr=0.1, weight_decay=0.1)
    opt.step()
    np.testing.assert_array_equal(p.grad, GRADS[0])
    np.testing.assert_array_equal(q.data, P0)      # no grad: untouched, even by weight decay
    assert q not in opt.state


def test_read_only_gradient_is_fine():
    # the engine can leave a read-only broadcast view in .grad (e.g. from x.sum())
    p = param()
    p.grad = np.broadcast_to(np.float64(1.0), P0.shape)
    for cls, kw in ((optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)),
                    (optim.Adam, dict(weight_decay=0.1)), (optim.AdamW, {})):
        cls([p], **kw).step()


def test_zero_grad_sets_none():
    p = param()
    p.grad = GRADS[0]
    opt = optim.SGD([p], lr=0.1)
    opt.zero_grad()
    assert p.grad is None


# ------------------------------------------------------------------ param groups
def test_param_groups_honour_their_own_lr_and_weight_decay():
    a, b = param(), param()
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.01, "weight_decay": 0.5}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.01
    a.grad = b.grad = GRADS[0]
    opt.step()
    np.testing.assert_allclose(a.data, P0 - 0.1 * GRADS[0])
    np.testing.assert_allclose(b.data, P0 - 0.01 * (GRADS[0] + 0.5 * P0))


def test_param_used_twice_is_an_error():
    a = param()
    with pytest.raises(ValueError, match="twice"):
        optim.SGD([{"params": [a]}, {"params": [a]}], lr=0.1)


def test_empty_parameter_list_is_an_error():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.AdamW([])


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(np.zeros((1, 1, 4)))
        self.pos_embed = nn.Parameter(np.zeros((1, 3, 4)))
        self.fc = nn.Linear(4, 5)
        self.norm = nn.LayerNorm(5)
        self.gain = nn.Parameter(np.ones(()))          # 0-d
        self.frozen = nn.Parameter(np.ones((2, 2)), requires_grad=False)
        self.head = nn.Linear(5, 2, bias=False)


def test_param_groups_weight_decay_partition():
    m = Small()
    groups = optim.param_groups_weight_decay(m, 0.05, ("cls_token", "pos_embed"))
    names = {id(p): n for n, p in m.named_parameters()}
    assert [names[id(p)] for p in groups[0]["params"]] == [
        "cls_token", "pos_embed", "gain", "fc.bias", "norm.weight", "norm.bias"]   # own params first
    assert [names[id(p)] for p in groups[1]["params"]] == ["fc.weight", "head.weight"]
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.05
    # without the list, pos_embed/cls_token (3-D) are decayed, like timm
    groups = optim.param_groups_weight_decay(m, 0.05)
    decayed = {id(p) for p in groups[1]["params"]}
    assert id(m.pos_embed) in decayed and id(m.cls_token) in decayed
    opt = optim.AdamW(groups, lr=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.05]


# ------------------------------------------------------------------ saving and resuming
def as_if_from_npz(sd):
    """What a state dict looks like after a flat .npz round trip: numbers -> 0-d
    arrays, lists -> arrays, integer keys -> strings."""
    state = {str(i): {k: np.asarray(v) for k, v in s.items()} for i, s in sd["state"].items()}
    groups = [{k: np.asarray(v) for k, v in g.items()} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def check_npz_safe(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            check_npz_safe(v)
    elif isinstance(obj, list):
        for v in obj:
            check_npz_safe(v)
    else:
        assert isinstance(obj, (np.ndarray, int, float, bool, str)), type(obj)


@pytest.mark.parametrize("cls,kw", [
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (optim.Adam, dict(lr=1e-2, weight_decay=0.01)),
    (optim.AdamW, dict(lr=1e-2, betas=(0.8, 0.95))),
])
@pytest.mark.parametrize("via_npz", [False, True])
def test_state_dict_round_trip_continues_identically(cls, kw, via_npz):
    def make():
        a, b = param(), param(P0[:2])
        return [a, b], cls([{"params": [a]}, {"params": [b], "lr": 0.5 * kw["lr"]}], **kw)

    (a, b), opt = make()
    for g in GRADS[:2]:
        a.grad, b.grad = g, g[:2]
        opt.step()
    sd = opt.state_dict()
    check_npz_safe(sd)
    assert sorted(sd["state"]) == [0, 1] and [g["params"] for g in sd["param_groups"]] == [[0], [1]]

    (a2, b2), opt2 = make()
    a2.data[...], b2.data[...] = a.data, b.data
    opt2.load_state_dict(as_if_from_npz(sd) if via_npz else sd)
    assert opt2.param_groups[1]["lr"] == 0.5 * kw["lr"]
    if "betas" in kw:
        assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    for g in GRADS[2:]:
        for x, y, opt_ in ((a, b, opt), (a2, b2, opt2)):
            x.grad, y.grad = g, g[:2]
            opt_.step()
    np.testing.assert_array_equal(a.data, a2.data)
    np.testing.assert_array_equal(b.data, b2.data)


def test_state_dict_is_a_copy():
    p = param()
    opt = optim.Adam([p])
    p.grad = GRADS[0]
    opt.step()
    sd = opt.state_dict()
    saved = sd["state"][0]["exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], saved)


def test_load_state_dict_checks_sizes():
    p, q = param(), param()
    opt = optim.Adam([p, q])
    with pytest.raises(ValueError, match="1 parameters but this optimizer's group 0 has 2"):
        opt.load_state_dict(optim.Adam([param()]).state_dict())
    other = optim.Adam([param(P0[:1]), param()])
    for x in other._params():
        x.grad = np.ones_like(x.data)
    other.step()
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(other.state_dict())


# ------------------------------------------------------------------ clip_grad_norm_
def test_clip_grad_norm_value_and_effect():
    a, b = param(), param(P0[:2])
    a.grad, b.grad = GRADS[0], GRADS[1][:2]
    total = math.sqrt((GRADS[0] ** 2).sum() + (GRADS[1][:2] ** 2).sum())
    got = optim.clip_grad_norm_([a, b], max_norm=1.0)
    assert got == pytest.approx(total, rel=1e-12)
    coef = 1.0 / (total + 1e-6)
    np.testing.assert_allclose(a.grad, GRADS[0] * coef)
    np.testing.assert_allclose(b.grad, GRADS[1][:2] * coef)
    new = math.sqrt((a.grad ** 2).sum() + (b.grad ** 2).sum())
    assert new == pytest.approx(1.0, rel=1e-5)
    # below the limit: unchanged, and the norm is still reported
    assert optim.clip_grad_norm_([a, b], max_norm=10.0) == pytest.approx(new)
    np.testing.assert_allclose(a.grad, GRADS[0] * coef)


def test_clip_grad_norm_inf_and_p1_and_shared_gradients():
    a = param()
    a.grad = GRADS[0]
    assert optim.clip_grad_norm_(a, 100.0, norm_type=float("inf")) == pytest.approx(np.abs(GRADS[0]).max())
    assert optim.clip_grad_norm_([a], 100.0, norm_type=1) == pytest.approx(np.abs(GRADS[0]).sum())
    # two leaves holding the same gradient array (as the engine does for a + b) are each scaled once
    x, y = param(), param()
    x.grad = y.grad = GRADS[0].copy()
    total = optim.clip_grad_norm_([x, y], 1.0)
    np.testing.assert_allclose(x.grad, GRADS[0] / (total + 1e-6))
    np.testing.assert_allclose(y.grad, GRADS[0] / (total + 1e-6))
    assert optim.clip_grad_norm_([param()], 1.0) == 0.0           # no grads


def test_clip_grad_norm_float32_stays_float32():
    a = param(dtype=np.float32)
    a.grad = (GRADS[0] * 100).astype(np.float32)
    optim.clip_grad_norm_([a], 1.0)
    assert a.grad.dtype == np.float32


# ------------------------------------------------------------------ schedule
def schedule(s, base, W, T, min_lr=0.0, start=0.0):
    s = min(s, T)
    if s <= W:
        return start + (base - start) * s / W
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * (s - W) / (T - W)))


def test_scheduler_values_against_formula():
    a, b = param(), param()
    opt = optim.AdamW([{"params": [a]}, {"params": [b], "lr": 0.01}], lr=0.1)
    W, T = 10, 110
    sched = optim.CosineWarmupScheduler(opt, warmup_steps=W, total_steps=T, min_lr=1e-4)
    lrs = []
    for _ in range(T + 5):
        lrs.append(sched.get_last_lr())     # the lr the next optimizer step uses
        assert [g["lr"] for g in opt.param_groups] == lrs[-1]
        sched.step()
    lrs = np.array(lrs)                    # lrs[s - 1] = lr of step s
    assert lrs[0, 0] == pytest.approx(0.1 / W) and lrs[0, 0] > 0         # first step: small, not 0
    assert lrs[W - 1, 0] == pytest.approx(0.1) and lrs[W - 1, 1] == pytest.approx(0.01)   # end of warm-up
    mid = W + (T - W) // 2
    assert lrs[mid - 1, 0] == pytest.approx(1e-4 + (0.1 - 1e-4) / 2)                   # half-way down
    assert lrs[T - 1, 0] == pytest.approx(1e-4) and lrs[T + 3, 0] == pytest.approx(1e-4)  # end, and after
    for s in range(1, T + 5):
        assert lrs[s - 1, 0] == pytest.approx(schedule(s, 0.1, W, T, 1e-4))
        assert lrs[s - 1, 1] == pytest.approx(schedule(s, 0.01, W, T, 1e-4))
    assert np.all(np.diff(lrs[:W, 0]) > 0) and np.all(np.diff(lrs[W - 1:T, 0]) < 0)


def test_scheduler_without_warmup_and_with_start_lr():
    opt = optim.SGD([param()], lr=1.0)
    sched = optim.CosineWarmupScheduler(opt, 0, 4)
    got = []
    for _ in range(4):
        got.append(sched.get_last_lr()[0])
        sched.step()
    np.testing.assert_allclose(got, [schedule(s, 1.0, 0, 4) for s in range(1, 5)])
    opt = optim.SGD([param()], lr=1.0)
    sched = optim.CosineWarmupScheduler(opt, 4, 8, warmup_start_lr=0.2)
    assert sched.get_last_lr()[0] == pytest.approx(0.2 + 0.8 / 4)


def test_scheduler_state_dict_round_trip():
    opt = optim.AdamW([param()], lr=0.1)
    sched = optim.CosineWarmupScheduler(opt, 5, 50)
    for _ in range(17):
        sched.step()
    sd = sched.state_dict()
    check_npz_safe(sd)
    opt2 = optim.AdamW([param()], lr=0.1)
    sched2 = optim.CosineWarmupScheduler(opt2, 5, 50)
    sched2.load_state_dict({k: np.asarray(v) for k, v in sd.items()})
    assert sched2.get_last_lr() == sched.get_last_lr() and sched2.last_step == 17
    sched.step(), sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize("make,msg", [
    (lambda p: optim.AdamW(p, lr=-0.1), r"AdamW: lr must be >= 0, got -0.1"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), r"Adam: betas\[1\] must be < 1, got 1.0"),
    (lambda p: optim.Adam(p, betas=(-0.1, 0.9)), r"Adam: betas\[0\] must be >= 0"),
    (lambda p: optim.AdamW(p, eps=-1e-8), r"AdamW: eps must be >= 0"),
    (lambda p: optim.AdamW(p, weight_decay=-1), r"AdamW: weight_decay must be >= 0"),
    (lambda p: optim.SGD(p, lr=-1), r"SGD: lr must be >= 0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), r"SGD: momentum must be >= 0"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), r"SGD: nesterov=True needs momentum > 0"),
    (lambda p: optim.SGD([{"params": p, "lr": -2}], lr=0.1), r"SGD: lr must be >= 0, got -2"),
    (lambda p: optim.CosineWarmupScheduler(optim.SGD(p, lr=0.1), 20, 10), r"warmup_steps must be"),
    (lambda p: optim.CosineWarmupScheduler(optim.SGD(p, lr=0.1), 0, 0), r"total_steps must be"),
    (lambda p: optim.clip_grad_norm_(p, -1.0), r"clip_grad_norm_: max_norm must be >= 0"),
])
def test_bad_hyper_parameters_name_the_argument(make, msg):
    with pytest.raises(ValueError, match=msg):
        make([param()])


def test_bad_types():
    with pytest.raises(TypeError, match="lr must be a number"):
        optim.AdamW([param()], lr="0.1")
    with pytest.raises(TypeError, match="iterable of Parameters"):
        optim.SGD(param(), lr=0.1)
    with pytest.raises(TypeError, match="can only optimize"):
        optim.SGD([np.zeros(3)], lr=0.1)


def test_optimizer_on_a_model_reduces_a_quadratic():
    minivit.manual_seed(0)
    p = nn.Parameter(np.full(5, 3.0))
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.0)
    for _ in range(200):
        loss = (p * p).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.abs(p.data).max() < 0.1
