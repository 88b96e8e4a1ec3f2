"""CeiT: I2T, LeFF (against a slow five-step loop), the class-token bypass, LCA
(against an explicit single-query attention), BatchNorm train/eval, gradcheck,
learning, configs and errors."""
import math

import numpy as np
import pytest

import minivit
from minivit import functional as F
from minivit import models, nn
from minivit.models.ceit import LCA, CeiT, LeFF


def tiny(**kw):
    """12x12x1 images -> stem 6x6 -> max-pool 3x3 grid: 9 patch tokens, dim 8."""
    cfg = dict(img_size=12, patch_size=1, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2,
               mlp_ratio=2.0, stem_chans=4)
    cfg.update(kw)
    return CeiT(**cfg)


def randomise_bn(module, rng):
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            C = m.num_features
            m.weight.data[...] = rng.uniform(0.5, 1.5, C)
            m.bias.data[...] = rng.standard_normal(C) * 0.1
            m.running_mean[...] = rng.standard_normal(C) * 0.1
            m.running_var[...] = rng.uniform(0.5, 2.0, C)


# ---------------------------------------------------------------- configs and names
def test_registry_and_param_counts():
    assert models.list_models("ceit_*") == ["ceit_fmnist", "ceit_tiny"]
    assert models.create("ceit_tiny").num_params() == 6_356_904          # PAPERS.md 6 (CeiT-T)
    assert models.create("ceit_fmnist").num_params() == 253_994


def test_state_dict_names_and_shapes_follow_the_official_code():
    sd = models.create("ceit_tiny").state_dict()
    expected = {
        "i2t.backbone.conv.weight": (64, 3, 7, 7), "i2t.backbone.bn.running_var": (64,),
        "i2t.backbone.bn.num_batches_tracked": (), "i2t.proj.weight": (192, 64, 4, 4), "i2t.proj.bias": (192,),
        "cls_token": (1, 1, 192), "pos_embed": (1, 197, 192), "blocks.0.attn.qkv.weight": (576, 192),
        "blocks.0.attn.qkv.bias": (576,), "blocks.11.attn.proj.weight": (192, 192),
        "blocks.0.leff.conv1.weight": (768, 192, 1, 1), "blocks.0.leff.conv1.bias": (768,),
        "blocks.0.leff.conv2.weight": (768, 1, 3, 3), "blocks.0.leff.conv3.weight": (192, 768, 1, 1),
        "blocks.0.leff.bn1.weight": (768,), "blocks.0.leff.bn2.running_mean": (768,),
        "blocks.0.leff.bn3.bias": (192,), "lca.norm1.weight": (192,), "lca.attn.qkv.weight": (576, 192),
        "lca.attn.proj.bias": (192,), "lca.feedforward.fc1.weight": (768, 192),
        "lca.feedforward.fc2.weight": (192, 768), "pos_layer_embed": (1, 12, 192), "norm.weight": (192,),
        "head.weight": (1000, 192)}
    for k, shape in expected.items():
        assert sd[k].shape == shape, (k, sd[k].shape)
    assert not any(".mlp." in k for k in sd)                 # LeFF replaced every MLP
    m = models.create("ceit_tiny")
    assert not m.pos_layer_embed.data.any()                  # zero-initialised
    assert m.no_weight_decay() == {"pos_embed", "cls_token"}


def test_forward_shapes_attention_and_lca_weights():
    m = models.create("ceit_fmnist")
    x = minivit.tensor(np.random.randn(3, 1, 28, 28).astype(np.float32))
    out = m(x)
    assert out.shape == (3, 10) and out.dtype == np.float32
    assert m.i2t.grid_size == (7, 7) and m.i2t.num_patches == 49
    logits, attns = m(x, return_attention=True)
    assert len(attns) == 6 and attns[0].shape == (3, 4, 50, 50)
    np.testing.assert_allclose(logits.data, out.data, rtol=1e-4, atol=1e-5)
    w = m.lca_attention(x)
    assert w.shape == (3, 4, 6)
    np.testing.assert_allclose(w.sum(-1), 1, rtol=1e-5)


