"""The command line: it works, and every bad input is a one-line message and a non-zero exit."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, cwd=None, env=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "minivit", *args], capture_output=True, text=True,
                          cwd=cwd, env=e, timeout=600)


def assert_clean_error(r, pattern):
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    assert pattern in r.stderr, r.stderr


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    r = cli("train", "--epochs", "1", "--train-subset", "128", "--batch-size", "64", "--out", str(out),
            "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


def test_train_writes_run_folder(trained_run):
    assert (trained_run / "checkpoint.npz").is_file() and (trained_run / "metrics.csv").is_file()


def test_evaluate_run_and_checkpoint(trained_run):
    for target in (trained_run, trained_run / "checkpoint.npz"):
        r = cli("evaluate", str(target))
        assert r.returncode == 0, r.stderr
        assert "test accuracy" in r.stdout


def test_train_never_overwrites_a_run(trained_run):
    before = (trained_run / "checkpoint.npz").read_bytes()
    r = cli("train", "--epochs", "1", "--train-subset", "64", "--batch-size", "64", "--out", str(trained_run),
            "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (trained_run / "checkpoint.npz").read_bytes() == before
    assert Path(f"{trained_run}-2/checkpoint.npz").is_file()


def test_resume_extends_a_run(trained_run, tmp_path):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    r = cli("train", "--resume", str(run), "--epochs", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3   # header + 2 epochs


def test_list_and_help():
    r = cli("list")
    assert r.returncode == 0 and "vit_fmnist" in r.stdout
    for sub in ("train", "evaluate", "list", "bench", "convert"):
        r = cli(sub, "--help")
        assert r.returncode == 0 and "usage" in r.stdout


def test_bench_prints_numbers():
    r = cli("bench", "--steps", "1", "--warmup", "0", "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    assert "ms/step" in r.stdout
    r = cli("bench", "--steps", "1", "--warmup", "0", "--batch-size", "8", "--patch-drop", "0.5")
    assert r.returncode == 0 and "batch 8, patch dropout 0.5, median" in r.stdout, r.stderr
    assert_clean_error(cli("bench", "--model", "cnn_fmnist", "--patch-drop", "0.5"), "has no patch dropout")


@pytest.mark.parametrize("args,pattern", [
    (["train", "--model", "vit_fminst"], "Did you mean vit_fmnist"),
    (["train", "--lr", "-0.1"], "expected a positive number"),
    (["train", "--batch-size", "0"], "expected a positive integer"),
    (["train", "--data", "/nonexistent/dir"], "/nonexistent/dir"),
    (["train", "--model", "vit_fmnist", "--augment", "rotate"], "unknown augmentation"),
    (["train", "--resume", "/nonexistent/run"], "no config.json"),
    (["train", "--patch-drop", "1.5"], "patch_drop must be a fraction in [0, 1), got 1.5"),
    (["train", "--model", "cnn_fmnist", "--patch-drop", "0.5"], "model 'cnn_fmnist' has no patch dropout"),
])
def test_bad_train_input(args, pattern, tmp_path):
    assert_clean_error(cli(*args, "--no-progress", cwd=tmp_path), pattern)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_default_recipe_uses_patch_dropout_where_the_model_has_it(trained_run):
    """vit_fmnist trains 16 epochs on half its patches; a model without patch dropout trains 8 epochs
    of whole images, about the same compute. The run folder records what was used."""
    import json
    from minivit.train import cli_defaults
    assert cli_defaults("vit_fmnist")["patch_drop"] == 0.5 and cli_defaults("vit_fmnist")["epochs"] == 16
    assert cli_defaults("deit_fmnist")["patch_drop"] == 0.5
    for name in ("cnn_fmnist", "swin_fmnist", "diverse_vit_fmnist"):
        assert cli_defaults(name)["patch_drop"] == 0.0 and cli_defaults(name)["epochs"] == 8, name
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["patch_drop"] == 0.5 and cfg["model_kwargs"] == {}


def test_bad_model_config_is_clean(tmp_path):
    # image size not divisible by patch size, through the Python API that the CLI uses
    from minivit import models
    with pytest.raises(ValueError, match="does not divide"):
        models.create("vit_fmnist", patch_size=5)


def test_bad_checkpoints(tmp_path):
    assert_clean_error(cli("evaluate", str(tmp_path / "nope.npz")), "does not exist")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"garbage")
    assert_clean_error(cli("evaluate", str(junk)), "not a minivit checkpoint")
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    assert_clean_error(cli("evaluate", str(tmp_path / "plain.npz")), "not a minivit checkpoint")


def test_corrupt_data_dir(tmp_path):
    d = tmp_path / "fm"
    d.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (d / name).write_bytes(b"\x1f\x8b not really gzip")
    assert_clean_error(cli("train", "--data", str(d), "--no-progress", cwd=tmp_path), str(d))


def test_deit_distillation_from_a_trained_teacher(trained_run, tmp_path):
    # trained_run is a vit_fmnist run: any trained 10-class model can teach
    out = tmp_path / "deit"
    r = cli("train", "--model", "deit_fmnist", "--teacher", str(trained_run), "--distill", "soft",
            "--distill-tau", "2", "--epochs", "1", "--train-subset", "64", "--batch-size", "32",
            "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    import json
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["teacher"], cfg["distill"], cfg["distill_tau"]) == (str(trained_run), "soft", 2.0)
    r = cli("train", "--resume", str(out), "--epochs", "2", "--no-progress")   # the teacher comes back too
    assert r.returncode == 0, r.stderr
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 3


def test_distilled_model_trains_and_benches_without_teacher(tmp_path):
    r = cli("bench", "--model", "deit_fmnist", "--steps", "1", "--warmup", "0", "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    r = cli("train", "--model", "deit_fmnist", "--epochs", "1", "--train-subset", "32", "--batch-size", "32",
            "--out", str(tmp_path / "d"), "--no-progress")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("extra,pattern", [
    (["--teacher", "/nonexistent/teacher"], "teacher /nonexistent/teacher does not exist"),
    (["--distill", "hard"], "distillation needs both a teacher"),
    (["--distill", "medium"], "invalid choice: 'medium'"),
])
def test_bad_distillation_input(extra, pattern, tmp_path):
    assert_clean_error(cli("train", "--model", "deit_fmnist", *extra, "--no-progress", cwd=tmp_path), pattern)
    assert not (tmp_path / "runs").exists()


def test_distillation_needs_a_two_headed_student(trained_run, tmp_path):
    r = cli("train", "--model", "vit_fmnist", "--teacher", str(trained_run), "--no-progress", cwd=tmp_path)
    assert_clean_error(r, "needs a distilled student")
    assert not (tmp_path / "runs").exists()


def test_convert_bad_input_is_a_clean_error(tmp_path):
    r = cli("convert", "--from-timm", "vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "nope.pth"),
            str(tmp_path / "out.npz"))
    assert_clean_error(r, "nope.pth")
    r = cli("convert", "--from-timm", "resnet50", str(tmp_path / "out.npz"))
    assert_clean_error(r, "resnet50")
    assert not (tmp_path / "out.npz").exists()
