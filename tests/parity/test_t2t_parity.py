"""Parity with the official T2T-ViT (yitu-opensource/T2T-ViT, ``models/``) on random weights,
in float64.

timm does not ship T2T-ViT, so the official modules are written out below in PyTorch from
PAPERS.md section 8 and the official source: ``Token_transformer`` (with its ``Attention``),
``Token_performer``, ``T2T_module``, the backbone ``Block`` and ``T2T_ViT``. Changes, none
touching the maths: ``T2T_module`` takes the three (kernel, stride, padding) triples as
arguments (the official hard-codes (7, 4, 2), (3, 2, 1), (3, 2, 1), which 28x28 inputs cannot
use) and derives the number of tokens from them (the official writes img_size // 16); the
performer's ``x.float()`` casts are dropped so the float64 comparison stays in float64; and
the ``print`` calls are gone. The parameter names are the official ones, so the state dicts
map 1:1. Skipped cleanly when torch is not installed.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: parity tests need requirements-dev.txt")
nn = torch.nn

import minivit  # noqa: E402
from minivit import models  # noqa: E402
from minivit.models.t2t_vit import T2TModule, TokenPerformer, TokenTransformer, get_sinusoid_encoding  # noqa: E402


# ------------------------------------------------------------------ the official code, in PyTorch
class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TokenAttention(nn.Module):                       # token_transformer.Attention
    def __init__(self, dim, num_heads=8, in_dim=None, qkv_bias=False, qk_scale=None):
        super().__init__()
        self.num_heads = num_heads
        self.in_dim = in_dim
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.qkv = nn.Linear(dim, in_dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(in_dim, in_dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.in_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.in_dim)
        x = self.proj(x)
        return v.squeeze(1) + x            # skip connection through v


class Token_transformer(nn.Module):
    def __init__(self, dim, in_dim, num_heads, mlp_ratio=1.0, qkv_bias=False, qk_scale=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, in_dim=in_dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = Mlp(in_features=in_dim, hidden_features=int(in_dim * mlp_ratio), out_features=in_dim)

    def forward(self, x):
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Token_performer(nn.Module):
    def __init__(self, dim, in_dim, head_cnt=1, kernel_ratio=0.5, dp1=0.1, dp2=0.1):
        super().__init__()
        self.emb = in_dim * head_cnt
        self.kqv = nn.Linear(dim, 3 * self.emb)
        self.dp = nn.Dropout(dp1)
        self.proj = nn.Linear(self.emb, self.emb)
        self.head_cnt = head_cnt
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(self.emb)
        self.epsilon = 1e-8
        self.mlp = nn.Sequential(nn.Linear(self.emb, 1 * self.emb), nn.GELU(), nn.Linear(1 * self.emb, self.emb),
                                 nn.Dropout(dp2))
        self.m = int(self.emb * kernel_ratio)
        self.w = torch.randn(self.m, self.emb)
        self.w = nn.Parameter(nn.init.orthogonal_(self.w) * math.sqrt(self.m), requires_grad=False)

    def prm_exp(self, x):
        xd = ((x * x).sum(dim=-1, keepdim=True)).repeat(1, 1, self.m) / 2
        wtx = torch.einsum("bti,mi->btm", x, self.w)                  # official: x.float()
        return torch.exp(wtx - xd) / math.sqrt(self.m)

    def single_attn(self, x):
        k, q, v = torch.split(self.kqv(x), self.emb, dim=-1)
        kp, qp = self.prm_exp(k), self.prm_exp(q)
        D = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
        kptv = torch.einsum("bin,bim->bnm", v, kp)                    # official: v.float()
        y = torch.einsum("bti,bni->btn", qp, kptv) / (D.repeat(1, 1, self.emb) + self.epsilon)
        return v + self.dp(self.proj(y))

    def forward(self, x):
        x = self.single_attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class T2T_module(nn.Module):
    def __init__(self, img_size=224, tokens_type="performer", in_chans=3, embed_dim=768, token_dim=64,
                 splits=((7, 4, 2), (3, 2, 1), (3, 2, 1))):
        super().__init__()
        (k0, s0, p0), (k1, s1, p1), (k2, s2, p2) = splits
        self.soft_split0 = nn.Unfold(kernel_size=(k0, k0), stride=(s0, s0), padding=(p0, p0))
        self.soft_split1 = nn.Unfold(kernel_size=(k1, k1), stride=(s1, s1), padding=(p1, p1))
        self.soft_split2 = nn.Unfold(kernel_size=(k2, k2), stride=(s2, s2), padding=(p2, p2))
        if tokens_type == "transformer":
            self.attention1 = Token_transformer(dim=in_chans * k0 * k0, in_dim=token_dim, num_heads=1, mlp_ratio=1.0)
            self.attention2 = Token_transformer(dim=token_dim * k1 * k1, in_dim=token_dim, num_heads=1, mlp_ratio=1.0)
        else:
            self.attention1 = Token_performer(dim=in_chans * k0 * k0, in_dim=token_dim, kernel_ratio=0.5)
            self.attention2 = Token_performer(dim=token_dim * k1 * k1, in_dim=token_dim, kernel_ratio=0.5)
        self.project = nn.Linear(token_dim * k2 * k2, embed_dim)
        side = img_size
        for k, s, p in splits:
            side = (side + 2 * p - k) // s + 1
        self.num_patches = side * side      # official: (img_size // (4 * 2 * 2)) ** 2

    def forward(self, x):
        x = self.soft_split0(x).transpose(1, 2)
        x = self.attention1(x)
        B, new_HW, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, int(np.sqrt(new_HW)), int(np.sqrt(new_HW)))
        x = self.soft_split1(x).transpose(1, 2)
        x = self.attention2(x)
        B, new_HW, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, int(np.sqrt(new_HW)), int(np.sqrt(new_HW)))
        x = self.soft_split2(x).transpose(1, 2)
        return self.project(x)


class Attention(nn.Module):                             # transformer_block.Attention (timm 0.3.2)
    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def get_sinusoid_encoding_official(n_position, d_hid):
    def get_position_angle_vec(position):
        return [position / np.power(10000, 2 * (hid_j // 2) / d_hid) for hid_j in range(d_hid)]

    sinusoid_table = np.array([get_position_angle_vec(pos_i) for pos_i in range(n_position)])
    sinusoid_table[:, 0::2] = np.sin(sinusoid_table[:, 0::2])
    sinusoid_table[:, 1::2] = np.cos(sinusoid_table[:, 1::2])
    return torch.FloatTensor(sinusoid_table).unsqueeze(0)


class T2T_ViT(nn.Module):
    def __init__(self, img_size=224, tokens_type="performer", in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=False, token_dim=64, splits=((7, 4, 2), (3, 2, 1), (3, 2, 1))):
        super().__init__()
        self.tokens_to_token = T2T_module(img_size, tokens_type, in_chans, embed_dim, token_dim, splits)
        num_patches = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(data=get_sinusoid_encoding_official(num_patches + 1, embed_dim),
                                      requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.tokens_to_token(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


# ------------------------------------------------------------------ helpers
def randomize(tmodule, seed=0):
    """Random values in every trainable parameter (LayerNorm affine and biases too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tmodule.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.ndim > 1 else 0.5))
    return tmodule


