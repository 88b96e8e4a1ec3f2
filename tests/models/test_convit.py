"""ConViT: GPSA against slow loops, relative indices, local init, gates, gradcheck, learning, errors."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit import models, nn
from minivit.models.convit import GPSA, ConViT, local_init_offsets, nonlocality, rel_indices


def tiny(**kw):
    cfg = dict(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=4,
               mlp_ratio=2.0, local_up_to_layer=1)
    cfg.update(kw)
    return ConViT(**cfg)


def randomise_gpsa(model, seed=0):
    """Give every GPSA layer random gates, pos_proj and v (away from the structured init)."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, GPSA):
            for p in (m.gating_param, m.pos_proj.weight, m.pos_proj.bias, m.v.weight):
                p.data = (p.data + rng.standard_normal(p.shape)).astype(p.dtype)
    return model


# --------------------------------------------------------------------------- configs
def test_registry_param_counts_and_names():
    assert models.list_models("convit_*") == ["convit_fmnist", "convit_tiny"]
    assert models.create("convit_tiny").num_params() == 5_710_512          # PAPERS.md 5 (timm: 5.71M)
    m = models.create("convit_fmnist")
    assert m.num_params() == 204_826
    sd = m.state_dict()
    for k in ["cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qk.weight",
              "blocks.0.attn.v.weight", "blocks.0.attn.proj.bias", "blocks.0.attn.pos_proj.weight",
              "blocks.0.attn.pos_proj.bias", "blocks.0.attn.gating_param", "blocks.3.attn.gating_param",
              "blocks.4.attn.qkv.weight", "blocks.5.attn.proj.weight", "blocks.5.mlp.fc2.bias",
              "norm.weight", "head.weight"]:
        assert k in sd, k
    assert "blocks.0.attn.qk.bias" not in sd and "blocks.4.attn.qkv.bias" not in sd   # no q/k/v bias
    assert "blocks.4.attn.gating_param" not in sd and not any("rel_indices" in k for k in sd)
    assert sd["pos_embed"].shape == (1, 49, 64)                                      # no class-token slot
    assert sd["blocks.0.attn.qk.weight"].shape == (128, 64) and sd["blocks.0.attn.pos_proj.weight"].shape == (4, 3)


def test_forward_shapes_attention_and_gates():
    m = models.create("convit_fmnist")
    x = minivit.tensor(np.random.randn(2, 1, 28, 28).astype(np.float32))
    out = m(x)
    assert out.shape == (2, 10) and out.dtype == np.float32
    logits, attns = m(x, return_attention=True)
    assert [a.shape for a in attns] == [(2, 4, 49, 49)] * 4 + [(2, 4, 50, 50)] * 2
    for a in attns:
        np.testing.assert_allclose(np.asarray(a).sum(-1), 1, rtol=1e-5)
    np.testing.assert_allclose(logits.data, out.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.gates(), np.full((4, 4), 1 / (1 + math.exp(-1))))   # sigma(1) at init
    assert m.nonlocality(x).shape == (6, 4)


# --------------------------------------------------------------------------- relative indices
def slow_rel_indices(gh, gw):
    r = np.zeros((gh * gw, gh * gw, 3))
    for i in range(gh * gw):                 # query patch i at (row yi, column xi)
        for j in range(gh * gw):             # key patch j
            yi, xi = i // gw, i % gw
            yj, xj = j // gw, j % gw
            dx, dy = xj - xi, yj - yi
            r[i, j] = [dx, dy, dx * dx + dy * dy]
    return r[None]


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (7, 7), (3, 5), (4, 2)])
def test_rel_indices_equal_a_double_loop(grid):
    np.testing.assert_array_equal(rel_indices(grid), slow_rel_indices(*grid))
    if grid[0] == grid[1]:
        np.testing.assert_array_equal(rel_indices(grid[0]), slow_rel_indices(*grid))


# --------------------------------------------------------------------------- local init
# Head h = h1 + k*h2 must attend to the offset (dx, dy) = (h2 - c, h1 - c), written out by hand.
NINE_HEAD_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)]
# With 4 heads (c = 0.5) each head's maximum is the 2x2 block {dx} x {dy}:
FOUR_HEAD_BLOCKS = [((-1, 0), (-1, 0)), ((-1, 0), (0, 1)), ((0, 1), (-1, 0)), ((0, 1), (0, 1))]


