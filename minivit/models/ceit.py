"""CeiT: Convolution-enhanced image Transformer.

Yuan, Guo, Liu, Zhou, Yu, Wu, "Incorporating Convolution Designs into Visual
Transformers", ICCV 2021. https://arxiv.org/abs/2103.11816
Official code: https://github.com/coeusguo/ceit (``ceit_model.py``); minivit
follows it, with the same parameter names and shapes, so its checkpoints load 1:1.

CeiT keeps ViT's encoder and changes three places, each borrowing from CNNs
(course section 6):

1. **I2T (Image-to-Tokens)**: instead of cutting raw pixels into 16x16
   patches, a small conv stem extracts low-level features first, and the
   patches are cut from that feature map::

       x' = MaxPool(BN(Conv7x7,stride 2(x)))          (no ReLU)
       tokens = Patchify_P(x')                        (B, N, D)

2. **LeFF (Locally-enhanced Feed-Forward)** replaces the MLP of every block.
   The course's five steps, for the N patch tokens x_h^t of a block
   (the class token x_c^t goes around them)::

       step 1  tokens            x_h^t                               (B, N, D)
       step 2  up-projection     x_l1 = GELU(BN(x_h^t W_1 + b_1))    (B, N, eD)
       step 3  back to the grid  x_s1 = SpatialRestore(x_l1)         (B, eD, sqrt N, sqrt N)
       step 4  depth-wise conv   x_s2 = GELU(BN(DWConv3x3(x_s1)))    (B, eD, sqrt N, sqrt N)
       step 5  flatten + down    x_l2 = BN(Flatten(x_s2) W_2 + b_2)  (B, N, D)
       out = [x_c^t ; x_l2]                                          (B, 1+N, D)

   A block is then  x = x + MSA(LN1(x));  x = x + LeFF(LN2(x)).

3. **LCA (Layer-wise Class-token Attention)**: the class tokens of all L
   blocks, x_c = [x_c^(1); ...; x_c^(L)] + E_layer (a zero-initialised
   layer position embedding), go through one more transformer block in
   which only the last one asks the question::

       a   = softmax(q_L K^T / sqrt(d))       q_L = LN(x_c)[L] W_q,  K = LN(x_c) W_k
       z   = x_c^(L) + (a V) W_o              V = LN(x_c) W_v
       z   = z + MLP(LN(z))
       y   = head(LN(z))

Symbols -> variables: Conv7x7/BN/MaxPool -> ``i2t.backbone.conv/bn/maxpool``;
Patchify_P -> ``i2t.proj`` (kernel = stride = P); W_1, b_1 -> ``leff.conv1``
(a 1x1 convolution, which is one matrix applied to every token; its weight
(eD, D, 1, 1) is used as the matrix (eD, D)); DWConv3x3 -> ``leff.conv2``
(groups = eD); W_2, b_2 -> ``leff.conv3``; the three BNs -> ``leff.bn1/bn2/bn3``;
e -> ``mlp_ratio``; x_c^(l) -> the class token after block l; E_layer ->
``pos_layer_embed``; W_q, W_k, W_v -> rows [0:D], [D:2D], [2D:3D] of
``lca.attn.qkv.weight``; W_o -> ``lca.attn.proj``; MLP -> ``lca.feedforward``.

What the reference code does, where a reading of the paper could differ
(minivit follows the reference):

- I2T has **no ReLU** between BN and max-pool.
- The reference reshapes the tokens to the grid first and applies conv1
  (1x1) there; minivit applies the same weights to the tokens before the
  reshape, in the course's order. A 1x1 conv and BN/GELU act on each position
  alone, so the two orders compute the same numbers. bn1 and bn3 therefore
  see tokens and are ``BatchNorm1d`` over the B*N tokens, which is exactly
  ``BatchNorm2d`` over the B*H*W pixels of the grid (same keys and buffers).
- LeFF ends with BN and **no GELU** (the unofficial rishikksh20 version adds
  one, pads the conv by 4 and uses Linear + BatchNorm1d layers).
- LeFF passes the *normalised* class token through unchanged, so the block's
  class-token update is x_c <- x_c + LN2(x)_c.
- LCA's residual is the un-normalised last class token; there is no
  drop-path in LCA. One revision of ``ceit_model.py`` instead runs a plain
  self-attention block over all L class tokens and keeps the last row: its
  last row depends only on q_L and on every K, V, so it is the same function.
- ``pos_layer_embed`` starts at zero; ``cls_token`` and ``pos_embed`` are
  trunc-normal(0.02); Linear layers trunc-normal(0.02) with zero bias;
  convolutions and BN keep PyTorch's defaults. LayerNorm eps is 1e-6.
- BatchNorm makes training-mode outputs depend on the whole batch; in eval
  mode (``model.eval()``) the running statistics are used, as in PyTorch.
"""
from __future__ import annotations

