"""Parity with timm's ConVit on random weights (float64): outputs and input gradients.

Skipped cleanly when torch or timm is not installed (see requirements-dev.txt).
The names are timm's, so the state dict maps 1:1; only the constructor differs:
timm's ``embed_dim`` is per head (ConViT-Ti: 48 x 4 heads), minivit's is the
total width (192). ``rel_indices`` is a non-persistent buffer in timm and not
stored at all in minivit, so neither state dict has it.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: parity tests need requirements-dev.txt")
timm = pytest.importorskip("timm", reason="timm not installed: parity tests need requirements-dev.txt")

import minivit  # noqa: E402
from minivit import functional as F  # noqa: E402
from minivit import models  # noqa: E402
from minivit.convert import load_timm  # noqa: E402  (the key map: minivit/convert.py)


def perturb(tmodel, seed=0):
    """Move every parameter away from its structured init (identity v, local
    pos_proj, gates at 1, zero biases), so the comparison exercises every term."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tmodel.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def timm_fmnist():
    from timm.models.convit import ConVit
    return ConVit(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=6, num_heads=4,
                  mlp_ratio=2.0, local_up_to_layer=4, locality_strength=1.0)


# convit_tiny keeps its width, heads and 224x224 input (196 patches) but only 4 blocks
# (2 GPSA + 2 MHSA) to keep the test short; its full parameter count is checked in
# tests/models/test_convit.py and, against timm, here for convit_fmnist.
@pytest.mark.parametrize("mode", ["eval", "train"])   # train mode: dropout and drop-path are 0 here
@pytest.mark.parametrize("name,kwargs,shape", [
    ("convit_fmnist", {}, (3, 1, 28, 28)),
    ("convit_tiny", {"depth": 4, "local_up_to_layer": 2}, (1, 3, 224, 224)),
])
def test_convit_matches_timm(name, kwargs, shape, mode):
    torch.manual_seed(0)
    tm = timm_fmnist() if name == "convit_fmnist" else timm.create_model(name, pretrained=False, **kwargs)
    tm = tm.double().eval()
    perturb(tm)
    m = models.create(name, **kwargs).to(np.float64)
    assert m.num_params() == sum(p.numel() for p in tm.parameters())
    load_timm(m, tm)
    tm.train(mode == "train")
    m.train(mode == "train")
    x = np.random.default_rng(0).standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    ref = tm(xt)
    xm = minivit.tensor(x, requires_grad=True)
    out = m(xm)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), atol=1e-6, rtol=1e-6)
    y = np.arange(shape[0]) % out.shape[1]
    torch.nn.functional.cross_entropy(ref, torch.tensor(y)).backward()
    F.cross_entropy(out, y).backward()
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), atol=1e-8, rtol=1e-6)
    # so do the gradients of every parameter (gates, pos_proj, qk, v, ... included)
    tparams = dict(tm.named_parameters())
    for k, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, tparams[k].grad.numpy(), atol=1e-8, rtol=1e-6, err_msg=k)


def test_local_init_and_attention_maps_match_timm():
    """Fresh (unperturbed) init: timm and minivit put the same structure into v,
    pos_proj and the gates, and give the same GPSA attention maps."""
    torch.manual_seed(0)
    tm = timm_fmnist().double().eval()
    m = models.create("convit_fmnist").to(np.float64).eval()
    for i in range(4):
        ta, ma = tm.blocks[i].attn, m.blocks[i].attn
        np.testing.assert_array_equal(ma.v.weight.data, ta.v.weight.detach().numpy())
        np.testing.assert_array_equal(ma.pos_proj.weight.data, ta.pos_proj.weight.detach().numpy())
        np.testing.assert_array_equal(ma.gating_param.data, ta.gating_param.detach().numpy())
    perturb(tm, seed=1)
    load_timm(m, tm)
    x = np.random.default_rng(1).standard_normal((2, 49, 64))
    ta = tm.blocks[0].attn
    ta.rel_indices = ta.get_rel_indices(49)
    ref = ta.get_attention(torch.tensor(x)).detach().numpy()
    _, _, attn = m.blocks[0].attn.get_attention(minivit.tensor(x))
    np.testing.assert_allclose(attn.data, ref, atol=1e-12)
    np.testing.assert_array_equal(m.blocks[0].attn.rel_indices((7, 7)), ta.rel_indices.numpy())
