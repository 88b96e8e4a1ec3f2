"""Swin: windows, relative positions, the shift mask, shifted-window attention
against a slow explicit-coordinate reference, patch merging, gradcheck,
learning, configs and errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit import models
from minivit.models.swin import (PatchMerging, SwinTransformer, SwinTransformerBlock, convert_official_state_dict,
                                 relative_position_index, shift_region_labels, shifted_window_mask,
                                 window_partition, window_reverse)


def tiny(**kw):
    """4x4 grid, 2x2 windows (shift 1) in stage 0; a 2x2 single window in stage 1."""
    cfg = dict(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depths=(2, 1),
               num_heads=(2, 2), window_size=2, mlp_ratio=2.0, drop_path_rate=0.0)
    cfg.update(kw)
    return SwinTransformer(**cfg)


def randomize_bias_tables(model, rng, std=0.5):
    """The tables start near zero (trunc-normal 0.02): make them matter in the checks."""
    for n, p in model.named_parameters():
        if "relative_position_bias_table" in n:
            p.data[...] = rng.normal(0, std, p.shape)


@pytest.fixture(scope="module")
def swin_t():
    """Swin-T is slow to build (28M parameters): build it once for the module."""
    return models.create("swin_tiny_patch4_window7_224")


# --------------------------------------------------------------- configs
def test_registry_and_param_counts(swin_t):
    assert models.list_models("swin_*") == ["swin_fmnist", "swin_tiny_patch4_window7_224"]
    assert swin_t.num_params() == 28_288_354                                      # PAPERS.md section 7
    assert models.create("swin_fmnist").num_params() == 210_844


def test_state_dict_names_follow_timm(swin_t):
    m = swin_t
    sd = m.state_dict()
    for k in ["patch_embed.proj.weight", "patch_embed.norm.weight", "layers.0.blocks.0.norm1.weight",
              "layers.0.blocks.0.attn.relative_position_bias_table", "layers.0.blocks.0.attn.qkv.weight",
              "layers.0.blocks.1.attn.proj.bias", "layers.0.blocks.1.mlp.fc1.weight",
              "layers.1.downsample.norm.weight", "layers.1.downsample.reduction.weight",
              "layers.3.blocks.1.mlp.fc2.bias", "norm.weight", "head.fc.weight", "head.fc.bias"]:
        assert k in sd, k
    assert sd["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (169, 3)
    assert sd["layers.1.downsample.reduction.weight"].shape == (192, 384)       # bias-free 4C -> 2C
    assert "layers.1.downsample.reduction.bias" not in sd and "layers.0.downsample.norm.weight" not in sd
    # the index and the masks are recomputed from the config: not saved (as in timm)
    assert not any("relative_position_index" in k or "attn_mask" in k for k in sd)
    assert m.no_weight_decay() == {n for n in sd if n.endswith("relative_position_bias_table")}


def test_layout_follows_the_reference_rules(swin_t):
    rows = swin_t.layout()
    assert [(r["resolution"], r["window"], r["shift"]) for r in rows if r["block"] < 2] == [
        ((56, 56), 7, 0), ((56, 56), 7, 3), ((28, 28), 7, 0), ((28, 28), 7, 3),
        ((14, 14), 7, 0), ((14, 14), 7, 3), ((7, 7), 7, 0), ((7, 7), 7, 0)]   # stage 4: one window, no shift
    assert [r["windows"] for r in rows if r["block"] == 0] == [64, 16, 4, 1]
    fm = models.create("swin_fmnist").layout()
    assert [(r["resolution"], r["window"], r["shift"], r["windows"]) for r in fm[:3]] == [
        ((14, 14), 7, 0, 4), ((14, 14), 7, 3, 4), ((7, 7), 7, 0, 1)]


# --------------------------------------------------------------- windows
@settings(max_examples=20)
@given(B=st.integers(1, 2), nh=st.integers(1, 3), nw=st.integers(1, 3), M=st.integers(1, 4), C=st.integers(1, 3))
def test_window_partition_and_reverse_are_inverses(B, nh, nw, M, C):
    H, W = nh * M, nw * M
    x = np.random.default_rng(0).standard_normal((B, H, W, C))
    w = window_partition(x, M)
    assert w.shape == (B * nh * nw, M, M, C)
    # window k of image b is the block at row k // nw, column k % nw (batch-major, then row-major)
    for b in range(B):
        for k in range(nh * nw):
            i, j = divmod(k, nw)
            np.testing.assert_array_equal(w[b * nh * nw + k], x[b, i * M:(i + 1) * M, j * M:(j + 1) * M])
    np.testing.assert_array_equal(window_reverse(w, M, H, W), x)
    # the same on Tensors, with a gradcheck through both
    xt = minivit.tensor(x, requires_grad=True)
    np.testing.assert_array_equal(window_reverse(window_partition(xt, M), M, H, W).data, x)
    minivit.gradcheck(lambda a: window_partition(a, M) * 2.0, [xt], max_checks=10)


@pytest.mark.parametrize("M", [1, 2, 3, 4, 7])
def test_relative_position_index_equals_a_double_loop(M):
    idx = relative_position_index(M)
    slow = np.zeros((M * M, M * M), np.int64)
    for i in range(M * M):
        for j in range(M * M):
            (ri, ci), (rj, cj) = divmod(i, M), divmod(j, M)
            slow[i, j] = (ri - rj + M - 1) * (2 * M - 1) + (ci - cj + M - 1)
    np.testing.assert_array_equal(idx, slow)
    assert idx.min() == 0 and idx.max() == (2 * M - 1) ** 2 - 1
    assert len(np.unique(idx)) == (2 * M - 1) ** 2          # every table row is used
    assert np.all(np.diag(idx) == (M - 1) * (2 * M - 1) + M - 1)   # offset (0, 0) sits in the middle


def test_shift_mask_regions_on_a_4x4_window_example():
    # 8x8 map, M = 4, s = 2: rows split [0, 4) [4, 6) [6, 8), columns likewise
    expected = np.array([[0, 0, 0, 0, 1, 1, 2, 2]] * 4 + [[3, 3, 3, 3, 4, 4, 5, 5]] * 2
                        + [[6, 6, 6, 6, 7, 7, 8, 8]] * 2)
    labels = shift_region_labels(8, 8, 4, 2)
    np.testing.assert_array_equal(labels, expected)
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16) and set(np.unique(mask)) == {0.0, -100.0}
    for w in range(4):
        r0, c0 = divmod(w, 2)
        lab = expected[r0 * 4:(r0 + 1) * 4, c0 * 4:(c0 + 1) * 4].reshape(-1)   # labels of window w's tokens
        np.testing.assert_array_equal(mask[w] == 0, lab[:, None] == lab[None, :])
    # window 0 is all one region; windows 1 and 2 hold two regions of 8 tokens; window 3 four of 4
    regions = [len(np.unique(expected[r * 4:(r + 1) * 4, c * 4:(c + 1) * 4])) for r in range(2) for c in range(2)]
    assert regions == [1, 2, 2, 4]
    assert [(mask[w] == 0).sum() for w in range(4)] == [256, 2 * 64, 2 * 64, 4 * 16]
    np.testing.assert_array_equal(mask, mask.transpose(0, 2, 1))    # "same region" is symmetric


# --------------------------------------------------------------- the trick
def slow_shifted_window_attention(attn, x, M, s):
    """(S)W-MSA by explicit coordinates, with no roll and no mask.

    Token (r, c) of the un-rolled map belongs to the shifted window
    ((r - s) // M, (c - s) // M) (floor division: rows above s form the first,
    smaller window), and attends to exactly the tokens of that window, with the
    relative position bias of the offset (r - r', c - c').
    """
    B, H, W, C = x.shape
    nH = attn.num_heads
    d = C // nH
    Wqkv, bqkv = attn.qkv.weight.data, attn.qkv.bias.data
    table = attn.relative_position_bias_table.data
    q_all = (x @ Wqkv.T + bqkv).reshape(B, H, W, 3, nH, d)
    out = np.zeros((B, H, W, nH, d))
    win = lambda p: (p - s) // M  # noqa: E731
    for r in range(H):
        for c in range(W):
            keys = [(r2, c2) for r2 in range(H) for c2 in range(W) if win(r2) == win(r) and win(c2) == win(c)]
            rows = np.array([(r - r2 + M - 1) * (2 * M - 1) + (c - c2 + M - 1) for r2, c2 in keys])
            kr, kc = np.array(keys).T
            for b in range(B):
                q = q_all[b, r, c, 0]                             # (nH, d)
                k = q_all[b, kr, kc, 1]                           # (n_keys, nH, d)
                v = q_all[b, kr, kc, 2]
                logits = np.einsum("hd,nhd->hn", q, k) / np.sqrt(d) + table[rows].T
                p = np.exp(logits - logits.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                out[b, r, c] = np.einsum("hn,nhd->hd", p, v)
    out = out.reshape(B, H, W, C)
    return out @ attn.proj.weight.data.T + attn.proj.bias.data


@pytest.mark.parametrize("H,W,M,shift", [(8, 8, 4, 2), (8, 8, 4, 0), (8, 12, 4, 1), (14, 14, 7, 3)])
def test_shifted_window_attention_equals_explicit_windows(H, W, M, shift):
    rng = np.random.default_rng(H + W + M + shift)
    blk = SwinTransformerBlock(dim=6, input_resolution=(H, W), num_heads=2, window_size=M, shift_size=shift)
    blk.to(np.float64)
    randomize_bias_tables(blk, rng)
    x = rng.standard_normal((2, H, W, 6))
    fast = blk.window_msa(minivit.tensor(x)).data
    np.testing.assert_allclose(fast, slow_shifted_window_attention(blk.attn, x, M, shift), rtol=1e-10, atol=1e-12)


def test_shifted_attention_weights_are_zero_across_regions():
    m = models.create("swin_fmnist")
    x = minivit.tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32))
    logits, attns = m(x, return_attention=True)
    assert [len(a) for a in attns] == [2, 2]
    a = attns[0][1]                                               # stage 0, shifted block
    assert a.shape == (2, 4, 3, 49, 49)                           # (B, windows, heads, M^2, M^2)
    np.testing.assert_allclose(a.sum(-1), 1, rtol=1e-5)
    allowed = m.layers[0].blocks[1].attn_mask == 0                # (4, 49, 49)
    assert (~allowed).sum() > 0                                   # windows 1-3 hold several regions
    assert np.all(a.transpose(0, 2, 1, 3, 4)[:, :, ~allowed] < 1e-30)   # exp(-100): nothing crosses
    assert attns[1][0].shape == (2, 1, 6, 49, 49)                 # 7x7: one window
    np.testing.assert_allclose(logits.data, m(x).data, rtol=1e-5, atol=1e-6)


def test_no_shift_and_a_smaller_window_when_the_map_fits_in_one():
    b = SwinTransformerBlock(dim=4, input_resolution=7, num_heads=1, window_size=7, shift_size=3)
    assert (b.window_size, b.shift_size, b.attn_mask) == (7, 0, None)
    b = SwinTransformerBlock(dim=4, input_resolution=4, num_heads=1, window_size=7, shift_size=3)
    assert (b.window_size, b.shift_size) == (4, 0)
    assert b.attn.relative_position_bias_table.shape == (49, 1)   # (2*4-1)^2 rows
    b = SwinTransformerBlock(dim=4, input_resolution=14, num_heads=1, window_size=7, shift_size=3)
    assert (b.window_size, b.shift_size, b.attn_mask.shape) == (7, 3, (4, 49, 49))


def test_patch_merging_equals_explicit_gathering():
    rng = np.random.default_rng(0)
    pm = PatchMerging(3).to(np.float64)
    pm.norm.weight.data[...] = rng.standard_normal(12)
    pm.norm.bias.data[...] = rng.standard_normal(12)
    x = rng.standard_normal((2, 4, 6, 3))
    out = pm(minivit.tensor(x)).data
    assert out.shape == (2, 2, 3, 6)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                v = np.concatenate([x[b, 2 * i, 2 * j], x[b, 2 * i + 1, 2 * j],       # (0,0), (1,0)
                                    x[b, 2 * i, 2 * j + 1], x[b, 2 * i + 1, 2 * j + 1]])  # (0,1), (1,1)
                v = (v - v.mean()) / np.sqrt(v.var() + 1e-5) * pm.norm.weight.data + pm.norm.bias.data
                np.testing.assert_allclose(out[b, i, j], pm.reduction.weight.data @ v, rtol=1e-10)


# --------------------------------------------------------------- gradients, learning
def test_gradcheck_shifted_block():
    rng = np.random.default_rng(0)
    blk = SwinTransformerBlock(dim=4, input_resolution=4, num_heads=2, window_size=2, shift_size=1).to(np.float64)
    randomize_bias_tables(blk, rng)
    x = minivit.tensor(rng.standard_normal((2, 4, 4, 4)), requires_grad=True)
    minivit.gradcheck(lambda a: blk(a), [x], params=list(blk.parameters()), max_checks=6,
                      atol=1e-6, rtol=1e-4)


def test_gradcheck_tiny_swin():
    rng = np.random.default_rng(1)
    m = tiny().to(np.float64)
    randomize_bias_tables(m, rng)
    x = minivit.tensor(rng.standard_normal((2, 1, 8, 8)), requires_grad=True)
    minivit.gradcheck(lambda a: m(a), [x], params=list(m.parameters()), max_checks=4, atol=1e-6, rtol=1e-4)


def test_loss_falls_on_a_fixed_batch(train_steps):
    m = tiny(num_classes=4)
    rng = np.random.default_rng(0)
    x = minivit.tensor(rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    y = rng.integers(0, 4, 16)
    losses = train_steps(m, x, y, steps=40)
    assert losses[-1] < 0.5 * losses[0]


def test_shapes_pyramid_and_dtype():
    m = models.create("swin_fmnist")
    x = minivit.tensor(np.random.randn(2, 1, 28, 28).astype(np.float32))
    out = m(x)
    assert out.shape == (2, 10) and out.dtype == np.float32
    assert [f.shape for f in m.forward_stages(x)] == [(2, 14, 14, 48), (2, 7, 7, 96)]
    assert m.forward_features(x).shape == (2, 7, 7, 96)


def test_dropout_and_drop_path_only_in_training():
    m = tiny(drop_rate=0.3, drop_path_rate=0.3)
    x = minivit.tensor(np.random.randn(2, 1, 8, 8).astype(np.float32))
    m.eval()
    np.testing.assert_array_equal(m(x).data, m(x).data)
    m.train()
    assert not np.allclose(m(x).data, m(x).data)


def test_official_checkpoint_names_convert_and_load():
    rng = np.random.default_rng(0)
    m = tiny(depths=(1, 1, 1), num_heads=(1, 2, 2), img_size=16)       # grids 8, 4, 2: two merges
    ours = m.state_dict()
    # the official layout: merging at the end of the previous stage, a plain head, saved buffers
    official = {}
    for k, v in ours.items():
        for i in (1, 2):
            k = k.replace(f"layers.{i}.downsample", f"layers.{i - 1}.downsample")
        official[k.replace("head.fc.", "head.")] = rng.standard_normal(v.shape)
    official["layers.0.blocks.0.attn.relative_position_index"] = np.zeros((4, 4), np.int64)
    official["layers.0.blocks.1.attn_mask"] = np.zeros((4, 4, 4))
    assert "layers.0.downsample.reduction.weight" in official and "head.weight" in official
    converted = convert_official_state_dict({"model": official})
    assert set(converted) == set(ours)
    m.load_state_dict(converted, strict=True)
    np.testing.assert_array_equal(m.layers[1].downsample.reduction.weight.data,
                                  official["layers.0.downsample.reduction.weight"].astype(np.float32))


def test_checkpoint_round_trip(tmp_path):
    from minivit import io
    m = tiny()
    randomize_bias_tables(m, np.random.default_rng(0))
    io.save(m, tmp_path / "swin.npz")
    m2 = tiny()
    io.load(m2, tmp_path / "swin.npz")
    x = minivit.tensor(np.random.randn(2, 1, 8, 8).astype(np.float32))
    m.eval(), m2.eval()
    np.testing.assert_array_equal(m(x).data, m2(x).data)


# --------------------------------------------------------------- bad input
def test_bad_configurations_and_inputs_raise_clearly():
    with pytest.raises(ValueError, match=r"stage 0: the resolution 14x14 is not divisible by window_size=4"):
        models.create("swin_fmnist", window_size=4)
    with pytest.raises(ValueError, match=r"stage 2: the resolution 7x7 cannot be merged 2x2"):
        models.create("swin_fmnist", depths=(2, 2, 2), num_heads=(3, 6, 12))
    with pytest.raises(ValueError, match=r"stage 1: dim=96 .* is not divisible by num_heads=5"):
        models.create("swin_fmnist", num_heads=(3, 5))
    with pytest.raises(ValueError, match=r"one entry per stage"):
        models.create("swin_fmnist", num_heads=(3,))
    with pytest.raises(ValueError, match=r"window_size=\(7, 7, 7\) must be a positive int or one per stage"):
        models.create("swin_fmnist", window_size=(7, 7, 7))
    with pytest.raises(ValueError, match="patch_size=3 does not divide img_size=28"):
        models.create("swin_fmnist", patch_size=3)
    m = models.create("swin_fmnist")
    with pytest.raises(ValueError, match="x is 32x32 but this Swin was built for img_size=28x28"):
        m(minivit.tensor(np.zeros((1, 1, 32, 32), np.float32)))
    with pytest.raises(ValueError, match="expects .*1 input channel"):
        m(minivit.tensor(np.zeros((1, 3, 28, 28), np.float32)))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 14, 14, 48\)"):
        m.layers[0].blocks[0](minivit.tensor(np.zeros((1, 7, 7, 48), np.float32)))
    with pytest.raises(ValueError, match="PatchMerging: the resolution 7x7 is odd"):
        PatchMerging(4)(minivit.tensor(np.zeros((1, 7, 7, 4), np.float32)))
