"""The small ResNet teacher (cnn_fmnist): names, shapes, a residual block equal to
its equations written with loops, gradcheck, BatchNorm modes, learning, errors."""
import numpy as np
import pytest

import minivit
from minivit import models
from minivit.models.cnn import BasicBlock, ResNetCNN


def tiny(**kw):
    cfg = dict(layers=(1, 1), widths=(3, 4), stem_width=2, in_chans=1, num_classes=3)
    cfg.update(kw)
    return ResNetCNN(**cfg)


def test_registry_param_count_and_torchvision_names():
    m = models.create("cnn_fmnist")
    assert m.num_params() == 73_082
    sd = m.state_dict()
    for k in ["conv1.weight", "bn1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
              "layer1.0.conv1.weight", "layer1.0.bn2.bias", "layer1.0.downsample.0.weight",
              "layer2.0.downsample.1.running_var", "layer2.0.conv2.weight", "fc.weight", "fc.bias"]:
        assert k in sd, k
    assert sd["conv1.weight"].shape == (16, 1, 3, 3) and sd["fc.weight"].shape == (10, 64)
    two = ResNetCNN(layers=(1, 2), widths=(4, 8), stem_width=4)
    assert "layer2.1.downsample.0.weight" not in two.state_dict()   # same width and resolution: identity shortcut
    assert not any(k.endswith("conv1.bias") for k in sd)      # conv-BN: no conv bias


def test_shapes_and_stage_features():
    m = models.create("cnn_fmnist")
    x = minivit.tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32))
    logits, feats = m(x, return_features=True)
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    assert [f.shape for f in feats] == [(2, 32, 14, 14), (2, 64, 7, 7)]
    m.eval()
    assert m(x).shape == (2, 10)


def slow_conv3x3(x, w, stride):
    """out[o, i, j] = sum_{c, a, b} w[o, c, a, b] x_pad[c, i*s + a, j*s + b], pixel by pixel."""
    C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    kh = w.shape[2]
    out = np.zeros((w.shape[0], Ho, Wo))
    for o in range(w.shape[0]):
        for i in range(Ho):
            for j in range(Wo):
                if kh == 3:
                    out[o, i, j] = np.sum(w[o] * xp[:, i * stride:i * stride + 3, j * stride:j * stride + 3])
                else:                                        # 1x1 shortcut
                    out[o, i, j] = w[o, :, 0, 0] @ x[:, i * stride, j * stride]
    return out


def slow_bn_eval(u, bn):
    s = bn.weight.data / np.sqrt(bn.running_var + bn.eps)
    return (u - bn.running_mean[:, None, None]) * s[:, None, None] + bn.bias.data[:, None, None]


@pytest.mark.parametrize("cin,cout,stride", [(3, 3, 1), (2, 4, 2)])
def test_basic_block_equals_its_equations(cin, cout, stride):
    r = np.random.default_rng(0)
    blk = BasicBlock(cin, cout, stride).to(np.float64).eval()
    for bn in [m for m in blk.modules() if type(m).__name__ == "BatchNorm2d"]:   # non-trivial statistics
        bn.running_mean[:] = r.standard_normal(bn.num_features)
        bn.running_var[:] = r.random(bn.num_features) + 0.5
        bn.weight.data[:] = r.standard_normal(bn.num_features)
    x = r.standard_normal((2, cin, 5, 5))
    out = blk(minivit.tensor(x)).data
    relu = lambda a: np.maximum(a, 0)                           # noqa: E731
    for n in range(2):
        h = relu(slow_bn_eval(slow_conv3x3(x[n], blk.conv1.weight.data, stride), blk.bn1))
        if blk.downsample is None:
            sc = x[n]
        else:
            sc = slow_bn_eval(slow_conv3x3(x[n], blk.downsample[0].weight.data, stride), blk.downsample[1])
        y = relu(slow_bn_eval(slow_conv3x3(h, blk.conv2.weight.data, 1), blk.bn2) + sc)
        np.testing.assert_allclose(out[n], y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck_tiny_cnn(mode):
    m = tiny().to(np.float64)
    m.train(mode == "train")
    x = np.random.default_rng(0).standard_normal((3, 1, 6, 6))
    minivit.gradcheck(lambda a: m(a), [minivit.tensor(x, requires_grad=True)], params=list(m.parameters()),
                      max_checks=6, atol=1e-6, rtol=1e-4)


def test_batchnorm_statistics_update_in_training_only():
    m = tiny()
    x = minivit.tensor(np.random.default_rng(0).standard_normal((4, 1, 6, 6)).astype(np.float32) * 2 + 1)
    m(x)
    assert int(m.bn1.num_batches_tracked) == 1 and not np.allclose(m.bn1.running_mean, 0)
    m.eval()
    snap = m.bn1.running_mean.copy()
    a, b = m(x), m(x)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(m.bn1.running_mean, snap)


def test_loss_falls_on_a_fixed_batch(train_steps):
    m = tiny(num_classes=4)
    rng = np.random.default_rng(0)
    x = minivit.tensor(rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    y = rng.integers(0, 4, 16)
    losses = train_steps(m, x, y, steps=40)
    assert losses[-1] < 0.5 * losses[0]


def test_bad_configurations_and_inputs_raise_clearly():
    with pytest.raises(ValueError, match="one entry per stage"):
        models.create("cnn_fmnist", layers=(1, 1, 1))
    with pytest.raises(ValueError, match="widths must hold positive integers"):
        models.create("cnn_fmnist", widths=(0, 64))
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        models.create("cnn_fmnist", num_classes=0)
    with pytest.raises(ValueError, match="expects .*1 input channel"):
        models.create("cnn_fmnist")(minivit.tensor(np.zeros((2, 3, 28, 28), np.float32)))
