"""Visual Transformers (VT): token-based image representation and processing.

Wu, Xu, Dai, Wan, Zhang, Yan, Tomizuka, Gonzalez, Keutzer and Vajda, "Visual
Transformers: Token-based Image Representation and Processing for Computer
Vision", 2020. https://arxiv.org/abs/2006.03677
Official code: none was published; the paper's appendix gives PyTorch
pseudo-code. minivit implements the main-text equations (PAPERS.md section 3).

A convolution treats every pixel alike and spends most of its work on pixels
that carry little information. VT summarises a feature map X (HW pixels, C
channels) by a handful of L visual tokens, each a weighted average of the
pixels of one "semantic group", lets a transformer relate the tokens, and
writes the result back into the pixels. The equations (course section 3),
with X (HW, C) a flattened feature map and T (L, C) the tokens:

(1) Filter-based tokenizer (the first VT module):

    A = softmax_HW(X W_A / sqrt(C))           (HW, L), W_A: (C, L)
    T = A^T X                                 (L, C)

    softmax_HW normalises each token's column over the pixels, so column l
    of A is a weighting of the HW pixels that sums to 1, and token l is the
    weighted average of the pixels of group l.

(2) Recurrent tokenizer (later modules): the grouping depends on the
    previous module's tokens T_in (L, C):

    W_R = T_in W_{T->R}                       (L, C), W_{T->R}: (C, C)
    T   = softmax_HW(X W_R^T / sqrt(C))^T X   (L, C)

    The course writes X W_R, reading W_R as a (C, L) matrix; with T_in stored
    as (L, C) rows, the same product is X W_R^T.

(3) Token transformer (main text: no LayerNorm, no value projection):

    T'_out = T_in + softmax_L((T_in K)(T_in Q)^T / sqrt(C/2)) T_in      K, Q: (C, C/2)
    T_out  = T'_out + ReLU(T'_out F_1) F_2                                F_1, F_2: (C, C)

(4) Projector: fuse the tokens back into the pixels,

    X_out = X_in + softmax_L((X_in W_Q)(T W_K)^T / sqrt(C)) T            W_Q: (C, C), W_K: (C, C)

    softmax_L normalises each pixel's row over the L tokens.

One VT module is (1) or (2), then (3), then (4). The 1/sqrt(d) inside each
softmax is minivit's choice (PAPERS.md): the main text writes none, and the
pseudo-code scales by sqrt(C), sqrt(L) and sqrt(C/h) in different places.
The tokens keep the feature map's C channels (C_T = C), which the projector's
sum X_in + (...) T needs.

Symbols -> variables: W_A -> ``FilterTokenizer.W_A``; W_{T->R} ->
``RecurrentTokenizer.W_T_R``; K, Q, F_1, F_2 -> ``TokenTransformer.K``,
``.Q``, ``.F1``, ``.F2``; W_Q, W_K -> ``Projector.W_Q``, ``.W_K``; A -> the
``"tokenizer"`` attention a module returns with ``return_attention=True``;
L -> ``num_tokens``; C -> ``dim``. Every weight is stored in the orientation
of its equation (X @ W_A, not a Linear's transposed weight).

What the appendix pseudo-code does differently (a student will meet both):

- The filter tokenizer's values are a grouped 1x1 convolution of X, split
  into heads, instead of X itself; the recurrent tokenizer recomputes only
  half the tokens, keeping the other half, and computes its keys with a
  grouped 1x1 convolution.
- The transformer has a value projection and 16 heads and scales by sqrt(L);
  its feed-forward part is a single 1x1 convolution.
- The projector has value and key projections of the tokens and heads.
- A position encoder (downsampled attention maps) is concatenated to the tokens.

Observed in minivit's short runs (chapter 03): the recurrent tokens of an image
tend to collapse onto one group (all L weight maps alike), because the filters
W_R = T_in W_{T->R} inherit the large common part of the previous tokens;
nothing in the main-text equations keeps tokens apart. The appendix's
half-recomputed tokens keep some of the earlier variety.

VT-ResNet replaces the last stage of a ResNet by VT modules, as many as
that stage had blocks, and classifies from the tokens. ``vt_fmnist`` does the
same on a small conv stem (see :class:`VisualTransformer`).

Segmentation (course 3.(3)): VT-FPN replaces the convolutions of a feature
pyramid network's semantic head by VT modules: each level is tokenized, one
transformer processes the tokens of all levels together, and each level's
tokens are projected back into that level. :class:`SegmentationFPN` builds
this (``vt_seg_fmnist``) and the same network with 3x3 convolutions in place
of the VT parts (``fpn_seg_fmnist``), on the pasted-item canvases of
``minivit.data.load_fashion_mnist_segmentation``.
"""
from __future__ import annotations


