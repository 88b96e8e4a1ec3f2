"""One run of the default recipe (`minivit.train.CLI_DEFAULTS`) with overrides, for the
seed study behind the default run (issue 3):

    python benchmarks/recipe_probe.py SEED '{"epochs": 10}'
    python benchmarks/recipe_probe.py SEED '{"augment": "flip"}'
    python benchmarks/recipe_probe.py SEED '{"betas": [0.9, 0.98]}'   # AdamW betas, patched in

Prints each epoch and a final ``RESULT {json}`` line (final test accuracy, wall and training time,
per-epoch test accuracy). The logs of the runs are in benchmarks/results/logs/recipe_probe_*.log.
The logs ran with the defaults of their time, 8 epochs without patch dropout (commit f96fed5 and
earlier), plus the overrides each names; today's defaults are 16 epochs with patch_drop 0.5. So an
old run is today ``'{"epochs": 8, "patch_drop": 0, ...its overrides}'``, and ``SEED`` alone runs
the current default (seed 0 gives the same numbers as `python -m minivit train`).
"""
import sys, time, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minivit
from minivit import optim
from minivit.train import TrainConfig, fit, CLI_DEFAULTS

seed = int(sys.argv[1])
extra = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
betas = extra.pop("betas", None)
if betas:
    Base = optim.AdamW
    class B(Base):
        def __init__(self, params, **kw):
            kw["betas"] = tuple(betas)
            super().__init__(params, **kw)
    optim.AdamW = B
kw = dict(CLI_DEFAULTS); kw.update(extra)
cfg = TrainConfig(seed=seed, **kw)
t0 = time.perf_counter()
res = fit(cfg, progress=False, log=print)
wall = time.perf_counter() - t0
accs = [h["test_acc"] for h in res["history"]]
print("RESULT", json.dumps({"seed": seed, "extra": extra, "betas": betas, "acc": accs[-1], "wall": round(wall),
                            "train_s": round(sum(h["epoch_time_s"] for h in res["history"])),
                            "per_epoch": accs}), flush=True)
