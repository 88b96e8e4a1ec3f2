"""Vision Transformer (ViT).

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale", ICLR 2021. https://arxiv.org/abs/2010.11929
Official code: https://github.com/google-research/vision_transformer
minivit follows timm's ``VisionTransformer`` (names, init, exact GELU, LN eps 1e-6),
so a timm checkpoint loads 1:1.

The equations (course section 2), for an image x of shape (C, H, W) cut into
N = HW/P^2 patches x_p^i of P*P*C values each:

    z_0 = [x_class ; x_p^1 E ; ... ; x_p^N E] + E_pos           E: (P^2 C, D), E_pos: (N+1, D)
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                            l = 1..L
    z_l  = MLP(LN(z'_l)) + z'_l
    y    = LN(z_L^0)   ->  head(y)

Symbols -> variables: x_p^i E -> ``patch_embed`` (a Conv2d with kernel = stride = P,
the same linear map applied to every patch); x_class -> ``cls_token``; E_pos ->
``pos_embed``; MSA -> ``blocks[l].attn`` (``nn.Attention``); MLP ->
``blocks[l].mlp`` (``nn.Mlp``); LN -> ``norm1``/``norm2``/``norm``; L -> ``depth``;
D -> ``embed_dim``.

What the reference code does differently from the paper: the JAX original uses
the tanh approximation of GELU and a zero-initialised head; timm (which minivit
matches) uses the exact GELU and trunc-normal(0.02) init. Both add the position
embedding *after* prepending the class token.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from minivit import functional as F
from minivit import init, nn
from minivit.models import register_model

__all__ = ["PatchEmbed", "Block", "VisionTransformer", "resize_pos_embed"]


class PatchEmbed(nn.Module):
    """Cut an image into P x P patches and embed each one linearly.

    x (B, C, H, W) -> (B, N, D) with N = (H/P)(W/P). A convolution with kernel
    = stride = P applies the same matrix E to every patch.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        for s in img_size:
            if s % patch_size:
                raise ValueError(f"patch_size={patch_size} does not divide img_size={s}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x has shape {tuple(x.shape)} but the model expects (B, {self.in_chans}, H, W): "
                             f"{self.in_chans} input channel{'s' if self.in_chans > 1 else ''}")
        H, W = x.shape[2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} does not divide the image size {H}x{W}")
        x = self.proj(x)                                   # (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)                # (B, N, D)


class Block(nn.Module):
    """Pre-norm transformer encoder block (timm names: norm1, attn, norm2, mlp).

    x = x + DropPath(MSA(LN(x)));  x = x + DropPath(MLP(LN(x)))
    """

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=0.0, attn_drop=0.0,
                 drop_path=0.0, norm_layer=None, act_layer=nn.GELU):
        super().__init__()
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm_layer(dim)
        self.attn = nn.Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias,
                                 attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = nn.Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, return_attention=False):
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True)
        else:
            y, attn = self.attn(self.norm1(x)), None
        x = x + self.drop_path1(y)                          # z'_l = MSA(LN(z_{l-1})) + z_{l-1}
        x = x + self.drop_path2(self.mlp(self.norm2(x)))    # z_l = MLP(LN(z'_l)) + z'_l
        return (x, attn) if return_attention else x


