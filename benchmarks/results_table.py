"""Print the README's results tables (markdown) from the committed result files.

    python benchmarks/results_table.py                  # print the tables
    python benchmarks/results_table.py --update-readme  # and put them between README.md's results markers

Reads benchmarks/results/compare/*.csv (benchmarks/compare_models.py),
benchmarks/results/vit_fmnist_full/metrics.csv (benchmarks/train_full.py) and
benchmarks/results/default_recipe.csv (benchmarks/default_recipe.py), so that
every number in the README's tables is one this script printed.
"""
import contextlib
import csv
import io
import sys
from pathlib import Path

RES = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def bench_speeds():
    """{model: row} from benchmarks/bench_models.py (every model timed in one run, machine otherwise idle)."""
    path = RES / "bench_models.csv"
    return {r["model"]: r for r in read(path)} if path.is_file() else {}


def compare_tables():
    speeds = bench_speeds()
    for path in sorted((RES / "compare").glob("*.csv")):
        if path.stem.endswith("-sizes"):
            continue                                     # train_size_table()
        rows = read(path)
        tag = path.stem
        data = "full 60k/10k" if tag.startswith("full") else "bundled 10k/2k subset"
        print(f"\n`{tag}` ({data}; `python benchmarks/compare_models.py` -- see its docstring for the recipe):\n")
        print("| run | model | train images | epochs | steps | params | test acc | train time\u2021 "
              "| ms/step, batch 128 (bench)\u2020 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            ms = speeds.get(r["model"], {}).get("ms_per_step", "not measured")
            print(f"| {r['run']} | `{r['model']}` | {int(r['train_images']):,} | {r['epochs']} | {r['steps']} | "
                  f"{int(r['params']):,} | {float(r['test_acc']):.3f} | {float(r['train_s']) / 60:.1f} min | {ms} |")
    if speeds:
        r0 = next(iter(speeds.values()))
        print(f"\n\u2020`python benchmarks/bench_models.py`: one training step (forward, backward, AdamW) at batch "
              f"{r0['batch_size']} on random data, every model timed in the same run with nothing else running "
              f"({r0['cpu']}, 2 cores, NumPy {r0['numpy']}). Compare them with each other, not across machines. "
              f"Measured at commit c11004f, with the threaded engine (`minivit/_threads.py`); each model's "
              f"better of two rounds (this machine's speed drifted by up to 15% between rounds).")
    print("\n\u2021Training wall time on 2 cores as the run itself measured it (the sum of its epochs, "
          "evaluation excluded). The `full-e1` runs had the machine to themselves, one after another, "
          "with the threaded engine (`minivit/_threads.py`); the `subset-e5` runs shared the machine with "
          "other jobs and predate it, so their times are rough: use the \u2020 column for speed.")


def train_size_table():
    """Issue 5's sample-efficiency runs: test accuracy against the number of training images."""
    for path in sorted((RES / "compare").glob("*-sizes.csv")):
        rows = read(path)
        base = RES / "compare" / (path.stem[:-len("-sizes")] + ".csv")   # the same recipe on all 10k
        full = {r["model"]: r for r in read(base)} if base.is_file() else {}
        by = {(r["model"], int(r["train_images"])): r for r in rows}
        for m, r in full.items():
            by.setdefault((m, int(r["train_images"])), r)
        sizes = sorted({n for _, n in by})
        models_ = list(dict.fromkeys(r["model"] for r in rows))
        steps = sorted({int(r["steps"]) for r in rows})
        epochs = base.stem.rsplit("-e", 1)[-1]
        print(f"\nSample efficiency (`python benchmarks/compare_models.py --epochs {epochs} --train-sizes "
              f"{' '.join(str(n) for n in sizes if n != 10000)} --only vit,convit,ceit`; nested subsets of the "
              f"bundled train split, each run given the same ~{steps[0]} optimizer steps of batch 128 as the "
              f"10k run of `{base.stem}`, so the small sets are seen for more epochs; test accuracy on the "
              f"bundled 2,000 test images, seed 0):\n")
        print("| model | " + " | ".join(f"{n:,} images" for n in sizes) + " |")
        print("|---" * (len(sizes) + 1) + "|")
        for m in models_:
            cells = [f"{float(by[(m, n)]['test_acc']):.3f}" if (m, n) in by else "-" for n in sizes]
            print(f"| `{m}` | " + " | ".join(cells) + " |")


def full_run():
    import json
    path = RES / "vit_fmnist_full" / "metrics.csv"
    if not path.is_file():
        return
    rows = read(path)
    cfg = json.loads((RES / "vit_fmnist_full" / "config.json").read_text())
    times = sorted(float(r["epoch_time_s"]) for r in rows)
    median = times[len(times) // 2]
    best = max(rows, key=lambda r: float(r["test_acc"]))
    state = "finished" if len(rows) >= cfg["epochs"] else f"{len(rows)} of {cfg['epochs']} epochs done"
    print(f"\n`vit_fmnist` on full Fashion-MNIST (`python benchmarks/train_full.py`: AdamW lr {cfg['lr']}, "
          f"wd {cfg['weight_decay']}, batch {cfg['batch_size']}, {cfg['epochs']} epochs with {cfg['warmup']:.0%} "
          f"warm-up then cosine, label smoothing {cfg['label_smoothing']}, {cfg['augment'].replace(',', ' + ')}, "
          f"seed {cfg['seed']}), {state}: test accuracy **{float(rows[-1]['test_acc']):.4f}** on the 10,000 test "
          f"images after epoch {rows[-1]['epoch']} (best {float(best['test_acc']):.4f} at epoch {best['epoch']}). "
          f"Median epoch {median / 60:.1f} min of training, {sum(times) / 3600:.1f} h in all*. The learning curve: "
          f"`benchmarks/results/vit_fmnist_full/curves.png`; per-epoch numbers in its `metrics.csv`.")


def depth_sweep():
    import json
    path = RES / "diverse_sweep" / "sweep.json"
    if not path.is_file():
        return
    runs = json.loads(path.read_text()).values()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from diverse_depth_sweep import KINDS, kind_of as kind
    order = list(KINDS)
    runs = sorted(runs, key=lambda r: (r["depth"], order.index(kind(r))))
    r0 = runs[0]
    print(f"\nOver-smoothing sweep (`python benchmarks/diverse_depth_sweep.py`; `diverse_vit_fmnist`, bundled subset, "
          f"{r0['epochs']} epochs, batch 128, lr 2e-3, seed 0; P(h) = mean |cos| between patch tokens after each "
          f"block, on 500 test images). plain: cross-entropy; diverse: + L_cos + L_contrastive + L_mixing "
          f"(weights 1, patch-aligned CutMix); cutmix: cross-entropy with ordinary CutMix (control):\n")
    print("| depth | run | test acc | P, first block | P, last block | P, max over blocks |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        P = r["P_per_layer"]
        print(f"| {r['depth']} | {kind(r)} | {r['test_acc']:.4f} | {P[0]:.3f} | {P[-1]:.3f} | {max(P):.3f} |")


def recipes():
    path = RES / "default_recipe.csv"
    if not path.is_file():
        return
    print("\nDefault-recipe search (`python benchmarks/default_recipe.py`, bundled subset, seed 0):\n")
    print("| entry | epochs | batch | lr | label smoothing | test acc |")
    print("|---|---|---|---|---|---|")
    for r in read(path):
        print(f"| `{r['entry']}` | {r['epochs']} | {r['batch_size']} | {r['lr']} | {r['label_smoothing']} | "
              f"{float(r['test_acc']):.4f} |")


def segmentation():
    path = RES / "vt_seg.csv"
    if not path.is_file():
        return
    rows = read(path)
    r0 = rows[0]
    print(f"\nSegmentation on 56x56 canvases of bundled-subset items (`python benchmarks/vt_seg.py`; "
          f"{int(r0['train_canvases']):,} train / {int(r0['test_canvases']):,} test canvases, {r0['epochs']} epoch, "
          f"batch {r0['batch_size']}, lr {r0['lr']}, seed {r0['seed']}):\n")
    print("| model | params | multiply-adds / image (mixer) | pixel acc | mIoU | train s* |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['model']}` | {int(r['params']):,} | {int(r['macs_per_image']) / 1e6:.2f} M "
              f"({int(r['mixer_macs_per_image']) / 1e6:.2f} M) | {float(r['test_pixel_acc']):.4f} | "
              f"{float(r['test_miou']):.4f} | {float(r['train_seconds']):.0f} |")


def tables() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        compare_tables()
        train_size_table()
        segmentation()
        depth_sweep()
        full_run()
        recipes()
        print("\n*Wall times marked * come from the 2-core development machine, partly while other jobs ran "
              "(the segmentation runs; epochs 1-11 of the full run, on one BLAS thread; epochs 12-30 had the "
              "machine to themselves): they are rough. The ms/step column (\u2020) is the one to compare speed with.")
    return out.getvalue()


BEGIN, END = "<!-- results:begin (benchmarks/results_table.py --update-readme) -->", "<!-- results:end -->"

if __name__ == "__main__":
    text = tables()
    print(text)
    if "--update-readme" in sys.argv:
        readme = Path(__file__).resolve().parent.parent / "README.md"
        body = readme.read_text()
        a, b = body.index(BEGIN) + len(BEGIN), body.index(END)
        from minivit.io import atomic_write_bytes  # noqa: E402
        atomic_write_bytes(readme, (body[:a] + "\n" + text.strip() + "\n" + body[b:]).encode())
        print(f"updated {readme}")