import numpy as np

from minivit import functional as F
from minivit import init, nn
from minivit.models import register_model
from minivit.models.cnn import BasicBlock
from minivit.tensor import Tensor, enable_grad

__all__ = ["FilterTokenizer", "RecurrentTokenizer", "TokenTransformer", "Projector", "VTModule",
           "VisualTransformer", "SegmentationFPN", "map_to_pixels", "pixels_to_map", "count_macs"]


def _positive_int(name, v):
    if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
    return int(v)


def _check_pixels(where, X, dim):
    if X.ndim != 3 or X.shape[2] != dim:
        raise ValueError(f"{where}: expected X of shape (B, HW, {dim}) (pixels as rows, C={dim} channels), "
                         f"got {tuple(X.shape)}")


def pixels_to_map(X, H, W):
    """(B, HW, C) pixel rows -> (B, C, H, W) feature map; HW must equal H*W."""
    B, N, C = X.shape
    if N != H * W:
        raise ValueError(f"pixels_to_map: X has {N} pixel rows but the map is {H}x{W} = {H * W} pixels")
    return X.transpose(1, 2).reshape(B, C, H, W)


def map_to_pixels(x):
    """(B, C, H, W) feature map -> (B, HW, C): one row per pixel (row-major), the X of the equations."""
    return x.flatten(2).transpose(1, 2)


# ---------------------------------------------------------------- the four equations
class FilterTokenizer(nn.Module):
    """T = softmax_HW(X W_A / sqrt(C))^T X: X (B, HW, C) -> T (B, L, C).

    ``forward(X, return_attention=True)`` also returns A (B, HW, L), an
    ndarray whose columns each sum to 1 over the HW pixels.
    """

    def __init__(self, dim, num_tokens):
        super().__init__()
        self.dim, self.num_tokens = _positive_int("dim", dim), _positive_int("num_tokens", num_tokens)
        self.W_A = nn.Parameter(np.zeros((self.dim, self.num_tokens), np.float32))   # W_A: (C, L)
        self.scale = self.dim ** -0.5
        # N(0, 1/C), like a Linear layer: with the 1/sqrt(C) scale the logits start small, so every
        # token starts as a soft average over many pixels (a larger init makes each token start as a
        # few random pixels, which trained more slowly in our runs)
        init.normal_(self.W_A, std=self.dim ** -0.5)

    def forward(self, X, return_attention=False):
        _check_pixels("FilterTokenizer", X, self.dim)
        logits = (X @ self.W_A) * self.scale                  # (B, HW, C) @ (C, L) -> (B, HW, L)
        A = F.softmax(logits, dim=1)                          # softmax over the HW pixels
        T = A.transpose(1, 2) @ X                             # (B, L, HW) @ (B, HW, C) -> (B, L, C)
        return (T, A.data) if return_attention else T

    def extra_repr(self):
        return f"dim={self.dim}, num_tokens={self.num_tokens}"


class RecurrentTokenizer(nn.Module):
    """W_R = T_in W_{T->R};  T = softmax_HW(X W_R^T / sqrt(C))^T X.

    X (B, HW, C), T_in (B, L, C) -> T (B, L, C) (as many tokens as T_in).
    ``return_attention=True`` also returns A (B, HW, L), columns summing to 1.
    """

    def __init__(self, dim):
        super().__init__()
        self.dim = _positive_int("dim", dim)
        self.W_T_R = nn.Parameter(np.zeros((self.dim, self.dim), np.float32))       # W_{T->R}: (C, C)
        self.scale = self.dim ** -0.5
        init.normal_(self.W_T_R, std=self.dim ** -0.5)

    def forward(self, X, T_in, return_attention=False):
        _check_pixels("RecurrentTokenizer", X, self.dim)
        if T_in.ndim != 3 or T_in.shape[2] != self.dim or T_in.shape[0] != X.shape[0]:
            raise ValueError(f"RecurrentTokenizer: T_in must have shape (B={X.shape[0]}, L, {self.dim}) "
                             f"to match X {tuple(X.shape)}, got {tuple(T_in.shape)}")
        W_R = T_in @ self.W_T_R                               # (B, L, C) @ (C, C) -> (B, L, C)
        logits = (X @ W_R.transpose(1, 2)) * self.scale       # (B, HW, C) @ (B, C, L) -> (B, HW, L)
        A = F.softmax(logits, dim=1)                          # over the HW pixels
        T = A.transpose(1, 2) @ X                             # (B, L, C)
        return (T, A.data) if return_attention else T

    def extra_repr(self):
        return f"dim={self.dim}"


