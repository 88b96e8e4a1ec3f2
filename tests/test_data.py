"""Tests for minivit.data: the IDX reader/writer, the bundled subset, the
loader and the batch augmentations."""

import gzip
import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minivit import data as D

REPO = Path(__file__).resolve().parent.parent
FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def load_make_subset():
    spec = importlib.util.spec_from_file_location("make_subset", REPO / "data" / "make_subset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def idx_bytes(array, code=None):
    """A hand-built IDX file (independent of write_idx), optionally with a forced dtype code."""
    codes = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
    code = codes[array.dtype.str[1:]] if code is None else code
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# ---------------------------------------------------------------------------
# The bundled subset
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("prefix, n", [("train", 10000), ("t10k", 2000)])
def test_bundled_files_shapes_and_balance(prefix, n):
    images = D.read_idx(D.BUNDLED_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = D.read_idx(D.BUNDLED_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10


def test_sha256sums_match_bundled_files():
    sums = load_make_subset().read_sums(REPO / "data" / "SHA256SUMS")
    assert sorted(sums) == sorted(FILES)
    for name, digest in sums.items():
        assert hashlib.sha256((D.BUNDLED_DIR / name).read_bytes()).hexdigest() == digest, name


def test_make_subset_is_byte_for_byte_reproducible(tmp_path):
    if not Path(D.FULL_DIR).is_dir():
        pytest.skip(f"full Fashion-MNIST not installed in {D.FULL_DIR} (apt-get install dataset-fashion-mnist)")
    make_subset = load_make_subset()
    rebuilt = make_subset.generate(D.FULL_DIR, tmp_path)
    assert rebuilt == make_subset.read_sums(REPO / "data" / "SHA256SUMS")
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (D.BUNDLED_DIR / name).read_bytes()


def test_stratified_indices_sorted_and_balanced():
    labels = np.repeat(np.arange(10), 7)[np.random.default_rng(1).permutation(70)]
    keep = load_make_subset().stratified_indices(labels, 3)
    assert np.all(np.diff(keep) > 0)
    assert np.bincount(labels[keep]).tolist() == [3] * 10


# ---------------------------------------------------------------------------
# read_idx / write_idx
# ---------------------------------------------------------------------------

GOOD = idx_bytes(np.zeros((10, 28, 28), np.uint8))

BROKEN = {
    "short": (b"\x00\x00", r"not an IDX file: only 2 bytes, expected at least a 4-byte header"),
    "magic": (b"\x01\x02" + GOOD[2:], r"not an IDX file: magic bytes 0x01020803, expected 0x0000 followed by a dtype code"),
    "gzip_without_gz_name": (gzip.compress(GOOD), r"magic bytes 0x1f8b.*looks like gzip"),
    "dtype_code": (GOOD[:2] + b"\x07" + GOOD[3:], r"unknown IDX dtype code 0x07, expected one of 0x08 \(uint8\)"),
    "zero_dims": (b"\x00\x00\x08\x00", r"0 dimensions, expected at least 1"),
    "truncated_header": (GOOD[:10], r"truncated header: 3 dimensions need 16 header bytes but the file has 10"),
    "truncated": (GOOD[:-1000], r"truncated: header says 10x28x28 uint8 = 7,840 bytes of data but the file has 6,840"),
    "too_long": (GOOD + b"\x00" * 5, r"too long: header says 10x28x28 uint8 = 7,840 bytes of data but the file has 7,845"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_read_idx_rejects_broken_files(tmp_path, case):
    content, message = BROKEN[case]
    path = tmp_path / "x.idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        D.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_checks_gzipped_files_too(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(GOOD[:-1]))
    with pytest.raises(ValueError, match=r"x.gz: truncated: header says 10x28x28 uint8"):
        D.read_idx(path)


def corrupt(data):
    data = bytearray(data)
    data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
    return bytes(data)


@pytest.mark.parametrize("content", [GOOD, gzip.compress(GOOD)[:-20], corrupt(gzip.compress(GOOD))],
                         ids=["raw_named_gz", "truncated_gzip", "corrupt_gzip"])
def test_read_idx_bad_gzip(tmp_path, content):
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"x-idx3-ubyte.gz: not a valid gzip file .*name ends in .gz"):
        D.read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.read_idx(tmp_path / "nothing.gz")


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_matches_hand_built_file(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    path = tmp_path / "a.idx"
    path.write_bytes(idx_bytes(a))
    b = D.read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    np.testing.assert_array_equal(a, b)
    b[0] = 0  # the result is writable


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=hnp.arrays(st.sampled_from(["u1", "i1", "<i2", ">i2", "i4", "f4", ">f8"]),
                        hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)),
       suffix=st.sampled_from([".idx", ".gz"]))
def test_write_read_round_trip(tmp_path, array, suffix):
    path = tmp_path / f"a{suffix}"
    D.write_idx(path, array)
    back = D.read_idx(path)
    assert back.shape == array.shape and back.dtype == array.dtype.newbyteorder("=")
    assert back.tobytes() == array.astype(back.dtype).tobytes()  # bitwise, NaNs included


def test_write_idx_is_reproducible_and_atomic(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    D.write_idx(tmp_path / "a.gz", a)
    first = (tmp_path / "a.gz").read_bytes()
    D.write_idx(tmp_path / "a.gz", a)
    assert (tmp_path / "a.gz").read_bytes() == first
    assert first[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
    assert first[3] & 0x08 == 0  # no FNAME field
    assert [p.name for p in tmp_path.iterdir()] == ["a.gz"]  # no temporary files left


@pytest.mark.parametrize("array, message", [
    (np.zeros(3, np.uint16), "dtype uint16 cannot be stored in IDX"),
    (np.zeros(3, bool), "dtype bool cannot be stored in IDX"),
    (np.float32(1), "0 dimensions, expected 1 to 255"),
])
def test_write_idx_rejects(tmp_path, array, message):
    with pytest.raises(ValueError, match=message):
        D.write_idx(tmp_path / "a.idx", array)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# load_fashion_mnist
# ---------------------------------------------------------------------------

def write_tiny_set(root, n=6, gz=True):
    """A tiny Fashion-MNIST directory; returns the uint8 train images."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        D.write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
        D.write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n, dtype=np.uint8) % 10)
        if prefix == "train":
            train_images = images
    return train_images


@pytest.mark.parametrize("split, n", [("train", 10000), ("test", 2000)])
def test_load_bundled(monkeypatch, split, n):
    monkeypatch.delenv("MINIVIT_DATA", raising=False)
    ds = D.load_fashion_mnist(split=split)
    assert len(ds) == n and ds.classes == D.CLASSES
    assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == np.float32
    assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
    assert ds.images.min() == 0 and ds.images.max() == 1
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and int(y) == ds.labels[3]
    x, y = ds[np.array([5, 1, 5])]
    assert x.shape == (3, 1, 28, 28) and y.tolist() == ds.labels[[5, 1, 5]].tolist()


def test_load_bad_split():
    with pytest.raises(ValueError, match=r"split='val' is not a Fashion-MNIST split; expected 'train' or 'test'"):
        D.load_fashion_mnist(split="val")


def test_load_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist.*root=.*apt-get install dataset-fashion-mnist"):
        D.load_fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"has no train-images-idx3-ubyte.gz.*--data /usr/share/datasets/fashion-mnist"):
        D.load_fashion_mnist(tmp_path)


def test_load_from_env_var(tmp_path, monkeypatch):
    images = write_tiny_set(tmp_path / "fm")
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path / "fm"))
    ds = D.load_fashion_mnist()
    assert ds.images.shape == (6, 1, 28, 28) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images[:, 0], images / 255, rtol=1e-6)
    assert D.load_fashion_mnist(split="test").labels.tolist() == [0, 1, 2, 3, 4, 5]
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="MINIVIT_DATA="):
        D.load_fashion_mnist()
    assert len(D.load_fashion_mnist(tmp_path / "fm")) == 6  # an explicit root wins


def test_load_uncompressed(tmp_path):
    write_tiny_set(tmp_path, n=4, gz=False)
    assert len(D.load_fashion_mnist(tmp_path, "test")) == 4


def test_load_count_mismatch(tmp_path):
    write_tiny_set(tmp_path)
    D.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match=r"has 6 images but .*train-labels-idx1-ubyte.gz has 5 labels"):
        D.load_fashion_mnist(tmp_path)


# ---------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------

def index_dataset(n):
    """Image i is filled with the value i, so a batch tells which items it holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, 4, 4)).copy()
    return D.ArrayDataset(images, np.arange(n) % 10)


def batch_ids(batches):
    return [x[:, 0, 0, 0].astype(int).tolist() for x, *_ in batches]


def test_loader_dtypes_and_plain_order():
    loader = D.DataLoader(D.load_fashion_mnist(split="test"), batch_size=512)
    x, y = next(iter(loader))
    assert x.shape == (512, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert sum(batch_ids(D.DataLoader(index_dataset(10), 4)), []) == list(range(10))


def test_loader_is_deterministic_and_resumable():
    ds = index_dataset(23)
    a, b = D.DataLoader(ds, 5, shuffle=True, seed=3), D.DataLoader(ds, 5, shuffle=True, seed=3)
    epochs_a = [batch_ids(a) for _ in range(3)]
    assert epochs_a == [batch_ids(b) for _ in range(3)]
    assert epochs_a[0] != epochs_a[1] != epochs_a[2]
    assert a.epoch == 3
    resumed = D.DataLoader(ds, 5, shuffle=True, seed=3)
    resumed.set_epoch(2)
    assert batch_ids(resumed) == epochs_a[2]
    assert batch_ids(D.DataLoader(ds, 5, shuffle=True, seed=4)) != epochs_a[0]


def test_loader_transform_rng_depends_on_seed_epoch_batch():
    draw = lambda x, y, rng: (x, rng.integers(0, 2**31, size=1))  # noqa: E731
    loader = D.DataLoader(index_dataset(10), 4, shuffle=True, seed=1, transform=draw)
    epoch0, epoch1 = [[int(y[0]) for _, y in loader] for _ in range(2)]
    expected = [int(np.random.default_rng([1, 1, b, 1]).integers(0, 2**31, size=1)[0]) for b in range(3)]
    assert epoch1 == expected and epoch0 != epoch1
    loader.set_epoch(1)
    assert [int(y[0]) for _, y in loader] == expected


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 40), batch_size=st.integers(1, 12), drop_last=st.booleans(),
       shuffle=st.booleans(), seed=st.integers(0, 2**32))
def test_loader_covers_every_item_once(n, batch_size, drop_last, shuffle, seed):
    loader = D.DataLoader(index_dataset(n), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
    batches = batch_ids(loader)
    assert len(batches) == len(loader) == (n // batch_size if drop_last else -(-n // batch_size))
    assert all(len(b) == batch_size for b in batches[:-1] if b)
    seen = sum(batches, [])
    assert len(seen) == len(set(seen))
    if drop_last:
        assert len(seen) == n // batch_size * batch_size
    else:
        assert sorted(seen) == list(range(n))


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), r"batch_size must be an integer >= 1, got 0"),
    (dict(batch_size=2.5), r"batch_size must be an integer >= 1, got 2.5"),
    (dict(batch_size=True), r"batch_size must be an integer >= 1, got True"),
    (dict(batch_size=4, shuffle="yes"), r"shuffle must be True or False, got 'yes'"),
    (dict(batch_size=4, seed=-1), r"seed must be an integer >= 0, got -1"),
    (dict(batch_size=4, transform=3), r"transform must be None or a callable"),
])
def test_loader_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        D.DataLoader(index_dataset(5), **kwargs)
    with pytest.raises(ValueError, match=r"epoch must be an integer >= 0, got -2"):
        D.DataLoader(index_dataset(5), 2).set_epoch(-2)


