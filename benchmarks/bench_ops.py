"""Forward+backward time of the composite ops at ViT-sized shapes.

    python benchmarks/bench_ops.py [--reps 10]

Shapes: batch 128, 50 tokens, 64 channels, 4 heads (vit_fmnist). For the
matmul-heavy ops it prints the achieved GFLOP/s next to ``np.matmul``'s on
the same machine; when torch is importable it times ``torch.nn.functional``
with the same thread count in the same run and prints the ratio
minivit / torch (below 1 means minivit is faster). Nothing is asserted.
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minivit  # noqa: E402,F401  (before NumPy: it tunes OpenBLAS's threads, see minivit/_threads.py)
import numpy as np  # noqa: E402

from minivit import functional as F  # noqa: E402

B, N, C, H = 128, 50, 64, 4
d = C // H


def median_ms(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * float(np.median(ts))


def cases(rng):
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    x_att, x_tok, x_mlp = f32(B, H, N, N), f32(B, N, C), f32(B, N, 2 * C)
    q, k, v = f32(B, H, N, d), f32(B, H, N, d), f32(B, H, N, d)
    img, w_patch = f32(B, 1, 28, 28), f32(C, 1, 4, 4)
    fmap, w_dw = f32(B, C, 14, 14), f32(C, 1, 3, 3)
    w, b = f32(C), f32(C)
    flops_att = 2 * 2 * B * H * N * N * d             # QK^T and PV, forward
    return [
        ("softmax (B,H,N,N)", lambda m: m.softmax(m.t(x_att), -1), None),
        ("layer_norm (B,N,C)", lambda m: m.layer_norm(m.t(x_tok), (C,), m.t(w), m.t(b), 1e-6), None),
        ("gelu (B,N,2C)", lambda m: m.gelu(m.t(x_mlp)), None),
        ("attention (B,H,N,d)", lambda m: m.sdpa(m.t(q), m.t(k), m.t(v)), 3 * flops_att),
        ("conv2d patch 4x4/4", lambda m: m.conv2d(m.t(img), m.t(w_patch), None, 4, 0, 1, 1),
         3 * 2 * B * C * 49 * 16),
        ("conv2d depthwise 3x3", lambda m: m.conv2d(m.t(fmap), m.t(w_dw), None, 1, 1, 1, C),
         3 * 2 * B * C * 14 * 14 * 9),
    ]


class Mini:
    @staticmethod
    def t(a):
        return minivit.tensor(a, requires_grad=True)
    softmax = staticmethod(F.softmax)
    layer_norm = staticmethod(F.layer_norm)
    gelu = staticmethod(F.gelu)
    sdpa = staticmethod(F.scaled_dot_product_attention)
    conv2d = staticmethod(F.conv2d)

    @staticmethod
    def run(out):
        out.backward(np.ones(out.shape, out.dtype))


def torch_backend():
    import torch
    import torch.nn.functional as TF

    class Torch:
        @staticmethod
        def t(a):
            return torch.from_numpy(a).requires_grad_(True)
        softmax = staticmethod(TF.softmax)
        layer_norm = staticmethod(TF.layer_norm)
        gelu = staticmethod(TF.gelu)
        sdpa = staticmethod(TF.scaled_dot_product_attention)
        conv2d = staticmethod(TF.conv2d)

        @staticmethod
        def run(out):
            out.backward(torch.ones_like(out))
    return Torch, torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    rng = np.random.default_rng(0)
    m = rng.standard_normal((1024, 1024)).astype(np.float32)
    mm = median_ms(lambda: m @ m, a.reps)
    gf_np = 2 * 1024 ** 3 / mm / 1e6
    print(f"np.matmul float32 1024x1024: {gf_np:.0f} GFLOP/s")
    try:
        Torch, torch = torch_backend()
        torch.set_num_threads(a.threads)
        print(f"torch {torch.__version__}, {a.threads} threads")
    except ImportError:
        Torch = None
        print("torch not importable: no ratio column")
    print(f"{'op (fwd+bwd)':26s} {'minivit ms':>11s} {'GFLOP/s':>8s} {'torch ms':>9s} {'ratio':>6s}")
    for name, fn, flops in cases(rng):
        ms = median_ms(lambda: Mini.run(fn(Mini)), a.reps)
        gf = f"{flops / ms / 1e6:8.0f}" if flops else f"{'':8s}"
        if Torch is not None:
            tms = median_ms(lambda: Torch.run(fn(Torch)), a.reps)
            print(f"{name:26s} {ms:11.2f} {gf} {tms:9.2f} {ms / tms:6.2f}")
        else:
            print(f"{name:26s} {ms:11.2f} {gf}")


if __name__ == "__main__":
    main()