def test_i2t_stem_is_conv_bn_maxpool_without_relu():
    rng = np.random.default_rng(0)
    m = tiny().to(np.float64).eval()
    randomise_bn(m, rng)
    x = rng.standard_normal((2, 1, 12, 12))
    stem = m.i2t.backbone
    y = F.conv2d(minivit.tensor(x), stem.conv.weight, None, 2, 3).data
    y = (y - stem.bn.running_mean[:, None, None]) / np.sqrt(stem.bn.running_var[:, None, None] + 1e-5)
    y = y * stem.bn.weight.data[:, None, None] + stem.bn.bias.data[:, None, None]
    assert (y < 0).any()                                         # negatives survive: no ReLU
    yp = np.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    pooled = np.array([[[[yp[b, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max() for j in range(3)]
                         for i in range(3)] for c in range(4)] for b in range(2)])
    np.testing.assert_allclose(stem(minivit.tensor(x)).data, pooled, rtol=1e-12, atol=1e-12)
    tokens = m.i2t(minivit.tensor(x)).data                       # patch 1: one token per pixel, row-major
    ref = np.einsum("dc,bchw->bhwd", m.i2t.proj.weight.data[:, :, 0, 0], pooled) + m.i2t.proj.bias.data
    np.testing.assert_allclose(tokens, ref.reshape(2, 9, 8), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- LeFF: the five steps, slowly
def _gelu(a):
    return np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(a)


def _bn_slow(values, bn, training):
    """values: list of (C,) vectors, every position of the batch. Returns normalised list."""
    V = np.stack(values)                                         # (M, C)
    if training:
        mean = V.sum(0) / len(V)
        var = ((V - mean) ** 2).sum(0) / len(V)                  # biased, as BN normalises
    else:
        mean, var = bn.running_mean, bn.running_var
    return [(v - mean) / np.sqrt(var + bn.eps) * bn.weight.data + bn.bias.data for v in V]


def leff_slow(leff, x, grid, training):
    """The course's five steps with explicit loops and per-token reshapes (float64 NumPy)."""
    B, T, D = x.shape
    h, w = grid
    E, k = leff.hidden_features, leff.conv2.kernel_size[0]
    W1, b1 = leff.conv1.weight.data[:, :, 0, 0], leff.conv1.bias.data
    Wd, bd = leff.conv2.weight.data[:, 0], leff.conv2.bias.data
    W2, b2 = leff.conv3.weight.data[:, :, 0, 0], leff.conv3.bias.data
    # step 1: the patch tokens (the class token is row 0 and goes around)
    tokens = [[x[b, 1 + n] for n in range(h * w)] for b in range(B)]
    # step 2: up-projection of every token, BN over all tokens of the batch, GELU
    up = [W1 @ t + b1 for bt in tokens for t in bt]
    up = [_gelu(u) for u in _bn_slow(up, leff.bn1, training)]
    # step 3: token n goes back to row n // w, column n % w
    grid1 = np.zeros((B, E, h, w))
    for b in range(B):
        for n in range(h * w):
            grid1[b, :, n // w, n % w] = up[b * h * w + n]
    # step 4: depth-wise k x k convolution with zero padding, then BN over all pixels, GELU
    p = (k - 1) // 2
    grid2 = np.zeros_like(grid1)
    for b in range(B):
        for c in range(E):
            for i in range(h):
                for j in range(w):
                    s = bd[c]
                    for di in range(k):
                        for dj in range(k):
                            ii, jj = i + di - p, j + dj - p
                            if 0 <= ii < h and 0 <= jj < w:
                                s += Wd[c, di, dj] * grid1[b, c, ii, jj]
                    grid2[b, c, i, j] = s
    pixels = [grid2[b, :, i, j] for b in range(B) for i in range(h) for j in range(w)]
    pixels = [_gelu(v) for v in _bn_slow(pixels, leff.bn2, training)]
    # step 5: flatten row-major, down-projection, BN (no activation)
    down = [W2 @ v + b2 for v in pixels]
    down = _bn_slow(down, leff.bn3, training)
    out = np.zeros_like(x)
    out[:, 0] = x[:, 0]
    for b in range(B):
        for n in range(h * w):
            out[b, 1 + n] = down[b * h * w + n]
    return out


@pytest.mark.parametrize("grid", [(3, 3), (2, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_leff_equals_the_slow_five_step_loop(grid, training):
    rng = np.random.default_rng(1)
    leff = LeFF(4, 6).to(np.float64)
    randomise_bn(leff, rng)
    leff.train(training)
    x = rng.standard_normal((2, 1 + grid[0] * grid[1], 4))
    ref = leff_slow(leff, x, grid, training)
    out = leff(minivit.tensor(x), grid=grid if grid[0] != grid[1] else None)
    np.testing.assert_allclose(out.data, ref, rtol=1e-10, atol=1e-12)


def test_leff_running_statistics_follow_pytorch_rules():
    rng = np.random.default_rng(2)
    leff = LeFF(4, 6).to(np.float64)
    x = rng.standard_normal((2, 10, 4))
    leff(minivit.tensor(x))
    up = x[:, 1:].reshape(-1, 4) @ leff.conv1.weight.data[:, :, 0, 0].T + leff.conv1.bias.data   # (18, 6)
    np.testing.assert_allclose(leff.bn1.running_mean, 0.1 * up.mean(0), rtol=1e-6)
    np.testing.assert_allclose(leff.bn1.running_var, 0.9 + 0.1 * up.var(0, ddof=1), rtol=1e-6)
    for bn in (leff.bn1, leff.bn2, leff.bn3):
        assert int(bn.num_batches_tracked) == 1


def test_class_token_bypasses_the_convolution():
    rng = np.random.default_rng(3)
    leff = LeFF(4, 8).to(np.float64)
    x = rng.standard_normal((2, 10, 4))
    out = leff(minivit.tensor(x)).data
    np.testing.assert_array_equal(out[:, 0], x[:, 0])              # returned as it came in
    # changing the convolutions changes the patch tokens, never the class token
    for conv in (leff.conv1, leff.conv2, leff.conv3):
        conv.weight.data[...] = rng.standard_normal(conv.weight.shape)
    out2 = leff(minivit.tensor(x)).data
    np.testing.assert_array_equal(out2[:, 0], x[:, 0])
    assert not np.allclose(out2[:, 1:], out[:, 1:])
    # the patch tokens never see the class token
    x2 = x.copy()
    x2[:, 0] += 5.0
    np.testing.assert_allclose(leff(minivit.tensor(x2)).data[:, 1:], out2[:, 1:], rtol=1e-12, atol=1e-12)
    # the gradient through the class-token row is the identity
    xt = minivit.tensor(x, requires_grad=True)
    leff(xt)[:, 0].sum().backward()
    expected = np.zeros_like(x)
    expected[:, 0] = 1.0
    np.testing.assert_array_equal(xt.grad, expected)


def test_block_updates_the_class_token_by_its_normalised_self():
    """With the attention switched off, x_c <- x_c + LN2(x)_c exactly."""
    from minivit.models.ceit import Block
    blk = Block(8, 2, mlp_ratio=2.0).to(np.float64)
    blk.attn.proj.weight.data[...] = 0
    blk.attn.proj.bias.data[...] = 0
    x = np.random.default_rng(4).standard_normal((2, 10, 8))
    out = blk(minivit.tensor(x)).data
    ln = blk.norm2(minivit.tensor(x)).data
    np.testing.assert_allclose(out[:, 0], x[:, 0] + ln[:, 0], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- LCA
def test_lca_equals_an_explicit_single_query_attention():
    rng = np.random.default_rng(5)
    D, H, L, B = 8, 2, 4, 3
    lca = LCA(D, H, mlp_ratio=2.0).to(np.float64)
    for p in lca.parameters():
        p.data[...] = rng.standard_normal(p.shape) * 0.3
    xc = rng.standard_normal((B, L, D))
    z, attn = lca(minivit.tensor(xc), return_attention=True)
    d = D // H
    W, bqkv = lca.attn.qkv.weight.data, lca.attn.qkv.bias.data
    ln = lambda v, m: (v - v.mean()) / np.sqrt(v.var() + 1e-6) * m.weight.data + m.bias.data   # noqa: E731
    for b in range(B):
        u = [ln(xc[b, l], lca.norm1) for l in range(L)]
        q = W[:D] @ u[-1] + bqkv[:D]                              # only the last class token asks
        heads = []
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            scores = np.array([q[sl] @ (W[D:2 * D] @ u[l] + bqkv[D:2 * D])[sl] for l in range(L)]) / math.sqrt(d)
            a = np.exp(scores - scores.max())
            a /= a.sum()
            np.testing.assert_allclose(attn[b, h, 0], a, rtol=1e-10)
            heads.append(sum(a[l] * (W[2 * D:] @ u[l] + bqkv[2 * D:])[sl] for l in range(L)))
        zb = xc[b, -1] + lca.attn.proj.weight.data @ np.concatenate(heads) + lca.attn.proj.bias.data
        hid = _gelu(lca.feedforward.fc1.weight.data @ ln(zb, lca.norm2) + lca.feedforward.fc1.bias.data)
        zb = zb + lca.feedforward.fc2.weight.data @ hid + lca.feedforward.fc2.bias.data
        np.testing.assert_allclose(z.data[b, 0], zb, rtol=1e-10, atol=1e-12)


def test_lca_equals_the_last_row_of_a_full_self_attention_block():
    """The other revision of the official code: full attention over all class tokens, keep the last row."""
    rng = np.random.default_rng(6)
    lca = LCA(8, 2, mlp_ratio=2.0).to(np.float64)
    for p in lca.parameters():
        p.data[...] = rng.standard_normal(p.shape) * 0.3
    full = nn.Attention(8, 2, qkv_bias=True).to(np.float64)
    full.load_state_dict(lca.attn.state_dict())
    xc = minivit.tensor(rng.standard_normal((2, 5, 8)))
    y = xc + full(lca.norm1(xc))
    y = y + lca.feedforward(lca.norm2(y))
    np.testing.assert_allclose(lca(xc).data[:, 0], y.data[:, -1], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- gradients, BN modes, learning
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_tiny_ceit(training):
    """Every parameter in training mode (BN batch statistics); in eval mode only the
    input and the BN parameters, the one part that changes."""
    m = tiny().to(np.float64).train(training)
    rng = np.random.default_rng(7)
    randomise_bn(m, rng)
    for p in (m.pos_layer_embed, m.cls_token):
        p.data[...] = rng.standard_normal(p.shape) * 0.1
    x = rng.standard_normal((2, 1, 12, 12))
    params = [p for n, p in m.named_parameters() if training or ".bn" in n]
    minivit.gradcheck(lambda a: m(a), [minivit.tensor(x, requires_grad=True)], params=params,
                      max_checks=2 if training else 4, atol=1e-6, rtol=1e-4)


def test_gradcheck_leff_and_lca():
    rng = np.random.default_rng(8)
    leff = LeFF(4, 6).to(np.float64)
    randomise_bn(leff, rng)
    minivit.gradcheck(lambda a: leff(a, grid=(2, 3)), [minivit.tensor(rng.standard_normal((2, 7, 4)))],
                      params=list(leff.parameters()), max_checks=6)
    lca = LCA(8, 2, mlp_ratio=2.0).to(np.float64)
    minivit.gradcheck(lambda a: lca(a), [minivit.tensor(rng.standard_normal((2, 3, 8)))],
                      params=list(lca.parameters()), max_checks=6)


def test_eval_mode_uses_batchnorm_running_statistics():
    rng = np.random.default_rng(9)
    m = tiny()
    x = rng.standard_normal((4, 1, 12, 12)).astype(np.float32)
    stem_bn = m.i2t.backbone.bn
    assert not stem_bn.running_mean.any()
    m.train()
    m(minivit.tensor(x))
    assert stem_bn.running_mean.any() and int(stem_bn.num_batches_tracked) == 1
    # training mode: an image's output depends on the other images of the batch
    a = m(minivit.tensor(x)).data[0]
    b = m(minivit.tensor(np.concatenate([x[:1], x[1:] * 3]))).data[0]
    assert not np.allclose(a, b, atol=1e-4)
    # eval mode: running statistics, so each image is on its own and no buffer moves
    m.eval()
    before = {k: v.copy() for k, v in m.state_dict().items()}
    a = m(minivit.tensor(x)).data[0]
    b = m(minivit.tensor(np.concatenate([x[:1], x[1:] * 3]))).data[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m(minivit.tensor(x[:1])).data[0], a, rtol=1e-5, atol=1e-6)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    # and the eval LeFF is the slow loop with running statistics (the whole block stack uses it)
    leff = m.blocks[0].leff.to(np.float64)
    t = rng.standard_normal((2, 10, 8))
    np.testing.assert_allclose(leff(minivit.tensor(t)).data, leff_slow(leff, t, (3, 3), False), rtol=1e-10)


def test_loss_falls_on_a_fixed_batch(train_steps):
    m = tiny(num_classes=4)
    rng = np.random.default_rng(10)
    x = minivit.tensor(rng.standard_normal((16, 1, 12, 12)).astype(np.float32))
    y = rng.integers(0, 4, 16)
    losses = train_steps(m, x, y, steps=30)
    assert losses[-1] < 0.5 * losses[0]


def test_other_image_sizes_and_drop_path():
    m = tiny(drop_rate=0.2, drop_path_rate=0.3)
    x = minivit.tensor(np.random.randn(2, 1, 16, 20).astype(np.float32))   # stem -> 4x5 grid, not square
    assert m.i2t.token_grid(16, 20) == (4, 5)
    m.eval()
    out = m(x)
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out.data, m(x).data)
    m.train()
    assert not np.allclose(m(x).data, m(x).data)
    assert isinstance(m.blocks[1].drop_path, nn.DropPath) and isinstance(m.blocks[0].drop_path, nn.Identity)


# ---------------------------------------------------------------- errors
def test_bad_configurations_and_inputs_raise_clearly():
    leff = LeFF(4, 8)
    with pytest.raises(ValueError, match=r"10 patch tokens .* do not fill a square grid"):
        leff(minivit.tensor(np.zeros((2, 11, 4), np.float32)))
    with pytest.raises(ValueError, match=r"grid=\(2, 4\) holds 8 patch tokens but x has N=10"):
        leff(minivit.tensor(np.zeros((2, 11, 4), np.float32)), grid=(2, 4))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 1\+N, 4\)"):
        leff(minivit.tensor(np.zeros((2, 10, 5), np.float32)))
    with pytest.raises(ValueError, match="kernel_size must be a positive odd number"):
        LeFF(4, 8, kernel_size=4)
    with pytest.raises(ValueError, match="patch_size=3 does not divide the 7x7 feature map"):
        models.create("ceit_fmnist", patch_size=3)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        models.create("ceit_fmnist", num_heads=5)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        models.create("ceit_fmnist", depth=0)
    with pytest.raises(ValueError, match="drop_path_rate must be in"):
        models.create("ceit_fmnist", drop_path_rate=1.0)
    m = models.create("ceit_fmnist")
    with pytest.raises(ValueError, match="expects .*1 input channel"):
        m(minivit.tensor(np.zeros((2, 3, 28, 28), np.float32)))
    with pytest.raises(ValueError, match="patch_size=2 does not divide the 7x7 feature map"):
        models.create("ceit_fmnist", patch_size=2, img_size=32)(minivit.tensor(np.zeros((1, 1, 28, 28), np.float32)))
