"""A small ResNet: the convolutional teacher of DeiT (chapter 04).

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
https://arxiv.org/abs/1512.03385
Reference code: torchvision ``models/resnet.py`` (``BasicBlock``, ``ResNet``),
whose module names this file keeps, so the state dict reads the same.

DeiT (chapter 04) distils a vision transformer from a convolutional teacher: a
convolution only ever looks at a k x k neighbourhood and shares its weights over
positions, and that built-in locality is what the student is meant to pick up
from the teacher's predictions. This file gives minivit a teacher it trains itself.

The equations. A 3x3 convolution followed by batch normalisation and a ReLU
(conv-BN-ReLU), for channels c, pixels ij and the 3x3 neighbourhood N_3(i, j):

    u_c(i, j) = sum_{c'} sum_{ab in N_3(i,j)} W[c, c', a-i+1, b-j+1] x_{c'}(a, b)
    BN(u)_c   = gamma_c (u_c - mu_c) / sqrt(sigma_c^2 + eps) + beta_c
    (mu, sigma^2: batch statistics in training, running averages at test time)

A basic residual block with stride s (s = 2 halves the resolution):

    h = ReLU(BN_1(conv3x3_s(x)))
    y = ReLU(BN_2(conv3x3(h)) + shortcut(x))
    shortcut(x) = x, or BN(conv1x1_s(x)) when the width or the resolution changes

The network: a conv-BN-ReLU stem at full resolution, then stages of basic blocks,
each starting with a stride-2 block (half the resolution, more channels), global
average pooling and a linear classifier. ``cnn_fmnist``: 28x28 (16 channels, the
stem) -> 14x14 (32) -> 7x7 (64).

Symbols -> variables: W -> ``conv1.weight`` / ``layerS.B.conv1.weight`` ...;
gamma, beta -> ``bn*.weight``, ``bn*.bias``; running mu, sigma^2 ->
``bn*.running_mean``, ``bn*.running_var`` (buffers); the shortcut's conv1x1 and BN
-> ``downsample.0``, ``downsample.1``; the classifier -> ``fc``.

Differences from torchvision's ResNet: the stem is one 3x3 convolution at stride 1
with no max-pool (a 28x28 image has no resolution to spare; torchvision uses a 7x7
stride-2 convolution and a max-pool for 224x224, and its first stage keeps stride 1),
every stage starts with a stride-2 block, and there are as many stages as ``widths``
has entries. Two stages keep the teacher cheap: one more basic block at full
resolution (16 channels in and out) would add about 60% to the multiply-adds of all
the convolutions together. Init as torchvision: kaiming-normal (fan_out, ReLU) for the
convolutions, BN weight 1 and bias 0, the classifier keeps PyTorch's default.
"""
from __future__ import annotations

from minivit import init, nn
from minivit.models import register_model

__all__ = ["BasicBlock", "ResNetCNN"]


def _conv3x3(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two conv-BN(-ReLU) layers and a residual connection (torchvision's names).

    x (B, C_in, H, W) -> (B, C_out, H/s, W/s) (rounded up for odd H, W).
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))
        else:
            self.downsample = None
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)   # shortcut(x)
        h = self.relu(self.bn1(self.conv1(x)))                          # h = ReLU(BN_1(conv3x3_s(x)))
        return self.relu(self.bn2(self.conv2(h)) + identity)              # y = ReLU(BN_2(conv3x3(h)) + shortcut(x))


class ResNetCNN(nn.Module):
    """A small ResNet classifier: conv-BN-ReLU stem, stages of BasicBlocks,
    global average pooling, linear head.

    ``layers[i]`` blocks of width ``widths[i]`` in stage i (``layer1``, ``layer2`` ...);
    the stem (``stem_width`` channels) keeps the resolution and every stage starts with
    a stride-2 block. x (B, in_chans, H, W)
    -> logits (B, num_classes). ``forward(x, return_features=True)`` also returns
    the feature map of every stage (for plots).
    """

    def __init__(self, layers=(1, 1), widths=(32, 64), in_chans=1, num_classes=10, stem_width=16):
        super().__init__()
        layers, widths = tuple(layers), tuple(widths)
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers and widths must be non-empty and of equal length (one entry per stage), "
                             f"got layers={layers} and widths={widths}")
        for name, seq in (("layers", layers), ("widths", widths)):
            if any(int(v) != v or v < 1 for v in seq):
                raise ValueError(f"{name} must hold positive integers, got {name}={seq}")
        for name, v in (("in_chans", in_chans), ("num_classes", num_classes), ("stem_width", stem_width)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        self.num_classes, self.in_chans = int(num_classes), int(in_chans)
        self.conv1 = _conv3x3(in_chans, stem_width)                         # stem: 3x3, stride 1
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        c = stem_width
        self.num_stages = len(layers)
        for s, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(c, w, stride=2 if b == 0 else 1))
                c = w
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c
        self.init_weights()

    def init_weights(self):
        """torchvision's ResNet init: kaiming-normal(fan_out, ReLU) convolutions, BN 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                init.ones_(m.weight)
                init.zeros_(m.bias)

    def forward_features(self, x, return_features=False):
        """(B, C, H, W) -> last feature map (B, C_last, H', W') [, every stage's map]."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x has shape {tuple(x.shape)} but the model expects (B, {self.in_chans}, H, W): "
                             f"{self.in_chans} input channel{'s' if self.in_chans > 1 else ''}")
        x = self.relu(self.bn1(self.conv1(x)))                              # (B, stem, H, W)
        feats = []
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)                           # (B, w_s, H/2^(s+1), W/2^(s+1))
            feats.append(x)
        return (x, feats) if return_features else x

    def forward(self, x, return_features=False):
        x, feats = self.forward_features(x, return_features=True)
        logits = self.fc(x.mean(dim=(2, 3)))                                # global average pool (B, C) -> (B, K)
        return (logits, feats) if return_features else logits


@register_model
def cnn_fmnist(**kw):
    """Small ResNet for 28x28x1 Fashion-MNIST, DeiT's teacher: a 3x3 conv-BN-ReLU stem
    (16 channels, 28x28), then two stages of one basic block (32 channels at 14x14,
    64 at 7x7), global average pooling, linear head."""
    cfg = dict(layers=(1, 1), widths=(32, 64), stem_width=16, in_chans=1, num_classes=10)
    cfg.update(kw)
    return ResNetCNN(**cfg)
