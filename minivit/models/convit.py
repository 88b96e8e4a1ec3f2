"""ConViT: a vision transformer whose first layers can choose to act like convolutions.

d'Ascoli, Touvron, Leavitt, Morcos, Biroli, Sagun, "ConViT: Improving Vision
Transformers with Soft Convolutional Inductive Biases", ICML 2021.
https://arxiv.org/abs/2103.10697
Official code: https://github.com/facebookresearch/convit (timm ``convit.py``
has the same maths and the same parameter names; minivit matches both, so a
timm checkpoint loads 1:1).

The idea (course section 5): replace the self-attention of the first layers
by *gated positional self-attention* (GPSA). Each head h mixes the usual
content attention with a purely positional attention, through a learned gate
sigma(lambda_h). The positional part is initialised so that every head looks at
one neighbouring patch, like one tap of a convolution kernel; training can open
the gate towards content (non-local) attention where that helps.

    GPSA_h(X) := normalize[A^h] X W_val^h
    A^h_ij    := (1 - sigma(lambda_h)) softmax_j(Q_i^h K_j^hT / sqrt(d))
                 + sigma(lambda_h) softmax_j(v_pos^hT r_ij)

    r_ij = (dx_ij, dy_ij, dx_ij^2 + dy_ij^2)    offset of key patch j from query patch i
                                                (dx: column offset, dy: row offset)
    normalize[A]_ij = A_ij / sum_j' A_ij'

Local initialisation (the "soft convolutional inductive bias"): W_val = I and,
for head h with its assigned offset Delta^h = (Delta_x, Delta_y) and locality
strength alpha,

    v_pos^h = alpha (2 Delta_x, 2 Delta_y, -1)
    =>  v_pos^hT r_ij = -alpha ||delta_ij - Delta^h||^2 + alpha ||Delta^h||^2

so the positional softmax peaks at delta = Delta^h and sharpens as alpha grows.
The sqrt(H) x sqrt(H) heads tile the offsets {0..k-1} - c with k = sqrt(H),
c = (k-1)/2: for 9 heads each head has one peak (offsets -1, 0, 1); for 4
heads (ConViT-Ti) c = 0.5 and each head's maximum is a four-way tie on a
2 x 2 block of offsets.

Symbols -> variables (per GPSA layer ``blocks[l].attn``): Q^h, K^h -> ``qk``
(one Linear C -> 2C, no bias); W_val -> ``v`` (Linear C -> C, no bias), then
``proj`` mixes the heads (as in every transformer); lambda_h ->
``gating_param[h]``; v_pos^h -> ``pos_proj.weight[h]`` (plus ``pos_proj.bias[h]``);
r_ij -> ``rel_indices(grid)[0, i, j]``; alpha -> ``locality_strength``;
Delta^h -> ``local_init_offsets(H)[h]``; sigma(lambda_h) -> ``GPSA.gate`` /
``ConViT.gates()``; d -> ``head_dim``.

The model (ConViT-Ti: D = 192, 4 heads, 12 blocks, ``local_up_to_layer`` = 10):
patch embedding + position embedding (no class-token slot) -> blocks 0..9 are
GPSA blocks on the N patch tokens only -> the class token is prepended -> blocks
10, 11 are ordinary MHSA blocks on 1 + N tokens -> LayerNorm -> head on the
class token. Every block is pre-norm: x += attn(LN x); x += MLP(LN x).

What the reference code does differently from the paper (minivit follows the
reference):

- the paper writes r_ij = (||delta||^2, dx, dy); the code's channel order is
  (dx, dy, ||delta||^2), which decides the layout of ``pos_proj.weight``;
- the content score is scaled by d^-1/2 (the paper's formula omits it);
- ``pos_proj`` has a bias. It adds the same number to every key of a row,
  so it cancels in the softmax: it never changes the output and its gradient
  is zero. It is kept because it is in the state dict (and the count);
- "normalize" is a division by the row sum, a no-op in exact arithmetic
  (both terms are row-stochastic and the weights sum to one);
- the reference constructor takes ``embed_dim`` *per head* and multiplies it by
  ``num_heads`` (``convit_tiny``: 48 x 4 = 192); minivit's ``embed_dim`` is the
  total width, as in every other minivit model;
- ``local_init`` in the reference silently leaves heads beyond the largest
  square number at their random init (e.g. 2 of 6 heads); minivit refuses a
  non-square head count unless ``local_init=False``;
- the reference never adds the class token when ``local_up_to_layer`` equals
  the depth (the head then reads patch token 0); minivit raises instead.
"""
from __future__ import annotations

