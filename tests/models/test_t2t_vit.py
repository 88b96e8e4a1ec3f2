"""T2T-ViT: registry and counts, names, the soft-split length (course formula vs the real
unfold), soft split = a slow patch-gathering loop, the token transformer and the performer
= slow per-token versions, the whole T2T module from primitives, the sinusoid table,
gradcheck, learning, errors."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from scipy.special import erf

import minivit
from minivit import functional as F
from minivit import models, nn
from minivit.models.t2t_vit import (SoftSplit, T2TModule, T2TViT, TokenPerformer, TokenTransformer,
                                    get_sinusoid_encoding, restructure, soft_split_length,
                                    soft_split_length_course)


def tiny(**kw):
    """12x12x1 image, splits (3, 2, 1), (3, 2, 1): grids 6x6 then 3x3; token_dim 4, D 8."""
    cfg = dict(img_size=12, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0,
               token_dim=4, kernel_sizes=(3, 3), strides=(2, 2), paddings=(1, 1))
    cfg.update(kw)
    return T2TViT(**cfg)


def randomize(module, seed=0, scale=0.5):
    """Random values in every parameter (LayerNorm affine and biases too), so no term hides."""
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = (rng.standard_normal(p.shape) * scale).astype(p.dtype)
    return module


# ---------------------------------------------------------------- slow references
def slow_soft_split(img, k, stride, p):
    """Gather every k x k window by hand: (B, C, H, W) -> (B, L, C k^2), channel-major inside a
    token (c, then row, then column), windows row-major."""
    B, C, H, W = img.shape
    padded = np.zeros((B, C, H + 2 * p, W + 2 * p))
    padded[:, :, p:p + H, p:p + W] = img
    Ho, Wo = (H + 2 * p - k) // stride + 1, (W + 2 * p - k) // stride + 1
    out = np.zeros((B, Ho * Wo, C * k * k))
    for b in range(B):
        for i in range(Ho):
            for j in range(Wo):
                for c in range(C):
                    for ki in range(k):
                        for kj in range(k):
                            out[b, i * Wo + j, c * k * k + ki * k + kj] = padded[b, c, i * stride + ki, j * stride + kj]
    return out


def slow_ln(x, ln):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * ln.weight.data + ln.bias.data


def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def slow_token_transformer(T, tt):
    """T' = MLP(MSA(T)) one token at a time: q_t . k_s scaled by (input dim)^-1/2, softmax over s,
    skip connection through v_t, then the MLP with its residual."""
    B, N, c = T.shape
    d = tt.attn.out_dim
    Wqkv = tt.attn.qkv.weight.data
    Wq, Wk, Wv = Wqkv[:d], Wqkv[d:2 * d], Wqkv[2 * d:]
    Wp, bp = tt.attn.proj.weight.data, tt.attn.proj.bias.data
    out = np.zeros((B, N, d))
    for b in range(B):
        X = slow_ln(T[b], tt.norm1)
        q, k, v = X @ Wq.T, X @ Wk.T, X @ Wv.T
        for t in range(N):
            logits = np.array([q[t] @ k[s] / np.sqrt(c) for s in range(N)])
            a = np.exp(logits - logits.max())
            a /= a.sum()
            y = v[t] + Wp @ (a @ v) + bp                                       # MSA with the skip through v
            h = gelu(tt.mlp.fc1.weight.data @ slow_ln(y, tt.norm2) + tt.mlp.fc1.bias.data)
            out[b, t] = y + tt.mlp.fc2.weight.data @ h + tt.mlp.fc2.bias.data   # + MLP(LN(y))
    return out


def slow_performer(T, tp):
    """The performer written as a *quadratic* kernel attention, one query at a time:
    y_t = sum_s K(q_t, k_s) v_s / (sum_s K(q_t, k_s) + 1e-8),  K(q, k) = phi(q) . phi(k)."""
    B, N, _ = T.shape
    e, m, w = tp.emb, tp.m, tp.w.astype(np.float64)
    phi = lambda z: np.exp(w @ z - z @ z / 2) / np.sqrt(m)                    # noqa: E731
    out = np.zeros((B, N, e))
    for b in range(B):
        kqv = slow_ln(T[b], tp.norm1) @ tp.kqv.weight.data.T + tp.kqv.bias.data
        k, q, v = kqv[:, :e], kqv[:, e:2 * e], kqv[:, 2 * e:]                  # the order is k, q, v
        for t in range(N):
            K = np.array([phi(q[t]) @ phi(k[s]) for s in range(N)])
            y = v[t] + tp.proj.weight.data @ (K @ v / (K.sum() + 1e-8)) + tp.proj.bias.data
            h = gelu(tp.mlp[0].weight.data @ slow_ln(y, tp.norm2) + tp.mlp[0].bias.data)
            out[b, t] = y + tp.mlp[2].weight.data @ h + tp.mlp[2].bias.data
    return out


# ---------------------------------------------------------------- registry, names, counts
@pytest.fixture(scope="module")
def t2t7():
    return models.create("t2t_vit_7")


def test_registry_and_param_counts(t2t7):
    assert models.list_models("t2t*") == ["t2t_vit_7", "t2t_vit_7_performer", "t2t_vit_fmnist"]
    assert t2t7.num_params() == 4_255_310                                  # PAPERS.md section 8
    assert models.create("t2t_vit_7_performer").num_params() == 4_255_694
    assert models.create("t2t_vit_fmnist").num_params() == 256_156
    sd = t2t7.state_dict()
    assert sum(v.size for v in sd.values()) == 4_305_742                  # + the frozen 197 x 256 table
    assert "pos_embed" in sd and "pos_embed" not in dict(t2t7.named_parameters())


def test_state_dict_names_and_shapes_follow_the_official_code(t2t7):
    sd = t2t7.state_dict()
    expected = {
        "tokens_to_token.attention1.norm1.weight": (147,), "tokens_to_token.attention1.attn.qkv.weight": (192, 147),
        "tokens_to_token.attention1.attn.proj.weight": (64, 64), "tokens_to_token.attention1.norm2.bias": (64,),
        "tokens_to_token.attention1.mlp.fc1.weight": (64, 64), "tokens_to_token.attention1.mlp.fc2.bias": (64,),
        "tokens_to_token.attention2.norm1.weight": (576,), "tokens_to_token.attention2.attn.qkv.weight": (192, 576),
        "tokens_to_token.project.weight": (256, 576), "tokens_to_token.project.bias": (256,),
        "cls_token": (1, 1, 256), "pos_embed": (1, 197, 256),
        "blocks.0.norm1.weight": (256,), "blocks.0.attn.qkv.weight": (768, 256), "blocks.6.attn.proj.bias": (256,),
        "blocks.0.mlp.fc1.weight": (512, 256), "blocks.0.mlp.fc2.weight": (256, 512),
        "norm.weight": (256,), "head.weight": (1000, 256), "head.bias": (1000,)}
    for k, shape in expected.items():
        assert sd[k].shape == shape, k
    assert "tokens_to_token.attention1.attn.qkv.bias" not in sd and "blocks.0.attn.qkv.bias" not in sd
    assert all(mod.eps == 1e-5 for mod in t2t7.modules() if isinstance(mod, nn.LayerNorm))
    perf = models.create("t2t_vit_7_performer").state_dict()
    for k, shape in {"tokens_to_token.attention1.kqv.weight": (192, 147), "tokens_to_token.attention1.kqv.bias": (192,),
                     "tokens_to_token.attention1.mlp.0.weight": (64, 64), "tokens_to_token.attention1.mlp.2.bias": (64,),
                     "tokens_to_token.attention1.w": (32, 64), "tokens_to_token.attention2.kqv.weight": (192, 576)}.items():
        assert perf[k].shape == shape, k


def test_t2t_vit_7_token_counts_against_plain_patchify(t2t7):
    # 224 -> 56 -> 28 -> 14: 3136, 784, 196 tokens, the last the same count as ViT's 16x16 patches
    assert t2t7.tokens_to_token.grids == [(56, 56), (28, 28), (14, 14)]
    assert t2t7.tokens_to_token.num_patches == models.create("vit_tiny_patch16_224").patch_embed.num_patches == 196
    fm = models.create("t2t_vit_fmnist").tokens_to_token
    assert fm.grids == [(14, 14), (7, 7), (7, 7)]
    assert fm.num_patches == models.create("vit_fmnist").patch_embed.num_patches == 49


def test_forward_shapes_attention_and_steps():
    m = models.create("t2t_vit_fmnist")
    x = minivit.tensor(np.random.randn(2, 1, 28, 28).astype(np.float32))
    out = m(x)
    assert out.shape == (2, 10) and out.dtype == np.float32
    logits, attns = m(x, return_attention=True)
    np.testing.assert_allclose(logits.data, out.data, rtol=1e-5, atol=1e-6)
    assert len(attns) == 6 and attns[0].shape == (2, 4, 50, 50)
    tokens, steps = m.tokens_to_token(x, return_steps=True)
    assert tokens.shape == (2, 49, 64)
    assert [s["T"].shape for s in steps] == [(2, 196, 25), (2, 49, 288), (2, 49, 288)]
    assert [s["I"].shape for s in steps[:2]] == [(2, 32, 14, 14), (2, 32, 7, 7)]
    assert steps[0]["attn"].shape == (2, 196, 196)
    np.testing.assert_allclose(steps[0]["attn"].sum(-1), 1, rtol=1e-5)


# ---------------------------------------------------------------- the soft split length
geometry = dict(h=st.integers(1, 30), w=st.integers(1, 30), k=st.integers(1, 7), stride=st.integers(1, 5),
                p=st.integers(0, 3))


@settings(max_examples=60)
@given(**geometry)
def test_soft_split_length_and_the_course_formula_equal_the_real_unfold(h, w, k, stride, p):
    try:
        ho, wo = soft_split_length(h, w, k, stride, p)
    except ValueError:
        assume(False)                 # a geometry that drops pixels: the next test covers those
    x = minivit.tensor(np.zeros((1, 2, h, w)))
    L = F.unfold(x, k, padding=p, stride=stride).shape[-1]                   # the real unfold length
    assert ho * wo == L == SoftSplit(k, stride, p)(x).shape[1]
    if stride <= k:                   # the course's s is the overlap k - stride (>= 0)
        assert soft_split_length_course(h, w, k, k - stride, p) == L


def test_the_course_formula_means_overlap_not_stride():
    x = minivit.tensor(np.zeros((1, 3, 224, 224), np.float32))
    L = F.unfold(x, 7, padding=2, stride=4).shape[-1]
    assert L == 56 * 56 == soft_split_length_course(224, 224, 7, 3, 2)   # s = overlap = 7 - 4
    assert soft_split_length_course(224, 224, 7, 4, 2) == 74 * 74 != L   # s = stride: wrong
    with pytest.raises(ValueError, match="overlap s=4 must be smaller than the kernel k=4"):
        soft_split_length_course(28, 28, 4, 4, 0)                        # patchify read with s = stride


@settings(max_examples=40)
@given(**geometry)
def test_the_length_check_rejects_exactly_the_geometries_that_drop_image_pixels(h, w, k, stride, p):
    """soft_split_length raises iff some real pixel lies in no window (or no window fits)."""
    fits = h + 2 * p >= k and w + 2 * p >= k
    if fits:
        covered = F.unfold(minivit.tensor(np.ones((1, 1, h, w))), k, padding=p, stride=stride)
        seen = F.fold(covered, (h, w), k, padding=p, stride=stride).data[0, 0]   # windows per pixel
        ok = bool((seen > 0).all())
    else:
        ok = False
    if ok:
        soft_split_length(h, w, k, stride, p)
    else:
        with pytest.raises(ValueError, match="soft split"):
            soft_split_length(h, w, k, stride, p)


# ---------------------------------------------------------------- the tricks equal slow versions
@settings(max_examples=15)
@given(k=st.integers(1, 4), stride=st.integers(1, 3), p=st.integers(0, 2), hw=st.sampled_from([(5, 5), (6, 4), (7, 9)]),
       C=st.integers(1, 3))
def test_soft_split_equals_a_slow_patch_gathering_loop(k, stride, p, hw, C):
    h, w = hw
    try:
        soft_split_length(h, w, k, stride, p)
    except ValueError:
        assume(False)
    img = np.random.default_rng(0).standard_normal((2, C, h, w))
    np.testing.assert_array_equal(SoftSplit(k, stride, p)(minivit.tensor(img)).data, slow_soft_split(img, k, stride, p))


def test_restructure_puts_token_t_at_row_t_div_w():
    B, h, w, C = 2, 3, 5, 4
    tokens = np.random.default_rng(0).standard_normal((B, h * w, C))
    img = restructure(minivit.tensor(tokens), h, w).data
    for t in range(h * w):
        np.testing.assert_array_equal(img[:, :, t // w, t % w], tokens[:, t])
    with pytest.raises(ValueError, match="15 tokens do not fill a 4x4 feature map"):
        restructure(minivit.tensor(tokens), 4, 4)


def test_token_transformer_equals_a_slow_per_token_version():
    tt = randomize(TokenTransformer(12, 5).to(np.float64))
    T = np.random.default_rng(1).standard_normal((2, 7, 12))
    np.testing.assert_allclose(tt(minivit.tensor(T)).data, slow_token_transformer(T, tt), atol=1e-10)
    assert tt.attn.scale == 12 ** -0.5                                       # the input dim, not 5


def test_performer_equals_its_quadratic_kernel_form():
    tp = randomize(TokenPerformer(12, 8).to(np.float64), scale=0.3).eval()
    T = np.random.default_rng(1).standard_normal((2, 6, 12))
    np.testing.assert_allclose(tp(minivit.tensor(T)).data, slow_performer(T, tp), rtol=1e-9, atol=1e-10)
    w = tp.w.astype(np.float64)
    np.testing.assert_allclose(w @ w.T, tp.m * np.eye(tp.m), atol=1e-5)     # orthogonal rows, norm sqrt(m)


@pytest.mark.parametrize("tokens_type", ["transformer", "performer"])
def test_t2t_module_equals_its_composition_from_primitives(tokens_type):
    mod = randomize(T2TModule(img_size=(12, 8), tokens_type=tokens_type, in_chans=2, embed_dim=6, token_dim=4,
                              kernel_sizes=(3, 3, 2), strides=(2, 1, 2), paddings=(1, 1, 0)).to(np.float64)).eval()
    x = np.random.default_rng(2).standard_normal((2, 2, 12, 8))
    slow = slow_token_transformer if tokens_type == "transformer" else slow_performer
    T = slow_soft_split(x, 3, 2, 1)                                           # T_1 on a 6x4 grid
    h, w = 6, 4
    for i, (k, s, p) in enumerate([(3, 1, 1), (2, 2, 0)], start=1):
        Tp = slow(T, getattr(mod, f"attention{i}"))                           # T'_i = MLP(MSA(T_i))
        I = Tp.reshape(2, h, w, -1).transpose(0, 3, 1, 2)                     # I_i = Reshape(T'_i)
        T = slow_soft_split(I, k, s, p)                                       # T_{i+1} = SS(I_i)
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    want = T @ mod.project.weight.data.T + mod.project.bias.data
    assert mod.grids == [(6, 4), (6, 4), (3, 2)]
    np.testing.assert_allclose(mod(minivit.tensor(x)).data, want, rtol=1e-9, atol=1e-10)


def test_sinusoid_table_is_interleaved_and_starts_at_the_class_token():
    n, d = 6, 10
    table = get_sinusoid_encoding(n, d)
    assert table.shape == (1, n, d) and table.dtype == np.float32
    for p in range(n):
        for j in range(d):
            angle = p / np.power(10000, 2 * (j // 2) / d)
            assert table[0, p, j] == pytest.approx(np.sin(angle) if j % 2 == 0 else np.cos(angle), abs=1e-6)
    np.testing.assert_array_equal(table[0, 0], np.tile([0.0, 1.0], d // 2))   # position 0: sin 0, cos 0
    m = models.create("t2t_vit_fmnist")
    np.testing.assert_array_equal(m.pos_embed, get_sinusoid_encoding(50, 64))
    assert all(p is not m.pos_embed for p in m.parameters())


# ---------------------------------------------------------------- gradients and learning
@pytest.mark.parametrize("tokens_type", ["transformer", "performer"])
def test_gradcheck_tiny_t2t_vit(tokens_type):
    m = tiny(tokens_type=tokens_type).to(np.float64).eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 12, 12))
    named = dict(m.named_parameters())
    params = [p for n, p in named.items() if n.startswith("tokens_to_token.")] + \
             [named[n] for n in ("cls_token", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "norm.weight",
                                 "head.weight")]
    minivit.gradcheck(lambda a: m(a), [minivit.tensor(x, requires_grad=True)], params=params, max_checks=4,
                      atol=1e-6, rtol=1e-4)


def test_loss_falls_on_a_fixed_batch(train_steps):
    m = tiny(num_classes=4, embed_dim=16, token_dim=8)
    rng = np.random.default_rng(0)
    x = minivit.tensor(rng.standard_normal((16, 1, 12, 12)).astype(np.float32))
    y = rng.integers(0, 4, 16)
    losses = train_steps(m, x, y, steps=40)
    assert losses[-1] < 0.5 * losses[0]


def test_float64_conversion_and_dropout_only_in_training():
    m = tiny(drop_rate=0.3, drop_path_rate=0.3).to(np.float64)
    assert m.pos_embed.dtype == np.float64
    x = minivit.tensor(np.random.randn(2, 1, 12, 12))
    m.eval()
    np.testing.assert_array_equal(m(x).data, m(x).data)
    m.train()
    assert not np.allclose(m(x).data, m(x).data)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,err,msg", [
    (dict(kernel_sizes=(5, 3, 11)), ValueError,
     "soft split 2 \\(kernel 11, stride 1, padding 1\\) on the height: kernel_size=11 is larger than the padded "
     "input 7 \\+ 2\\*1 = 9, so the soft split has no output \\(zero tokens\\)"),
    (dict(strides=(4, 2, 1), paddings=(0, 1, 1)), ValueError,
     "soft split 0 \\(kernel 5, stride 4, padding 0\\) on the height: .* windows stop 3 pixel\\(s\\) before the end "
     "of the 28-pixel input \\(\\(h \\+ 2p - k\\)/stride = 23/4 is fractional"),
    (dict(strides=(2, 2, 3), paddings=(2, 1, 1), kernel_sizes=(5, 3, 2)), ValueError,
     "soft split 2 \\(kernel 2, stride 3, padding 1\\) on the height: stride=3 is larger than kernel_size=2, so the "
     "gaps between the windows skip 2 of the 7 input pixels"),
    (dict(kernel_sizes=(9, 3, 3), strides=(2, 2, 1), paddings=(0, 1, 1), img_size=6), ValueError,
     "kernel_size=9 is larger than the padded input 6 \\+ 2\\*0 = 6"),
    (dict(strides=(2, 2)), ValueError, "one value per soft split .* got 3, 2 and 3 values"),
    (dict(tokens_type="conv"), ValueError, "tokens_type must be 'transformer' or 'performer', got 'conv'"),
    (dict(kernel_sizes=(5.0, 3, 3)), TypeError, "kernel_sizes\\[0\\] must be an int, got 5.0"),
    (dict(strides=(2, 0, 1)), ValueError, "strides\\[1\\] must be >= 1, got 0"),
    (dict(num_heads=3), ValueError, "embed_dim=64 is not divisible by num_heads=3"),
    (dict(drop_path_rate=1.0), ValueError, "drop_path_rate must be in \\[0, 1\\)"),
])
def test_bad_configurations_raise_clearly(kw, err, msg):
    with pytest.raises(err, match=msg):
        models.create("t2t_vit_fmnist", **kw)


def test_bad_inputs_raise_clearly():
    m = models.create("t2t_vit_fmnist")
    with pytest.raises(ValueError, match="expects \\(B, 1, H, W\\)"):
        m(minivit.tensor(np.zeros((2, 3, 28, 28), np.float32)))
    with pytest.raises(ValueError, match="x is 32x32 but this T2T-ViT was built for img_size=28x28: its fixed "
                                         "sinusoid table has 50 rows"):
        m(minivit.tensor(np.zeros((2, 1, 32, 32), np.float32)))
    with pytest.raises(ValueError, match="soft split 0 .* windows stop 3 pixel"):
        SoftSplit(5, 4, 0)(minivit.tensor(np.zeros((1, 1, 28, 28), np.float32)))
    with pytest.raises(ValueError, match="TokenTransformer: expected tokens \\(B, N, 12\\), got \\(1, 5, 10\\)"):
        TokenTransformer(12, 4)(minivit.tensor(np.zeros((1, 5, 10), np.float32)))
    with pytest.raises(ValueError, match="TokenPerformer: expected tokens \\(B, N, 12\\), got \\(5, 12\\)"):
        TokenPerformer(12, 8)(minivit.tensor(np.zeros((5, 12), np.float32)))
    with pytest.raises(ValueError, match="kernel_ratio=0.01 leaves no random feature"):
        TokenPerformer(12, 8, kernel_ratio=0.01)
