"""Batch augmentations for minivit's DataLoader (NumPy only).

Augmentations work on a whole batch at once (fancy indexing and broadcasting,
no Python loop over the images) and all share one signature::

    transform(x, y, rng) -> (x, y)      # x (B, C, H, W) float32, y (B,) int64 or (B, K) float32

``rng`` is a ``np.random.Generator``; the DataLoader gives every batch its own,
seeded from ``(seed, epoch, batch_index)``, so a resumed run sees the same
augmented batches.

All of them are also importable from :mod:`minivit.data` (``D.CutMix``).
"""
import math
import numbers

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["FMNIST_MEAN", "FMNIST_STD", "Compose", "RandomChoice", "Normalize", "RandomCrop",
           "RandomHorizontalFlip", "RandomErasing", "one_hot", "Mixup", "CutMix", "box_mask", "patch_fractions"]

# Mean and std of all 47,040,000 pixels of the full Fashion-MNIST train set,
# scaled to [0, 1] (population std, computed in float64):
#   mean = 0.2860405969887955, std = 0.35302424451492254
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------
# Augmentations: t(x, y, rng) -> (x, y), whole batches at once
# ---------------------------------------------------------------------------

def _check_batch(name, x):
    if not isinstance(x, np.ndarray) or x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{name} expects x as a float array of shape (B, C, H, W), got {got}")


def _check_prob(name, p):
    if not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"{name}: p must be a probability in [0, 1], got {p!r}")
    return float(p)


def _check_range(name, pair, low, high):
    ok = (isinstance(pair, (tuple, list)) and len(pair) == 2
          and all(isinstance(v, numbers.Real) for v in pair) and low < pair[0] <= pair[1] <= high)
    if not ok:
        raise ValueError(f"{name} must be a pair (lo, hi) with {low} < lo <= hi <= {high}, got {pair!r}")
    return float(pair[0]), float(pair[1])


class Compose:
    """Apply transforms in order: ``Compose([t1, t2])(x, y, rng) = t2(*t1(x, y, rng)[:2], rng)``.

    All share the batch's ``rng``. If a transform returns extra outputs
    (``CutMix(patch_size=P)`` returns ``(x, y, patch_targets)``), they are
    kept and appended to the final result, so put such transforms last:
    later spatial transforms would not update them.
    """

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise ValueError(f"Compose expects callables t(x, y, rng), got {t!r}")

    def __call__(self, x, y, rng):
        extras = ()
        for t in self.transforms:
            x, y, *more = t(x, y, rng)
            extras += tuple(more)
        return (x, y, *extras)

    def __repr__(self):
        return f"Compose({self.transforms!r})"


class RandomChoice:
    """Apply one transform per batch, chosen at random with probabilities ``p``
    (uniform if None). ``RandomChoice([Mixup(0.8), CutMix(1.0)])`` is timm's
    default mixup/cutmix switching (switch_prob 0.5) used by DeiT."""

    def __init__(self, transforms, p=None):
        self.transforms = list(transforms)
        if not self.transforms or not all(callable(t) for t in self.transforms):
            raise ValueError(f"RandomChoice expects a non-empty list of callables, got {transforms!r}")
        if p is not None:
            p = np.asarray(p, dtype=np.float64)
            if p.shape != (len(self.transforms),) or (p < 0).any() or not np.isclose(p.sum(), 1):
                raise ValueError(f"RandomChoice: p must be {len(self.transforms)} probabilities "
                                 f"summing to 1, got {p.tolist()}")
        self.p = p

    def __call__(self, x, y, rng):
        return self.transforms[rng.choice(len(self.transforms), p=self.p)](x, y, rng)


class Normalize:
    """x -> (x - mean) / std. Scalars, or one value per channel.

    The defaults are Fashion-MNIST's train-set pixel mean and std (FMNIST_MEAN,
    FMNIST_STD), so normalised inputs have mean ~0 and std ~1.
    """

    def __init__(self, mean=FMNIST_MEAN, std=FMNIST_STD):
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if (self.std <= 0).any():
            raise ValueError(f"Normalize: std must be positive, got {std!r}")

    def __call__(self, x, y, rng=None):
        _check_batch("Normalize", x)
        mean = self.mean.astype(x.dtype).reshape(-1, 1, 1)  # scalar or (C,) -> (C or 1, 1, 1)
        std = self.std.astype(x.dtype).reshape(-1, 1, 1)
        return (x - mean) / std, y


