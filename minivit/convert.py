"""Convert weights between timm (PyTorch) and minivit.

Two directions, on the command line and as functions:

    python -m minivit convert --from-timm MODEL_NAME OUT.npz [--checkpoint FILE]
        timm weights -> a minivit checkpoint (``minivit.io.load`` and
        ``python -m minivit evaluate`` read it).           :func:`from_timm`
    python -m minivit convert --to-torch RUN_OR_NPZ OUT.npz
        a minivit checkpoint -> a plain ``.npz`` with timm's key names, which
        ``timm.create_model(...).load_state_dict({k: torch.from_numpy(v) ...})``
        accepts.                                            :func:`to_torch`

Where the weights come from (``--from-timm``):

- ``--checkpoint FILE``: a timm / PyTorch checkpoint file. ``.pth``, ``.pt``,
  ``.bin`` are read with ``torch.load(..., weights_only=True)`` (needs torch;
  timm's own training checkpoints keep an ``argparse.Namespace`` under
  ``"args"``, and that one class is allowed too); ``.safetensors`` and
  ``.npz`` (arrays named like timm's state dict, e.g. made by ``--to-torch``)
  are read with NumPy alone. A dict holding the weights under ``"state_dict"``
  (timm's ``train.py``) or ``"model"`` (the official DeiT/ConViT/Swin releases)
  is unwrapped, and DataParallel's ``module.`` prefix is removed.
- no ``--checkpoint``: ``timm.create_model(MODEL_NAME, pretrained=False)``, i.e.
  timm's *random* initialisation (``--seed``). Pretrained weights are never
  downloaded: get the file elsewhere and pass it with ``--checkpoint``.

Which minivit model a timm name becomes (:data:`TIMM_MODELS`). The bigger
timm configs are minivit's tiny configs with other widths/depths, recorded as
``model_kwargs`` in the checkpoint so ``evaluate`` rebuilds the same model::

    timm name                          minivit model + model_kwargs
    vit_tiny_patch16_224               vit_tiny_patch16_224
    vit_small_patch16_224              vit_tiny_patch16_224  embed_dim=384, num_heads=6
    vit_base_patch16_224               vit_tiny_patch16_224  embed_dim=768, num_heads=12
    deit_{tiny,small,base}[_distilled]_patch16_224   deit_tiny[_distilled]_patch16_224 (+ the same widths)
    convit_tiny / _small / _base       convit_tiny  (small: embed_dim=432, num_heads=9; base: 768, 16)
    swin_tiny_patch4_window7_224       swin_tiny_patch4_window7_224
    swin_small_patch4_window7_224      swin_tiny_patch4_window7_224  depths=[2, 2, 18, 2]
    swin_base_patch4_window7_224       swin_tiny_patch4_window7_224  embed_dim=128, depths=[2, 2, 18, 2],
                                                                     num_heads=[4, 8, 16, 32]

A pretrained tag (``vit_tiny_patch16_224.augreg_in21k``) is ignored for the
lookup. minivit's small Fashion-MNIST configs have no registered timm name;
their timm counterpart is timm's class with the same config
(:data:`TIMM_CLASSES`), so ``--from-timm vit_fmnist`` works too. Any other
timm name of these four families converts with ``--model`` (the minivit model
to load into) and ``--model-kwargs`` (its config, as JSON).

The key mapping, one place per model family (:func:`key_map`; the minivit
model's exact class decides, so a subclass that adds weights timm lacks, like
``DiverseViT``'s patch head, has none). minivit's ViT, DeiT, ConViT and Swin
follow timm's module trees, so the maps are nearly identities:

- ``VisionTransformer`` (``vit_*``, ``deit_tiny_patch16_224``) <-> timm
  ``VisionTransformer``: identical names.
- ``VisionTransformerDistilled`` (``deit_*distilled*``, ``deit_fmnist``) <->
  timm ``VisionTransformerDistilled``: ``minivit.models.deit.TIMM_KEY_MAP``
  (empty: ``dist_token``, ``head_dist`` ... are the same names).
- ``ConViT`` <-> timm ``ConVit``: identical names. ``rel_indices`` (a
  non-persistent buffer in timm, recomputed in minivit) is dropped should a
  file carry it. Only the *constructor* differs: timm's ``embed_dim`` is per
  head (ConViT-Ti: 48), minivit's is the total width (192).
- ``SwinTransformer`` <-> timm ``SwinTransformer``: identical names.
  ``relative_position_index`` and ``attn_mask`` (recomputed from the config;
  older timm versions and the official release saved them) are dropped. A
  checkpoint with the official microsoft/Swin-Transformer names (recognised by
  ``layers.0.downsample.*``, which timm never has) is renamed by
  ``minivit.models.swin.convert_official_state_dict``.

A minivit checkpoint holds the model's dtype (float32): float16/bfloat16/float64
weights are cast, as ``Module.load_state_dict`` does. ``--to-torch`` writes the
arrays as the checkpoint stores them.

Every mistake (torch/timm missing, a model minivit lacks, shapes that do not
match, a file that is not a checkpoint, an existing OUT without ``--force``)
raises ValueError or FileNotFoundError with a one-line message; the output is
written atomically (``minivit.io``), so a failure never leaves half a file.
This module never imports torch or timm at import time.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import io as _io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minivit import io

__all__ = ["TIMM_MODELS", "TIMM_CLASSES", "KeyMap", "key_map", "resolve", "timm_to_minivit",
           "minivit_to_timm", "load_timm", "read_timm_checkpoint", "read_safetensors", "create_timm_model",
           "timm_call", "from_timm", "to_torch", "add_parser", "cmd_convert"]

INSTALL_HINT = "install the optional dependencies with `pip install -r requirements-dev.txt`"

# timm name (without a pretrained tag) -> (minivit model, minivit kwargs that give timm's config)
TIMM_MODELS: dict = {
    "vit_tiny_patch16_224": ("vit_tiny_patch16_224", {}),
    "vit_small_patch16_224": ("vit_tiny_patch16_224", {"embed_dim": 384, "num_heads": 6}),
    "vit_base_patch16_224": ("vit_tiny_patch16_224", {"embed_dim": 768, "num_heads": 12}),
    "deit_tiny_patch16_224": ("deit_tiny_patch16_224", {}),
    "deit_small_patch16_224": ("deit_tiny_patch16_224", {"embed_dim": 384, "num_heads": 6}),
    "deit_base_patch16_224": ("deit_tiny_patch16_224", {"embed_dim": 768, "num_heads": 12}),
    "deit_tiny_distilled_patch16_224": ("deit_tiny_distilled_patch16_224", {}),
    "deit_small_distilled_patch16_224": ("deit_tiny_distilled_patch16_224", {"embed_dim": 384, "num_heads": 6}),
    "deit_base_distilled_patch16_224": ("deit_tiny_distilled_patch16_224", {"embed_dim": 768, "num_heads": 12}),
    "convit_tiny": ("convit_tiny", {}),
    "convit_small": ("convit_tiny", {"embed_dim": 432, "num_heads": 9}),
    "convit_base": ("convit_tiny", {"embed_dim": 768, "num_heads": 16}),
    "swin_tiny_patch4_window7_224": ("swin_tiny_patch4_window7_224", {}),
    "swin_small_patch4_window7_224": ("swin_tiny_patch4_window7_224", {"depths": [2, 2, 18, 2]}),
    "swin_base_patch4_window7_224": ("swin_tiny_patch4_window7_224",
                                     {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32]}),
}

# minivit configs timm has no registered name for -> (timm module, class, constructor kwargs).
# These repeat the minivit configs (models/*.py); tests/test_convert.py checks that they agree.
_FMNIST_VIT = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=6, num_heads=4,
                   mlp_ratio=2.0)
TIMM_CLASSES: dict = {
    "vit_fmnist": ("timm.models.vision_transformer", "VisionTransformer", _FMNIST_VIT),
    "deit_fmnist": ("timm.models.deit", "VisionTransformerDistilled", _FMNIST_VIT),
    "convit_fmnist": ("timm.models.convit", "ConVit",
                      dict(_FMNIST_VIT, embed_dim=16, local_up_to_layer=4, locality_strength=1.0)),  # 16 per head
    "swin_fmnist": ("timm.models.swin_transformer", "SwinTransformer",
                    dict(img_size=28, patch_size=2, in_chans=1, num_classes=10, embed_dim=48, depths=(2, 2),
                         num_heads=(3, 6), window_size=7, mlp_ratio=2.0)),
}


# ==========================================================================
# Key maps: one per model family
# ==========================================================================
@dataclass(frozen=True)
class KeyMap:
    """How one family's state-dict keys differ between timm and minivit.

    ``rename``: timm key -> minivit key, for the keys that differ (``to_timm``
    inverts it). ``drop``: suffixes of timm entries minivit recomputes and never
    stores. ``official``: optional ``fn(state) -> state`` that recognises the
    paper's own release and renames it to timm's names (else returns it as is).
    """
    family: str
    rename: dict = field(default_factory=dict)
    drop: tuple = ()
    official: object = None

    def from_timm(self, state: dict) -> dict:
        """timm names -> minivit names (same arrays)."""
        if self.official is not None:
            state = self.official(state)
        return {self.rename.get(k, k): v for k, v in state.items() if not (self.drop and k.endswith(self.drop))}

    def to_timm(self, state: dict) -> dict:
        """minivit names -> timm names (same arrays)."""
        back = {v: k for k, v in self.rename.items()}
        return {back.get(k, k): v for k, v in state.items()}


def _swin_official(state: dict) -> dict:
    """The official Swin release merges patches at the *end* of a stage, so it has
    ``layers.0.downsample.*``; timm (and minivit) never do. Rename such a file."""
    if "layers.0.downsample.reduction.weight" in state:
        from minivit.models.swin import convert_official_state_dict
        return convert_official_state_dict(state)
    return state


def key_map(model) -> KeyMap:
    """The :class:`KeyMap` for a minivit model, chosen by its exact class (see the
    module docstring for the table). Subclasses do not inherit a map: they may add
    weights timm lacks (``DiverseViT``'s patch head). Models without a timm
    counterpart (SASA, CeiT, PVT v1, T2T-ViT, the CNN ...) raise ValueError."""
    from minivit.models.convit import ConViT
    from minivit.models.deit import TIMM_KEY_MAP, VisionTransformerDistilled
    from minivit.models.swin import SwinTransformer
    from minivit.models.vit import VisionTransformer
    maps = {
        VisionTransformer: KeyMap("vit"),
        VisionTransformerDistilled: KeyMap("deit", rename=dict(TIMM_KEY_MAP)),
        ConViT: KeyMap("convit", drop=(".rel_indices",)),
        SwinTransformer: KeyMap("swin", drop=(".relative_position_index", ".attn_mask"), official=_swin_official),
    }
    if type(model) not in maps:
        raise ValueError(f"minivit's {type(model).__name__} has no timm counterpart: convert handles ViT, DeiT, "
                         f"ConViT and Swin models ({', '.join(_convertible())})")
    return maps[type(model)]


def _convertible() -> list:
    return sorted({*TIMM_MODELS, *TIMM_CLASSES})


# ==========================================================================
# State dicts: torch tensors -> numpy, checks, loading
# ==========================================================================
def _to_numpy(key, value) -> np.ndarray:
    """A torch tensor (duck-typed: minivit never imports torch for this) or an
    array -> ndarray. bfloat16, which NumPy lacks, becomes float32."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    raise ValueError(f"entry {key!r} is a {type(value).__name__}, not a tensor or array: not a state dict")


def _shape(s) -> str:
    return str(tuple(int(d) for d in s))


def _check_fits(model, state: dict, what: str, hint: str = "", name: str | None = None) -> None:
    """One-line ValueError unless ``state`` has exactly ``model``'s keys and shapes
    (``name``: the registry name, for the message)."""
    own = model.state_dict()
    name = f"{name} ({type(model).__name__})" if name else type(model).__name__
    hint = f"; {hint}" if hint else ""
    bad = [(k, state[k].shape, own[k].shape) for k in own if k in state and tuple(state[k].shape) != own[k].shape]
    if bad:
        k, theirs, ours = bad[0]
        more = f" (and {len(bad) - 1} more mismatched keys)" if len(bad) > 1 else ""
        raise ValueError(f"{what} does not fit minivit's {name}: {k!r} has shape {_shape(theirs)} there but "
                         f"{_shape(ours)} in the model{more}{hint}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    for keys, where in ((missing, "lacks"), (unexpected, "has keys minivit's model does not:")):
        if keys:
            listed = ", ".join(repr(k) for k in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            raise ValueError(f"{what} does not fit minivit's {name}: it {where} {listed}{hint}")


def timm_to_minivit(state: dict, model, what: str = "the timm state dict", hint: str = "",
                    name: str | None = None) -> dict:
    """timm state dict (tensors or arrays) -> ``{minivit key: ndarray}`` for ``model``.

    Applies the model family's :class:`KeyMap` and checks that the result has
    exactly the model's keys and shapes (one-line ValueError otherwise, naming
    the key and both shapes). Nothing is loaded; see :func:`load_timm`.
    """
    arrays = {k: _to_numpy(k, v) for k, v in state.items()}
    mapped = key_map(model).from_timm(arrays)
    _check_fits(model, mapped, what, hint, name)
    return mapped


def minivit_to_timm(state: dict, model) -> dict:
    """minivit state dict -> ``{timm key: ndarray}`` (the family's map, inverted).
    Only persistent entries: what ``model.state_dict()`` holds, as timm saves."""
    _check_fits(model, state, "the minivit state dict")
    return key_map(model).to_timm({k: np.asarray(state[k]) for k in model.state_dict()})


def load_timm(model, source):
    """Load timm weights into a minivit ``model`` and return it.

    ``source`` is a timm ``nn.Module`` (its ``state_dict()`` is used) or a state
    dict of tensors/arrays with timm's names. Values are cast to the model's dtype.
    """
    state = source.state_dict() if hasattr(source, "state_dict") else source
    model.load_state_dict(timm_to_minivit(state, model))
    return model


# ==========================================================================
# Reading checkpoint files
# ==========================================================================
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path) -> dict:
    """Read a ``.safetensors`` file with NumPy alone -> ``{name: ndarray}``.

    The format: 8 bytes (little-endian uint64) giving the length n of a JSON
    header, the header ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
    "__metadata__": {...}}``, then the raw little-endian bytes, offsets counted
    from the end of the header. bfloat16 (the top 16 bits of a float32) is widened
    to float32.
    """
    path = Path(path)
    data = path.read_bytes()
    bad = f"{path} is not a safetensors file"
    if len(data) < 8:
        raise ValueError(f"{bad} (only {len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"{bad} (its header length {n} exceeds the file)")
    try:
        header = json.loads(data[8:8 + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{bad} (unreadable header: {e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{bad} (the header is not a JSON object)")
    body = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{bad} (entry {name!r} lacks dtype/shape/data_offsets)") from None
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: entry {name!r} has dtype {dtype}, which minivit cannot read "
                             f"(readable: {', '.join(_SAFETENSORS_DTYPES)})")
        itemsize = np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
        if not 0 <= begin <= end <= len(body) or end - begin != itemsize * int(np.prod(shape)):
            raise ValueError(f"{bad} (entry {name!r}: bytes [{begin}, {end}) do not hold a {dtype} array of "
                             f"shape {shape})")
        raw = np.frombuffer(body[begin:end], dtype=_SAFETENSORS_DTYPES[dtype])
        if dtype == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = raw.reshape(shape).copy()
    return out


def _read_npz(path: Path) -> dict:
    """A ``.npz`` of arrays with timm's names (never unpickled)."""
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npz archive ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not an archive of named weights")
    with z:
        arrays = {k: z[k] for k in z.files}
    if "__minivit__" in arrays:
        raise ValueError(f"{path} is already a minivit checkpoint: load it with minivit.io.load, or convert it "
                         f"to timm's names with --to-torch")
    if any("/" in k for k in arrays):
        raise ValueError(f"{path} looks like an original JAX ViT checkpoint (keys such as {next(iter(arrays))!r}),"
                         f" not a timm state dict: load it in timm first (timm.create_model(name, pretrained=True, "
                         f"pretrained_cfg_overlay=dict(file=PATH))) and save model.state_dict()")
    return arrays


def _read_torch(path: Path) -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only."""
    torch = _require("torch", f"reading {path.name} (a PyTorch file)")
    import pickle
    allow = getattr(torch.serialization, "safe_globals", None)
    ctx = allow([argparse.Namespace]) if allow else contextlib.nullcontext()  # timm's train.py saves its args
    try:
        with ctx:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if m:
            raise ValueError(f"{path} stores a Python object ({m.group(1)}) besides tensors and minivit loads with "
                             f"torch.load(weights_only=True), which refuses it; if you trust the file, re-save only "
                             f"its weights: torch.save(torch.load(FILE, weights_only=False)['state_dict'], "
                             f"'weights.pth')") from None
        raise ValueError(f"{path} is not a PyTorch checkpoint (torch.load: {_first_line(e)})") from None
    except Exception as e:          # torch raises many types for a file that is not its format
        raise ValueError(f"{path} is not a PyTorch checkpoint (torch.load: {type(e).__name__} "
                         f"{_first_line(e)})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):            # timm's train.py / the official releases
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    return {k: _to_numpy(k, v) for k, v in obj.items()}


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no message"


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npz")


def read_timm_checkpoint(path) -> dict:
    """Read a timm weights file -> ``{timm key: ndarray}`` (see the module docstring
    for the formats). Raises FileNotFoundError, or ValueError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory; give a {'/'.join(CHECKPOINT_SUFFIXES)} file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state = read_safetensors(path)
    elif suffix == ".npz":
        state = _read_npz(path)
    elif suffix in (".pth", ".pt", ".bin"):
        state = _read_torch(path)
    else:
        raise ValueError(f"checkpoint {path}: unknown file type {suffix or '(no suffix)'!r}; expected one of "
                         f"{', '.join(CHECKPOINT_SUFFIXES)}")
    if not state:
        raise ValueError(f"checkpoint {path} holds no weights")
    if all(k.startswith("module.") for k in state):             # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# ==========================================================================
# Names, models, timm
# ==========================================================================
def _require(package: str, why: str):
    """Import an optional dependency or say which one is missing and how to get it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ValueError(f"{why} needs {package}, which is not installed: {INSTALL_HINT}") from None


def resolve(timm_name: str, model: str | None = None, model_kwargs: dict | None = None) -> tuple:
    """timm name (+ ``--model``, ``--model-kwargs``) -> ``(minivit name, minivit kwargs)``.

    The table's kwargs (:data:`TIMM_MODELS`) come first, the user's override them.
    With ``model`` given, the timm name may be anything; the table's kwargs then
    apply only if ``model`` is the table's minivit model for that name.
    """
    user = dict(model_kwargs or {})
    base = timm_name.split(".", 1)[0]                 # drop a pretrained tag
    table_model, table_kwargs = TIMM_MODELS.get(base, (base if base in TIMM_CLASSES else None, {}))
    if model:
        return model, ({**table_kwargs, **user} if model == table_model else user)
    if table_model is not None:
        return table_model, {**table_kwargs, **user}
    from minivit import models
    if base in models.list_models():
        raise ValueError(f"minivit's {base!r} has no timm counterpart; convertible models: "
                         f"{', '.join(_convertible())}")
    close = difflib.get_close_matches(base, _convertible(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"minivit has no counterpart of timm model {timm_name!r}.{hint} Convertible: "
                     f"{', '.join(_convertible())} (another config of these: pass --model and --model-kwargs)")


def _create(name: str, kwargs: dict):
    """``models.create`` with a one-line error for a config the model rejects."""
    from minivit import models
    try:
        return models.create(name, **kwargs)
    except TypeError as e:
        raise ValueError(f"model_kwargs {json.dumps(kwargs)} do not fit minivit's {name!r}: {e}") from None


def _timm_kwargs(model, model_kwargs: dict) -> dict:
    """minivit kwargs -> timm kwargs: the same names, except that timm's ConVit
    takes ``embed_dim`` per head."""
    kw = dict(model_kwargs)
    if key_map(model).family == "convit" and ("embed_dim" in kw or "num_heads" in kw):
        kw["embed_dim"] = model.embed_dim // model.num_heads
    return kw


def _timm_constructor(timm_name: str, model, model_kwargs: dict) -> tuple:
    """-> (the Python call as text, module path or None, class name or timm name, kwargs)."""
    kw = _timm_kwargs(model, model_kwargs)
    base = timm_name.split(".", 1)[0]
    if base in TIMM_CLASSES:
        module, cls, cfg = TIMM_CLASSES[base]
        kw = {**cfg, **kw}
        args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        return f"{module}.{cls}({args})", module, cls, kw
    args = "".join(f", {k}={v!r}" for k, v in kw.items())
    return f"timm.create_model({timm_name!r}, pretrained=False{args})", None, timm_name, kw


def timm_call(name: str, model_kwargs: dict | None = None, model=None) -> str:
    """The Python call that builds timm's counterpart of minivit's ``name`` with
    ``model_kwargs``, e.g. ``timm.create_model('convit_tiny', pretrained=False, depth=2)``."""
    model = model if model is not None else _create(name, model_kwargs or {})
    return _timm_constructor(name, model, model_kwargs or {})[0]


def create_timm_model(timm_name: str, model_kwargs: dict | None = None, model=None):
    """Build timm's model ``timm_name`` (random init, never downloaded) with the
    config of minivit's counterpart: ``model_kwargs`` are *minivit's* kwargs,
    translated for timm. ``model``: the minivit model, if already built."""
    _require("torch", "building a timm model")
    timm = _require("timm", "building a timm model")
    if model is None:
        model = _create(*resolve(timm_name, model_kwargs=model_kwargs))
    text, module, cls, kw = _timm_constructor(timm_name, model, model_kwargs or {})
    try:
        if module is not None:
            return getattr(importlib.import_module(module), cls)(**kw)
        return timm.create_model(timm_name, pretrained=False, **kw)
    except (TypeError, RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"timm could not build {text}: {_first_line(e)}") from None


# ==========================================================================
# The two directions
# ==========================================================================
def _check_out(out, force: bool) -> Path:
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"OUT {out}: give a file name ending in .npz")
    if out.is_dir():
        raise ValueError(f"OUT {out} is a directory; give a file name ending in .npz")
    if out.exists() and not force:
        raise ValueError(f"OUT {out} exists; pass --force to overwrite it")
    return out


def from_timm(timm_name: str, out, checkpoint=None, model: str | None = None, model_kwargs: dict | None = None,
              force: bool = False, seed: int = 0) -> dict:
    """timm weights -> minivit checkpoint ``out`` (``python -m minivit convert --from-timm``).

    Reads ``checkpoint`` if given, else builds ``timm_name`` with timm's random
    init (``torch.manual_seed(seed)``). The checkpoint records
    ``config = {"model": name, "model_kwargs": kwargs}`` as ``train`` does, so
    ``evaluate`` and ``minivit.io.load`` find the model, and ``converted_from``.
    Returns a summary dict (model, model_kwargs, source, num_params, out).
    """
    out = _check_out(out, force)
    if checkpoint is not None and not Path(checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
    name, kwargs = resolve(timm_name, model, model_kwargs)
    net = _create(name, kwargs)
    key_map(net)                                        # a model without a timm counterpart fails here
    hint = "pass --model-kwargs with the checkpoint's config (e.g. depth, embed_dim, num_classes)"
    if checkpoint is not None:
        state = read_timm_checkpoint(checkpoint)
        source, what = f"checkpoint {checkpoint}", f"checkpoint {checkpoint}"
    else:
        torch = _require("torch", f"--from-timm {timm_name} without --checkpoint")
        torch.manual_seed(seed)
        tmodel = create_timm_model(timm_name, kwargs, net)
        state = tmodel.state_dict()
        source = f"random init: {_timm_constructor(timm_name, net, kwargs)[0]}, torch seed {seed}"
        what, hint = f"timm's {timm_name}", ""
    net.load_state_dict(timm_to_minivit(state, net, what, hint, name))
    io.save(net, out, config={"model": name, "model_kwargs": kwargs},
            converted_from={"timm_model": timm_name, "source": source})
    return {"model": name, "model_kwargs": kwargs, "source": source, "num_params": net.num_params(),
            "out": str(out), "random": checkpoint is None}


def to_torch(run_or_npz, out, model: str | None = None, force: bool = False) -> dict:
    """minivit checkpoint (or run folder) -> ``out``: a plain ``.npz`` with timm's key
    names (``python -m minivit convert --to-torch``). Returns a summary with
    ``timm_call``, the Python call that builds the matching timm model."""
    out = _check_out(out, force)
    path = Path(run_or_npz)
    if path.is_dir():
        if not (path / "checkpoint.npz").is_file():
            raise FileNotFoundError(f"{path} is a folder without checkpoint.npz: give a run folder made by "
                                    f"`python -m minivit train` or a checkpoint .npz")
        path = path / "checkpoint.npz"
    ckpt = io.read_checkpoint(path)
    cfg = ckpt["meta"].get("config") or {}
    name = model or cfg.get("model")
    if not name:
        raise ValueError(f"{path} does not record its model; pass --model")
    kwargs = cfg.get("model_kwargs") or {}
    net = _create(name, kwargs)
    key_map(net)
    _check_fits(net, ckpt["model"], f"checkpoint {path}", "pass --model if it is another model", name)
    state = minivit_to_timm(ckpt["model"], net)
    buf = _io.BytesIO()
    np.savez(buf, **state)
    io.atomic_write_bytes(out, buf.getvalue())
    return {"model": name, "model_kwargs": kwargs, "num_arrays": len(state), "out": str(out),
            "timm_call": timm_call(name, kwargs, net)}


# ==========================================================================
# Command line (wired into minivit/__main__.py)
# ==========================================================================
def _json_object(s):
    try:
        v = json.loads(s)
    except json.JSONDecodeError:
        v = None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"depth\": 2}}', got {s!r}")
    return v


def _table() -> str:
    rows = [f"  {t:34s} {m}{' ' + json.dumps(kw) if kw else ''}" for t, (m, kw) in TIMM_MODELS.items()]
    rows += [f"  {m:34s} timm {mod}.{cls} with minivit's config" for m, (mod, cls, _) in TIMM_CLASSES.items()]
    return "\n".join(rows)


def add_parser(subparsers):
    """Add the ``convert`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    c = subparsers.add_parser(
        "convert", help="convert weights between timm (PyTorch) and minivit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert weights between timm and minivit (needs torch and timm for .pth files and for "
                    "random timm weights: pip install -r requirements-dev.txt).\n\n"
                    "  --from-timm MODEL_NAME OUT.npz   timm weights -> minivit checkpoint\n"
                    "  --to-torch RUN_OR_NPZ OUT.npz    minivit checkpoint -> .npz with timm's key names",
        epilog="timm name -> minivit model and model_kwargs:\n" + _table() +
               "\n\nLoad a --to-torch file in PyTorch:\n"
               "  model.load_state_dict({k: torch.from_numpy(v) for k, v in numpy.load('OUT.npz').items()})")
    way = c.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-timm", metavar="MODEL_NAME",
                     help="timm model name (table below). Without --checkpoint these are timm's RANDOM weights "
                          "(timm.create_model(MODEL_NAME, pretrained=False)): nothing is downloaded")
    way.add_argument("--to-torch", metavar="RUN_OR_NPZ", help="minivit run folder or checkpoint .npz to export")
    c.add_argument("out", metavar="OUT.npz", help="output file (never overwritten without --force)")
    c.add_argument("--checkpoint", metavar="FILE",
                   help="with --from-timm: timm weights to read (.pth/.pt/.bin via torch.load(weights_only=True),"
                        " .safetensors, or .npz) instead of random weights")
    c.add_argument("--model", metavar="NAME",
                   help="minivit model to load into (with --from-timm: when the timm name is not in the table; "
                        "with --to-torch: when the checkpoint does not record it)")
    c.add_argument("--model-kwargs", metavar="JSON", type=_json_object,
                   help="with --from-timm: the minivit model's config overrides, e.g. '{\"depth\": 2}' "
                        "(recorded in the checkpoint)")
    c.add_argument("--seed", type=int, default=0, help="torch seed for random timm weights (default 0)")
    c.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    c.set_defaults(func=cmd_convert)
    return c


def cmd_convert(args) -> int:
    """Run ``convert``; errors are ValueError/FileNotFoundError with one-line messages."""
    if args.to_torch is not None:
        for opt, given in (("--checkpoint", args.checkpoint), ("--model-kwargs", args.model_kwargs)):
            if given is not None:
                raise ValueError(f"{opt} goes with --from-timm; --to-torch reads the model and its config from "
                                 f"RUN_OR_NPZ (use --model if it does not record them)")
        info = to_torch(args.to_torch, args.out, model=args.model, force=args.force)
        print(f"{info['model']} -> {info['out']}: {info['num_arrays']} arrays with timm's names; in PyTorch:\n"
              f"  model = {info['timm_call']}\n"
              f"  model.load_state_dict({{k: torch.from_numpy(v) for k, v in numpy.load({info['out']!r}).items()}})")
        return 0
    info = from_timm(args.from_timm, args.out, checkpoint=args.checkpoint, model=args.model,
                     model_kwargs=args.model_kwargs, force=args.force, seed=args.seed)
    kw = f" {json.dumps(info['model_kwargs'])}" if info["model_kwargs"] else ""
    print(f"timm {args.from_timm} -> minivit {info['model']}{kw} ({info['num_params']:,d} parameters): "
          f"{info['out']}")
    if info["random"]:
        print("note: these are timm's RANDOM weights (pretrained=False; nothing is downloaded); pass "
              "--checkpoint FILE to convert real weights")
    return 0