import math

import numpy as np

from minivit import functional as F
from minivit import init, nn
from minivit.models import register_model
from minivit.models.vit import PatchEmbed, resize_pos_embed
from minivit.tensor import Tensor, no_grad

__all__ = ["GPSA", "Block", "ConViT", "rel_indices", "local_init_offsets", "nonlocality"]


def rel_indices(grid) -> np.ndarray:
    """r_ij for every pair of patches of a (gh, gw) grid (or a side S for S x S).

    Returns float64 (1, N, N, 3), N = gh*gw, patches numbered row-major
    (n = row*gw + col): channel 0 is dx = col_j - col_i, 1 is dy = row_j - row_i,
    2 is dx^2 + dy^2 (the reference's order). Not a parameter: recomputed per grid.
    """
    gh, gw = (grid, grid) if isinstance(grid, (int, np.integer)) else tuple(grid)
    row, col = np.divmod(np.arange(gh * gw), gw)             # (N,) each
    dx = (col[None, :] - col[:, None]).astype(np.float64)    # (N, N): key j minus query i
    dy = (row[None, :] - row[:, None]).astype(np.float64)
    return np.stack([dx, dy, dx ** 2 + dy ** 2], axis=-1)[None]   # (1, N, N, 3)


def _check_local_init_heads(num_heads: int) -> int:
    k = math.isqrt(num_heads)
    if k * k != num_heads:
        squares = ", ".join(str(i * i) for i in range(1, 6))
        raise ValueError(
            f"num_heads={num_heads} is not a perfect square: GPSA's local init places the heads on a "
            f"sqrt(H) x sqrt(H) grid of attention offsets, so it needs num_heads in {{{squares}, ...}} "
            f"(or local_init=False, which leaves pos_proj random)")
    return k


def local_init_offsets(num_heads: int) -> np.ndarray:
    """Delta^h = (Delta_x, Delta_y) for every head h, shape (H, 2).

    Head h = h1 + k*h2 (k = sqrt(H)) gets Delta = (h2 - c, h1 - c) with c = (k-1)/2
    (the reference's ``local_init`` writes k//2 for odd k: the same number).
    Half-integers (even k) mean the maximum is tied between the two neighbouring offsets.
    """
    k = _check_local_init_heads(num_heads)
    center = (k - 1) / 2
    h = np.arange(num_heads)
    h1, h2 = h % k, h // k
    return np.stack([h2 - center, h1 - center], axis=1).astype(np.float64)


def nonlocality(attn, grid) -> np.ndarray:
    """The paper's non-locality of each head: the attention-weighted distance
    between query and key patches, averaged over queries and images,

        D^h = 1/(B N) sum_b sum_i sum_j A^h_bij ||delta_ij||       (in patches)

    attn: (B, H, N, N) over the N = gh*gw patch tokens (drop a class token's
    row and column first). Returns (H,). A head attending to itself scores 0;
    one attending uniformly to a 7 x 7 grid scores about 3.6.
    """
    a = np.asarray(attn.data if isinstance(attn, Tensor) else attn, dtype=np.float64)
    dist = np.sqrt(rel_indices(grid)[0, :, :, 2])                 # (N, N)
    if a.ndim != 4 or a.shape[-2:] != dist.shape:
        raise ValueError(f"nonlocality: expected attention of shape (B, H, {len(dist)}, {len(dist)}) "
                         f"for a {grid} grid, got {a.shape}")
    return np.einsum("bhij,ij->h", a, dist) / (a.shape[0] * a.shape[2])


