"""Segmentation: the pasted-item canvases and their label maps, pixel accuracy and mIoU,
evaluate/fit for a segmentation model (run folder, metrics.csv, masks.png), the command line."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minivit import data as D
from minivit import viz
from minivit.train import TrainConfig, evaluate, fit, segmentation_metrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def items():
    return D.load_fashion_mnist(split="test")


def slow_paste(items, layout, canvas_size, threshold):
    """Rebuild every canvas from its layout, one item and one pixel at a time."""
    n = len(layout["count"])
    images = np.zeros((n, canvas_size, canvas_size), np.float32)
    masks = np.zeros((n, canvas_size, canvas_size), np.int64)
    for b in range(n):
        for s in range(layout["count"][b]):
            k, top, left = layout["item"][b, s], layout["top"][b, s], layout["left"][b, s]
            patch = items.images[k, 0]
            for i in range(patch.shape[0]):
                for j in range(patch.shape[1]):
                    v = patch[i, j]
                    if v > threshold:                             # the item's pixel covers what lies below
                        images[b, top + i, left + j] = v
                        masks[b, top + i, left + j] = items.labels[k] + 1
                    else:                                         # faint pixels cover nothing
                        images[b, top + i, left + j] = max(images[b, top + i, left + j], v)
    return images, masks


# ---------------------------------------------------------------- the canvases
def test_canvases_equal_a_slow_paste_and_labels_follow_the_items(items):
    ds = D.make_segmentation_canvases(items, 12, canvas_size=40, min_items=2, max_items=4, threshold=0.1, seed=3)
    assert ds.images.shape == (12, 1, 40, 40) and ds.images.dtype == np.float32
    assert ds.masks.shape == (12, 40, 40) and ds.masks.dtype == np.uint8
    lay = ds.layout
    assert set(lay["count"].tolist()) <= {2, 3, 4} and len(set(lay["count"].tolist())) > 1
    used = np.arange(4)[None] < lay["count"][:, None]
    assert (lay["item"][~used] == -1).all() and (lay["top"][used] >= 0).all()
    assert (lay["top"][used] <= 40 - 28).all() and (lay["left"][used] <= 40 - 28).all()   # every item fits
    images, masks = slow_paste(items, lay, 40, 0.1)
    np.testing.assert_array_equal(ds.images[:, 0], images)
    np.testing.assert_array_equal(ds.masks, masks)
    # label 0 exactly where the canvas is dark; every label belongs to an item on that canvas
    np.testing.assert_array_equal(ds.masks > 0, ds.images[:, 0] > 0.1)
    for b in range(12):
        on_canvas = {int(items.labels[k]) + 1 for k in lay["item"][b, :lay["count"][b]]}
        assert set(np.unique(ds.masks[b]).tolist()) - {0} <= on_canvas
    # the last item pasted is never covered: all its bright pixels carry its label
    for b in range(12):
        s = lay["count"][b] - 1
        k, t, l = lay["item"][b, s], lay["top"][b, s], lay["left"][b, s]
        bright = items.images[k, 0] > 0.1
        assert (ds.masks[b, t:t + 28, l:l + 28][bright] == items.labels[k] + 1).all()


def test_dataset_serves_int64_masks_and_subsets(items):
    ds = D.make_segmentation_canvases(items, 10, seed=0)
    x, y = ds[np.arange(4)]
    assert x.shape == (4, 1, 56, 56) and y.shape == (4, 56, 56) and y.dtype == np.int64
    sub = ds.subset(3)
    assert len(sub) == 3 and sub.layout["item"].shape == (3, 4)
    np.testing.assert_array_equal(sub.masks, ds.masks[:3])
    loader = D.DataLoader(ds, batch_size=4, shuffle=True, drop_last=True, transform=D.Normalize())
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 1, 56, 56) and yb.shape == (4, 56, 56)


def test_same_seed_same_canvases(items):
    a = D.make_segmentation_canvases(items, 5, seed=7)
    b = D.make_segmentation_canvases(items, 5, seed=7)
    c = D.make_segmentation_canvases(items, 5, seed=8)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.masks, c.masks)


def test_load_segmentation_splits():
    tr = D.load_fashion_mnist_segmentation(split="train", num_canvases=20)
    te = D.load_fashion_mnist_segmentation(split="test", num_canvases=20)
    assert len(tr) == len(te) == 20 and tr.classes == D.SEG_CLASSES == ("background",) + D.CLASSES
    assert not np.array_equal(tr.layout["top"], te.layout["top"])          # different layouts
    train_items = D.load_fashion_mnist(split="train")
    images, masks = slow_paste(train_items, tr.layout, 56, 0.1)            # made from training items
    np.testing.assert_array_equal(tr.images[:, 0], images)
    np.testing.assert_array_equal(tr.masks, masks)
    assert D.SEG_DEFAULT_CANVASES == {"train": 5000, "test": 1000}


@pytest.mark.parametrize("kw,msg", [
    (dict(canvas_size=20), "canvas_size=20 is smaller than an item \\(28x28\\).*at least 28"),
    (dict(min_items=3, max_items=2), "max_items=2 is smaller than min_items=3"),
    (dict(min_items=0), "min_items must be an integer >= 1"),
    (dict(num_canvases=0), "num_canvases must be an integer >= 1"),
    (dict(threshold=1.5), "threshold must be a number in \\[0, 1\\)"),
])
def test_bad_generator_arguments_raise_clearly(items, kw, msg):
    args = dict(num_canvases=2)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        D.make_segmentation_canvases(items, **args)


def test_bad_items_and_masks_raise_clearly(items):
    rgb = D.ArrayDataset(np.zeros((3, 3, 28, 28), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="single-channel images of shape \\(N, 1, h, w\\)"):
        D.make_segmentation_canvases(rgb, 2)
    with pytest.raises(ValueError, match="split='val' is not a split"):
        D.load_fashion_mnist_segmentation(split="val")
    with pytest.raises(ValueError, match="mask labels must be in 0..10"):
        D.SegmentationDataset(np.zeros((1, 1, 4, 4), np.float32), np.full((1, 4, 4), 11, np.uint8))
    with pytest.raises(ValueError, match="masks must have shape \\(N, H, W\\) = \\(1, 4, 4\\)"):
        D.SegmentationDataset(np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 4, 5), np.uint8))


# ---------------------------------------------------------------- metrics
def test_segmentation_metrics_by_hand():
    # rows: true class, columns: predicted; class 2 never occurs and is never predicted
    confusion = np.array([[5, 1, 0], [2, 2, 0], [0, 0, 0]])
    m = segmentation_metrics(confusion)
    assert m["pixel_acc"] == pytest.approx(7 / 10)
    iou0, iou1 = 5 / (5 + 2 + 1), 2 / (2 + 1 + 2)               # TP / (TP + FN + FP)
    np.testing.assert_allclose(m["iou"][:2], [iou0, iou1])
    assert np.isnan(m["iou"][2])
    assert m["miou"] == pytest.approx((iou0 + iou1) / 2)


def tiny_seg(**kw):
    cfg = dict(img_size=32, stem_width=4, widths=(4, 8, 8), fpn_dim=8, num_tokens=(4, 4, 4))
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def seg_data(items):
    train_items = D.load_fashion_mnist(split="train")
    return (D.make_segmentation_canvases(train_items, 64, canvas_size=32, seed=0),
            D.make_segmentation_canvases(items, 20, canvas_size=32, seed=1))


def test_evaluate_segmentation_agrees_with_the_predictions(seg_data):
    from minivit import models
    from minivit.tensor import Tensor, no_grad
    model = models.create("vt_seg_fmnist", **tiny_seg()).eval()
    test = seg_data[1]
    res = evaluate(model, test, batch_size=7, num_examples=3)
    with no_grad():
        pred = model(Tensor((test.images - D.FMNIST_MEAN) / D.FMNIST_STD)).data.argmax(1)
    truth = test.masks.astype(np.int64)
    assert res["pixel_acc"] == res["acc"] == pytest.approx(float((pred == truth).mean()))
    inter = [((pred == c) & (truth == c)).sum() for c in range(11)]
    union = [((pred == c) | (truth == c)).sum() for c in range(11)]
    ious = [i / u for i, u in zip(inter, union) if u]
    assert res["miou"] == pytest.approx(float(np.mean(ious)))
    assert res["confusion"].shape == (11, 11) and res["confusion"].sum() == truth.size
    ex = res["examples"]
    assert ex["images"].shape == (3, 1, 32, 32) and ex["masks"].shape == ex["preds"].shape == (3, 32, 32)
    np.testing.assert_allclose(ex["images"], test.images[:3], atol=1e-6)   # un-normalised for plots
    np.testing.assert_array_equal(ex["preds"], pred[:3])


def test_fit_segmentation_writes_pixel_accuracy_miou_and_masks(tmp_path, seg_data):
    train, test = seg_data
    cfg = TrainConfig(model="vt_seg_fmnist", epochs=2, batch_size=16, lr=5e-3, label_smoothing=0.0,
                      model_kwargs=tiny_seg())
    res = fit(cfg, train_set=train, test_set=test, out_dir=tmp_path / "run", progress=False, log=lambda *a: None)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.csv", "checkpoint.npz", "curves.png", "masks.png"} <= files
    assert "confusion.png" not in files
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "train_pixel_acc", "test_loss", "test_pixel_acc", "test_miou", "lr"} <= set(rows[0])
    assert "test_acc" not in rows[0]
    h = res["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert float(rows[-1]["test_miou"]) == pytest.approx(res["final"]["miou"])
    assert 0 < res["final"]["miou"] <= res["final"]["pixel_acc"] <= 1
    again = fit(cfg, train_set=train, test_set=test, progress=False, log=lambda *a: None)   # same seed, same numbers
    assert again["history"][0]["train_loss"] == h[0]["train_loss"]
    # train_subset keeps a SegmentationDataset
    cfg_sub = TrainConfig(model="fpn_seg_fmnist", epochs=1, batch_size=16, train_subset=32,
                          model_kwargs={k: v for k, v in tiny_seg().items() if k != "num_tokens"})
    sub = fit(cfg_sub, train_set=train, test_set=test, progress=False, log=lambda *a: None)
    assert sub["history"][0]["images_per_s"] > 0 and len(sub["history"]) == 1


@pytest.mark.parametrize("kw,msg", [
    (dict(augment="flip"), "segmentation model and augmentations would move the image but not its label map"),
    (dict(mixup=0.8), "mixup=0.8: vt_seg_fmnist is a segmentation model"),
    (dict(diverse_patch="cos"), "diverse_patch='cos': the patch-diversification losses are for ViT classifiers"),
])
def test_fit_rejects_settings_that_break_label_maps(seg_data, kw, msg):
    cfg = TrainConfig(model="vt_seg_fmnist", epochs=1, batch_size=16, model_kwargs=tiny_seg(), **kw)
    with pytest.raises(ValueError, match=msg):
        fit(cfg, train_set=seg_data[0], test_set=seg_data[1], progress=False, log=lambda *a: None)


def test_task_and_dataset_must_match(items, seg_data):
    from minivit import models
    seg = models.create("vt_seg_fmnist", **tiny_seg())
    with pytest.raises(ValueError, match="is a segmentation model .* give it a data.SegmentationDataset"):
        evaluate(seg, D.ArrayDataset(items.images[:4], items.labels[:4]))
    with pytest.raises(ValueError, match="is a classifier but the dataset holds label maps"):
        evaluate(models.create("vt_fmnist"), seg_data[1])


def test_plot_masks(seg_data):
    test = seg_data[1]
    fig = viz.plot_masks(test.images[:2], test.masks[:2], test.masks[:2], D.SEG_CLASSES)
    assert len(fig.axes) == 8
    assert fig.axes[2].get_title() == "predicted (pixel acc 1.000)"
    with pytest.raises(ValueError, match="images, masks and preds must all be \\(N, H, W\\)"):
        viz.plot_masks(test.images[:2], test.masks[:2], test.masks[:1], D.SEG_CLASSES)
    colors = viz.label_colors(11)
    assert colors.shape == (11, 3) and (colors[0] == 0).all() and len({tuple(c) for c in colors}) == 11


def test_command_line_trains_vt_seg_fmnist(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "minivit", "train", "--model", "vt_seg_fmnist", "--epochs", "1",
                        "--train-subset", "32", "--batch-size", "16", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "pixel acc" in r.stdout and "mIoU" in r.stdout
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1 and 0 <= float(rows[0]["test_miou"]) <= 1
    assert (out / "masks.png").is_file()
