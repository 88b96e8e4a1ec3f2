"""Patch diversification: P(h) and the three losses against explicit loops,
the anchor's missing gradient, CutMix patch labels, gradchecks, the model,
learning through fit's criterion, and the errors."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit import data as D
from minivit import models, nn
from minivit.models.diverse_patch import (DiversePatchCriterion, DiversePatchLoss, contrastive_loss,
                                          cosine_loss, mixing_loss, patch_similarity)

SETTINGS = settings(max_examples=15, deadline=None)
dims = st.tuples(st.integers(1, 3), st.integers(2, 6), st.integers(1, 5))   # B, n, D


def rnd(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------- slow references
def slow_P(h):
    """The course's double sum, one pair at a time, per image."""
    B, n, _ = h.shape
    out = []
    for b in range(B):
        s = 0.0
        for i in range(n):
            for j in range(n):
                if i != j:
                    s += abs(h[b, i] @ h[b, j]) / (np.linalg.norm(h[b, i]) * np.linalg.norm(h[b, j]))
        out.append(s / (n * (n - 1)))
    return np.array(out)


def slow_contrastive(h1, hL):
    B, n, _ = hL.shape
    total = 0.0
    for b in range(B):
        for i in range(n):
            hbar = sum(hL[b, j] for j in range(n) if j != i) / (n - 1)
            pos = math.exp(h1[b, i] @ hL[b, i])
            neg = math.exp(h1[b, i] @ hbar)
            total += -math.log(pos / (pos + neg))
    return total / (B * n)


def slow_mixing(hL, targets, W, bias):
    """1/n sum_i CE(g(h_i), y_i) with soft targets, per image, then the batch mean."""
    B, n, _ = hL.shape
    total = 0.0
    for b in range(B):
        for i in range(n):
            z = W @ hL[b, i] + bias
            logp = z - z.max() - math.log(np.exp(z - z.max()).sum())
            total += -(targets[b, i] * logp).sum()
    return total / (B * n)