def test_local_init_offsets_table():
    np.testing.assert_array_equal(local_init_offsets(9), np.array(NINE_HEAD_OFFSETS, float))
    np.testing.assert_array_equal(local_init_offsets(4), [[-.5, -.5], [-.5, .5], [.5, -.5], [.5, .5]])
    np.testing.assert_array_equal(local_init_offsets(1), [[0, 0]])


def test_local_init_nine_heads_peak_at_their_offset():
    S = 7
    attn = GPSA(18, num_heads=9, locality_strength=10.0)
    np.testing.assert_array_equal(attn.v.weight.data, np.eye(18))
    pos = attn.positional_scores((S, S)).data[0]                 # (H, N, N)
    r = rel_indices(S)[0]
    for h, (dx, dy) in enumerate(NINE_HEAD_OFFSETS):
        for i in range(S * S):
            y, x = divmod(i, S)
            if not (0 <= x + dx < S and 0 <= y + dy < S):
                continue                                         # the target falls off the grid
            j = int(pos[h, i].argmax())
            assert (r[i, j, 0], r[i, j, 1]) == (dx, dy), (h, i)
            assert j == (y + dy) * S + (x + dx)
            assert pos[h, i, j] > 0.99                           # alpha = 10: a sharp peak


def test_local_init_four_heads_tie_on_a_two_by_two_block():
    S = 7
    attn = GPSA(8, num_heads=4, locality_strength=10.0)
    logits = attn.pos_proj(minivit.tensor(rel_indices(S).astype(np.float32))).data[0]   # (N, N, H)
    pos = attn.positional_scores((S, S)).data[0]
    r = rel_indices(S)[0]
    centre = 3 * S + 3
    for h, (dxs, dys) in enumerate(FOUR_HEAD_BLOCKS):
        row = logits[centre, :, h]
        best = np.flatnonzero(row == row.max())
        got = {(int(r[centre, j, 0]), int(r[centre, j, 1])) for j in best}
        assert got == {(dx, dy) for dx in dxs for dy in dys}, h        # exactly four tied maxima
        np.testing.assert_allclose(pos[h, centre, best], 0.25, atol=1e-3)


@settings(max_examples=10)
@given(alpha=st.floats(0.1, 20.0), k=st.sampled_from([1, 2, 3, 4]))
def test_positional_logit_is_minus_alpha_squared_distance_to_the_offset(alpha, k):
    H = k * k
    attn = GPSA(2 * H, num_heads=H, locality_strength=alpha).to(np.float64)
    attn.local_init()                                                       # again, now in float64
    attn.pos_proj.bias.data[...] = 0
    r = rel_indices(5)
    logits = attn.pos_proj(minivit.tensor(r)).data[0]                      # (N, N, H)
    delta = local_init_offsets(H)                                           # (H, 2)
    d = r[0, :, :, None, :2] - delta                                        # (N, N, H, 2)
    expected = -alpha * (d ** 2).sum(-1) + alpha * (delta ** 2).sum(-1)
    np.testing.assert_allclose(logits, expected, rtol=1e-12, atol=1e-10)


# --------------------------------------------------------------------------- GPSA = its formula, by loops
def slow_gpsa(attn, x, grid):
    """GPSA written from the course formula, one image, head, query and key at a time."""
    B, N, C = x.shape
    H, d = attn.num_heads, attn.head_dim
    Wqk, Wv = attn.qk.weight.data, attn.v.weight.data
    Wpos, bpos = attn.pos_proj.weight.data, attn.pos_proj.bias.data
    lam = attn.gating_param.data
    r = slow_rel_indices(*grid)[0]
    out = np.zeros((B, N, C))
    for b in range(B):
        heads = []
        for h in range(H):
            Q = x[b] @ Wqk[h * d:(h + 1) * d].T                   # q channels come first, head-major
            K = x[b] @ Wqk[C + h * d:C + (h + 1) * d].T
            V = x[b] @ Wv[h * d:(h + 1) * d].T
            gate = 1 / (1 + math.exp(-lam[h]))
            head = np.zeros((N, d))
            for i in range(N):
                content = np.array([Q[i] @ K[j] / math.sqrt(d) for j in range(N)])
                position = np.array([Wpos[h] @ r[i, j] + bpos[h] for j in range(N)])
                p1 = np.exp(content - content.max()) / np.exp(content - content.max()).sum()
                p2 = np.exp(position - position.max()) / np.exp(position - position.max()).sum()
                A = (1 - gate) * p1 + gate * p2
                A = A / A.sum()                                   # normalize
                head[i] = sum(A[j] * V[j] for j in range(N))
            heads.append(head)
        out[b] = np.concatenate(heads, axis=1) @ attn.proj.weight.data.T + attn.proj.bias.data
    return out


