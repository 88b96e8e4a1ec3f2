"""t2t_vit_fmnist against vit_fmnist: one recipe, one budget, test accuracy and time.

    python benchmarks/t2t_vs_vit.py                          # bundled 10k/2k subset, 10 epochs each
    python benchmarks/t2t_vs_vit.py --data /usr/share/datasets/fashion-mnist --epochs 30
    python benchmarks/t2t_vs_vit.py --train-subset 256 --test-subset 200 --epochs 1 --out /tmp/t2t_check

Both models get the same data, epochs, batch size and schedule (AdamW lr 2e-3, wd 0.05, 10%
warm-up then cosine, label smoothing 0.1, batch 128, no augmentation; the short-run recipe of
PAPERS.md's reference runs) and the same seed. Their backbones are alike (width 64, 6 blocks,
4 heads, MLP ratio 2, 49 tokens); they differ in how the tokens are made (T2T module vs a
4x4 patchify) and in the position embedding (fixed sinusoids vs learned).

Each model trains into its own run folder, ``OUT/<model>/`` (metrics.csv, curves.png,
checkpoint.npz), and rerunning the script resumes an unfinished run from its last epoch with
the same numbers. The summary, one row per model (parameters, images, epochs, final test
accuracy and loss, training seconds, seconds per epoch, images per second), is written to
``OUT/summary.csv`` and printed. The default OUT is benchmarks/results/t2t_vs_vit/.
Set OPENBLAS_NUM_THREADS to fix the number of BLAS threads (the times depend on it).
"""
import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minivit import data as D  # noqa: E402
from minivit import io as mio  # noqa: E402
from minivit import models  # noqa: E402
from minivit.train import TrainConfig, fit  # noqa: E402

MODELS = ("vit_fmnist", "t2t_vit_fmnist")
FIELDS = ["model", "params", "train_images", "test_images", "epochs", "batch_size", "seed", "test_acc", "test_loss",
          "train_seconds", "seconds_per_epoch", "images_per_second", "blas_threads"]


def write_csv_atomic(path, rows):
    """Write rows (dicts) to ``path`` through a temporary file in the same folder."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    mio.atomic_write_bytes(path, buf.getvalue().encode())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="Fashion-MNIST IDX directory (default: the bundled subset)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "t2t_vs_vit"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--test-subset", type=int, default=0, help="first N test images (0 = all)")
    a = p.parse_args()
    for name in ("epochs", "batch_size"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train = D.load_fashion_mnist(a.data, "train")
    test = D.load_fashion_mnist(a.data, "test")
    if a.train_subset:
        train = D.ArrayDataset(train.images[:a.train_subset], train.labels[:a.train_subset], train.classes)
    if a.test_subset:
        test = D.ArrayDataset(test.images[:a.test_subset], test.labels[:a.test_subset], test.classes)
    rows = []
    for name in MODELS:
        cfg = TrainConfig(model=name, epochs=a.epochs, batch_size=a.batch_size, lr=2e-3, weight_decay=0.05,
                          warmup=0.1, label_smoothing=0.1, augment="none", data=a.data, seed=a.seed)
        run_dir = out / name
        resume = (run_dir / "checkpoint.npz").exists()
        print(f"{time.strftime('%H:%M:%S')} {name}: {len(train):,} training images, {a.epochs} epochs"
              f"{' (resuming)' if resume else ''} -> {run_dir}", flush=True)
        res = fit(cfg, train_set=train, test_set=test, out_dir=run_dir, resume=resume, progress=False,
                  log=lambda msg: print(time.strftime("%H:%M:%S"), msg, flush=True))
        hist = res["history"]
        train_s = sum(r["epoch_time_s"] for r in hist)                 # training only, evaluation excluded
        rows.append({"model": name, "params": models.create(name).num_params(), "train_images": len(train),
                     "test_images": len(test), "epochs": len(hist), "batch_size": a.batch_size, "seed": a.seed,
                     "test_acc": f"{res['final']['acc']:.4f}", "test_loss": f"{res['final']['loss']:.4f}",
                     "train_seconds": f"{train_s:.0f}", "seconds_per_epoch": f"{train_s / len(hist):.1f}",
                     "images_per_second": f"{sum(r['images_per_s'] for r in hist) / len(hist):.1f}",
                     "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset")})
    write_csv_atomic(out / "summary.csv", rows)
    print(f"\n{'model':16s} {'params':>8s} {'epochs':>6s} {'test acc':>8s} {'s/epoch':>8s} {'img/s':>6s}")
    for r in rows:
        print(f"{r['model']:16s} {r['params']:>8,} {r['epochs']:>6d} {r['test_acc']:>8s} {r['seconds_per_epoch']:>8s} "
              f"{r['images_per_second']:>6s}")
    print(f"summary: {out / 'summary.csv'}")


if __name__ == "__main__":
    main()