# ---------------------------------------------------------------- P(h)
@SETTINGS
@given(d=dims, seed=st.integers(0, 2**31 - 1))
def test_patch_similarity_equals_the_double_sum(d, seed):
    h = rnd(d, seed)
    got = patch_similarity(minivit.tensor(h), reduction="none").data
    np.testing.assert_allclose(got, slow_P(h), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(patch_similarity(minivit.tensor(h)).data, slow_P(h).mean(), rtol=1e-10)


def test_patch_similarity_is_one_for_parallel_and_zero_for_orthogonal_patches():
    v = rnd((1, 1, 8))
    same = np.concatenate([v, -2 * v, 3 * v], axis=1)            # parallel, signs differ: |cos| = 1
    np.testing.assert_allclose(patch_similarity(minivit.tensor(same)).data, 1.0, rtol=1e-12)
    ortho = np.eye(5)[None] * np.arange(1, 6)[None, :, None]      # five orthogonal directions
    assert patch_similarity(minivit.tensor(ortho)).data == pytest.approx(0.0, abs=1e-15)
    assert cosine_loss(minivit.tensor(same)).data == pytest.approx(1.0)


def test_patch_similarity_gradcheck():
    h = minivit.tensor(rnd((2, 4, 3), 1), requires_grad=True)
    minivit.gradcheck(lambda a: patch_similarity(a), [h])


# ---------------------------------------------------------------- contrastive
@SETTINGS
@given(d=dims, seed=st.integers(0, 2**31 - 1))
def test_contrastive_loss_equals_its_formula(d, seed):
    h1, hL = rnd(d, seed) * 0.5, rnd(d, seed + 1) * 0.5
    got = contrastive_loss(minivit.tensor(h1), minivit.tensor(hL)).data
    assert got == pytest.approx(slow_contrastive(h1, hL), rel=1e-10)


def test_contrastive_anchor_gets_no_gradient():
    h1 = minivit.tensor(rnd((2, 4, 3)), requires_grad=True)
    hL = minivit.tensor(rnd((2, 4, 3), 1), requires_grad=True)
    contrastive_loss(h1, hL).backward()
    assert h1.grad is None or not np.any(h1.grad)
    assert hL.grad is not None and np.any(hL.grad)


def test_contrastive_gradcheck_through_the_last_layer():
    h1 = minivit.tensor(rnd((2, 4, 3)))
    hL = minivit.tensor(rnd((2, 4, 3), 1), requires_grad=True)
    minivit.gradcheck(lambda a: contrastive_loss(h1, a), [hL])


# ---------------------------------------------------------------- mixing
def test_mixing_loss_equals_its_formula_and_gradchecks():
    B, n, Dm, K = 2, 4, 3, 5
    g = nn.Linear(Dm, K).to(np.float64)
    hL = rnd((B, n, Dm))
    t = np.random.default_rng(2).dirichlet(np.ones(K), size=(B, n))
    got = mixing_loss(minivit.tensor(hL), t, g).data
    assert got == pytest.approx(slow_mixing(hL, t, g.weight.data, g.bias.data), rel=1e-10)
    labels = np.random.default_rng(3).integers(0, K, (B, n))     # integer labels: one-hot targets
    assert mixing_loss(minivit.tensor(hL), labels, g).data == pytest.approx(
        slow_mixing(hL, np.eye(K)[labels], g.weight.data, g.bias.data), rel=1e-10)
    minivit.gradcheck(lambda a: mixing_loss(a, t, g), [minivit.tensor(hL, requires_grad=True)],
                      params=list(g.parameters()))


def test_cutmix_patch_labels_match_the_pasted_region():
    P, K = 4, 10
    x = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    y = np.array([1, 5, 7])
    cut = D.CutMix(alpha=1.0, num_classes=K, patch_size=P, align_to_patches=True)
    box = (8, 20, 4, 16)                                         # rows 8..19, cols 4..15: patches (2..4, 1..3)
    xm, t, pt = cut(x, y, np.random.default_rng(1), box=box)
    assert pt.shape == (3, 49, K)
    for i in range(3):
        for n in range(49):
            r, c = divmod(n, 7)
            inside = 2 <= r < 5 and 1 <= c < 4
            expect = y[i - 1] if inside else y[i]                # image i gets image i-1's pixels in the box
            assert pt[i, n].argmax() == expect and pt[i, n].max() == 1.0
            block = xm[i, 0, r * P:(r + 1) * P, c * P:(c + 1) * P]
            src = x[i - 1] if inside else x[i]
            np.testing.assert_array_equal(block, src[0, r * P:(r + 1) * P, c * P:(c + 1) * P])
    np.testing.assert_allclose(pt.mean(1), t, atol=1e-6)


# ---------------------------------------------------------------- the model
def tiny(**kw):
    cfg = dict(img_size=8, patch_size=4, embed_dim=8, depth=3, num_heads=2, num_classes=3)
    cfg.update(kw)
    return models.create("diverse_vit_fmnist", **cfg)


def test_model_returns_per_layer_patch_features():
    m = tiny().to(np.float64)
    m.eval()
    x = minivit.tensor(rnd((2, 1, 8, 8)))
    logits, feats = m(x, return_features=True)
    assert logits.shape == (2, 3) and len(feats) == 3 and all(f.shape == (2, 4, 8) for f in feats)
    np.testing.assert_allclose(logits.data, m(x).data, rtol=1e-12)    # same logits as plain forward
    z = m._pos_embed(m.patch_embed(x), (2, 2))                        # features = the blocks' outputs
    for blk, f in zip(m.blocks, feats):
        z = blk(z)
        np.testing.assert_allclose(f.data, z.data[:, 1:], rtol=1e-12)
    assert models.create("diverse_vit_fmnist").num_params() == 205_962 + 64 * 10 + 10


def test_full_loss_gradcheck_on_a_tiny_model():
    m = tiny().to(np.float64)
    m.eval()
    x = rnd((2, 1, 8, 8))
    y = np.array([0, 2])
    pt = np.eye(3)[np.array([[0, 1, 2, 0], [2, 2, 1, 0]])]
    # contrastive=0: its anchor h^[1] is detached on purpose, so a finite difference (which
    # moves h^[1] too) is not its gradient; that term is gradchecked with a fixed anchor above
    loss_fn = DiversePatchLoss(cos=0.5, contrastive=0.0, mixing=0.7)

    def f(a):
        logits, feats = m(a, return_features=True)
        return loss_fn(logits, feats, y, pt, m.patch_head)
    named = dict(m.named_parameters())
    params = [named[k] for k in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.2.mlp.fc2.weight",
                                 "patch_head.weight", "head.weight")]
    minivit.gradcheck(f, [minivit.tensor(x, requires_grad=True)], params=params, max_checks=4,
                      atol=1e-6, rtol=1e-4)
    assert set(loss_fn.parts) == {"ce", "cos", "mixing"}


