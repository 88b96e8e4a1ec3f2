"""``python -m minivit convert`` against real timm models (float64, random weights).

timm -> file -> converter CLI -> minivit: the logits agree with timm's within
1e-6; minivit -> ``--to-torch`` -> ``timm.create_model(...).load_state_dict``:
the logits agree too. Every file format the converter reads from PyTorch is
used once (.pth, a timm training checkpoint with ``args`` and DataParallel's
``module.`` prefix, .bin, .safetensors, the official Swin names). Depths are
reduced so the whole file runs in well under a minute.

Skipped cleanly when torch or timm is not installed (see requirements-dev.txt).
"""
import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: parity tests need requirements-dev.txt")
timm = pytest.importorskip("timm", reason="timm not installed: parity tests need requirements-dev.txt")

import minivit  # noqa: E402
from minivit import convert, io, models  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small float64 ops: one thread is faster on a busy 2-core machine. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(*argv):
    """The ``convert`` subcommand through the functions __main__ wires in."""
    p = argparse.ArgumentParser(prog="python -m minivit")
    convert.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["convert", *map(str, argv)])
    return args.func(args)


def timm_model(name, kwargs):
    """timm's counterpart, built directly (not through minivit.convert)."""
    if name == "vit_fmnist":
        return timm.models.VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64,
                                             depth=6, num_heads=4, mlp_ratio=2.0, **kwargs)
    return timm.create_model(name, pretrained=False, **kwargs)


# (name, minivit kwargs, timm kwargs, input shape, how the timm weights are written)
SWIN_SMALL = {"depths": [2, 2, 2, 2], "embed_dim": 24, "num_heads": [1, 2, 4, 8]}
CASES = [
    ("vit_fmnist", {}, {}, (2, 1, 28, 28), "pth"),
    ("vit_tiny_patch16_224", {"depth": 2}, {"depth": 2}, (1, 3, 224, 224), "train_checkpoint"),
    ("deit_tiny_distilled_patch16_224", {"depth": 2}, {"depth": 2}, (1, 3, 224, 224), "bin"),
    # ConViT-Ti: timm's embed_dim is per head (48), minivit's the total width (192, its default)
    ("convit_tiny", {"depth": 3, "local_up_to_layer": 2}, {"depth": 3, "local_up_to_layer": 2}, (1, 3, 224, 224),
     "safetensors"),
    ("swin_tiny_patch4_window7_224", SWIN_SMALL, SWIN_SMALL, (1, 3, 224, 224), "official"),
]
IDS = [c[0] for c in CASES]


def randomise(tm, seed=0):
    """Move every parameter off its structured init (zero biases, unit LayerNorms,
    zero bias tables, ConViT's local init), so every weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return tm


def to_official_swin(tm):
    """timm's Swin state dict under the official release's names, buffers included."""
    sd = {}
    for k, v in tm.state_dict().items():
        if k.startswith("layers.") and ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.downsample", f"layers.{i - 1}.downsample")
        sd[k.replace("head.fc.", "head.")] = v
    for n, mod in tm.named_modules():
        if type(mod).__name__ == "SwinTransformerBlock" and mod.attn_mask is not None:
            sd[f"{n}.attn_mask"] = mod.attn_mask
            sd[f"{n}.attn.relative_position_index"] = mod.attn.relative_position_index
    return {"model": sd}


def write_timm_weights(tm, path_stem, how):
    """Save timm's weights the way ``how`` says; returns the file."""
    sd = tm.state_dict()
    if how == "pth":
        path = path_stem.with_suffix(".pth")
        torch.save(sd, path)
    elif how == "bin":
        path = path_stem.with_suffix(".bin")
        torch.save(sd, path)
    elif how == "train_checkpoint":          # timm's train.py: args (a Namespace), DataParallel prefix
        path = path_stem.with_suffix(".pth")
        torch.save({"epoch": 3, "arch": "vit", "args": argparse.Namespace(lr=1e-3, model="vit"),
                    "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif how == "safetensors":
        from safetensors.torch import save_file
        path = path_stem.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif how == "official":
        path = path_stem.with_suffix(".pth")
        official = to_official_swin(tm)
        assert "layers.0.downsample.reduction.weight" in official["model"]
        torch.save(official, path)
    return path


def logits_agree(m, tm, shape, seed=0):
    m.to(np.float64).eval()
    tm.double().eval()
    x = np.random.default_rng(seed).standard_normal(shape)
    with torch.no_grad():
        ref = tm(torch.tensor(x)).numpy()
    with minivit.no_grad():
        out = m(minivit.tensor(x)).data
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name,kwargs,tkwargs,shape,how", CASES, ids=IDS)
def test_from_timm_checkpoint_gives_timms_logits(tmp_path, name, kwargs, tkwargs, shape, how):
    torch.manual_seed(0)
    tm = randomise(timm_model(name, tkwargs))
    ckpt = write_timm_weights(tm, tmp_path / "weights", how)
    out = tmp_path / "minivit.npz"
    args = ["--from-timm", name, "--checkpoint", ckpt, out]
    if kwargs:
        args[2:2] = ["--model-kwargs", json.dumps(kwargs)]
    assert run(*args) == 0
    m = models.create(name, **kwargs)
    meta = io.load(m, out)                                     # strict: every key, every shape
    assert meta["config"] == {"model": name, "model_kwargs": kwargs}
    logits_agree(m, tm, shape)


@pytest.mark.parametrize("name,kwargs,tkwargs,shape,how", CASES, ids=IDS)
def test_to_torch_loads_into_timm_and_gives_minivits_logits(tmp_path, capsys, name, kwargs, tkwargs, shape, how):
    m = models.create(name, **kwargs)
    rng = np.random.default_rng(1)
    m.load_state_dict({k: v + 0.2 * rng.standard_normal(v.shape).astype(v.dtype)
                       for k, v in m.state_dict().items()})
    ckpt = tmp_path / "checkpoint.npz"
    io.save(m, ckpt, config={"model": name, "model_kwargs": kwargs})
    out = tmp_path / "timm.npz"
    assert run("--to-torch", tmp_path, out) == 0                  # a run folder
    tm = timm_model(name, tkwargs)
    with np.load(out, allow_pickle=False) as z:
        result = tm.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})   # strict
    assert not result.missing_keys and not result.unexpected_keys
    logits_agree(m, tm, shape, seed=1)
    # the call the command prints builds a timm model that takes the file too
    call = convert.timm_call(name, kwargs)
    assert call in capsys.readouterr().out
    tm2 = eval(call, {"timm": timm})
    with np.load(out, allow_pickle=False) as z:
        tm2.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})


