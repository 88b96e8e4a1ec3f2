"""minivit: vision transformers from scratch in pure NumPy.

>>> import minivit
>>> from minivit import functional as F, nn
"""
from minivit import _threads   # first: it tunes OpenBLAS before NumPy loads (see its docstring)
from minivit.tensor import (Tensor, tensor, no_grad, enable_grad, is_grad_enabled,
                            manual_seed, get_rng)
from minivit import functional
from minivit.gradcheck import gradcheck
from minivit._threads import get_num_threads, set_num_threads

__version__ = "0.1.0"
__all__ = ["Tensor", "tensor", "no_grad", "enable_grad", "is_grad_enabled", "manual_seed",
           "get_rng", "functional", "gradcheck", "get_num_threads", "set_num_threads"]
