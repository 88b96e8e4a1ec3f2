"""Tokens-to-Token ViT (T2T-ViT).

Yuan, Chen, Wang, Yu, Shi, Jiang, Tay, Feng and Yan, "Tokens-to-Token ViT: Training
Vision Transformers from Scratch on ImageNet", ICCV 2021. https://arxiv.org/abs/2101.11986
Official code: https://github.com/yitu-opensource/T2T-ViT (``models/t2t_vit.py``,
``token_transformer.py``, ``token_performer.py``, ``transformer_block.py``).
minivit follows the official module tree and names (``tokens_to_token.attention1.attn.qkv``,
``tokens_to_token.project``, ``blocks.i.attn.qkv`` ...), init and LayerNorm eps (1e-5
everywhere), so an official state dict loads 1:1.

ViT cuts the image into non-overlapping patches, so an edge or a texture that straddles a
patch border is split between two tokens that only meet again in attention. T2T-ViT builds
its tokens step by step: each step lets the tokens talk to each other, lays them back out
as an image, and cuts that image again into *overlapping* windows, so neighbouring tokens
share pixels and every new token summarises a growing neighbourhood.

The T2T process (course section 8), for tokens T_i (l_i, c_i) on an h_i x w_i grid:

(1) Re-structurization
    T'_i = MLP(MSA(T_i))              a transformer layer: (l_i, c_i) -> (l_i, d_t)
    I_i  = Reshape(T'_i)              (l_i, d_t) -> an image (d_t, h_i, w_i)
(2) Soft split: cut I_i into k x k windows with padding p and stride k - s (so
    s is the *overlap* of neighbouring windows), and flatten each window into one token:
    T_{i+1} = SS(I_i)                 (l_{i+1}, d_t k^2)
    l_o = floor((h + 2p - k)/(k - s) + 1) x floor((w + 2p - k)/(k - s) + 1)
(3) The T2T module: T_1 = SS(image), then for i = 1 .. n-1
    T'_i = MLP(MSA(T_i)),  I_i = Reshape(T'_i),  T_{i+1} = SS(I_i)
    and a linear projection of T_n to the backbone width D. The backbone is ViT's:
    z_0 = [x_class ; T_n W_p + b_p] + E_pos,  L pre-norm blocks, LN, head(z_L^0).

Which stride the course's length formula means. The formula divides by (k - s), so its s
is the overlap between two neighbouring windows (the paper's notation), and the window
moves by the stride k - s. PyTorch's ``nn.Unfold`` and minivit's ``F.unfold`` take the
stride itself, call it S, and give

    l = floor((h + 2p - k)/S + 1)             (the real unfold length)

The two agree when s = k - S, which is the right reading (``soft_split_length`` and
``soft_split_length_course`` compute both; tests compare both with ``F.unfold``). Putting
the stride S into the course formula instead is wrong: for the first split at 224 px,
(k, S, p) = (7, 4, 2), it gives floor(221/3 + 1) = 74 instead of the real 56 (the overlap
is s = 7 - 4 = 3, and floor(221/4 + 1) = 56), and for a non-overlapping patchify (k = S)
it divides by zero.

The token transformer of (1) (official ``Token_transformer``; the course's MSA and MLP):
one head, q, k, v = LN(T) W_qkv of width d_t (W_qkv: (c, 3 d_t), no bias), and

    MSA(T) = v + softmax((q c^-1/2) k^T) v W_proj + b_proj
    T'     = MSA(T) + MLP(LN(MSA(T)))        MLP: d_t -> d_t -> d_t (mlp_ratio 1), GELU

Two details differ from a standard block, both from the reference code: the scale is the
*input* width c (147 = 3 * 7 * 7 or 576 = 64 * 3 * 3 at 224 px), not d_t; and since c and
d_t differ there is no residual from the input: the skip connection goes through v.

Position embedding: a fixed sinusoid table with sin on even and cos on odd channels,
interleaved, row 0 for the class token: E_pos[p, j] = sin or cos(p / 10000^(2 floor(j/2) / D)).
It is a persistent buffer (in ``state_dict()``, not in ``num_params()``).

Symbols -> variables: T_i -> the input of ``tokens_to_token.attention{i}``; MSA, MLP of (1)
-> ``attention{i}.attn`` (``TokenAttention``), ``attention{i}.mlp`` (``nn.Mlp``); LN ->
``attention{i}.norm1``/``norm2``; d_t -> ``token_dim``; Reshape -> ``restructure``;
SS -> ``soft_split{i}`` (``SoftSplit``, i.e. ``F.unfold``); k, stride, p -> ``kernel_sizes``,
``strides``, ``paddings`` (one per split); W_p -> ``tokens_to_token.project``; x_class ->
``cls_token``; E_pos -> ``pos_embed`` (buffer); the backbone blocks -> ``blocks`` (ViT's
``Block``, qkv without bias, LN eps 1e-5); D -> ``embed_dim``.

What the reference code does differently from the paper:

- The official configs ``t2t_vit_7/10/12/14/19/24`` use a *Performer* (linear attention with
  random features) in the T2T module; the transformer version above, which is what the course's
  equations describe, is the official ``t2t_vit_t_*``. minivit's ``t2t_vit_7`` is the
  T2T-ViT-7 backbone with the transformer T2T module (4,255,310 parameters); the official
  performer version is ``t2t_vit_7_performer`` (4,255,694; ``TokenPerformer`` below).
- The official T2T module hard-codes three soft splits (7, 4, 2), (3, 2, 1), (3, 2, 1)
  (kernel, stride, padding) and a square grid (``sqrt(new_HW)``); minivit takes the
  three lists as arguments (``t2t_vit_fmnist`` needs other splits for 28x28 images) and
  follows the grid size through every split, so a non-square grid works too.
- ``pretrained=True`` in the official configs sets qk_scale = D^-1/2 for the backbone;
  the released checkpoints were trained with the default hd^-1/2, which minivit uses.

Errors. A soft split whose windows do not fit (zero output size), or that leaves a pixel of
the *image* (not just of its zero padding) in no window is a clear ``ValueError``: the last
window stopping early (a fractional (h + 2p - k)/S that ``floor`` rounds down), or gaps
between windows when S > k. At 224 px the official first split leaves one row uncovered,
(224 + 4 - 7) mod 4 = 1, but that row is padding, so it is allowed.
"""
from __future__ import annotations

