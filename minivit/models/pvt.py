"""Pyramid Vision Transformer (PVT v1).

Wang, Xie, Li, Fan, Song, Liang, Lu, Luo and Shao, "Pyramid Vision Transformer:
A Versatile Backbone for Dense Prediction without Convolutions", ICCV 2021.
https://arxiv.org/abs/2102.12122
Official code: https://github.com/whai362/PVT (``classification/pvt.py``; v1).
minivit follows the official v1 module tree, names, init and LayerNorm eps
values, so an official checkpoint loads 1:1 (timm only has PVT v2).

(1) The pyramid. ViT keeps one 1/16-resolution token grid all the way; PVT
has four stages, each starting with its own patch embedding that shrinks the
map (stride P_1 = 4, then 2, 2, 2: 1/4, 1/8, 1/16, 1/32 of the image), so the
model yields feature maps F_1..F_4 of falling resolution and rising width
C_1..C_4, like a CNN. Stage i (i = 1..4), on the map F_{i-1} (H_{i-1}, W_{i-1}, C_{i-1}):

    x   = LN(Conv_{P_i}(F_{i-1}))  flattened      (H_i W_i, C_i),  H_i = H_{i-1}/P_i
    x   = [x_cls ; x] (stage 4 only) + E_pos_i
    x   = x + SRA(LN(x));  x = x + MLP(LN(x))     L_i times
    F_i = Reshape(x, H_i, W_i)                    (H_i, W_i, C_i)
    y   = head(LN(x)_cls)                         after stage 4

(2) Spatial-reduction attention (course section 9), with N_i heads:

    SRA(Q, K, V) = Concat(head_0, ..., head_{N_i}) W^O
    head_j       = Attention(Q W_j^Q, SR(K) W_j^K, SR(V) W_j^V)
    SR(x)        = Norm(Reshape(x, R_i) W^S)
    Attention(q, k, v) = Softmax(q k^T / sqrt(d_head)) v

Q = K = V = the stage's tokens x (H_i W_i, C_i). Reshape(x, R_i) cuts the H_i x W_i
grid into R_i x R_i blocks and lays each block out as one row of R_i^2 C_i
values, (H_i W_i / R_i^2, R_i^2 C_i); W^S (R_i^2 C_i, C_i) maps each row back to C_i.
That is exactly a convolution with kernel = stride = R_i, which is how the code
computes it. The queries keep full length, so the logits are
(H_i W_i) x (H_i W_i / R_i^2): R_i^2 times fewer than global attention. PVT-Tiny
uses R = (8, 4, 2, 1), so every query sees 49, 49, 49 and 50 keys (stage 4
adds the class token) at 224 px.

Symbols -> variables: F_i -> the stage maps of ``feature_pyramid``;
P_i -> ``patch_embed{i}.patch_size``; C_i -> ``embed_dims[i-1]``;
N_i -> ``num_heads[i-1]``; R_i -> ``sr_ratios[i-1]``; L_i -> ``depths[i-1]``;
E_pos_i -> ``pos_embed{i}``; x_cls -> ``cls_token``; W^Q -> ``attn.q``;
[W^K ; W^V] -> ``attn.kv`` (output channels [K (all heads); V], head-major);
W^S -> ``attn.sr`` (Conv2d, kernel = stride = R_i); Norm -> ``attn.norm``;
W^O -> ``attn.proj``; MLP -> ``mlp`` (``nn.Mlp``, hidden = mlp_ratios[i-1] C_i).

What the reference code does that the paper does not say:

- SR is a strided Conv2d with a bias (PyTorch default init), not a reshape and
  a matrix product; the two are the same linear map (tests check it).
- Three LayerNorm eps values: 1e-5 in each patch embedding and after SR (plain
  ``nn.LayerNorm``), 1e-6 in the blocks and the final norm.
- The class token exists only in stage 4 and is added *before* the position
  embedding (``pos_embed4`` has H_4 W_4 + 1 rows). Because SR reshapes the
  tokens to H x W, a stage holding the class token cannot reduce (R_4 = 1);
  minivit says so at construction instead of failing inside a reshape.
- ``_get_pos_embed`` compares H W with stage 1's patch count, so stages 2-4
  always run a bilinear ``F.interpolate`` to their own size (an identity);
  minivit resizes only when the grid really differs (other image sizes).
- The official code hard-codes the stage inputs as img_size / 2^(i+1), which
  assumes P_1 = 4; minivit derives the grids from P_1, so small images work.
- ``no_weight_decay()`` is ``{"cls_token"}`` only (position embeddings decay).

minivit addition: ``in_pad`` zero-pads the image on every side before stage 1.
Four halvings need a side divisible by 2^3 P_1; 28 is not, so ``pvt_fmnist``
pads 28 -> 32 (2 pixels of zeros, after normalisation) and uses P_1 = 2: grids
16, 8, 4, 2.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from minivit import functional as F
from minivit import init, nn
from minivit.models import register_model
from minivit.models.vit import resize_pos_embed

__all__ = ["PatchEmbed", "SpatialReductionAttention", "Block", "PyramidVisionTransformer"]


def _stage(i):
    return f"stage {i + 1}"


class PatchEmbed(nn.Module):
    """One stage's patch embedding: Conv2d(kernel = stride = P) then LayerNorm (eps 1e-5).

    x (B, C_in, H, W) -> tokens (B, H/P * W/P, D) and the new grid (H/P, W/P).
    ``img_size`` is this stage's input resolution (it fixes the grid the
    position embedding is made for).
    """

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=64, stage=0):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size, self.patch_size, self.in_chans, self.stage = img_size, patch_size, in_chans, stage
        self.H, self.W = img_size[0] // patch_size, img_size[1] // patch_size
        self.num_patches = self.H * self.W
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)                       # eps 1e-5: a plain nn.LayerNorm

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{_stage(self.stage)}: x has shape {tuple(x.shape)} but the patch embedding "
                             f"expects (B, {self.in_chans}, H, W)")
        H, W = x.shape[2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"{_stage(self.stage)}: patch_size={self.patch_size} does not divide the "
                             f"input {H}x{W}")
        x = self.proj(x)                                          # (B, D, H/P, W/P)
        x = x.flatten(2).transpose(1, 2)                          # (B, N, D)
        return self.norm(x), (H // self.patch_size, W // self.patch_size)


class SpatialReductionAttention(nn.Module):
    """SRA: multi-head attention whose keys and values come from a spatially
    reduced copy of the tokens (official name ``Attention``; keys ``q``, ``kv``,
    ``proj``, ``sr``, ``norm``).

    ``forward(x, H, W, return_attention=False)``: x (B, N, C) with N = H W
    tokens on an H x W grid. With ``sr_ratio`` R > 1:

        x_  = x as an image (B, C, H, W) -> Conv2d(k = s = R) -> (B, HW/R^2, C) -> LayerNorm
        q   = x W^Q                (B, heads, N, d)
        k,v = x_ [W^K ; W^V]       (B, heads, HW/R^2, d)
        out = softmax(q k^T d^-1/2) v  ->  concat heads  ->  W^O

    With R = 1 it is ordinary multi-head attention (q and kv split ``qkv``).
    ``return_attention=True`` also returns the weights (B, heads, N, HW/R^2).
    """

    def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0.0, proj_drop=0.0, sr_ratio=1):
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"SpatialReductionAttention: dim={dim} is not divisible by num_heads={num_heads}")
        if int(sr_ratio) != sr_ratio or sr_ratio < 1:
            raise ValueError(f"SpatialReductionAttention: sr_ratio must be an integer >= 1, got {sr_ratio!r}")
        self.dim, self.num_heads, self.sr_ratio = int(dim), int(num_heads), int(sr_ratio)
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_drop = float(attn_drop)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)               # W^Q
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)          # [W^K ; W^V]
        self.proj = nn.Linear(dim, dim)                           # W^O
        self.proj_drop = nn.Dropout(proj_drop)
        if self.sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=self.sr_ratio, stride=self.sr_ratio)   # W^S
            self.norm = nn.LayerNorm(dim)                         # Norm, eps 1e-5

    def reduce(self, x, H, W):
        """SR(x) = Norm(Reshape(x, R) W^S): (B, HW, C) -> (B, HW/R^2, C); the identity when R = 1."""
        if self.sr_ratio == 1:
            return x
        B, N, C = x.shape
        R = self.sr_ratio
        if N != H * W:
            raise ValueError(f"SpatialReductionAttention: x has {N} tokens but H*W = {H}*{W} = {H * W}; "
                             f"spatial reduction needs exactly the grid's tokens (no class token)")
        if H % R or W % R:
            raise ValueError(f"SpatialReductionAttention: sr_ratio={R} does not divide the token grid {H}x{W}")
        x_ = x.transpose(1, 2).reshape(B, C, H, W)                # (B, N, C) -> (B, C, H, W)
        x_ = self.sr(x_)                                          # (B, C, H/R, W/R)
        x_ = x_.reshape(B, C, -1).transpose(1, 2)                 # (B, HW/R^2, C)
        return self.norm(x_)

    def forward(self, x, H, W, return_attention=False):
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise ValueError(f"SpatialReductionAttention: expected x of shape (B, N, {self.dim}), "
                             f"got {tuple(x.shape)}")
        B, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q(x).reshape(B, N, h, d).permute(0, 2, 1, 3)     # (B, N, C) -> (B, h, N, d)
        x_ = self.reduce(x, H, W)                                 # (B, M, C), M = HW/R^2
        kv = self.kv(x_).reshape(B, -1, 2, h, d)                  # (B, M, 2, h, d)
        kv = kv.permute(2, 0, 3, 1, 4)                            # (2, B, h, M, d)
        k, v = kv[0], kv[1]                                       # each (B, h, M, d)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale,
            return_weights=return_attention)
        if return_attention:
            out, attn = out                                       # attn: ndarray (B, h, N, M)
        x = out.transpose(1, 2).reshape(B, N, C)                  # (B, h, N, d) -> (B, N, C): Concat(heads)
        x = self.proj_drop(self.proj(x))                          # W^O
        return (x, attn) if return_attention else x

    def extra_repr(self):
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"


class Block(nn.Module):
    """PVT encoder block (pre-norm, LN eps 1e-6 in the configs):

    x = x + DropPath(SRA(LN(x), H, W));  x = x + DropPath(MLP(LN(x)))
    """

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, proj_drop=0.0, attn_drop=0.0,
                 drop_path=0.0, sr_ratio=1, norm_layer=None, act_layer=nn.GELU):
        super().__init__()
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm_layer(dim)
        self.attn = SpatialReductionAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                              proj_drop=proj_drop, sr_ratio=sr_ratio)
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = nn.Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

    def forward(self, x, H, W, return_attention=False):
        if return_attention:
            y, attn = self.attn(self.norm1(x), H, W, return_attention=True)
        else:
            y, attn = self.attn(self.norm1(x), H, W), None
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, attn) if return_attention else x


class PyramidVisionTransformer(nn.Module):
    """PVT v1 classifier: ``len(depths)`` stages (four in the paper), each a patch
    embedding, a position embedding and ``depths[i]`` SRA blocks; the class token
    joins in the last stage; final LayerNorm and a linear head on the class token.

    ``forward(x, return_attention=False)``: (B, C, H, W) -> logits (B, num_classes);
    with ``return_attention=True``, ``(logits, attns)`` where ``attns[i][j]`` is the
    (B, heads, N_i, N_i / R_i^2) attention of block j in stage i.
    ``feature_pyramid(x)`` returns the stage maps F_1..F_4, each (B, C_i, H_i, W_i).
    ``cost_table()`` / ``print_cost_table()`` give the keys per query of each stage.
    Other image sizes work if every stage divides; position embeddings are then
    resized bilinearly (as the official ``_get_pos_embed``).
    """

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000,
                 embed_dims=(64, 128, 256, 512), num_heads=(1, 2, 4, 8), mlp_ratios=(4, 4, 4, 4),
                 qkv_bias=False, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                 depths=(3, 4, 6, 3), sr_ratios=(8, 4, 2, 1), in_pad=0):
        super().__init__()
        per_stage = {"embed_dims": embed_dims, "num_heads": num_heads, "mlp_ratios": mlp_ratios,
                     "depths": depths, "sr_ratios": sr_ratios}
        S = len(embed_dims)
        for name, v in per_stage.items():
            if len(v) != S:
                raise ValueError(f"{name} has {len(v)} values but embed_dims has {S}: give one value per stage")
        for i in range(S):
            if num_heads[i] <= 0 or embed_dims[i] % num_heads[i]:
                raise ValueError(f"{_stage(i)}: embed_dims[{i}]={embed_dims[i]} is not divisible by "
                                 f"num_heads[{i}]={num_heads[i]}")
            if depths[i] < 1 or int(sr_ratios[i]) != sr_ratios[i] or sr_ratios[i] < 1:
                raise ValueError(f"{_stage(i)}: depths[{i}] and sr_ratios[{i}] must be integers >= 1, "
                                 f"got {depths[i]} and {sr_ratios[i]}")
        if sr_ratios[-1] != 1:
            raise ValueError(f"{_stage(S - 1)} holds the class token, so it cannot reduce keys: "
                             f"sr_ratios[{S - 1}] must be 1, got {sr_ratios[-1]}")
        for name, v in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate),
                        ("drop_path_rate", drop_path_rate)):
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if in_pad < 0:
            raise ValueError(f"in_pad must be >= 0, got {in_pad}")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size, self.patch_size, self.in_chans, self.in_pad = img_size, patch_size, in_chans, int(in_pad)
        self.num_classes, self.num_stages = num_classes, S
        self.embed_dims, self.num_heads_per_stage = tuple(embed_dims), tuple(num_heads)
        self.sr_ratios, self.depths = tuple(int(r) for r in sr_ratios), tuple(depths)
        self.stage_patch_sizes = (patch_size,) + (2,) * (S - 1)   # P_1, then 2, 2, 2
        grids = self.stage_grids(img_size)                        # validates every stage

        dpr = np.linspace(0, drop_path_rate, sum(depths))         # stochastic depth rises linearly
        stage_inputs = [(img_size[0] + 2 * self.in_pad, img_size[1] + 2 * self.in_pad)] + grids[:-1]
        cur = 0
        for i in range(S):
            last = i == S - 1
            pe = PatchEmbed(stage_inputs[i], self.stage_patch_sizes[i], in_chans if i == 0 else embed_dims[i - 1],
                            embed_dims[i], stage=i)             # stage i reads the map of stage i-1
            setattr(self, f"patch_embed{i + 1}", pe)
            setattr(self, f"pos_embed{i + 1}",
                    nn.Parameter(np.zeros((1, pe.num_patches + int(last), embed_dims[i]), np.float32)))
            setattr(self, f"pos_drop{i + 1}", nn.Dropout(drop_rate))
            setattr(self, f"block{i + 1}", nn.ModuleList([
                Block(embed_dims[i], num_heads[i], mlp_ratios[i], qkv_bias, proj_drop=drop_rate,
                      attn_drop=attn_drop_rate, drop_path=float(dpr[cur + j]), sr_ratio=sr_ratios[i])
                for j in range(depths[i])]))
            cur += depths[i]
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
        self.cls_token = nn.Parameter(np.zeros((1, 1, embed_dims[-1]), np.float32))
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self):
        """Official init: trunc-normal(0.02) position embeddings, class token and
        Linear weights (zero biases), LayerNorm 1/0; the patch and SR convolutions
        keep PyTorch's default."""
        for i in range(self.num_stages):
            init.trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)
        init.trunc_normal_(self.cls_token, std=0.02)
        init.transformer_linears_(self)                  # Linear trunc-normal(0.02), zero bias; LN 1/0

    def no_weight_decay(self):
        """Parameter names AdamW should not decay (the official v1 list)."""
        return {"cls_token"}

    def stage_grids(self, img_size):
        """Token grid (H_i, W_i) of every stage for an input of ``img_size`` (H, W)
        (before ``in_pad``); raises a clear error naming the stage that does not divide."""
        H, W = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        H, W = H + 2 * self.in_pad, W + 2 * self.in_pad
        pad = f" (after in_pad={self.in_pad})" if self.in_pad else ""
        grids = []
        for i, P in enumerate(self.stage_patch_sizes):
            if H % P or W % P:
                where = f"the {H}x{W} input{pad}" if i == 0 else f"{_stage(i - 1)}'s {H}x{W} feature map"
                raise ValueError(f"{_stage(i)}: patch size {P} does not divide {where}; the input side "
                                 f"must be divisible by {int(np.prod(self.stage_patch_sizes))}"
                                 f"{' after padding' if self.in_pad else ''}")
            H, W = H // P, W // P
            R = self.sr_ratios[i]
            if H % R or W % R:
                raise ValueError(f"{_stage(i)}: sr_ratios[{i}]={R} does not divide the stage "
                                 f"resolution {H}x{W}")
            grids.append((H, W))
        return grids

    def _stage_modules(self, i):
        return (getattr(self, f"patch_embed{i + 1}"), getattr(self, f"pos_embed{i + 1}"),
                getattr(self, f"pos_drop{i + 1}"), getattr(self, f"block{i + 1}"))

    def _forward(self, x, attns=None, maps=None):
        """Run the stages; append each block's attention to ``attns`` (list of lists)
        and each stage map F_i (B, C_i, H_i, W_i) to ``maps`` if given."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x has shape {tuple(x.shape)} but the model expects (B, {self.in_chans}, H, W): "
                             f"{self.in_chans} input channel{'s' if self.in_chans > 1 else ''}")
        self.stage_grids(x.shape[2:])                             # clear errors before any work
        if self.in_pad:
            p = self.in_pad
            x = F.pad(x, (p, p, p, p))                            # (B, C, H+2p, W+2p)
        B = x.shape[0]
        for i in range(self.num_stages):
            patch_embed, pos_embed, pos_drop, blocks = self._stage_modules(i)
            last = i == self.num_stages - 1
            x, (H, W) = patch_embed(x)                            # (B, H W, C_i)
            grid = (patch_embed.H, patch_embed.W)
            if last:
                cls = self.cls_token.expand(B, -1, -1)            # (B, 1, C_4)
                x = F.cat([cls, x], dim=1)                        # (B, 1 + H W, C_4)
            pos = resize_pos_embed(pos_embed, grid, (H, W), num_prefix_tokens=int(last))
            x = pos_drop(x + pos)
            stage_attn = []
            for blk in blocks:
                if attns is not None:
                    x, a = blk(x, H, W, return_attention=True)
                    stage_attn.append(a)
                else:
                    x = blk(x, H, W)
            if attns is not None:
                attns.append(stage_attn)
            if maps is not None:
                tokens = x[:, 1:] if last else x                  # the grid tokens (B, H W, C_i)
                maps.append(tokens.reshape(B, H, W, -1).permute(0, 3, 1, 2))   # F_i (B, C_i, H, W)
            if not last:
                x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2)    # (B, H W, C_i) -> (B, C_i, H, W)
        return self.norm(x)                                       # (B, 1 + H_4 W_4, C_4)

    def forward_features(self, x, return_attention=False):
        """(B, C, H, W) -> the normalised class token (B, C_4) [, attention maps per stage]."""
        attns = [] if return_attention else None
        x = self._forward(x, attns=attns)[:, 0]
        return (x, attns) if return_attention else x

    def feature_pyramid(self, x):
        """The stage maps F_1..F_S, each a Tensor (B, C_i, H_i, W_i) (F_S without the class token)."""
        maps = []
        self._forward(x, maps=maps)
        return maps

    def forward(self, x, return_attention=False):
        if return_attention:
            x, attns = self.forward_features(x, return_attention=True)
            return self.head(x), attns
        return self.head(self.forward_features(x))

    def cost_table(self, img_size=None):
        """Per stage: grid, tokens N, sr ratio R, keys per query (HW/R^2, +1 in the last
        stage for the class token), and the logits per head and image for SRA and for
        global attention over the same tokens."""
        rows = []
        for i, (H, W) in enumerate(self.stage_grids(img_size or self.img_size)):
            last = i == self.num_stages - 1
            R = self.sr_ratios[i]
            n = H * W + int(last)
            keys = H * W // (R * R) + int(last)
            rows.append({"stage": i + 1, "grid": (H, W), "dim": self.embed_dims[i], "tokens": n,
                         "sr_ratio": R, "keys_per_query": keys, "sra_logits": n * keys,
                         "global_logits": n * n, "saving": n * n / (n * keys)})
        return rows

    def print_cost_table(self, img_size=None):
        """Print ``cost_table`` as a small table and return its rows."""
        rows = self.cost_table(img_size)
        size = img_size or self.img_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        print(f"SRA cost per image and head, input {size[0]}x{size[1]}"
              + (f" (padded by {self.in_pad})" if self.in_pad else ""))
        print(f"{'stage':>5} {'grid':>7} {'C':>4} {'tokens':>6} {'R':>3} {'keys/query':>10} "
              f"{'SRA logits':>11} {'global logits':>13} {'saving':>7}")
        for r in rows:
            g = f"{r['grid'][0]}x{r['grid'][1]}"
            print(f"{r['stage']:>5} {g:>7} {r['dim']:>4} {r['tokens']:>6} {r['sr_ratio']:>3} "
                  f"{r['keys_per_query']:>10} {r['sra_logits']:>11,} {r['global_logits']:>13,} "
                  f"{r['saving']:>6.1f}x")
        return rows


@register_model
def pvt_fmnist(**kw):
    """PVT for 28x28x1 Fashion-MNIST: pad to 32, P_1 = 2, grids 16, 8, 4, 2;
    dims (32, 64, 96, 128), heads (1, 2, 3, 4), one block per stage, R = (4, 2, 1, 1):
    every query sees 16, 16, 16 and 5 keys (PVT-Tiny's constant-keys idea at small scale)."""
    cfg = dict(img_size=28, patch_size=2, in_chans=1, num_classes=10, embed_dims=(32, 64, 96, 128),
               num_heads=(1, 2, 3, 4), mlp_ratios=(4, 4, 4, 4), qkv_bias=True, depths=(1, 1, 1, 1),
               sr_ratios=(4, 2, 1, 1), in_pad=2)
    cfg.update(kw)
    return PyramidVisionTransformer(**cfg)


@register_model
def pvt_tiny(**kw):
    """PVT-Tiny (official v1): dims (64, 128, 320, 512), heads (1, 2, 5, 8), MLP ratios
    (8, 8, 4, 4), depths (2, 2, 2, 2), R = (8, 4, 2, 1); 13,229,288 parameters."""
    cfg = dict(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dims=(64, 128, 320, 512),
               num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), qkv_bias=True, depths=(2, 2, 2, 2),
               sr_ratios=(8, 4, 2, 1))
    cfg.update(kw)
    return PyramidVisionTransformer(**cfg)
