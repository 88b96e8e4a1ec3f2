"""Swin Transformer: hierarchical vision transformer using shifted windows.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021. https://arxiv.org/abs/2103.14030
Official code: https://github.com/microsoft/Swin-Transformer
minivit follows timm's ``SwinTransformer`` (module tree, names, init, LN eps
1e-5), so a timm state dict loads 1:1; the official repository's names map
onto it through :func:`convert_official_state_dict` (table below).

The equations (course section 7). Tokens live on an h x w grid and attend only
inside M x M windows; every second block shifts the windows by s = floor(M/2):

    z^_l   = W-MSA(LN(z_{l-1})) + z_{l-1}          regular windows
    z_l    = MLP(LN(z^_l)) + z^_l
    z^_l+1 = SW-MSA(LN(z_l)) + z_l                  windows shifted by (s, s)
    z_l+1  = MLP(LN(z^_l+1)) + z^_l+1

    Attention(Q, K, V) = SoftMax(Q K^T / sqrt(d) + B) V     per window, per head
    B[i, j] = B^[r_i - r_j, c_i - c_j],   B^ in R^{(2M-1) x (2M-1)} (one per head)

    cost:  Omega(MSA)   = 4 h w C^2 + 2 (h w)^2 C      global attention
           Omega(W-MSA) = 4 h w C^2 + 2 M^2 h w C      linear in h w

The shifted windows are computed with the paper's batch trick: roll the map
by (-s, -s), cut it into the same regular windows, add a mask of -100 between
tokens that came from different regions (they are not neighbours in the
image), then roll back by (+s, +s). Between stages, patch merging
concatenates each 2 x 2 group of tokens (4C channels) and maps it to 2C: the
grid halves and the channels double, as in a CNN pyramid.

Symbols -> variables: z_l -> the (B, H, W, C) feature map ``x``; LN ->
``norm1``/``norm2``; W-MSA / SW-MSA -> ``SwinTransformerBlock.window_msa``
(``WindowAttention``, an ``nn.Attention`` with the bias added); MLP -> ``mlp``
(``nn.Mlp``); M -> ``window_size``; s -> ``shift_size``; B^ ->
``relative_position_bias_table`` ((2M-1)^2, heads); the map (i, j) -> row of
B^ -> ``relative_position_index`` (M^2, M^2); the -100 mask ->
``attn_mask`` (nW, M^2, M^2); patch merging -> ``PatchMerging``
(``norm``, ``reduction``); C -> ``embed_dim``; stage i -> ``layers[i]``.

What the reference code does that the paper does not say (minivit does it too):

- The patch "linear embedding" is a Conv2d with kernel = stride = patch_size,
  followed by a LayerNorm; there is no absolute position embedding.
- The mask value is -100 (not -inf), added after the relative position bias;
  after the softmax the masked weights are ~e^-100, i.e. zero.
- When a stage's resolution is not larger than the window (Swin-T's last stage,
  7x7 with M = 7), the window shrinks to the resolution and the block does not
  shift: one window covers the whole map.
- Patch merging is LayerNorm(4C) then a bias-free Linear(4C -> 2C), and it
  concatenates in the (row, col) parity order (0,0), (1,0), (0,1), (1,1).
- The official code merges at the *end* of stages 0..2
  (``layers.i.downsample``); timm (and minivit) at the *start* of stages 1..3
  (``layers.{i+1}.downsample``). The classifier is ``head`` there and
  ``head.fc`` here.

Official checkpoint -> minivit (= timm) key names, the one place they differ::

    layers.{i}.downsample.{norm,reduction}.*  ->  layers.{i+1}.downsample.{norm,reduction}.*
    head.{weight,bias}                         ->  head.fc.{weight,bias}
    *.relative_position_index, *.attn_mask     ->  dropped (recomputed from the config)
"""
from __future__ import annotations

import re

import numpy as np

from minivit import functional as F
from minivit import init, nn
from minivit.models import register_model
from minivit.models.vit import PatchEmbed as _ViTPatchEmbed

__all__ = ["window_partition", "window_reverse", "relative_position_index", "shift_region_labels",
           "shifted_window_mask", "PatchEmbed", "WindowAttention", "SwinTransformerBlock",
           "PatchMerging", "SwinTransformerStage", "SwinTransformer", "convert_official_state_dict"]


