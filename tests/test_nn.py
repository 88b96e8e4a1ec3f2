"""minivit.nn: parameter discovery and names, state dicts, buffers, modes,
dtype conversion, repr, gradchecks of every layer, Attention against a slow
per-head loop, and the error messages."""
import math
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit import functional as F, init, nn
from minivit.gradcheck import gradcheck
from minivit.tensor import Tensor


def randn(*shape, dtype=np.float32, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


class Block(nn.Module):
    """A ViT-style block, to test names the way the paper files use them."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Attention(dim, heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Mlp(dim, 2 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Tiny(nn.Module):
    def __init__(self, dim=8, depth=2, in_chans=1):
        super().__init__()
        self.patch = nn.Conv2d(in_chans, dim, 2, stride=2)
        self.bn = nn.BatchNorm2d(dim)
        self.cls_token = nn.Parameter(np.zeros((1, 1, dim)))
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 3))
        self.register_buffer("table", np.arange(4), persistent=False)

    def forward(self, x):
        x = self.bn(self.patch(x))                       # (B, C, H/2, W/2)
        x = x.flatten(2).transpose(1, 2)                 # (B, N, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = F.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x[:, 0])


# ------------------------------------------------------------------ discovery and names
def test_parameter_basics():
    p = nn.Parameter(np.zeros((2, 3)))
    assert p.requires_grad and p.dtype == np.float32 and isinstance(p, Tensor)
    assert nn.Parameter([1, 2]).dtype == np.float32
    assert nn.Parameter(np.zeros(2), dtype=np.float64).dtype == np.float64
    assert not nn.Parameter(np.zeros(2), requires_grad=False).requires_grad
    assert "Parameter containing" in repr(p)


def test_nested_names_in_registration_order():
    m = Tiny(depth=2)
    names = [n for n, _ in m.named_parameters()]
    assert names[:5] == ["cls_token", "patch.weight", "patch.bias", "bn.weight", "bn.bias"]
    assert names[5:17] == [f"blocks.0.{k}" for k in (
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
        "mlp.fc2.weight", "mlp.fc2.bias")]
    assert names[-4:] == ["head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"]
    assert len(list(m.parameters())) == len(names) == 5 + 2 * 12 + 4
    assert [n for n, _ in m.named_children()] == ["patch", "bn", "blocks", "head"]
    mods = dict(m.named_modules())
    assert mods[""] is m and mods["blocks.1.attn.qkv"] is m.blocks[1].attn.qkv
    assert isinstance(mods["blocks.0.mlp.act"], nn.GELU)
    assert dict(m.named_buffers()).keys() == {"bn.running_mean", "bn.running_var",
                                              "bn.num_batches_tracked", "table"}


def test_mlp_and_attention_keys_match_timm():
    assert list(nn.Mlp(4, 8).state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    sd = nn.Attention(6, 3, qkv_bias=True).state_dict()
    assert {k: v.shape for k, v in sd.items()} == {
        "qkv.weight": (18, 6), "qkv.bias": (18,), "proj.weight": (6, 6), "proj.bias": (6,)}
    assert list(nn.Attention(6, 3).state_dict()) == ["qkv.weight", "proj.weight", "proj.bias"]


def test_shared_parameter_listed_once_and_reassignment():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = self.a                                # tied
            self.w = nn.Parameter(np.ones(2))
    m = M()
    assert [n for n, _ in m.named_parameters()] == ["w", "a.weight", "a.bias"]   # own first, as torch
    m.w = nn.Parameter(np.zeros(3))                        # replace a parameter
    assert m.w.shape == (3,) and len(list(m.parameters())) == 3
    with pytest.raises(TypeError, match="cannot assign a ndarray to parameter 'w'"):
        m.w = np.zeros(3)
    with pytest.raises(TypeError, match="sub-module 'a'"):
        m.a = 3
    m.a = None                                             # allowed, as in torch
    assert [n for n, _ in m.named_parameters()] == ["w", "b.weight", "b.bias"]
    del m.w
    assert [n for n, _ in m.named_parameters()] == ["b.weight", "b.bias"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m.nope


def test_forgetting_super_init_is_explained():
    class Bad(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)
    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Bad()


def test_buffers_persistent_and_not():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("saved", np.ones(3, np.float32))
            self.register_buffer("index", np.arange(4), persistent=False)
            self.fc = nn.Linear(2, 2)
    m = M()
    assert isinstance(m.saved, np.ndarray) and m.index.dtype.kind == "i"
    assert list(m.state_dict()) == ["saved", "fc.weight", "fc.bias"]
    assert [n for n, _ in m.named_buffers()] == ["saved", "index"]
    assert len(list(m.parameters())) == 2                  # buffers are not parameters
    m.saved = np.zeros(3)                                  # reassigning keeps it a buffer
    assert "saved" in m.state_dict() and np.all(m.state_dict()["saved"] == 0)
    with pytest.raises(TypeError, match="plain ndarrays"):
        m.register_buffer("t", Tensor(np.zeros(2)))
    with pytest.raises(KeyError, match="already a parameter or sub-module"):
        m.register_buffer("fc", np.zeros(2))


def test_num_params_counts_parameters_not_buffers():
    assert nn.Linear(3, 4).num_params() == 16
    assert nn.BatchNorm2d(4).num_params() == 8                      # running stats not counted
    assert nn.Linear(3, 4, bias=False).num_params() == 12
    assert nn.Conv2d(3, 8, 3, groups=1).num_params() == 8 * 3 * 9 + 8
    assert nn.LayerNorm(5).num_params() == 10
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    m[0].requires_grad_(False)                                      # frozen params still count
    assert m.num_params() == 16 + 8 and m.num_params(trainable_only=True) == 8
    # timm's Attention + Mlp of a ViT-Ti block: 4 * 192 * 192 + ... (PAPERS.md 2: 5,717,416 in all)
    assert nn.Attention(192, 3, qkv_bias=True).num_params() == 192 * 576 + 576 + 192 * 192 + 192
    assert nn.Mlp(192, 768).num_params() == 192 * 768 + 768 + 768 * 192 + 192


# ------------------------------------------------------------------ state dict
def test_state_dict_round_trip_gives_identical_outputs():
    x = randn(2, 1, 4, 4, seed=1)
    minivit.manual_seed(0)
    a = Tiny()
    a(x)                                                   # train mode: moves BN running stats
    minivit.manual_seed(1)
    b = Tiny()
    a.eval(), b.eval()
    assert not np.allclose(a(x).data, b(x).data)
    sd = a.state_dict()
    assert "table" not in sd and sd["bn.num_batches_tracked"] == 1
    assert not np.allclose(sd["bn.running_mean"], 0)
    result = b.load_state_dict(sd)
    assert result == ([], []) and result.missing_keys == []
    np.testing.assert_array_equal(a(x).data, b(x).data)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


def test_state_dict_holds_copies_and_load_copies_in_place():
    m = nn.Linear(2, 3)
    sd = m.state_dict()
    sd["weight"][...] = 7
    assert not np.any(m.weight.data == 7)
    w = m.weight.data
    m.load_state_dict(sd)
    assert m.weight.data is w and np.all(w == 7)          # same array, new values
    sd["weight"][...] = 9
    assert np.all(w == 7)


def test_strict_load_lists_missing_unexpected_and_misshaped_by_name():
    m = Tiny()
    sd = m.state_dict()
    before = m.state_dict()
    del sd["head.1.bias"], sd["blocks.0.mlp.fc1.weight"]
    sd["fc.weight"] = np.zeros(3)
    sd["cls_token"] = np.zeros((1, 1, 9))
    sd["patch.weight"] = sd["patch.weight"] + 1            # a good key: must not be loaded either
    with pytest.raises(KeyError) as e:
        m.load_state_dict(sd)
    msg = str(e.value)
    assert "missing keys (2): 'blocks.0.mlp.fc1.weight', 'head.1.bias'" in msg
    assert "unexpected keys (1): 'fc.weight'" in msg
    assert "'cls_token': checkpoint (1, 1, 9) vs model (1, 1, 8)" in msg
    assert isinstance(e.value, ValueError)                 # also a ValueError
    assert e.value.missing_keys == ["blocks.0.mlp.fc1.weight", "head.1.bias"]
    assert e.value.mismatched_keys == [("cls_token", (1, 1, 9), (1, 1, 8))]
    for k, v in m.state_dict().items():                    # nothing was copied
        np.testing.assert_array_equal(v, before[k])


def test_shape_mismatch_alone_is_a_value_error():
    m = nn.Linear(2, 3)
    with pytest.raises(ValueError, match=r"'weight': checkpoint \(3, 3\) vs model \(3, 2\)"):
        m.load_state_dict({"weight": np.zeros((3, 3)), "bias": np.zeros(3)})


def test_non_strict_load_returns_the_lists_and_loads_the_rest():
    m = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    sd = {"0.weight": np.ones((3, 2)), "extra.weight": np.zeros(1)}
    result = m.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["0.bias", "1.weight", "1.bias"]
    assert result.unexpected_keys == ["extra.weight"]
    assert np.all(m[0].weight.data == 1)
    with pytest.raises(ValueError, match="shape mismatches"):   # still an error with strict=False
        m.load_state_dict({"0.weight": np.ones((2, 2))}, strict=False)


def test_load_casts_to_the_module_dtype():
    m = nn.Linear(2, 3)
    m.load_state_dict({"weight": np.ones((3, 2), np.float64), "bias": Tensor(np.ones(3))})
    assert m.weight.dtype == np.float32 and m.bias.dtype == np.float32
    bn = nn.BatchNorm2d(2)
    bn.load_state_dict({k: np.asarray(v, np.float64) for k, v in bn.state_dict().items()})
    assert bn.num_batches_tracked.dtype == np.int64


@settings(max_examples=10)
@given(dims=st.lists(st.integers(1, 5), min_size=2, max_size=4), seed=st.integers(0, 100))
def test_state_dict_round_trip_random_mlps(dims, seed):
    def make(s):
        minivit.manual_seed(s)
        return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(dims, dims[1:])])
    a, b = make(seed), make(seed + 1)
    b.load_state_dict(a.state_dict())
    x = randn(3, dims[0], seed=seed)
    np.testing.assert_array_equal(a(x).data, b(x).data)


# ------------------------------------------------------------------ modes, grads, dtype, apply
def test_train_eval_switch_dropout():
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    x = Tensor(np.ones((50, 4), np.float32))
    assert m.training and m[1].training
    y_eval = m.eval()(x).data
    assert not m[1].training
    np.testing.assert_array_equal(y_eval, m[0](x).data)        # identity in eval
    m.train()
    y = m(x).data
    dropped = (y == 0).mean()
    assert 0.3 < dropped < 0.7
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2 * m[0](x).data[kept], rtol=1e-6)   # scaled by 1/(1-p)


def test_train_eval_switch_batch_norm():
    bn = nn.BatchNorm2d(3)
    x = Tensor((np.random.default_rng(0).standard_normal((8, 3, 4, 4)) * 2 + 5).astype(np.float32))
    y = bn(x).data
    # training: batch statistics (biased variance) ...
    mu, var = x.data.mean((0, 2, 3)), x.data.var((0, 2, 3))
    np.testing.assert_allclose(y, (x.data - mu[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5),
                               rtol=1e-4, atol=1e-4)
    # ... and the running statistics move (unbiased variance, momentum 0.1)
    n = 8 * 4 * 4
    np.testing.assert_allclose(bn.running_mean, 0.1 * mu, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    assert bn.num_batches_tracked == 1 and bn.num_batches_tracked.dtype == np.int64
    rm = bn.running_mean.copy()
    bn.eval()
    y = bn(x).data
    np.testing.assert_allclose(y, (x.data - rm[:, None, None]) / np.sqrt(bn.running_var[:, None, None] + 1e-5),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.running_mean, rm)      # eval does not update
    assert bn.num_batches_tracked == 1


def test_batch_norm_cumulative_average_when_momentum_is_none():
    bn = nn.BatchNorm1d(2, momentum=None)
    xs = [randn(6, 2, seed=s) for s in range(3)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_mean, np.mean([x.data.mean(0) for x in xs], axis=0), rtol=1e-5)


def test_zero_grad_and_requires_grad():
    m = nn.Linear(3, 2)
    m(randn(4, 3)).sum().backward()
    assert m.weight.grad is not None
    m.zero_grad()
    assert m.weight.grad is None and m.bias.grad is None
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())


def test_to_float64_converts_parameters_grads_and_float_buffers():
    m = Tiny()
    m(randn(2, 1, 4, 4)).sum().backward()
    params = list(m.parameters())
    assert m.to(np.float64) is m
    assert [id(p) for p in m.parameters()] == [id(p) for p in params]    # same Parameter objects
    assert all(p.dtype == np.float64 and p.grad.dtype == np.float64 for p in m.parameters())
    assert m.bn.running_mean.dtype == np.float64 and m.bn.running_var.dtype == np.float64
    assert m.bn.num_batches_tracked.dtype == np.int64 and m.table.dtype.kind == "i"
    assert m(randn(2, 1, 4, 4, dtype=np.float64)).dtype == np.float64
    m.to(np.float32)
    assert m(randn(2, 1, 4, 4)).dtype == np.float32
    with pytest.raises(TypeError, match="floating-point dtype"):
        m.to(np.int32)


def test_apply_visits_every_module():
    m = Tiny()
    seen = []

    def zero_linear(mod):
        seen.append(type(mod).__name__)
        if isinstance(mod, nn.Linear):
            init.zeros_(mod.weight)
    assert m.apply(zero_linear) is m
    assert seen[-1] == "Tiny" and seen.count("Linear") == 2 * 4 + 1
    assert all(np.all(mod.weight.data == 0) for mod in m.modules() if isinstance(mod, nn.Linear))


def test_repr_shows_layers_configs_and_shapes():
    r = repr(Tiny())
    assert r.startswith("Tiny(\n")
    assert "(cls_token): Parameter(1, 1, 8)" in r
    assert "(qkv): Linear(in_features=8, out_features=24, bias=True)" in r
    assert "(patch): Conv2d(1, 8, kernel_size=(2, 2), stride=(2, 2))" in r
    assert "(bn): BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True)" in r
    assert "(0): LayerNorm((8,), eps=1e-05, elementwise_affine=True)" in r
    assert "dim=8, num_heads=2, head_dim=4" in r
    assert "(fc1): Linear(in_features=8, out_features=16, bias=True)" in r
    assert repr(nn.Linear(64, 128)) == "Linear(in_features=64, out_features=128, bias=True)"
    assert repr(nn.ReLU()) == "ReLU()"


def test_call_without_forward():
    with pytest.raises(NotImplementedError, match="Module must define forward"):
        nn.Module()(1)


# ------------------------------------------------------------------ containers
def test_sequential_indexing_and_forward():
    s = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(s) == 3 and isinstance(s[-1], nn.Linear) and isinstance(s[1], nn.ReLU)
    assert [type(m).__name__ for m in s] == ["Linear", "ReLU", "Linear"]
    assert isinstance(s[:2], nn.Sequential) and len(s[:2]) == 2 and s[:2][0] is s[0]
    x = randn(4, 2)
    np.testing.assert_array_equal(s(x).data, s[2](F.relu(s[0](x))).data)
    s.append(nn.Identity())
    assert [n for n, _ in s.named_children()] == ["0", "1", "2", "3"]
    named = nn.Sequential(OrderedDict(fc=nn.Linear(2, 2), act=nn.GELU()))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"]
    with pytest.raises(IndexError, match="out of range"):
        s[4]


def test_module_list():
    ml = nn.ModuleList([nn.Linear(2, 2)])
    ml.append(nn.ReLU()).extend([nn.Identity()])
    assert len(ml) == 3 and isinstance(ml[1], nn.ReLU) and isinstance(ml[-1], nn.Identity)
    assert [type(m).__name__ for m in ml] == ["Linear", "ReLU", "Identity"]
    ml[1] = nn.GELU()
    assert isinstance(ml[1], nn.GELU) and [n for n, _ in ml.named_children()] == ["0", "1", "2"]
    assert isinstance(ml[1:], nn.ModuleList) and len(ml[1:]) == 2
    with pytest.raises(IndexError, match="ModuleList index 3 is out of range"):
        ml[3]


# ------------------------------------------------------------------ gradchecks of every layer
def gradcheck_layer(layer, *inputs, seed_each_call=None, **kw):
    layer.to(np.float64)
    xs = [Tensor(np.asarray(x.data, np.float64), requires_grad=True) for x in inputs]

    def fn(*a):
        if seed_each_call is not None:            # dropout / drop-path: the same mask every call
            minivit.manual_seed(seed_each_call)
        return layer(*a)
    return gradcheck(fn, xs, params=list(layer.parameters()), **kw)


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Linear(5, 3), (2, 4, 5)),
    (lambda: nn.Linear(5, 3, bias=False), (4, 5)),
    (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1), (2, 2, 5, 5)),
    (lambda: nn.Conv2d(4, 4, (3, 1), groups=2, dilation=(1, 2)), (1, 4, 5, 6)),
    (lambda: nn.LayerNorm(6), (3, 4, 6)),
    (lambda: nn.LayerNorm((2, 3), eps=1e-6), (4, 2, 3)),
    (lambda: nn.BatchNorm2d(3), (4, 3, 2, 2)),
    (lambda: nn.BatchNorm2d(3).eval(), (4, 3, 2, 2)),
    (lambda: nn.BatchNorm1d(3), (5, 3)),
    (lambda: nn.GELU(), (3, 7)),
    (lambda: nn.GELU("tanh"), (3, 7)),
    (lambda: nn.Tanh(), (3, 7)),
    (lambda: nn.Sigmoid(), (3, 7)),
    (lambda: nn.Softmax(dim=1), (3, 7)),
    (lambda: nn.Identity(), (3, 7)),
    (lambda: nn.Flatten(), (2, 3, 2, 2)),
    (lambda: nn.MaxPool2d(2), (2, 2, 4, 4)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 2, 5, 5)),
    (lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 4, 4)),
    (lambda: nn.AdaptiveAvgPool2d((2, 3)), (1, 2, 5, 7)),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 2)), (3, 4)),
    (lambda: nn.Mlp(4, 8, out_features=3), (2, 5, 4)),
    (lambda: nn.Mlp(4, act_layer=nn.ReLU), (2, 5, 4)),
], ids=lambda v: None if callable(v) else str(v))
def test_gradcheck_layers(make, shape):
    gradcheck_layer(make(), randn(*shape, dtype=np.float64, seed=3))


def test_gradcheck_relu_away_from_the_kink():
    x = randn(4, 5, dtype=np.float64)
    x.data += np.sign(x.data) * 0.1
    gradcheck_layer(nn.ReLU(), x)


@pytest.mark.parametrize("make", [lambda: nn.Dropout(0.3), lambda: nn.DropPath(0.5),
                                  lambda: nn.Mlp(4, 8, drop=0.2)])
def test_gradcheck_random_layers_in_training(make):
    gradcheck_layer(make(), randn(6, 3, 4, dtype=np.float64), seed_each_call=7)


@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_gradcheck_attention(mask):
    B, N, C, H = 2, 5, 8, 2
    rng = np.random.default_rng(0)
    m = None
    if mask == "bool":
        m = rng.random((B, 1, N, N)) < 0.7
        m[..., 0] = True                                   # every query sees at least one key
    elif mask == "float":
        m = rng.standard_normal((H, N, N))                 # like a relative position bias
    attn = nn.Attention(C, H, qkv_bias=True)
    gradcheck_layer(attn, randn(B, N, C, dtype=np.float64), max_checks=60) if m is None else \
        gradcheck(lambda x: attn.to(np.float64)(x, attn_mask=m), [randn(B, N, C, dtype=np.float64)],
                  params=list(attn.to(np.float64).parameters()), max_checks=60)


def test_gradcheck_attention_block_with_droppath_and_attn_drop():
    blk = Block(8, 2)
    blk.attn = nn.Attention(8, 2, qkv_bias=True, attn_drop=0.3, proj_drop=0.2)
    gradcheck_layer(blk, randn(3, 4, 8, dtype=np.float64), seed_each_call=1, max_checks=40)


# ------------------------------------------------------------------ Attention vs a slow loop
def slow_attention(x, attn, mask=None):
    """Per batch item, per head, per query: the textbook formula with explicit loops."""
    B, N, C = x.shape
    H, d = attn.num_heads, attn.head_dim
    Wqkv = attn.qkv.weight.data.astype(np.float64)
    bqkv = attn.qkv.bias.data if attn.qkv.bias is not None else np.zeros(3 * C)
    out = np.zeros((B, N, C))
    weights = np.zeros((B, H, N, N))
    for b in range(B):
        qkv = x[b] @ Wqkv.T + bqkv                         # (N, 3C): [q heads | k heads | v heads]
        for h in range(H):
            q = qkv[:, h * d:(h + 1) * d]
            k = qkv[:, C + h * d:C + (h + 1) * d]
            v = qkv[:, 2 * C + h * d:2 * C + (h + 1) * d]
            for i in range(N):
                logits = np.array([q[i] @ k[j] * attn.scale for j in range(N)])
                if mask is not None:
                    logits = np.where(mask[b, 0, i], logits, -np.inf)
                p = np.exp(logits - logits.max())
                p /= p.sum()
                weights[b, h, i] = p
                out[b, i, h * d:(h + 1) * d] = sum(p[j] * v[j] for j in range(N))
    out = out @ attn.proj.weight.data.T.astype(np.float64) + attn.proj.bias.data
    return out, weights


@settings(max_examples=15)
@given(B=st.integers(1, 3), N=st.integers(1, 6), H=st.integers(1, 3), d=st.integers(1, 4),
       qkv_bias=st.booleans(), masked=st.booleans(), seed=st.integers(0, 1000))
def test_attention_equals_slow_per_head_loop(B, N, H, d, qkv_bias, masked, seed):
    minivit.manual_seed(seed)
    attn = nn.Attention(H * d, H, qkv_bias=qkv_bias).to(np.float64)
    x = randn(B, N, H * d, dtype=np.float64, seed=seed)
    mask = None
    if masked:
        mask = np.random.default_rng(seed).random((B, 1, N, N)) < 0.6
        mask[..., 0] = True
    out, w = attn(x, attn_mask=mask, return_attention=True)
    ref_out, ref_w = slow_attention(x.data, attn, mask)
    np.testing.assert_allclose(out.data, ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w, ref_w, rtol=1e-10, atol=1e-12)


def test_attention_weights_and_custom_scale():
    attn = nn.Attention(8, 4, scale=1.0)
    x = randn(2, 5, 8)
    out, w = attn(x, return_attention=True)
    assert isinstance(w, np.ndarray) and w.shape == (2, 4, 5, 5) and out.shape == (2, 5, 8)
    np.testing.assert_allclose(w.sum(-1), 1, rtol=1e-5)
    assert attn.scale == 1.0 and nn.Attention(8, 2).scale == pytest.approx(0.5)
    assert out.dtype == np.float32


def test_attention_dropout_only_in_training():
    attn = nn.Attention(8, 2, attn_drop=0.5)
    x = randn(2, 6, 8)
    attn.eval()
    np.testing.assert_array_equal(attn(x).data, attn(x).data)
    attn.train()
    assert not np.allclose(attn(x).data, attn(x).data)


# ------------------------------------------------------------------ error messages
def test_shape_error_messages():
    with pytest.raises(ValueError, match=r"^Attention: dim=64 is not divisible by num_heads=5$"):
        nn.Attention(64, 5)
    with pytest.raises(ValueError, match=r"^Attention: expected x of shape \(B, N, 64\), got \(8, 50, 32\)$"):
        nn.Attention(64, 4)(Tensor(np.zeros((8, 50, 32), np.float32)))
    with pytest.raises(ValueError, match=r"Attention: expected x of shape \(B, N, 64\), got \(50, 64\)"):
        nn.Attention(64, 4)(Tensor(np.zeros((50, 64), np.float32)))
    with pytest.raises(ValueError, match=r"^Mlp: expected x of shape \(\.\.\., 64\), got \(8, 50, 32\)$"):
        nn.Mlp(64)(Tensor(np.zeros((8, 50, 32), np.float32)))
    with pytest.raises(ValueError, match=r"Linear: expected x of shape \(\.\.\., 3\), got \(2, 4\)"):
        nn.Linear(3, 2)(randn(2, 4))
    with pytest.raises(ValueError, match=r"Conv2d: expected x of shape \(B, 3, H, W\), got \(8, 1, 28, 28\)"):
        nn.Conv2d(3, 4, 3)(randn(8, 1, 28, 28))
    with pytest.raises(ValueError, match=r"LayerNorm: expected x of shape \(\.\.\., 6\), got \(2, 5\)"):
        nn.LayerNorm(6)(randn(2, 5))
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected x of shape \(B, 4, H, W\), got \(2, 4\)"):
        nn.BatchNorm2d(4)(randn(2, 4))


def test_constructor_argument_errors():
    with pytest.raises(ValueError, match="Conv2d: in_channels=3 and out_channels=4 must both be divisible by groups=2"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        nn.Conv2d(3, 4, 0)
    with pytest.raises(ValueError, match=r"Dropout: p must be in \[0.0, 1.0\], got 1.5"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="DropPath: drop_prob"):
        nn.DropPath(-0.1)
    with pytest.raises(ValueError, match="GELU: approximate must be 'none' or 'tanh'"):
        nn.GELU("erf")
    with pytest.raises(ValueError, match="Linear: in_features and out_features must be positive"):
        nn.Linear(0, 3)


def test_layers_keep_float32():
    x = randn(2, 4, 4, 4)
    for layer in (nn.Conv2d(4, 2, 3, padding=1), nn.BatchNorm2d(4), nn.LayerNorm(4), nn.Mlp(4),
                  nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.DropPath(0.5), nn.Dropout(0.5), nn.GELU()):
        assert layer(x).dtype == np.float32, type(layer).__name__
    assert nn.Attention(4, 2)(randn(2, 3, 4)).dtype == np.float32
    assert math.isfinite(float(nn.Linear(4, 2)(randn(3, 4)).sum().item()))


def test_deepcopy_gives_an_independent_model():
    import copy
    m = Tiny()
    c = copy.deepcopy(m)                                    # e.g. an EMA model or a frozen teacher
    assert isinstance(c.cls_token, nn.Parameter) and c.cls_token is not m.cls_token
    init.ones_(c.cls_token)
    assert not np.any(m.cls_token.data == 1)
    assert list(c.state_dict()) == list(m.state_dict())


# ---------------------------------------------------------------- PatchDropout
def _patch_dropout_loop(x, prob, prefix, seed):
    """Slow oracle: redraw the layer's uniforms, keep each sample's prefix rows,
    then its `keep` patch rows with the smallest draws, smallest first."""
    B, T, _ = x.shape
    keep = max(1, int((T - prefix) * (1 - prob)))
    u = minivit.manual_seed(seed).random((B, T - prefix), dtype=np.float32)
    out = []
    for b in range(B):
        chosen = sorted(range(T - prefix), key=lambda i: (u[b, i], i))[:keep]
        out.append(np.concatenate([x[b, :prefix], x[b, [prefix + i for i in chosen]]]))
    return np.stack(out)


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 4), T=st.integers(2, 9), prob=st.sampled_from([0.1, 0.25, 0.5, 0.9]),
       prefix=st.integers(0, 1), seed=st.integers(0, 2**16))
def test_patch_dropout_keeps_random_rows_like_a_loop_and_gradchecks(B, T, prob, prefix, seed):
    x = randn(B, T, 3, dtype=np.float64, seed=seed)
    layer = nn.PatchDropout(prob, num_prefix_tokens=prefix)
    minivit.manual_seed(seed)
    y = layer(x).data
    keep = max(1, int((T - prefix) * (1 - prob)))
    assert y.shape == (B, prefix + keep, 3)
    np.testing.assert_array_equal(y, _patch_dropout_loop(x.data, prob, prefix, seed))
    for b in range(B):                       # distinct rows of the sample's own patches
        rows = [int(np.flatnonzero((x.data[b] == r).all(1))[0]) for r in y[b, prefix:]]
        assert len(set(rows)) == keep and min(rows, default=prefix) >= prefix
    gradcheck_layer(layer, x, seed_each_call=seed)


def test_patch_dropout_is_the_identity_in_eval_and_at_zero_and_checks_its_args():
    x = randn(2, 5, 4)
    layer = nn.PatchDropout(0.5)
    assert layer.eval()(x) is x
    assert nn.PatchDropout(0.0)(x) is x
    assert layer.train()(x).shape == (2, 1 + 2, 4)
    np.testing.assert_array_equal(layer(x).data[:, 0], x.data[:, 0])      # the class token stays
    with pytest.raises(ValueError, match=r"PatchDropout: prob must be in \[0, 1\), got 1.0"):
        nn.PatchDropout(1.0)
    with pytest.raises(ValueError, match=r"PatchDropout: expected x of shape \(B, tokens, D\), got"):
        layer(randn(2, 5))
