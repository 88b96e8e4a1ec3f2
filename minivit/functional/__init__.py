"""``minivit.functional`` (import as ``F``): every differentiable op.

Names and argument orders follow ``torch`` / ``torch.nn.functional``. The ops
are grouped in one file per family, each op with its backward beside it:

- :mod:`.basic`      arithmetic, elementwise maths, matmul, linear, reductions
- :mod:`.shape`      reshape/permute/indexing/cat/pad/roll/where ...
- :mod:`.nn_ops`     activations, softmax, normalisation, dropout, losses, attention
- :mod:`.conv`       conv2d, unfold/fold, pooling, interpolate
"""
from .basic import (add, sub, mul, div, neg, pow, exp, log, sqrt, abs, clamp, maximum, minimum,
                    tanh, sigmoid, relu, astype, matmul, linear, sum, mean, var, amax, amin, max, min)
from .shape import (reshape, flatten, permute, transpose, expand, squeeze, unsqueeze, getitem,
                    cat, stack, split, chunk, pad, roll, where, masked_fill)

try:  # families written in parallel; present once they land
    from .nn_ops import *  # noqa: F401,F403
except ImportError:  # pragma: no cover
    pass
try:
    from .conv import *  # noqa: F401,F403
except ImportError:  # pragma: no cover
    pass
