"""vit_fmnist on the full Fashion-MNIST (60k train / 10k test).

    python benchmarks/train_full.py            # starts, or resumes if the run folder has a checkpoint
    python benchmarks/train_full.py --fresh    # refuses to touch an existing run; pick another --out

Needs the full data set: `apt-get install dataset-fashion-mnist` puts it in
/usr/share/datasets/fashion-mnist (or pass --data DIR). The recipe is the
PyTorch reference run of PAPERS.md (AdamW lr 2e-3, wd 0.05, 10% warm-up then
cosine, batch 128, label smoothing 0.1, flip + 2-pixel crop), for 30 epochs.
The run folder (metrics.csv, curves.png, config.json; checkpoint.npz for
resuming) lands in benchmarks/results/vit_fmnist_full/. A run may span
sessions: rerunning this script resumes from the last finished epoch, with
the same numbers as an uninterrupted run.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minivit.train import TrainConfig, fit  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "vit_fmnist_full"))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--fresh", action="store_true", help="fail instead of resuming an existing run")
    a = p.parse_args()
    out = Path(a.out)
    cfg = TrainConfig(model="vit_fmnist", epochs=a.epochs, batch_size=128, lr=2e-3, weight_decay=0.05,
                      warmup=0.1, label_smoothing=0.1, augment="flip,crop", data=a.data, seed=0)
    resume = (out / "checkpoint.npz").exists()
    if resume and a.fresh:
        sys.exit(f"{out} already holds a run; choose another --out")
    t0 = time.perf_counter()
    res = fit(cfg, out_dir=out, resume=resume, progress=False,
              log=lambda msg: print(time.strftime("%H:%M:%S"), msg, flush=True))
    print(f"finished: test accuracy {res['final']['acc']:.4f}; this invocation took "
          f"{time.perf_counter() - t0:.0f} s; per-epoch times are in {out / 'metrics.csv'}", flush=True)


if __name__ == "__main__":
    main()