class TokenTransformer(nn.Module):
    """The paper's norm-free transformer on tokens T (B, L, C) -> (B, L, C):

    T'  = T + softmax_L((T K)(T Q)^T / sqrt(C/2)) T
    out = T' + ReLU(T' F_1) F_2

    ``return_attention=True`` also returns the (B, L, L) weights, rows summing to 1.
    """

    def __init__(self, dim):
        super().__init__()
        self.dim = _positive_int("dim", dim)
        if self.dim % 2:
            raise ValueError(f"TokenTransformer: dim={dim} must be even (K and Q map C to C/2)")
        half = self.dim // 2
        self.K = nn.Parameter(np.zeros((self.dim, half), np.float32))    # K: (C, C/2)
        self.Q = nn.Parameter(np.zeros((self.dim, half), np.float32))    # Q: (C, C/2)
        self.F1 = nn.Parameter(np.zeros((self.dim, self.dim), np.float32))
        self.F2 = nn.Parameter(np.zeros((self.dim, self.dim), np.float32))
        self.scale = half ** -0.5
        for p, std in ((self.K, self.dim ** -0.5), (self.Q, self.dim ** -0.5),
                       (self.F1, (2 / self.dim) ** 0.5), (self.F2, 0.5 * self.dim ** -0.5)):
            init.normal_(p, std=std)

    def forward(self, T, return_attention=False):
        if T.ndim != 3 or T.shape[2] != self.dim:
            raise ValueError(f"TokenTransformer: expected tokens of shape (B, L, {self.dim}), got {tuple(T.shape)}")
        logits = ((T @ self.K) @ (T @ self.Q).transpose(1, 2)) * self.scale   # (B, L, C/2) @ (B, C/2, L) -> (B, L, L)
        attn = F.softmax(logits, dim=-1)                      # over the L tokens of each row
        T = T + attn @ T                                      # T'_out
        T = T + F.relu(T @ self.F1) @ self.F2                 # T_out
        return (T, attn.data) if return_attention else T

    def extra_repr(self):
        return f"dim={self.dim}"


class Projector(nn.Module):
    """X_out = X_in + softmax_L((X_in W_Q)(T W_K)^T / sqrt(C)) T.

    X_in (B, HW, C), T (B, L, C) -> X_out (B, HW, C). ``return_attention=True``
    also returns the (B, HW, L) weights, each pixel's row summing to 1 over the tokens.
    """

    def __init__(self, dim):
        super().__init__()
        self.dim = _positive_int("dim", dim)
        self.W_Q = nn.Parameter(np.zeros((self.dim, self.dim), np.float32))   # W_Q: (C, C)
        self.W_K = nn.Parameter(np.zeros((self.dim, self.dim), np.float32))   # W_K: (C_T, C), C_T = C
        self.scale = self.dim ** -0.5
        init.normal_(self.W_Q, std=self.dim ** -0.5)
        init.normal_(self.W_K, std=self.dim ** -0.5)

    def forward(self, X, T, return_attention=False):
        _check_pixels("Projector", X, self.dim)
        if T.ndim != 3 or T.shape[2] != self.dim or T.shape[0] != X.shape[0]:
            raise ValueError(f"Projector: tokens must have shape (B={X.shape[0]}, L, {self.dim}) to match "
                             f"X {tuple(X.shape)}, got {tuple(T.shape)}")
        q = X @ self.W_Q                                      # (B, HW, C)
        k = T @ self.W_K                                      # (B, L, C)
        P = F.softmax((q @ k.transpose(1, 2)) * self.scale, dim=-1)   # (B, HW, L), over the L tokens
        X = X + P @ T                                         # (B, HW, L) @ (B, L, C) -> (B, HW, C)
        return (X, P.data) if return_attention else X

    def extra_repr(self):
        return f"dim={self.dim}"


