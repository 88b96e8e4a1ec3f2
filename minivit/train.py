"""Training and evaluation loops, metrics, run folders and resuming.

``fit`` trains any classifier from the registry with AdamW, a linear warm-up
then cosine learning-rate schedule, label smoothing, optional gradient
clipping and mixup/cutmix, and a tqdm progress bar. With ``out_dir`` it
leaves a run folder a student can look at::

    runs/vit_fmnist-0/
        config.json      every setting of the run
        metrics.csv      one row per epoch: losses, accuracies, lr, time, images/s
        checkpoint.npz   weights, optimizer and schedule state, epoch, RNG state
        curves.png       loss and accuracy curves
        confusion.png    test confusion matrix of the final model

The folder is rewritten after every tested epoch (so a run can be watched
and resumed); confusion.png is drawn once, after the last epoch, because
matplotlib takes ~0.6 s per figure, 2% of a default run's epoch.

Segmentation models (a model class with ``task = "segmentation"``, such as
``vt_seg_fmnist``) go through the same loop: they train on canvases of pasted
Fashion-MNIST items (``data.load_fashion_mnist_segmentation``) with a
per-pixel cross-entropy; metrics.csv then holds the pixel accuracy and the
mean IoU, and ``masks.png`` (predicted masks next to the true ones) takes the
place of confusion.png.

A run resumed from its folder continues exactly where it stopped: the data
order of epoch e depends only on (seed, e), and the random generator used by
dropout/drop-path is saved with the checkpoint.
"""
from __future__ import annotations

import csv
import json
import time
from io import StringIO
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

import minivit
from minivit import data as D
from minivit import functional as F
from minivit import io, optim
from minivit._allocator import tune_allocator
from minivit.tensor import Tensor, no_grad

__all__ = ["TrainConfig", "fit", "evaluate", "create_model", "supports_patch_drop", "cli_defaults",
           "build_transform", "cross_entropy_criterion", "task_of", "load_task_dataset", "segmentation_metrics"]


# What `python -m minivit train` uses unless told otherwise: a recipe tuned for a short run on the
# bundled 10k subset, aimed at about 5 minutes on 2 cores for vit_fmnist. Found with
# benchmarks/default_recipe.py (results in benchmarks/results/default_recipe.csv): with 6 epochs,
# batch 64 beat batch 128 and 32, and lr 3e-3 without label smoothing beat lr 2e-3 with it; with
# 8 epochs, lr 4e-3 reached 0.828 and lr 3e-3 0.826 (348 and 339 s on the slow 2-core machine of
# session 3). Seven runs of that 8-epoch recipe (seeds, code versions) ended between 0.8255 and
# 0.8435, mean 0.831; 10 epochs, flip, smoothing, beta2 0.98, EMA and average pooling were no better.
# Patch dropout was (benchmarks/recipe_probe.py, logs in benchmarks/results/logs/recipe_probe_*.log):
# dropping half of each image's 49 patch tokens in training makes a step about twice as cheap, so
# the same time buys 16 epochs instead of 8. Seeds 0-3 reached 0.840, 0.8335, 0.834, 0.8365 (mean
# 0.836) against 0.8255, 0.8435, 0.829, 0.826 without it, and a lower test loss in every pair
# (0.433-0.452 against 0.483-0.503). 14 epochs (0.821, 0.837) and dropping 65% for 22 epochs
# (0.8385, 360 s) were not better. Seeds 4-7 reached 0.833, 0.834, 0.833, 0.843: eight seeds, mean
# 0.836, sd 0.004. README, "Set up and run".
# TrainConfig's own defaults stay PAPERS.md's reference recipe (batch 128, lr 2e-3, smoothing 0.1).
CLI_DEFAULTS = {"epochs": 16, "batch_size": 64, "lr": 4e-3, "label_smoothing": 0.0, "patch_drop": 0.5}
# A model without patch dropout (CNNs, Swin, PVT, ...) trains 8 epochs instead: about the same compute.
CLI_DEFAULTS_WITHOUT_PATCH_DROP = {"epochs": 8, "patch_drop": 0.0}


def cli_defaults(model: str) -> dict:
    """The recipe `python -m minivit train --model MODEL` starts from (flags override it)."""
    d = dict(CLI_DEFAULTS)
    if not supports_patch_drop(model):
        d.update(CLI_DEFAULTS_WITHOUT_PATCH_DROP)
    return d