class RandomCrop:
    """Zero-pad each side by ``padding``, then cut a random size x size window
    per image: (B, C, H, W) -> (B, C, size, size).

    Vectorised: ``sliding_window_view`` presents every window position as a
    view of shape (B, C, H+2p-size+1, W+2p-size+1, size, size) without
    copying; fancy indexing then picks image b's window at (top[b], left[b]).
    """

    def __init__(self, size=28, padding=2):
        self.size = _check_int("RandomCrop size", size, 1)
        self.padding = _check_int("RandomCrop padding", padding, 0)

    def __call__(self, x, y, rng):
        _check_batch("RandomCrop", x)
        B, C, H, W = x.shape
        p, s = self.padding, self.size
        n_top, n_left = H + 2 * p - s + 1, W + 2 * p - s + 1  # window positions per axis
        if n_top < 1 or n_left < 1:
            raise ValueError(f"RandomCrop: size={s} is larger than the padded image {H + 2 * p}x{W + 2 * p}")
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))  # (B, C, H+2p, W+2p)
        windows = sliding_window_view(padded, (s, s), axis=(2, 3))  # (B, C, n_top, n_left, s, s)
        top = rng.integers(0, n_top, size=B)
        left = rng.integers(0, n_left, size=B)
        return windows[np.arange(B), :, top, left], y  # (B, C, s, s)


class RandomHorizontalFlip:
    """Mirror each image left-right with probability p (independently per image)."""

    def __init__(self, p=0.5):
        self.p = _check_prob("RandomHorizontalFlip", p)

    def __call__(self, x, y, rng):
        _check_batch("RandomHorizontalFlip", x)
        flip = rng.random(len(x)) < self.p  # (B,)
        return np.where(flip[:, None, None, None], x[..., ::-1], x), y