class VTModule(nn.Module):
    """Tokenizer (filter or recurrent), token transformer, projector.

    ``forward(X, T_in=None, return_attention=False)``: X (B, HW, C); T_in
    (B, L, C), the previous module's tokens (needed by the recurrent
    tokenizer, ignored by the filter one). Returns ``(X_out, T_out)``, with
    X_out = X when ``project=False`` (a last module whose tokens go straight to
    a classifier needs no projector); with ``return_attention=True`` a third
    item, a dict of ndarrays: ``"tokenizer"`` (B, HW, L), ``"transformer"``
    (B, L, L) and ``"projector"`` (B, HW, L) (absent without a projector).
    """

    def __init__(self, dim, num_tokens=16, tokenizer="filter", project=True):
        super().__init__()
        if tokenizer not in ("filter", "recurrent"):
            raise ValueError(f"tokenizer must be 'filter' or 'recurrent', got {tokenizer!r}")
        self.dim, self.kind, self.project = _positive_int("dim", dim), tokenizer, bool(project)
        self.tokenizer = FilterTokenizer(dim, num_tokens) if tokenizer == "filter" else RecurrentTokenizer(dim)
        self.transformer = TokenTransformer(dim)
        self.projector = Projector(dim) if project else None

    def forward(self, X, T_in=None, return_attention=False):
        if self.kind == "recurrent":
            if T_in is None:
                raise ValueError("VTModule: a recurrent tokenizer needs the previous module's tokens T_in")
            T, A = self.tokenizer(X, T_in, return_attention=True)
        else:
            T, A = self.tokenizer(X, return_attention=True)
        T, attn = self.transformer(T, return_attention=True)
        maps = {"tokenizer": A, "transformer": attn}
        if self.projector is not None:
            X, P = self.projector(X, T, return_attention=True)
            maps["projector"] = P
        return (X, T, maps) if return_attention else (X, T)