# ==========================================================================
# Windows: partition, reverse, relative positions, the shift mask
# ==========================================================================
def window_partition(x, window_size: int):
    """Cut a (B, H, W, C) map into non-overlapping M x M windows.

    Returns (B * nW, M, M, C) with nW = (H/M)(W/M); the windows are ordered
    batch-major, then row-major over the window grid (the order the shift mask
    assumes). Works on Tensors (differentiable) and on ndarrays.
    """
    M = window_size
    B, H, W, C = x.shape
    x = x.reshape(B, H // M, M, W // M, M, C)          # (B, H/M, M, W/M, M, C)
    if isinstance(x, np.ndarray):
        x = x.transpose(0, 1, 3, 2, 4, 5)
    else:
        x = x.permute(0, 1, 3, 2, 4, 5)                # (B, H/M, W/M, M, M, C)
    return x.reshape(-1, M, M, C)                      # (B*nW, M, M, C)


def window_reverse(windows, window_size: int, H: int, W: int):
    """Inverse of :func:`window_partition`: (B * nW, M, M, C) -> (B, H, W, C)."""
    M = window_size
    C = windows.shape[-1]
    x = windows.reshape(-1, H // M, W // M, M, M, C)   # (B, H/M, W/M, M, M, C)
    if isinstance(x, np.ndarray):
        x = x.transpose(0, 1, 3, 2, 4, 5)
    else:
        x = x.permute(0, 1, 3, 2, 4, 5)                # (B, H/M, M, W/M, M, C)
    return x.reshape(-1, H, W, C)                      # (B, H, W, C)


def relative_position_index(window_size: int) -> np.ndarray:
    """(M^2, M^2) int64: row of the bias table B^ used by query i and key j.

    With (r, c) the coordinates inside the window, the offset
    (r_i - r_j, c_i - c_j) lies in [-(M-1), M-1]^2; shifting both by M-1 and
    reading them as a two-digit number in base 2M-1 gives the row
    (r_i - r_j + M - 1) * (2M - 1) + (c_i - c_j + M - 1), in [0, (2M-1)^2).
    """
    M = window_size
    coords = np.stack(np.meshgrid(np.arange(M), np.arange(M), indexing="ij"))   # (2, M, M)
    coords = coords.reshape(2, -1)                                               # (2, M^2)
    rel = coords[:, :, None] - coords[:, None, :]                                # (2, M^2, M^2): i - j
    rel = rel.transpose(1, 2, 0) + (M - 1)                                       # (M^2, M^2, 2), >= 0
    return (rel[..., 0] * (2 * M - 1) + rel[..., 1]).astype(np.int64)


def shift_region_labels(H: int, W: int, window_size: int, shift_size: int) -> np.ndarray:
    """(H, W) int labels 0..8 of the regions of the rolled map.

    After rolling by (-s, -s), the last s rows (and columns) hold pixels that
    wrapped around from the top (left), and the M - s rows before them belong
    to the last real window. The rows split as [0, H-M), [H-M, H-s), [H-s, H)
    and the columns likewise: 3 x 3 = 9 regions, numbered row-major. Two
    tokens in one window may attend to each other only if their labels agree.
    """
    M, s = window_size, shift_size
    labels = np.zeros((H, W), np.int64)
    cnt = 0
    for hs in (slice(0, -M), slice(-M, -s), slice(-s, None)):
        for ws in (slice(0, -M), slice(-M, -s), slice(-s, None)):
            labels[hs, ws] = cnt
            cnt += 1
    return labels


def shifted_window_mask(H: int, W: int, window_size: int, shift_size: int,
                        dtype=np.float32) -> np.ndarray:
    """The SW-MSA attention mask (nW, M^2, M^2): 0 where query i and key j of
    window w come from the same region, -100 where they do not."""
    M = window_size
    labels = shift_region_labels(H, W, M, shift_size)[None, :, :, None]    # (1, H, W, 1)
    mw = window_partition(labels, M).reshape(-1, M * M)                     # (nW, M^2)
    diff = mw[:, None, :] - mw[:, :, None]                                   # (nW, M^2, M^2): j vs i
    return np.where(diff != 0, -100.0, 0.0).astype(dtype)


# ==========================================================================
# Layers
# ==========================================================================
class PatchEmbed(_ViTPatchEmbed):
    """ViT's patch embedding (a Conv2d with kernel = stride = P) followed by a
    LayerNorm, kept as a map: x (B, C_in, H, W) -> (B, H/P, W/P, C)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96):
        super().__init__(img_size, patch_size, in_chans, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        if x.ndim == 4 and tuple(x.shape[2:]) != tuple(self.img_size):
            raise ValueError(f"x is {x.shape[2]}x{x.shape[3]} but this Swin was built for img_size="
                             f"{self.img_size[0]}x{self.img_size[1]} (its windows and shift masks are "
                             f"fixed at construction): create the model with img_size={x.shape[2]}")
        x = super().forward(x)                                   # (B, N, C), checks the channels
        gh, gw = self.grid_size
        return self.norm(x.reshape(x.shape[0], gh, gw, x.shape[-1]))   # (B, H/P, W/P, C)


class WindowAttention(nn.Attention):
    """W-MSA: ``nn.Attention`` inside each window, with the relative position bias.

    x (B * nW, M^2, C) -> (B * nW, M^2, C). The logits of window w are
    Q K^T / sqrt(d) + B + mask[w]; B (heads, M^2, M^2) is gathered from
    ``relative_position_bias_table`` ((2M-1)^2, heads) with
    ``relative_position_index`` (M^2, M^2), so one learned number serves every
    pair of tokens with the same offset. ``mask`` (nW, M^2, M^2) is the -100
    shift mask or None.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                         proj_drop=proj_drop)
        self.window_size = int(window_size)
        M = self.window_size
        self.relative_position_bias_table = nn.Parameter(np.zeros(((2 * M - 1) ** 2, num_heads)))
        init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # recomputed from the config, so not saved (as in timm)
        self.register_buffer("relative_position_index", relative_position_index(M), persistent=False)

    def relative_position_bias(self):
        """B for every head: table[index] -> Tensor (heads, M^2, M^2)."""
        N = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]  # (N*N, heads)
        return bias.reshape(N, N, self.num_heads).permute(2, 0, 1)                        # (heads, N, N)

    def forward(self, x, mask=None, return_attention: bool = False):
        B_, N, C = x.shape
        if N != self.window_size ** 2:
            raise ValueError(f"WindowAttention: expected windows of {self.window_size}x{self.window_size}"
                             f" = {self.window_size ** 2} tokens, got x of shape {tuple(x.shape)}")
        bias = self.relative_position_bias()[None]                       # (1, heads, N, N)
        if mask is not None:
            nW = mask.shape[0]
            bias = bias + mask[:, None]                                  # (nW, heads, N, N)
            bias = bias.expand(B_ // nW, nW, self.num_heads, N, N)       # (B, nW, heads, N, N)
            bias = bias.reshape(B_, self.num_heads, N, N)                # (B*nW, heads, N, N)
        return super().forward(x, attn_mask=bias, return_attention=return_attention)


class SwinTransformerBlock(nn.Module):
    """One Swin block on a (B, H, W, C) map (timm names: norm1, attn, norm2, mlp).

        x = x + DropPath((S)W-MSA(LN(x)));   x = x + DropPath(MLP(LN(x)))

    ``shift_size`` = 0 gives W-MSA, > 0 SW-MSA. If the resolution is not
    larger than the window, the window shrinks to the resolution and the
    shift is switched off (the reference code's rule). The shift mask for
    ``input_resolution`` is built once and kept in the ``attn_mask`` buffer
    (None without shift); ``window_size``, ``shift_size`` and
    ``input_resolution`` are attributes, for the chapter's drawings.
    """

    def __init__(self, dim: int, input_resolution, num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, stage=None):
        super().__init__()
        where = "" if stage is None else f"stage {stage}: "
        H, W = (input_resolution, input_resolution) if isinstance(input_resolution, int) else input_resolution
        self.dim, self.input_resolution = int(dim), (int(H), int(W))
        if min(H, W) <= window_size:               # one window covers the map: shrink it, no shift
            window_size, shift_size = min(H, W), 0
        if H % window_size or W % window_size:
            raise ValueError(f"{where}the resolution {H}x{W} is not divisible by window_size={window_size}")
        if not 0 <= shift_size < window_size:
            raise ValueError(f"{where}shift_size={shift_size} must be in [0, window_size={window_size})")
        self.window_size, self.shift_size = int(window_size), int(shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads=num_heads, window_size=window_size, qkv_bias=qkv_bias,
                                    attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path2 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        mask = shifted_window_mask(H, W, self.window_size, self.shift_size) if self.shift_size else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def window_msa(self, x, return_attention: bool = False):
        """(S)W-MSA on a normalised map x (B, H, W, C) -> (B, H, W, C).

        roll(-s) -> windows -> attention with bias and mask -> merge -> roll(+s).
        With ``return_attention`` also the weights, ndarray (B, nW, heads, M^2, M^2).
        """
        B, H, W, C = x.shape
        M, s = self.window_size, self.shift_size
        if s:
            x = F.roll(x, (-s, -s), (1, 2))                      # cyclic shift toward the top left
        xw = window_partition(x, M).reshape(-1, M * M, C)         # (B*nW, M^2, C)
        out = self.attn(xw, mask=self.attn_mask, return_attention=return_attention)
        if return_attention:
            out, attn = out                                       # attn (B*nW, heads, M^2, M^2)
            attn = attn.reshape(B, -1, *attn.shape[1:])           # (B, nW, heads, M^2, M^2)
        x = window_reverse(out.reshape(-1, M, M, C), M, H, W)     # (B, H, W, C)
        if s:
            x = F.roll(x, (s, s), (1, 2))                         # undo the shift
        return (x, attn) if return_attention else x

    def forward(self, x, return_attention: bool = False):
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_resolution + (self.dim,):
            raise ValueError(f"SwinTransformerBlock: expected x of shape (B, {self.input_resolution[0]}, "
                             f"{self.input_resolution[1]}, {self.dim}), got {tuple(x.shape)}")
        B, H, W, C = x.shape
        y = self.window_msa(self.norm1(x), return_attention=return_attention)
        if return_attention:
            y, attn = y
        x = x + self.drop_path1(y)                                # z^ = (S)W-MSA(LN(z)) + z
        x = x.reshape(B, H * W, C)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))          # z = MLP(LN(z^)) + z^
        x = x.reshape(B, H, W, C)
        return (x, attn) if return_attention else x

    def extra_repr(self):
        return (f"dim={self.dim}, input_resolution={self.input_resolution}, "
                f"window_size={self.window_size}, shift_size={self.shift_size}")


