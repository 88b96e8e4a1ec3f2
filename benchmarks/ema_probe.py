"""Does an exponential moving average (EMA) of the weights help the default run?  One run of
the default recipe (`minivit.train.CLI_DEFAULTS`) that also keeps EMA shadows of every trained
weight at decays 0.99, 0.995, 0.998 and 0.999 (updated after every AdamW step) and, at the end,
tests the raw weights and each shadow on the same 2,000 test images: a paired comparison.

    python benchmarks/ema_probe.py SEED ['{"epochs": 10}']

Prints ``RESULT {json}`` with the test accuracy of the raw weights and of each EMA.
Log of the seeds 0-2 run: benchmarks/results/logs/recipe_probe_ema.log.
"""
import sys, time, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minivit
import numpy as np
from minivit import optim
from minivit.train import TrainConfig, fit, evaluate, CLI_DEFAULTS
from minivit.data import load_fashion_mnist

seed = int(sys.argv[1])
extra = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
decays = [0.99, 0.995, 0.998, 0.999]
shadows = {}
ps = []                                   # the trained parameters, in the order of the shadows
Base = optim.AdamW

class EmaAdamW(Base):
    def step(self):
        super().step()
        if not shadows:
            ps.extend(p for g in self.param_groups for p in g["params"])
            for d in decays:
                shadows[d] = [p.data.copy() for p in ps]
        for d in decays:
            for s, p in zip(shadows[d], ps):
                s *= d
                s += (1 - d) * p.data
optim.AdamW = EmaAdamW
kw = dict(CLI_DEFAULTS); kw.update(extra)
cfg = TrainConfig(seed=seed, **kw)
t0 = time.perf_counter()
res = fit(cfg, progress=False, log=print)
print("fit wall", time.perf_counter() - t0)
model = res["model"]
test = load_fashion_mnist(split="test")
raw = [p.data.copy() for p in ps]
out = {"seed": seed, "extra": extra, "raw": res["final"]["acc"]}
for d in decays:
    for p, s in zip(ps, shadows[d]):
        p.data[...] = s
    out[str(d)] = evaluate(model, test)["acc"]
for p, r in zip(ps, raw):
    p.data[...] = r
print("RESULT", json.dumps(out), flush=True)
