"""Plots for run folders and chapters: curves, confusion matrices, patches,
attention maps. Built on ``matplotlib.figure.Figure`` (no pyplot state), so
they work the same in a terminal, a test and a notebook.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from minivit.io import atomic_write_bytes

__all__ = ["plot_curves", "plot_confusion", "save_figure", "show_patches", "attention_rollout",
           "plot_masks", "label_colors"]


def save_figure(fig: Figure, path, dpi: int = 100) -> None:
    """Save a figure as PNG atomically."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_curves(history: list[dict]) -> Figure:
    """Loss and accuracy per epoch (train and test) from ``fit``'s history.

    A segmentation history (``train_pixel_acc``, ``test_pixel_acc``,
    ``test_miou`` columns) gets pixel accuracy and the test mIoU instead.
    """
    ep = [h["epoch"] for h in history]
    tested = [h for h in history if h.get("test_loss") == h.get("test_loss")]   # not NaN: fit's eval_every
    te = [h["epoch"] for h in tested]
    fig = Figure(figsize=(9, 3.2))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(te, [h["test_loss"] for h in tested], "s-", label="test")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    if history and "test_miou" in history[0]:
        ax2.plot(ep, [h["train_pixel_acc"] for h in history], "o-", label="train pixel accuracy")
        ax2.plot(te, [h["test_pixel_acc"] for h in tested], "s-", label="test pixel accuracy")
        ax2.plot(te, [h["test_miou"] for h in tested], "^-", label="test mIoU")
        ax2.set(xlabel="epoch", ylabel="fraction", title="pixel accuracy and mIoU")
    else:
        ax2.plot(ep, [h["train_acc"] for h in history], "o-", label="train")
        ax2.plot(te, [h["test_acc"] for h in tested], "s-", label="test")
        ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_confusion(confusion: np.ndarray, classes) -> Figure:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    c = np.asarray(confusion, dtype=float)
    rates = c / np.maximum(c.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(6, 5.2))
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    k = len(c)
    names = list(classes)[:k]
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    for i in range(k):
        for j in range(k):
            if c[i, j]:
                ax.text(j, i, int(c[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"accuracy {np.trace(c) / max(c.sum(), 1):.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def show_patches(image: np.ndarray, patch_size: int) -> Figure:
    """Draw an image (H, W) or (H, W, 3) cut into patch_size x patch_size patches,
    one subplot per patch, in the row-major order a ViT reads them."""
    img = np.asarray(image)
    H, W = img.shape[:2]
    gh, gw = H // patch_size, W // patch_size
    fig = Figure(figsize=(gw * 0.6, gh * 0.6))
    axes = fig.subplots(gh, gw, squeeze=False)
    for i in range(gh):
        for j in range(gw):
            p = img[i * patch_size:(i + 1) * patch_size, j * patch_size:(j + 1) * patch_size]
            axes[i, j].imshow(p, cmap="gray" if p.ndim == 2 else None)
            axes[i, j].set_axis_off()
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def attention_rollout(attentions, discard_ratio: float = 0.0) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): average the heads, add the
    identity for the residual path, renormalise rows, multiply through the layers.

    attentions: list of L arrays (B, heads, T, T). Returns (B, T, T): how much
    each output token draws on each input token through all layers; row 0 is the
    class token's view of the patches.
    """
    result = None
    for a in attentions:
        a = np.asarray(a).mean(axis=1)                       # (B, T, T), heads averaged
        if discard_ratio > 0:
            flat = a.reshape(a.shape[0], -1)
            k = int(flat.shape[1] * discard_ratio)
            idx = np.argsort(flat, axis=1)[:, :k]
            np.put_along_axis(flat, idx, 0, axis=1)
            a = flat.reshape(a.shape)
        a = a + np.eye(a.shape[-1])                          # residual connection
        a = a / a.sum(-1, keepdims=True)
        result = a if result is None else a @ result
    return result


def label_colors(num_classes: int) -> np.ndarray:
    """(K, 3) RGB colours for label maps: black for 0 (background), then tab10/tab20 colours."""
    from matplotlib import colormaps
    cmap = colormaps["tab10" if num_classes <= 11 else "tab20"]
    colors = np.zeros((num_classes, 3))
    colors[1:] = [cmap(i % cmap.N)[:3] for i in range(num_classes - 1)]
    return colors


def plot_masks(images, masks, preds, classes) -> Figure:
    """Segmentation results, one row per image: the image, the true label map,
    the predicted label map, and where the two disagree.

    images (N, H, W) or (N, 1, H, W); masks and preds (N, H, W) integer labels
    into ``classes`` (class 0 is drawn black). The legend lists the classes
    that appear in the true or predicted maps.
    """
    from matplotlib.patches import Patch
    images = np.asarray(images)
    images = images[:, 0] if images.ndim == 4 else images
    masks, preds = np.asarray(masks), np.asarray(preds)
    if not (images.shape == masks.shape == preds.shape and masks.ndim == 3):
        raise ValueError(f"plot_masks: images, masks and preds must all be (N, H, W) (images may be (N, 1, H, W)), "
                         f"got {images.shape}, {masks.shape} and {preds.shape}")
    k = len(classes)
    colors = label_colors(k)
    n = len(images)
    fig = Figure(figsize=(8.4, 2.2 * n + 0.6))
    axes = fig.subplots(n, 4, squeeze=False)
    for i in range(n):
        wrong = masks[i] != preds[i]
        panels = [(images[i], "gray", "image"), (colors[masks[i]], None, "true mask"),
                  (colors[preds[i]], None, f"predicted (pixel acc {1 - wrong.mean():.3f})"),
                  (wrong, "Reds", f"wrong: {int(wrong.sum())} pixels")]
        for ax, (img, cmap, title) in zip(axes[i], panels):
            ax.imshow(img, cmap=cmap, interpolation="nearest", vmin=0 if cmap else None, vmax=1 if cmap else None)
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    present = sorted(set(np.unique(masks).tolist()) | set(np.unique(preds).tolist()))
    fig.legend(handles=[Patch(color=colors[c], label=classes[c]) for c in present], loc="lower center",
               ncol=min(len(present), 6), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (2.2 * n + 0.6), 1, 1))
    return fig
