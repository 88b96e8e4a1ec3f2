"""Parity with a PyTorch transcription of the official CeiT (coeusguo/ceit
``ceit_model.py``, as PAPERS.md section 6 describes it), on random weights, float64.

There is no timm CeiT, so the reference modules are written out below in
PyTorch, line for line after the official ones (I2T without ReLU, LeFF that
reshapes to the grid and runs 1x1 conv -> BN -> GELU -> depth-wise conv -> BN
-> GELU -> 1x1 conv -> BN, the class token going around it, AttentionLCA with
the query from the last class token). The state-dict keys are the official
ones on both sides, so weights load 1:1. Skipped cleanly without torch.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: parity tests need requirements-dev.txt")
tnn = torch.nn
TF = torch.nn.functional

import minivit  # noqa: E402
from minivit import functional as F  # noqa: E402
from minivit import models  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small float64 ops: one thread is faster, and on a busy machine two OpenMP
    threads can spin for seconds. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- the reference, in PyTorch
class Image2Tokens(tnn.Module):
    def __init__(self, in_chans=3, out_chans=64, kernel_size=7, stride=2):
        super().__init__()
        self.conv = tnn.Conv2d(in_chans, out_chans, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = tnn.BatchNorm2d(out_chans)
        self.maxpool = tnn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x):
        return self.maxpool(self.bn(self.conv(x)))


class HybridEmbed(tnn.Module):
    def __init__(self, backbone, feature_dim, patch_size, embed_dim):
        super().__init__()
        self.backbone = backbone
        self.proj = tnn.Conv2d(feature_dim, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(self.backbone(x)).flatten(2).transpose(1, 2)


class Mlp(tnn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = tnn.Linear(dim, hidden), tnn.GELU(), tnn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LocallyEnhancedFeedForward(tnn.Module):
    def __init__(self, dim, hidden, kernel_size=3):
        super().__init__()
        self.conv1 = tnn.Conv2d(dim, hidden, kernel_size=1)
        self.conv2 = tnn.Conv2d(hidden, hidden, kernel_size, padding=(kernel_size - 1) // 2, groups=hidden)
        self.conv3 = tnn.Conv2d(hidden, dim, kernel_size=1)
        self.act = tnn.GELU()
        self.bn1, self.bn2, self.bn3 = tnn.BatchNorm2d(hidden), tnn.BatchNorm2d(hidden), tnn.BatchNorm2d(dim)

    def forward(self, x):
        b, n, k = x.size()
        cls_token, tokens = torch.split(x, [1, n - 1], dim=1)
        s = int(math.sqrt(n - 1))
        x = tokens.reshape(b, s, s, k).permute(0, 3, 1, 2)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        tokens = x.flatten(2).permute(0, 2, 1)
        return torch.cat((cls_token, tokens), dim=1)


class Attention(tnn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv, self.proj = tnn.Linear(dim, dim * 3, bias=True), tnn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class AttentionLCA(Attention):
    def forward(self, x):
        C = x.shape[-1]
        q_weight, q_bias = self.qkv.weight[:C, :], self.qkv.bias[:C]
        kv_weight, kv_bias = self.qkv.weight[C:, :], self.qkv.bias[C:]
        B, N, C = x.shape
        _, last_token = torch.split(x, [N - 1, 1], dim=1)
        q = TF.linear(last_token, q_weight, q_bias).reshape(B, 1, self.num_heads, C // self.num_heads)
        q = q.permute(0, 2, 1, 3)
        kv = TF.linear(x, kv_weight, kv_bias).reshape(B, N, 2, self.num_heads, C // self.num_heads)
        k, v = kv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, 1, C))


class Block(tnn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, feedforward_type="leff"):
        super().__init__()
        self.norm2, self.norm1 = tnn.LayerNorm(dim, eps=1e-6), tnn.LayerNorm(dim, eps=1e-6)
        self.feedforward_type = feedforward_type
        hidden = int(dim * mlp_ratio)
        if feedforward_type == "leff":
            self.attn = Attention(dim, num_heads)
            self.leff = LocallyEnhancedFeedForward(dim, hidden)
        else:
            self.attn = AttentionLCA(dim, num_heads)
            self.feedforward = Mlp(dim, hidden)

    def forward(self, x):
        if self.feedforward_type == "leff":
            x = x + self.attn(self.norm1(x))
            x = x + self.leff(self.norm2(x))
            return x, x[:, 0]
        _, last_token = torch.split(x, [x.size(1) - 1, 1], dim=1)
        x = last_token + self.attn(self.norm1(x))
        return x + self.feedforward(self.norm2(x))


class CeIT(tnn.Module):
    def __init__(self, img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                 stem_chans):
        super().__init__()
        feat = img_size // 4
        self.i2t = HybridEmbed(Image2Tokens(in_chans, stem_chans), stem_chans, patch_size, embed_dim)
        n = (feat // patch_size) ** 2
        self.cls_token = tnn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = tnn.Parameter(torch.zeros(1, n + 1, embed_dim))
        self.blocks = tnn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.lca = Block(embed_dim, num_heads, mlp_ratio, feedforward_type="lca")
        self.pos_layer_embed = tnn.Parameter(torch.zeros(1, depth, embed_dim))
        self.norm = tnn.LayerNorm(embed_dim, eps=1e-6)
        self.head = tnn.Linear(embed_dim, num_classes)

    def forward(self, x):
        B = x.shape[0]
        x = self.i2t(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1) + self.pos_embed
        cls_token_list = []
        for blk in self.blocks:
            x, cls = blk(x)
            cls_token_list.append(cls)
        all_cls = torch.stack(cls_token_list, dim=1) + self.pos_layer_embed
        return self.head(self.norm(self.lca(all_cls)).view(B, -1))


CONFIGS = {
    "ceit_fmnist": (dict(img_size=28, patch_size=1, in_chans=1, num_classes=10, embed_dim=64, depth=6,
                         num_heads=4, mlp_ratio=2.0, stem_chans=32), {}, (4, 1, 28, 28)),
    # CeiT-T's widths (64-channel stem, D=192, 3 heads, LeFF 768) on 64x64 images and 2 blocks, to keep
    # the test short: stem 64 -> 16, patch 4 -> a 4x4 grid
    "ceit_tiny": (dict(img_size=64, patch_size=4, in_chans=3, num_classes=1000, embed_dim=192, depth=2,
                       num_heads=3, mlp_ratio=4.0, stem_chans=64), {"depth": 2, "img_size": 64}, (2, 3, 64, 64)),
}


def _randomise(tm):
    """Random weights everywhere (BN affine and running statistics too), so no term hides."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in tm.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.ndim > 1 else 0.1)
                    + (1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") else 0.0))
        for mod in tm.modules():
            if isinstance(mod, tnn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g, dtype=torch.float64) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g, dtype=torch.float64) + 0.5)


