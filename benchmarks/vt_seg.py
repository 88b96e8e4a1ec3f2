"""VT-FPN against a conv FPN on Fashion-MNIST canvases (course 3.(3), chapter 03).

    OPENBLAS_NUM_THREADS=1 python benchmarks/vt_seg.py [--train 6400] [--test 1000] [--epochs 1]
                                                        [--batch-size 32] [--lr 4e-3] [--seed 0]

Trains ``vt_seg_fmnist`` (VT-FPN: tokenizer, cross-level token transformer and
projector in place of the FPN's 3x3 convolutions) and ``fpn_seg_fmnist`` (the
same network with the 3x3 convolutions) with the same budget: the same
training canvases in the same order, epochs, batch size, learning-rate
schedule and seed. Canvases: ``data.load_fashion_mnist_segmentation`` on the
bundled subset (2-4 items on 56x56, 11 classes with background), train
canvases from the training items and test canvases from the test items.
Recipe: ``minivit.train.fit``'s AdamW with warm-up and cosine decay, plain
per-pixel cross-entropy (label smoothing 0), no augmentation.

Prints and writes, per model: parameters, forward multiply-adds per image
(whole network, and the mixer alone: the part VT-FPN replaces; counted by
``minivit.models.vt.count_macs`` from the matrix products the forward runs;
FLOPs = 2 x multiply-adds), training time, and the test pixel accuracy, mIoU
and per-class IoU. Outputs: ``benchmarks/results/vt_seg.csv`` (one row per
model), ``vt_seg.json`` (per-epoch history and per-class IoU) and
``vt_seg.log`` (this printout). The default budget keeps each training run
under about two minutes of one core; wall times depend on the machine's load.
"""
import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ("vt_seg_fmnist", "fpn_seg_fmnist")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=6400, help="training canvases (default 6400)")
    p.add_argument("--test", type=int, default=1000, help="test canvases (default 1000)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vt_seg"),
                   help="output path without extension (.csv, .json and .log are written)")
    return p.parse_args()


def main():
    args = parse_args()
    import numpy as np
    from minivit import data as D, io as mio, models
    from minivit.models.vt import count_macs
    from minivit.train import TrainConfig, fit

    lines = []

    def say(msg=""):
        print(msg, flush=True)
        lines.append(msg)

    train = D.load_fashion_mnist_segmentation(split="train", num_canvases=args.train)
    test = D.load_fashion_mnist_segmentation(split="test", num_canvases=args.test)
    fg = float((train.masks > 0).mean())
    say(f"canvases: {len(train)} train / {len(test)} test, 56x56, 2-4 items each, {fg:.1%} of training pixels "
        f"belong to an item; budget: {args.epochs} epoch(s), batch {args.batch_size}, lr {args.lr}, seed {args.seed}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    rows, details = [], {}
    for name in MODELS:
        model = models.create(name)
        model.eval()
        macs = count_macs(model, np.zeros((1, 1, 56, 56), np.float32))["total"]
        mixer = model.mixer_macs()
        cfg = TrainConfig(model=name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          label_smoothing=0.0, seed=args.seed)
        res = fit(cfg, train_set=train, test_set=test, progress=False, log=say)
        seconds = sum(h["epoch_time_s"] for h in res["history"])     # training steps only, no evaluation
        final = res["final"]
        row = {"model": name, "params": res["model"].num_params(), "macs_per_image": macs,
               "mixer_macs_per_image": mixer, "train_canvases": len(train), "test_canvases": len(test),
               "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
               "train_seconds": round(seconds, 1), "test_pixel_acc": round(final["pixel_acc"], 4),
               "test_miou": round(final["miou"], 4)}
        rows.append(row)
        details[name] = {"history": res["history"], "iou": dict(zip(D.SEG_CLASSES, map(float, final["iou"]))),
                         "summary": row}
        say(f"{name}: {row['params']:,} params, {macs / 1e6:.2f} M multiply-adds per image "
            f"({2 * macs / 1e6:.2f} MFLOPs; mixer {mixer / 1e6:.2f} M), trained in {seconds:.0f} s: "
            f"test pixel accuracy {final['pixel_acc']:.4f}, mIoU {final['miou']:.4f}")
    say()
    say(f"{'model':16s} {'params':>8s} {'MMACs/img':>9s} {'mixer MMACs':>11s} {'pixel acc':>9s} {'mIoU':>6s} "
        f"{'train s':>7s}")
    for r in rows:
        say(f"{r['model']:16s} {r['params']:>8,d} {r['macs_per_image'] / 1e6:>9.2f} "
            f"{r['mixer_macs_per_image'] / 1e6:>11.2f} {r['test_pixel_acc']:>9.4f} {r['test_miou']:>6.4f} "
            f"{r['train_seconds']:>7.0f}")
    vt, conv = rows
    say(f"VT-FPN's mixer: {conv['mixer_macs_per_image'] / vt['mixer_macs_per_image']:.1f}x fewer multiply-adds "
        f"than the 3x3 convolutions; whole network {conv['macs_per_image'] / vt['macs_per_image']:.2f}x fewer")
    say("per-class IoU (" + ", ".join(MODELS) + "):")
    for c in D.SEG_CLASSES:
        say(f"  {c:12s} " + "  ".join(f"{details[m]['iou'][c]:.3f}" for m in MODELS))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    mio.atomic_write_bytes(out.with_suffix(".csv"), text.getvalue().encode())
    mio.atomic_write_bytes(out.with_suffix(".json"), json.dumps(details, indent=1).encode())
    mio.atomic_write_bytes(out.with_suffix(".log"), ("\n".join(lines) + "\n").encode())
    print(f"wrote {out.with_suffix('.csv')}, .json and .log")


if __name__ == "__main__":
    main()