class RandomErasing:
    """Random Erasing (Zhong et al. 2017): with probability p per image, fill
    a random rectangle with ``value``.

    As in torchvision: the rectangle's area is uniform in ``scale`` x H*W, its
    aspect ratio h/w log-uniform in ``ratio``; h = round(sqrt(area*ratio)),
    w = round(sqrt(area/ratio)); up to 10 draws until it fits inside the image
    (h < H and w < W), else the image is left alone. The top-left corner is
    uniform over the positions where it fits.

    Vectorised: the 10 attempts are drawn for all images at once, and the
    rectangle becomes a (B, H, W) mask by comparing row and column indices
    with each image's bounds (broadcasting, no loop). Apply after Normalize
    so that value=0 means "the dataset mean".
    """

    attempts = 10

    def __init__(self, p=0.25, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0):
        self.p = _check_prob("RandomErasing", p)
        self.scale = _check_range("RandomErasing scale", scale, 0, 1)
        self.ratio = _check_range("RandomErasing ratio", ratio, 0, math.inf)
        if not isinstance(value, numbers.Real):
            raise ValueError(f"RandomErasing: value must be a number, got {value!r}")
        self.value = float(value)

    def sample_boxes(self, B, H, W, rng):
        """Per image: erase? (B,) bool, and top, left, h, w, each (B,) int."""
        area = H * W * rng.uniform(*self.scale, size=(B, self.attempts))
        aspect = np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1]), size=(B, self.attempts)))
        h = np.rint(np.sqrt(area * aspect)).astype(np.int64)  # (B, attempts)
        w = np.rint(np.sqrt(area / aspect)).astype(np.int64)
        fits = (h < H) & (w < W)
        first = fits.argmax(axis=1)  # the first attempt that fits, per image
        rows = np.arange(B)
        ok = fits[rows, first]
        h, w = np.where(ok, h[rows, first], 0), np.where(ok, w[rows, first], 0)
        erase = (rng.random(B) < self.p) & ok
        top = rng.integers(0, H - h + 1)  # one draw per image, each with its own bound
        left = rng.integers(0, W - w + 1)
        return erase, top, left, h, w

    def __call__(self, x, y, rng):
        _check_batch("RandomErasing", x)
        B, C, H, W = x.shape
        erase, top, left, h, w = self.sample_boxes(B, H, W, rng)
        r, c = np.arange(H), np.arange(W)
        in_rows = (r >= top[:, None]) & (r < (top + h)[:, None])  # (B, H)
        in_cols = (c >= left[:, None]) & (c < (left + w)[:, None])  # (B, W)
        mask = erase[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
        return np.where(mask[:, None], x.dtype.type(self.value), x), y  # same box in every channel


def one_hot(y, num_classes, smoothing=0.0):
    """Integer labels (B,) -> targets (B, K) float32 with
    ``1 - smoothing + smoothing/K`` at the label and ``smoothing/K`` elsewhere.
    Soft targets (B, K) pass through unchanged (already mixed or smoothed)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes:
        return y.astype(np.float32, copy=False)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape (B,) or soft targets (B, {num_classes}), "
                         f"got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1} (num_classes={num_classes}), "
                         f"found {y.min()}..{y.max()}")
    off = smoothing / num_classes
    targets = np.full((len(y), num_classes), off, dtype=np.float32)
    targets[np.arange(len(y)), y] = 1 - smoothing + off
    return targets


class _Mixing:
    """Shared argument checks for Mixup and CutMix."""

    def __init__(self, name, alpha, num_classes, label_smoothing):
        if not isinstance(alpha, numbers.Real) or not alpha > 0:
            raise ValueError(f"{name}: alpha must be > 0 (lambda ~ Beta(alpha, alpha)), got {alpha!r}")
        self.alpha = float(alpha)
        self.num_classes = _check_int(f"{name} num_classes", num_classes, 1)
        if not isinstance(label_smoothing, numbers.Real) or not 0 <= label_smoothing < 1:
            raise ValueError(f"{name}: label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)


class Mixup(_Mixing):
    """mixup (Zhang et al. 2018): blend each image with its neighbour in the batch.

    With lam ~ Beta(alpha, alpha), one per batch, and the partner of image i
    being image i-1 (the batch rolled by one; timm pairs i with B-1-i):

        x_i <- lam * x_i + (1 - lam) * x_{i-1}
        t_i <- lam * onehot(y_i) + (1 - lam) * onehot(y_{i-1})      (B, K) float32

    Train on the soft targets t with a soft-target cross-entropy.
    """

    def __init__(self, alpha=0.8, num_classes=10, label_smoothing=0.0):
        super().__init__("Mixup", alpha, num_classes, label_smoothing)

    def __call__(self, x, y, rng):
        _check_batch("Mixup", x)
        t = one_hot(y, self.num_classes, self.label_smoothing)  # (B, K)
        lam = rng.beta(self.alpha, self.alpha)
        x_lam, t_lam = x.dtype.type(lam), np.float32(lam)
        x = x_lam * x + (1 - x_lam) * np.roll(x, 1, axis=0)
        t = t_lam * t + (1 - t_lam) * np.roll(t, 1, axis=0)
        return x, t


def box_mask(box, height, width):
    """(top, bottom, left, right) -> (H, W) bool mask, True inside the box
    (rows top..bottom-1, columns left..right-1)."""
    top, bottom, left, right = box
    r, c = np.arange(height), np.arange(width)
    return ((r >= top) & (r < bottom))[:, None] & ((c >= left) & (c < right))[None, :]


def patch_fractions(mask, patch_size):
    """(H, W) mask -> (H/P * W/P,) fraction of each P x P patch's pixels that
    are True, patches in row-major order (the order of ViT's patch tokens)."""
    H, W = mask.shape
    P = patch_size
    return mask.reshape(H // P, P, W // P, P).mean(axis=(1, 3)).reshape(-1)  # (H/P, P, W/P, P) -> (N,)


class CutMix(_Mixing):
    """CutMix (Yun et al. 2019): paste a rectangle from the neighbouring image.

    One box per batch, as in timm: lam ~ Beta(alpha, alpha), a box of about
    (1 - lam) * H * W pixels centred at a uniform random point and clipped to
    the image; image i receives the pixels of image i-1 (the batch rolled by
    one) inside the box. lam is then corrected to the fraction of original
    pixels actually kept, lam = 1 - box_area / (H * W), and

        t_i = lam * onehot(y_i) + (1 - lam) * onehot(y_{i-1})          (B, K) float32

    With ``patch_size=P`` (P must divide H and W) it also returns per-patch
    targets for the patch-mixing loss of patch diversification (Gong et al.
    2021): patches are numbered row-major, N = (H/P) * (W/P), and with
    f_n = the fraction of patch n's pixels that came from the pasted image,

        patch_targets[i, n] = (1 - f_n) * onehot(y_i) + f_n * onehot(y_{i-1})   (B, N, K)

    so a patch fully inside the box has the pasted image's label, a patch
    outside keeps the original, and the mean over patches equals t.
    ``align_to_patches=True`` draws the box on the patch grid (the paper's
    setting), so every f_n is 0 or 1.

    ``cutmix(x, y, rng, box=(top, bottom, left, right))`` uses a given box
    instead of sampling one; ``sample_box`` is what draws it.
    """

    def __init__(self, alpha=1.0, num_classes=10, patch_size=None, align_to_patches=False,
                 label_smoothing=0.0):
        super().__init__("CutMix", alpha, num_classes, label_smoothing)
        self.patch_size = None if patch_size is None else _check_int("CutMix patch_size", patch_size, 1)
        if align_to_patches and patch_size is None:
            raise ValueError("CutMix: align_to_patches=True needs a patch_size")
        self.align_to_patches = bool(align_to_patches)

    def sample_box(self, height, width, rng):
        """Draw lam ~ Beta(alpha, alpha) and a box of side ~ sqrt(1 - lam) times
        the image's (timm's rand_bbox). Returns (top, bottom, left, right)."""
        unit = self.patch_size if self.align_to_patches else 1
        gh, gw = height // unit, width // unit  # grid to draw on: pixels, or patches
        cut = math.sqrt(1 - rng.beta(self.alpha, self.alpha))
        ch, cw = int(gh * cut), int(gw * cut)
        cy, cx = rng.integers(0, gh), rng.integers(0, gw)
        top, bottom = np.clip([cy - ch // 2, cy + ch // 2], 0, gh)
        left, right = np.clip([cx - cw // 2, cx + cw // 2], 0, gw)
        return int(top) * unit, int(bottom) * unit, int(left) * unit, int(right) * unit

    def _check_box(self, box, H, W):
        ok = (isinstance(box, (tuple, list)) and len(box) == 4
              and all(isinstance(v, numbers.Integral) for v in box))
        if not ok or not (0 <= box[0] <= box[1] <= H and 0 <= box[2] <= box[3] <= W):
            raise ValueError(f"CutMix: box must be integers (top, bottom, left, right) with "
                             f"0 <= top <= bottom <= {H} and 0 <= left <= right <= {W}, got {box!r}")
        return tuple(int(v) for v in box)

    def __call__(self, x, y, rng, box=None):
        _check_batch("CutMix", x)
        B, C, H, W = x.shape
        P = self.patch_size
        if P is not None and (H % P or W % P):
            raise ValueError(f"CutMix: patch_size={P} does not divide the image size {H}x{W}")
        box = self.sample_box(H, W, rng) if box is None else self._check_box(box, H, W)
        mask = box_mask(box, H, W)  # (H, W), True where pixels come from image i-1
        x = np.where(mask, np.roll(x, 1, axis=0), x)  # (H, W) broadcasts over (B, C, H, W)
        t = one_hot(y, self.num_classes, self.label_smoothing)  # (B, K)
        t_pasted = np.roll(t, 1, axis=0)
        lam = np.float32(1 - mask.mean())  # fraction of original pixels kept
        t_mix = lam * t + (1 - lam) * t_pasted
        if P is None:
            return x, t_mix
        f = patch_fractions(mask, P).astype(np.float32)[None, :, None]  # (1, N, 1)
        patch_targets = (1 - f) * t[:, None, :] + f * t_pasted[:, None, :]  # (B, N, K)
        return x, t_mix, patch_targets
