"""ViT: shapes, registry, gradcheck, learning, position-embedding resizing, errors."""
import numpy as np
import pytest

import minivit
from minivit import models, nn
from minivit.models.vit import VisionTransformer, resize_pos_embed


def tiny(**kw):
    cfg = dict(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0)
    cfg.update(kw)
    return VisionTransformer(**cfg)


def test_registry_and_param_counts():
    assert {"vit_fmnist", "vit_tiny_patch16_224"} <= set(models.list_models())
    assert models.list_models("vit_f*") == ["vit_fmnist"]
    assert models.create("vit_fmnist").num_params() == 205_962            # PAPERS.md reference run
    assert models.create("vit_tiny_patch16_224").num_params() == 5_717_416
    with pytest.raises(ValueError, match="Did you mean vit_fmnist"):
        models.create("vit_fminst")


def test_state_dict_names_follow_timm():
    keys = set(models.create("vit_fmnist").state_dict())
    for k in ["patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed",
              "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
              "blocks.0.attn.proj.weight", "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight",
              "blocks.5.mlp.fc2.bias", "norm.weight", "head.weight", "head.bias"]:
        assert k in keys, k
    sd = models.create("vit_tiny_patch16_224").state_dict()
    assert sd["pos_embed"].shape == (1, 197, 192) and sd["blocks.0.attn.qkv.weight"].shape == (576, 192)


def test_forward_shapes_dtype_and_attention():
    m = models.create("vit_fmnist")
    x = minivit.tensor(np.random.randn(2, 1, 28, 28).astype(np.float32))
    out = m(x)
    assert out.shape == (2, 10) and out.dtype == np.float32
    logits, attns = m(x, return_attention=True)
    assert len(attns) == 6 and attns[0].shape == (2, 4, 50, 50)
    np.testing.assert_allclose(np.asarray(attns[0]).sum(-1), 1, rtol=1e-5)
    np.testing.assert_allclose(logits.data, out.data, rtol=1e-5, atol=1e-6)


def test_gradcheck_tiny_vit():
    m = tiny(drop_rate=0.0).to(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    params = list(m.parameters())
    minivit.gradcheck(lambda a: m(a), [minivit.tensor(x, requires_grad=True)], params=params,
                      max_checks=8, atol=1e-6, rtol=1e-4)


def test_global_average_pooling_head():
    """global_pool="avg" (timm's option): the head reads the mean of the patch tokens after
    fc_norm; the class token stays in the sequence but not in the head."""
    m = tiny(global_pool="avg").to(np.float64)
    keys = set(m.state_dict())
    assert {"fc_norm.weight", "fc_norm.bias", "cls_token"} <= keys and "norm.weight" not in keys
    assert m.num_params() == tiny().num_params()                 # norm moved to fc_norm
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8))
    tokens = m.forward_features(minivit.tensor(x)).data          # (3, 1+4, 8), no final norm here
    pooled = np.stack([sum(tokens[b, t] for t in range(1, 5)) / 4 for b in range(3)])   # a slow mean
    mu, var = pooled.mean(-1, keepdims=True), pooled.var(-1, keepdims=True)
    sd = m.state_dict()
    z = (pooled - mu) / np.sqrt(var + 1e-6) * sd["fc_norm.weight"] + sd["fc_norm.bias"]
    np.testing.assert_allclose(m(minivit.tensor(x)).data, z @ sd["head.weight"].T + sd["head.bias"], atol=1e-12)
    params = list(m.parameters())
    minivit.gradcheck(lambda a: m(a), [minivit.tensor(x[:2], requires_grad=True)], params=params,
                      max_checks=8, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="global_pool must be 'token'.*got 'max'"):
        tiny(global_pool="max")


