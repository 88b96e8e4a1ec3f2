"""Time one training step (forward, backward, AdamW) of vit_fmnist at batch 128.

    python benchmarks/bench_train.py [--steps 8] [--rounds 4] [--batch-size 128] [--threads 2]

Prints minivit's ms/step and images/s; when torch and timm are importable it
times the same model in PyTorch (timm VisionTransformer, same thread count)
in the same run and prints the ratio minivit / PyTorch. Compare ratios, not
absolute times from other machines.
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minivit  # noqa: E402,F401  (before NumPy: it tunes OpenBLAS's threads, see minivit/_threads.py)
import numpy as np  # noqa: E402


def time_steps(step, steps):
    """Per-step wall times (s) of ``steps`` calls."""
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return ts


def minivit_step_fn(batch, model_name="vit_fmnist"):
    from minivit import functional as F, models, optim
    from minivit._allocator import tune_allocator
    tune_allocator()                 # what `fit` does too
    minivit.manual_seed(0)
    model = models.create(model_name)
    opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def step():
        loss = F.cross_entropy(model(minivit.Tensor(x)), y, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def torch_step_fn(batch, threads):
    import timm
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64,
                                          depth=6, num_heads=4, mlp_ratio=2.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step():
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def matmul_gflops(n=1024, reps=10):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for PyTorch and for minivit's row blocks (minivit.set_num_threads); "
                        "OpenBLAS keeps its own count (OPENBLAS_NUM_THREADS)")
    p.add_argument("--no-torch", action="store_true")
    a = p.parse_args()
    minivit.set_num_threads(a.threads)
    print(f"machine: {os.cpu_count()} cores, NumPy {np.__version__}, float32 matmul {matmul_gflops():.0f} GFLOP/s")
    mv_step = minivit_step_fn(a.batch_size)
    t_step = None
    if not a.no_torch:
        try:
            import timm  # noqa: F401
            import torch
            t_step = torch_step_fn(a.batch_size, a.threads)
        except ImportError:
            print("torch/timm not importable: no PyTorch comparison")
    # Interleave the two in rounds, so that a machine whose speed drifts (other
    # tenants, clock changes) slows both alike; each round's ratio is reported.
    mv, tt, ratios = [], [], []
    for r in range(a.rounds):
        time_steps(mv_step, 2)                           # warm-up
        m = time_steps(mv_step, a.steps)
        mv += m
        if t_step is not None:
            time_steps(t_step, 2)
            t = time_steps(t_step, a.steps)
            tt += t
            ratios.append(np.median(m) / np.median(t))
    ms = 1000 * float(np.median(mv))
    print(f"minivit  vit_fmnist batch {a.batch_size}: {ms:7.1f} ms/step  {a.batch_size / ms * 1000:7.0f} images/s")
    if t_step is None:
        return
    tms = 1000 * float(np.median(tt))
    print(f"PyTorch {torch.__version__} ({a.threads} threads): {tms:7.1f} ms/step  "
          f"{a.batch_size / tms * 1000:7.0f} images/s")
    print("ratio per round: " + " ".join(f"{r:.2f}" for r in ratios))
    print(f"ratio minivit / PyTorch: {ms / tms:.2f}x (median step over {a.rounds} interleaved rounds "
          f"of {a.steps} steps each)")

if __name__ == "__main__":
    main()
