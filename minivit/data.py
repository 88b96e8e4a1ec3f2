"""Fashion-MNIST for minivit: the IDX file format, datasets, a DataLoader and
batch-level augmentations. NumPy only.

How the data flows::

    IDX files --read_idx--> uint8 arrays --load_fashion_mnist--> ArrayDataset
        images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,)
    ArrayDataset --DataLoader--> batches x (B, 1, 28, 28), y (B,)
    (x, y) --transform(x, y, rng)--> (x, y) or (x, y_soft) or (x, y_soft, patch_targets)

Where the data comes from:

* the bundled subset (default): ``data/fashion-mnist/`` in the repository,
  10,000 train / 2,000 test images, stratified (``data/README.md``);
* the full set (60,000 / 10,000): ``apt-get install dataset-fashion-mnist``
  puts it in ``/usr/share/datasets/fashion-mnist``; pass that directory as
  ``root`` (``--data`` on the command line) or set ``MINIVIT_DATA``.

Both use the same file names and the same reader.

Augmentations (normalise, crop, flip, erase, mixup, CutMix) live in
:mod:`minivit.transforms` and are re-exported here (``minivit.data.CutMix``).
"""

import gzip
import math
import numbers
import os
import secrets
import struct
import zlib
from pathlib import Path

import numpy as np

from minivit.transforms import (  # noqa: F401  (re-exported: minivit.data.CutMix etc.)
    FMNIST_MEAN, FMNIST_STD, Compose, CutMix, Mixup, Normalize, RandomChoice, RandomCrop, RandomErasing,
    RandomHorizontalFlip, _check_int, box_mask, one_hot, patch_fractions)

__all__ = [
    "CLASSES", "BUNDLED_DIR", "FULL_DIR", "read_idx", "write_idx",
    "ArrayDataset", "load_fashion_mnist", "DataLoader", "one_hot",
    "Compose", "RandomChoice", "Normalize", "RandomCrop", "RandomHorizontalFlip",
    "RandomErasing", "Mixup", "CutMix", "box_mask", "patch_fractions",
    "FMNIST_MEAN", "FMNIST_STD",
]

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "fashion-mnist"
FULL_DIR = "/usr/share/datasets/fashion-mnist"



# ---------------------------------------------------------------------------
# The IDX format
# ---------------------------------------------------------------------------
# An IDX file is a header followed by the raw array in C order, big-endian:
#   bytes 0-1  0x00 0x00  (magic)
#   byte  2    dtype code (below)
#   byte  3    number of dimensions d
#   4*d bytes  each dimension as a big-endian uint32
#   the data   prod(dims) * itemsize bytes

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16",
              0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
_IDX_CODES = ", ".join(f"0x{c:02X} ({n})" for c, n in _IDX_NAMES.items())


def _read_bytes(path):
    """The file's bytes, decompressed if the name ends in ``.gz``."""
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"{path}: not a valid gzip file ({err}); the name ends in .gz, so "
            f"gzip-compressed IDX data was expected") from None


