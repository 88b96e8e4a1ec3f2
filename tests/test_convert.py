"""minivit.convert without torch: key maps, the file readers, the CLI's error paths.

Every test here runs on NumPy alone (timm-keyed .npz and .safetensors files
need no torch); the conversions against real timm models are in
tests/parity/test_convert_parity.py. The CLI is driven through
``convert.add_parser`` / ``cmd_convert`` on a small parser, as ``__main__`` wires them.
"""
import argparse
import json
import sys

import numpy as np
import pytest

from minivit import convert, io, models

# small configs of every family, fast to build
SMALL = [
    ("vit_fmnist", {}),
    ("deit_fmnist", {}),
    ("convit_fmnist", {}),
    ("swin_fmnist", {}),
    ("vit_tiny_patch16_224", {"depth": 1}),
    ("swin_tiny_patch4_window7_224", {"depths": [2, 2, 2, 2], "embed_dim": 24, "num_heads": [1, 2, 4, 8]}),
]


def run(*argv):
    """``python -m minivit convert ...`` through the functions __main__ wires in."""
    p = argparse.ArgumentParser(prog="python -m minivit")
    convert.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["convert", *map(str, argv)])
    return args.func(args)


def randomised(name, kwargs, seed=0):
    """A minivit model with every entry random (no zero biases, no unit LayerNorms)."""
    m = models.create(name, **kwargs)
    rng = np.random.default_rng(seed)
    m.load_state_dict({k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in m.state_dict().items()})
    return m


def saved(tmp_path, name, kwargs, fname="model.npz"):
    """A minivit checkpoint as ``train`` writes it (config with model and model_kwargs)."""
    m = randomised(name, kwargs)
    path = tmp_path / fname
    io.save(m, path, config={"model": name, "model_kwargs": kwargs})
    return m, path


def one_line_error(excinfo, *fragments):
    msg = str(excinfo.value.args[0])
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


def write_safetensors(path, arrays, dtypes=None):
    """The safetensors layout written by hand (independent of the reader under test)."""
    codes = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<f2"): "F16", np.dtype("<i8"): "I64"}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for k, a in arrays.items():
        code = (dtypes or {}).get(k) or codes[a.dtype]
        raw = a.tobytes()
        header[k] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))


# ------------------------------------------------------------------ key maps
@pytest.mark.parametrize("name,kwargs", SMALL)
def test_key_map_round_trip_on_minivit_state_dicts(name, kwargs):
    m = randomised(name, kwargs)
    sd = m.state_dict()
    timm_sd = convert.minivit_to_timm(sd, m)
    assert set(timm_sd) == set(sd)                 # these families use timm's names
    back = convert.timm_to_minivit(timm_sd, m)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    fresh = models.create(name, **kwargs)
    convert.load_timm(fresh, timm_sd)
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)


def test_key_map_families_and_what_they_drop():
    fam = {n: convert.key_map(models.create(n)).family
           for n in ("vit_fmnist", "deit_fmnist", "convit_fmnist", "swin_fmnist", "deit_tiny_patch16_224")}
    assert fam == {"vit_fmnist": "vit", "deit_fmnist": "deit", "convit_fmnist": "convit", "swin_fmnist": "swin",
                   "deit_tiny_patch16_224": "vit"}
    m = randomised("swin_fmnist", {})
    sd = dict(m.state_dict())
    sd["layers.0.blocks.1.attn_mask"] = np.zeros((4, 49, 49))                 # as older timm saved them
    sd["layers.0.blocks.0.attn.relative_position_index"] = np.zeros((49, 49), np.int64)
    assert set(convert.timm_to_minivit(sd, m)) == set(m.state_dict())
    c = models.create("convit_fmnist")
    sd = dict(c.state_dict(), **{"blocks.0.attn.rel_indices": np.zeros((1, 49, 49, 3))})
    assert set(convert.timm_to_minivit(sd, c)) == set(c.state_dict())
    km = convert.KeyMap("x", rename={"a.w": "b.w"})
    assert km.from_timm({"a.w": 1, "c": 2}) == {"b.w": 1, "c": 2}
    assert km.to_timm({"b.w": 1, "c": 2}) == {"a.w": 1, "c": 2}


