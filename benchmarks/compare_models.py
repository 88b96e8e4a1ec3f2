"""Every paper's small model with one budget: the README's comparison table.

    python benchmarks/compare_models.py [--epochs 5] [--data DIR] [--only vit,convit,...]
    python benchmarks/compare_models.py --train-sizes 1000 2500 5000 --only vit,convit,ceit

Each run trains one registered ``*_fmnist`` model with the same recipe, seed
and number of epochs (AdamW lr 2e-3, weight decay 0.05, 10% warm-up then
cosine, batch 128, label smoothing 0.1, no augmentation), on the bundled 10k/2k subset by default or on the full set
with ``--data /usr/share/datasets/fashion-mnist``. DeiT is trained three ways:
without a teacher (both heads learn the labels), and distilled (hard and soft)
from the ``cnn_fmnist`` run made first, as DeiT's paper does.

``--train-sizes`` makes the train-set-size curves of issue 5: nested subsets
(the first n images of the bundled train split, itself class-balanced), each
run given the same number of optimizer steps as the full 10k run of the same
epochs (so the small sets are seen for more epochs), because sample efficiency
is the question, not compute. They are tested every epochs/5 epochs and after
the last (``TrainConfig.eval_every``), as often as the 10k run.

Each run's folder (metrics.csv, curves.png, checkpoint.npz for resuming) goes to
benchmarks/results/compare/<tag>/<run>/; finished runs are skipped, so the
script can be stopped and restarted. A summary row per run (test accuracy,
parameters, epochs, steps, wall time, ms/step) is appended to
benchmarks/results/compare/<tag>.csv and printed.
"""
import argparse
import csv
import io
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minivit import models  # noqa: E402
from minivit.io import atomic_write_bytes  # noqa: E402
from minivit.train import TrainConfig, fit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "compare"

# (run name, model, extra TrainConfig fields); the order matters: cnn teaches deit
RUNS = [
    ("cnn", "cnn_fmnist", {}),
    ("vit", "vit_fmnist", {}),
    ("deit", "deit_fmnist", {}),
    ("deit_hard", "deit_fmnist", {"distill": "hard", "teacher": "{cnn}"}),
    ("deit_soft", "deit_fmnist", {"distill": "soft", "teacher": "{cnn}"}),
    ("sasa", "sasa_fmnist", {}),
    ("convit", "convit_fmnist", {}),
    ("ceit", "ceit_fmnist", {}),
    ("swin", "swin_fmnist", {}),
    ("pvt", "pvt_fmnist", {}),
    ("t2t", "t2t_vit_fmnist", {}),
    ("vt", "vt_fmnist", {}),
    ("diverse", "diverse_vit_fmnist", {"diverse_patch": "cos,contrastive,mixing"}),
]


def finished(run_dir: Path, epochs: int) -> bool:
    m = run_dir / "metrics.csv"
    return m.is_file() and len(m.read_text().strip().splitlines()) - 1 >= epochs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--data", default=None, help="Fashion-MNIST directory (default: the bundled subset)")
    p.add_argument("--only", default="", help="comma list of run names (default: all registered)")
    p.add_argument("--train-sizes", type=int, nargs="*", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default=None, help="results sub-folder (default: subset-e<epochs> or full-e<epochs>)")
    a = p.parse_args()
    tag = a.tag or f"{'full' if a.data else 'subset'}-e{a.epochs}" + ("-sizes" if a.train_sizes else "")
    root = RESULTS / tag
    only = [s for s in a.only.split(",") if s]
    registered = set(models.list_models())
    # the recipe is pinned here (PAPERS.md's reference recipe without augmentation), so a later change
    # of `train`'s defaults does not silently change this table
    base = TrainConfig(seed=a.seed, epochs=a.epochs, data=a.data, batch_size=128, lr=2e-3, weight_decay=0.05,
                       warmup=0.1, label_smoothing=0.1, augment="none", mixup=0.0, cutmix=0.0)
    sizes = a.train_sizes or [0]
    full_n = 10_000 if a.data is None else 60_000
    rows = []
    for name, model, extra in RUNS:
        if (only and name not in only) or model not in registered:
            continue
        for n in sizes:
            run = f"{name}-n{n}" if n else name
            out = root / run
            epochs, eval_every = a.epochs, 1
            if n:   # same optimizer steps as the full-size run: more epochs on fewer images,
                #     tested about as often as the full-size run (the test set costs the same each time)
                epochs = max(1, math.ceil(a.epochs * (full_n // base.batch_size) / (n // base.batch_size)))
                eval_every = max(1, epochs // a.epochs)
            fields = {k: (v.format(cnn=str(root / "cnn")) if isinstance(v, str) else v) for k, v in extra.items()}
            cfg = replace(base, model=model, epochs=epochs, train_subset=n, eval_every=eval_every, **fields)
            t0 = time.perf_counter()
            if not finished(out, epochs):
                resume = (out / "checkpoint.npz").is_file()
                fit(cfg, out_dir=out, resume=resume, progress=False,
                    log=lambda m, run=run: print(time.strftime("%H:%M:%S"), run, m, flush=True))
            with (out / "metrics.csv").open() as f:
                hist = list(csv.DictReader(f))
            train_s = sum(float(h["epoch_time_s"]) for h in hist)
            steps = len(hist) * ((n or full_n) // cfg.batch_size)
            row = {"run": run, "model": model, "train_images": n or full_n, "epochs": len(hist), "steps": steps,
                   "params": models.create(model).num_params(), "test_acc": float(hist[-1]["test_acc"]),
                   "best_test_acc": max(float(h["test_acc"]) for h in hist if h["test_acc"] != "nan"),
                   "train_s": round(train_s),
                   "ms_per_step": round(1000 * train_s / steps), "this_invocation_s": round(time.perf_counter() - t0),
                   "extra": json.dumps({k: v for k, v in extra.items() if k != "teacher"})}
            rows.append(row)
            print(json.dumps(row), flush=True)
            summary = RESULTS / f"{tag}.csv"
            summary.parent.mkdir(parents=True, exist_ok=True)
            old = list(csv.DictReader(summary.open())) if summary.is_file() else []
            old = [r for r in old if r["run"] != run] + [{k: str(v) for k, v in row.items()}]
            text = io.StringIO()                         # written whole, atomically: readers never see half
            w = csv.DictWriter(text, fieldnames=list(row))
            w.writeheader()
            w.writerows(old)
            atomic_write_bytes(summary, text.getvalue().encode())


if __name__ == "__main__":
    main()