def _parse_header(path, data):
    """Validate the IDX header of ``data``; return (dtype, dims, header_bytes)."""
    if len(data) < 4:
        raise ValueError(
            f"{path}: not an IDX file: only {len(data)} bytes, expected at least "
            f"a 4-byte header (0x0000, a dtype code, the number of dimensions)")
    if data[0] != 0 or data[1] != 0:
        hint = " (this looks like gzip data: give the file a .gz name)" if data[:2] == b"\x1f\x8b" else ""
        raise ValueError(
            f"{path}: not an IDX file: magic bytes 0x{data[:4].hex()}, expected "
            f"0x0000 followed by a dtype code{hint}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02X}, expected one of {_IDX_CODES}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header says 0 dimensions, expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{path}: truncated header: {ndim} dimensions need {header} header bytes "
            f"but the file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    return _IDX_DTYPES[code], dims, header


def read_idx(path):
    """Read an IDX file (raw, or gzip-compressed if the name ends in ``.gz``).

    Returns a writable NumPy array in native byte order whose shape is the
    header's dimensions, e.g. (60000, 28, 28) uint8 for Fashion-MNIST images
    and (60000,) uint8 for labels.

    Raises ``ValueError`` naming the file and saying what is wrong when the
    magic bytes, dtype code, number of dimensions or data length are wrong,
    or when a ``.gz`` file is not valid gzip. A missing file raises
    ``FileNotFoundError``.
    """
    path = Path(path)
    data = _read_bytes(path)
    dtype, dims, header = _parse_header(path, data)
    count = math.prod(dims)
    expected, actual = count * dtype.itemsize, len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "too long"
        shape = "x".join(str(d) for d in dims)
        raise ValueError(
            f"{path}: {what}: header says {shape} {_IDX_NAMES[data[2]]} = {expected:,} "
            f"bytes of data but the file has {actual:,} (after the {header}-byte header)")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a copy: writable, native byte order


def _idx_code(dtype):
    for code, idx_dtype in _IDX_DTYPES.items():
        if dtype.kind == idx_dtype.kind and dtype.itemsize == idx_dtype.itemsize:
            return code
    raise ValueError(f"write_idx: arrays of dtype {dtype} cannot be stored in IDX; expected one of {_IDX_CODES}")


def _atomic_write(path, chunks, compress):
    """Write the byte strings ``chunks`` to ``path`` via a temporary file and
    ``os.replace``, so readers never see a half-written file. With
    ``compress``, gzip them reproducibly: no file name and mtime 0 in the
    gzip header, so the same bytes in give the same bytes out."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            if compress:
                with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0, filename="") as gz:
                    for chunk in chunks:
                        gz.write(chunk)
            else:
                for chunk in chunks:
                    f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_idx(path, array):
    """Write ``array`` to ``path`` in IDX format, gzip-compressed if the name
    ends in ``.gz``. Atomic (temporary file + rename) and byte-for-byte
    reproducible. Supported dtypes: uint8, int8, int16, int32, float32, float64.
    """
    array = np.asarray(array)
    code = _idx_code(array.dtype)
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx: array has {array.ndim} dimensions, expected 1 to 255")
    if max(array.shape) >= 2**32:
        raise ValueError(f"write_idx: shape {array.shape} has a dimension too large for IDX (< 2**32)")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = array.astype(_IDX_DTYPES[code], copy=False).tobytes(order="C")  # big-endian
    _atomic_write(path, [header, data], compress=Path(path).suffix == ".gz")


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------

class ArrayDataset:
    """A dataset held in two arrays.

    images: (N, C, H, W) float32; labels: (N,) int64; classes: names of the
    label values. ``dataset[idx]`` returns ``(images[idx], labels[idx])`` for
    an int (one item: (C, H, W), ()) or an index array (a batch: (B, C, H, W), (B,)).
    """

    def __init__(self, images, labels, classes=CLASSES):
        images, labels = np.asarray(images), np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must have shape (N,), got {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"images and labels disagree: {len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes = images, labels, tuple(classes)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        return self.images[idx], self.labels[idx]

    def __repr__(self):
        return (f"ArrayDataset(images={self.images.shape} {self.images.dtype}, "
                f"labels={self.labels.shape} {self.labels.dtype}, classes={len(self.classes)})")


_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_HOW_TO_GET = (
    "To get the data: leave root unset (and MINIVIT_DATA unset) to use the bundled "
    f"10k/2k subset in {BUNDLED_DIR}; or install the full set with "
    "`sudo apt-get install dataset-fashion-mnist` and pass "
    f"`--data {FULL_DIR}` (root=... in Python, or set MINIVIT_DATA).")


def _resolve_root(root):
    """(directory, where it came from) for load_fashion_mnist's ``root``."""
    if root is not None:
        return Path(root), f"root={str(root)!r}"
    env = os.environ.get("MINIVIT_DATA")
    if env:
        return Path(env), f"MINIVIT_DATA={env!r}"
    return BUNDLED_DIR, "the bundled subset (no root given, MINIVIT_DATA unset)"


def _find_idx(root, stem, source):
    """``root/stem.gz`` or, failing that, the uncompressed ``root/stem``."""
    for path in (root / f"{stem}.gz", root / stem):
        if path.is_file():
            return path
    if not root.exists():
        problem = f"directory {root} does not exist"
    elif not root.is_dir():
        problem = f"{root} is not a directory"
    else:
        problem = f"{root} has no {stem}.gz (nor uncompressed {stem})"
    hint = " The bundled subset can be rebuilt with `python data/make_subset.py`." if root == BUNDLED_DIR else ""
    raise FileNotFoundError(
        f"Fashion-MNIST not found: {problem}; looked there because of {source}.{hint} {_HOW_TO_GET}")


def load_fashion_mnist(root=None, split="train"):
    """Load one split of Fashion-MNIST from a directory of IDX files.

    root:  directory holding ``train-images-idx3-ubyte.gz``,
           ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz`` and
           ``t10k-labels-idx1-ubyte.gz`` (uncompressed copies work too).
           None means ``$MINIVIT_DATA`` if set, else the bundled subset.
    split: "train" or "test".

    Returns an ArrayDataset with images float32 (N, 1, 28, 28) scaled to
    [0, 1] (pixel / 255) and labels int64 (N,) in 0..9.
    N is 10,000 / 2,000 for the bundled subset, 60,000 / 10,000 for the full set.
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split={split!r} is not a Fashion-MNIST split; expected 'train' or 'test'")
    root, source = _resolve_root(root)
    prefix = _SPLIT_PREFIX[split]
    images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte", source)
    labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte", source)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected labels of shape (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images):,} images but {labels_path} has {len(labels):,} labels")
    if labels.size and not (labels.min() >= 0 and labels.max() < len(CLASSES)):
        raise ValueError(f"{labels_path}: labels must be in 0..{len(CLASSES) - 1}, "
                         f"found {labels.min()}..{labels.max()}")
    x = images.astype(np.float32)[:, None] / np.float32(255)  # (N, H, W) -> (N, 1, H, W), in [0, 1]
    return ArrayDataset(x, labels.astype(np.int64), CLASSES)


# ---------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


class DataLoader:
    """Iterate over a dataset in batches of NumPy arrays.

    Each batch is ``dataset[idx]`` for an index array ``idx`` of length
    ``batch_size`` (fancy indexing, no loop over items): x (B, C, H, W)
    float32 and y (B,) int64, passed through ``transform(x, y, rng)`` if given.

    Determinism: epoch e uses the permutation drawn from
    ``np.random.default_rng([seed, e])`` (when shuffling), and batch b of epoch
    e gives its transform ``np.random.default_rng([seed, e, b, 1])``. The
    batches depend only on (seed, epoch), so a run resumed at epoch e calls
    ``set_epoch(e)`` and sees the same batches as an uninterrupted run.

    ``iter(loader)`` uses the current epoch (0 at first) and then advances it
    by one; ``set_epoch(e)`` chooses the epoch of the next ``iter``.
    ``len(loader)`` is the number of batches: N // B with ``drop_last``,
    otherwise ceil(N / B) (the last batch may be smaller).
    """

    def __init__(self, dataset, batch_size, shuffle=False, drop_last=False, seed=0, transform=None):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise ValueError(f"dataset must support len() and dataset[index_array], got {type(dataset).__name__}")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be None or a callable t(x, y, rng), got {transform!r}")
        self.dataset = dataset
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.shuffle = _check_bool("shuffle", shuffle)
        self.drop_last = _check_bool("drop_last", drop_last)
        self.seed = _check_int("seed", seed, 0)
        self.transform = transform
        self.epoch = 0  # the epoch the next iter() will produce

    def __len__(self):
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch):
        """Make the next ``iter()`` produce epoch ``epoch`` (e.g. when resuming)."""
        self.epoch = _check_int("epoch", epoch, 0)

    def order(self, epoch):
        """The item order of ``epoch``: (N,) int64, a permutation if shuffling."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._batches(epoch)

    def _batches(self, epoch):
        order, b = self.order(epoch), self.batch_size
        for i in range(len(self)):
            x, y = self.dataset[order[i * b:(i + 1) * b]]
            if self.transform is None:
                yield x, y
            else:
                rng = np.random.default_rng([self.seed, epoch, i, 1])
                yield tuple(self.transform(x, y, rng))


# ---------------------------------------------------------------------------
# Segmentation: Fashion-MNIST items pasted on a larger canvas
# ---------------------------------------------------------------------------
# A label map needs images with more than one thing in them. The generator
# below places 2-4 Fashion-MNIST items at random on an empty (black) canvas
# and records, for every canvas pixel, which class of item lies under it.
#
# Which pixels belong to an item: those brighter than ``threshold`` (0.1 of
# full scale by default). Fashion-MNIST items sit on an exact-zero background,
# and the faint pixels at their edges are below 0.1, so this keeps the garment
# and leaves its frame transparent.
#
# Overlap: items are pasted one after the other; a later item covers the
# earlier ones wherever its own pixels are brighter than the threshold
# (painter's order), so the label is the class of the topmost item there.
# Faint (sub-threshold) pixels never cover anything: the canvas keeps the
# brighter of the two values there and the label does not change.
#
# Invariants (tested): a pixel has label 0 (background) exactly when its value
# is <= threshold, and a pixel with label k >= 1 shows the topmost item that
# covers it, an item of class k - 1.

SEG_CLASSES = ("background",) + CLASSES
__all__ += ["SEG_CLASSES", "SegmentationDataset", "make_segmentation_canvases",
            "load_fashion_mnist_segmentation"]


class SegmentationDataset:
    """Images and per-pixel label maps.

    images: (N, C, H, W) float32; masks: (N, H, W) integer labels in
    0..len(classes)-1 (stored as uint8 to save memory). ``dataset[idx]``
    returns ``(images[idx], masks[idx])`` with the masks as int64 (what
    ``F.cross_entropy`` takes), for an int or an index array, so the
    DataLoader serves it like an ArrayDataset. ``layout`` (optional) records
    how each canvas was made (see :func:`make_segmentation_canvases`).
    """

    def __init__(self, images, masks, classes=SEG_CLASSES, layout=None):
        images, masks = np.asarray(images), np.asarray(masks)
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {images.shape}")
        if masks.shape != images.shape[:1] + images.shape[2:]:
            raise ValueError(f"masks must have shape (N, H, W) = {images.shape[:1] + images.shape[2:]} "
                             f"to match images {images.shape}, got {masks.shape}")
        if not np.issubdtype(masks.dtype, np.integer):
            raise ValueError(f"masks must hold integer class labels, got dtype {masks.dtype}")
        if masks.size and not (masks.min() >= 0 and masks.max() < len(classes)):
            raise ValueError(f"mask labels must be in 0..{len(classes) - 1} ({len(classes)} classes), "
                             f"found {masks.min()}..{masks.max()}")
        self.images, self.masks, self.classes, self.layout = images, masks, tuple(classes), layout

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, idx):
        return self.images[idx], self.masks[idx].astype(np.int64)

    def subset(self, n):
        """The first ``n`` canvases (layout included)."""
        layout = None if self.layout is None else {k: v[:n] for k, v in self.layout.items()}
        return SegmentationDataset(self.images[:n], self.masks[:n], self.classes, layout)

    def __repr__(self):
        return (f"SegmentationDataset(images={self.images.shape} {self.images.dtype}, "
                f"masks={self.masks.shape} {self.masks.dtype}, classes={len(self.classes)})")


