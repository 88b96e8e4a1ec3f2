"""Stand-Alone Self-Attention (SASA): local self-attention in place of convolution.

Ramachandran, Parmar, Vaswani, Bello, Levskaya, Shlens, "Stand-Alone Self-Attention
in Vision Models", NeurIPS 2019. https://arxiv.org/abs/1906.05909
Official code: none released (google-research/google-research,
``standalone_self_attention_in_vision_models/``, holds only "work-in-progress").
Reimplementations read: leaderj1001/Stand-Alone-Self-Attention (``attention.py``,
``model.py``) and timm's ``halo_attn.py`` (HaloNet, by the same group).

The equations (course section 1). For a feature map x (C_in, H, W), a pixel ij and
its k x k neighbourhood N_k(i, j) = {ab : |a - i| <= (k-1)/2, |b - j| <= (k-1)/2}:

    q_ij = W_Q x_ij,    k_ab = W_K x_ab,    v_ab = W_V x_ab            (1x1 projections)
    (1)  y_ij = sum_{ab in N_k(i,j)} softmax_ab(q_ij^T k_ab) v_ab
    (2)  y_ij = sum_{ab in N_k(i,j)} softmax_ab(q_ij^T k_ab + q_ij^T r_{a-i,b-j}) v_ab
         r_{a-i,b-j} = concat(r^row_{a-i}, r^col_{b-j})     (d_out/2 + d_out/2 channels)

softmax_ab runs over the positions of N_k(i, j). Multi-head: the d_out channels of
q, k, v and r are split into N groups of d_out/N (the heads); each head computes (2)
on its own slice and the heads are concatenated. Because r is sliced like q, with
8 heads the first 4 heads see only row offsets and the last 4 only column offsets.
The layer replaces the 3x3 convolution of a ResNet bottleneck
(1x1 conv -> SASA -> [2x2 avg-pool] -> 1x1 conv, plus the shortcut).

Symbols -> variables: W_Q, W_K, W_V -> ``query_conv``, ``key_conv``, ``value_conv``
(1x1 ``Conv2d``, no bias); r^row -> ``rel_h`` (d_out/2, k), r^col -> ``rel_w``
(d_out/2, k), r -> ``relative_embedding()`` (d_out, k, k); k -> ``kernel_size``;
N -> ``num_heads``; the softmax weights -> what ``return_attention=True`` returns,
indexed [b, head, a-i+(k-1)/2, b-j+(k-1)/2, i, j].

How it is computed (``local_attention2d``): the k x k neighbourhoods are a strided
*view* of the zero-padded keys and values (``np.lib.stride_tricks.sliding_window_view``,
nothing copied), so the logits of every pixel and every head are one ``einsum``;
the relative term is one matrix product per head. The backward is written by hand
next to the forward (the adjoint of the window view adds each offset's slice back,
as ``col2im`` does for convolutions).

What minivit does, and where other code differs:

- Positions of N_k(i, j) outside the image are **excluded** from the softmax
  (logit -inf, weight exactly 0): every pixel attends over real pixels only, and a
  feature map smaller than the window is fine. leaderj1001 and timm's HaloAttn
  zero-pad instead: padded pixels have k = v = 0 and still take part in the softmax
  (logit q.r, or 0), which shrinks the outputs near the border.
- The logit is the paper's dot product over the head's channels. leaderj1001
  multiplies q and k elementwise and softmaxes every channel separately (one
  attention map per channel); timm's Halo/BoT attention also differs: it scales q.k
  by d^-1/2 and *adds* a row and a column relative logit, each over the full head
  dimension. The paper (and minivit) has no scaling.
- Full 1x1 projections C_in -> C_out, not block-diagonal ones per head: only these
  reproduce the paper's parameter counts (attention ResNet-26: 10,342,632 here, the
  paper's 10.3M; block-diagonal ones give about 8.87M).
- Init as leaderj1001: kaiming-normal (fan_out, ReLU) for the convolutions, N(0, 1)
  for ``rel_h``/``rel_w``.
- Downsampling: 2x2 avg-pool after the attention layer (the paper); leaderj1001 pools
  after the last 1x1 conv. The shortcut avg-pools too, before its 1x1 conv, so both
  paths agree on odd sizes (7 -> 3); leaderj1001 uses a stride-2 1x1 conv there.
- The stem is a convolution (the paper's "conv stem" variant); the paper's attention
  stem (values mixed by position-dependent weights) is not implemented.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from minivit import functional as F
from minivit import init, nn
from minivit._threads import parallel_for
from minivit.models import register_model
from minivit.tensor import Tensor

__all__ = ["local_attention2d", "neighbourhood_mask", "LocalSelfAttention2d", "Bottleneck",
           "SASAResNet"]


# ================================================================== checks
def _check_kernel_size(where: str, kernel_size) -> int:
    """The window is centred on its pixel, so its side must be a positive odd int."""
    if not isinstance(kernel_size, (int, np.integer)) or isinstance(kernel_size, bool):
        raise TypeError(f"{where}: kernel_size must be a positive odd int, got {kernel_size!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{where}: kernel_size must be a positive odd int (the k x k window is "
                         f"centred on its pixel), got {kernel_size}")
    return int(kernel_size)


def _check_heads(where: str, channels: int, num_heads, what: str = "out_channels") -> int:
    if not isinstance(num_heads, (int, np.integer)) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"{where}: num_heads must be a positive int, got {num_heads!r}")
    if channels % num_heads:
        raise ValueError(f"{where}: num_heads={num_heads} does not divide {what}={channels} "
                         f"(each head takes {what}/num_heads channels)")
    return int(num_heads)


# ================================================================== the op
def neighbourhood_mask(height: int, width: int, kernel_size: int) -> np.ndarray:
    """Which neighbours exist: bool (k, k, H, W), ``mask[x, y, i, j]`` is True when
    pixel (a, b) = (i + x - p, j + y - p), p = (k-1)/2, lies inside the image."""
    p = kernel_size // 2
    a = np.arange(kernel_size)[:, None] + np.arange(height)[None, :] - p    # (k, H): row a of (x, i)
    b = np.arange(kernel_size)[:, None] + np.arange(width)[None, :] - p     # (k, W): column b of (y, j)
    rows, cols = (a >= 0) & (a < height), (b >= 0) & (b < width)
    return rows[:, None, :, None] & cols[None, :, None, :]


def _windows(xp: np.ndarray, k: int) -> np.ndarray:
    """Padded (N, d, H+2p, W+2p, B) -> read-only view (N, d, k, k, H, W, B) with
    ``out[n, c, x, y, i, j, b] = xp[n, c, i + x, j + y, b]``: the k x k
    neighbourhood of every pixel, no copy."""
    win = sliding_window_view(xp, (k, k), axis=(2, 3))      # (N, d, H, W, B, k, k)
    return win.transpose(0, 1, 5, 6, 2, 3, 4)               # (N, d, k, k, H, W, B)


def local_attention2d(q, k, v, kernel_size: int, num_heads: int, rel=None, *,
                      return_weights: bool = False):
    """Multi-head local self-attention, equation (2) (equation (1) with ``rel=None``).

    q, k, v (B, C, H, W) -> y (B, C, H, W); ``rel`` (C, k, k) is r, with
    ``rel[c, x, y] = r_{a-i, b-j}[c]`` for offsets x = a-i+p, y = b-j+p
    (p = (k-1)/2). The channels split into ``num_heads`` heads of d = C/N::

        s_ij,ab = q_ij . k_ab + q_ij . r_{a-i,b-j}    (per head; -inf if ab is outside)
        P_ij,ab = softmax_ab(s_ij,ab),   y_ij = sum_ab P_ij,ab v_ab

    No 1/sqrt(d) scaling, as in the paper. Inside, every array is laid out
    (heads, d, H, W, B): batch last, so each neighbourhood offset is a long
    contiguous slice. Backward (g = dL/dy, the same softmax rule as attention)::

        dP = g . v_ab,   dS = P (dP - sum_ab P dP)
        dq = sum_ab dS (k_ab + r_{a-i,b-j}),   dr = sum_{ij, batch} dS q_ij
        dk_ab, dv_ab = sum over the pixels ij whose window holds ab of dS q_ij, P g_ij

    The last line is the adjoint of the window view: one vectorised ``+=`` of a
    shifted slice per offset (k^2 of them), like ``col2im``.

    With ``return_weights=True`` the result is ``(y, weights)``, weights a
    read-only ndarray (B, heads, k, k, H, W): ``weights[b, n, x, y, i, j]`` is
    the weight of pixel (i+x-p, j+y-p) for the query pixel (i, j); 0 outside.
    """
    op = "local_attention2d"
    ks = _check_kernel_size(op, kernel_size)
    q, k, v = (t if isinstance(t, Tensor) else Tensor(np.asarray(t)) for t in (q, k, v))
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"{op}: q, k and v must have the same shape (B, C, H, W), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    dt = q.dtype
    if dt.kind != "f" or k.dtype != dt or v.dtype != dt:
        raise TypeError(f"{op}: q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, C, H, W = q.shape
    nh = _check_heads(op, C, num_heads, "channels C")
    d, p, k2, M = C // nh, ks // 2, ks * ks, H * W * B    # einsum letters: o an offset, m a (pixel, image)
    if rel is not None:
        rel = rel if isinstance(rel, Tensor) else Tensor(np.asarray(rel, dtype=dt))
        if rel.shape != (C, ks, ks) or rel.dtype != dt:
            raise ValueError(f"{op}: rel must have shape (C, k, k) = {(C, ks, ks)} and dtype {dt}, "
                             f"got {tuple(rel.shape)} {rel.dtype}")

    def to_heads(a):        # (B, C, H, W) -> (N, d, H, W, B), contiguous
        return np.ascontiguousarray(a.reshape(B, nh, d, H, W).transpose(1, 2, 3, 4, 0))

    def from_heads(a):      # (N, d, H, W, B) -> (B, C, H, W)
        return np.ascontiguousarray(a.transpose(4, 0, 1, 2, 3)).reshape(B, C, H, W)

    pad = ((0, 0), (0, 0), (p, p), (p, p), (0, 0))
    Q = to_heads(q.data)                                            # q_ij      (N, d, H, W, B)
    Kw = _windows(np.pad(to_heads(k.data), pad), ks)                # k_ab      (N, d, k, k, H, W, B)
    Vw = _windows(np.pad(to_heads(v.data), pad), ks)                # v_ab      (N, d, k, k, H, W, B)
    R = rel.data.reshape(nh, d, k2) if rel is not None else None    # r per head    (N, d, k*k)
    outside = ~neighbourhood_mask(H, W, ks)[..., None]              # (k, k, H, W, 1)
    P = np.empty((nh, ks, ks, H, W, B), dt)                         # (N, k, k, H, W, B)
    y = np.empty_like(Q)

    # The heads are independent, so each thread takes a block of heads (minivit._threads):
    # the same NumPy calls on fewer heads, bitwise the same result for any thread count.
    def forward_heads(h):
        S = P[h]
        np.einsum("ndijb,ndxyijb->nxyijb", Q[h], Kw[h], out=S)      # q_ij . k_ab
        if R is not None:
            S += np.einsum("ndo,ndm->nom", R[h], Q[h].reshape(-1, d, M)).reshape(S.shape)   # + q_ij . r
        np.copyto(S, -np.inf, where=outside)                        # not in the image: excluded
        S -= S.max(axis=(1, 2), keepdims=True)                      # softmax over ab (the centre
        np.exp(S, out=S)                                            # pixel is always inside, so
        S /= S.sum(axis=(1, 2), keepdims=True)                      # no row is empty)
        np.einsum("nxyijb,ndxyijb->ndijb", S, Vw[h], out=y[h])      # sum_ab P v_ab (N, d, H, W, B)

    parallel_for(forward_heads, nh, work=P.size * d)

    def scatter(w, u, buf):
        """Adjoint of the window view: add sum_{xy} of w[:, x, y] * u at the pixels
        (i + x, j + y) of the zeroed padded buffer ``buf`` (cropped by the caller)."""
        tmp = np.empty_like(u)
        for x in range(ks):                                         # a loop over the k*k offsets,
            for yy in range(ks):                                    # not over pixels
                np.multiply(w[:, None, x, yy], u, out=tmp)
                buf[:, :, x:x + H, yy:yy + W] += tmp

    def backward(g):
        G = to_heads(g)                                             # dL/dy (N, d, H, W, B)
        padded = (nh, d, H + 2 * p, W + 2 * p, B)
        dV = np.zeros(padded, dt) if v.requires_grad else None
        dK = np.zeros(padded, dt) if k.requires_grad else None
        dQ = np.empty_like(Q) if q.requires_grad else None
        dR = np.empty((nh, d, k2), dt) if rel is not None and rel.requires_grad else None

        def backward_heads(h):
            Ph = P[h]
            if dV is not None:
                scatter(Ph, G[h], dV[h])                            # dv_ab = sum_ij P g_ij
            dS = np.einsum("ndijb,ndxyijb->nxyijb", G[h], Vw[h])    # dP = g_ij . v_ab
            dS -= np.einsum("nxyijb,nxyijb->nijb", dS, Ph)[:, None, None]
            dS *= Ph                                                # dS = P (dP - sum P dP)
            if dQ is not None:
                np.einsum("nxyijb,ndxyijb->ndijb", dS, Kw[h], out=dQ[h])   # sum_ab dS k_ab
                if R is not None:                                   # + sum_ab dS r
                    dQ[h] += np.einsum("ndo,nom->ndm", R[h], dS.reshape(-1, k2, M)).reshape(dQ[h].shape)
            if dK is not None:
                scatter(dS, Q[h], dK[h])                            # dk_ab = sum_ij dS q_ij
            if dR is not None:                                      # sum_{ij,b} dS q_ij
                dR[h] = np.einsum("ndm,nom->ndo", Q[h].reshape(-1, d, M), dS.reshape(-1, k2, M))

        parallel_for(backward_heads, nh, work=P.size * d)
        crop = (slice(None), slice(None), slice(p, p + H), slice(p, p + W))
        dq = from_heads(dQ) if dQ is not None else None
        dk = from_heads(dK[crop]) if dK is not None else None
        dv = from_heads(dV[crop]) if dV is not None else None
        dr = dR.reshape(C, ks, ks) if dR is not None else None
        return (dq, dk, dv) if rel is None else (dq, dk, dv, dr)

    parents = (q, k, v) if rel is None else (q, k, v, rel)
    out = Tensor._make(from_heads(y), parents, backward, "local_attention2d")
    if return_weights:
        weights = P.transpose(5, 0, 1, 2, 3, 4)                     # (B, N, k, k, H, W) view
        weights.flags.writeable = False
        return out, weights
    return out


# ================================================================== the layer
class LocalSelfAttention2d(nn.Module):
    """The SASA layer: 1x1 projections, then multi-head attention over each
    pixel's k x k neighbourhood, with the relative embedding r (equation (2)),
    or without it when ``with_relative=False`` (equation (1)).

    x (B, in_channels, H, W) -> (B, out_channels, H, W). Stride 1; any H, W
    (neighbours outside the image are masked out of the softmax).
    ``forward(x, return_attention=True)`` also returns the weights
    (B, heads, k, k, H, W), see :func:`local_attention2d`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7, num_heads: int = 8,
                 with_relative: bool = True):
        super().__init__()
        where = "LocalSelfAttention2d"
        self.kernel_size = _check_kernel_size(where, kernel_size)
        self.num_heads = _check_heads(where, out_channels, num_heads)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.with_relative = bool(with_relative)
        self.query_conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)   # W_Q
        self.key_conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)     # W_K
        self.value_conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)   # W_V
        if self.with_relative:
            half = out_channels // 2                  # rows: the first half of the channels
            self.rel_h = nn.Parameter(np.zeros((half, kernel_size), np.float32))                 # r^row
            self.rel_w = nn.Parameter(np.zeros((out_channels - half, kernel_size), np.float32))  # r^col
        self.reset_parameters()

    def reset_parameters(self):
        """leaderj1001's init: kaiming-normal (fan_out, ReLU) projections, N(0, 1) r."""
        for conv in (self.query_conv, self.key_conv, self.value_conv):
            init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if self.with_relative:
            init.normal_(self.rel_h, 0.0, 1.0)
            init.normal_(self.rel_w, 0.0, 1.0)

    def relative_embedding(self):
        """r (C, k, k) with r[:, x, y] = concat(r^row_x, r^col_y) (x, y: offsets + p)."""
        k = self.kernel_size
        rows = self.rel_h.unsqueeze(2).expand(self.rel_h.shape[0], k, k)   # r^row_{a-i}: varies with x
        cols = self.rel_w.unsqueeze(1).expand(self.rel_w.shape[0], k, k)   # r^col_{b-j}: varies with y
        return F.cat([rows, cols], dim=0)                                   # (C, k, k)

    def forward(self, x, return_attention: bool = False):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"LocalSelfAttention2d: expected x of shape (B, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        q = self.query_conv(x)                                  # q_ij = W_Q x_ij  (B, C, H, W)
        k = self.key_conv(x)                                    # k_ab = W_K x_ab
        v = self.value_conv(x)                                  # v_ab = W_V x_ab
        rel = self.relative_embedding() if self.with_relative else None
        return local_attention2d(q, k, v, self.kernel_size, self.num_heads, rel,
                                 return_weights=return_attention)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"num_heads={self.num_heads}, with_relative={self.with_relative}")