# ---------------------------------------------------------------- classifier
class VisualTransformer(nn.Module):
    """VT-ResNet in miniature: a conv stem and one ResNet stage, then VT modules
    in place of the last ResNet stage, and a linear classifier on the mean token.

        x (B, 1, 28, 28) -> conv3x3-BN-ReLU (stem_width, 28x28)
          -> BasicBlock, stride 2 (dim, 14x14) -> X (B, 196, dim)
          -> VT module 1 (filter tokenizer) -> VT modules 2..depth (recurrent tokenizer)
          -> mean of the L output tokens (B, dim) -> head (B, num_classes)

    The last module has no projector: its tokens go to the classifier.
    ``forward(x, return_attention=True)`` returns ``(logits, maps)`` with one
    dict per module (see :class:`VTModule`); ``feature_map(x)`` returns the
    (B, dim, H, W) map the first VT module tokenizes.
    """

    def __init__(self, img_size=28, in_chans=1, num_classes=10, stem_width=16, dim=48, num_tokens=16,
                 depth=3):
        super().__init__()
        for name, v in (("img_size", img_size), ("in_chans", in_chans), ("num_classes", num_classes),
                        ("stem_width", stem_width), ("dim", dim), ("num_tokens", num_tokens), ("depth", depth)):
            _positive_int(name, v)
        self.img_size, self.in_chans, self.num_classes = (img_size, img_size), in_chans, num_classes
        self.dim, self.num_tokens, self.depth = dim, num_tokens, depth
        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False)   # stem
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        self.layer1 = BasicBlock(stem_width, dim, stride=2)
        self.vt = nn.ModuleList([VTModule(dim, num_tokens, "filter" if i == 0 else "recurrent",
                                          project=i < depth - 1) for i in range(depth)])
        self.norm = nn.LayerNorm(dim)                         # on the pooled token (minivit's choice)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, x):
        """(B, in_chans, H, W) -> the (B, dim, H/2, W/2) map the VT modules start from."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x has shape {tuple(x.shape)} but the model expects (B, {self.in_chans}, H, W): "
                             f"{self.in_chans} input channel{'s' if self.in_chans > 1 else ''}")
        return self.layer1(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x, return_attention=False):
        X = map_to_pixels(self.feature_map(x))                # (B, HW, dim)
        T, maps = None, []
        for module in self.vt:
            X, T, m = module(X, T, return_attention=True)
            maps.append(m)
        logits = self.head(self.norm(T.mean(dim=1)))          # mean over the L tokens, LN -> (B, num_classes)
        return (logits, maps) if return_attention else logits


# ---------------------------------------------------------------- segmentation
class SegmentationFPN(nn.Module):
    """Semantic segmentation with a feature pyramid, the FPN's 3x3 convolutions
    done either by convolutions (``mixer="conv"``) or by VT (``mixer="vt"``).

    Backbone (ResNet-style, ``widths`` = channels of levels 1..S):

        x (B, 1, 56, 56) -> conv3x3 stride 2 + BN + ReLU (stem_width, 28x28)
          -> BasicBlock (widths[0], 28x28)     = C_1, stride 2
          -> BasicBlock stride 2 (widths[1], 14x14) = C_2, stride 4
          -> BasicBlock stride 2 (widths[2], 7x7)   = C_3, stride 8 ...

    FPN top-down path (both mixers): P_S = lat_S(C_S),
    P_l = lat_l(C_l) + up2(P_{l+1}) (1x1 lateral convolutions to ``fpn_dim``
    channels, nearest x2 upsampling).

    Mixer, the part VT-FPN replaces, per level l:
      conv: M_l = conv3x3(P_l)
      vt:   T_l = tokenizer_l(P_l) (filter tokenizer, num_tokens[l] tokens);
            [T_1; ...; T_S] -> ``transformer_depth`` token transformers (all
            levels together); split back into the levels;
            M_l = projector_l(P_l, T_l)

    Semantic head (both): Y = sum_l up(ReLU(BN_l(M_l))) at level 1's size
    (bilinear), logits = up2(conv1x1(Y)) (bilinear) -> (B, num_classes, 56, 56).

    ``task = "segmentation"`` tells ``minivit.train.fit`` to train it on
    ``load_fashion_mnist_segmentation`` canvases of ``img_size`` with a
    per-pixel cross-entropy. ``forward(x, return_attention=True)`` (vt only)
    returns ``(logits, maps)``: ``maps["tokenizer"][l]`` (B, H_l W_l, L_l),
    ``maps["transformer"]`` a list of (B, sum L, sum L), ``maps["projector"][l]``
    (B, H_l W_l, L_l). ``pyramid(x)`` returns the P_l maps and ``mixer_macs()``
    the multiply-adds of the mixer alone.
    """

    task = "segmentation"

    def __init__(self, img_size=56, in_chans=1, num_classes=11, stem_width=16, widths=(16, 32, 64),
                 fpn_dim=32, mixer="vt", num_tokens=(8, 8, 8), transformer_depth=1):
        super().__init__()
        if mixer not in ("vt", "conv"):
            raise ValueError(f"mixer must be 'vt' or 'conv', got {mixer!r}")
        for name, v in (("img_size", img_size), ("in_chans", in_chans), ("num_classes", num_classes),
                        ("stem_width", stem_width), ("fpn_dim", fpn_dim)):
            _positive_int(name, v)
        widths = tuple(_positive_int(f"widths[{i}]", w) for i, w in enumerate(widths))
        S = len(widths)
        if S < 1:
            raise ValueError("widths must name at least one level")
        self.num_levels = S
        self.stride = 2 ** S                                   # stem 2, then 2 per level after the first
        if img_size % self.stride:
            raise ValueError(f"img_size={img_size} must be divisible by {self.stride} (stride 2 in the stem "
                             f"and in each of the {S - 1} later levels)")
        if mixer == "vt":
            num_tokens = tuple(num_tokens)
            if len(num_tokens) != S:
                raise ValueError(f"num_tokens has {len(num_tokens)} values but widths has {S}: "
                                 f"give one token count per level")
            num_tokens = tuple(_positive_int(f"num_tokens[{i}]", n) for i, n in enumerate(num_tokens))
            _positive_int("transformer_depth", transformer_depth)
        self.img_size, self.in_chans, self.num_classes = (img_size, img_size), in_chans, num_classes
        self.canvas_size, self.mixer, self.fpn_dim = img_size, mixer, fpn_dim
        self.widths, self.num_tokens = widths, (num_tokens if mixer == "vt" else None)

        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, stride=2, padding=1, bias=False)   # stem: 1/2
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        c = stem_width
        for i, w in enumerate(widths):
            setattr(self, f"layer{i + 1}", BasicBlock(c, w, stride=1 if i == 0 else 2))
            c = w
        self.lateral = nn.ModuleList([nn.Conv2d(w, fpn_dim, 1) for w in widths])
        if mixer == "conv":
            self.fpn_convs = nn.ModuleList([nn.Conv2d(fpn_dim, fpn_dim, 3, padding=1) for _ in widths])
        else:
            self.tokenizers = nn.ModuleList([FilterTokenizer(fpn_dim, n) for n in num_tokens])
            self.transformers = nn.ModuleList([TokenTransformer(fpn_dim) for _ in range(transformer_depth)])
            self.projectors = nn.ModuleList([Projector(fpn_dim) for _ in widths])
        self.norms = nn.ModuleList([nn.BatchNorm2d(fpn_dim) for _ in widths])
        self.classifier = nn.Conv2d(fpn_dim, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.classifier:
                init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _check_input(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x has shape {tuple(x.shape)} but the model expects (B, {self.in_chans}, H, W): "
                             f"{self.in_chans} input channel{'s' if self.in_chans > 1 else ''}")
        H, W = x.shape[2:]
        if H % self.stride or W % self.stride:
            raise ValueError(f"the input {H}x{W} must have sides divisible by {self.stride} "
                             f"({self.num_levels} pyramid levels)")

    def backbone(self, x):
        """(B, in_chans, H, W) -> [C_1, ..., C_S], C_l (B, widths[l-1], H/2^l, W/2^l)."""
        self._check_input(x)
        h = self.relu(self.bn1(self.conv1(x)))                # (B, stem_width, H/2, W/2)
        feats = []
        for i in range(self.num_levels):
            h = getattr(self, f"layer{i + 1}")(h)
            feats.append(h)
        return feats

    def pyramid(self, x):
        """The FPN maps [P_1, ..., P_S], each (B, fpn_dim, H_l, W_l), top-down with lateral connections."""
        feats = self.backbone(x)
        P = [None] * self.num_levels
        P[-1] = self.lateral[-1](feats[-1])
        for l in range(self.num_levels - 2, -1, -1):
            P[l] = self.lateral[l](feats[l]) + F.interpolate(P[l + 1], scale_factor=2, mode="nearest")
        return P

    def mix(self, P, return_attention=False):
        """The mixer on the pyramid: [P_l] -> [M_l] (same shapes) [, attention maps]."""
        if self.mixer == "conv":
            M = [conv(p) for conv, p in zip(self.fpn_convs, P)]
            return (M, None) if return_attention else M
        X = [map_to_pixels(p) for p in P]                     # (B, H_l W_l, D) per level
        toks, A = [], []
        for tok, x in zip(self.tokenizers, X):
            t, a = tok(x, return_attention=True)              # (B, L_l, D)
            toks.append(t)
            A.append(a)
        T = F.cat(toks, dim=1)                                # (B, sum L_l, D): all levels together
        attn = []
        for tf in self.transformers:
            T, a = tf(T, return_attention=True)
            attn.append(a)
        M, Pw, start = [], [], 0
        for proj, x, p, n in zip(self.projectors, X, P, self.num_tokens):
            x_out, w = proj(x, T[:, start:start + n], return_attention=True)   # level l's own tokens
            start += n
            M.append(pixels_to_map(x_out, p.shape[2], p.shape[3]))
            Pw.append(w)
        maps = {"tokenizer": A, "transformer": attn, "projector": Pw}
        return (M, maps) if return_attention else M

    def forward(self, x, return_attention=False):
        P = self.pyramid(x)
        M, maps = self.mix(P, return_attention=True)
        size = P[0].shape[2:]
        Y = None
        for l, (m, bn) in enumerate(zip(M, self.norms)):
            m = self.relu(bn(m))
            if l > 0:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            Y = m if Y is None else Y + m                     # (B, D, H_1, W_1)
        logits = self.classifier(Y)                           # (B, num_classes, H/2, W/2)
        logits = F.interpolate(logits, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
        if return_attention:
            if self.mixer != "vt":
                raise ValueError("return_attention=True needs mixer='vt' (the conv mixer has no attention)")
            return logits, maps
        return logits

    def mixer_macs(self, img_size=None):
        """Multiply-adds per image of the mixer alone (the part VT-FPN replaces), counted
        from the operations it runs on a zero pyramid of the right shapes."""
        H = W = img_size or self.img_size[0]
        P = [Tensor(np.zeros((1, self.fpn_dim, H // 2 ** (l + 1), W // 2 ** (l + 1)), np.float32))
             for l in range(self.num_levels)]
        return count_macs(lambda *p: self.mix(list(p)), *P)["total"]


# ---------------------------------------------------------------- counting multiply-adds
def count_macs(fn, *inputs):
    """Multiply-adds of the matrix products that ``fn(*inputs)`` computes, per op type.

    Runs ``fn`` once with graph recording on (the parameters require gradients,
    so every op that touches them is recorded), then walks the graph back from
    the output(s) and counts, for each node:

        matmul (..., n, k) @ (..., k, m):   out.size * k
        linear x (..., k) -> (..., m):      out.size * k
        conv2d weight (O, C/g, kh, kw):     out.size * C/g * kh * kw
        scaled_dot_product_attention q (..., N, d), k (..., M, d), v (..., M, dv):
                                            (... N) * M * (d + dv)   (q k^T, then the weights times v)

    Elementwise ops, softmax, normalisation, pooling and resizing are not
    counted (the usual convention for "FLOPs" tables, which report
    multiply-adds). ``inputs`` are used as given (arrays become Tensors).
    Returns ``{"matmul": ..., "linear": ..., "conv2d": ..., "attention": ..., "total": ...}``;
    divide by the batch size for a per-image count.
    """
    ins = [x if isinstance(x, Tensor) else Tensor(np.asarray(x)) for x in inputs]
    with enable_grad():
        out = fn(*ins)
    outs = out if isinstance(out, (list, tuple)) else [out]
    counts = {"matmul": 0, "linear": 0, "conv2d": 0, "attention": 0}
    seen, stack = set(), [o for o in outs if isinstance(o, Tensor)]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if t._op == "matmul":
            a = t._parents[0]
            counts["matmul"] += t.data.size * a.shape[-1]
        elif t._op == "linear":
            counts["linear"] += t.data.size * t._parents[1].shape[1]
        elif t._op == "conv2d":
            w = t._parents[1]
            counts["conv2d"] += t.data.size * int(np.prod(w.shape[1:]))
        elif t._op == "scaled_dot_product_attention":
            q, k = t._parents[0], t._parents[1]               # q (..., N, d), k (..., M, d), v (..., M, dv)
            counts["attention"] += t.data.size // t.shape[-1] * k.shape[-2] * (q.shape[-1] + t.shape[-1])
        stack.extend(t._parents)
    if not any(t._parents for t in outs if isinstance(t, Tensor)):
        raise ValueError("count_macs: the output has no recorded graph; fn must use parameters that "
                         "require gradients (or inputs with requires_grad=True)")
    counts["total"] = sum(counts.values())
    return counts


# ---------------------------------------------------------------- configs
@register_model
def vt_fmnist(**kw):
    """VT classifier for 28x28x1 Fashion-MNIST: conv3x3 stem (16), one BasicBlock to
    48 channels at 14x14, then 3 VT modules (filter, recurrent, recurrent) with
    L = 16 tokens of 48 channels, mean token -> linear head."""
    cfg = dict(img_size=28, in_chans=1, num_classes=10, stem_width=16, dim=48, num_tokens=16, depth=3)
    cfg.update(kw)
    return VisualTransformer(**cfg)


@register_model
def vt_seg_fmnist(**kw):
    """VT-FPN segmenter for 56x56 canvases of Fashion-MNIST items (11 classes with
    background): backbone levels 28, 14, 7 px (16, 32, 64 channels), FPN width 32,
    8 tokens per level, one token transformer across the 24 tokens of all levels."""
    cfg = dict(img_size=56, in_chans=1, num_classes=11, stem_width=16, widths=(16, 32, 64), fpn_dim=32,
               mixer="vt", num_tokens=(8, 8, 8), transformer_depth=1)
    cfg.update(kw)
    return SegmentationFPN(**cfg)


@register_model
def fpn_seg_fmnist(**kw):
    """The conv baseline of vt_seg_fmnist: the same backbone, FPN and semantic head,
    with a 3x3 convolution per level where VT-FPN has its tokenizer, transformer and projector."""
    cfg = dict(img_size=56, in_chans=1, num_classes=11, stem_width=16, widths=(16, 32, 64), fpn_dim=32,
               mixer="conv")
    cfg.update(kw)
    return SegmentationFPN(**cfg)