import math

import numpy as np

from minivit import functional as F
from minivit import init, nn
from minivit.models import register_model
from minivit.models.vit import resize_pos_embed
from minivit.tensor import no_grad

__all__ = ["Image2Tokens", "HybridEmbed", "LeFF", "Block", "AttentionLCA", "LCA", "CeiT",
           "square_grid"]


def square_grid(num_tokens: int, what: str = "LeFF") -> tuple:
    """(s, s) if ``num_tokens`` = s*s patch tokens fill a square grid, else a clear error."""
    s = math.isqrt(num_tokens)
    if s * s != num_tokens:
        raise ValueError(f"{what}: the {num_tokens} patch tokens (class token excluded) do not fill a "
                         f"square grid ({s}x{s}={s * s}, {s + 1}x{s + 1}={(s + 1) ** 2}); LeFF restores "
                         f"the tokens to their 2-D positions, so pass grid=(h, w) with h*w={num_tokens}")
    return s, s


# ==========================================================================
# 1. I2T: a conv stem, then patches of its feature map
# ==========================================================================
class Image2Tokens(nn.Module):
    """The I2T stem: Conv k x k, stride s (no bias) -> BN -> MaxPool 3x3 stride 2.

    x (B, C, H, W) -> (B, out_chans, H', W'), H' = H/4 for the defaults (224 -> 56).
    There is no ReLU (the reference has none).
    """

    def __init__(self, in_chans=3, out_chans=64, kernel_size=7, stride=2):
        super().__init__()
        self.in_chans, self.out_chans = int(in_chans), int(out_chans)
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=kernel_size // 2,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def output_size(self, H: int, W: int) -> tuple:
        """The (H', W') that an H x W image leaves after conv and max-pool."""
        (k, _), (s, _), (p, _) = self.conv.kernel_size, self.conv.stride, self.conv.padding
        conv = [(n + 2 * p - k) // s + 1 for n in (H, W)]
        return tuple((n + 2 - 3) // 2 + 1 for n in conv)

    def forward(self, x):
        return self.maxpool(self.bn(self.conv(x)))          # (B, C, H, W) -> (B, C', H/4, W/4)


class HybridEmbed(nn.Module):
    """I2T + patch embedding (reference name ``i2t``): x (B, C, H, W) -> tokens (B, N, D).

    ``backbone`` is the conv stem; ``proj`` cuts its feature map into P x P
    patches and embeds each one (a Conv2d with kernel = stride = P).
    """

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=192, stem_chans=64,
                 stem_kernel=7, stem_stride=2):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size, self.in_chans = int(patch_size), int(in_chans)
        self.backbone = Image2Tokens(in_chans, stem_chans, stem_kernel, stem_stride)
        self.grid_size = self.token_grid(*img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(stem_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def token_grid(self, H: int, W: int) -> tuple:
        """The (h, w) grid of patch tokens for an H x W image, or a clear error."""
        fh, fw = self.backbone.output_size(H, W)
        if fh < 1 or fw < 1:
            raise ValueError(f"image {H}x{W} is too small for the I2T stem (conv stride "
                             f"{self.backbone.conv.stride[0]} then max-pool stride 2)")
        P = self.patch_size
        if fh % P or fw % P:
            raise ValueError(f"patch_size={P} does not divide the {fh}x{fw} feature map that the I2T stem "
                             f"makes from a {H}x{W} image")
        return fh // P, fw // P

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x has shape {tuple(x.shape)} but the model expects (B, {self.in_chans}, H, W): "
                             f"{self.in_chans} input channel{'s' if self.in_chans > 1 else ''}")
        self.token_grid(x.shape[2], x.shape[3])             # checks the sizes
        x = self.backbone(x)                                # (B, C', H', W')
        x = self.proj(x)                                    # (B, D, h, w)
        return x.flatten(2).transpose(1, 2)                 # (B, N, D), N = h*w, row-major


# ==========================================================================
# 2. LeFF: the feed-forward block with a depth-wise convolution inside
# ==========================================================================
class LeFF(nn.Module):
    """Locally-enhanced feed-forward (reference ``LocallyEnhancedFeedForward``).

    ``forward(x, grid=None)``: x (B, 1+N, D) with the class token first ->
    (B, 1+N, D). ``grid`` = (h, w) of the N patch tokens (row-major); by
    default the square sqrt(N) x sqrt(N). The class-token row is returned as
    it came in; the patch tokens go through the five steps of the module
    docstring. ``with_bn=False`` drops the three BNs (the paper's ablation).
    """

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU,
                 kernel_size=3, with_bn=True):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"LeFF: kernel_size must be a positive odd number (the depth-wise conv keeps "
                             f"the grid size with padding (k-1)/2), got {kernel_size}")
        self.in_features, self.hidden_features, self.out_features = in_features, hidden_features, out_features
        self.with_bn = bool(with_bn)
        self.conv1 = nn.Conv2d(in_features, hidden_features, kernel_size=1)             # W_1: up-projection
        self.conv2 = nn.Conv2d(hidden_features, hidden_features, kernel_size=kernel_size,
                               padding=(kernel_size - 1) // 2, groups=hidden_features)  # depth-wise
        self.conv3 = nn.Conv2d(hidden_features, out_features, kernel_size=1)            # W_2: down-projection
        self.act = act_layer if isinstance(act_layer, nn.Module) else act_layer()
        if self.with_bn:
            self.bn1 = nn.BatchNorm1d(hidden_features)     # over B*N tokens = BatchNorm2d over B*H*W pixels
            self.bn2 = nn.BatchNorm2d(hidden_features)
            self.bn3 = nn.BatchNorm1d(out_features)

    def _bn(self, name, t):
        """BN per channel over every token of the batch: (B, N, C) -> (B, N, C)."""
        if not self.with_bn:
            return t
        B, N, C = t.shape
        return getattr(self, name)(t.reshape(B * N, C)).reshape(B, N, C)

    def forward(self, x, grid=None):
        if x.ndim != 3 or x.shape[2] != self.in_features:
            raise ValueError(f"LeFF: expected x of shape (B, 1+N, {self.in_features}), got {tuple(x.shape)}")
        B, T, D = x.shape
        N = T - 1
        h, w = square_grid(N) if grid is None else tuple(int(g) for g in grid)
        if h * w != N:
            raise ValueError(f"LeFF: grid=({h}, {w}) holds {h * w} patch tokens but x has N={N} "
                             f"(plus the class token)")
        E = self.hidden_features
        cls, tok = x[:, :1], x[:, 1:]                                     # (B, 1, D), (B, N, D)
        # step 2: project every patch token up to E channels (the 1x1 conv as a matrix)
        t = F.linear(tok, self.conv1.weight.reshape(E, D), self.conv1.bias)   # (B, N, D) -> (B, N, E)
        t = self.act(self._bn("bn1", t))
        # step 3: put the tokens back at their 2-D positions
        t = t.reshape(B, h, w, E).permute(0, 3, 1, 2)                     # (B, N, E) -> (B, E, h, w)
        # step 4: depth-wise k x k convolution: each channel mixes its neighbouring tokens
        t = self.conv2(t)                                                 # (B, E, h, w)
        t = self.act(self.bn2(t) if self.with_bn else t)
        # step 5: flatten back to tokens and project down to D channels
        t = t.flatten(2).transpose(1, 2)                                  # (B, E, h, w) -> (B, N, E)
        t = F.linear(t, self.conv3.weight.reshape(self.out_features, E), self.conv3.bias)   # (B, N, D)
        t = self._bn("bn3", t)                                            # no activation here
        return F.cat([cls, t], dim=1)                                     # (B, 1+N, D)

    def extra_repr(self):
        return (f"{self.in_features} -> {self.hidden_features} (depth-wise {self.conv2.kernel_size[0]}x"
                f"{self.conv2.kernel_size[1]}) -> {self.out_features}, with_bn={self.with_bn}")


class Block(nn.Module):
    """CeiT encoder block (reference names ``norm1, attn, norm2, leff``):

        x = x + DropPath(MSA(LN1(x)));   x = x + DropPath(LeFF(LN2(x)))

    ``forward(x, grid=None, return_attention=False)``, x (B, 1+N, D).
    """

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=0.0, attn_drop=0.0,
                 drop_path=0.0, kernel_size=3, with_bn=True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                 proj_drop=proj_drop)
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.leff = LeFF(dim, int(dim * mlp_ratio), kernel_size=kernel_size, with_bn=with_bn)

    def forward(self, x, grid=None, return_attention=False):
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True)
        else:
            y, attn = self.attn(self.norm1(x)), None
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.leff(self.norm2(x), grid))
        return (x, attn) if return_attention else x