class PatchMerging(nn.Module):
    """Halve the grid, double the channels: (B, H, W, C) -> (B, H/2, W/2, 2C).

    Each 2 x 2 group is concatenated in the order x[0::2, 0::2], x[1::2, 0::2],
    x[0::2, 1::2], x[1::2, 1::2] (4C channels), then LayerNorm(4C) and a
    bias-free Linear(4C -> 2C) ``reduction``.
    """

    def __init__(self, dim: int, out_dim=None):
        super().__init__()
        self.dim, self.out_dim = int(dim), int(out_dim or 2 * dim)
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x):
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            raise ValueError(f"PatchMerging: the resolution {H}x{W} is odd; merging 2x2 groups needs it even")
        x = x.reshape(B, H // 2, 2, W // 2, 2, C)       # (B, H/2, row parity, W/2, col parity, C)
        x = x.permute(0, 1, 3, 4, 2, 5)                 # (B, H/2, W/2, col parity, row parity, C)
        x = x.reshape(B, H // 2, W // 2, 4 * C)         # (B, H/2, W/2, 4C): (0,0),(1,0),(0,1),(1,1)
        return self.reduction(self.norm(x))             # (B, H/2, W/2, 2C)

    def extra_repr(self):
        return f"dim={self.dim}, out_dim={self.out_dim}"


class SwinTransformerStage(nn.Module):
    """One stage (timm's layout): optional ``downsample`` (PatchMerging) at the
    start, then ``depth`` blocks alternating W-MSA and SW-MSA."""

    def __init__(self, dim: int, out_dim: int, input_resolution, depth: int, num_heads: int,
                 window_size: int = 7, downsample: bool = True, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path=0.0, stage=None):
        super().__init__()
        H, W = input_resolution
        where = "" if stage is None else f"stage {stage}: "
        if downsample:
            if H % 2 or W % 2:
                raise ValueError(f"{where}the resolution {H}x{W} cannot be merged 2x2 (PatchMerging needs "
                                 f"an even size); choose img_size, patch_size and the number of stages so "
                                 f"every merged resolution is even")
            H, W = H // 2, W // 2
        self.input_resolution, self.output_resolution = tuple(input_resolution), (H, W)
        self.dim, self.out_dim, self.depth = int(dim), int(out_dim), int(depth)
        self.downsample = PatchMerging(dim, out_dim) if downsample else nn.Identity()
        dp = list(drop_path) if isinstance(drop_path, (list, tuple, np.ndarray)) else [drop_path] * depth
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(out_dim, (H, W), num_heads, window_size,
                                 shift_size=0 if i % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio,
                                 qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop,
                                 drop_path=float(dp[i]), stage=stage)
            for i in range(depth)])

    def forward(self, x, return_attention: bool = False):
        x = self.downsample(x)
        x, attns = nn.run_blocks(self.blocks, x, return_attention)
        return (x, attns) if return_attention else x


