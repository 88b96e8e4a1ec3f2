"""Search for the default recipe of `python -m minivit train` (bundled 10k/2k subset).

    python benchmarks/default_recipe.py --epochs 6 --grid b128:lr2e-3 b64:lr2e-3 ...

Each grid entry is colon-separated overrides of TrainConfig: b<batch>, lr<x>,
ls<label smoothing>, wd<weight decay>, wu<warm-up fraction>, aug<flip+crop|none>,
e<epochs>. Every run uses the same seed and data and prints the final test
accuracy and the wall time; the rows go to benchmarks/results/default_recipe.csv
(appended). Time per step differs with batch size: compare equal *time*, i.e.
multiply epochs by the ms/step that `python -m minivit bench --batch-size B` prints.
"""
import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minivit.train import TrainConfig, fit  # noqa: E402

KEYS = {"b": ("batch_size", int), "lr": ("lr", float), "ls": ("label_smoothing", float),
        "wd": ("weight_decay", float), "wu": ("warmup", float), "e": ("epochs", int),
        "aug": ("augment", lambda s: s.replace("+", ","))}


def parse(entry, epochs):
    kw = {"epochs": epochs}
    for part in entry.split(":"):
        for k in sorted(KEYS, key=len, reverse=True):
            if part.startswith(k):
                name, conv = KEYS[k]
                kw[name] = conv(part[len(k):])
                break
        else:
            raise SystemExit(f"cannot parse {part!r} in {entry!r}")
    return kw


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", nargs="+", required=True)
    p.add_argument("--csv", default=str(Path(__file__).resolve().parent / "results" / "default_recipe.csv"))
    a = p.parse_args()
    path = Path(a.csv)
    new = not path.exists()
    for entry in a.grid:
        kw = parse(entry, a.epochs)
        cfg = TrainConfig(seed=a.seed, **kw)
        t0 = time.perf_counter()
        res = fit(cfg, progress=False, log=lambda m: None)
        wall = time.perf_counter() - t0
        accs = [h["test_acc"] for h in res["history"]]
        train_s = sum(h["epoch_time_s"] for h in res["history"])
        print(f"{entry:40s} acc {accs[-1]:.4f}  wall {wall:6.0f} s (training {train_s:.0f} s)  "
              f"final train acc {res['history'][-1]['train_acc']:.4f}  "
              f"per-epoch {' '.join(f'{x:.3f}' for x in accs)}", flush=True)
        with path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["entry", "epochs", "batch_size", "lr", "label_smoothing", "weight_decay", "warmup",
                            "augment", "seed", "test_acc", "wall_s", "acc_per_epoch"])
                new = False
            w.writerow([entry, cfg.epochs, cfg.batch_size, cfg.lr, cfg.label_smoothing, cfg.weight_decay,
                        cfg.warmup, cfg.augment, cfg.seed, f"{accs[-1]:.4f}", f"{wall:.0f}",
                        " ".join(f"{x:.4f}" for x in accs)])


if __name__ == "__main__":
    main()
