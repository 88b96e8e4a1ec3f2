"""Training-step speed of every chapter's model, measured in one run on a quiet machine.

    python benchmarks/bench_models.py [--batch-size 128] [--steps 10] [--rounds 2]

For each model, `python -m minivit bench --model NAME` (forward, backward and an
AdamW step on random data; the median of ``--steps`` timed steps after two
untimed ones) runs in a fresh process. The models are visited ``--rounds``
times in turn, so that a slow minute on the machine spreads over all of them,
and each model's best round is kept. Rows go to
benchmarks/results/bench_models.csv (written atomically) with the machine's
CPU model and NumPy version; compare the numbers with each other, not with
another machine's. Nothing else should run meanwhile: a second job on a 2-core
machine can more than double these times.
"""
import argparse
import csv
import io
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["cnn_fmnist", "sasa_fmnist", "vit_fmnist", "vt_fmnist", "deit_fmnist", "convit_fmnist", "ceit_fmnist",
          "swin_fmnist", "t2t_vit_fmnist", "pvt_fmnist", "diverse_vit_fmnist"]
LINE = re.compile(r"median of \d+ steps: ([0-9.]+) ms/step")


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_models.csv"))
    a = p.parse_args()
    import numpy as np
    from minivit import models
    from minivit.io import atomic_write_bytes
    best = {}
    for r in range(a.rounds):
        for name in a.models:
            cmd = [sys.executable, "-m", "minivit", "bench", "--model", name, "--batch-size", str(a.batch_size),
                   "--steps", str(a.steps)]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
            ms = float(LINE.search(out).group(1))
            best[name] = min(ms, best.get(name, float("inf")))
            print(f"round {r + 1}: {name:20s} {ms:8.1f} ms/step", flush=True)
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["model", "params", "batch_size", "ms_per_step", "images_per_s", "cpu", "numpy"])
    for name in a.models:
        w.writerow([name, models.create(name).num_params(), a.batch_size, f"{best[name]:.1f}",
                    f"{a.batch_size / best[name] * 1000:.0f}", cpu_model(), np.__version__])
    atomic_write_bytes(Path(a.out), text.getvalue().encode())
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
