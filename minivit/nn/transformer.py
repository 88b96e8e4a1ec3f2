"""The two blocks every transformer paper reuses, with timm's names
(``qkv``, ``proj``; ``fc1``, ``act``, ``fc2``), so timm weights load 1:1."""
from __future__ import annotations

from minivit import functional as F
from .module import Module, _check_p, _check_x, _shape
from .layers import GELU, Dropout, Identity, Linear

__all__ = ["Attention", "Mlp"]


# ==========================================================================
# The two blocks every transformer paper reuses (timm names)
# ==========================================================================
class Attention(Module):
    """Multi-head self-attention (timm's ``Attention``).

    For x (B, N, C) with H heads of size d = C / H:

        [Q, K, V] = x W_qkv^T + b_qkv             W_qkv: (3C, C)
        head_h    = softmax(scale * Q_h K_h^T + mask) V_h     scale = d^-1/2
        out       = concat_h(head_h) W_proj^T + b_proj

    The output channels of ``qkv`` are ordered [Q (all heads); K; V], and
    head-major inside each block (channel h*d + i), as in timm, so timm's
    ``qkv.weight`` (3C, C) loads 1:1.

    ``forward(x, attn_mask=None, return_attention=False)``: ``attn_mask`` is
    passed to ``F.scaled_dot_product_attention`` (boolean: True = may attend;
    float: added to the logits), broadcastable to (B, H, N, N).
    ``return_attention=True`` also returns the attention weights, an ndarray
    (B, H, N, N), for the chapters' attention maps.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, scale=None):
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"Attention: dim={dim} is not divisible by num_heads={num_heads}")
        _check_p("Attention", "attn_drop", attn_drop)
        self.dim, self.num_heads = int(dim), int(num_heads)
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5 if scale is None else float(scale)
        self.attn_drop = float(attn_drop)      # a probability: dropout happens inside the attention op
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x, attn_mask=None, return_attention: bool = False):
        _check_x("Attention", x, 3, {2: self.dim}, "(B, N, {})")
        B, N, C = x.shape
        H, d = self.num_heads, self.head_dim
        qkv = self.qkv(x)                                   # (B, N, 3C)
        qkv = qkv.reshape(B, N, 3, H, d)                    # (B, N, 3, H, d)
        qkv = qkv.permute(2, 0, 3, 1, 4)                    # (3, B, H, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]                    # each (B, H, N, d)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale, return_weights=return_attention)
        if return_attention:
            out, attn = out                                 # attn: ndarray (B, H, N, N)
        x = out.transpose(1, 2)                             # (B, H, N, d) -> (B, N, H, d)
        x = x.reshape(B, N, C)                              # (B, N, H, d) -> (B, N, C)
        x = self.proj_drop(self.proj(x))                    # (B, N, C)
        return (x, attn) if return_attention else x

    def extra_repr(self):
        s = f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, scale={self.scale:.4g}"
        return s + (f", attn_drop={self.attn_drop}" if self.attn_drop else "")


class Mlp(Module):
    """The transformer feed-forward block (timm's ``Mlp``):

        fc1 (in -> hidden) -> act -> drop1 -> norm -> fc2 (hidden -> out) -> drop2

    ``norm`` is an Identity (timm keeps the slot for variants that
    normalise there), so the state-dict keys are ``fc1.weight``, ``fc1.bias``,
    ``fc2.weight``, ``fc2.bias``. ``drop`` may be one probability or a pair
    (drop1, drop2). x (..., in_features) -> (..., out_features).
    """

    def __init__(self, in_features: int, hidden_features=None, out_features=None, act_layer=GELU,
                 drop=0.0, bias: bool = True):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        drop1, drop2 = (drop, drop) if isinstance(drop, (int, float)) else tuple(drop)
        self.in_features = int(in_features)
        self.fc1 = Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer if isinstance(act_layer, Module) else act_layer()
        self.drop1 = Dropout(drop1)
        self.norm = Identity()
        self.fc2 = Linear(hidden_features, out_features, bias=bias)
        self.drop2 = Dropout(drop2)

    def forward(self, x):
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"Mlp: expected x of shape (..., {self.in_features}), got {_shape(x.shape)}")
        x = self.drop1(self.act(self.fc1(x)))               # (..., hidden)
        x = self.drop2(self.fc2(self.norm(x)))              # (..., out)
        return x


def run_blocks(blocks, x, return_attention: bool = False):
    """Apply ``blocks`` in order: ``x = blk(x)``. Returns ``(x, attns)``, where
    ``attns`` lists each block's attention maps when ``return_attention`` (the
    block is then called with ``return_attention=True`` and returns ``(x, attn)``)
    and is empty otherwise. The loop every model's ``forward_features`` shares."""
    attns = []
    for blk in blocks:
        if return_attention:
            x, a = blk(x, return_attention=True)
            attns.append(a)
        else:
            x = blk(x)
    return x, attns