@dataclass
class TrainConfig:
    """Every knob of a training run (the command line exposes the common ones)."""
    model: str = "vit_fmnist"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.1              # fraction of all steps spent warming up
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    clip_grad: float = 0.0           # 0 = no clipping
    augment: str = "none"            # comma list of: flip, crop, erase  ("none" = no augmentation)
    mixup: float = 0.0               # Beta(alpha, alpha) for mixup; 0 = off
    cutmix: float = 0.0              # Beta(alpha, alpha) for cutmix; 0 = off
    seed: int = 0
    data: str | None = None          # None: bundled subset (or $MINIVIT_DATA)
    train_subset: int = 0            # use only the first n training images (0 = all)
    eval_every: int = 1              # test (and save the run folder) every k epochs and after the last;
                                     # the other epochs' test columns are NaN (many short epochs: small subsets)
    teacher: str | None = None       # DeiT: run folder / checkpoint of the teacher to distil from
    distill: str = "none"            # DeiT: "hard" or "soft" distillation from `teacher`; "none" = off
    distill_alpha: float = 0.5       # soft distillation: weight of the KL term
    distill_tau: float = 1.0         # soft distillation: temperature
    patch_drop: float = 0.0          # ViT family: fraction of each image's patch tokens dropped in training
                                     # (the model's patch_drop_rate, timm's PatchDropout); 0 = off
    diverse_patch: str = "none"      # patch diversification losses: comma list of cos, contrastive, mixing,
                                     # each optionally =weight (default 1), e.g. "cos,mixing=0.5"
    model_kwargs: dict = field(default_factory=dict)

    def validate(self):
        checks = [("epochs", self.epochs >= 1, "an integer >= 1"),
                  ("batch_size", self.batch_size >= 1, "an integer >= 1"),
                  ("lr", self.lr > 0, "a number > 0"),
                  ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
                  ("warmup", 0 <= self.warmup < 1, "a fraction in [0, 1)"),
                  ("label_smoothing", 0 <= self.label_smoothing < 1, "a number in [0, 1)"),
                  ("patch_drop", 0 <= self.patch_drop < 1, "a fraction in [0, 1)"),
                  ("clip_grad", self.clip_grad >= 0, "a number >= 0"),
                  ("eval_every", self.eval_every >= 1, "an integer >= 1"),
                  ("mixup", self.mixup >= 0, "a number >= 0"),
                  ("cutmix", self.cutmix >= 0, "a number >= 0")]
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")
        if self.distill not in ("none", "hard", "soft"):
            raise ValueError(f"distill must be 'hard', 'soft' or 'none', got {self.distill!r}")
        if (self.distill != "none") != bool(self.teacher):
            raise ValueError(f"distill={self.distill!r} and teacher={self.teacher!r}: distillation needs both a "
                             f"teacher and distill='hard' or 'soft' (or neither)")
        if not (0.0 <= self.distill_alpha <= 1.0 and self.distill_tau > 0):
            raise ValueError(f"distill_alpha must be in [0, 1] and distill_tau > 0, got {self.distill_alpha!r} "
                             f"and {self.distill_tau!r}")
        diverse_weights(self)                            # raises on a bad --diverse-patch
        bad = set(a.strip() for a in self.augment.split(",")) - {"none", "flip", "crop", "erase", ""}
        if bad:
            raise ValueError(f"augment: unknown augmentation(s) {sorted(bad)}; choose from flip, crop, erase, none")

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def create_model(cfg: TrainConfig):
    """The model ``cfg`` trains: ``cfg.model`` with ``cfg.model_kwargs``, and patch dropout
    (``patch_drop_rate``) when ``cfg.patch_drop`` > 0; a clear error for a model without it."""
    from minivit import models
    kwargs = dict(cfg.model_kwargs)
    if cfg.patch_drop > 0:
        kwargs["patch_drop_rate"] = cfg.patch_drop
    try:
        return models.create(cfg.model, **kwargs)
    except TypeError as e:
        if cfg.patch_drop > 0 and "patch_drop_rate" in str(e):
            raise ValueError(f"patch_drop={cfg.patch_drop}: model {cfg.model!r} has no patch dropout (it takes "
                             f"the ViT family's patch_drop_rate, e.g. vit_fmnist, deit_fmnist)") from None
        raise