def load_into(tmodule, module):
    """The official names are minivit's names (frozen ``pos_embed`` and ``w`` are buffers there)."""
    module.load_state_dict({k: v.detach().double().numpy() for k, v in tmodule.state_dict().items()})
    return module


def compare(tmodule, module, x, atol=1e-6):
    xt = torch.tensor(x, requires_grad=True)
    ref = tmodule(xt)
    xm = minivit.tensor(x, requires_grad=True)
    out = module(xm)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), atol=atol, rtol=1e-6)
    R = np.random.default_rng(1).standard_normal(out.shape)          # d(sum(out * R)) / dx
    (ref * torch.tensor(R)).sum().backward()
    (out * R).sum().backward()
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), atol=1e-8, rtol=1e-6)


# ------------------------------------------------------------------ tests
def test_sinusoid_table_matches_the_official_function():
    np.testing.assert_array_equal(get_sinusoid_encoding(197, 256), get_sinusoid_encoding_official(197, 256).numpy())


@pytest.mark.parametrize("dim,out_dim", [(147, 64), (36, 8)])
def test_token_transformer_matches_the_official_module(dim, out_dim):
    tm = randomize(Token_transformer(dim, out_dim, num_heads=1).double())
    m = TokenTransformer(dim, out_dim).to(np.float64)
    assert set(m.state_dict()) == set(tm.state_dict())
    load_into(tm, m)
    compare(tm, m, np.random.default_rng(0).standard_normal((2, 9, dim)))