# ---------------------------------------------------------------------------
# Augmentations
# ---------------------------------------------------------------------------

def batch(B=8, C=1, H=28, W=28, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 1.0, (B, C, H, W)).astype(np.float32)  # > 0: erased/padded pixels stand out
    return x, rng.integers(0, 10, B)


SPATIAL = [D.Normalize(), D.RandomCrop(28, 2), D.RandomHorizontalFlip(), D.RandomErasing(p=1.0),
           D.Compose([D.RandomCrop(), D.RandomHorizontalFlip(), D.Normalize(), D.RandomErasing()])]


@pytest.mark.parametrize("t", SPATIAL, ids=lambda t: type(t).__name__)
def test_spatial_transforms_keep_shape_dtype_labels(t):
    x, y = batch(C=2)
    x2, y2 = t(x, y, np.random.default_rng(0))
    assert x2.shape == x.shape and x2.dtype == np.float32
    assert y2 is y
    assert np.all(x == batch(C=2)[0])  # the input is not modified


def test_normalize():
    x, y = batch(B=64)
    out, _ = D.Normalize(mean=x.mean(), std=x.std())(x, y)
    assert out.dtype == np.float32
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-4
    per_channel, _ = D.Normalize(mean=[0.5, 0.0], std=[0.5, 2.0])(np.ones((1, 2, 3, 3), np.float32), None)
    assert per_channel[0, :, 0, 0].tolist() == [1.0, 0.5]