# ================================================================== the network
class _Shortcut(nn.Module):
    """The projection shortcut: [2x2 avg-pool] -> 1x1 conv -> BN."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return self.bn(self.conv(self.pool(x)))


class Bottleneck(nn.Module):
    """ResNet bottleneck with the 3x3 convolution replaced by SASA:

        1x1 conv-BN-ReLU -> SASA-BN-ReLU -> [2x2 avg-pool if stride 2] -> 1x1 conv-BN
        + shortcut (identity, or [avg-pool] 1x1 conv-BN) -> ReLU

    in_channels -> 4 * width channels.
    """
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, kernel_size: int = 7,
                 num_heads: int = 8, with_relative: bool = True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"Bottleneck: stride must be 1 or 2, got {stride!r}")
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = LocalSelfAttention2d(width, width, kernel_size, num_heads, with_relative)
        self.bn2 = nn.BatchNorm2d(width)
        self.pool = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _Shortcut(in_channels, out, stride) if stride != 1 or in_channels != out else None

    def forward(self, x, return_attention: bool = False):
        h = F.relu(self.bn1(self.conv1(x)))
        if return_attention:
            h, attn = self.conv2(h, return_attention=True)
        else:
            h, attn = self.conv2(h), None
        h = self.pool(F.relu(self.bn2(h)))
        h = self.bn3(self.conv3(h))
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(h + shortcut)
        return (out, attn) if return_attention else out


class SASAResNet(nn.Module):
    """A ResNet whose spatial convolutions are all SASA layers (the paper's
    "full attention" variant with a conv stem).

    stem: conv(stem_kernel, stride stem_stride)-BN-ReLU [-> 3x3 max-pool, stride 2]
    then one stage per entry of ``layers`` (stage s: ``layers[s]`` bottlenecks of
    width ``widths[s]``, the first one with stride 2 for s > 0), global average
    pooling and a linear classifier ``fc``.

    ``forward(x, return_attention=False)``: (B, in_chans, H, W) -> logits
    (B, num_classes); with ``return_attention=True`` also the list of every SASA
    layer's weights, each (B, heads, k, k, H_s, W_s).
    """

    def __init__(self, layers=(1, 2, 4, 1), widths=(64, 128, 256, 512), in_chans: int = 3,
                 num_classes: int = 1000, kernel_size: int = 7, num_heads: int = 8,
                 with_relative: bool = True, stem_width: int = 64, stem_kernel: int = 7,
                 stem_stride: int = 2, stem_pool: bool = True):
        super().__init__()
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"SASAResNet: layers {tuple(layers)} and widths {tuple(widths)} must be "
                             f"non-empty and of the same length (one entry per stage)")
        _check_kernel_size("SASAResNet", kernel_size)
        for w in widths:
            _check_heads("SASAResNet", w, num_heads, "a stage width")
        self.in_chans, self.num_classes = int(in_chans), int(num_classes)
        self.conv1 = nn.Conv2d(in_chans, stem_width, stem_kernel, stride=stem_stride,
                               padding=stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem_pool else nn.Identity()
        stages, c = [], stem_width
        for s, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(Bottleneck(c, w, stride, kernel_size, num_heads, with_relative))
                c = w * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(stages)
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():                          # torchvision's ResNet init for the convs
            if isinstance(m, nn.Conv2d):
                init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def sasa_layers(self):
        """Every SASA layer, in forward order."""
        return [m for m in self.modules() if isinstance(m, LocalSelfAttention2d)]

    def forward(self, x, return_attention: bool = False):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x has shape {tuple(x.shape)} but the model expects (B, {self.in_chans}, H, W): "
                             f"{self.in_chans} input channel{'s' if self.in_chans > 1 else ''}")
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))          # stem (B, stem_width, H', W')
        attns = []
        for stage in self.layers:
            x, stage_attns = nn.run_blocks(stage, x, return_attention)
            attns += stage_attns
        x = x.mean(dim=(2, 3))                                      # global average pool (B, C)
        logits = self.fc(x)
        return (logits, attns) if return_attention else logits


# ================================================================== configs
@register_model
def sasa_fmnist(**kw):
    """Attention ResNet for 28x28x1 Fashion-MNIST: 3x3 conv stem (32) + max-pool
    (28 -> 14), two stages of one bottleneck each (widths 16 and 32, 4 heads,
    k = 7; 14x14 then 7x7)."""
    cfg = dict(layers=(1, 1), widths=(16, 32), in_chans=1, num_classes=10, kernel_size=7,
               num_heads=4, stem_width=32, stem_kernel=3, stem_stride=1, stem_pool=True)
    cfg.update(kw)
    return SASAResNet(**cfg)


@register_model
def sasa_resnet26(**kw):
    """The paper's full-attention ResNet-26 (blocks [1, 2, 4, 1], k = 7, 8 heads,
    conv stem): 10,342,632 parameters (paper: 10.3M)."""
    cfg = dict(layers=(1, 2, 4, 1), widths=(64, 128, 256, 512), in_chans=3, num_classes=1000,
               kernel_size=7, num_heads=8)
    cfg.update(kw)
    return SASAResNet(**cfg)


@register_model
def sasa_resnet50(**kw):
    """Full-attention ResNet-50 (blocks [3, 4, 6, 3]): 18,038,632 parameters (paper: 18.0M)."""
    cfg = dict(layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), in_chans=3, num_classes=1000,
               kernel_size=7, num_heads=8)
    cfg.update(kw)
    return SASAResNet(**cfg)