@pytest.mark.parametrize("heads,grid", [(4, (3, 3)), (1, (2, 3)), (9, (2, 2))])
def test_gpsa_equals_the_slow_formula(heads, grid):
    attn = randomise_gpsa(GPSA(2 * heads, num_heads=heads).to(np.float64), seed=heads)
    x = np.random.default_rng(1).standard_normal((2, grid[0] * grid[1], 2 * heads))
    out = attn(minivit.tensor(x), grid=grid)
    np.testing.assert_allclose(out.data, slow_gpsa(attn, x, grid), rtol=1e-10, atol=1e-12)


def test_gate_extremes_give_pure_content_or_pure_position():
    attn = GPSA(8, num_heads=4).to(np.float64)
    x = minivit.tensor(np.random.default_rng(0).standard_normal((2, 9, 8)))
    attn.gating_param.data[...] = [-60.0, 60.0, -60.0, 60.0]             # sigma = 0, 1, 0, 1
    patch, pos, A = attn.get_attention(x)
    np.testing.assert_allclose(A.data[:, 0::2], patch.data[:, 0::2], atol=1e-12)
    np.testing.assert_allclose(A.data[:, 1::2], np.broadcast_to(pos.data[:, 1::2], (2, 2, 9, 9)), atol=1e-12)


def test_pos_proj_bias_cancels_in_the_softmax():
    attn = randomise_gpsa(GPSA(8, num_heads=4).to(np.float64))
    x = minivit.tensor(np.random.default_rng(0).standard_normal((2, 16, 8)))
    before = attn(x).data
    attn.pos_proj.bias.data += 5.0
    np.testing.assert_allclose(attn(x).data, before, atol=1e-12)
    attn(x).sum().backward()
    np.testing.assert_allclose(attn.pos_proj.bias.grad, 0, atol=1e-12)


# --------------------------------------------------------------------------- diagnostics
def test_nonlocality_equals_a_loop():
    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 6, 6))
    a /= a.sum(-1, keepdims=True)
    expected = np.zeros(3)
    for h in range(3):
        for b in range(2):
            for i in range(6):
                for j in range(6):
                    (yi, xi), (yj, xj) = divmod(i, 3), divmod(j, 3)
                    expected[h] += a[b, h, i, j] * math.hypot(xj - xi, yj - yi) / (2 * 6)
    np.testing.assert_allclose(nonlocality(a, (2, 3)), expected)
    assert nonlocality(np.eye(4)[None, None], 2)[0] == 0              # attending to yourself: distance 0


def test_nonlocality_of_a_sharp_local_init_is_the_offset_length():
    m = tiny(num_heads=9, embed_dim=18, locality_strength=20.0, local_up_to_layer=1).to(np.float64)
    m.blocks[0].attn.gating_param.data[...] = 60.0                     # positional attention only
    x = minivit.tensor(np.random.default_rng(0).standard_normal((1, 1, 8, 8)))
    D = m.nonlocality(x)[0]
    # interior queries attend at distance |Delta^h|; border queries shift to the nearest patch
    assert D[4] < 1e-6 and np.all(D[[1, 3, 5, 7]] < 1.0) and np.all(D[[0, 2, 6, 8]] < math.sqrt(2))
    assert np.all(D[[0, 2, 6, 8]] > D[[1, 3, 5, 7]].max())