def supports_patch_drop(name: str) -> bool:
    """Does the registered model ``name`` take ``patch_drop_rate`` (timm's PatchDropout)?
    Builds the model once to find out, and leaves minivit's random generator as it was."""
    from minivit import models
    state = _rng_state()
    try:
        models.create(name, patch_drop_rate=0.5)
    except TypeError as e:
        if "patch_drop_rate" in str(e):
            return False
        raise
    finally:
        _set_rng_state(state)
    return True


def diverse_weights(cfg) -> dict:
    """``cfg.diverse_patch`` as {"cos": a_1, "contrastive": a_2, "mixing": a_3} ({} for "none")."""
    spec = (cfg.diverse_patch or "none").strip()
    if spec == "none":
        return {}
    weights = {"cos": 0.0, "contrastive": 0.0, "mixing": 0.0}
    for part in spec.split(","):
        name, _, w = part.strip().partition("=")
        if name not in weights:
            raise ValueError(f"diverse_patch: unknown loss {name!r} in {spec!r}; choose from cos, contrastive, "
                             f"mixing (each optionally =weight), or none")
        try:
            weights[name] = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"diverse_patch: the weight of {name} must be a number, got {w!r}") from None
        if not weights[name] >= 0:
            raise ValueError(f"diverse_patch: the weight of {name} must be >= 0, got {w!r}")
    return weights


def build_transform(cfg: TrainConfig, num_classes: int = 10, patch_size: int | None = None):
    """The training-time augmentation pipeline of a config (normalisation last).

    With the patch-diversification mixing loss on, CutMix is drawn on the patch
    grid (``patch_size``) and also yields the per-patch labels that loss needs."""
    steps = []
    aug = {a.strip() for a in cfg.augment.split(",")}
    if "crop" in aug:
        steps.append(D.RandomCrop(size=28, padding=2))
    if "flip" in aug:
        steps.append(D.RandomHorizontalFlip())
    steps.append(D.Normalize())
    if "erase" in aug:
        steps.append(D.RandomErasing())
    if cfg.mixup > 0:
        steps.append(D.Mixup(alpha=cfg.mixup, num_classes=num_classes))
    if diverse_weights(cfg).get("mixing"):
        if patch_size is None:
            raise ValueError("diverse_patch mixing needs a model with a patch grid (patch_embed.patch_size)")
        steps.append(D.CutMix(alpha=cfg.cutmix or 1.0, num_classes=num_classes, patch_size=patch_size,
                              align_to_patches=True))
    elif cfg.cutmix > 0:
        steps.append(D.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    return D.Compose(steps)


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    if logits.ndim == 4:                                 # segmentation: (B, K, H, W) vs (B, H, W)
        return float((logits.argmax(1) == y).mean())
    target = y.argmax(-1) if y.ndim == 2 else y
    return float((logits.argmax(-1) == target).mean())


TASKS = ("classification", "segmentation")


def task_of(model) -> str:
    """What a model predicts: its class attribute ``task`` ("classification" if it has none)."""
    task = getattr(model, "task", "classification")
    if task not in TASKS:
        raise ValueError(f"{type(model).__name__}.task is {task!r}; expected one of {', '.join(TASKS)}")
    return task


def load_task_dataset(model, root=None, split: str = "train"):
    """The dataset ``model`` trains and is tested on: Fashion-MNIST for a classifier;
    for a segmentation model, canvases of its ``canvas_size`` made from the items
    of that split (``data.load_fashion_mnist_segmentation``). ``root`` as in
    ``data.load_fashion_mnist`` (None: the bundled subset or $MINIVIT_DATA)."""
    if task_of(model) == "segmentation":
        return D.load_fashion_mnist_segmentation(root, split, canvas_size=getattr(model, "canvas_size", 56))
    return D.load_fashion_mnist(root, split)


def _check_dataset(model, dataset, where):
    seg_data = isinstance(dataset, D.SegmentationDataset)
    if task_of(model) == "segmentation" and not seg_data:
        raise ValueError(f"{where}: {type(model).__name__} is a segmentation model (task='segmentation') but the "
                         f"dataset is a {type(dataset).__name__}; give it a data.SegmentationDataset "
                         f"(e.g. data.load_fashion_mnist_segmentation())")
    if task_of(model) == "classification" and seg_data:
        raise ValueError(f"{where}: {type(model).__name__} is a classifier but the dataset holds label maps "
                         f"(a SegmentationDataset); give it one label per image (e.g. data.load_fashion_mnist())")


def segmentation_metrics(confusion: np.ndarray) -> dict:
    """Pixel accuracy and IoU from a (K, K) pixel confusion matrix (rows: true, columns: predicted).

    pixel accuracy = trace / total;  IoU_c = TP_c / (TP_c + FP_c + FN_c), the
    overlap of the true and predicted regions of class c over their union.
    mIoU is the mean of IoU_c over the classes whose union is not empty
    (classes neither present nor predicted are left out, as ``nan`` in ``iou``).
    """
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(c)
    union = c.sum(0) + c.sum(1) - tp                     # predicted + true - both
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {"pixel_acc": float(tp.sum() / max(c.sum(), 1)),
            "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"), "iou": iou}


