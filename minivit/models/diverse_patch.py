"""Vision transformers with patch diversification (DiversePatch).

C. Gong, D. Wang, M. Li, V. Chandra, Q. Liu, "Vision Transformers with Patch
Diversification", arXiv 2021. https://arxiv.org/abs/2104.12753
Official code: https://github.com/ChengyueGongR/PatchVisionTransformer (its
README warns the training code is incomplete and the results not reproducible).

**The problem (course section 10).** Deep ViTs *over-smooth*: after many
blocks the patch tokens of an image point in nearly the same direction, so
the later layers carry little more information than one token would. The
paper measures it with the patch-wise absolute cosine similarity of the n
patch tokens h = (h_1 .. h_n) of one layer (the class token excluded)::

    P(h) = 1/(n(n-1)) sum_{i != j} |h_i^T h_j| / (||h_i||_2 ||h_j||_2)

P = 1 when all patches are parallel, 0 when they are mutually orthogonal.

**The fix: three losses**, with h^[l] the patch tokens after block l
(l = 1 .. L) and g a linear patch classifier shared by all patches::

    L_cos         = P(h^[L])
    L_contrastive = -1/n sum_i log  exp(h_i^[1]T h_i^[L])
                                   / (exp(h_i^[1]T h_i^[L]) + exp(h_i^[1]T hbar_i^[L]))
                    hbar_i^[L] = 1/(n-1) sum_{j != i} h_j^[L]       (the other patches' mean)
    L_mixing      = 1/n sum_i CE(g(h_i^[L]), y_i)                  (y_i: patch i's CutMix label)
    L = CE(head(h_cls), y) + a_1 L_cos + a_2 L_contrastive + a_3 L_mixing

The first-layer features h^[1] are the contrastive *anchors* and are
detached (no gradient flows into them); the dot products are raw, not
normalised. The per-patch labels y_i come from CutMix with the box aligned
to the patch grid (:class:`minivit.data.CutMix` with ``patch_size`` and
``align_to_patches=True``): a patch inside the pasted box carries the pasted
image's label. Losses and P are averaged over the batch.

Symbols -> variables: h^[l] -> ``features[l - 1]`` from
``forward(x, return_features=True)`` (block outputs, patch tokens only,
before the final LayerNorm); g -> ``patch_head``; a_1, a_2, a_3 ->
``DiversePatchLoss(cos=, contrastive=, mixing=)``; P -> :func:`patch_similarity`.

**What the official code does differently** (PAPERS.md section 10): it has no
cosine loss; its contrastive loss is a 3-way InfoNCE whose anchor is the patch
*embedding* (before position embedding and blocks) and which adds a local
negative (the 7x7-neighbourhood mean); it uses the final-LayerNorm output as
h^[L]; the mixing loss classifies *region-pooled* features (one mean per
CutMix region, KL against soft targets, weighted by area) instead of each
patch; and its backbone uses talking-heads attention. minivit follows the
course's equations above with a plain ViT backbone.
"""
from __future__ import annotations

import math

import numpy as np

from minivit import functional as F
from minivit import init, nn
from minivit.models import register_model
from minivit.models.vit import VisionTransformer
from minivit.tensor import Tensor

__all__ = ["patch_similarity", "cosine_loss", "contrastive_loss", "mixing_loss",
           "DiverseViT", "DiversePatchLoss", "DiversePatchCriterion"]


def _check_tokens(name, h, min_patches=2):
    if not isinstance(h, Tensor):
        h = Tensor(np.asarray(h))
    if h.ndim != 3:
        raise ValueError(f"{name}: patch tokens must have shape (B, n, D), got {tuple(h.shape)}")
    if h.shape[1] < min_patches:
        raise ValueError(f"{name}: needs at least {min_patches} patches, got n={h.shape[1]}")
    return h


# ================================================================== the measure
def patch_similarity(h, reduction: str = "mean", eps: float = 1e-8) -> Tensor:
    """P(h): mean absolute cosine between different patch tokens of one image.

    h (B, n, D) patch tokens (no class token) -> (B,) with ``reduction="none"``
    or their mean. Vectorised: with u_i = h_i / ||h_i||, the Gram matrix
    G = U U^T holds every cos(h_i, h_j); its diagonal is |cos(h_i, h_i)| = 1
    (0 for an all-zero token), so sum_{i != j} |G_ij| = sum |G| - trace |G|.
    """
    h = _check_tokens("patch_similarity", h)
    if reduction not in ("mean", "none"):
        raise ValueError(f"patch_similarity: reduction must be 'mean' or 'none', got {reduction!r}")
    n = h.shape[1]
    u = F.normalize(h, dim=-1, eps=eps)                              # (B, n, D), unit rows
    G = F.abs(u @ u.transpose(1, 2))                                 # (B, n, n)  |cos(h_i, h_j)|
    diag = (u * u).sum(-1).sum(-1)                                   # (B,)  sum_i |cos(h_i, h_i)|
    P = (G.sum((1, 2)) - diag) * (1.0 / (n * (n - 1)))               # (B,)
    return P.mean() if reduction == "mean" else P


