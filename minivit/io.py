"""Checkpoints as ``.npz`` files: no pickle, atomic writes, clear errors.

A checkpoint is an ordinary NumPy ``.npz`` archive:

- ``model/<dotted.name>``      one array per parameter / persistent buffer
- ``optimizer/...``, ``scheduler/...``  arrays of the optimizer / schedule state
- ``__minivit__``              a JSON document (stored as bytes) with the format
  version, the non-array parts of those states, and any metadata
  (epoch, config, RNG state ...)

so it can be inspected with ``np.load(path)`` and read without unpickling.
"""
from __future__ import annotations

import io as _io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["save", "load", "read_checkpoint", "write_checkpoint", "atomic_write_bytes"]

FORMAT = "minivit-checkpoint"
VERSION = 1


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename, so a crash
    never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _flatten(obj, prefix, arrays):
    """Split a nested state (dicts/lists of arrays and numbers) into arrays + JSON."""
    if isinstance(obj, np.ndarray):
        arrays[prefix] = obj
        return {"__array__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _flatten(v, f"{prefix}/{k}", arrays)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _key(k):
    return k if isinstance(k, str) else {"int": int(k)}


def _unflatten(obj, arrays):
    if isinstance(obj, dict) and "__array__" in obj:
        return arrays[obj["__array__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {(k["int"] if isinstance(k, dict) else k): _unflatten(v, arrays) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, arrays) for v in obj]
    return obj


def write_checkpoint(path, model_state: dict, optimizer_state=None, scheduler_state=None,
                     meta: dict | None = None) -> None:
    """Write a checkpoint atomically from plain state dicts."""
    arrays = {f"model/{k}": np.asarray(v) for k, v in model_state.items()}
    doc = {"format": FORMAT, "version": VERSION, "meta": meta or {}}
    if optimizer_state is not None:
        doc["optimizer"] = _flatten(optimizer_state, "optimizer", arrays)
    if scheduler_state is not None:
        doc["scheduler"] = _flatten(scheduler_state, "scheduler", arrays)
    arrays["__minivit__"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path) -> dict:
    """Read a checkpoint without unpickling.

    Returns ``{"model": {name: array}, "optimizer": state or None,
    "scheduler": state or None, "meta": dict}``. Raises FileNotFoundError or
    ValueError with a message that says what is wrong with the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory; give the .npz file inside it")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a minivit checkpoint (not a readable .npz archive: {e})") from None
    if "__minivit__" not in arrays:
        raise ValueError(f"{path} is an .npz archive but not a minivit checkpoint (no '__minivit__' entry)")
    try:
        doc = json.loads(arrays.pop("__minivit__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: the checkpoint's '__minivit__' entry is corrupt ({e})") from None
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {doc.get('format')!r}")
    model = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    return {"model": model,
            "optimizer": _unflatten(doc["optimizer"], arrays) if "optimizer" in doc else None,
            "scheduler": _unflatten(doc["scheduler"], arrays) if "scheduler" in doc else None,
            "meta": doc.get("meta", {})}


def save(model, path, optimizer=None, scheduler=None, **meta) -> None:
    """Save ``model`` (and optionally optimizer/scheduler state and JSON-able
    metadata such as ``epoch=3``) to ``path`` atomically."""
    write_checkpoint(path, model.state_dict(),
                     optimizer.state_dict() if optimizer is not None else None,
                     scheduler.state_dict() if scheduler is not None else None, meta)


def load(model, path, optimizer=None, scheduler=None, strict: bool = True) -> dict:
    """Load weights (and optionally optimizer/scheduler state) saved by :func:`save`
    into ``model``. Returns the metadata. Missing, unexpected or mis-shaped keys
    raise an error naming them (``strict=True``)."""
    ckpt = read_checkpoint(path)
    try:
        model.load_state_dict(ckpt["model"], strict=strict)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise type(e)(f"{path}: {msg}") from None
    if optimizer is not None:
        if ckpt["optimizer"] is None:
            raise ValueError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        if ckpt["scheduler"] is None:
            raise ValueError(f"{path} holds no scheduler state")
        scheduler.load_state_dict(ckpt["scheduler"])
    return ckpt["meta"]
