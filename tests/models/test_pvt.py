"""PVT v1: registry and counts, names, shapes, spatial-reduction attention against a
slow reshape-and-project reference, the cost table, gradcheck, learning, errors."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit import models, nn
from minivit.models.pvt import PyramidVisionTransformer, SpatialReductionAttention


def tiny(**kw):
    """Four stages on an 8x8 image with P_1 = 1: grids 8, 4, 2, 1; R = (2, 2, 1, 1)."""
    cfg = dict(img_size=8, patch_size=1, in_chans=1, num_classes=3, embed_dims=(4, 6, 8, 8),
               num_heads=(1, 2, 2, 2), mlp_ratios=(2, 2, 2, 2), qkv_bias=True, depths=(1, 1, 1, 1),
               sr_ratios=(2, 2, 1, 1))
    cfg.update(kw)
    return PyramidVisionTransformer(**cfg)


# ---------------------------------------------------------------- the slow references
def slow_sr(x, H, W, R, conv_w, conv_b, ln_w, ln_b, eps=1e-5):
    """SR(x) = Norm(Reshape(x, R) W^S) with explicit loops, no convolution, no pooling.

    Reshape(x, R): every R x R block of the H x W token grid becomes one row of
    R*R*C values (block pixels in row-major order, each pixel's C channels in turn).
    W^S is written out as an (R*R*C, C) matrix from the conv weight (C, C, R, R).
    """
    B, N, C = x.shape
    grid = x.reshape(B, H, W, C)
    WS = np.zeros((R * R * C, C))
    for o in range(C):
        for c in range(C):
            for ki in range(R):
                for kj in range(R):
                    WS[(ki * R + kj) * C + c, o] = conv_w[o, c, ki, kj]
    rows = []
    for b in range(B):
        for bi in range(H // R):
            for bj in range(W // R):
                block = [grid[b, bi * R + ki, bj * R + kj] for ki in range(R) for kj in range(R)]
                rows.append(np.concatenate(block))                    # (R*R*C,)
    reshaped = np.array(rows).reshape(B, (H // R) * (W // R), R * R * C)   # Reshape(x, R)
    y = reshaped @ WS + conv_b                                        # ... W^S
    mean = y.mean(-1, keepdims=True)
    var = ((y - mean) ** 2).mean(-1, keepdims=True)
    return (y - mean) / np.sqrt(var + eps) * ln_w + ln_b              # Norm


def slow_mha(x, kv_in, attn):
    """head_j = softmax(Q W_j^Q (K W_j^K)^T / sqrt(d)) V W_j^V, concatenated, then W^O;
    one head and one query at a time."""
    C, h = attn.dim, attn.num_heads
    d = C // h
    Wq, bq = attn.q.weight.data, attn.q.bias.data
    Wkv, bkv = attn.kv.weight.data, attn.kv.bias.data
    Wk, Wv, bk, bv = Wkv[:C], Wkv[C:], bkv[:C], bkv[C:]
    Wo, bo = attn.proj.weight.data, attn.proj.bias.data
    B, N, _ = x.shape
    out = np.zeros((B, N, C))
    for b in range(B):
        Q, K, V = x[b] @ Wq.T + bq, kv_in[b] @ Wk.T + bk, kv_in[b] @ Wv.T + bv
        heads = []
        for j in range(h):
            cols = slice(j * d, (j + 1) * d)
            head = np.zeros((N, d))
            for n in range(N):
                s = K[:, cols] @ Q[n, cols] / np.sqrt(d)
                p = np.exp(s - s.max())
                head[n] = (p / p.sum()) @ V[:, cols]
            heads.append(head)
        out[b] = np.concatenate(heads, axis=1) @ Wo.T + bo
    return out


# ---------------------------------------------------------------- registry, names, shapes
@pytest.fixture(scope="module")
def pvt_tiny():
    return models.create("pvt_tiny")


def test_registry_and_param_counts(pvt_tiny):
    assert {"pvt_fmnist", "pvt_tiny"} <= set(models.list_models("pvt_*"))
    assert pvt_tiny.num_params() == 13_229_288                              # PAPERS.md section 9
    assert models.create("pvt_fmnist").num_params() == 505_002


def test_state_dict_names_and_shapes_follow_the_official_v1(pvt_tiny):
    sd = pvt_tiny.state_dict()
    expected = {
        "patch_embed1.proj.weight": (64, 3, 4, 4), "patch_embed1.norm.weight": (64,),
        "pos_embed1": (1, 3136, 64), "block1.0.attn.q.weight": (64, 64), "block1.0.attn.kv.weight": (128, 64),
        "block1.1.attn.sr.weight": (64, 64, 8, 8), "block1.0.attn.sr.bias": (64,), "block1.0.attn.norm.bias": (64,),
        "block1.0.mlp.fc1.weight": (512, 64), "block1.0.mlp.fc2.weight": (64, 512),
        "patch_embed2.proj.weight": (128, 64, 2, 2), "pos_embed2": (1, 784, 128),
        "patch_embed3.proj.weight": (320, 128, 2, 2), "pos_embed3": (1, 196, 320),
        "block3.1.attn.sr.weight": (320, 320, 2, 2),
        "patch_embed4.proj.weight": (512, 320, 2, 2), "pos_embed4": (1, 50, 512),
        "norm.weight": (512,), "cls_token": (1, 1, 512), "head.weight": (1000, 512), "head.bias": (1000,)}
    for k, shape in expected.items():
        assert sd[k].shape == shape, k
    assert not any(k.startswith("block4.") and (".attn.sr." in k or ".attn.norm." in k) for k in sd)
    eps = {n: mod.eps for n, mod in pvt_tiny.named_modules() if isinstance(mod, nn.LayerNorm)}
    assert eps["patch_embed1.norm"] == eps["block1.0.attn.norm"] == 1e-5      # plain nn.LayerNorm
    assert eps["block1.0.norm1"] == eps["block4.0.norm2"] == eps["norm"] == 1e-6


def test_forward_shapes_attention_and_pyramid():
    m = models.create("pvt_fmnist")
    x = minivit.tensor(np.random.randn(2, 1, 28, 28).astype(np.float32))
    out = m(x)
    assert out.shape == (2, 10) and out.dtype == np.float32
    logits, attns = m(x, return_attention=True)
    np.testing.assert_allclose(logits.data, out.data, rtol=1e-5, atol=1e-6)
    assert [[a.shape for a in s] for s in attns] == [[(2, 1, 256, 16)], [(2, 2, 64, 16)],
                                                     [(2, 3, 16, 16)], [(2, 4, 5, 5)]]
    for s in attns:
        np.testing.assert_allclose(np.asarray(s[0]).sum(-1), 1, rtol=1e-5)
    maps = m.feature_pyramid(x)
    assert [f.shape for f in maps] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 96, 4, 4), (2, 128, 2, 2)]


# ---------------------------------------------------------------- the trick: SRA
@settings(max_examples=12)
@given(R=st.sampled_from([1, 2, 3]), hw=st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 2)]),
       heads=st.sampled_from([1, 2, 3]), B=st.integers(1, 2))
def test_sra_equals_attention_over_a_slow_reshape_and_project(R, hw, heads, B):
    H, W = hw[0] * R, hw[1] * R
    C = 2 * heads
    attn = SpatialReductionAttention(C, heads, qkv_bias=True, sr_ratio=R).to(np.float64)
    for p in attn.parameters():                                   # nonzero biases and LN affine too
        p.data = np.random.default_rng(7).standard_normal(p.shape)
    x = np.random.default_rng(1).standard_normal((B, H * W, C))
    out = attn(minivit.tensor(x), H, W).data
    if R > 1:
        kv_in = slow_sr(x, H, W, R, attn.sr.weight.data, attn.sr.bias.data,
                        attn.norm.weight.data, attn.norm.bias.data)
        np.testing.assert_allclose(attn.reduce(minivit.tensor(x), H, W).data, kv_in, atol=1e-10)
    else:
        kv_in = x                                                  # SR is the identity at R = 1
    np.testing.assert_allclose(out, slow_mha(x, kv_in, attn), atol=1e-10)


def test_sra_with_ratio_one_is_plain_multi_head_attention():
    C, h = 12, 3
    sra = SpatialReductionAttention(C, h, qkv_bias=True, sr_ratio=1).to(np.float64)
    mha = nn.Attention(C, h, qkv_bias=True).to(np.float64)
    rng = np.random.default_rng(0)
    for p in sra.parameters():
        p.data = rng.standard_normal(p.shape) * 0.3
    mha.load_state_dict({"qkv.weight": np.concatenate([sra.q.weight.data, sra.kv.weight.data]),
                         "qkv.bias": np.concatenate([sra.q.bias.data, sra.kv.bias.data]),
                         "proj.weight": sra.proj.weight.data, "proj.bias": sra.proj.bias.data})
    x = minivit.tensor(rng.standard_normal((2, 20, C)))
    np.testing.assert_allclose(sra(x, 4, 5).data, mha(x).data, atol=1e-12)
    assert not hasattr(sra, "sr") and "sr.weight" not in sra.state_dict()


def test_sra_gradcheck():
    sra = SpatialReductionAttention(4, 2, qkv_bias=True, sr_ratio=2).to(np.float64)
    x = minivit.tensor(np.random.default_rng(0).standard_normal((2, 16, 4)), requires_grad=True)
    minivit.gradcheck(lambda a: sra(a, 4, 4), [x], params=list(sra.parameters()), max_checks=6,
                      atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------- cost table
def test_cost_table_matches_the_formula_and_the_attention_maps(capsys, pvt_tiny):
    for name, x_shape in (("pvt_fmnist", (1, 1, 28, 28)), ("pvt_tiny", None)):
        m = models.create(name) if name == "pvt_fmnist" else pvt_tiny
        rows = m.print_cost_table()
        printed = capsys.readouterr().out
        for i, r in enumerate(rows):
            H, W = r["grid"]
            last = i == len(rows) - 1
            assert r["keys_per_query"] == H * W // r["sr_ratio"] ** 2 + int(last)    # HW/R^2 (+ cls)
            assert re.search(rf"^\s*{i + 1}\s+{H}x{W}\s.*\s{r['keys_per_query']}\s", printed, re.M), printed
        if name == "pvt_tiny":
            assert [r["keys_per_query"] for r in rows] == [49, 49, 49, 50]           # ISSUE-NOTES
            assert [r["grid"] for r in rows] == [(56, 56), (28, 28), (14, 14), (7, 7)]
        else:
            assert [r["keys_per_query"] for r in rows] == [16, 16, 16, 5]
            _, attns = m(minivit.tensor(np.zeros(x_shape, np.float32)), return_attention=True)
            assert [s[0].shape[-1] for s in attns] == [r["keys_per_query"] for r in rows]
            assert [s[0].shape[-2] for s in attns] == [r["tokens"] for r in rows]
    rows = models.create("pvt_fmnist").cost_table(img_size=60)           # 64 after padding: 32, 16, 8, 4
    assert [r["keys_per_query"] for r in rows] == [64, 64, 64, 17]


# ---------------------------------------------------------------- gradients and learning
def test_gradcheck_tiny_pvt():
    m = tiny().to(np.float64)
    m.eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    # every tensor of stage 1's block (SR conv and its norm included), the other stages' entry points
    named = dict(m.named_parameters())
    params = [p for n, p in named.items() if n.startswith(("block1.", "patch_embed", "pos_embed"))
              or n in ("block2.0.attn.sr.weight", "block4.0.attn.kv.weight", "cls_token", "norm.weight", "head.weight")]
    minivit.gradcheck(lambda a: m(a), [minivit.tensor(x, requires_grad=True)], params=params,
                      max_checks=3, atol=1e-6, rtol=1e-4)


def test_loss_falls_on_a_fixed_batch(train_steps):
    m = tiny(num_classes=4, embed_dims=(8, 16, 16, 16))
    rng = np.random.default_rng(0)
    x = minivit.tensor(rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    y = rng.integers(0, 4, 16)
    losses = train_steps(m, x, y, steps=40)
    assert losses[-1] < 0.5 * losses[0]


def test_other_image_sizes_resize_the_position_embeddings():
    m = models.create("pvt_fmnist")
    out, attns = m(minivit.tensor(np.random.randn(2, 1, 60, 60).astype(np.float32)), return_attention=True)
    assert out.shape == (2, 10) and attns[0][0].shape == (2, 1, 1024, 64)
    assert m.pos_embed1.shape == (1, 256, 32)                       # the parameter itself is unchanged


def test_drop_path_and_dropout_only_in_training():
    m = tiny(drop_rate=0.3, drop_path_rate=0.3)
    x = minivit.tensor(np.random.randn(2, 1, 8, 8).astype(np.float32))
    m.eval()
    np.testing.assert_array_equal(m(x).data, m(x).data)
    m.train()
    assert not np.allclose(m(x).data, m(x).data)
    assert isinstance(m.block1[0].drop_path, nn.Identity) and isinstance(m.block4[0].drop_path, nn.DropPath)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,msg", [
    (dict(num_heads=(1, 2, 3)), "num_heads has 3 values but embed_dims has 4"),
    (dict(num_heads=(1, 3, 3, 4)), "stage 2: embed_dims\\[1\\]=64 is not divisible by num_heads\\[1\\]=3"),
    (dict(sr_ratios=(3, 2, 1, 1)), "stage 1: sr_ratios\\[0\\]=3 does not divide the stage resolution 16x16"),
    (dict(sr_ratios=(4, 2, 8, 1)), "stage 3: sr_ratios\\[2\\]=8 does not divide the stage resolution 4x4"),
    (dict(sr_ratios=(4, 2, 1, 2)), "stage 4 holds the class token.*sr_ratios\\[3\\] must be 1, got 2"),
    (dict(in_pad=0), "stage 1: sr_ratios\\[0\\]=4 does not divide the stage resolution 14x14"),
    (dict(in_pad=0, sr_ratios=(2, 1, 1, 1)), "stage 3: patch size 2 does not divide stage 2's 7x7 feature map"),
    (dict(img_size=27), "stage 1: patch size 2 does not divide the 31x31 input \\(after in_pad=2\\)"),
    (dict(depths=(1, 0, 1, 1)), "stage 2: depths\\[1\\] and sr_ratios\\[1\\] must be integers >= 1"),
    (dict(drop_path_rate=1.0), "drop_path_rate must be in \\[0, 1\\)"),
])
def test_bad_configurations_raise_clearly(kw, msg):
    with pytest.raises(ValueError, match=msg):
        models.create("pvt_fmnist", **kw)


def test_bad_inputs_raise_clearly():
    m = models.create("pvt_fmnist")
    with pytest.raises(ValueError, match="expects .*1 input channel"):
        m(minivit.tensor(np.zeros((2, 3, 28, 28), np.float32)))
    with pytest.raises(ValueError, match="stage 1: patch size 2 does not divide the 33x33 input \\(after in_pad=2\\)"):
        m(minivit.tensor(np.zeros((2, 1, 29, 29), np.float32)))
    with pytest.raises(ValueError, match="stage 1: sr_ratios\\[0\\]=4 does not divide the stage resolution 18x18"):
        m(minivit.tensor(np.zeros((2, 1, 32, 32), np.float32)))     # 36 after padding -> 18
    with pytest.raises(ValueError, match="stage 4: patch size 2 does not divide stage 3's 7x7 feature map"):
        m(minivit.tensor(np.zeros((2, 1, 52, 52), np.float32)))     # 56 after padding -> 28, 14, 7
    sra = SpatialReductionAttention(8, 2, sr_ratio=2)
    with pytest.raises(ValueError, match="sr_ratio=2 does not divide the token grid 3x3"):
        sra(minivit.tensor(np.zeros((1, 9, 8), np.float32)), 3, 3)
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        SpatialReductionAttention(8, 3)