def test_random_crop():
    x, y = batch()
    assert np.array_equal(D.RandomCrop(28, padding=0)(x, y, np.random.default_rng(0))[0], x)
    out, _ = D.RandomCrop(28, padding=2)(x, y, np.random.default_rng(5))
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    rng = np.random.default_rng(5)  # replay the offsets: slow, obviously-correct reference
    top, left = rng.integers(0, 5, 8), rng.integers(0, 5, 8)
    for b in range(8):
        assert np.array_equal(out[b], padded[b, :, top[b]:top[b] + 28, left[b]:left[b] + 28])
    assert D.RandomCrop(24, padding=0)(x, y, rng)[0].shape == (8, 1, 24, 24)
    with pytest.raises(ValueError, match=r"size=40 is larger than the padded image 32x32"):
        D.RandomCrop(40, padding=2)(x, y, rng)


def test_horizontal_flip():
    x, y = batch()
    flip, rng = D.RandomHorizontalFlip(p=1.0), np.random.default_rng(0)
    once, _ = flip(x, y, rng)
    assert np.array_equal(once, x[..., ::-1])
    assert np.array_equal(flip(once, y, rng)[0], x)
    assert np.array_equal(D.RandomHorizontalFlip(p=0.0)(x, y, rng)[0], x)
    half, _ = D.RandomHorizontalFlip(p=0.5)(*batch(B=200), rng)
    flipped = np.all(half == batch(B=200)[0][..., ::-1], axis=(1, 2, 3))
    assert 60 < flipped.sum() < 140


