"""The training loop: run folder contents, determinism, exact resume."""
import csv
import json

import numpy as np
import pytest

from minivit import data as D
from minivit.train import TrainConfig, evaluate, fit

SMALL = dict(model="vit_fmnist", batch_size=32, train_subset=128, lr=3e-3,
             model_kwargs=dict(depth=1, embed_dim=16, num_heads=2, drop_path_rate=0.1))


@pytest.fixture(scope="module")
def test_small():
    t = D.load_fashion_mnist(split="test")
    return D.ArrayDataset(t.images[:100], t.labels[:100])


def run(tmp, epochs, test_small, resume=False, **kw):
    cfg = TrainConfig(epochs=epochs, **{**SMALL, **kw})
    return fit(cfg, out_dir=tmp, resume=resume, test_set=test_small, progress=False, log=lambda *a: None)


def test_run_folder_has_everything(tmp_path, test_small):
    seen = []                           # the folder's files when each epoch's log line is printed
    cfg = TrainConfig(epochs=2, **SMALL)
    res = fit(cfg, out_dir=tmp_path / "r", test_set=test_small, progress=False,
              log=lambda *a: seen.append({p.name for p in (tmp_path / "r").iterdir()}))
    # after epoch 1: checkpoint, metrics and curves; the confusion matrix is drawn for the final model only
    assert {"config.json", "metrics.csv", "checkpoint.npz", "curves.png"} <= seen[0]
    assert "confusion.png" not in seen[0]
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert files == seen[1]
    assert {"config.json", "metrics.csv", "checkpoint.npz", "curves.png", "confusion.png"} <= files
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s"} <= set(rows[0])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["batch_size"] == 32
    assert res["final"]["confusion"].sum() == 100


def test_same_seed_same_numbers(tmp_path, test_small):
    a = run(tmp_path / "a", 1, test_small)
    b = run(tmp_path / "b", 1, test_small)
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    c = run(tmp_path / "c", 1, test_small, seed=1)
    assert c["history"][0]["train_loss"] != a["history"][0]["train_loss"]


def test_resume_continues_exactly(tmp_path, test_small):
    full = run(tmp_path / "full", 3, test_small, augment="flip,crop", patch_drop=0.5)
    assert full["model"].patch_drop.prob == 0.5        # patch dropout draws from the saved generator too

    class Killed(Exception):
        pass

    def kill(*_):                       # the process dies right after epoch 1 was saved
        raise Killed
    cfg = TrainConfig(epochs=3, augment="flip,crop", patch_drop=0.5, **SMALL)
    with pytest.raises(Killed):
        fit(cfg, out_dir=tmp_path / "part", test_set=test_small, progress=False, log=kill)
    resumed = run(tmp_path / "part", 3, test_small, resume=True, augment="flip,crop", patch_drop=0.5)
    for k in ("train_loss", "test_loss", "test_acc"):
        assert [h[k] for h in resumed["history"]] == [h[k] for h in full["history"]], k
    sd_full, sd_res = full["model"].state_dict(), resumed["model"].state_dict()
    for k in sd_full:
        np.testing.assert_array_equal(sd_full[k], sd_res[k], err_msg=k)


def test_loss_falls_and_evaluate_agrees(tmp_path, test_small):
    res = run(None, 3, test_small)
    h = res["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    ev = evaluate(res["model"], test_small)
    assert ev["acc"] == pytest.approx(res["final"]["acc"])


def test_eval_every_tests_every_kth_epoch_and_the_last(tmp_path, test_small):
    every = run(tmp_path / "k", 5, test_small, eval_every=2)
    h = every["history"]
    tested = [not np.isnan(r["test_acc"]) for r in h]
    assert tested == [False, True, False, True, True]             # epochs 2, 4 and the last, 5
    rows = list(csv.DictReader(open(tmp_path / "k" / "metrics.csv")))
    assert [r["test_acc"] == "nan" for r in rows] == [not t for t in tested]
    full = run(tmp_path / "all", 5, test_small)                     # testing changes no training number
    assert [r["train_loss"] for r in h] == [r["train_loss"] for r in full["history"]]
    assert h[-1]["test_acc"] == full["history"][-1]["test_acc"]


@pytest.mark.parametrize("field,value,msg", [("lr", -0.1, "lr must be"), ("batch_size", 0, "batch_size must be"),
                                             ("augment", "rotate", "unknown augmentation"),
                                             ("eval_every", 0, "eval_every must be"),
                                             ("patch_drop", 1.0, "patch_drop must be a fraction")])
def test_bad_config_is_rejected(field, value, msg):
    cfg = TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=msg):
        cfg.validate()


def test_mixup_cutmix_training_runs(test_small):
    res = run(None, 1, test_small, mixup=0.8, cutmix=1.0, augment="flip,crop,erase")
    assert np.isfinite(res["history"][0]["train_loss"])


def test_patch_drop_is_the_models_patch_drop_rate_and_costs_no_random_draws(test_small):
    """cfg.patch_drop builds the same model as model_kwargs={"patch_drop_rate": ...} and trains to the
    same numbers; asking whether a model supports it leaves minivit's generator where it was."""
    import minivit
    from minivit.train import supports_patch_drop
    a = run(None, 1, test_small, patch_drop=0.5)
    b = run(None, 1, test_small, model_kwargs={**SMALL["model_kwargs"], "patch_drop_rate": 0.5})
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    assert a["model"].patch_drop.prob == 0.5
    before = minivit.manual_seed(4).random()
    minivit.manual_seed(4)
    assert supports_patch_drop("vit_fmnist") and not supports_patch_drop("cnn_fmnist")
    assert minivit.get_rng().random() == before
    with pytest.raises(ValueError, match="model 'cnn_fmnist' has no patch dropout"):
        run(None, 1, test_small, model="cnn_fmnist", model_kwargs={}, patch_drop=0.5)