class GPSA(nn.Module):
    """Gated positional self-attention, x (B, N, C) -> (B, N, C), N = gh*gw patches.

    Parameters (reference names): ``qk`` (C -> 2C, no bias), ``v`` (C -> C, no bias),
    ``proj`` (C -> C), ``pos_proj`` (3 -> H), ``gating_param`` (H,), init 1.
    ``forward(x, grid=None, return_attention=False)``: ``grid`` = (gh, gw), default
    the square sqrt(N) x sqrt(N); with ``return_attention`` also the mixed
    attention A (B, H, N, N) as an ndarray.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, locality_strength: float = 1.0, local_init: bool = True):
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"GPSA: dim={dim} is not divisible by num_heads={num_heads}")
        if local_init:
            _check_local_init_heads(num_heads)
            if not locality_strength > 0:
                raise ValueError(f"GPSA: locality_strength must be > 0 for the local init, got {locality_strength}")
        self.dim, self.num_heads, self.head_dim = int(dim), int(num_heads), dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.locality_strength = float(locality_strength)
        self.attn_drop = float(attn_drop)
        self.qk = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pos_proj = nn.Linear(3, num_heads)
        self.gating_param = nn.Parameter(np.ones(num_heads))
        self._rel = {}                                   # grid -> r_ij (1, N, N, 3), float64
        if local_init:
            self.local_init()

    def local_init(self):
        """W_val = I and v_pos^h = alpha (2 Delta_x, 2 Delta_y, -1): head h attends to offset Delta^h."""
        self.v.weight.data[...] = np.eye(self.dim)
        offsets = local_init_offsets(self.num_heads)                  # (H, 2): (Delta_x, Delta_y)
        w = np.stack([2 * offsets[:, 0], 2 * offsets[:, 1], -np.ones(self.num_heads)], axis=1)
        self.pos_proj.weight.data[...] = self.locality_strength * w    # (H, 3), channels (dx, dy, d^2)

    @property
    def gate(self) -> np.ndarray:
        """sigma(lambda_h) per head, (H,): the weight of the positional term."""
        return 1.0 / (1.0 + np.exp(-self.gating_param.data.astype(np.float64)))

    def _grid(self, N, grid):
        if grid is None:
            s = math.isqrt(N)
            if s * s != N:
                raise ValueError(f"GPSA: {N} tokens do not form a square grid of patches; pass grid=(gh, gw) "
                                 f"(the class token must not enter a GPSA layer)")
            grid = (s, s)
        grid = tuple(int(g) for g in grid)
        if grid[0] * grid[1] != N:
            raise ValueError(f"GPSA: grid={grid} has {grid[0] * grid[1]} patches but x has N={N} tokens")
        return grid

    def rel_indices(self, grid) -> np.ndarray:
        """r_ij for a (gh, gw) grid, cached: (1, N, N, 3)."""
        grid = tuple(grid)
        if grid not in self._rel:
            self._rel[grid] = rel_indices(grid)
        return self._rel[grid]

    def positional_scores(self, grid) -> Tensor:
        """softmax_j(v_pos^hT r_ij): (1, H, N, N); the same for every image."""
        r = Tensor(self.rel_indices(grid).astype(self.pos_proj.weight.dtype, copy=False))
        logits = self.pos_proj(r)                            # (1, N, N, 3) -> (1, N, N, H)
        return F.softmax(logits.permute(0, 3, 1, 2), dim=-1)    # (1, H, N, N)

    def get_attention(self, x, grid=None):
        """The three attention maps of the formula, before dropout:
        (patch_score (B, H, N, N), pos_score (1, H, N, N), A = normalize[mix] (B, H, N, N))."""
        _check_x_tokens(x, self.dim)
        B, N, C = x.shape
        H, d = self.num_heads, self.head_dim
        grid = self._grid(N, grid)
        qk = self.qk(x).reshape(B, N, 2, H, d).permute(2, 0, 3, 1, 4)   # (B, N, 2C) -> (2, B, H, N, d)
        q, k = qk[0], qk[1]                                               # (B, H, N, d) each
        patch_score = F.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)   # (B, H, N, N)
        pos_score = self.positional_scores(grid)                          # (1, H, N, N)
        g = F.sigmoid(self.gating_param).reshape(1, H, 1, 1)              # sigma(lambda_h)
        attn = (1.0 - g) * patch_score + g * pos_score                    # A^h_ij, (B, H, N, N)
        attn = attn / attn.sum(-1, keepdim=True)                          # normalize[A]
        return patch_score, pos_score, attn

    def forward(self, x, grid=None, return_attention: bool = False):
        _, _, attn = self.get_attention(x, grid)             # checks x: (B, N, C)
        B, N, C = x.shape
        a = F.dropout(attn, self.attn_drop, self.training) if self.attn_drop else attn
        v = self.v(x).reshape(B, N, self.num_heads, self.head_dim).permute(0, 2, 1, 3)   # (B, H, N, d)
        out = (a @ v).transpose(1, 2).reshape(B, N, C)       # (B, H, N, d) -> (B, N, H, d) -> (B, N, C)
        out = self.proj_drop(self.proj(out))
        return (out, attn.data) if return_attention else out

    def extra_repr(self):
        return (f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"locality_strength={self.locality_strength:g}")


def _check_x_tokens(x, dim):
    shape = tuple(x.shape) if hasattr(x, "shape") else None
    if shape is None or len(shape) != 3 or shape[2] != dim:
        raise ValueError(f"GPSA: expected x of shape (B, N, {dim}), got {shape}")


class Block(nn.Module):
    """Pre-norm block with GPSA (``use_gpsa=True``) or the shared ``nn.Attention`` (MHSA):

        x = x + DropPath(attn(LN(x)));   x = x + DropPath(MLP(LN(x)))
    """

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, proj_drop=0.0, attn_drop=0.0,
                 drop_path=0.0, use_gpsa=True, locality_strength=1.0, local_init=True):
        super().__init__()
        self.use_gpsa = bool(use_gpsa)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if self.use_gpsa:
            self.attn = GPSA(dim, num_heads, qkv_bias, attn_drop, proj_drop, locality_strength, local_init)
        else:
            self.attn = nn.Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x, grid=None, return_attention=False):
        kw = {"grid": grid} if self.use_gpsa else {}
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True, **kw)
        else:
            y, attn = self.attn(self.norm1(x), **kw), None
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, attn) if return_attention else x


class ConViT(nn.Module):
    """ConViT classifier: (B, C, H, W) -> logits (B, num_classes).

    ``local_up_to_layer`` GPSA blocks see only the patch tokens; the class token
    joins before the first MHSA block. ``forward(x, return_attention=True)``
    returns ``(logits, [A_0, ..., A_{depth-1}])``: (B, H, N, N) for GPSA blocks,
    (B, H, 1+N, 1+N) for MHSA blocks. ``gates()`` gives sigma(lambda) per GPSA
    layer and head; ``nonlocality(x)`` the paper's per-head diagnostic for every layer.
    """

    num_prefix_tokens = 1

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=192, depth=12,
                 num_heads=4, mlp_ratio=4.0, qkv_bias=False, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.0, local_up_to_layer=10, locality_strength=1.0, local_init=True):
        super().__init__()
        if num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if not 0 <= local_up_to_layer <= depth:
            raise ValueError(f"local_up_to_layer={local_up_to_layer} must be between 0 and depth={depth} "
                             f"(it is the number of GPSA blocks at the start)")
        if local_up_to_layer == depth:
            raise ValueError(f"local_up_to_layer={local_up_to_layer} equals depth={depth}: the class token "
                             f"joins before the first MHSA block, so at least one is needed; use at most "
                             f"depth-1={depth - 1}")
        for name, v in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate),
                        ("drop_path_rate", drop_path_rate)):
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if local_init and local_up_to_layer > 0:
            _check_local_init_heads(num_heads)
        self.num_classes, self.embed_dim, self.num_heads = num_classes, embed_dim, num_heads
        self.local_up_to_layer = int(local_up_to_layer)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(np.zeros((1, 1, embed_dim)))
        self.pos_embed = nn.Parameter(np.zeros((1, n, embed_dim)))     # patches only: no class-token slot
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = np.linspace(0, drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=float(dpr[i]), use_gpsa=i < local_up_to_layer,
                  locality_strength=locality_strength, local_init=local_init) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights(local_init)

    def init_weights(self, local_init=True):
        """The reference's init: trunc-normal(0.02) class token, position embedding
        and Linear weights (zero biases), then GPSA's local init on top; the patch
        convolution keeps PyTorch's default."""
        init.trunc_normal_(self.cls_token, std=0.02)
        init.trunc_normal_(self.pos_embed, std=0.02)
        init.transformer_linears_(self)                  # Linear trunc-normal(0.02), zero bias; LN 1/0
        if local_init:
            for m in self.modules():
                if isinstance(m, GPSA):
                    m.local_init()

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def gpsa_layers(self):
        return [blk.attn for blk in self.blocks if blk.use_gpsa]

    def gates(self) -> np.ndarray:
        """sigma(lambda_h) for every GPSA layer and head: (local_up_to_layer, H).
        Near 1: the head still attends by position; near 0: by content."""
        if not self.local_up_to_layer:
            return np.zeros((0, self.num_heads))
        return np.stack([a.gate for a in self.gpsa_layers()])

    def forward_features(self, x, return_attention=False):
        """(B, C, H, W) -> normalised tokens (B, 1+N, D) [, attention maps per block]."""
        p = self.patch_embed.patch_size
        grid = (x.shape[2] // p, x.shape[3] // p)
        x = self.patch_embed(x)                                         # (B, N, D)
        pos = resize_pos_embed(self.pos_embed, self.patch_embed.grid_size, grid, num_prefix_tokens=0)
        x = self.pos_drop(x + pos)
        attns = []
        for i, blk in enumerate(self.blocks):
            if i == self.local_up_to_layer:                             # the class token joins here
                cls = self.cls_token.expand(x.shape[0], -1, -1)         # (B, 1, D)
                x = F.cat([cls, x], dim=1)                              # (B, N, D) -> (B, 1+N, D)
            if return_attention:
                x, a = blk(x, grid=grid, return_attention=True)
                attns.append(a)
            else:
                x = blk(x, grid=grid)
        x = self.norm(x)
        return (x, attns) if return_attention else x

    def forward_head(self, x):
        return self.head(x[:, 0])

    def forward(self, x, return_attention=False):
        if return_attention:
            x, attns = self.forward_features(x, return_attention=True)
            return self.forward_head(x), attns
        return self.forward_head(self.forward_features(x))

    def nonlocality(self, x) -> np.ndarray:
        """Per block and head, the attention-weighted query-key distance in patches
        (:func:`nonlocality`), averaged over the images x: (depth, H). In MHSA
        blocks only patch queries and patch keys count (class-token row and column dropped)."""
        p = self.patch_embed.patch_size
        grid = (x.shape[2] // p, x.shape[3] // p)
        with no_grad():
            _, attns = self.forward(x, return_attention=True)
        return np.stack([nonlocality(a if i < self.local_up_to_layer else a[:, :, 1:, 1:], grid)
                         for i, a in enumerate(attns)])


@register_model
def convit_fmnist(**kw):
    """ConViT for 28x28x1 Fashion-MNIST, vit_fmnist's shape (patch 4, 49 patches, dim 64,
    6 blocks, 4 heads, MLP ratio 2) with the first 4 blocks GPSA and the last 2 MHSA,
    as ConViT-Ti ends with two MHSA blocks (204,826 parameters)."""
    cfg = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=6,
               num_heads=4, mlp_ratio=2.0, local_up_to_layer=4, locality_strength=1.0)
    cfg.update(kw)
    return ConViT(**cfg)


@register_model
def convit_tiny(**kw):
    """ConViT-Ti (timm ``convit_tiny``): dim 192 (48 per head x 4 heads), depth 12, GPSA in
    blocks 0-9, alpha = 1, no qkv bias; 5,710,512 parameters. (The paper trains it with
    drop-path 0.1; pass drop_path_rate=0.1.)"""
    cfg = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=192, depth=12,
               num_heads=4, mlp_ratio=4.0, local_up_to_layer=10, locality_strength=1.0)
    cfg.update(kw)
    return ConViT(**cfg)