# ================================================================== the losses
def cosine_loss(h_last) -> Tensor:
    """L_cos = P(h^[L]), averaged over the batch."""
    return patch_similarity(h_last)


def contrastive_loss(h_first, h_last) -> Tensor:
    """L_contrastive: each last-layer patch should stay closer to its own
    first-layer feature (the detached anchor) than to the mean of the other
    last-layer patches. h_first, h_last (B, n, D) -> scalar (mean over i and B).

    -log(e^pos / (e^pos + e^neg)) = log-softmax over the two logits (pos, neg),
    so it is computed as a two-way cross-entropy with target 0."""
    h_first = _check_tokens("contrastive_loss", h_first)
    h_last = _check_tokens("contrastive_loss", h_last)
    if h_first.shape != h_last.shape:
        raise ValueError(f"contrastive_loss: h_first {tuple(h_first.shape)} and h_last {tuple(h_last.shape)} "
                         f"must have the same shape (B, n, D)")
    n = h_last.shape[1]
    anchor = h_first.detach()                                        # stop-gradient on h^[1]
    others = (h_last.sum(1, keepdim=True) - h_last) * (1.0 / (n - 1))   # hbar_i: mean of the j != i
    pos = (anchor * h_last).sum(-1)                                  # (B, n)  h_i^[1]T h_i^[L]
    neg = (anchor * others).sum(-1)                                  # (B, n)  h_i^[1]T hbar_i^[L]
    logits = F.stack([pos, neg], dim=-1).reshape(-1, 2)              # (B n, 2)
    return F.cross_entropy(logits, np.zeros(logits.shape[0], dtype=np.int64))


def mixing_loss(h_last, patch_targets, patch_head) -> Tensor:
    """L_mixing = 1/n sum_i CE(g(h_i^[L]), y_i), averaged over the batch.

    ``patch_targets`` (B, n, K): per-patch label distributions from CutMix
    (one-hot for a patch wholly inside or outside the box), or integer labels
    (B, n). ``patch_head`` is g, one Linear shared by all patches."""
    h_last = _check_tokens("mixing_loss", h_last, 1)
    if patch_targets is None:
        raise ValueError("mixing_loss needs per-patch labels: train with CutMix aligned to the patch grid "
                         "(minivit.data.CutMix(patch_size=P, align_to_patches=True)), which yields them")
    t = np.asarray(patch_targets.data if isinstance(patch_targets, Tensor) else patch_targets)
    B, n = h_last.shape[:2]
    if t.shape[:2] != (B, n):
        raise ValueError(f"mixing_loss: patch_targets has shape {t.shape} but the features have B={B} images "
                         f"of n={n} patches: expected ({B}, {n}, K) or ({B}, {n})")
    logits = patch_head(h_last)                                      # (B, n, K)  g(h_i^[L])
    K = logits.shape[-1]
    t = t.reshape(B * n, K) if t.ndim == 3 else t.reshape(B * n)
    return F.cross_entropy(logits.reshape(B * n, K), t.astype(logits.dtype) if t.ndim == 2 else t)


def _check_weight(name, w):
    if not isinstance(w, (int, float, np.floating)) or math.isnan(w) or w < 0:
        raise ValueError(f"DiversePatchLoss: {name} weight must be a number >= 0, got {w!r}")
    return float(w)