def _pair(name):
    cfg, kwargs, shape = CONFIGS[name]
    torch.manual_seed(0)
    tm = CeIT(**cfg).double()
    _randomise(tm)
    m = models.create(name, **kwargs).to(np.float64)
    m.load_state_dict({k: v.detach().numpy().copy() for k, v in tm.state_dict().items()})
    return tm, m, shape


@pytest.mark.parametrize("name", ["ceit_fmnist", "ceit_tiny"])
@pytest.mark.parametrize("training", [False, True])
def test_ceit_matches_the_official_model(name, training):
    tm, m, shape = _pair(name)
    tm.train(training)
    m.train(training)
    x = np.random.default_rng(0).standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    ref = tm(xt)
    xm = minivit.tensor(x, requires_grad=True)
    out = m(xm)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), atol=1e-6, rtol=1e-6)
    y = np.arange(shape[0]) % out.shape[1]
    torch.nn.functional.cross_entropy(ref, torch.tensor(y)).backward()
    F.cross_entropy(out, y).backward()
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), atol=1e-8, rtol=1e-6)
    # parameter gradients agree as well (a few representative ones, by official name)
    grads = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    mine = dict(m.named_parameters())
    for k in ["i2t.backbone.conv.weight", "blocks.0.leff.conv2.weight", "blocks.0.leff.bn3.weight",
              "blocks.1.leff.conv1.weight", "lca.attn.qkv.weight", "pos_layer_embed", "cls_token"]:
        np.testing.assert_allclose(mine[k].grad, grads[k], atol=1e-8, rtol=1e-6, err_msg=k)
    # training mode moves the running statistics exactly as PyTorch does
    sd = tm.state_dict()
    for k, v in m.state_dict().items():
        np.testing.assert_allclose(v, sd[k].numpy(), atol=1e-12, rtol=1e-10, err_msg=k)


def test_leff_alone_matches_the_official_module():
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    ref = LocallyEnhancedFeedForward(8, 16).double()
    _randomise(ref)
    from minivit.models.ceit import LeFF
    leff = LeFF(8, 16).to(np.float64)
    leff.load_state_dict({k: v.numpy().copy() for k, v in ref.state_dict().items()})
    x = rng.standard_normal((3, 1 + 16, 8))
    for training in (True, False):
        ref.train(training)
        leff.train(training)
        np.testing.assert_allclose(leff(minivit.tensor(x)).data, ref(torch.tensor(x)).detach().numpy(),
                                   atol=1e-10, rtol=1e-8)