# ==========================================================================
# 3. LCA: the last class token attends over the class tokens of all layers
# ==========================================================================
class AttentionLCA(nn.Attention):
    """Multi-head attention with a single query, from the last of L tokens.

    x (B, L, D) -> (B, 1, D). Same parameters as ``nn.Attention`` (``qkv``
    (3D, D), ``proj``): rows [0:D] of ``qkv`` make the query of x[:, -1],
    rows [D:3D] the keys and values of all L tokens.
    """

    def forward(self, x, return_attention: bool = False):
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise ValueError(f"AttentionLCA: expected x of shape (B, L, {self.dim}), got {tuple(x.shape)}")
        B, L, C = x.shape
        H, d = self.num_heads, self.head_dim
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, -1:], w[:C], None if b is None else b[:C])      # (B, 1, C): the last token asks
        kv = F.linear(x, w[C:], None if b is None else b[C:])             # (B, L, 2C): every token answers
        q = q.reshape(B, 1, H, d).transpose(1, 2)                         # (B, H, 1, d)
        kv = kv.reshape(B, L, 2, H, d).permute(2, 0, 3, 1, 4)             # (2, B, H, L, d)
        out = F.scaled_dot_product_attention(
            q, kv[0], kv[1], dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale,
            return_weights=return_attention)
        if return_attention:
            out, attn = out                                               # attn (B, H, 1, L)
        out = out.transpose(1, 2).reshape(B, 1, C)                        # (B, H, 1, d) -> (B, 1, C)
        out = self.proj_drop(self.proj(out))
        return (out, attn) if return_attention else out


