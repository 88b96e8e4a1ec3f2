"""Modules: ``Parameter``, ``Module`` and the standard layers (``torch.nn`` names).

A :class:`Module` finds its Parameters and sub-Modules by looking at what
you assign to ``self`` (as PyTorch does)::

    class TwoLayer(nn.Module):
        def __init__(self):
            super().__init__()                  # must come first
            self.fc1 = nn.Linear(4, 8)          # registered as a child "fc1"
            self.fc2 = nn.Linear(8, 2)
            self.scale = nn.Parameter(np.ones(2))
            self.register_buffer("calls", np.zeros((), np.int64))

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x))) * self.scale

Registration follows assignment order, so ``named_parameters()`` yields
``fc1.weight, fc1.bias, fc2.weight, fc2.bias, scale`` and ``state_dict()``
has those keys (plus persistent buffers, here ``calls``). Parameter names
follow timm, so a timm checkpoint converted to NumPy loads 1:1.

Three kinds of state:

- **Parameters** (:class:`Parameter`, a Tensor with ``requires_grad=True``)
  are trained. ``num_params()`` counts them, frozen ones included.
- **Buffers** (``register_buffer(name, ndarray, persistent=True)``) are
  plain ndarrays that are not trained but belong to the model: BatchNorm's
  running statistics, Swin's relative position index. Persistent buffers
  are saved in ``state_dict()``; ``num_params()`` never counts buffers.
- Everything else (ints, floats, functions) is an ordinary attribute.

The two blocks that every transformer paper reuses, :class:`Attention` and
:class:`Mlp`, live here with timm's names (``qkv``, ``proj``, ``fc1``,
``fc2``).
"""
from minivit.nn.module import Parameter, Module, StateDictError, IncompatibleKeys
from minivit.nn.layers import (Linear, Conv2d, LayerNorm, BatchNorm1d, BatchNorm2d, Dropout, DropPath, PatchDropout,
                               GELU, ReLU, Tanh, Sigmoid, Softmax, Identity, Flatten,
                               MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Sequential, ModuleList)
from minivit.nn.transformer import Attention, Mlp, run_blocks

__all__ = ["run_blocks", "Parameter", "Module", "StateDictError", "IncompatibleKeys",
           "Linear", "Conv2d", "LayerNorm", "BatchNorm1d", "BatchNorm2d", "Dropout", "DropPath", "PatchDropout",
           "GELU", "ReLU", "Tanh", "Sigmoid", "Softmax", "Identity", "Flatten",
           "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Sequential", "ModuleList",
           "Attention", "Mlp"]