def test_swin_official_names_are_recognised_and_renamed():
    """The official release merges at the end of a stage and calls the classifier
    ``head``: converted through models/swin.py's convert_official_state_dict."""
    m = randomised("swin_fmnist", {})
    sd = m.state_dict()
    official = {}
    for k, v in sd.items():
        k = k.replace("layers.1.downsample", "layers.0.downsample").replace("head.fc.", "head.")
        official[k] = v
    official["layers.0.blocks.1.attn_mask"] = m.layers[0].blocks[1].attn_mask
    assert "layers.0.downsample.reduction.weight" in official and "head.weight" in official
    back = convert.timm_to_minivit(official, m)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_every_model_of_a_timm_family_has_a_timm_counterpart():
    covered = {m for m, _ in convert.TIMM_MODELS.values()} | set(convert.TIMM_CLASSES)
    for name in models.list_models():
        m = models.create(name, **({"depth": 1} if "patch16_224" in name else {}))
        try:
            convert.key_map(m)
        except ValueError as e:
            assert "no timm counterpart" in str(e)
            assert name not in covered, name
        else:
            assert name in covered, f"{name} converts but is in neither TIMM_MODELS nor TIMM_CLASSES"


def test_timm_class_configs_match_minivit_configs():
    """TIMM_CLASSES repeat the *_fmnist configs for timm's constructors: they must agree."""
    for name, (_, _, cfg) in convert.TIMM_CLASSES.items():
        m = models.create(name)
        pe = m.patch_embed
        assert (cfg["img_size"], cfg["patch_size"], cfg["in_chans"], cfg["num_classes"]) == \
               (pe.img_size[0], pe.patch_size, pe.in_chans, m.num_classes), name
        if name == "convit_fmnist":                       # timm's embed_dim is per head
            assert cfg["embed_dim"] * cfg["num_heads"] == m.embed_dim
            assert cfg["local_up_to_layer"] == m.local_up_to_layer
        elif name == "swin_fmnist":
            assert list(cfg["depths"]) == [len(s.blocks) for s in m.layers]
            assert m.layers[0].blocks[0].attn.window_size == cfg["window_size"]
        else:
            assert (cfg["embed_dim"], cfg["depth"]) == (m.embed_dim, len(m.blocks)), name
        assert convert.timm_call(name).startswith("timm.models.")


def test_resolve_names_and_kwargs():
    assert convert.resolve("vit_small_patch16_224.augreg_in21k_ft_in1k") == \
        ("vit_tiny_patch16_224", {"embed_dim": 384, "num_heads": 6})
    assert convert.resolve("vit_small_patch16_224", model_kwargs={"depth": 2}) == \
        ("vit_tiny_patch16_224", {"embed_dim": 384, "num_heads": 6, "depth": 2})
    assert convert.resolve("vit_fmnist") == ("vit_fmnist", {})
    assert convert.resolve("vit_tiny_patch16_384", model="vit_tiny_patch16_224",
                           model_kwargs={"img_size": 384}) == ("vit_tiny_patch16_224", {"img_size": 384})
    # convit: timm's embed_dim is per head
    call = convert.timm_call("convit_tiny", {"depth": 2, "local_up_to_layer": 1, "embed_dim": 96})
    assert call == ("timm.create_model('convit_tiny', pretrained=False, depth=2, local_up_to_layer=1, "
                    "embed_dim=24)")


# ------------------------------------------------------------------ file readers
def test_safetensors_reader_all_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)              # bfloat16 = top half of a float32
    arrays = {"a": f32, "b": rng.standard_normal(5), "c": f32.astype(np.float16), "d": np.arange(6).reshape(2, 3),
              "e": bf16}
    path = tmp_path / "w.safetensors"
    write_safetensors(path, arrays, dtypes={"e": "BF16"})
    got = convert.read_safetensors(path)
    assert set(got) == set(arrays)
    for k in "abcd":
        np.testing.assert_array_equal(got[k], arrays[k])
        assert got[k].dtype == arrays[k].dtype
    assert got["e"].dtype == np.float32
    np.testing.assert_allclose(got["e"], f32, rtol=2 ** -7)           # bf16 keeps 8 bits of mantissa
    np.testing.assert_array_equal(got["e"].view(np.uint32) & 0xFFFF, 0)


def test_safetensors_and_npz_checkpoints_convert(tmp_path):
    m, ckpt = saved(tmp_path, "deit_fmnist", {})
    assert run("--to-torch", ckpt, tmp_path / "timm.npz") == 0
    with np.load(tmp_path / "timm.npz", allow_pickle=False) as z:
        timm_sd = {k: z[k] for k in z.files}
    assert "dist_token" in timm_sd and "head_dist.weight" in timm_sd and "__minivit__" not in timm_sd
    write_safetensors(tmp_path / "w.safetensors", timm_sd)
    np.savez(tmp_path / "ddp.npz", **{f"module.{k}": v for k, v in timm_sd.items()})   # DataParallel's prefix
    for src in ("timm.npz", "w.safetensors", "ddp.npz"):
        out = tmp_path / f"from-{src}.npz"
        assert run("--from-timm", "deit_fmnist", "--checkpoint", tmp_path / src, out) == 0
        back = models.create("deit_fmnist")
        meta = io.load(back, out)
        assert meta["config"] == {"model": "deit_fmnist", "model_kwargs": {}}
        assert meta["converted_from"]["timm_model"] == "deit_fmnist"
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=f"{src}: {k}")