def test_random_erasing():
    x, y = batch(B=50, C=3)
    rng = np.random.default_rng(0)
    assert np.array_equal(D.RandomErasing(p=0.0)(x, y, rng)[0], x)
    out, _ = D.RandomErasing(p=1.0, value=0.0)(x, y, rng)
    erased = out == 0  # (B, C, H, W); x > 0 everywhere
    assert np.array_equal(out[~erased], x[~erased])
    assert np.all(erased == erased[:, :1])  # same box in every channel
    for b in range(50):  # the erased pixels form one rectangle
        rows, cols = np.flatnonzero(erased[b, 0].any(1)), np.flatnonzero(erased[b, 0].any(0))
        if rows.size:
            assert erased[b, 0, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
            assert erased[b, 0].sum() == rows.size * cols.size <= 0.4 * 28 * 28
    assert (erased[:, 0].sum(axis=(1, 2)) > 0).mean() > 0.9


def test_mixup_soft_targets_are_convex_pairs():
    x, y = batch(B=16)
    xm, t = D.Mixup(alpha=0.8)(x, y, np.random.default_rng(3))
    assert xm.dtype == np.float32 and t.dtype == np.float32 and t.shape == (16, 10)
    np.testing.assert_allclose(t.sum(1), 1, rtol=1e-6)
    i = np.flatnonzero(y != np.roll(y, 1))[0]
    lam = t[i, y[i]]
    expected = lam * np.eye(10)[y] + (1 - lam) * np.eye(10)[np.roll(y, 1)]
    np.testing.assert_allclose(t, expected, atol=1e-6)
    np.testing.assert_allclose(xm, lam * x + (1 - lam) * np.roll(x, 1, 0), atol=1e-6)


def test_one_hot_and_smoothing():
    t = D.one_hot(np.array([2, 0]), 4, smoothing=0.1)
    np.testing.assert_allclose(t, [[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]])
    assert D.one_hot(t, 4) is t  # soft targets pass through
    with pytest.raises(ValueError, match=r"labels must be in 0..3 \(num_classes=4\), found 0..7"):
        D.one_hot(np.array([0, 7]), 4)


def test_cutmix_with_a_given_box():
    x, y = batch(B=6, H=28, W=28)
    y = np.array([0, 1, 2, 3, 4, 5])
    box = (7, 21, 14, 28)  # rows 7..20, cols 14..27: aligned to the 7x7 patch grid
    xm, t, pt = D.CutMix(patch_size=7)(x, y, np.random.default_rng(0), box=box)
    rolled = np.roll(x, 1, axis=0)
    assert np.array_equal(xm[:, :, 7:21, 14:28], rolled[:, :, 7:21, 14:28])
    inside = D.box_mask(box, 28, 28)
    assert np.array_equal(xm[:, :, ~inside], x[:, :, ~inside])
    lam = 1 - 14 * 14 / 28**2
    np.testing.assert_allclose(t, lam * np.eye(10)[y] + (1 - lam) * np.eye(10)[np.roll(y, 1)], atol=1e-6)
    assert pt.shape == (6, 16, 10) and pt.dtype == np.float32
    grid = pt.reshape(6, 4, 4, 10)  # patches in row-major order
    np.testing.assert_array_equal(grid[:, 1:3, 2:4], np.eye(10)[np.roll(y, 1)][:, None, None].repeat(2, 1).repeat(2, 2))
    np.testing.assert_array_equal(grid[:, 0], np.eye(10)[y][:, None].repeat(4, 1))
    np.testing.assert_allclose(pt.mean(axis=1), t, atol=1e-6)


def test_cutmix_unaligned_box_gives_fractional_patches():
    x, y = batch(B=4)
    _, t, pt = D.CutMix(patch_size=7)(x, np.array([1, 2, 3, 4]), np.random.default_rng(0), box=(3, 10, 0, 7))
    f = D.patch_fractions(D.box_mask((3, 10, 0, 7), 28, 28), 7)
    assert f[0] == 4 / 7 and f[4] == 3 / 7 and f[1:4].sum() == 0
    np.testing.assert_allclose(pt[1, 0, [1, 2]], [4 / 7, 3 / 7], rtol=1e-6)  # image 1 pastes image 0 (label 1)
    np.testing.assert_allclose(pt.mean(axis=1), t, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_sampled_box(seed):
    x, y = batch(B=8, seed=seed)
    xm, t, pt = D.CutMix(alpha=1.0, patch_size=4)(x, y, np.random.default_rng(seed))
    pasted = np.all(xm == np.roll(x, 1, 0), axis=(0, 1)) & np.any(xm != x, axis=(0, 1))  # (H, W)
    np.testing.assert_array_equal(xm[:, :, ~pasted], x[:, :, ~pasted])
    lam = 1 - pasted.mean()
    np.testing.assert_allclose(t, lam * D.one_hot(y, 10) + (1 - lam) * D.one_hot(np.roll(y, 1), 10), atol=1e-6)
    np.testing.assert_allclose(t.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(pt.mean(axis=1), t, atol=1e-6)
    aligned = D.CutMix(patch_size=4, align_to_patches=True)
    top, bottom, left, right = aligned.sample_box(28, 28, np.random.default_rng(seed))
    assert all(v % 4 == 0 for v in (top, bottom, left, right))


def test_cutmix_without_patches_and_errors():
    x, y = batch()
    out = D.CutMix()(x, y, np.random.default_rng(0))
    assert len(out) == 2 and out[1].shape == (8, 10)
    with pytest.raises(ValueError, match=r"patch_size=5 does not divide the image size 28x28"):
        D.CutMix(patch_size=5)(x, y, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"box must be integers \(top, bottom, left, right\).*got \(0, 30, 0, 5\)"):
        D.CutMix()(x, y, np.random.default_rng(0), box=(0, 30, 0, 5))
    with pytest.raises(ValueError, match=r"CutMix expects x as a float array of shape \(B, C, H, W\), got float32 \(28, 28\)"):
        D.CutMix()(x[0, 0], y, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"alpha must be > 0"):
        D.Mixup(alpha=0)


def test_compose_keeps_extra_outputs_and_loader_yields_them():
    t = D.Compose([D.RandomHorizontalFlip(), D.Mixup(), D.CutMix(patch_size=7)])
    x, y = batch()
    xm, soft, pt = t(x, y, np.random.default_rng(0))
    assert xm.dtype == soft.dtype == pt.dtype == np.float32
    assert soft.shape == (8, 10) and pt.shape == (8, 16, 10)
    np.testing.assert_allclose(soft.sum(1), 1, rtol=1e-6)
    loader = D.DataLoader(D.ArrayDataset(*batch(B=20)), 8, shuffle=True, transform=t)
    first = [tuple(a.copy() for a in b) for b in loader]
    loader.set_epoch(0)
    assert all(len(b) == 3 for b in first)
    assert all(all(np.array_equal(u, v) for u, v in zip(b1, b2)) for b1, b2 in zip(first, loader))


def test_random_choice():
    x, y = batch()
    choice = D.RandomChoice([D.Mixup(), D.CutMix()], p=[0.0, 1.0])
    xm, _ = choice(x, y, np.random.default_rng(0))
    assert np.sum(np.any(xm != x, axis=(0, 1))) < 28 * 28  # CutMix leaves pixels outside its box alone
    with pytest.raises(ValueError, match=r"p must be 2 probabilities summing to 1"):
        D.RandomChoice([D.Mixup(), D.CutMix()], p=[0.5, 0.6])
