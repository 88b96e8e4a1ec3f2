"""DeiT: data-efficient image transformers and distillation through attention.

Touvron, Cord, Douze, Massa, Sablayrolles, Jégou, "Training data-efficient image
transformers & distillation through attention", ICML 2021.
https://arxiv.org/abs/2012.12877
Official code: https://github.com/facebookresearch/deit (``models.py``: the
``DistilledVisionTransformer``; ``losses.py``: ``DistillationLoss``); timm's
``deit.py`` (``VisionTransformerDistilled``) has the same names and outputs.

The idea (course section 4): a convolution is local by construction, a ViT has to
learn locality from data. DeiT lets a convnet *teacher* pass that bias on: a
second learned token, the distillation token, travels through the transformer next
to the class token and is trained to reproduce the teacher's predictions.

The equations, for the N patch embeddings x_p^i E of an image x (ViT, chapter 02):

    z_0 = [x_cls ; x_dist ; x_p^1 E ; ... ; x_p^N E] + E_pos          E_pos: (N + 2, D)
    z_L = the L ViT blocks applied to z_0,  then LN
    Z_s = head(z_L^0)            (class token)          Z_d = head_dist(z_L^1)   (distillation token)
    at test time:  logits = (Z_s + Z_d) / 2                (the *logits* are averaged)

and, with the teacher's logits Z_t on the same (augmented) image, psi = softmax,
true label y, lambda = ``alpha`` and temperature tau:

    soft:  L = (1 - lambda) L_CE(psi(Z_s), y) + lambda tau^2 KL(psi(Z_t / tau) || psi(Z_d / tau))
    hard:  L = (1 - lambda) L_CE(psi(Z_s), y) + lambda L_CE(psi(Z_d), y_t),   y_t = argmax_c Z_t(c)

(the paper's hard loss has lambda = 1/2, the default here).

Symbols -> variables: x_cls -> ``cls_token``; x_dist -> ``dist_token``; E_pos ->
``pos_embed`` (198 rows at 224: cls, then dist, then the 196 patches); ``head`` and
``head_dist`` give Z_s and Z_d; Z_t -> ``teacher(x)``; lambda -> ``alpha``; tau ->
``tau``; L_CE(psi(Z_s), y) -> ``base`` (cross-entropy with the run's label
smoothing, or with mixed soft labels under mixup/cutmix); the two losses ->
``DistillationLoss(kind="soft" | "hard")``.

Training and evaluation: in training mode the model returns ``(Z_s, Z_d)``, in
eval mode ``(Z_s + Z_d) / 2`` (as the official ``DistilledVisionTransformer``;
timm returns the average in training too unless ``set_distilled_training(True)``).
``DistillationCriterion`` plugs the loss into ``minivit.train.fit``;
``load_teacher`` reads a trained teacher (``cnn_fmnist``, ``models/cnn.py``) from a
run folder or checkpoint.

What the reference code does differently from the paper:

- The soft term: the paper writes a KL divergence per image; ``losses.py`` sums the
  KL over the batch and the classes and divides by the number of logit entries
  (B * num_classes), so its soft term is num_classes times smaller than a per-image
  KL. minivit follows ``losses.py``.
- The hard target y_t is the argmax of the teacher on the *same augmented* (and, in
  the official recipe, mixed) image, with no label smoothing; the class token's
  cross-entropy uses the (smoothed or mixed) true labels.
- With ``kind="none"`` only the class head is trained (``losses.py`` returns the
  base loss), yet evaluation still averages both heads.
- Init: the official code (timm 0.3.2) draws cls_token, dist_token and pos_embed
  from trunc-normal(0.02), as minivit does; current timm draws cls_token from
  normal(1e-6). The state-dict names are timm's, so timm weights load 1:1 (the key
  map, ``TIMM_KEY_MAP`` below, is empty).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minivit import functional as F
from minivit import init, io, nn
from minivit.models import register_model
from minivit.models.vit import VisionTransformer, resize_pos_embed
from minivit.tensor import Tensor, no_grad

__all__ = ["VisionTransformerDistilled", "DeiT", "DistillationLoss", "DistillationCriterion",
           "load_teacher", "TIMM_KEY_MAP"]

# timm name -> minivit name. timm's VisionTransformerDistilled and minivit use the
# same names (``dist_token``, ``head_dist``, ``blocks.0.attn.qkv.weight`` ...), so
# nothing needs renaming; the official DeiT checkpoints (``checkpoint["model"]``)
# use them too.
TIMM_KEY_MAP: dict = {}


class VisionTransformerDistilled(VisionTransformer):
    """ViT with a distillation token and a second head (DeiT, the "⚗" models).

    Everything of :class:`~minivit.models.vit.VisionTransformer` is reused; only
    the token sequence and the head change. ``forward(x)`` maps (B, C, H, W) to
    ``(Z_s, Z_d)``, two (B, num_classes) logits, in training mode and to their
    average in eval mode (``set_distilled_training(False)`` gives the average in
    training too). ``forward_heads(x)`` returns both in any mode;
    ``return_attention=True`` also returns the attention maps (B, heads, N+2, N+2).
    """

    num_prefix_tokens = 2           # cls, dist: the parent builds a (1, N + 2, D) pos_embed

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        D = self.embed_dim
        self.dist_token = nn.Parameter(np.zeros((1, 1, D), np.float32))
        self.head_dist = nn.Linear(D, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.distilled_training = True
        self.init_weights()

    def init_weights(self):
        """The official DeiT init: trunc-normal(0.02) for cls_token, dist_token,
        pos_embed and the Linear weights (zero biases), LayerNorm 1/0."""
        super().init_weights()                           # pos_embed, Linear layers (head_dist once it exists)
        init.trunc_normal_(self.cls_token, std=0.02)
        if "dist_token" in self._parameters:             # not yet while the parent's __init__ runs
            init.trunc_normal_(self.dist_token, std=0.02)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token", "dist_token"}

    def set_distilled_training(self, enable: bool = True):
        """In training mode return both heads' logits (True, the default) or their average."""
        self.distilled_training = bool(enable)
        return self

    def _pos_embed(self, x, grid):
        """Prepend the class and distillation tokens, then add E_pos: (B, N, D) -> (B, 2+N, D)."""
        B = x.shape[0]
        cls = self.cls_token.expand(B, -1, -1)                       # (B, 1, D)  x_cls
        dist = self.dist_token.expand(B, -1, -1)                     # (B, 1, D)  x_dist
        x = F.cat([cls, dist, x], dim=1)                             # (B, 2+N, D)
        pos = resize_pos_embed(self.pos_embed, self.patch_embed.grid_size, grid, self.num_prefix_tokens)
        return self.pos_drop(x + pos)                                # z_0 = [...] + E_pos

    def forward_heads(self, x):
        """(B, C, H, W) -> (Z_s, Z_d): the class head's and the distillation head's logits."""
        z = self.forward_features(x)                                 # (B, 2+N, D), after the final LN
        return self.head(z[:, 0]), self.head_dist(z[:, 1])

    def forward_head(self, x):
        z_s, z_d = self.head(x[:, 0]), self.head_dist(x[:, 1])      # (B, K) each
        if self.training and self.distilled_training:
            return z_s, z_d
        return (z_s + z_d) * 0.5                                     # average of the logits