import math

import numpy as np

from minivit import functional as F
from minivit import init, nn
from minivit.models import register_model
from minivit.models.vit import Block

__all__ = ["soft_split_length", "soft_split_length_course", "get_sinusoid_encoding", "restructure",
           "SoftSplit", "TokenAttention", "TokenTransformer", "TokenPerformer", "T2TModule", "T2TViT"]


# ---------------------------------------------------------------------------- sizes
def _int_arg(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def _split_size(h, k, stride, p, what):
    """Output size of one axis, floor((h + 2p - k)/stride) + 1, checking that every pixel
    of the input (padding aside) lies in at least one window."""
    if h + 2 * p < k:
        raise ValueError(f"{what}: kernel_size={k} is larger than the padded input "
                         f"{h} + 2*{p} = {h + 2 * p}, so the soft split has no output (zero tokens)")
    n = (h + 2 * p - k) // stride + 1
    covered = np.zeros(h + 2 * p, bool)     # padded positions that some window reads
    for i in range(n):
        covered[i * stride:i * stride + k] = True
    missed = np.flatnonzero(~covered[p:p + h])                 # input pixels no window reads
    if missed.size:
        end = (n - 1) * stride + k - p                         # first input pixel after the last window
        if missed[-1] >= end:
            raise ValueError(f"{what}: with kernel_size={k}, stride={stride}, padding={p} the windows "
                             f"stop {h - end} pixel(s) before the end of the {h}-pixel input "
                             f"((h + 2p - k)/stride = {h + 2 * p - k}/{stride} is fractional and floor would "
                             f"drop real pixels); change the padding or the stride")
        raise ValueError(f"{what}: stride={stride} is larger than kernel_size={k}, so the gaps between "
                         f"the windows skip {missed.size} of the {h} input pixels; a soft split needs "
                         f"stride <= kernel_size")
    return n


def soft_split_length(h, w, kernel_size, stride, padding):
    """The real number of tokens of a soft split (``F.unfold`` / ``nn.Unfold``), stride S:

        (floor((h + 2p - k)/S) + 1) * (floor((w + 2p - k)/S) + 1)

    Returns ``(h_o, w_o)``; the length is h_o * w_o. Raises ``ValueError`` for a zero output
    size or windows that leave image pixels uncovered (see the module docstring).
    """
    k = _int_arg("kernel_size", kernel_size, 1)
    S = _int_arg("stride", stride, 1)
    p = _int_arg("padding", padding, 0)
    h, w = _int_arg("h", h, 1), _int_arg("w", w, 1)
    return (_split_size(h, k, S, p, "soft split (height)"), _split_size(w, k, S, p, "soft split (width)"))


def soft_split_length_course(h, w, k, s, p):
    """The course's length formula, with s the **overlap** of neighbouring windows:

        l_o = floor((h + 2p - k)/(k - s) + 1) * floor((w + 2p - k)/(k - s) + 1)

    The window moves by k - s, so this equals ``soft_split_length(h, w, k, stride=k - s, p)``
    (tests check it against ``F.unfold``). Passing the stride as s is the common misreading
    (see the module docstring). Returns the integer l_o.
    """
    k, s, p = _int_arg("k", k, 1), _int_arg("s (overlap)", s, 0), _int_arg("p", p, 0)
    if s >= k:
        raise ValueError(f"the overlap s={s} must be smaller than the kernel k={k}: the window moves by k - s")
    step = k - s
    return ((h + 2 * p - k) // step + 1) * ((w + 2 * p - k) // step + 1)


def get_sinusoid_encoding(n_position, d_hid):
    """The fixed position table (1, n_position, d_hid), float32 (official ``get_sinusoid_encoding``):

        angle[p, j] = p / 10000^(2 floor(j/2) / d_hid),  sin on even j, cos on odd j (interleaved).
    """
    pos = np.arange(n_position, dtype=np.float64)[:, None]                  # (n, 1)
    j = np.arange(d_hid)
    angle = pos / np.power(10000.0, 2 * (j // 2) / d_hid)                   # (n, d)
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))              # sin(2i), cos(2i + 1)
    return table[None].astype(np.float32)                                    # (1, n, d)


def restructure(tokens, h, w):
    """Reshape of the T2T process: tokens T' (B, h*w, C) -> image I (B, C, h, w).

    Token t sits at row t // w, column t % w (row-major, as ``F.unfold`` orders its windows).
    """
    B, N, C = tokens.shape
    if N != h * w:
        raise ValueError(f"restructure: {N} tokens do not fill a {h}x{w} feature map ({h * w} positions); "
                         f"the tokens must come from a soft split with that output grid")
    return tokens.transpose(1, 2).reshape(B, C, h, w)                       # (B, N, C) -> (B, C, h, w)


# ---------------------------------------------------------------------------- soft split
class SoftSplit(nn.Module):
    """SS: overlapping k x k windows (stride S, zero padding p), each flattened into one token.

    I (B, C, h, w) -> T (B, h_o * w_o, C k^2) with ``F.unfold`` then a transpose. Inside a
    token the values are channel-major, ``c*k*k + ki*k + kj`` (``nn.Unfold``'s order);
    tokens run row-major over the h_o x w_o output grid. Neighbouring windows share
    k - S rows/columns: the overlap s of the course's formula.
    """

    def __init__(self, kernel_size, stride, padding, index=0):
        super().__init__()
        self.kernel_size = _int_arg(f"kernel_sizes[{index}]", kernel_size, 1)
        self.stride = _int_arg(f"strides[{index}]", stride, 1)
        self.padding = _int_arg(f"paddings[{index}]", padding, 0)
        self.index = index

    def output_grid(self, h, w):
        """(h_o, w_o) for an (h, w) input, with a clear error for a bad geometry."""
        k, S, p = self.kernel_size, self.stride, self.padding
        what = f"soft split {self.index} (kernel {k}, stride {S}, padding {p})"
        return _split_size(h, k, S, p, what + " on the height"), _split_size(w, k, S, p, what + " on the width")

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"soft split {self.index}: expected an image (B, C, H, W), got {tuple(x.shape)}")
        self.output_grid(*x.shape[2:])
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (B, C k^2, L)
        return cols.transpose(1, 2)                                                       # (B, L, C k^2)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


# ---------------------------------------------------------------------------- re-structurization
class TokenAttention(nn.Module):
    """Single-head attention of the T2T token transformer (official ``token_transformer.Attention``).

    x (B, N, dim) -> (B, N, out_dim):

        q, k, v = x W_qkv^T           W_qkv: (3 out_dim, dim), no bias; [q ; k ; v] rows
        out     = v + proj(softmax((q dim^-1/2) k^T) v)

    The scale uses the *input* width ``dim`` (the reference's head_dim = dim // 1 head),
    and the skip connection goes through v because ``dim`` != ``out_dim``.
    ``return_attention=True`` also returns the weights (B, N, N).
    """

    def __init__(self, dim, out_dim, qkv_bias=False, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim, self.out_dim = int(dim), int(out_dim)
        self.scale = self.dim ** -0.5
        self.attn_drop = float(attn_drop)
        self.qkv = nn.Linear(dim, 3 * out_dim, bias=qkv_bias)
        self.proj = nn.Linear(out_dim, out_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, return_attention=False):
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise ValueError(f"TokenAttention: expected tokens (B, N, {self.dim}), got {tuple(x.shape)}")
        q, k, v = self.qkv(x).split(self.out_dim, dim=-1)                   # each (B, N, out_dim)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale,
            return_weights=return_attention)                                # softmax((q c^-1/2) k^T) v
        if return_attention:
            out, attn = out                                                 # attn: ndarray (B, N, N)
        x = v + self.proj_drop(self.proj(out))                              # skip connection through v
        return (x, attn) if return_attention else x

    def extra_repr(self):
        return f"dim={self.dim}, out_dim={self.out_dim}, scale=dim^-0.5={self.scale:.4g}"


class TokenTransformer(nn.Module):
    """T' = MLP(MSA(T)): the re-structurization step (official ``Token_transformer``).

    T (B, N, dim) -> T' (B, N, out_dim):  y = attn(norm1(T));  T' = y + DropPath(mlp(norm2(y))).
    (The official argument names are ``dim`` for the input and ``in_dim`` for ``out_dim``.)
    """

    def __init__(self, dim, out_dim, mlp_ratio=1.0, qkv_bias=False, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.dim, self.out_dim = int(dim), int(out_dim)
        self.norm1 = nn.LayerNorm(dim)                                      # eps 1e-5
        self.attn = TokenAttention(dim, out_dim, qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = nn.Mlp(out_dim, int(out_dim * mlp_ratio), out_dim, drop=drop)

    def forward(self, x, return_attention=False):
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise ValueError(f"TokenTransformer: expected tokens (B, N, {self.dim}), got {tuple(x.shape)}")
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True)
        else:
            y, attn = self.attn(self.norm1(x)), None
        y = y + self.drop_path(self.mlp(self.norm2(y)))                     # MLP with a residual
        return (y, attn) if return_attention else y


class TokenPerformer(nn.Module):
    """The official ``Token_performer``: the same T' = MLP(MSA(T)) with the softmax kernel
    replaced by positive random features (Performer), linear in the number of tokens.

    T (B, N, dim) -> (B, N, out_dim), with m = int(out_dim * kernel_ratio) features and a fixed
    w (m, out_dim) (orthogonal rows times sqrt(m); a persistent buffer, never trained):

        k, q, v = split(LN(T) W_kqv + b)                 note the order: k, q, v
        phi(z)  = exp(z w^T - |z|^2 / 2) / sqrt(m)       (no 1/sqrt(d) anywhere)
        y       = phi(q) (v^T phi(k))^T / (phi(q) sum_t phi(k_t) + 1e-8)
        y       = v + Dropout(proj(y));   T' = y + mlp(LN(y))

    ``mlp`` is Linear -> GELU -> Linear -> Dropout (keys ``mlp.0``, ``mlp.2``); both dropouts
    default to 0.1 as in the reference. phi(q) phi(k)^T estimates exp(q k^T) without scaling.
    """

    def __init__(self, dim, out_dim, kernel_ratio=0.5, dp1=0.1, dp2=0.1):
        super().__init__()
        self.emb = int(out_dim)
        self.kqv = nn.Linear(dim, 3 * self.emb)
        self.dp = nn.Dropout(dp1)
        self.proj = nn.Linear(self.emb, self.emb)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(self.emb)
        self.epsilon = 1e-8
        self.mlp = nn.Sequential(nn.Linear(self.emb, self.emb), nn.GELU(), nn.Linear(self.emb, self.emb),
                                 nn.Dropout(dp2))
        self.m = int(self.emb * kernel_ratio)
        if self.m < 1:
            raise ValueError(f"TokenPerformer: kernel_ratio={kernel_ratio} leaves no random feature "
                             f"(m = int({self.emb} * {kernel_ratio}) = 0)")
        self.register_buffer("w", self.orthogonal_features(self.m, self.emb) * math.sqrt(self.m))

    @staticmethod
    def orthogonal_features(m, d):
        """(m, d) with orthonormal rows (m <= d) or columns, like ``torch.nn.init.orthogonal_``."""
        a = init.get_rng().standard_normal((max(m, d), min(m, d)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))                                         # a unique, uniform Q
        return (q.T if m < d else q).astype(np.float32)

    def prm_exp(self, x):
        """phi(x) = exp(x w^T - |x|^2 / 2) / sqrt(m): (B, N, emb) -> (B, N, m)."""
        xd = (x * x).sum(-1, keepdim=True) * 0.5                            # (B, N, 1)
        wtx = x @ self.w.T.astype(x.dtype)                                  # (B, N, m)
        return (wtx - xd).exp() * (1.0 / math.sqrt(self.m))

    def single_attn(self, x):
        k, q, v = self.kqv(x).split(self.emb, dim=-1)                       # each (B, N, emb)
        kp, qp = self.prm_exp(k), self.prm_exp(q)                           # (B, N, m)
        D = (qp * kp.sum(1, keepdim=True)).sum(-1, keepdim=True)            # (B, N, 1)
        kptv = v.transpose(1, 2) @ kp                                       # (B, emb, m)
        y = (qp @ kptv.transpose(1, 2)) / (D + self.epsilon)                # (B, N, emb)
        return v + self.dp(self.proj(y))                                    # skip through v

    def forward(self, x):
        if x.ndim != 3 or x.shape[2] != self.norm1.weight.shape[0]:
            raise ValueError(f"TokenPerformer: expected tokens (B, N, {self.norm1.weight.shape[0]}), "
                             f"got {tuple(x.shape)}")
        x = self.single_attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# ---------------------------------------------------------------------------- the T2T module
class T2TModule(nn.Module):
    """Tokens-to-token: T_1 = SS_0(image); T'_i = MLP(MSA(T_i)), I_i = Reshape(T'_i),
    T_{i+1} = SS_i(I_i) for i = 1 .. n-1; then ``project`` (Linear) to the backbone width.

    ``kernel_sizes``, ``strides``, ``paddings`` hold one value per soft split (n of them;
    the official (7, 3, 3), (4, 2, 2), (2, 1, 1)); there are n - 1 token transformers
    ``attention1 .. attention{n-1}`` of width ``token_dim``. ``grids[i]`` is the token grid
    after split i.

    ``forward(x, return_steps=False)``: (B, C, H, W) -> (B, l_n, embed_dim); with
    ``return_steps=True`` also a list with one dict per split: ``T`` (the split's tokens,
    Tensor), ``grid`` (h, w), and for the re-structurized ones ``T_prime``, ``I`` (Tensors)
    and ``attn`` (ndarray (B, N, N), transformer T2T only).
    """

    def __init__(self, img_size=224, tokens_type="transformer", in_chans=3, embed_dim=768, token_dim=64,
                 kernel_sizes=(7, 3, 3), strides=(4, 2, 2), paddings=(2, 1, 1), drop=0.0):
        super().__init__()
        if tokens_type not in ("transformer", "performer"):
            raise ValueError(f"tokens_type must be 'transformer' or 'performer', got {tokens_type!r}")
        n = len(kernel_sizes)
        if n < 1 or len(strides) != n or len(paddings) != n:
            raise ValueError(f"kernel_sizes, strides and paddings need one value per soft split (at least one); "
                             f"got {len(kernel_sizes)}, {len(strides)} and {len(paddings)} values")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size, self.in_chans, self.tokens_type = img_size, int(in_chans), tokens_type
        self.num_splits = n
        grid, self.grids = img_size, []
        for i in range(n):
            ss = SoftSplit(kernel_sizes[i], strides[i], paddings[i], index=i)
            setattr(self, f"soft_split{i}", ss)
            grid = ss.output_grid(*grid)
            self.grids.append(grid)
        self.num_patches = grid[0] * grid[1]
        for i in range(1, n):                       # attention_i re-structures the tokens of split i-1
            dim = (in_chans if i == 1 else token_dim) * kernel_sizes[i - 1] ** 2
            if tokens_type == "transformer":
                att = TokenTransformer(dim, token_dim, mlp_ratio=1.0, drop=drop)
            else:
                att = TokenPerformer(dim, token_dim, kernel_ratio=0.5)
            setattr(self, f"attention{i}", att)
        last_dim = (in_chans if n == 1 else token_dim) * kernel_sizes[-1] ** 2
        self.project = nn.Linear(last_dim, embed_dim)

    def forward(self, x, return_steps=False):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x has shape {tuple(x.shape)} but the T2T module expects (B, {self.in_chans}, H, W)")
        steps = []
        h, w = x.shape[2:]
        h, w = self.soft_split0.output_grid(h, w)
        t = self.soft_split0(x)                                     # T_1: (B, l_1, C k_0^2)
        for i in range(1, self.num_splits):
            step = {"T": t, "grid": (h, w)}
            att = getattr(self, f"attention{i}")
            if return_steps and self.tokens_type == "transformer":
                t, step["attn"] = att(t, return_attention=True)     # T'_i: (B, l_i, d_t)
            else:
                t = att(t)
            img = restructure(t, h, w)                              # I_i: (B, d_t, h_i, w_i)
            step.update(T_prime=t, I=img)
            steps.append(step)
            ss = getattr(self, f"soft_split{i}")
            h, w = ss.output_grid(h, w)
            t = ss(img)                                             # T_{i+1}: (B, l_{i+1}, d_t k_i^2)
        steps.append({"T": t, "grid": (h, w)})
        out = self.project(t)                                       # (B, l_n, D)
        return (out, steps) if return_steps else out


# ---------------------------------------------------------------------------- the classifier
class T2TViT(nn.Module):
    """T2T-ViT classifier: the T2T module, class token, fixed sinusoid position table,
    ``depth`` ViT blocks (qkv without bias, LayerNorm eps 1e-5), final LN and a linear head.

    ``forward(x, return_attention=False)``: (B, C, H, W) -> logits (B, num_classes); with
    ``return_attention=True``, ``(logits, [attn_1 .. attn_L])`` of the backbone blocks, each
    (B, heads, 1 + l_n, 1 + l_n). The image must have the configured ``img_size``: the position
    table is fixed to that many tokens. ``tokens_to_token(x, return_steps=True)`` gives the
    intermediate T_i, T'_i and I_i.
    """

    def __init__(self, img_size=224, tokens_type="transformer", in_chans=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=False, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.0, token_dim=64, kernel_sizes=(7, 3, 3), strides=(4, 2, 2), paddings=(2, 1, 1)):
        super().__init__()
        if num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        for name, v in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate),
                        ("drop_path_rate", drop_path_rate)):
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        self.num_classes, self.embed_dim = num_classes, embed_dim
        self.tokens_to_token = T2TModule(img_size, tokens_type, in_chans, embed_dim, token_dim,
                                         kernel_sizes, strides, paddings)
        self.img_size, self.in_chans = self.tokens_to_token.img_size, in_chans
        n = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(np.zeros((1, 1, embed_dim), np.float32))
        self.register_buffer("pos_embed", get_sinusoid_encoding(n + 1, embed_dim))   # fixed, (1, 1 + n, D)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = np.linspace(0, drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=float(dpr[i]), norm_layer=nn.LayerNorm) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self):
        """Official init: trunc-normal(0.02) class token and Linear weights (zero biases),
        LayerNorm 1/0; the performer's ``w`` keeps its orthogonal draw."""
        init.trunc_normal_(self.cls_token, std=0.02)
        init.transformer_linears_(self)                  # Linear trunc-normal(0.02), zero bias; LN 1/0

    def no_weight_decay(self):
        """Parameter names AdamW should not decay (the official list)."""
        return {"cls_token"}

    def forward_features(self, x, return_attention=False):
        """(B, C, H, W) -> normalised tokens (B, 1 + l_n, D) [, backbone attention maps]."""
        if x.ndim == 4 and tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"x is {x.shape[2]}x{x.shape[3]} but this T2T-ViT was built for "
                             f"img_size={self.img_size[0]}x{self.img_size[1]}: its fixed sinusoid table has "
                             f"{self.pos_embed.shape[1]} rows (class token + {self.tokens_to_token.num_patches} "
                             f"tokens); create the model with img_size={tuple(x.shape[2:])}")
        x = self.tokens_to_token(x)                                   # (B, l_n, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)               # (B, 1, D)
        x = F.cat([cls, x], dim=1)                                    # (B, 1 + l_n, D)
        x = self.pos_drop(x + self.pos_embed)
        x, attns = nn.run_blocks(self.blocks, x, return_attention)
        x = self.norm(x)
        return (x, attns) if return_attention else x

    def forward(self, x, return_attention=False):
        if return_attention:
            x, attns = self.forward_features(x, return_attention=True)
            return self.head(x[:, 0]), attns
        return self.head(self.forward_features(x)[:, 0])


