"""Parity with timm's VisionTransformer on random weights (float64).

Skipped cleanly when torch or timm is not installed (see requirements-dev.txt;
.ci/run provides them from a cached environment).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: parity tests need requirements-dev.txt")
timm = pytest.importorskip("timm", reason="timm not installed: parity tests need requirements-dev.txt")

import minivit  # noqa: E402
from minivit import functional as F  # noqa: E402
from minivit import models  # noqa: E402
from minivit.convert import load_timm  # noqa: E402  (the key map: minivit/convert.py)


@pytest.mark.parametrize("mode", ["eval", "train"])   # train mode: dropout and drop-path are 0 in these configs
@pytest.mark.parametrize("name,kwargs,shape", [
    ("vit_fmnist", {}, (2, 1, 28, 28)),
    ("vit_fmnist", {"global_pool": "avg"}, (2, 1, 28, 28)),
    ("vit_tiny_patch16_224", {"depth": 2}, (1, 3, 224, 224)),
])
def test_vit_matches_timm(name, kwargs, shape, mode):
    torch.manual_seed(0)
    if name == "vit_fmnist":
        tm = timm.models.VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64,
                                           depth=6, num_heads=4, mlp_ratio=2.0, **kwargs)
    else:
        tm = timm.create_model(name, pretrained=False, **kwargs)
    tm = tm.double().train(mode == "train")
    m = models.create(name, **kwargs).to(np.float64)
    load_timm(m, tm)
    m.train(mode == "train")
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