def _evaluate_segmentation(model, dataset, batch_size, num_classes, num_examples):
    loader = D.DataLoader(dataset, batch_size=batch_size, shuffle=False, transform=D.Normalize())
    k = num_classes or len(dataset.classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    total_loss, n_pix, examples = 0.0, 0, []
    with no_grad():
        for x, y in loader:
            logits = model(Tensor(x))                                    # (B, K, H, W)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum").data)
            pred = logits.data.argmax(1)                                 # (B, H, W)
            confusion += np.bincount((y * k + pred).ravel(), minlength=k * k).reshape(k, k)
            n_pix += y.size
            if sum(len(e[0]) for e in examples) < num_examples:
                examples.append((x, y, pred))
    m = segmentation_metrics(confusion)
    xs, ys, ps = (np.concatenate([e[i] for e in examples])[:num_examples] for i in range(3))
    images = xs * D.FMNIST_STD + D.FMNIST_MEAN                           # undo Normalize for plots
    return {"loss": total_loss / n_pix, "acc": m["pixel_acc"], "pixel_acc": m["pixel_acc"], "miou": m["miou"],
            "iou": m["iou"], "confusion": confusion,
            "examples": {"images": images, "masks": ys, "preds": ps}}


def evaluate(model, dataset, batch_size: int = 128, num_classes: int | None = None,
             num_examples: int = 6) -> dict:
    """Loss, accuracy and confusion matrix of ``model`` on ``dataset`` (eval mode, no graph).

    Segmentation models (``task = "segmentation"``) get the mean per-pixel
    loss, ``pixel_acc`` (also as ``acc``), ``miou``, per-class ``iou``, the
    pixel confusion matrix and ``examples``: the first ``num_examples``
    images (un-normalised), true masks and predicted masks, for plots.
    """
    _check_dataset(model, dataset, "evaluate")
    was_training = model.training
    if task_of(model) == "segmentation":
        model.eval()
        try:
            return _evaluate_segmentation(model, dataset, batch_size, num_classes, num_examples)
        finally:
            model.train(was_training)
    model.eval()
    loader = D.DataLoader(dataset, batch_size=batch_size, shuffle=False, transform=D.Normalize())
    total_loss, preds, labels = 0.0, [], []
    with no_grad():
        for x, y in loader:
            logits = model(Tensor(x))
            total_loss += float(F.cross_entropy(logits, y, reduction="sum").data)
            preds.append(logits.data.argmax(-1))
            labels.append(y)
    model.train(was_training)
    preds, labels = np.concatenate(preds), np.concatenate(labels)
    k = num_classes or int(max(preds.max(), labels.max()) + 1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    return {"loss": total_loss / len(labels), "acc": float((preds == labels).mean()), "confusion": confusion}


def _rng_state():
    return minivit.get_rng().bit_generator.state


def _set_rng_state(state):
    minivit.manual_seed(0).bit_generator.state = state


def cross_entropy_criterion(model, batch, cfg):
    """The default training loss: cross-entropy with label smoothing.

    A criterion maps ``(model, batch, cfg)`` to ``(loss Tensor, logits)``;
    ``batch`` is what the DataLoader yields, ``(x, y)`` or ``(x, y, extra)``.
    A model with two heads (DeiT's distilled models return ``(Z_s, Z_d)`` in
    training mode) trained without a teacher gets the mean of both heads'
    losses, and the mean of their logits is what it predicts. Papers with
    their own training losses (DeiT's distillation, patch diversification)
    pass another criterion to :func:`fit`.
    """
    x, y = batch[0], batch[1]
    out = model(Tensor(x))
    if isinstance(out, tuple):
        losses = [F.cross_entropy(z, y, label_smoothing=cfg.label_smoothing) for z in out]
        logits = Tensor(sum(z.data for z in out) / len(out))
        return sum(losses[1:], losses[0]) * (1.0 / len(out)), logits
    return F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing), out


def _check_segmentation_config(cfg: TrainConfig):
    """Settings that make no sense for label maps fail before any work."""
    aug = {a.strip() for a in cfg.augment.split(",")} - {"none", ""}
    if aug:
        raise ValueError(f"augment={cfg.augment!r}: {cfg.model} is a segmentation model and augmentations would move "
                         f"the image but not its label map; use augment='none'")
    for name in ("mixup", "cutmix"):
        if getattr(cfg, name):
            raise ValueError(f"{name}={getattr(cfg, name)!r}: {cfg.model} is a segmentation model; "
                             f"{name} mixes image labels, not label maps (use 0)")
    if cfg.distill != "none":
        raise ValueError(f"distill={cfg.distill!r}: distillation is for classifiers; {cfg.model} is a segmentation model")
    if diverse_weights(cfg):
        raise ValueError(f"diverse_patch={cfg.diverse_patch!r}: the patch-diversification losses are for ViT "
                         f"classifiers; {cfg.model} is a segmentation model")


def default_criterion(cfg: TrainConfig, model):
    """The criterion a config asks for: DeiT distillation from ``cfg.teacher``
    when ``cfg.distill`` is "hard" or "soft", the patch-diversification losses
    when ``cfg.diverse_patch`` names any, else :func:`cross_entropy_criterion`."""
    weights = diverse_weights(cfg)
    if weights and cfg.distill != "none":
        raise ValueError("diverse_patch and distill cannot be combined in one run")
    if weights:
        from minivit.models.diverse_patch import DiversePatchCriterion
        return DiversePatchCriterion(**weights)
    if cfg.distill == "none":
        return cross_entropy_criterion
    from minivit.models.deit import DistillationCriterion, load_teacher
    if not hasattr(model, "forward_heads"):
        raise ValueError(f"distill={cfg.distill!r} needs a distilled student with a distillation head "
                         f"(e.g. deit_fmnist); {cfg.model} has one head")
    teacher = load_teacher(cfg.teacher, num_classes=getattr(model, "num_classes", None))
    return DistillationCriterion(teacher, kind=cfg.distill, alpha=cfg.distill_alpha, tau=cfg.distill_tau)


def fit(cfg: TrainConfig | None = None, *, model=None, train_set=None, test_set=None,
        out_dir=None, resume: bool = False, progress: bool = True, log=print,
        criterion=None) -> dict:
    """Train ``cfg.model`` (or the given ``model``) and return the history.

    With ``out_dir`` the run folder is written after every epoch (checkpoint
    included); ``resume=True`` continues from the checkpoint in ``out_dir``.
    ``criterion(model, batch, cfg) -> (loss, logits)`` computes the training
    loss (default: :func:`cross_entropy_criterion`); evaluation always uses
    the model's logits in eval mode. ``criterion=None`` picks
    :func:`default_criterion` (cross-entropy, or DeiT distillation when the
    config names a teacher).
    Returns ``{"history": [per-epoch dicts], "model": model, "final": last test metrics}``.
    """
    cfg = cfg or TrainConfig()
    cfg.validate()
    tune_allocator()
    minivit.manual_seed(cfg.seed)
    if model is None:
        model = create_model(cfg)
    segmentation = task_of(model) == "segmentation"
    if segmentation:
        _check_segmentation_config(cfg)
    if train_set is None:
        train_set = load_task_dataset(model, cfg.data, "train")
    if test_set is None:
        test_set = load_task_dataset(model, cfg.data, "test")
    _check_dataset(model, train_set, "fit: train_set")
    _check_dataset(model, test_set, "fit: test_set")
    if cfg.train_subset:
        n = min(cfg.train_subset, len(train_set))
        if segmentation:
            train_set = train_set.subset(n)
        else:
            train_set = D.ArrayDataset(train_set.images[:n], train_set.labels[:n], train_set.classes)
    num_classes = getattr(model, "num_classes", 10)
    if criterion is None:
        criterion = default_criterion(cfg, model)

    loader = D.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                          seed=cfg.seed, transform=build_transform(
                              cfg, num_classes, getattr(getattr(model, "patch_embed", None), "patch_size", None)))
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the training set ({len(train_set)} images)")
    total = steps_per_epoch * cfg.epochs
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    opt = optim.AdamW(optim.param_groups_weight_decay(model, cfg.weight_decay, skip), lr=cfg.lr)
    sched = optim.CosineWarmupScheduler(opt, warmup_steps=int(cfg.warmup * total), total_steps=total,
                                        min_lr=cfg.min_lr)

    history, start_epoch = [], 0
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and resume:
        meta = io.load(model, out / "checkpoint.npz", optimizer=opt, scheduler=sched)
        start_epoch = int(meta["epoch"]) + 1
        history = meta.get("history", [])
        _set_rng_state(meta["rng_state"])
        log(f"resumed {out} after epoch {start_epoch}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        io.atomic_write_bytes(out / "config.json", json.dumps(asdict(cfg), indent=2).encode())

    from tqdm.auto import tqdm
    model.train()
    final = None
    for epoch in range(start_epoch, cfg.epochs):
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum = acc_sum = 0.0
        n_seen = 0
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=True, dynamic_ncols=True)
        for batch in bar:
            x, y = batch[0], batch[1]
            loss, logits = criterion(model, batch, cfg)
            opt.zero_grad()
            loss.backward()
            if cfg.clip_grad:
                optim.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            sched.step()
            b = len(x)
            loss_sum += float(loss.data) * b
            acc_sum += _accuracy(logits.data, y) * b
            n_seen += b
            bar.set_postfix(loss=f"{loss_sum / n_seen:.3f}", **{"pix_acc" if segmentation else "acc": f"{acc_sum / n_seen:.3f}"},
                            img_s=f"{n_seen / (time.perf_counter() - t0):.0f}", refresh=False)
        train_time = time.perf_counter() - t0
        tested = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        if tested:
            final = evaluate(model, test_set, num_classes=num_classes)
        else:                                            # an epoch without a test: NaN in the test columns
            nan = float("nan")
            final = {"loss": nan, "acc": nan, "pixel_acc": nan, "miou": nan}
        if segmentation:
            row = {"epoch": epoch + 1, "train_loss": loss_sum / n_seen, "train_pixel_acc": acc_sum / n_seen,
                   "test_loss": final["loss"], "test_pixel_acc": final["pixel_acc"], "test_miou": final["miou"],
                   "lr": sched.get_last_lr()[0], "epoch_time_s": train_time, "images_per_s": n_seen / train_time}
        else:
            row = {"epoch": epoch + 1, "train_loss": loss_sum / n_seen, "train_acc": acc_sum / n_seen,
                   "test_loss": final["loss"], "test_acc": final["acc"], "lr": sched.get_last_lr()[0],
                   "epoch_time_s": train_time, "images_per_s": n_seen / train_time}
        history.append(row)
        if out is not None and tested:
            _write_run(out, model, opt, sched, epoch, history, final, cfg, last=epoch + 1 == cfg.epochs)
        if segmentation:
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} pixel acc "
                f"{row['train_pixel_acc']:.4f} | test loss {row['test_loss']:.4f} pixel acc "
                f"{row['test_pixel_acc']:.4f} mIoU {row['test_miou']:.4f} | {train_time:.1f} s, "
                f"{row['images_per_s']:.0f} img/s")
        else:
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f} | {train_time:.1f} s, "
                f"{row['images_per_s']:.0f} img/s")
    if final is None:
        final = evaluate(model, test_set, num_classes=num_classes)
    return {"history": history, "model": model, "final": final}


def _write_run(out: Path, model, opt, sched, epoch, history, final, cfg, last: bool = True):
    io.save(model, out / "checkpoint.npz", optimizer=opt, scheduler=sched, epoch=epoch,
            history=history, rng_state=_rng_state(), config=asdict(cfg))
    text = StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    io.atomic_write_bytes(out / "metrics.csv", text.getvalue().encode())
    from minivit import viz
    viz.save_figure(viz.plot_curves(history), out / "curves.png")
    if not last:                                         # the confusion matrix / masks: final model only
        return
    if "examples" in final:                              # segmentation: masks instead of a confusion matrix
        ex = final["examples"]
        viz.save_figure(viz.plot_masks(ex["images"], ex["masks"], ex["preds"], D.SEG_CLASSES), out / "masks.png")
    else:
        viz.save_figure(viz.plot_confusion(final["confusion"], D.CLASSES), out / "confusion.png")
