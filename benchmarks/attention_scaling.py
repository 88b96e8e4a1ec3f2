"""Why Swin and PVT exist: the cost of one attention layer as the image grows.

    python benchmarks/attention_scaling.py [--sizes 28 56 112 224] [--repeats 5] [--threads 1]

For each image size (28, 56, 112, 224 px) the token grid of a patch-4 model's
first stage is g x g with g = px / 4, so N = g^2 tokens (49 ... 3136), C = 64
channels, 2 heads, batch 1. One forward (evaluation mode, no graph) of the
token-mixing layer of each family is timed and its peak memory measured with
``tracemalloc`` (NumPy reports its buffers to it). The time plotted is the
process CPU time of the best of at least ``--repeats`` runs (and of as many as
fit in one second), with one BLAS thread by default: on a shared machine, wall
time also counts the time spent waiting for a core, CPU time of a
single-threaded run does not. The best and median wall times are in the CSV too.

- ViT, global MSA (``nn.Attention``): every query sees all N keys,
  logits N x N, cost O(N^2 C).
- Swin, shifted-window MSA (``SwinTransformerBlock.window_msa``, M = 7, shift 3):
  every query sees the M^2 = 49 keys of its window, cost O(N M^2 C). At 28 px
  the map is one 7x7 window (no shift), so it equals global attention there.
- PVT, spatial-reduction attention (``SpatialReductionAttention``, R = 7):
  every query sees N / R^2 keys, cost O(N^2 C / R^2). R = 7 is the one ratio
  that divides every grid here (7, 14, 28, 56); PVT-Tiny's stage 1 uses R = 8
  on its 56x56 grid (49 keys), nearly the same as R = 7's 64 keys at 224 px.

Theory, written next to the measurements (middle panel): the multiply-adds of
the logits and the weighted sum, 2 N k C with k keys per query, which is
O(N^2), O(N M^2) and O(N^2 / R^2); the same plus the projections (4 N C^2 for
ViT and Swin; N C^2 (q) + N C^2 (SR conv) + 2 (N/R^2) C^2 (kv) + N C^2 (proj)
for PVT); and (right panel) the bytes of the attention weights, heads N k
float32 values. O(N^2 / R^2) is still quadratic: PVT buys a constant factor
R^2, Swin a linear law. At these sizes the projections still dominate PVT's and
Swin's cost, so their measured times grow about linearly.

Writes ``benchmarks/results/attention_scaling.csv`` and ``.png``. Numbers depend
on the machine and its load; the slopes are the point. If Swin
(``minivit/models/swin.py``) cannot be imported, its rows are skipped with a message.
"""
import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[28, 56, 112, 224], help="image sizes in pixels")
    p.add_argument("--repeats", type=int, default=5, help="minimum timed forwards per point (best reported)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (set before NumPy loads)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--window", type=int, default=7, help="Swin's window M")
    p.add_argument("--sr", type=int, default=7, help="PVT's reduction ratio R (must divide every grid)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attention_scaling"),
                   help="output path without extension (.csv and .png are written)")
    return p.parse_args()


ARGS = parse_args()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import csv  # noqa: E402
import io as _io  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import minivit  # noqa: E402,F401  (before NumPy: it tunes OpenBLAS's threads, see minivit/_threads.py)
import numpy as np  # noqa: E402

from minivit import nn  # noqa: E402
from minivit.io import atomic_write_bytes  # noqa: E402
from minivit.models.pvt import SpatialReductionAttention  # noqa: E402

PATCH = 4


def load_swin():
    try:
        from minivit.models import swin
        return swin.SwinTransformerBlock
    except Exception as e:                       # noqa: BLE001 - any failure means: no Swin today
        print(f"Swin skipped: minivit.models.swin is not importable ({type(e).__name__}: {e})")
        return None