# --------------------------------------------------------------------------- gradients and learning
def test_gradcheck_tiny_convit():
    m = randomise_gpsa(tiny().to(np.float64))
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    minivit.gradcheck(lambda a: m(a), [minivit.tensor(x, requires_grad=True)], params=list(m.parameters()),
                      max_checks=6, atol=1e-6, rtol=1e-4)


def test_gradcheck_gpsa_rectangular_grid():
    attn = randomise_gpsa(GPSA(8, num_heads=4).to(np.float64), seed=3)
    x = np.random.default_rng(2).standard_normal((2, 6, 8))
    minivit.gradcheck(lambda a: attn(a, grid=(2, 3)), [minivit.tensor(x, requires_grad=True)],
                      params=list(attn.parameters()), max_checks=10, atol=1e-7, rtol=1e-5)


def test_loss_falls_on_a_fixed_batch(train_steps):
    m = tiny(num_classes=4)
    rng = np.random.default_rng(0)
    x = minivit.tensor(rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    y = rng.integers(0, 4, 16)
    losses = train_steps(m, x, y, steps=40)
    assert losses[-1] < 0.5 * losses[0]
    assert not np.allclose(m.gates(), 1 / (1 + math.exp(-1)))           # the gates learn too


def test_other_image_sizes_resize_the_position_embedding():
    m = tiny()
    assert m(minivit.tensor(np.random.randn(2, 1, 16, 16).astype(np.float32))).shape == (2, 3)
    assert m(minivit.tensor(np.random.randn(2, 1, 8, 12).astype(np.float32))).shape == (2, 3)


def test_dropout_and_drop_path_only_in_training():
    m = tiny(drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.3)
    x = minivit.tensor(np.random.randn(2, 1, 8, 8).astype(np.float32))
    m.eval()
    np.testing.assert_array_equal(m(x).data, m(x).data)
    m.train()
    assert not np.allclose(m(x).data, m(x).data)
    assert isinstance(m.blocks[1].drop_path, nn.DropPath) and isinstance(m.blocks[0].drop_path, nn.Identity)


# --------------------------------------------------------------------------- bad input
def test_bad_configurations_raise_clearly():
    with pytest.raises(ValueError, match=r"num_heads=6 is not a perfect square.*1, 4, 9, 16, 25.*local_init=False"):
        tiny(num_heads=6, embed_dim=12)
    with pytest.raises(ValueError, match="num_heads=2 is not a perfect square"):
        GPSA(8, num_heads=2)
    GPSA(12, num_heads=6, local_init=False)                              # allowed without the local init
    tiny(num_heads=2, local_up_to_layer=0)                               # no GPSA layer: no constraint
    with pytest.raises(ValueError, match="local_up_to_layer=13 must be between 0 and depth=12"):
        models.create("convit_tiny", local_up_to_layer=13)
    with pytest.raises(ValueError, match="local_up_to_layer=6 equals depth=6.*at most depth-1=5"):
        models.create("convit_fmnist", local_up_to_layer=6)
    with pytest.raises(ValueError, match="local_up_to_layer=-1 must be between 0"):
        models.create("convit_fmnist", local_up_to_layer=-1)
    with pytest.raises(ValueError, match="locality_strength must be > 0"):
        GPSA(8, num_heads=4, locality_strength=0.0)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        models.create("convit_fmnist", num_heads=9)


def test_bad_inputs_raise_clearly():
    attn = GPSA(8, num_heads=4)
    with pytest.raises(ValueError, match="10 tokens do not form a square grid.*class token"):
        attn(minivit.tensor(np.zeros((1, 10, 8), np.float32)))          # 9 patches + a class token
    with pytest.raises(ValueError, match=r"grid=\(2, 2\) has 4 patches but x has N=6"):
        attn(minivit.tensor(np.zeros((1, 6, 8), np.float32)), grid=(2, 2))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, N, 8\), got \(1, 9, 5\)"):
        attn(minivit.tensor(np.zeros((1, 9, 5), np.float32)))
    with pytest.raises(ValueError, match="expects .*1 input channel"):
        models.create("convit_fmnist")(minivit.tensor(np.zeros((2, 3, 28, 28), np.float32)))