def test_loss_falls_on_a_fixed_batch(train_steps):
    m = tiny(num_classes=4)
    rng = np.random.default_rng(0)
    x = minivit.tensor(rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    y = rng.integers(0, 4, 16)
    losses = train_steps(m, x, y, steps=40)
    assert losses[-1] < 0.5 * losses[0]


def test_position_embedding_is_resized_for_other_image_sizes():
    m = tiny()
    out = m(minivit.tensor(np.random.randn(2, 1, 16, 16).astype(np.float32)))   # grid 4x4 instead of 2x2
    assert out.shape == (2, 3)
    # resizing to the same grid is the identity; a constant embedding stays constant
    pe = minivit.tensor(np.ones((1, 1 + 4, 8), np.float32))
    assert resize_pos_embed(pe, (2, 2), (2, 2)) is pe
    np.testing.assert_allclose(resize_pos_embed(pe, (2, 2), (3, 3)).data, np.ones((1, 10, 8)), rtol=1e-6)
    # the class-token row is kept as is, the grid is interpolated (gradcheck through it)
    pe64 = minivit.tensor(np.random.randn(1, 5, 3), requires_grad=True)
    assert resize_pos_embed(pe64, (2, 2), (3, 3)).shape == (1, 10, 3)
    minivit.gradcheck(lambda p: resize_pos_embed(p, (2, 2), (3, 3)), [pe64])


def test_bad_configurations_and_inputs_raise_clearly():
    with pytest.raises(ValueError, match="patch_size=5 does not divide img_size=28"):
        models.create("vit_fmnist", patch_size=5)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        models.create("vit_fmnist", num_heads=5)
    m = models.create("vit_fmnist")
    with pytest.raises(ValueError, match="expects .*1 input channel"):
        m(minivit.tensor(np.zeros((8, 3, 28, 28), np.float32)))
    with pytest.raises(ValueError, match="does not divide the image size 30x30"):
        m(minivit.tensor(np.zeros((8, 1, 30, 30), np.float32)))


def test_drop_path_and_dropout_only_in_training():
    m = tiny(drop_rate=0.3, drop_path_rate=0.3)
    x = minivit.tensor(np.random.randn(2, 1, 8, 8).astype(np.float32))
    m.eval()
    np.testing.assert_array_equal(m(x).data, m(x).data)
    m.train()
    assert not np.allclose(m(x).data, m(x).data)
    assert isinstance(m.blocks[1].drop_path1, nn.DropPath) and isinstance(m.blocks[0].drop_path1, nn.Identity)


def test_patch_dropout_trains_on_fewer_tokens_and_evaluates_on_all():
    """patch_drop_rate (timm's option): in training each image keeps int(N * (1 - rate)) of its
    N patch tokens after the position embedding; in eval the model is the plain ViT."""
    m = tiny(img_size=16, patch_drop_rate=0.5)                        # 16 patches -> 8 kept
    plain = tiny(img_size=16)
    plain.load_state_dict(m.state_dict())
    x = minivit.tensor(np.random.default_rng(1).standard_normal((3, 1, 16, 16)).astype(np.float32))
    m.eval(), plain.eval()
    np.testing.assert_array_equal(m(x).data, plain(x).data)
    m.train()
    _, attns = m(x, return_attention=True)
    assert attns[0].shape == (3, 2, 1 + 8, 1 + 8)
    minivit.manual_seed(3)
    a = m(x)
    minivit.manual_seed(3)
    np.testing.assert_array_equal(m(x).data, a.data)                  # the seed fixes the kept patches
    m(x[:1]).sum().backward()
    rows = np.abs(m.pos_embed.grad[0]).sum(-1) > 0
    assert rows[0] and rows[1:].sum() == 8                            # one image: its 8 kept patches get gradient
    t = tiny(img_size=16, patch_drop_rate=0.5).to(np.float64)        # gradcheck with the same kept patches
    xd = np.random.default_rng(2).standard_normal((2, 1, 16, 16))

    def f(a):
        minivit.manual_seed(5)
        return t(a)
    minivit.gradcheck(f, [minivit.tensor(xd, requires_grad=True)], params=list(t.parameters()),
                      max_checks=8, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match=r"patch_drop_rate must be in \[0, 1\), got 1"):
        tiny(patch_drop_rate=1)