def test_converted_checkpoint_records_kwargs_and_evaluates(tmp_path, capsys):
    kwargs = {"depth": 2}
    m, ckpt = saved(tmp_path, "vit_fmnist", kwargs)
    run("--to-torch", ckpt, tmp_path / "timm.npz")
    out = tmp_path / "vit.npz"
    assert run("--from-timm", "vit_fmnist", "--checkpoint", tmp_path / "timm.npz", "--model-kwargs",
               json.dumps(kwargs), out) == 0
    assert "vit_fmnist" in capsys.readouterr().out
    assert io.read_checkpoint(out)["meta"]["config"] == {"model": "vit_fmnist", "model_kwargs": kwargs}
    from minivit.__main__ import main
    assert main(["evaluate", str(out)]) == 0
    assert "vit_fmnist: test accuracy" in capsys.readouterr().out


def test_to_torch_reads_run_folders_and_prints_the_timm_call(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved(run_dir, "convit_fmnist", {}, fname="checkpoint.npz")
    assert run("--to-torch", run_dir, tmp_path / "t.npz") == 0
    text = capsys.readouterr().out
    assert "timm.models.convit.ConVit(" in text and "embed_dim=16" in text and "torch.from_numpy" in text


# ------------------------------------------------------------------ errors
def test_unknown_and_unconvertible_models(tmp_path):
    with pytest.raises(ValueError) as e:
        run("--from-timm", "vit_tiny_patch16", tmp_path / "o.npz")
    one_line_error(e, "vit_tiny_patch16", "Did you mean", "vit_tiny_patch16_224")
    with pytest.raises(ValueError) as e:
        run("--from-timm", "pvt_tiny", tmp_path / "o.npz")
    one_line_error(e, "pvt_tiny", "no timm counterpart")
    with pytest.raises(ValueError) as e:
        run("--from-timm", "pvt_v2_b0", "--model", "pvt_fmnist", tmp_path / "o.npz")
    one_line_error(e, "PyramidVisionTransformer", "no timm counterpart")
    with pytest.raises(ValueError) as e:
        run("--from-timm", "vit_fmnist", "--model", "vit_fmnistt", tmp_path / "o.npz")
    one_line_error(e, "unknown model 'vit_fmnistt'", "vit_fmnist")
    with pytest.raises(ValueError) as e:
        run("--from-timm", "vit_fmnist", "--model-kwargs", '{"depthh": 2}', tmp_path / "o.npz")
    one_line_error(e, "depthh", "vit_fmnist")
    assert not list(tmp_path.iterdir())


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    _, ckpt = saved(tmp_path, "vit_fmnist", {})
    run("--to-torch", ckpt, tmp_path / "timm.npz")
    out = tmp_path / "o.npz"
    with pytest.raises(ValueError) as e:
        run("--from-timm", "vit_fmnist", "--checkpoint", tmp_path / "timm.npz", "--model-kwargs",
            '{"num_classes": 5}', out)
    one_line_error(e, "'head.weight'", "(10, 64)", "(5, 64)", "--model-kwargs")
    with pytest.raises(ValueError) as e:                      # a deeper checkpoint: extra keys, named
        run("--from-timm", "vit_fmnist", "--checkpoint", tmp_path / "timm.npz", "--model-kwargs",
            '{"depth": 4}', out)
    one_line_error(e, "'blocks.4.norm1.weight'", "more")
    with pytest.raises(ValueError) as e:                      # a shallower one: missing keys
        run("--from-timm", "vit_fmnist", "--checkpoint", tmp_path / "timm.npz", "--model-kwargs",
            '{"depth": 8}', out)
    one_line_error(e, "lacks", "'blocks.6.norm1.weight'")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "timm.npz"]   # no temp files left


@pytest.mark.parametrize("fname,content,fragment", [
    ("x.npz", b"this is not a zip archive", "not a readable .npz"),
    ("x.safetensors", b"\x05", "not a safetensors file"),
    ("x.safetensors", (10 ** 6).to_bytes(8, "little") + b"{}", "header length"),
    ("x.txt", b"hello", "unknown file type"),
    ("x.pth", b"", None),                                    # a .pth needs torch (or is not a checkpoint)
])
def test_files_that_are_not_checkpoints(tmp_path, monkeypatch, fname, content, fragment):
    monkeypatch.setitem(sys.modules, "torch", None)         # as on a machine without torch
    (tmp_path / fname).write_bytes(content)
    with pytest.raises(ValueError) as e:
        run("--from-timm", "vit_fmnist", "--checkpoint", tmp_path / fname, tmp_path / "o.npz")
    if fragment is None:
        one_line_error(e, "needs torch", "pip install -r requirements-dev.txt")
    else:
        one_line_error(e, fragment)
    assert not (tmp_path / "o.npz").exists()