class DiversePatchLoss:
    """L = CE(logits, y) + a_1 L_cos + a_2 L_contrastive + a_3 L_mixing.

    ``loss(logits, features, targets, patch_targets=None, patch_head=None)``
    where ``features`` = [h^[1], ..., h^[L]] (patch tokens per block). Weights
    default to 1 (the paper's are unpublished; the official code uses
    contrastive 1, mixing 1, cosine 0). ``label_smoothing`` applies to the CE.
    ``parts`` holds the last call's four terms as floats (for logging).
    """

    def __init__(self, cos: float = 1.0, contrastive: float = 1.0, mixing: float = 1.0,
                 label_smoothing: float = 0.0):
        self.cos = _check_weight("cos", cos)
        self.contrastive = _check_weight("contrastive", contrastive)
        self.mixing = _check_weight("mixing", mixing)
        self.label_smoothing = float(label_smoothing)
        self.parts = {}

    def __call__(self, logits, features, targets, patch_targets=None, patch_head=None) -> Tensor:
        if not isinstance(features, (list, tuple)) or len(features) < 1:
            raise ValueError("DiversePatchLoss: features must be the list of per-layer patch tokens "
                             "[h^[1], ..., h^[L]] (a model's forward(x, return_features=True))")
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        self.parts = {"ce": float(loss.data)}
        if self.cos:
            term = cosine_loss(features[-1])
            self.parts["cos"] = float(term.data)
            loss = loss + term * self.cos
        if self.contrastive:
            term = contrastive_loss(features[0], features[-1])
            self.parts["contrastive"] = float(term.data)
            loss = loss + term * self.contrastive
        if self.mixing:
            if patch_head is None:
                raise ValueError("DiversePatchLoss: the mixing loss needs the model's patch_head (g)")
            term = mixing_loss(features[-1], patch_targets, patch_head)
            self.parts["mixing"] = float(term.data)
            loss = loss + term * self.mixing
        return loss

    def __repr__(self):
        return (f"DiversePatchLoss(cos={self.cos}, contrastive={self.contrastive}, mixing={self.mixing}, "
                f"label_smoothing={self.label_smoothing})")


class DiversePatchCriterion:
    """A training criterion for :func:`minivit.train.fit`: runs a model that
    exposes per-layer features and applies :class:`DiversePatchLoss`.

    The batch is ``(x, y)`` or, with CutMix patch labels, ``(x, y, patch_targets)``.
    ``parts`` holds the last batch's loss terms (ce, cos, contrastive, mixing) as floats."""

    def __init__(self, cos=1.0, contrastive=1.0, mixing=1.0):
        self.weights = dict(cos=cos, contrastive=contrastive, mixing=mixing)
        self.parts = {}
        DiversePatchLoss(**self.weights)                 # check the weights now

    def __call__(self, model, batch, cfg):
        if not hasattr(model, "patch_head"):
            raise ValueError(f"patch diversification needs a model that exposes per-layer patch features and a "
                             f"patch classifier (e.g. diverse_vit_fmnist); {type(model).__name__} does not")
        x, y = batch[0], batch[1]
        patch_targets = batch[2] if len(batch) > 2 else None
        logits, features = model(Tensor(x), return_features=True)
        loss_fn = DiversePatchLoss(**self.weights, label_smoothing=getattr(cfg, "label_smoothing", 0.0))
        loss = loss_fn(logits, features, y, patch_targets, model.patch_head)
        self.parts = loss_fn.parts                       # the last batch's terms, for logging
        return loss, logits

    def __repr__(self):
        return "DiversePatchCriterion(" + ", ".join(f"{k}={v}" for k, v in self.weights.items()) + ")"


# ================================================================== the model
class DiverseViT(VisionTransformer):
    """A ViT that also returns every block's patch tokens and has the patch
    classifier g (``patch_head``, one Linear shared by all patches).

    ``forward(x)`` -> logits (B, K), like ViT; ``forward(x, return_features=True)``
    -> ``(logits, [h^[1], ..., h^[L]])``, each (B, n, D), patch tokens after
    each block (class token dropped, before the final LayerNorm).
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("patch_drop_rate"):
            # an unexpected argument here (TypeError, as Python's own): the patch losses need every patch
            raise TypeError("DiverseViT does not take patch_drop_rate: the patch-wise losses use every patch")
        super().__init__(*args, **kwargs)
        self.patch_head = nn.Linear(self.embed_dim, self.num_classes)   # g, initialised like ViT's head
        init.trunc_normal_(self.patch_head.weight, std=0.02)
        init.zeros_(self.patch_head.bias)

    def forward_features(self, x, return_attention=False, return_features=False):
        if not return_features:
            return super().forward_features(x, return_attention=return_attention)
        if return_attention:
            raise ValueError("DiverseViT: ask for return_features or return_attention, not both")
        p = self.patch_embed.patch_size
        grid = (x.shape[2] // p, x.shape[3] // p)
        x = self._pos_embed(self.patch_embed(x), grid)
        feats = []
        for blk in self.blocks:
            x = blk(x)
            feats.append(x[:, self.num_prefix_tokens:])                # h^[l]: patch tokens only
        return self.norm(x), feats

    def forward(self, x, return_attention=False, return_features=False):
        if return_features:
            z, feats = self.forward_features(x, return_features=True)
            return self.forward_head(z), feats
        return super().forward(x, return_attention=return_attention)


@register_model
def diverse_vit_fmnist(**kw):
    """vit_fmnist (28x28x1, patch 4, dim 64, heads 4, mlp ratio 2) with the patch
    classifier; ``depth`` (default 6) is what the over-smoothing sweep varies."""
    cfg = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=6, num_heads=4,
               mlp_ratio=2.0)
    cfg.update(kw)
    return DiverseViT(**cfg)
