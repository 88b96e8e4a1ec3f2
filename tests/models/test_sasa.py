"""SASA: the vectorised layer equals the equation pixel by pixel, gradchecks,
shapes, parameter counts, learning, and clear errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit import functional as F
from minivit import models
from minivit.models.sasa import (Bottleneck, LocalSelfAttention2d, SASAResNet, local_attention2d,
                                 neighbourhood_mask)


# ------------------------------------------------------------------ the slow, obvious version
def slow_sasa(x, Wq, Wk, Wv, rel_h, rel_w, k, heads):
    """Equation (2) of the course notes, one pixel at a time, straight from the text:

        y_ij = sum_{ab in N_k(i,j)} softmax_ab(q_ij.k_ab + q_ij.r_{a-i,b-j}) v_ab

    per head, with q = W_Q x, k = W_K x, v = W_V x (1x1), r = concat(row half,
    column half), neighbours outside the image left out. rel_h=None: equation (1).
    """
    B, _, H, W = x.shape
    C = Wq.shape[0]
    d, p = C // heads, k // 2
    q = np.einsum("oc,bchw->bohw", Wq, x)
    kk = np.einsum("oc,bchw->bohw", Wk, x)
    v = np.einsum("oc,bchw->bohw", Wv, x)
    y = np.zeros((B, C, H, W))
    for n in range(B):
        for h in range(heads):
            c = slice(h * d, (h + 1) * d)
            for i in range(H):
                for j in range(W):
                    logits, values = [], []
                    for a in range(i - p, i + p + 1):
                        for b in range(j - p, j + p + 1):
                            if not (0 <= a < H and 0 <= b < W):
                                continue                      # outside the image: not a neighbour
                            s = q[n, c, i, j] @ kk[n, c, a, b]
                            if rel_h is not None:
                                r = np.concatenate([rel_h[:, a - i + p], rel_w[:, b - j + p]])
                                s += q[n, c, i, j] @ r[c]
                            logits.append(s)
                            values.append(v[n, c, a, b])
                    w = np.exp(np.array(logits) - max(logits))
                    y[n, c, i, j] = (w / w.sum()) @ np.array(values)
    return y


def layer_weights(layer):
    sq = lambda conv: conv.weight.data[:, :, 0, 0]                  # noqa: E731  (O, C, 1, 1) -> (O, C)
    rel = (layer.rel_h.data, layer.rel_w.data) if layer.with_relative else (None, None)
    return sq(layer.query_conv), sq(layer.key_conv), sq(layer.value_conv), *rel


@settings(max_examples=12)
@given(k=st.sampled_from([3, 5, 7]), heads=st.sampled_from([1, 2, 4]), size=st.tuples(
       st.integers(1, 8), st.integers(1, 8)), with_relative=st.booleans(), seed=st.integers(0, 2**16))
def test_vectorised_layer_equals_the_slow_loop(k, heads, size, with_relative, seed):
    """Random inputs, every border case (images smaller than the window included)."""
    rng = np.random.default_rng(seed)
    H, W = size
    layer = LocalSelfAttention2d(3, 8, kernel_size=k, num_heads=heads, with_relative=with_relative)
    layer.to(np.float64)
    x = rng.standard_normal((2, 3, H, W))
    out = layer(minivit.tensor(x)).data
    np.testing.assert_allclose(out, slow_sasa(x, *layer_weights(layer), k, heads), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("k,heads", [(3, 1), (3, 8), (5, 2), (5, 4), (7, 4), (7, 8)])
def test_vectorised_layer_equals_the_slow_loop_fixed_cases(k, heads):
    rng = np.random.default_rng(k * 10 + heads)
    layer = LocalSelfAttention2d(4, 16, kernel_size=k, num_heads=heads).to(np.float64)
    x = rng.standard_normal((2, 4, 9, 6))
    out, weights = layer(minivit.tensor(x), return_attention=True)
    np.testing.assert_allclose(out.data, slow_sasa(x, *layer_weights(layer), k, heads), rtol=1e-9, atol=1e-10)
    # the weights: one k x k window per pixel and head, summing to 1, zero outside the image
    assert weights.shape == (2, heads, k, k, 9, 6)
    np.testing.assert_allclose(weights.sum(axis=(2, 3)), 1.0, rtol=1e-12)
    outside = ~neighbourhood_mask(9, 6, k)
    assert np.all(weights[:, :, outside] == 0) and np.all(weights[:, :, ~outside] > 0)


def test_neighbourhood_mask():
    m = neighbourhood_mask(4, 5, 3)                       # (k, k, H, W)
    assert m.shape == (3, 3, 4, 5)
    assert m[:, :, 1:3, 1:4].all()                        # interior pixels have all 9 neighbours
    assert m[:, :, 0, 0].sum() == 4 and m[:, :, 0, 2].sum() == 6   # corner and edge
    assert not m[0, :, 0, :].any()                        # row offset -1 from row 0 is outside
    assert neighbourhood_mask(1, 1, 7).sum() == 1         # a 1x1 map: only the pixel itself


def test_a_window_covering_the_image_is_global_attention():
    """k >= 2H-1: every pixel sees every pixel, so SASA without r is plain
    (unscaled) multi-head attention over all H*W positions."""
    rng = np.random.default_rng(0)
    B, C, H, W, heads = 2, 6, 3, 4, 2
    q, k, v = (rng.standard_normal((B, C, H, W)) for _ in range(3))
    out = local_attention2d(q, k, v, kernel_size=7, num_heads=heads).data
    tok = lambda a: a.reshape(B, heads, C // heads, H * W).transpose(0, 1, 3, 2)   # noqa: E731
    ref = F.scaled_dot_product_attention(minivit.tensor(tok(q)), minivit.tensor(tok(k)),
                                         minivit.tensor(tok(v)), scale=1.0).data
    np.testing.assert_allclose(out, ref.transpose(0, 1, 3, 2).reshape(B, C, H, W), rtol=1e-10)


def test_relative_embedding_is_row_half_then_column_half():
    layer = LocalSelfAttention2d(2, 6, kernel_size=3, num_heads=3)
    r = layer.relative_embedding().data                   # (C, k, k)
    assert r.shape == (6, 3, 3)
    np.testing.assert_array_equal(r[:3], np.broadcast_to(layer.rel_h.data[:, :, None], (3, 3, 3)))
    np.testing.assert_array_equal(r[3:], np.broadcast_to(layer.rel_w.data[:, None, :], (3, 3, 3)))


def test_with_relative_switch():
    x = minivit.tensor(np.random.default_rng(1).standard_normal((2, 4, 6, 6)).astype(np.float32))
    minivit.manual_seed(0)
    with_r = LocalSelfAttention2d(4, 8, kernel_size=3, num_heads=2)
    minivit.manual_seed(0)
    without = LocalSelfAttention2d(4, 8, kernel_size=3, num_heads=2, with_relative=False)
    assert with_r.num_params() - without.num_params() == 8 * 3            # C * k: two halves of k vectors
    assert "rel_h" not in dict(without.named_parameters())
    np.testing.assert_array_equal(with_r.query_conv.weight.data, without.query_conv.weight.data)
    assert not np.allclose(with_r(x).data, without(x).data)               # r changes the attention
    m = models.create("sasa_fmnist", with_relative=False)
    assert all(not layer.with_relative for layer in m.sasa_layers())


# ------------------------------------------------------------------ gradients
def test_gradcheck_local_attention_op():
    rng = np.random.default_rng(0)
    for k, heads, shape in [(3, 2, (2, 4, 5, 6)), (5, 1, (1, 3, 4, 2)), (7, 4, (1, 8, 4, 5))]:
        ins = [minivit.tensor(rng.standard_normal(shape), requires_grad=True) for _ in range(3)]
        rel = minivit.tensor(rng.standard_normal((shape[1], k, k)), requires_grad=True)
        minivit.gradcheck(lambda q, kk, v, r: local_attention2d(q, kk, v, k, heads, r), ins + [rel],
                          max_checks=25, atol=1e-7, rtol=1e-5)
        minivit.gradcheck(lambda q, kk, v: local_attention2d(q, kk, v, k, heads), ins,
                          max_checks=25, atol=1e-7, rtol=1e-5)


def test_gradcheck_layer_and_tiny_model():
    rng = np.random.default_rng(0)
    layer = LocalSelfAttention2d(3, 4, kernel_size=5, num_heads=2).to(np.float64)
    x = minivit.tensor(rng.standard_normal((2, 3, 4, 5)), requires_grad=True)
    minivit.gradcheck(lambda a: layer(a), [x], params=list(layer.parameters()), max_checks=10,
                      atol=1e-7, rtol=1e-5)
    m = SASAResNet(layers=(1, 1), widths=(4, 4), in_chans=1, num_classes=3, kernel_size=3, num_heads=2,
                   stem_width=4, stem_kernel=3, stem_stride=1, stem_pool=False).to(np.float64)
    x = rng.standard_normal((2, 1, 6, 6))
    with minivit.no_grad():                 # move the running statistics off (0, 1): with them, a pixel
        m(minivit.tensor(rng.standard_normal((4, 1, 6, 6))))   # where the stem's ReLU zeroes every
    m.eval()                                # channel sits exactly on the next ReLU's kink
    minivit.gradcheck(lambda a: m(a), [minivit.tensor(x, requires_grad=True)], params=list(m.parameters()),
                      max_checks=4, atol=1e-7, rtol=1e-4)


# ------------------------------------------------------------------ the models
def test_registry_and_param_counts():
    assert {"sasa_fmnist", "sasa_resnet26", "sasa_resnet50"} <= set(models.list_models("sasa_*"))
    # attention ResNet-26 with full 1x1 projections: PAPERS.md's 10.34M, the paper's 10.3M
    assert models.create("sasa_resnet26").num_params() == 10_342_632
    assert models.create("sasa_resnet50").num_params() == 18_038_632          # paper: 18.0M
    assert models.create("sasa_fmnist").num_params() == 24_698


def test_state_dict_names():
    sd = models.create("sasa_resnet26").state_dict()
    keys = set(sd)
    for key in ["conv1.weight", "bn1.running_mean", "layers.0.0.conv1.weight",
                "layers.0.0.conv2.query_conv.weight", "layers.0.0.conv2.key_conv.weight",
                "layers.0.0.conv2.value_conv.weight", "layers.0.0.conv2.rel_h", "layers.0.0.conv2.rel_w",
                "layers.0.0.downsample.conv.weight", "layers.2.3.conv3.weight", "fc.weight"]:
        assert key in keys, key
    assert "layers.2.1.downsample.conv.weight" not in keys                    # identity shortcut
    assert sd["layers.3.0.conv2.query_conv.weight"].shape == (512, 512, 1, 1)
    assert sd["layers.3.0.conv2.rel_h"].shape == (256, 7)


def test_forward_shapes_dtype_and_attention():
    m = models.create("sasa_fmnist")
    x = minivit.tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32))
    out = m(x)
    assert out.shape == (2, 10) and out.dtype == np.float32
    m.eval()
    logits, attns = m(x, return_attention=True)
    assert [a.shape for a in attns] == [(2, 4, 7, 7, 14, 14), (2, 4, 7, 7, 14, 14)]
    np.testing.assert_allclose(m(x).data, logits.data, rtol=1e-5, atol=1e-6)
    # other image sizes work, including maps smaller than the window deep in the net
    assert m(minivit.tensor(np.zeros((1, 1, 8, 8), np.float32))).shape == (1, 10)
    assert m(minivit.tensor(np.zeros((1, 1, 15, 9), np.float32))).shape == (1, 10)


def test_stride_two_block_halves_odd_sizes_on_both_paths():
    blk = Bottleneck(8, 4, stride=2, kernel_size=3, num_heads=2)
    assert blk(minivit.tensor(np.ones((1, 8, 7, 7), np.float32))).shape == (1, 16, 3, 3)


def test_loss_falls_on_a_fixed_batch(train_steps):
    m = SASAResNet(layers=(1, 1), widths=(8, 8), in_chans=1, num_classes=4, kernel_size=3, num_heads=2,
                   stem_width=8, stem_kernel=3, stem_stride=1, stem_pool=False)
    rng = np.random.default_rng(0)
    x = minivit.tensor(rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    y = rng.integers(0, 4, 16)
    losses = train_steps(m, x, y, steps=30)
    assert losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------------------ bad input
def test_bad_configurations_raise_clearly():
    for k in (4, 0, -3):
        with pytest.raises(ValueError, match=f"kernel_size must be a positive odd int.*got {k}"):
            LocalSelfAttention2d(4, 8, kernel_size=k)
    with pytest.raises(TypeError, match="kernel_size must be a positive odd int"):
        LocalSelfAttention2d(4, 8, kernel_size=3.0)
    with pytest.raises(ValueError, match="num_heads=3 does not divide out_channels=8"):
        LocalSelfAttention2d(4, 8, num_heads=3)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        LocalSelfAttention2d(4, 8, num_heads=0)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int.*got 6"):
        models.create("sasa_fmnist", kernel_size=6)
    with pytest.raises(ValueError, match="num_heads=3 does not divide a stage width=16"):
        models.create("sasa_fmnist", num_heads=3)
    with pytest.raises(ValueError, match="one entry per stage"):
        SASAResNet(layers=(1, 1), widths=(8,))
    q = np.zeros((1, 6, 4, 4), np.float32)
    with pytest.raises(ValueError, match="num_heads=4 does not divide channels C=6"):
        local_attention2d(q, q, q, 3, 4)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int.*got 2"):
        local_attention2d(q, q, q, 2, 2)
    with pytest.raises(ValueError, match="same shape"):
        local_attention2d(q, q[:, :, :2], q, 3, 2)
    with pytest.raises(ValueError, match=r"rel must have shape \(C, k, k\) = \(6, 3, 3\)"):
        local_attention2d(q, q, q, 3, 2, rel=np.zeros((6, 5, 5), np.float32))


def test_bad_inputs_raise_clearly_and_small_images_do_not():
    m = models.create("sasa_fmnist")
    with pytest.raises(ValueError, match="expects .*1 input channel"):
        m(minivit.tensor(np.zeros((2, 3, 28, 28), np.float32)))
    layer = LocalSelfAttention2d(4, 8, kernel_size=7, num_heads=2)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 4, H, W\)"):
        layer(minivit.tensor(np.zeros((2, 3, 5, 5), np.float32)))
    # an image smaller than the window is valid: neighbours outside are masked out
    out, w = layer(minivit.tensor(np.ones((1, 4, 2, 3), np.float32)), return_attention=True)
    assert out.shape == (1, 8, 2, 3) and np.isfinite(out.data).all()
    assert (w > 0).sum(axis=(2, 3)).max() == 6            # each pixel sees all 6 pixels, nothing else