def test_npz_that_is_not_a_timm_state_dict(tmp_path):
    _, ckpt = saved(tmp_path, "vit_fmnist", {})
    with pytest.raises(ValueError) as e:                      # a minivit checkpoint
        run("--from-timm", "vit_fmnist", "--checkpoint", ckpt, tmp_path / "o.npz")
    one_line_error(e, "already a minivit checkpoint", "--to-torch")
    np.savez(tmp_path / "jax.npz", **{"Transformer/encoder_norm/scale": np.ones(3)})
    with pytest.raises(ValueError) as e:
        run("--from-timm", "vit_fmnist", "--checkpoint", tmp_path / "jax.npz", tmp_path / "o.npz")
    one_line_error(e, "JAX")
    np.save(tmp_path / "one.npy", np.ones(3))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(ValueError) as e:
        run("--from-timm", "vit_fmnist", "--checkpoint", tmp_path / "one.npz", tmp_path / "o.npz")
    one_line_error(e, "single array")
    with pytest.raises(FileNotFoundError) as e:
        run("--from-timm", "vit_fmnist", "--checkpoint", tmp_path / "missing.pth", tmp_path / "o.npz")
    one_line_error(e, "missing.pth", "does not exist")


def test_random_weights_need_torch_and_timm(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ValueError) as e:
        run("--from-timm", "vit_fmnist", tmp_path / "o.npz")
    one_line_error(e, "needs torch", "pip install -r requirements-dev.txt")
    with pytest.raises(ValueError) as e:
        convert.create_timm_model("vit_fmnist")
    one_line_error(e, "torch", "requirements-dev.txt")
    assert not (tmp_path / "o.npz").exists()


def test_out_is_never_overwritten_without_force(tmp_path):
    _, ckpt = saved(tmp_path, "vit_fmnist", {})
    out = tmp_path / "timm.npz"
    out.write_bytes(b"precious")
    with pytest.raises(ValueError) as e:
        run("--to-torch", ckpt, out)
    one_line_error(e, "exists", "--force")
    assert out.read_bytes() == b"precious"
    assert run("--to-torch", ckpt, out, "--force") == 0
    assert "blocks.0.attn.qkv.weight" in np.load(out).files
    with pytest.raises(ValueError) as e:
        run("--to-torch", ckpt, tmp_path / "timm.pt")
    one_line_error(e, "ending in .npz")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError) as e:
        run("--to-torch", ckpt, tmp_path / "dir.npz", "--force")
    one_line_error(e, "is a directory")


def test_to_torch_errors(tmp_path):
    m = randomised("vit_fmnist", {})
    io.save(m, tmp_path / "anon.npz")                         # no config: the model is unknown
    with pytest.raises(ValueError) as e:
        run("--to-torch", tmp_path / "anon.npz", tmp_path / "o.npz")
    one_line_error(e, "does not record its model", "--model")
    assert run("--to-torch", tmp_path / "anon.npz", "--model", "vit_fmnist", tmp_path / "o.npz") == 0
    with pytest.raises(ValueError) as e:                      # the wrong model for this checkpoint
        run("--to-torch", tmp_path / "anon.npz", "--model", "deit_fmnist", tmp_path / "o2.npz")
    one_line_error(e, "deit_fmnist", "'pos_embed'", "(1, 50, 64)", "(1, 51, 64)")
    (tmp_path / "emptyrun").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        run("--to-torch", tmp_path / "emptyrun", tmp_path / "o3.npz")
    one_line_error(e, "without checkpoint.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError) as e:
        run("--to-torch", tmp_path / "junk.npz", tmp_path / "o3.npz")
    one_line_error(e, "not a minivit checkpoint")
    for opt in (["--checkpoint", "x.pth"], ["--model-kwargs", "{}"]):
        with pytest.raises(ValueError) as e:
            run("--to-torch", tmp_path / "anon.npz", *opt, tmp_path / "o4.npz")
        one_line_error(e, opt[0], "--from-timm")
    assert not (tmp_path / "o2.npz").exists() and not (tmp_path / "o3.npz").exists()


def test_argument_errors_exit_2(capsys):
    for argv in (["--from-timm", "vit_fmnist", "--model-kwargs", "depth=2", "o.npz"],
                 ["--from-timm", "vit_fmnist", "--model-kwargs", "[2]", "o.npz"],
                 ["--from-timm", "vit_fmnist", "--to-torch", "x", "o.npz"],
                 ["o.npz"]):
        with pytest.raises(SystemExit) as e:
            run(*argv)
        assert e.value.code == 2
    assert "JSON object" in capsys.readouterr().err