def layers(g, C, heads, M, R, SwinBlock):
    """(family, callable for one forward, keys per query) on a g x g grid, batch 1."""
    rng = np.random.default_rng(0)
    N = g * g
    tokens = minivit.tensor(rng.standard_normal((1, N, C)).astype(np.float32))
    out = []
    vit = nn.Attention(C, heads, qkv_bias=True).eval()
    out.append(("ViT (global)", lambda: vit(tokens), N))
    if SwinBlock is not None:
        try:
            blk = SwinBlock(C, (g, g), heads, window_size=M, shift_size=M // 2).eval()
            fmap = minivit.tensor(rng.standard_normal((1, g, g, C)).astype(np.float32))
            out.append(("Swin (windows)", lambda: blk.window_msa(fmap), blk.window_size ** 2))
        except Exception as e:                   # noqa: BLE001
            print(f"Swin skipped at {g}x{g}: {type(e).__name__}: {e}")
    pvt = SpatialReductionAttention(C, heads, qkv_bias=True, sr_ratio=R).eval()
    out.append(("PVT (spatial reduction)", lambda: pvt(tokens, g, g), N // (R * R)))
    return out


def theory(family, N, k, C, R):
    """Multiply-adds of one forward (projections included), those of the logits and
    the weighted sum alone (2 N k C), and the bytes of the attention weights."""
    if family.startswith("PVT"):
        proj = N * C * C + (N * C * C if R > 1 else 0) + 2 * (N // (R * R)) * C * C + N * C * C
    else:
        proj = 4 * N * C * C
    return proj + 2 * N * k * C, 2 * N * k * C, 4 * ARGS.heads * N * k


def measure(fn, repeats):
    """Best wall time, median wall time, best CPU time (ms), runs, peak bytes."""
    with minivit.no_grad():
        fn()                                                  # warm-up
        ts, cs = [], []
        while len(ts) < repeats or (sum(ts) < 1.0 and len(ts) < 100):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        tracemalloc.start()
        tracemalloc.reset_peak()
        fn()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return 1000 * float(np.min(ts)), 1000 * float(np.median(ts)), 1000 * float(np.min(cs)), len(ts), peak


def plot(rows, path, M, R):
    """Three log-log panels over N: measured time; theoretical multiply-adds (the
    attention term O(N^2), O(N M^2), O(N^2/R^2) dashed, with projections solid);
    measured peak memory next to the bytes of the attention weights (dotted)."""
    from matplotlib.figure import Figure
    from minivit import viz
    fams = list(dict.fromkeys(r["family"] for r in rows))
    colors = {"ViT (global)": "C3", "Swin (windows)": "C0", "PVT (spatial reduction)": "C2"}
    order = {"ViT (global)": "N²", "Swin (windows)": "N·M²", "PVT (spatial reduction)": "N²/R²"}
    fig = Figure(figsize=(13, 4))
    ax_t, ax_c, ax_m = fig.subplots(1, 3)
    for f in fams:
        rs = [r for r in rows if r["family"] == f]
        N = np.array([r["tokens"] for r in rs], float)
        c = colors.get(f)
        ax_t.loglog(N, [r["cpu_ms"] for r in rs], "o-", color=c, label=f)
        ax_c.loglog(N, [r["attn_macs"] for r in rs], "s--", color=c, label=f"{f}: 2NkC = O({order[f]})")
        ax_c.loglog(N, [r["theory_macs"] for r in rs], "-", color=c, alpha=0.5, lw=1,
                    label=f"{f}: with projections")
        ax_m.loglog(N, [r["peak_mem_mb"] for r in rs], "o-", color=c, label=f"{f}: tracemalloc peak")
        ax_m.loglog(N, [r["attn_weights_mb"] for r in rs], ":", color=c, label=f"{f}: weights, 4·heads·N·k B")
    px = [r["img_px"] for r in rows if r["family"] == fams[0]]
    Ns = [r["tokens"] for r in rows if r["family"] == fams[0]]
    for ax in (ax_t, ax_c, ax_m):
        ax.set_xticks(Ns, [f"{n}\n({p} px)" for n, p in zip(Ns, px)])
        ax.minorticks_off()
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("tokens N (image size)")
        ax.legend(fontsize=6.5)
    ax_t.set(ylabel="CPU ms per forward (best run)", title="measured: CPU time of one forward")
    ax_c.set(ylabel="multiply-adds", title=f"theory: multiply-adds (M={M}, R={R})")
    ax_m.set(ylabel="MB", title="measured: peak memory of one forward")
    fig.tight_layout()
    viz.save_figure(fig, path, dpi=80)


def main():
    a = ARGS
    SwinBlock = load_swin()
    print(f"attention layer: C={a.dim}, heads={a.heads}, batch 1, Swin M={a.window}, PVT R={a.sr}; "
          f"{a.threads} BLAS thread(s), {a.repeats} repeats")
    rows = []
    for px in a.sizes:
        if px % PATCH:
            raise SystemExit(f"--sizes: {px} px is not divisible by the patch size {PATCH}")
        g = px // PATCH
        if g % a.sr:
            raise SystemExit(f"--sr={a.sr} does not divide the {g}x{g} grid of a {px} px image")
        for family, fn, k in layers(g, a.dim, a.heads, a.window, a.sr, SwinBlock):
            best, med, cpu, n_runs, peak = measure(fn, a.repeats)
            macs, attn_macs, att_bytes = theory(family, g * g, k, a.dim, a.sr)
            rows.append({"family": family, "img_px": px, "grid": g, "tokens": g * g, "keys_per_query": k,
                         "cpu_ms": round(cpu, 4), "time_ms": round(best, 4), "time_ms_median": round(med, 4),
                         "runs": n_runs,
                         "dim": a.dim, "heads": a.heads, "window": a.window, "sr_ratio": a.sr, "threads": a.threads,
                         "peak_mem_mb": round(peak / 2 ** 20, 3), "attn_weights_mb": round(att_bytes / 2 ** 20, 3),
                         "attn_macs": attn_macs, "theory_macs": macs})
            print(f"{px:4d} px  N={g * g:5d}  {family:24s} keys/query {k:5d}  cpu {cpu:9.2f} ms  wall {best:9.2f} ms  "
                  f"peak {peak / 2 ** 20:8.2f} MB  ({macs / 1e6:8.1f} M multiply-adds)", flush=True)
    # log-log slope between the two largest sizes, in powers of N
    for f in dict.fromkeys(r["family"] for r in rows):
        rs = [r for r in rows if r["family"] == f]
        if len(rs) >= 2:
            s = np.log(rs[-1]["cpu_ms"] / rs[-2]["cpu_ms"]) / np.log(rs[-1]["tokens"] / rs[-2]["tokens"])
            print(f"{f:24s} measured CPU time ~ N^{s:.2f} between the two largest sizes")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = _io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out.with_suffix(".csv"), text.getvalue().encode())
    plot(rows, out.with_suffix(".png"), a.window, a.sr)
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
