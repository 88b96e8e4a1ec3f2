"""The engine's behaviour as a training loop sees it (needs nn and optim):
gradient accumulation and zero_grad, shared sub-graphs, deep graphs,
no_grad, graph release, backward on non-scalars, no memory growth over many
steps, and a loss that falls."""
import gc
import tracemalloc

import numpy as np
import pytest

import minivit
from minivit import functional as F, nn, optim
from minivit.tensor import Tensor


def leaf(*values):
    return Tensor(np.array(values, dtype=np.float64), requires_grad=True)


# ------------------------------------------------------------------ accumulation
def test_backward_twice_accumulates_and_zero_grad_clears():
    lin = nn.Linear(3, 2).to(np.float64)
    x = Tensor(np.random.default_rng(0).standard_normal((4, 3)))
    lin(x).sum().backward()
    g1 = lin.weight.grad.copy()
    np.testing.assert_allclose(g1, np.ones((4, 2)).T @ x.data)        # d sum(x W^T) / dW
    lin(x).sum().backward()                                            # a new graph, same leaves
    np.testing.assert_allclose(lin.weight.grad, 2 * g1)
    lin.zero_grad()
    assert lin.weight.grad is None and lin.bias.grad is None
    lin(x).sum().backward()
    np.testing.assert_allclose(lin.weight.grad, g1)
    opt = optim.SGD(lin.parameters(), lr=0.1)
    opt.zero_grad()
    assert all(p.grad is None for p in lin.parameters())


def test_diamond_graph_with_reused_non_leaf():
    a = leaf(1.5, -2.0, 0.5)
    b = a * 2                       # non-leaf, used three times below
    c = b * b + b * 3 + b.exp()
    c.sum().backward()
    bv = 2 * a.data
    np.testing.assert_allclose(a.grad, (2 * bv + 3 + np.exp(bv)) * 2)
    assert b.grad is None           # non-leaves keep no .grad


def test_same_leaf_on_both_sides_and_through_two_branches():
    x = leaf(3.0)
    y = x * x                       # dy/dx = 2x
    z = (y + x) * (y - x)           # = x^4 - x^2 -> 4x^3 - 2x
    z.backward()
    np.testing.assert_allclose(x.grad, 4 * 27 - 6)


def test_ten_thousand_op_chain():
    x = leaf(1.0)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()                    # iterative topological sort: no RecursionError
    np.testing.assert_allclose(x.grad, [1.0001 ** 10_000], rtol=1e-9)
    z = x
    for _ in range(10_000):
        z = z + 0.5
    z.backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 10_000 + 1], rtol=1e-9)


# ------------------------------------------------------------------ no_grad and graph release
def test_no_grad_records_nothing():
    m = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 1))
    x = Tensor(np.ones((2, 3), np.float32))
    with minivit.no_grad():
        y = m(x)
        z = y * 2 + m[0].weight.sum()
    for t in (y, z):
        assert not t.requires_grad and t._parents == () and t._backward is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        z.sum().backward()
    assert m(x).requires_grad        # recording is back on after the block


def test_graph_is_released_after_backward():
    a = leaf(1.0, 2.0)
    loss = (a * a).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()
    b = leaf(1.0, 2.0)
    loss = (b * b).sum()
    loss.backward(retain_graph=True)
    loss.backward()                  # allowed once more, and accumulates
    np.testing.assert_allclose(b.grad, 2 * 2 * b.data)


def test_backward_on_non_scalar_needs_grad():
    a = leaf(1.0, 2.0, 3.0)
    y = a * 2
    with pytest.raises(RuntimeError, match=r"one-element tensor .*shape \(3,\)"):
        y.backward()
    y.backward(np.array([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(a.grad, [2.0, 0.0, 4.0])


def test_leaf_grads_are_separate_writable_arrays():
    # each leaf owns its .grad: an optimizer or clip_grad_norm_ may change one in place
    a, b = leaf(1.0, 2.0), leaf(3.0, 4.0)
    (a + b).sum().backward()
    assert a.grad is not b.grad and not np.shares_memory(a.grad, b.grad)
    c = leaf(1.0, 2.0)
    c.sum().backward()                      # the gradient of a sum is a broadcast view ...
    assert a.grad.flags.writeable and c.grad.flags.writeable    # ... but .grad is a copy


# ------------------------------------------------------------------ training loops
def tiny_mlp():
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4))


def fixed_batch(n=32):
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((n, 8)).astype(np.float32))
    y = rng.integers(0, 4, n)
    return x, y


def train_steps(model, opt, x, y, steps):
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    return float(loss.item())


def live_tensors():
    gc.collect()
    return sum(isinstance(o, Tensor) for o in gc.get_objects())


def test_memory_does_not_grow_over_a_thousand_steps():
    model = tiny_mlp()
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    x, y = fixed_batch()
    train_steps(model, opt, x, y, 20)          # warm-up: optimizer state and scratch allocated
    n_before = live_tensors()
    tracemalloc.start()
    try:
        train_steps(model, opt, x, y, 20)
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        train_steps(model, opt, x, y, 1000)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n_after = live_tensors()
    # one leaked activation per step would be >= 1000 * 32 * 32 * 4 bytes = 4 MB
    assert after - before < 256 * 1024, f"memory grew by {(after - before) / 1024:.0f} KiB"
    assert n_after <= n_before + 5, f"live Tensors went from {n_before} to {n_after}"


def test_tiny_mlp_loss_falls_on_a_fixed_batch():
    minivit.manual_seed(0)
    model = tiny_mlp()
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    x, y = fixed_batch()
    with minivit.no_grad():
        first = float(F.cross_entropy(model(x), y).item())
    last = train_steps(model, opt, x, y, 150)
    assert last < 0.2 * first, (first, last)
    assert (model(x).data.argmax(-1) == y).mean() > 0.9


def test_transformer_block_loss_falls_with_schedule_and_sgd():
    minivit.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.attn = nn.Attention(8, 2, qkv_bias=True)
            self.mlp = nn.Mlp(8, 16, drop=0.1)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            x = x + self.attn(self.norm(x))
            x = x + self.mlp(x)
            return self.head(x.mean(1))

    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((24, 5, 8)).astype(np.float32))
    y = rng.integers(0, 3, 24)
    model = Net()
    opt = optim.SGD(optim.param_groups_weight_decay(model, 1e-4), lr=0.05, momentum=0.9, nesterov=True)
    sched = optim.CosineWarmupScheduler(opt, warmup_steps=10, total_steps=150)
    losses = []
    for _ in range(150):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
    model.eval()
    final = float(F.cross_entropy(model(x), y).item())
    assert final < 0.3 * losses[0], (losses[0], final)
    assert all(p.dtype == np.float32 for p in model.parameters())
