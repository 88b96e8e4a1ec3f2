"""Visual Transformers: each equation against an explicit-loop version, the softmax axes,
gradchecks, the classifier and the VT-FPN segmenter (shapes, learning, multiply-adds), errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit import functional as F
from minivit import models
from minivit.models.vt import (FilterTokenizer, Projector, RecurrentTokenizer, SegmentationFPN, TokenTransformer,
                               VisualTransformer, VTModule, count_macs, map_to_pixels, pixels_to_map)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def f64(module, seed=1):
    """The module in float64 with random (not init) weights, so every test sees generic values."""
    module.to(np.float64)
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = rng.standard_normal(p.shape) * 0.5
    return module


# ---------------------------------------------------------------- slow references, one number at a time
def slow_softmax(v):
    e = [np.exp(a - max(v)) for a in v]
    return [a / sum(e) for a in e]


def slow_tokenize(X, W):
    """T = softmax_HW(X W / sqrt(C))^T X with W (C, L), shared by all images, or W (B, C, L) per image."""
    B, N, C = X.shape
    L = W.shape[-1]
    A = np.zeros((B, N, L))
    T = np.zeros((B, L, C))
    for b in range(B):
        Wb = W[b] if W.ndim == 3 else W
        for l in range(L):
            logits = [sum(X[b, p, c] * Wb[c, l] for c in range(C)) / np.sqrt(C) for p in range(N)]
            weights = slow_softmax(logits)                    # over the N = HW pixels
            for p in range(N):
                A[b, p, l] = weights[p]
            for c in range(C):
                T[b, l, c] = sum(weights[p] * X[b, p, c] for p in range(N))
    return T, A


def slow_recurrent(X, T_in, W_T_R):
    """W_R = T_in W_{T->R} as an explicit matrix product, then the tokenizer with W_R^T (C, L)."""
    B, L, C = T_in.shape
    W_R = np.zeros((B, L, C))
    for b in range(B):
        for l in range(L):
            for c in range(C):
                W_R[b, l, c] = sum(T_in[b, l, k] * W_T_R[k, c] for k in range(C))
    return slow_tokenize(X, W_R.transpose(0, 2, 1))


def slow_transformer(T, K, Q, F1, F2):
    """T' = T + softmax_L((T K)(T Q)^T / sqrt(C/2)) T;  out = T' + ReLU(T' F1) F2, loop by loop."""
    B, L, C = T.shape
    out = np.zeros_like(T)
    attn = np.zeros((B, L, L))
    for b in range(B):
        TK, TQ = T[b] @ K, T[b] @ Q
        Tp = T[b].copy()
        for i in range(L):
            logits = [float(TK[i] @ TQ[j]) / np.sqrt(C / 2) for j in range(L)]
            w = slow_softmax(logits)                          # over the L tokens
            attn[b, i] = w
            Tp[i] = T[b, i] + sum(w[j] * T[b, j] for j in range(L))
        for i in range(L):
            hidden = np.array([max(0.0, float(Tp[i] @ F1[:, k])) for k in range(C)])
            out[b, i] = Tp[i] + hidden @ F2
    return out, attn


def slow_project(X, T, W_Q, W_K):
    """X_out = X + softmax_L((X W_Q)(T W_K)^T / sqrt(C)) T, one pixel at a time."""
    B, N, C = X.shape
    L = T.shape[1]
    out = np.zeros_like(X)
    P = np.zeros((B, N, L))
    for b in range(B):
        k = T[b] @ W_K                                        # (L, C)
        for p in range(N):
            q = X[b, p] @ W_Q
            w = slow_softmax([float(q @ k[l]) / np.sqrt(C) for l in range(L)])
            P[b, p] = w
            out[b, p] = X[b, p] + sum(w[l] * T[b, l] for l in range(L))
    return out, P


# ---------------------------------------------------------------- the equations
@settings(max_examples=8)
@given(B=st.integers(1, 2), N=st.integers(1, 7), C=st.integers(1, 4), L=st.integers(1, 4))
def test_filter_tokenizer_equals_the_loop(B, N, C, L):
    tok = f64(FilterTokenizer(C, L))
    X = rand(B, N, C)
    T, A = tok(minivit.tensor(X), return_attention=True)
    T_ref, A_ref = slow_tokenize(X, tok.W_A.data)
    np.testing.assert_allclose(T.data, T_ref, atol=1e-12)
    np.testing.assert_allclose(A, A_ref, atol=1e-12)


@settings(max_examples=8)
@given(B=st.integers(1, 2), N=st.integers(1, 6), C=st.integers(1, 4), L=st.integers(1, 4))
def test_recurrent_tokenizer_equals_the_explicit_matrices(B, N, C, L):
    tok = f64(RecurrentTokenizer(C))
    X, T_in = rand(B, N, C), rand(B, L, C, seed=3)
    T, A = tok(minivit.tensor(X), minivit.tensor(T_in), return_attention=True)
    T_ref, A_ref = slow_recurrent(X, T_in, tok.W_T_R.data)
    np.testing.assert_allclose(T.data, T_ref, atol=1e-12)
    np.testing.assert_allclose(A, A_ref, atol=1e-12)
    assert T.shape == (B, L, C)                               # as many tokens as T_in


@settings(max_examples=8)
@given(B=st.integers(1, 2), L=st.integers(1, 5), half=st.integers(1, 3))
def test_token_transformer_equals_the_loop(B, L, half):
    C = 2 * half
    tf = f64(TokenTransformer(C))
    T = rand(B, L, C)
    out, attn = tf(minivit.tensor(T), return_attention=True)
    ref, attn_ref = slow_transformer(T, tf.K.data, tf.Q.data, tf.F1.data, tf.F2.data)
    np.testing.assert_allclose(out.data, ref, atol=1e-12)
    np.testing.assert_allclose(attn, attn_ref, atol=1e-12)


@settings(max_examples=8)
@given(B=st.integers(1, 2), N=st.integers(1, 7), C=st.integers(1, 4), L=st.integers(1, 4))
def test_projector_equals_the_loop(B, N, C, L):
    proj = f64(Projector(C))
    X, T = rand(B, N, C), rand(B, L, C, seed=5)
    out, P = proj(minivit.tensor(X), minivit.tensor(T), return_attention=True)
    ref, P_ref = slow_project(X, T, proj.W_Q.data, proj.W_K.data)
    np.testing.assert_allclose(out.data, ref, atol=1e-12)
    np.testing.assert_allclose(P, P_ref, atol=1e-12)


def test_softmax_axes():
    """Tokenizer weights sum to 1 over the pixels (per token), the transformer's and the
    projector's over the tokens (per row), and not along the other axis."""
    X, T_in = minivit.tensor(rand(2, 12, 4)), minivit.tensor(rand(2, 3, 4, seed=2))
    _, A = f64(FilterTokenizer(4, 3))(X, return_attention=True)                 # (B, HW, L)
    _, A_r = f64(RecurrentTokenizer(4))(X, T_in, return_attention=True)        # (B, HW, L)
    _, W = f64(TokenTransformer(4))(T_in, return_attention=True)               # (B, L, L)
    _, P = f64(Projector(4))(X, T_in, return_attention=True)                   # (B, HW, L)
    for a in (A, A_r):
        np.testing.assert_allclose(a.sum(axis=1), 1, atol=1e-12)               # over the HW pixels
        assert not np.allclose(a.sum(axis=2), 1)
    for a in (W, P):
        np.testing.assert_allclose(a.sum(axis=-1), 1, atol=1e-12)              # over the L tokens
        assert not np.allclose(a.sum(axis=-2), 1)
    assert (A > 0).all() and (P > 0).all()


def test_tokens_do_not_depend_on_pixel_order_but_projection_follows_it():
    """softmax over HW makes a token a weighted average over a *set* of pixels: shuffling the
    pixels leaves T unchanged and shuffles the rows of A and of the projector's output."""
    tok, proj = f64(FilterTokenizer(3, 4)), f64(Projector(3))
    X = rand(1, 10, 3)
    perm = np.random.default_rng(0).permutation(10)
    T, A = tok(minivit.tensor(X), return_attention=True)
    T_p, A_p = tok(minivit.tensor(X[:, perm]), return_attention=True)
    np.testing.assert_allclose(T_p.data, T.data, atol=1e-12)
    np.testing.assert_allclose(A_p, A[:, perm], atol=1e-12)
    np.testing.assert_allclose(proj(minivit.tensor(X[:, perm]), T).data, proj(minivit.tensor(X), T).data[:, perm],
                               atol=1e-12)


def test_recurrent_tokenizer_with_identity_weights_groups_pixels_by_similarity_to_tokens():
    """With W_{T->R} = I, W_R = T_in: a pixel's logit for token l is its dot product with T_in[l]."""
    tok = RecurrentTokenizer(2).to(np.float64)
    tok.W_T_R.data = np.eye(2)
    X = np.array([[[10.0, 0.0], [0.0, 10.0], [9.0, 0.0]]])           # pixels 0, 2 look like token 0
    T_in = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    _, A = tok(minivit.tensor(X), minivit.tensor(T_in), return_attention=True)
    assert A[0, 1, 0] < 0.01 and A[0, 1, 1] > 0.98                   # pixel 1 belongs to token 1
    assert A[0, 0, 0] + A[0, 2, 0] > 0.99


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("which", ["filter", "recurrent", "transformer", "projector", "module"])
def test_gradcheck_each_equation(which):
    X = minivit.tensor(rand(2, 6, 4), requires_grad=True)
    T = minivit.tensor(rand(2, 3, 4, seed=4), requires_grad=True)
    if which == "filter":
        m = f64(FilterTokenizer(4, 3))
        fn, ins = (lambda x: m(x)), [X]
    elif which == "recurrent":
        m = f64(RecurrentTokenizer(4))
        fn, ins = (lambda x, t: m(x, t)), [X, T]
    elif which == "transformer":
        m = f64(TokenTransformer(4))
        fn, ins = (lambda t: m(t)), [T]
    elif which == "projector":
        m = f64(Projector(4))
        fn, ins = (lambda x, t: m(x, t)), [X, T]
    else:
        m = f64(VTModule(4, tokenizer="recurrent"))
        fn, ins = (lambda x, t: F.cat(list(m(x, t)), dim=1)), [X, T]
    assert minivit.gradcheck(fn, ins, params=list(m.parameters()), max_checks=12, atol=1e-6, rtol=1e-4)


def tiny_classifier(**kw):
    cfg = dict(img_size=8, in_chans=1, num_classes=3, stem_width=4, dim=6, num_tokens=3, depth=2)
    cfg.update(kw)
    return VisualTransformer(**cfg)


def tiny_segmenter(**kw):
    cfg = dict(img_size=16, in_chans=1, num_classes=4, stem_width=4, widths=(4, 6, 8), fpn_dim=6,
               num_tokens=(3, 2, 2), transformer_depth=1)
    cfg.update(kw)
    return SegmentationFPN(**cfg)


def test_gradcheck_tiny_classifier():
    m = tiny_classifier().to(np.float64)
    m.eval()
    x = minivit.tensor(rand(2, 1, 8, 8), requires_grad=True)
    named = dict(m.named_parameters())
    params = [p for n, p in named.items() if n.startswith("vt.") or n in ("conv1.weight", "head.weight", "norm.weight")]
    assert minivit.gradcheck(lambda a: m(a), [x], params=params, max_checks=4, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mixer", ["vt", "conv"])
def test_gradcheck_tiny_segmenter(mixer):
    m = tiny_segmenter(mixer=mixer).to(np.float64)
    m.eval()
    x = minivit.tensor(rand(1, 1, 16, 16), requires_grad=True)
    named = dict(m.named_parameters())
    params = [p for n, p in named.items() if n.startswith(("tokenizers.", "transformers.", "projectors.", "fpn_convs.",
                                                             "lateral.0", "classifier"))]
    assert minivit.gradcheck(lambda a: m(a), [x], params=params, max_checks=3, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------- models
def test_registry_param_counts_and_names():
    assert {"vt_fmnist", "vt_seg_fmnist", "fpn_seg_fmnist"} <= set(models.list_models())
    vt, seg, fpn = (models.create(n) for n in ("vt_fmnist", "vt_seg_fmnist", "fpn_seg_fmnist"))
    assert (vt.num_params(), seg.num_params(), fpn.num_params()) == (64_794, 91_323, 109_083)
    sd = vt.state_dict()
    assert sd["vt.0.tokenizer.W_A"].shape == (48, 16)                    # W_A: (C, L)
    assert sd["vt.1.tokenizer.W_T_R"].shape == (48, 48)                  # W_{T->R}: (C, C)
    assert sd["vt.0.transformer.K"].shape == sd["vt.0.transformer.Q"].shape == (48, 24)
    assert sd["vt.0.projector.W_Q"].shape == sd["vt.0.projector.W_K"].shape == (48, 48)
    assert "vt.2.projector.W_Q" not in sd                                # the last module feeds the head
    assert [m.kind for m in vt.vt] == ["filter", "recurrent", "recurrent"]
    assert seg.task == fpn.task == "segmentation" and not hasattr(vt, "task")
    # the two segmenters differ only in the mixer
    common = set(seg.state_dict()) & set(fpn.state_dict())
    assert set(seg.state_dict()) - common == {k for k in seg.state_dict()
                                              if k.startswith(("tokenizers.", "transformers.", "projectors."))}
    assert set(fpn.state_dict()) - common == {k for k in fpn.state_dict() if k.startswith("fpn_convs.")}


def test_classifier_shapes_and_attention():
    m = models.create("vt_fmnist").eval()
    x = minivit.tensor(rand(2, 1, 28, 28).astype(np.float32))
    out = m(x)
    assert out.shape == (2, 10) and out.dtype == np.float32
    logits, maps = m(x, return_attention=True)
    np.testing.assert_allclose(logits.data, out.data, rtol=1e-5, atol=1e-6)
    assert len(maps) == 3
    assert maps[0]["tokenizer"].shape == (2, 196, 16) and maps[1]["tokenizer"].shape == (2, 196, 16)
    assert maps[0]["transformer"].shape == (2, 16, 16) and maps[0]["projector"].shape == (2, 196, 16)
    assert "projector" not in maps[2]
    assert m.feature_map(x).shape == (2, 48, 14, 14)


@pytest.mark.parametrize("name", ["vt_seg_fmnist", "fpn_seg_fmnist"])
def test_segmenter_shapes(name):
    m = models.create(name).eval()
    x = minivit.tensor(rand(2, 1, 56, 56).astype(np.float32))
    out = m(x)
    assert out.shape == (2, 11, 56, 56) and out.dtype == np.float32
    assert [p.shape for p in m.pyramid(x)] == [(2, 32, 28, 28), (2, 32, 14, 14), (2, 32, 7, 7)]
    if name == "vt_seg_fmnist":
        logits, maps = m(x, return_attention=True)
        np.testing.assert_allclose(logits.data, out.data, rtol=1e-4, atol=1e-5)
        assert [a.shape for a in maps["tokenizer"]] == [(2, 784, 8), (2, 196, 8), (2, 49, 8)]
        assert [a.shape for a in maps["transformer"]] == [(2, 24, 24)]
        assert [a.shape for a in maps["projector"]] == [(2, 784, 8), (2, 196, 8), (2, 49, 8)]
    else:
        with pytest.raises(ValueError, match="return_attention=True needs mixer='vt'"):
            m(x, return_attention=True)
    # a fully convolutional network: other sizes divisible by 8 work
    assert m(minivit.tensor(rand(1, 1, 32, 48).astype(np.float32))).shape == (1, 11, 32, 48)


def test_vt_fpn_projects_each_levels_own_tokens():
    """After the cross-level transformer, level l's projector reads tokens [sum L_<l, sum L_<=l)."""
    m = tiny_segmenter().to(np.float64).eval()
    P = m.pyramid(minivit.tensor(rand(1, 1, 16, 16)))
    M = m.mix(P)
    X = [map_to_pixels(p) for p in P]
    T = F.cat([tok(x) for tok, x in zip(m.tokenizers, X)], dim=1)
    T = m.transformers[0](T)
    starts = np.cumsum((0,) + m.num_tokens)
    for l in range(3):
        want = m.projectors[l](X[l], T[:, starts[l]:starts[l + 1]])
        np.testing.assert_allclose(M[l].data, pixels_to_map(want, *P[l].shape[2:]).data, atol=1e-12)


@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_loss_falls_on_a_fixed_batch(kind, train_steps):
    rng = np.random.default_rng(0)
    if kind == "classifier":
        m = tiny_classifier(num_classes=4, dim=8)
        x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 4, 16)
    else:
        m = tiny_segmenter()
        blocks = rng.integers(0, 4, (4, 4, 4))                         # 4x4 blocks of 4x4 pixels, one class each
        y = blocks.repeat(4, axis=1).repeat(4, axis=2)                  # (4, 16, 16) label maps
        x = (y[:, None] + 0.3 * rng.standard_normal((4, 1, 16, 16))).astype(np.float32)
    losses = train_steps(m, x, y, steps=40)
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------- multiply-adds
def test_count_macs_matches_hand_counts():
    lin = minivit.nn.Linear(5, 7)
    assert count_macs(lin, np.zeros((3, 5), np.float32))["total"] == 3 * 7 * 5
    conv = minivit.nn.Conv2d(3, 4, 3, padding=1)
    assert count_macs(conv, np.zeros((2, 3, 6, 6), np.float32))["conv2d"] == 2 * 4 * 36 * 3 * 9
    tok = FilterTokenizer(4, 3)
    # X W_A: N*C*L, then A^T X: L*N*C
    assert count_macs(tok, np.zeros((1, 10, 4), np.float32))["matmul"] == 10 * 4 * 3 + 3 * 10 * 4
    with pytest.raises(ValueError, match="no recorded graph"):
        count_macs(lambda a: a * 2, np.zeros(3, np.float32))


def test_vt_mixer_is_cheaper_than_the_conv_mixer():
    vt, conv = models.create("vt_seg_fmnist"), models.create("fpn_seg_fmnist")
    D, levels = 32, [(28, 28), (14, 14), (7, 7)]
    assert conv.mixer_macs() == sum(H * W * D * D * 9 for H, W in levels)          # one 3x3 conv per level
    # per level: X W_A, A^T X, X W_Q, T W_K, logits, P T (L = 8), then the transformer on 24 tokens
    L, Lt = 8, 24
    per_level = sum(H * W * D * L * 2 + H * W * D * D + L * D * D + H * W * L * D * 2 for H, W in levels)
    transformer = 2 * Lt * D * D // 2 + Lt * Lt * D // 2 + Lt * Lt * D + 2 * Lt * D * D
    assert vt.mixer_macs() == per_level + transformer
    assert conv.mixer_macs() > 4 * vt.mixer_macs()


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clearly():
    tok, rec, tf, proj = FilterTokenizer(4, 3), RecurrentTokenizer(4), TokenTransformer(4), Projector(4)
    X = minivit.tensor(np.zeros((2, 6, 4), np.float32))
    with pytest.raises(ValueError, match=r"FilterTokenizer: expected X of shape \(B, HW, 4\).*got \(2, 6, 5\)"):
        tok(minivit.tensor(np.zeros((2, 6, 5), np.float32)))
    with pytest.raises(ValueError, match=r"RecurrentTokenizer: T_in must have shape \(B=2, L, 4\).*got \(2, 3, 5\)"):
        rec(X, minivit.tensor(np.zeros((2, 3, 5), np.float32)))
    with pytest.raises(ValueError, match=r"T_in must have shape \(B=2, L, 4\).*got \(1, 3, 4\)"):
        rec(X, minivit.tensor(np.zeros((1, 3, 4), np.float32)))
    with pytest.raises(ValueError, match=r"TokenTransformer: expected tokens of shape \(B, L, 4\)"):
        tf(minivit.tensor(np.zeros((2, 3, 6), np.float32)))
    with pytest.raises(ValueError, match=r"Projector: tokens must have shape \(B=2, L, 4\)"):
        proj(X, minivit.tensor(np.zeros((2, 3, 8), np.float32)))
    with pytest.raises(ValueError, match="recurrent tokenizer needs the previous module's tokens T_in"):
        VTModule(4, tokenizer="recurrent")(X)
    with pytest.raises(ValueError, match="X has 6 pixel rows but the map is 2x4 = 8 pixels"):
        pixels_to_map(X, 2, 4)
    m = models.create("vt_seg_fmnist")
    with pytest.raises(ValueError, match="expects \\(B, 1, H, W\\): 1 input channel"):
        m(minivit.tensor(np.zeros((1, 3, 56, 56), np.float32)))
    with pytest.raises(ValueError, match="the input 28x30 must have sides divisible by 8"):
        m(minivit.tensor(np.zeros((1, 1, 28, 30), np.float32)))
    with pytest.raises(ValueError, match="expects \\(B, 1, H, W\\)"):
        models.create("vt_fmnist")(minivit.tensor(np.zeros((1, 28, 28), np.float32)))


@pytest.mark.parametrize("name,kw,msg", [
    ("vt_seg_fmnist", dict(img_size=60), "img_size=60 must be divisible by 8"),
    ("vt_seg_fmnist", dict(num_tokens=(8, 8)), "num_tokens has 2 values but widths has 3"),
    ("vt_seg_fmnist", dict(num_tokens=(8, 0, 8)), "num_tokens\\[1\\] must be a positive integer, got num_tokens\\[1\\]=0"),
    ("vt_seg_fmnist", dict(mixer="attention"), "mixer must be 'vt' or 'conv', got 'attention'"),
    ("vt_seg_fmnist", dict(fpn_dim=31), "TokenTransformer: dim=31 must be even"),
    ("vt_fmnist", dict(depth=0), "depth must be a positive integer"),
    ("vt_fmnist", dict(dim=47), "TokenTransformer: dim=47 must be even"),
])
def test_bad_configurations_raise_clearly(name, kw, msg):
    with pytest.raises(ValueError, match=msg):
        models.create(name, **kw)
    with pytest.raises(ValueError, match="tokenizer must be 'filter' or 'recurrent'"):
        VTModule(4, tokenizer="conv")