def resize_pos_embed(pos_embed, old_grid, new_grid, num_prefix_tokens=1):
    """Resize the patch part of a (1, T + N, D) position embedding to a new grid.

    The prefix tokens (class/distillation) keep their rows; the N = gh*gw patch
    rows are laid out as a (D, gh, gw) image and resized bilinearly (timm uses
    bicubic with antialiasing, which minivit's ``interpolate`` does not have).
    Differentiable: works on Tensors.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    D = pos_embed.shape[-1]
    prefix = pos_embed[:, :num_prefix_tokens]
    grid = pos_embed[:, num_prefix_tokens:]                                  # (1, gh*gw, D)
    grid = grid.reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)  # (1, N', D)
    return F.cat([prefix, grid], dim=1) if num_prefix_tokens else grid


class VisionTransformer(nn.Module):
    """ViT classifier: patch embedding, class token, position embedding,
    ``depth`` pre-norm blocks, final LayerNorm and a linear head on the class token.

    ``forward(x, return_attention=False)`` maps (B, C, H, W) to logits
    (B, num_classes); with ``return_attention=True`` it returns
    ``(logits, [attn_1, ..., attn_L])``, each attention map (B, heads, T, T).
    An image of another size than ``img_size`` (divisible by the patch size)
    works: the position embedding is resized to the new grid.
    ``global_pool="avg"`` (timm's option) classifies the mean of the patch
    tokens instead of the class token, with the last LayerNorm after the
    pooling (``fc_norm``, timm's name) instead of on every token (``norm``).
    """

    num_prefix_tokens = 1

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, global_pool="token",
                 patch_drop_rate=0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' (the class token) or 'avg' (the mean of the "
                             f"patch tokens), got {global_pool!r}")
        self.global_pool = global_pool
        for name, v in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate),
                        ("drop_path_rate", drop_path_rate), ("patch_drop_rate", patch_drop_rate)):
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        self.num_classes, self.embed_dim = num_classes, embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(np.zeros((1, 1, embed_dim), np.float32))
        self.pos_embed = nn.Parameter(np.zeros((1, n + self.num_prefix_tokens, embed_dim), np.float32))
        self.pos_drop = nn.Dropout(drop_rate)
        self.patch_drop = (nn.PatchDropout(patch_drop_rate, self.num_prefix_tokens)
                           if patch_drop_rate > 0 else nn.Identity())
        dpr = np.linspace(0, drop_path_rate, depth)   # stochastic depth rises linearly with depth
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=float(dpr[i])) for i in range(depth)])
        # timm's layout: with the class token the last LayerNorm acts on every token (norm);
        # with average pooling it acts on the pooled vector (fc_norm) and norm is an identity
        avg = global_pool == "avg"
        self.norm = nn.Identity() if avg else nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if avg else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self):
        """timm's default init: trunc-normal(0.02) position embedding and Linear
        weights (zero biases), normal(1e-6) class token, LayerNorm 1/0, the
        patch convolution keeps PyTorch's default."""
        init.trunc_normal_(self.pos_embed, std=0.02)
        init.normal_(self.cls_token, std=1e-6)
        init.transformer_linears_(self)                  # Linear trunc-normal(0.02), zero bias; LN 1/0

    def no_weight_decay(self):
        """Parameter names that AdamW should not decay (timm's convention)."""
        return {"pos_embed", "cls_token"}

    def _pos_embed(self, x, grid):
        """Prepend the class token, then add the position embedding (resized if
        the patch grid differs from the config's): (B, N, D) -> (B, 1+N, D)."""
        cls = self.cls_token.expand(x.shape[0], -1, -1)              # (B, 1, D)
        x = F.cat([cls, x], dim=1)                                   # (B, 1+N, D)
        pos = resize_pos_embed(self.pos_embed, self.patch_embed.grid_size, grid, self.num_prefix_tokens)
        return self.pos_drop(x + pos)

    def forward_features(self, x, return_attention=False):
        """(B, C, H, W) -> normalised tokens (B, 1+N, D) [, list of attention maps]."""
        p = self.patch_embed.patch_size
        grid = (x.shape[2] // p, x.shape[3] // p)
        x = self._pos_embed(self.patch_embed(x), grid)               # (B, 1+N, D)
        x = self.patch_drop(x)                       # training: (B, 1+keep, D) with patch_drop_rate
        x, attns = nn.run_blocks(self.blocks, x, return_attention)
        x = self.norm(x)
        return (x, attns) if return_attention else x

    def forward_head(self, x):
        """Tokens (B, 1+N, D) -> logits: the class token's, or (``global_pool="avg"``)
        the mean of the patch tokens, then fc_norm."""
        if self.global_pool == "avg":
            return self.head(self.fc_norm(x[:, self.num_prefix_tokens:].mean(dim=1)))
        return self.head(x[:, 0])                                    # class token -> logits

    def forward(self, x, return_attention=False):
        if return_attention:
            x, attns = self.forward_features(x, return_attention=True)
            return self.forward_head(x), attns
        return self.forward_head(self.forward_features(x))


@register_model
def vit_fmnist(**kw):
    """ViT for 28x28x1 Fashion-MNIST: patch 4 (49 patches), dim 64, depth 6, 4 heads,
    MLP ratio 2 (205,962 parameters) — trains on a CPU in minutes."""
    cfg = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=6,
               num_heads=4, mlp_ratio=2.0)
    cfg.update(kw)
    return VisionTransformer(**cfg)


@register_model
def vit_tiny_patch16_224(**kw):
    """ViT-Ti/16 (timm): dim 192, depth 12, 3 heads, 5,717,416 parameters."""
    cfg = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=192, depth=12,
               num_heads=3, mlp_ratio=4.0)
    cfg.update(kw)
    return VisionTransformer(**cfg)