def test_loss_falls_and_diversity_rises_with_the_cosine_loss():
    from minivit import optim
    minivit.manual_seed(0)
    m = tiny(depth=2, embed_dim=16)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    crit = DiversePatchCriterion(cos=1.0, contrastive=0.0, mixing=0.0)
    opt = optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, _ = crit(m, (x, y), None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    _, feats = m(minivit.tensor(x), return_features=True)
    assert losses[-1] < 0.5 * losses[0]
    assert float(patch_similarity(feats[-1]).data) < 0.5


# ---------------------------------------------------------------- errors
def test_errors():
    with pytest.raises(ValueError, match="needs a model that exposes per-layer patch features"):
        DiversePatchCriterion()(models.create("vit_fmnist"), (np.zeros((1, 1, 28, 28), np.float32), [0]), None)
    h = minivit.tensor(rnd((1, 4, 3)))
    with pytest.raises(ValueError, match="mixing_loss needs per-patch labels"):
        mixing_loss(h, None, nn.Linear(3, 2).to(np.float64))
    with pytest.raises(ValueError, match=r"patch_targets has shape \(1, 3, 2\)"):
        mixing_loss(h, np.zeros((1, 3, 2)), nn.Linear(3, 2).to(np.float64))
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="weight must be a number >= 0"):
            DiversePatchLoss(cos=bad)
    with pytest.raises(ValueError, match="at least 2 patches"):
        patch_similarity(minivit.tensor(rnd((1, 1, 3))))
    with pytest.raises(ValueError, match="features must be the list"):
        DiversePatchLoss()(minivit.tensor(rnd((1, 2))), None, [0])


# ---------------------------------------------------------------- through fit and the command line
def test_fit_trains_with_the_three_losses_and_patch_aligned_cutmix(tmp_path):
    from minivit.train import TrainConfig, build_transform, default_criterion, fit
    cfg = TrainConfig(model="diverse_vit_fmnist", epochs=1, batch_size=16, train_subset=32,
                      diverse_patch="cos,contrastive=0.5,mixing", model_kwargs={"depth": 2})
    crit = default_criterion(cfg, models.create("diverse_vit_fmnist", depth=2))
    assert isinstance(crit, DiversePatchCriterion) and crit.weights == {"cos": 1.0, "contrastive": 0.5, "mixing": 1.0}
    x = np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32)
    out = build_transform(cfg, 10, patch_size=4)(x, np.array([0, 1, 2, 3]), np.random.default_rng(0))
    assert len(out) == 3 and out[2].shape == (4, 49, 10)          # images, mixed targets, patch targets
    res = fit(cfg, out_dir=tmp_path / "run", progress=False, log=lambda m: None)
    assert np.isfinite(res["history"][-1]["train_loss"])


@pytest.mark.parametrize("spec,pattern", [("cos,smooth", "unknown loss 'smooth'"), ("cos=-1", "must be >= 0"),
                                          ("mixing=x", "must be a number"), ("cos=nan", "must be >= 0")])
def test_bad_diverse_patch_spec(spec, pattern):
    from minivit.train import TrainConfig
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(model="diverse_vit_fmnist", diverse_patch=spec).validate()
