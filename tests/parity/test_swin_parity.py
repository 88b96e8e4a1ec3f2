"""Parity with timm's SwinTransformer on random weights (float64).

minivit's Swin uses timm's module tree and names, so timm's state dict loads
1:1 (strict). The official repository's names differ in two places; that
mapping is ``minivit.models.swin.convert_official_state_dict`` (documented in
the module docstring) and is tested in tests/models/test_swin.py.

Skipped cleanly when torch or timm is not installed (see requirements-dev.txt).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: parity tests need requirements-dev.txt")
timm = pytest.importorskip("timm", reason="timm not installed: parity tests need requirements-dev.txt")

import minivit  # noqa: E402
from minivit import functional as F  # noqa: E402
from minivit import models  # noqa: E402
from minivit.convert import load_timm  # noqa: E402  (the key map: minivit/convert.py)


def _timm_swin_fmnist():
    return timm.models.SwinTransformer(img_size=28, patch_size=2, in_chans=1, num_classes=10, embed_dim=48,
                                       depths=(2, 2), num_heads=(3, 6), window_size=7, mlp_ratio=2.0,
                                       drop_path_rate=0.0)


@pytest.mark.parametrize("name,kwargs,shape", [
    ("swin_fmnist", {}, (3, 1, 28, 28)),
    # Swin-T's layout (224 px, patch 4, window 7, four stages 56-28-14-7), narrowed to keep the test fast
    ("swin_tiny_patch4_window7_224", {"depths": (2, 2, 2, 2), "embed_dim": 24, "num_heads": (1, 2, 4, 8)},
     (1, 3, 224, 224)),
])
def test_swin_matches_timm(name, kwargs, shape):
    torch.manual_seed(0)
    tm = _timm_swin_fmnist() if name == "swin_fmnist" else timm.create_model(name, pretrained=False, **kwargs)
    tm = tm.double().eval()
    # random (not zero-initialised) bias tables, so the relative position bias is really tested
    with torch.no_grad():
        for n, p in tm.named_parameters():
            if "relative_position_bias_table" in n:
                p.normal_(0, 0.5)
    m = models.create(name, **kwargs).to(np.float64)
    load_timm(m, tm)
    m.eval()
    # the shift masks are the same buffers
    for (tn, tb), mb in zip([(n, b) for n, b in tm.named_modules() if type(b).__name__ == "SwinTransformerBlock"],
                            [b for stage in m.layers for b in stage.blocks]):
        if tb.attn_mask is None:
            assert mb.attn_mask is None, tn
        else:
            np.testing.assert_array_equal(mb.attn_mask, tb.attn_mask.numpy(), err_msg=tn)
        np.testing.assert_array_equal(mb.attn.relative_position_index,
                                      tb.attn.relative_position_index.numpy(), err_msg=tn)
    x = np.random.default_rng(0).standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    ref = tm(xt)
    xm = minivit.tensor(x, requires_grad=True)
    out = m(xm)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), atol=1e-6, rtol=1e-6)
    # gradients of a loss with respect to the input agree too
    y = np.arange(shape[0]) % out.shape[1]
    torch.nn.functional.cross_entropy(ref, torch.tensor(y)).backward()
    F.cross_entropy(out, y).backward()
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), atol=1e-8, rtol=1e-6)


def test_swin_parameter_gradients_match_timm():
    """The gradients of the bias tables (gathered through the index) and of the
    merge reduction agree with timm's, in a training-mode graph without dropout."""
    torch.manual_seed(1)
    tm = _timm_swin_fmnist().double()
    m = models.create("swin_fmnist").to(np.float64)
    load_timm(m, tm)
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28))
    y = np.array([3, 7])
    torch.nn.functional.cross_entropy(tm(torch.tensor(x)), torch.tensor(y)).backward()
    F.cross_entropy(m(minivit.tensor(x)), y).backward()
    tgrads = {n: p.grad.numpy() for n, p in tm.named_parameters()}
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, tgrads[n], atol=1e-9, rtol=1e-6, err_msg=n)
