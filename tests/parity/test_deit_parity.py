"""Parity with timm's VisionTransformerDistilled (DeiT) and with a torchvision-style
ResNet (the CNN teacher), on random weights in float64, in training and eval mode.

Skipped cleanly when torch or timm is not installed (see requirements-dev.txt).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: parity tests need requirements-dev.txt")
timm = pytest.importorskip("timm", reason="timm not installed: parity tests need requirements-dev.txt")

import minivit  # noqa: E402
from minivit import functional as F  # noqa: E402
from minivit import models  # noqa: E402
from minivit.convert import load_timm  # noqa: E402  (the key map: minivit/convert.py)
from minivit.models.deit import DistillationLoss  # noqa: E402


def torch_to_minivit(tmodel, model):
    """Copy the torchvision-style CNN's state dict into minivit's (torchvision's names are minivit's)."""
    model.load_state_dict({k: v.detach().double().numpy() for k, v in tmodel.state_dict().items()})


def _compare(a, b):
    np.testing.assert_allclose(a.data, b.detach().numpy(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name,kwargs,shape", [
    ("deit_tiny_distilled_patch16_224", {"depth": 2}, (1, 3, 224, 224)),
    ("deit_fmnist", {}, (3, 1, 28, 28)),
])
def test_deit_distilled_matches_timm_in_train_and_eval_mode(name, kwargs, shape):
    torch.manual_seed(0)
    if name == "deit_fmnist":
        from timm.models.deit import VisionTransformerDistilled
        tm = VisionTransformerDistilled(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64,
                                        depth=6, num_heads=4, mlp_ratio=2.0)
    else:
        tm = timm.create_model(name, pretrained=False, **kwargs)
    tm = tm.double()
    m = models.create(name, **kwargs).to(np.float64)
    load_timm(m, tm)
    x = np.random.default_rng(0).standard_normal(shape)
    y = np.arange(shape[0]) % 10

    # eval mode: one output, the average of the two heads' logits
    tm.eval()
    m.eval()
    xt = torch.tensor(x, requires_grad=True)
    xm = minivit.tensor(x, requires_grad=True)
    ref, out = tm(xt), m(xm)
    _compare(out, ref)
    torch.nn.functional.cross_entropy(ref, torch.tensor(y)).backward()
    F.cross_entropy(out, y).backward()
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), atol=1e-8, rtol=1e-6)

    # training mode: both heads (timm needs set_distilled_training; minivit's default)
    tm.train()
    tm.set_distilled_training(True)
    m.train()
    xt = torch.tensor(x, requires_grad=True)
    xm = minivit.tensor(x, requires_grad=True)
    (r_s, r_d), (o_s, o_d) = tm(xt), m(xm)
    _compare(o_s, r_s)
    _compare(o_d, r_d)
    # the soft distillation loss of losses.py, with a fixed "teacher", and its input gradient
    z_t = np.random.default_rng(1).standard_normal((shape[0], 10 if name == "deit_fmnist" else 1000))
    T, alpha = 2.0, 0.5
    ref_kd = torch.nn.functional.kl_div(torch.log_softmax(r_d / T, 1), torch.log_softmax(torch.tensor(z_t) / T, 1),
                                        reduction="sum", log_target=True) * T * T / r_d.numel()
    ref_loss = (1 - alpha) * torch.nn.functional.cross_entropy(r_s, torch.tensor(y)) + alpha * ref_kd
    ref_loss.backward()
    loss = DistillationLoss(lambda a, b: F.cross_entropy(a, b), lambda _: minivit.tensor(z_t), "soft",
                            alpha, T)(x, (o_s, o_d), y)
    np.testing.assert_allclose(float(loss.data), ref_loss.item(), rtol=1e-9)
    loss.backward()
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), atol=1e-8, rtol=1e-6)


def test_deit_tiny_without_distillation_is_timms_deit_tiny():
    torch.manual_seed(0)
    tm = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2).double().eval()
    m = models.create("deit_tiny_patch16_224", depth=2).to(np.float64).eval()
    load_timm(m, tm)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224))
    _compare(m(minivit.tensor(x)), tm(torch.tensor(x)))


def _torch_cnn(layers=(1, 1), widths=(32, 64), stem_width=16, in_chans=1, num_classes=10):
    """cnn_fmnist in PyTorch from torchvision's BasicBlock, with torchvision's names."""
    pytest.importorskip("torchvision", reason="torchvision not installed")
    from torchvision.models.resnet import BasicBlock
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_width)
            self.relu = nn.ReLU()
            c = stem_width
            for s, (n, w) in enumerate(zip(layers, widths)):
                blocks = []
                for b in range(n):
                    stride = 2 if b == 0 else 1
                    down = None
                    if stride != 1 or c != w:
                        down = nn.Sequential(nn.Conv2d(c, w, 1, stride, bias=False), nn.BatchNorm2d(w))
                    blocks.append(BasicBlock(c, w, stride, down))
                    c = w
                setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(c, num_classes)
            self.n = len(layers)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            for s in range(self.n):
                x = getattr(self, f"layer{s + 1}")(x)
            return self.fc(x.mean((2, 3)))
    return Net()


def test_cnn_teacher_matches_torchvision_basic_blocks():
    torch.manual_seed(0)
    tm = _torch_cnn().double()
    with torch.no_grad():                                      # non-trivial running statistics
        for mod in tm.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.normal_()
    m = models.create("cnn_fmnist").to(np.float64)
    torch_to_minivit(tm, m)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28))
    y = np.arange(4)
    for mode in ("train", "eval"):                           # batch statistics, then running ones
        tm.train(mode == "train")
        m.train(mode == "train")
        xt = torch.tensor(x, requires_grad=True)
        xm = minivit.tensor(x, requires_grad=True)
        ref, out = tm(xt), m(xm)
        _compare(out, ref)
        torch.nn.functional.cross_entropy(ref, torch.tensor(y)).backward()
        F.cross_entropy(out, y).backward()
        np.testing.assert_allclose(xm.grad, xt.grad.numpy(), atol=1e-8, rtol=1e-6)
    # the running statistics moved the same way during the training-mode pass
    for k, v in tm.state_dict().items():
        if "running" in k or "num_batches" in k:
            np.testing.assert_allclose(m.state_dict()[k], v.double().numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
