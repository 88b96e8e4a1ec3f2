"""Time one training step (forward, backward, AdamW) of vit_fmnist at batch 128.

    python benchmarks/bench_train.py [--steps 20] [--batch-size 128] [--threads 2]

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

import numpy as np  # noqa: E402


def time_steps(step, steps, warmup=3):
    for _ in range(warmup):
        step()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return 1000 * float(np.median(ts))


def minivit_step_fn(batch):
    import minivit
    from minivit import functional as F, models, optim
    from minivit._allocator import tune_allocator
    tune_allocator()                 # what `fit` does too
    minivit.manual_seed(0)
    model = models.create("vit_fmnist")
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
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-torch", action="store_true")
    a = p.parse_args()
    print(f"machine: {os.cpu_count()} cores, NumPy {np.__version__}, float32 matmul {matmul_gflops():.0f} GFLOP/s")
    ms = time_steps(minivit_step_fn(a.batch_size), a.steps)
    print(f"minivit  vit_fmnist batch {a.batch_size}: {ms:7.1f} ms/step  {a.batch_size / ms * 1000:7.0f} images/s")
    if a.no_torch:
        return
    try:
        import timm  # noqa: F401
        import torch
    except ImportError:
        print("torch/timm not importable: no PyTorch comparison")
        return
    tms = time_steps(torch_step_fn(a.batch_size, a.threads), a.steps)
    print(f"PyTorch {torch.__version__} ({a.threads} threads): {tms:7.1f} ms/step  "
          f"{a.batch_size / tms * 1000:7.0f} images/s")
    print(f"ratio minivit / PyTorch: {ms / tms:.2f}x")


if __name__ == "__main__":
    main()
