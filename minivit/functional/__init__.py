"""``minivit.functional`` (import as ``F``): every differentiable op.

Names and argument orders follow ``torch`` / ``torch.nn.functional``. The ops
are grouped in one file per family, each op with its backward beside it:

- :mod:`.basic`      arithmetic, elementwise maths, matmul, linear, reductions
- :mod:`.shape`      reshape/permute/indexing/cat/pad/roll/where ...
- :mod:`.nn_ops`     activations, softmax, layer/batch norm, dropout, drop-path
- :mod:`.loss`       cross-entropy, nll, KL, MSE, cosine similarity, normalize
- :mod:`.attention`  scaled dot-product attention
- :mod:`.conv`       conv2d, unfold/fold, pooling, interpolate
"""
from .basic import (add, sub, mul, div, neg, pow, exp, log, sqrt, abs, clamp, maximum, minimum,
                    tanh, sigmoid, relu, astype, matmul, linear, sum, mean, var, amax, amin, max, min)
from .shape import (reshape, flatten, permute, transpose, expand, squeeze, unsqueeze, getitem,
                    cat, stack, split, chunk, pad, roll, where, masked_fill)
from .nn_ops import gelu, softmax, log_softmax, layer_norm, batch_norm, dropout, drop_path
from .loss import cross_entropy, nll_loss, kl_div, mse_loss, cosine_similarity, normalize
from .attention import scaled_dot_product_attention
from .conv import (conv2d, unfold, fold, max_pool2d, avg_pool2d, adaptive_avg_pool2d, interpolate)