class ClassifierHead(nn.Module):
    """Mean over the H x W tokens, dropout, then ``fc`` (timm's ``head.fc``)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        return self.fc(self.drop(x.mean(dim=(1, 2))))    # (B, H, W, C) -> (B, C) -> (B, classes)


# ==========================================================================
# The model
# ==========================================================================
class SwinTransformer(nn.Module):
    """Swin classifier: patch embedding + LN, stages of (S)W-MSA blocks with patch
    merging between them, a final LayerNorm, mean pooling and a linear head.

    ``forward(x, return_attention=False)`` maps (B, C, H, W) to logits
    (B, num_classes); with ``return_attention=True`` it returns ``(logits,
    attns)``, ``attns[i][j]`` the weights of block j of stage i, an ndarray
    (B, nW, heads, M^2, M^2). ``forward_stages(x)`` returns the feature map of
    every stage, (B, H_i, W_i, C_i): the pyramid. ``window_size`` is one int or
    one per stage. ``drop_rate`` is the dropout before the head (timm); the
    official code applies it after the patch embedding instead.
    """

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
                 depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
                 qkv_bias=True, drop_rate=0.0, proj_drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.1):
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        n = len(depths)
        if n == 0 or len(num_heads) != n:
            raise ValueError(f"depths={depths} and num_heads={num_heads} must list one entry per stage "
                             f"(got {n} and {len(num_heads)})")
        windows = (window_size,) * n if isinstance(window_size, (int, np.integer)) else tuple(window_size)
        if len(windows) != n or any(int(m) != m or m < 1 for m in windows):
            raise ValueError(f"window_size={window_size} must be a positive int or one per stage ({n} stages)")
        for name, v in (("drop_rate", drop_rate), ("proj_drop_rate", proj_drop_rate),
                        ("attn_drop_rate", attn_drop_rate), ("drop_path_rate", drop_path_rate)):
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        dims = [int(embed_dim * 2 ** i) for i in range(n)]
        for i, (d, h) in enumerate(zip(dims, num_heads)):
            if h <= 0 or d % h:
                raise ValueError(f"stage {i}: dim={d} (embed_dim={embed_dim} * 2^{i}) is not divisible by "
                                 f"num_heads={h}")
        self.num_classes, self.embed_dim, self.num_layers = num_classes, embed_dim, n
        self.num_features = dims[-1]
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        dpr = np.linspace(0, drop_path_rate, sum(depths))       # rises linearly over all blocks
        res, start, layers = self.patch_embed.grid_size, 0, []
        for i in range(n):
            stage = SwinTransformerStage(dims[max(i - 1, 0)], dims[i], res, depths[i], num_heads[i], windows[i],
                                         downsample=i > 0, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                         proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                                         drop_path=dpr[start:start + depths[i]], stage=i)
            layers.append(stage)
            res, start = stage.output_resolution, start + depths[i]
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self.init_weights()

    def init_weights(self):
        """timm's init: trunc-normal(0.02) Linear weights with zero biases,
        LayerNorm 1/0, bias tables trunc-normal(0.02); the patch convolution
        keeps PyTorch's default."""
        init.transformer_linears_(self)                  # Linear trunc-normal(0.02), zero bias; LN 1/0

    def no_weight_decay(self):
        """Parameter names that AdamW should not decay: the bias tables (timm)."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def layout(self):
        """One dict per block: stage, block, resolution, window, shift, number of
        windows and tokens per window (the chapter prints it as a table)."""
        rows = []
        for i, stage in enumerate(self.layers):
            for j, blk in enumerate(stage.blocks):
                H, W = blk.input_resolution
                M = blk.window_size
                rows.append(dict(stage=i, block=j, resolution=(H, W), dim=blk.dim, heads=blk.attn.num_heads,
                                 window=M, shift=blk.shift_size, windows=(H // M) * (W // M), tokens=M * M))
        return rows

    def forward_stages(self, x):
        """The pyramid: a list with each stage's output map (B, H_i, W_i, C_i)."""
        x = self.patch_embed(x)
        maps = []
        for stage in self.layers:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x, return_attention: bool = False):
        """(B, C, H, W) -> normalised last map (B, H_n, W_n, C_n) [, attention per stage]."""
        x = self.patch_embed(x)                                  # (B, H/P, W/P, C)
        x, attns = nn.run_blocks(self.layers, x, return_attention)
        x = self.norm(x)
        return (x, attns) if return_attention else x

    def forward_head(self, x):
        return self.head(x)                                      # mean-pool the tokens -> logits

    def forward(self, x, return_attention: bool = False):
        if return_attention:
            x, attns = self.forward_features(x, return_attention=True)
            return self.forward_head(x), attns
        return self.forward_head(self.forward_features(x))


