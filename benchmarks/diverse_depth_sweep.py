"""Over-smoothing and patch diversification: ViTs of depth 4, 8, 12, 16.

    python benchmarks/diverse_depth_sweep.py [--epochs 5] [--depths 4 8 12 16] [--data DIR]

For every depth, up to three runs with one budget (same epochs, data, seed,
recipe): ``plain`` trains ``diverse_vit_fmnist`` with cross-entropy only,
``diverse`` adds the three losses of Gong et al. (cos, contrastive, mixing;
weights 1, ``--diverse-patch cos,contrastive,mixing``), whose mixing loss
trains on CutMix aligned to the 4x4 patch grid, and ``cutmix`` is the control
for that augmentation: cross-entropy only, with ordinary CutMix (Beta(1, 1),
boxes not aligned to patches). (All runs use the same model class, so all
expose per-layer features; the unused patch classifier adds 650 parameters.)

After training, P(h^[l]) -- the mean absolute cosine between patch tokens
after block l -- is measured on the first ``--probe`` test images for every
layer l, together with the test accuracy. Results land in
benchmarks/results/diverse_sweep/ (one run folder per run, resumable;
``sweep.json`` with the curves; ``sweep.png`` the figure: P against layer,
one line per depth, plain solid and diverse dashed; accuracy against depth).
"""
import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minivit  # noqa: E402,F401  (before NumPy: it tunes OpenBLAS's threads, see minivit/_threads.py)
import numpy as np  # noqa: E402

from minivit import data as D  # noqa: E402
from minivit import io, models, no_grad  # noqa: E402
from minivit.models.diverse_patch import patch_similarity  # noqa: E402
from minivit.tensor import Tensor  # noqa: E402
from minivit.train import TrainConfig, fit  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "diverse_sweep"
KINDS = {"plain": ("none", 0.0), "diverse": ("cos,contrastive,mixing", 0.0), "cutmix": ("none", 1.0)}
STYLE = {"plain": ("-", "o-", "plain"), "diverse": ("--", "s--", "with the three losses"),
         "cutmix": (":", "^:", "plain + CutMix (control)")}


def layer_similarity(model, images, batch=250):
    """P(h^[l]) for l = 1..L, averaged over ``images`` (already normalised)."""
    model.eval()
    sums = None
    with no_grad():
        for s in range(0, len(images), batch):
            _, feats = model(Tensor(images[s:s + batch]), return_features=True)
            p = np.array([float(patch_similarity(f, reduction="none").data.sum()) for f in feats])
            sums = p if sums is None else sums + p
    return (sums / len(images)).tolist()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 12, 16])
    p.add_argument("--data", default=None)
    p.add_argument("--probe", type=int, default=500, help="test images for P(h) per layer")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    a = p.parse_args()
    out = Path(a.out)
    base = TrainConfig(model="diverse_vit_fmnist", epochs=a.epochs, data=a.data, seed=a.seed, batch_size=128,
                       lr=2e-3, weight_decay=0.05, warmup=0.1, label_smoothing=0.1, augment="none")
    test = D.load_fashion_mnist(a.data, "test")
    probe = D.Normalize()(test.images[:a.probe].astype(np.float32), None, None)[0]
    results_file = out / "sweep.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for depth in a.depths:
        for kind in a.kinds:
            losses, cutmix = KINDS[kind]
            name = f"depth{depth}-{kind}"
            run = out / name
            cfg = replace(base, model_kwargs={"depth": depth}, diverse_patch=losses, cutmix=cutmix)
            t0 = time.perf_counter()
            done = (run / "metrics.csv").is_file() and \
                len((run / "metrics.csv").read_text().strip().splitlines()) - 1 >= a.epochs
            if not done:
                fit(cfg, out_dir=run, resume=(run / "checkpoint.npz").is_file(), progress=False,
                    log=lambda m, n=name: print(time.strftime("%H:%M:%S"), n, m, flush=True))
            model = models.create("diverse_vit_fmnist", depth=depth)
            meta = io.load(model, run / "checkpoint.npz")
            hist = meta["history"]
            results[name] = {"depth": depth, "kind": kind, "losses": losses, "cutmix": cutmix, "test_acc": hist[-1]["test_acc"],
                             "epochs": len(hist), "train_s": round(sum(h["epoch_time_s"] for h in hist)),
                             "P_per_layer": layer_similarity(model, probe)}
            print(name, json.dumps(results[name]), f"({time.perf_counter() - t0:.0f} s)", flush=True)
            io.atomic_write_bytes(results_file, json.dumps(results, indent=1).encode())
    plot(results, out / "sweep.png")


def kind_of(r):
    """The run's kind; entries written before the CutMix control existed have no "kind" field."""
    return r.get("kind") or ("plain" if r["losses"] == "none" else "diverse")


def plot(results, path):
    from minivit import viz
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    depths = sorted({r["depth"] for r in results.values()})
    colors = dict(zip(depths, plt.cm.viridis(np.linspace(0, 0.85, len(depths)))))
    for r in results.values():
        kind = kind_of(r)
        P = r["P_per_layer"]
        ax1.plot(range(1, len(P) + 1), P, STYLE[kind][0], marker="o", ms=3, color=colors[r["depth"]],
                 label=f"depth {r['depth']} {kind}")
    ax1.set(xlabel="layer l", ylabel="P(h^[l])  (mean |cos| between patches)", title="patch similarity per layer")
    ax1.legend(fontsize=7, ncol=2)
    for kind, (_, ls, label) in STYLE.items():
        rs = sorted((r for r in results.values() if kind_of(r) == kind), key=lambda r: r["depth"])
        if rs:
            ax2.plot([r["depth"] for r in rs], [r["test_acc"] for r in rs], ls, label=label)
    ax2.set(xlabel="depth L", ylabel="test accuracy", title="accuracy (same budget)", xticks=depths)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    viz.save_figure(fig, path)


if __name__ == "__main__":
    main()