# ---------------------------------------------------------------------------- configs
@register_model
def t2t_vit_fmnist(**kw):
    """T2T-ViT for 28x28x1 Fashion-MNIST: soft splits (kernel, stride, padding) (5, 2, 2),
    (3, 2, 1), (3, 1, 1) give grids 14x14, 7x7, 7x7, so the backbone sees 49 tokens like
    ``vit_fmnist``; token_dim 32; the backbone of ``vit_fmnist`` (D 64, depth 6, 4 heads,
    MLP ratio 2) with T2T-ViT's conventions (qkv without bias, eps 1e-5, fixed sinusoids)."""
    cfg = dict(img_size=28, tokens_type="transformer", in_chans=1, num_classes=10, embed_dim=64, depth=6,
               num_heads=4, mlp_ratio=2.0, token_dim=32, kernel_sizes=(5, 3, 3), strides=(2, 2, 1),
               paddings=(2, 1, 1))
    cfg.update(kw)
    return T2TViT(**cfg)


@register_model
def t2t_vit_7(**kw):
    """T2T-ViT-7's backbone (D 256, depth 7, 4 heads, MLP ratio 2) with the transformer T2T
    module (the course's equations; official ``T2T_ViT(tokens_type='transformer', ...)``):
    4,255,310 parameters."""
    cfg = dict(img_size=224, tokens_type="transformer", in_chans=3, num_classes=1000, embed_dim=256, depth=7,
               num_heads=4, mlp_ratio=2.0, token_dim=64)
    cfg.update(kw)
    return T2TViT(**cfg)


@register_model
def t2t_vit_7_performer(**kw):
    """The official ``t2t_vit_7``: T2T-ViT-7 with the Performer T2T module, 4,255,694 parameters
    (the random features ``w`` are a buffer, as the sinusoid table)."""
    cfg = dict(img_size=224, tokens_type="performer", in_chans=3, num_classes=1000, embed_dim=256, depth=7,
               num_heads=4, mlp_ratio=2.0, token_dim=64)
    cfg.update(kw)
    return T2TViT(**cfg)