def convert_official_state_dict(state_dict) -> dict:
    """Rename an official microsoft/Swin-Transformer state dict to minivit's (= timm's)
    names (table in the module docstring): downsample moves to the next stage,
    ``head`` becomes ``head.fc``, the index and mask buffers are dropped."""
    state_dict = state_dict.get("model", state_dict)
    out = {}
    for k, v in state_dict.items():
        if k.endswith("relative_position_index") or k.endswith("attn_mask"):
            continue
        k = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)
        k = re.sub(r"^head\.", "head.fc.", k)
        out[k] = v
    return out


# ==========================================================================
# Configs
# ==========================================================================
@register_model
def swin_fmnist(**kw):
    """Swin for 28x28x1 Fashion-MNIST: patch 2 (a 14x14 grid), window 7, C = 48,
    depths (2, 2), heads (3, 6) (head size 16), MLP ratio 2: 210,844 parameters,
    close to ``vit_fmnist``'s 205,962, for a like-for-like comparison.

    Why this layout: 28 = 2 * 14 = 4 * 7, so with patch 2 the window can stay
    Swin-T's M = 7 with shift 3, without padding the image. Stage 0 works on
    a 14x14 grid cut into 2x2 windows (W-MSA, then SW-MSA with the nine-region
    mask); patch merging takes it to 7x7, where the map is no larger than the
    window, so stage 1 is exactly Swin-T's last stage: one window, no shift.
    A third merge would need an even 7, so there are two stages. The other
    option, padding to 32 with M = 4, gives three stages, but 23% of every
    input (32^2 - 28^2 of 32^2 pixels) is then padding and the window shrinks
    to 4x4; we keep the paper's window instead.
    """
    cfg = dict(img_size=28, patch_size=2, in_chans=1, num_classes=10, embed_dim=48, depths=(2, 2),
               num_heads=(3, 6), window_size=7, mlp_ratio=2.0, drop_path_rate=0.0)
    cfg.update(kw)
    return SwinTransformer(**cfg)


@register_model
def swin_tiny_patch4_window7_224(**kw):
    """Swin-T (timm / official): C = 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24),
    window 7, drop path 0.2; 28,288,354 parameters."""
    cfg = dict(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
               num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, drop_path_rate=0.2)
    cfg.update(kw)
    return SwinTransformer(**cfg)