def test_random_init_is_timms_with_the_seed(tmp_path, capsys):
    out = tmp_path / "o.npz"
    assert run("--from-timm", "vit_tiny_patch16_224", "--model-kwargs", '{"depth": 1}', "--seed", "3", out) == 0
    assert "RANDOM weights" in capsys.readouterr().out
    torch.manual_seed(3)
    tm = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1)
    got = io.read_checkpoint(out)
    assert "random init" in got["meta"]["converted_from"]["source"]
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(got["model"][k], v.numpy(), err_msg=k)


# every row of the name tables (the big ones shrunk): timm's model and minivit's have the same keys and shapes
SHRINK = {"vit": {"depth": 1}, "deit": {"depth": 1}, "convit": {"depth": 2, "local_up_to_layer": 1},
          "swin": {"depths": [1, 1, 1, 1]}}


@pytest.mark.parametrize("timm_name", sorted(convert.TIMM_MODELS) + sorted(convert.TIMM_CLASSES))
def test_name_tables_build_matching_models(timm_name):
    shrink = {} if timm_name in convert.TIMM_CLASSES else SHRINK[timm_name.split("_")[0]]   # *_fmnist: small
    name, kwargs = convert.resolve(timm_name, model_kwargs=shrink)
    m = models.create(name, **kwargs)
    tm = convert.create_timm_model(timm_name, kwargs, m)
    assert type(tm).__name__ == {"vit": "VisionTransformer", "deit": "VisionTransformerDistilled",
                                 "convit": "ConVit", "swin": "SwinTransformer"}[convert.key_map(m).family]
    theirs = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    ours = {k: v.shape for k, v in convert.minivit_to_timm(m.state_dict(), m).items()}
    assert ours == theirs


def test_files_torch_refuses_are_clear_errors(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": np.ones(2)}, tmp_path / "numpy_inside.pth")
    with pytest.raises(ValueError) as e:
        run("--from-timm", "vit_fmnist", "--checkpoint", tmp_path / "numpy_inside.pth", tmp_path / "o.npz")
    msg = str(e.value)
    assert "weights_only=True" in msg and "\n" not in msg
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError) as e:
        run("--from-timm", "vit_fmnist", "--checkpoint", tmp_path / "garbage.pth", tmp_path / "o.npz")
    assert "is not a PyTorch checkpoint" in str(e.value) and "\n" not in str(e.value)
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ValueError) as e:
        run("--from-timm", "vit_fmnist", "--checkpoint", tmp_path / "list.pth", tmp_path / "o.npz")
    assert "not a state dict" in str(e.value)
    assert not (tmp_path / "o.npz").exists()


def test_safetensors_reader_agrees_with_the_safetensors_package(tmp_path):
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(0)
    tensors = {"f32": torch.randn(3, 4, generator=g), "bf16": torch.randn(5, generator=g).bfloat16(),
               "f16": torch.randn(2, 2, generator=g).half(), "i64": torch.arange(6).reshape(2, 3),
               "f64": torch.randn(4, generator=g, dtype=torch.float64)}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    got = convert.read_safetensors(tmp_path / "t.safetensors")
    for k, v in tensors.items():
        want = v.float().numpy() if k == "bf16" else v.numpy()
        np.testing.assert_array_equal(got[k], want, err_msg=k)
        assert got[k].dtype == want.dtype, k