DeiT = VisionTransformerDistilled


# ================================================================== the loss
_KINDS = ("none", "soft", "hard")


def _check_loss_args(kind, alpha, tau, teacher):
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of 'hard', 'soft', 'none', got {kind!r}")
    if not (isinstance(alpha, (int, float, np.floating)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha (the weight of the distillation term) must be a number in [0, 1], got {alpha!r}")
    if not (isinstance(tau, (int, float, np.floating)) and tau > 0):
        raise ValueError(f"tau (the distillation temperature) must be a number > 0, got {tau!r}")
    if kind != "none" and teacher is None:
        raise ValueError(f"kind={kind!r} distillation needs a teacher, got teacher=None "
                         f"(use kind='none' to train without one)")


class DistillationLoss:
    """DeiT's training loss, as ``losses.py`` of the official code.

    ``DistillationLoss(base, teacher, kind="hard", alpha=0.5, tau=1.0)``;
    ``loss = criterion(inputs, outputs, labels)`` where

    - ``base(logits, labels) -> Tensor`` is the loss of the class head against the
      true labels (e.g. ``F.cross_entropy`` with label smoothing);
    - ``teacher`` maps ``inputs`` to logits (B, K); it runs under ``no_grad`` on the
      very same (augmented) inputs the student saw;
    - ``outputs`` is the student's ``(Z_s, Z_d)`` (a single Tensor is allowed only
      with ``kind="none"``).

    kind="none": L = base(Z_s, y)
    kind="soft": L = (1-alpha) base(Z_s, y)
                     + alpha * tau^2 * sum KL(psi(Z_t/tau) || psi(Z_d/tau)) / Z_d.size
    kind="hard": L = (1-alpha) base(Z_s, y) + alpha * CE(Z_d, argmax Z_t)
    """

    def __init__(self, base, teacher, kind: str = "hard", alpha: float = 0.5, tau: float = 1.0):
        _check_loss_args(kind, alpha, tau, teacher)
        self.base, self.teacher, self.kind = base, teacher, kind
        self.alpha, self.tau = float(alpha), float(tau)

    def teacher_logits(self, inputs) -> np.ndarray:
        """Z_t: the teacher's logits on ``inputs``, computed without a graph (B, K)."""
        x = inputs if isinstance(inputs, Tensor) else Tensor(np.asarray(inputs))
        with no_grad():
            out = self.teacher(x)
        if isinstance(out, tuple):
            raise TypeError("the teacher returned two outputs (a distilled model in training mode?); "
                            "put the teacher in eval mode with teacher.eval()")
        return out.data

    def __call__(self, inputs, outputs, labels) -> Tensor:
        z_d = None
        if isinstance(outputs, tuple):
            if len(outputs) != 2:
                raise ValueError(f"outputs must be (class logits, distillation logits), got {len(outputs)} tensors")
            outputs, z_d = outputs
        base_loss = self.base(outputs, labels)
        if self.kind == "none":
            return base_loss
        if z_d is None:
            raise ValueError("distillation needs the student's two outputs (Z_s, Z_d): use a distilled model "
                             "(VisionTransformerDistilled, e.g. deit_fmnist) in training mode, or kind='none'")
        z_t = self.teacher_logits(inputs)
        if z_t.shape != tuple(z_d.shape):
            raise ValueError(f"the teacher's logits have shape {z_t.shape} but the student's distillation head "
                             f"gives {tuple(z_d.shape)}: teacher and student must predict the same classes "
                             f"(teacher {z_t.shape[-1]}, student {z_d.shape[-1]})")
        T = self.tau
        if self.kind == "soft":
            log_p_s = F.log_softmax(z_d * (1.0 / T), dim=1)                           # log psi(Z_d / tau)
            log_p_t = F.log_softmax(Tensor(z_t.astype(z_d.dtype) / T), dim=1)         # log psi(Z_t / tau), a constant
            kd = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) * (T * T / z_d.data.size)
        else:
            y_t = z_t.argmax(axis=1)                                                  # the teacher's hard decision
            kd = F.cross_entropy(z_d, y_t)
        return base_loss * (1.0 - self.alpha) + kd * self.alpha


def _average(outputs) -> Tensor:
    """The logits evaluation would give: (Z_s + Z_d)/2 for a pair, as is otherwise (no graph)."""
    if isinstance(outputs, tuple):
        return Tensor((outputs[0].data + outputs[1].data) * 0.5)
    return outputs


class DistillationCriterion:
    """A training criterion for :func:`minivit.train.fit` that distils from a teacher.

    ``fit(cfg, criterion=DistillationCriterion(teacher, kind="hard"))``. For each
    batch ``(x, y)`` it runs the student on x, the teacher (frozen, eval mode,
    ``no_grad``) on the same x, and returns ``(DistillationLoss(...), logits)``
    with logits = (Z_s + Z_d)/2, what evaluation predicts. The class head's loss is
    cross-entropy with the run's ``cfg.label_smoothing`` (soft labels under
    mixup/cutmix). ``teacher=None`` is allowed with ``kind="none"``.
    """

    def __init__(self, teacher, kind: str = "hard", alpha: float = 0.5, tau: float = 1.0):
        _check_loss_args(kind, alpha, tau, teacher)
        self.teacher, self.kind, self.alpha, self.tau = teacher, kind, float(alpha), float(tau)
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def _check_classes(self, model):
        if self.teacher is None:
            return
        t, s = getattr(self.teacher, "num_classes", None), getattr(model, "num_classes", None)
        if t is not None and s is not None and t != s:
            raise ValueError(f"the teacher predicts {t} classes but the student ({type(model).__name__}) "
                             f"predicts {s}: they must match")

    def __call__(self, model, batch, cfg):
        x, y = batch[0], batch[1]
        self._check_classes(model)
        if self.teacher is not None:
            self.teacher.eval()                          # BatchNorm uses its running statistics
        outputs = model(Tensor(x))

        def base(logits, labels):
            return F.cross_entropy(logits, labels, label_smoothing=getattr(cfg, "label_smoothing", 0.0))
        loss = DistillationLoss(base, self.teacher, self.kind, self.alpha, self.tau)(x, outputs, y)
        return loss, _average(outputs)

    def __repr__(self):
        t = type(self.teacher).__name__ if self.teacher is not None else None
        return f"DistillationCriterion(teacher={t}, kind={self.kind!r}, alpha={self.alpha}, tau={self.tau})"


def load_teacher(run_or_checkpoint, num_classes: int | None = None, model: str | None = None):
    """Load a trained teacher from a run folder (``runs/cnn_fmnist-seed0``) or a
    ``checkpoint.npz`` written by ``fit``/``python -m minivit train``.

    The checkpoint names its model in ``meta["config"]["model"]`` (``model=``
    overrides it). With ``num_classes`` (the student's) a teacher that predicts a
    different number of classes is an error. Returns the model in eval mode with
    its parameters frozen.
    """
    from minivit import models
    path = Path(run_or_checkpoint)
    if path.is_dir():
        if not (path / "checkpoint.npz").is_file():
            raise FileNotFoundError(f"teacher {path} is a folder without checkpoint.npz: give a run folder "
                                    f"made by `python -m minivit train` or a checkpoint .npz file")
        path = path / "checkpoint.npz"
    try:
        ckpt = io.read_checkpoint(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"teacher {path} does not exist: give a run folder or a checkpoint .npz file") from None
    except ValueError as e:
        raise ValueError(f"teacher: {e}") from None
    cfg = ckpt["meta"].get("config") or {}
    name = model or cfg.get("model")
    if not name:
        raise ValueError(f"teacher {path} does not record its model (meta['config']['model']); "
                         f"pass model=<registered name>")
    teacher = models.create(name, **(cfg.get("model_kwargs") or {}))
    try:
        teacher.load_state_dict(ckpt["model"])
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise ValueError(f"teacher {path} does not fit model {name!r}: {msg}") from None
    k = getattr(teacher, "num_classes", None)
    if num_classes is not None and k is not None and k != num_classes:
        raise ValueError(f"teacher {path} ({name}) predicts {k} classes but the student predicts "
                         f"{num_classes}: they must match")
    return teacher.eval().requires_grad_(False)


# ================================================================== configs
@register_model
def deit_fmnist(**kw):
    """Distilled DeiT for 28x28x1 Fashion-MNIST: vit_fmnist (patch 4, dim 64, depth 6,
    4 heads, MLP ratio 2) plus the distillation token and head (206,740 parameters)."""
    cfg = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=6,
               num_heads=4, mlp_ratio=2.0)
    cfg.update(kw)
    return VisionTransformerDistilled(**cfg)


@register_model
def deit_tiny_patch16_224(**kw):
    """DeiT-Ti (no distillation token; a ViT-Ti/16 trained the DeiT way): 5,717,416
    parameters, 72.2% ImageNet top-1."""
    cfg = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=192, depth=12,
               num_heads=3, mlp_ratio=4.0)
    cfg.update(kw)
    return VisionTransformer(**cfg)


@register_model
def deit_tiny_distilled_patch16_224(**kw):
    """DeiT-Ti⚗: 198-token position embedding, two heads, 5,910,800 parameters, 74.5% top-1."""
    cfg = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=192, depth=12,
               num_heads=3, mlp_ratio=4.0)
    cfg.update(kw)
    return VisionTransformerDistilled(**cfg)