def test_token_performer_matches_the_official_module():
    torch.manual_seed(0)
    tm = randomize(Token_performer(36, 16).double()).eval()            # eval: the two 0.1 dropouts off
    m = TokenPerformer(36, 16).to(np.float64)
    assert set(m.state_dict()) == set(tm.state_dict())
    load_into(tm, m).eval()
    x = np.random.default_rng(0).standard_normal((2, 9, 36)) * 0.5
    compare(tm, m, x)


@pytest.mark.parametrize("tokens_type", ["transformer", "performer"])
def test_t2t_module_matches_the_official_module(tokens_type):
    torch.manual_seed(0)
    tm = randomize(T2T_module(28, tokens_type, in_chans=1, embed_dim=16, token_dim=8,
                              splits=((5, 2, 2), (3, 2, 1), (3, 1, 1))).double()).eval()
    m = T2TModule(28, tokens_type, in_chans=1, embed_dim=16, token_dim=8, kernel_sizes=(5, 3, 3), strides=(2, 2, 1),
                  paddings=(2, 1, 1)).to(np.float64)
    load_into(tm, m).eval()
    compare(tm, m, np.random.default_rng(0).standard_normal((2, 1, 28, 28)))


FMNIST = dict(img_size=28, tokens_type="transformer", in_chans=1, num_classes=10, embed_dim=64, depth=6, num_heads=4,
              mlp_ratio=2.0, token_dim=32, splits=((5, 2, 2), (3, 2, 1), (3, 1, 1)))
T2T7 = dict(img_size=224, in_chans=3, num_classes=1000, embed_dim=256, depth=2, num_heads=4, mlp_ratio=2.0,
            token_dim=64)                 # T2T-ViT-7 with two blocks (seven in the paper) to keep it quick


@pytest.mark.parametrize("name,cfg,shape", [("t2t_vit_fmnist", FMNIST, (2, 1, 28, 28)),
                                            ("t2t_vit_7", dict(T2T7, tokens_type="transformer"), (1, 3, 224, 224)),
                                            ("t2t_vit_7_performer", dict(T2T7, tokens_type="performer"), (1, 3, 224, 224))])
def test_whole_model_matches_the_official_t2t_vit(name, cfg, shape):
    torch.manual_seed(0)
    tm = T2T_ViT(**cfg).double().eval()
    if name == "t2t_vit_fmnist":
        randomize(tm)
    else:
        nn.init.trunc_normal_(tm.cls_token, std=0.02)
        for mod in tm.modules():
            if isinstance(mod, nn.Linear):
                nn.init.trunc_normal_(mod.weight, std=0.02)
    m = models.create(name, depth=cfg["depth"]).to(np.float64)
    assert set(m.state_dict()) == set(tm.state_dict())
    trainable = sum(p.numel() for p in tm.parameters() if p.requires_grad)
    assert m.num_params() == trainable                         # frozen pos_embed (and w) are buffers in minivit
    load_into(tm, m).eval()
    compare(tm, m, np.random.default_rng(0).standard_normal(shape))


def test_published_counts_match_the_official_code():
    for name, tokens_type, count in (("t2t_vit_7", "transformer", 4_255_310),
                                     ("t2t_vit_7_performer", "performer", 4_255_694)):
        tm = T2T_ViT(tokens_type=tokens_type, embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0)
        assert sum(p.numel() for p in tm.parameters() if p.requires_grad) == count == models.create(name).num_params()