def make_segmentation_canvases(items, num_canvases, canvas_size=56, min_items=2, max_items=4,
                               threshold=0.1, seed=0):
    """Paste ``min_items``..``max_items`` items of ``items`` on each of ``num_canvases`` canvases.

    items: an ArrayDataset of single-channel images (N, 1, h, w) in [0, 1]
    with labels 0..9 (e.g. ``load_fashion_mnist()``). For every canvas, with
    ``rng = np.random.default_rng(seed)``: the number of items k is uniform in
    min_items..max_items; each item is drawn uniformly (with replacement)
    from ``items`` and its top-left corner uniformly from the positions where
    it fits entirely, 0..canvas_size-h and 0..canvas_size-w. Pixels brighter
    than ``threshold`` belong to the item; later items cover earlier ones
    (see the comment above this function for the exact rule).

    Returns a SegmentationDataset: images (num_canvases, 1, S, S) float32,
    masks (num_canvases, S, S) uint8 with 0 = background and 1 + c for an
    item of class c (``SEG_CLASSES``), and ``layout`` = dict of arrays
    ``count`` (n,), ``item`` (n, max_items) indices into ``items``, ``top``,
    ``left`` (n, max_items), slots past ``count`` unused (-1).

    Vectorised over canvases: a loop over the at most ``max_items`` paste
    slots, each pasting one item into every canvas at once by fancy indexing.
    """
    images = np.asarray(items.images)
    labels = np.asarray(items.labels)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"items must hold single-channel images of shape (N, 1, h, w), got {images.shape}")
    if len(images) == 0:
        raise ValueError("items is empty: need at least one item to paste")
    n = _check_int("num_canvases", num_canvases, 1)
    S = _check_int("canvas_size", canvas_size, 1)
    lo = _check_int("min_items", min_items, 1)
    hi = _check_int("max_items", max_items, 1)
    if hi < lo:
        raise ValueError(f"max_items={hi} is smaller than min_items={lo}")
    if not isinstance(threshold, numbers.Real) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1) (pixel values are in [0, 1]), got {threshold!r}")
    h, w = images.shape[2:]
    if S < h or S < w:
        raise ValueError(f"canvas_size={S} is smaller than an item ({h}x{w}): every item must fit on the "
                         f"canvas, so canvas_size must be at least {max(h, w)}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"item labels must be in 0..{len(CLASSES) - 1}, found {labels.min()}..{labels.max()}")
    seed = _check_int("seed", seed, 0)

    rng = np.random.default_rng(seed)
    count = rng.integers(lo, hi + 1, size=n)                       # (n,) items per canvas
    item = rng.integers(0, len(images), size=(n, hi))             # (n, slots) which item in each slot
    top = rng.integers(0, S - h + 1, size=(n, hi))                # (n, slots) top-left corner
    left = rng.integers(0, S - w + 1, size=(n, hi))
    used = np.arange(hi)[None, :] < count[:, None]                # (n, slots) slot holds an item
    item, top, left = (np.where(used, a, -1) for a in (item, top, left))

    canvas = np.zeros((n, S, S), np.float32)
    mask = np.zeros((n, S, S), np.uint8)
    b = np.arange(n)[:, None, None]                               # (n, 1, 1) canvas index
    for s in range(hi):                                           # paste slot s of every canvas at once
        on = used[:, s]                                           # (n,)
        patch = images[np.maximum(item[:, s], 0), 0] * on[:, None, None]   # (n, h, w); zeros if unused
        rows = np.maximum(top[:, s], 0)[:, None, None] + np.arange(h)[None, :, None]    # (n, h, 1)
        cols = np.maximum(left[:, s], 0)[:, None, None] + np.arange(w)[None, None, :]   # (n, 1, w)
        region = canvas[b, rows, cols]                            # (n, h, w) what lies there now
        fg = patch > threshold                                    # the item's own pixels
        canvas[b, rows, cols] = np.where(fg, patch, np.maximum(region, patch))
        cls = (labels[np.maximum(item[:, s], 0)] + 1).astype(np.uint8)[:, None, None]
        mask[b, rows, cols] = np.where(fg, cls, mask[b, rows, cols])
    layout = {"count": count, "item": item, "top": top, "left": left}
    return SegmentationDataset(canvas[:, None], mask, SEG_CLASSES, layout)


SEG_DEFAULT_CANVASES = {"train": 5000, "test": 1000}


def load_fashion_mnist_segmentation(root=None, split="train", num_canvases=None, canvas_size=56,
                                    min_items=2, max_items=4, threshold=0.1, seed=0):
    """Segmentation canvases made from one Fashion-MNIST split (the bundled subset by default).

    Training canvases use only training items and test canvases only test
    items. ``num_canvases`` defaults to 5,000 for "train" and 1,000 for
    "test". The generator's seed is derived from ``seed`` and the split
    (``np.random.SeedSequence([seed, 0])`` for train, ``[seed, 1]`` for test),
    so the two splits do not share layouts and the same arguments always give
    the same canvases. ``root``: as
    :func:`load_fashion_mnist`. See :func:`make_segmentation_canvases` for
    the other arguments.
    """
    if split not in SEG_DEFAULT_CANVASES:
        raise ValueError(f"split={split!r} is not a split; expected 'train' or 'test'")
    items = load_fashion_mnist(root, split)
    n = SEG_DEFAULT_CANVASES[split] if num_canvases is None else num_canvases
    seed = _check_int("seed", seed, 0)
    split_seed = int(np.random.SeedSequence([seed, 0 if split == "train" else 1]).generate_state(1)[0])
    return make_segmentation_canvases(items, n, canvas_size, min_items, max_items, threshold, split_seed)