class LCA(nn.Module):
    """The LCA block (reference names ``norm1, attn, norm2, feedforward``):

        z = x_c[:, -1] + AttentionLCA(LN1(x_c));   z = z + MLP(LN2(z))

    x_c (B, L, D) -> z (B, 1, D). No drop-path (as the reference).
    """

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=0.0, attn_drop=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = AttentionLCA(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                 proj_drop=proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.feedforward = nn.Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x, return_attention=False):
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True)
        else:
            y, attn = self.attn(self.norm1(x)), None
        z = x[:, -1:] + y                                   # residual: the un-normalised last class token
        z = z + self.feedforward(self.norm2(z))             # (B, 1, D)
        return (z, attn) if return_attention else z


# ==========================================================================
# The model
# ==========================================================================
class CeiT(nn.Module):
    """CeiT classifier: I2T -> class token + position embedding -> ``depth``
    blocks with LeFF -> LCA over the ``depth`` class tokens -> LayerNorm -> head.

    ``forward(x, return_attention=False)``: (B, C, H, W) -> logits (B, num_classes);
    with ``return_attention=True``, ``(logits, [A_1, ..., A_L])``, each block's
    attention (B, heads, 1+N, 1+N). ``lca_attention(x)`` gives LCA's weights
    over the layers, (B, heads, L). Images of another size (the patch size
    dividing the stem's output) work: the position embedding is resized.
    """

    num_prefix_tokens = 1

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=192, depth=12,
                 num_heads=3, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.0, stem_chans=64, stem_kernel=7, stem_stride=2, leff_local_size=3,
                 leff_with_bn=True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1 (LCA attends over the class tokens of the blocks), got {depth}")
        for name, v in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate),
                        ("drop_path_rate", drop_path_rate)):
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        self.num_classes, self.embed_dim, self.depth = num_classes, embed_dim, depth
        self.i2t = HybridEmbed(img_size, patch_size, in_chans, embed_dim, stem_chans, stem_kernel, stem_stride)
        n = self.i2t.num_patches
        self.cls_token = nn.Parameter(np.zeros((1, 1, embed_dim), np.float32))
        self.pos_embed = nn.Parameter(np.zeros((1, n + 1, embed_dim), np.float32))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = np.linspace(0, drop_path_rate, depth)        # stochastic depth rises linearly with depth
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=float(dpr[i]), kernel_size=leff_local_size, with_bn=leff_with_bn)
            for i in range(depth)])
        self.lca = LCA(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate)
        self.pos_layer_embed = nn.Parameter(np.zeros((1, depth, embed_dim), np.float32))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self):
        """The reference's init: trunc-normal(0.02) position embedding, class token and
        Linear weights (zero biases), LayerNorm 1/0, ``pos_layer_embed`` zeros;
        convolutions and BatchNorm keep PyTorch's defaults."""
        init.trunc_normal_(self.pos_embed, std=0.02)
        init.trunc_normal_(self.cls_token, std=0.02)
        init.zeros_(self.pos_layer_embed)
        init.transformer_linears_(self)                  # Linear trunc-normal(0.02), zero bias; LN 1/0

    def no_weight_decay(self):
        """Parameter names that AdamW should not decay (the reference's list)."""
        return {"pos_embed", "cls_token"}

    def forward_features(self, x, return_attention=False):
        """(B, C, H, W) -> z (B, D), the normalised output of LCA
        [, block attentions, LCA weights (B, heads, 1, L)]."""
        B = x.shape[0]
        grid = self.i2t.token_grid(x.shape[2], x.shape[3])
        x = self.i2t(x)                                                   # (B, N, D)
        cls = self.cls_token.expand(B, -1, -1)                            # (B, 1, D)
        x = F.cat([cls, x], dim=1)                                        # (B, 1+N, D)
        pos = resize_pos_embed(self.pos_embed, self.i2t.grid_size, grid, self.num_prefix_tokens)
        x = self.pos_drop(x + pos)
        cls_tokens, attns = [], []
        for blk in self.blocks:
            if return_attention:
                x, a = blk(x, grid, return_attention=True)
                attns.append(a)
            else:
                x = blk(x, grid)
            cls_tokens.append(x[:, 0])                                    # x_c^(l): (B, D)
        xc = F.stack(cls_tokens, dim=1) + self.pos_layer_embed            # (B, L, D)
        if return_attention:
            z, lca_attn = self.lca(xc, return_attention=True)
        else:
            z = self.lca(xc)                                              # (B, 1, D)
        z = self.norm(z).reshape(B, self.embed_dim)                       # (B, D)
        return (z, attns, lca_attn) if return_attention else z

    def forward(self, x, return_attention=False):
        if return_attention:
            z, attns, _ = self.forward_features(x, return_attention=True)
            return self.head(z), attns
        return self.head(self.forward_features(x))

    def lca_attention(self, x) -> np.ndarray:
        """LCA's attention of the last class token over the L layers' class tokens,
        (B, heads, L), computed without a graph in the current train/eval mode."""
        with no_grad():
            _, _, a = self.forward_features(x, return_attention=True)
        return np.asarray(a)[:, :, 0]


@register_model
def ceit_fmnist(**kw):
    """CeiT for 28x28x1 Fashion-MNIST, vit_fmnist's encoder (dim 64, depth 6, 4 heads,
    ratio 2): I2T with 32 channels (7x7 conv stride 2 -> 14x14, max-pool -> 7x7),
    patch 1 on the 7x7 feature map, so the same 49 tokens as vit_fmnist's patch 4."""
    cfg = dict(img_size=28, patch_size=1, in_chans=1, num_classes=10, embed_dim=64, depth=6, num_heads=4,
               mlp_ratio=2.0, stem_chans=32)
    cfg.update(kw)
    return CeiT(**cfg)


@register_model
def ceit_tiny(**kw):
    """CeiT-T (reference ``ceit_tiny_patch16_224``): I2T 3 -> 64 channels, 224 -> 56, patch 4
    (196 tokens), dim 192, depth 12, 3 heads, ratio 4, qkv bias; 6,356,904 parameters."""
    cfg = dict(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=192, depth=12,
               num_heads=3, mlp_ratio=4.0, stem_chans=64)
    cfg.update(kw)
    return CeiT(**cfg)
