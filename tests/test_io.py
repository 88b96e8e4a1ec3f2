"""Checkpoints: round trip, atomic writes, no pickle, clear errors."""
import json
import zipfile

import numpy as np
import pytest

import minivit
from minivit import io, nn, optim


def small_model(seed=0):
    minivit.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_round_trip_model_optimizer_and_meta(tmp_path):
    m = small_model(0)
    opt = optim.AdamW(m.parameters(), lr=1e-2)
    x = minivit.tensor(np.ones((5, 3), np.float32))
    m(x).sum().backward()
    opt.step()
    io.save(m, tmp_path / "c.npz", optimizer=opt, epoch=3, note="hi")
    m2 = small_model(1)
    opt2 = optim.AdamW(m2.parameters(), lr=1e-2)
    meta = io.load(m2, tmp_path / "c.npz", optimizer=opt2)
    assert meta == {"epoch": 3, "note": "hi"}
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    sd1, sd2 = opt.state_dict(), opt2.state_dict()
    for i in sd1["state"]:
        for k, v in sd1["state"][i].items():
            np.testing.assert_array_equal(np.asarray(v), np.asarray(sd2["state"][i][k]))


def test_checkpoint_is_plain_npz_without_pickle(tmp_path):
    m = small_model()
    io.save(m, tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert "model/0.weight" in z.files
        doc = json.loads(z["__minivit__"].tobytes())
    assert doc["format"] == "minivit-checkpoint"


def test_errors_are_clear(tmp_path):
    m = small_model()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.load(m, tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a minivit checkpoint"):
        io.load(m, tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="no '__minivit__' entry"):
        io.load(m, tmp_path / "other.npz")
    big = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    io.save(big, tmp_path / "big.npz")
    with pytest.raises(ValueError, match="0.weight"):
        io.load(m, tmp_path / "big.npz")          # mis-shaped keys are named


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    m = small_model()
    path = tmp_path / "c.npz"
    io.save(m, path, epoch=1)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        io.save(m, path, epoch=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]   # no temp file left behind


def test_atomic_write_cleans_up_on_error(tmp_path, monkeypatch):
    import os
    def bad_replace(a, b):
        raise OSError("rename failed")
    monkeypatch.setattr(os, "replace", bad_replace)
    with pytest.raises(OSError):
        io.atomic_write_bytes(tmp_path / "x.bin", b"123")
    assert list(tmp_path.iterdir()) == []
    assert zipfile  # (imported for readers: a checkpoint is a zip archive)
