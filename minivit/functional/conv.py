"""Convolution, unfold/fold, pooling and resizing of images ``(N, C, H, W)``.

Every op here slides a small window over the image. They share one idea,
**im2col** ("image to columns"), and its adjoint **col2im**.

im2col
------
Pad the image, then cut out the ``kh x kw`` window that each output pixel
looks at and lay the windows side by side as columns::

    x (N, C, H, W) --pad--> xp (N, C, H+2p, W+2p)
    cols[n, c, ki, kj, i, j] = xp[n, c, i*s + ki*d, j*s + kj*d]     (N, C, kh, kw, Ho, Wo)

    Ho = floor((H + 2p - d(kh-1) - 1) / s) + 1      (the same for W)

No pixel is copied to build ``cols``: it is a *strided view* of ``xp``
(``np.lib.stride_tricks.as_strided``). Moving one step along ``ki`` moves
``d`` rows in ``xp``; one step along ``i`` moves ``s`` rows. Reshaping it to
``(N, C*kh*kw, Ho*Wo)`` makes the one copy, and that is exactly
``torch.nn.functional.unfold``: row ``c*kh*kw + ki*kw + kj``, column
``i*Wo + j``. For one 3x3 image and a 2x2 kernel (stride 1, Ho = Wo = 2)::

    x = a b c         cols: one row per kernel offset (ki, kj), one column per window
        d e f             (0, 0):  a b d e
        g h i             (0, 1):  b c e f
                          (1, 0):  d e g h
                          (1, 1):  e f h i

    conv2d(x, w) = [w00 w01 w10 w11] @ cols  ->  1x4, reshaped to the 2x2 output

(``as_strided`` trusts the shape and strides it is given, so the view is
made read-only: writing into overlapping windows would change neighbours.)

A convolution is then one matrix product per image:
``out[n] = W.reshape(O, C*kh*kw) @ cols[n]`` -- every output pixel is the dot
product of the flattened filter with the flattened window under it.

col2im
------
The adjoint (transpose) of im2col: every column entry is *added back* to the
pixel it was read from; pixels covered by several windows collect several
contributions. It is the backward of im2col, the forward of ``fold``, and it
turns ``d cols`` into ``d x`` in every backward here. It loops over the
``kh*kw`` kernel offsets (9 for a 3x3 kernel) and adds one strided slice
each: for a fixed ``(ki, kj)`` the windows read the pixels
``xp[ki*d :: s, kj*d :: s]``, all different, so one vectorised ``+=`` per
offset is safe.

The ops
-------
- ``conv2d``      cols -> ``W @ cols`` per group; groups are a batch axis of
                  one ``np.matmul`` (so a depthwise conv is one call too).
- ``unfold/fold`` im2col / col2im themselves (T2T-ViT's soft split).
- ``max_pool2d``, ``avg_pool2d``: reduce each window of the cols view.
- ``adaptive_avg_pool2d``, ``interpolate``: linear and separable in H and W,
  so they are ``A_h @ x @ A_w^T`` with small matrices (backward:
  ``A_h^T @ g @ A_w``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from minivit.tensor import Tensor
from minivit._threads import parallel_for
from ._util import as_tensor, pair, sum_rows

__all__ = ["conv2d", "unfold", "fold", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
           "interpolate"]

_make = Tensor._make

# Tests switch this off to check that the fast paths equal the general path.
_FAST_PATHS = True


# ------------------------------------------------------------------ argument checks
def _check_image(op: str, x: Tensor) -> None:
    if x.ndim != 4:
        hint = " (add a batch dimension: x[None] or x.unsqueeze(0))" if x.ndim == 3 else ""
        raise ValueError(f"{op}: expected input of shape (N, C, H, W), got {tuple(x.shape)}{hint}")
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating-point input, got dtype {x.dtype}")


def _pair(op: str, name: str, v, minimum: int) -> tuple[int, int]:
    """Validate an int-or-pair argument (``3`` or ``(3, 2)``) and return the pair."""
    items = v if isinstance(v, (tuple, list)) else (v,)
    if not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in items):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    try:
        p = pair(v, name)
    except ValueError:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}") from None
    if min(p) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v!r}")
    return p


class _Geometry(NamedTuple):
    """Where the windows of a sliding-window op sit; every field is (height, width)."""
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    in_size: tuple    # (H, W) before padding
    out_size: tuple   # (Ho, Wo): number of window positions


def _geometry(op, in_size, kernel_size, stride, padding, dilation) -> _Geometry:
    """Check the window arguments and compute the output size
    ``floor((H + 2p - d(k-1) - 1) / s) + 1`` per axis."""
    k = _pair(op, "kernel_size", kernel_size, 1)
    s = _pair(op, "stride", stride, 1)
    p = _pair(op, "padding", padding, 0)
    d = _pair(op, "dilation", dilation, 1)
    span = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))        # extent of a dilated kernel
    padded = tuple(n + 2 * pi for n, pi in zip(in_size, p))
    if span[0] > padded[0] or span[1] > padded[1]:
        what = f"kernel_size {k}" + (f" with dilation {d} (spanning {span})" if d != (1, 1) else "")
        raise ValueError(f"{op}: {what} is larger than the padded input {padded} "
                         f"(input {tuple(in_size)}, padding {p})")
    out = tuple((pd - sp) // si + 1 for pd, sp, si in zip(padded, span, s))
    return _Geometry(k, s, p, d, tuple(in_size), out)


# ------------------------------------------------------------------ im2col / col2im
def _im2col(x: np.ndarray, g: _Geometry, pad_value: float = 0.0) -> np.ndarray:
    """x (N, C, H, W) -> read-only strided view cols (N, C, kh, kw, Ho, Wo) with
    ``cols[n, c, ki, kj, i, j] = xp[n, c, i*sh + ki*dh, j*sw + kj*dw]``,
    where ``xp`` is ``x`` padded with ``pad_value``. Nothing is copied except
    the padding."""
    (ph, pw), (kh, kw), (sh, sw), (dh, dw) = g.padding, g.kernel, g.stride, g.dilation
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    N, C = x.shape[:2]
    sN, sC, sH, sW = x.strides
    return as_strided(x, shape=(N, C, kh, kw) + g.out_size,
                      strides=(sN, sC, dh * sH, dw * sW, sh * sH, sw * sW), writeable=False)


def _col2im(cols: np.ndarray, g: _Geometry) -> np.ndarray:
    """The adjoint of :func:`_im2col`: cols (N, C, kh, kw, Ho, Wo) -> (N, C, H, W).

    Each entry is added to the pixel it was read from (overlaps sum); what
    lands on the padding is dropped. One vectorised ``+=`` per kernel offset.
    """
    (ph, pw), (kh, kw), (sh, sw), (dh, dw) = g.padding, g.kernel, g.stride, g.dilation
    (H, W), (Ho, Wo) = g.in_size, g.out_size
    N, C = cols.shape[:2]
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for ki in range(kh):
        for kj in range(kw):
            r, c = ki * dh, kj * dw        # top-left pixel read at this offset
            xp[:, :, r:r + sh * (Ho - 1) + 1:sh, c:c + sw * (Wo - 1) + 1:sw] += cols[:, :, ki, kj]
    return np.ascontiguousarray(xp[:, :, ph:ph + H, pw:pw + W])


def _is_patchify(g: _Geometry) -> bool:
    """Non-overlapping windows that tile the image: kernel == stride, no
    padding, no dilation (ViT's patch embedding; a 1x1 stride-1 conv is the
    case k = s = 1)."""
    return _FAST_PATHS and g.kernel == g.stride and g.padding == (0, 0) and g.dilation == (1, 1)


def _conv_cols(x: np.ndarray, g: _Geometry) -> np.ndarray:
    """x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo), the unfold layout."""
    N, C = x.shape[:2]
    (kh, kw), (Ho, Wo) = g.kernel, g.out_size
    if g.kernel == (1, 1) and _is_patchify(g):
        return x.reshape(N, C, Ho * Wo)                    # 1x1 conv: pixels are columns, no copy
    if _is_patchify(g):                                    # cut into patches: a reshape
        x = x[:, :, :Ho * kh, :Wo * kw]                    # drop rows/cols no patch covers
        x = x.reshape(N, C, Ho, kh, Wo, kw).transpose(0, 1, 3, 5, 2, 4)   # (N, C, kh, kw, Ho, Wo)
        return x.reshape(N, C * kh * kw, Ho * Wo)
    return _im2col(x, g).reshape(N, C * kh * kw, Ho * Wo)


def _conv_uncols(dcols: np.ndarray, g: _Geometry, C: int) -> np.ndarray:
    """The adjoint of :func:`_conv_cols`: (N, C*kh*kw, Ho*Wo) -> (N, C, H, W)."""
    N = dcols.shape[0]
    (kh, kw), (Ho, Wo), (H, W) = g.kernel, g.out_size, g.in_size
    if _is_patchify(g):                                    # patches do not overlap: undo the reshape
        d = dcols.reshape(N, C, kh, kw, Ho, Wo).transpose(0, 1, 4, 2, 5, 3)
        d = d.reshape(N, C, Ho * kh, Wo * kw)
        if (Ho * kh, Wo * kw) == (H, W):
            return d
        return np.pad(d, ((0, 0), (0, 0), (0, H - Ho * kh), (0, W - Wo * kw)))   # uncovered: 0
    return _col2im(dcols.reshape(N, C, kh, kw, Ho, Wo), g)


def _shifted(a: np.ndarray, r: int, c: int, g: _Geometry) -> np.ndarray:
    """The pixels that kernel offset (r, c) reads for every output pixel, from a
    padded channels-last array (N, Hp, Wp, C): a (N, Ho, Wo, C) strided view."""
    (sh, sw), (Ho, Wo) = g.stride, g.out_size
    return a[:, r:r + sh * (Ho - 1) + 1:sh, c:c + sw * (Wo - 1) + 1:sw]


def _is_depthwise(C: int, O: int, groups: int) -> bool:
    """One filter per channel: groups == in channels == out channels (CeiT's LeFF)."""
    return _FAST_PATHS and 1 < groups == C == O


def _depthwise_conv2d(x: Tensor, w: Tensor, bias, g: _Geometry, parents) -> Tensor:
    """conv2d with groups == C == O, as a weighted sum of kh*kw shifted views.

    The general path would do N*C matrix products of shape (1, kh*kw) x
    (kh*kw, Ho*Wo), each too small for BLAS to pay off. Here each kernel
    offset (ki, kj) is one vectorised pass over the whole batch::

        out[n, :, i, j] = b + sum_{ki, kj} w[:, ki, kj] * xp[n, :, i*sh + ki*dh, j*sw + kj*dw]

    done channels-last (N, H, W, C), so that the innermost loop of every pass
    runs over C contiguous channels instead of a row of Wo pixels.
    Backward, per offset: dx gets ``g * w[:, ki, kj]`` added back at the
    pixels it was read from (what lands on the padding is dropped), and
    ``dw[:, ki, kj] = sum over n, i, j of g * xp`` (one gemv, as the bias
    gradient of ``linear``). Images are independent, so the passes over the
    batch are split over the CPU's cores (:mod:`minivit._threads`); the
    offsets are always summed in the same order, so the result does not
    depend on the number of threads.
    """
    X, Wd = x.data, w.data
    N, C, H, W = X.shape
    (kh, kw), (Ho, Wo) = g.kernel, g.out_size
    (ph, pw), (dh, dw) = g.padding, g.dilation
    dt = X.dtype
    xp = np.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype=dt)          # padded, channels last
    offsets = [(ki, kj, ki * dh, kj * dw) for ki in range(kh) for kj in range(kw)]

    def forward_rows(sl):
        xs = xp[sl]
        xs[:, ph:ph + H, pw:pw + W] = X[sl].transpose(0, 2, 3, 1)
        o = out_t[sl]
        tmp = np.empty(o.shape, dtype=dt)
        for n_off, (ki, kj, r, c) in enumerate(offsets):
            np.multiply(_shifted(xs, r, c, g), Wd[:, 0, ki, kj], out=o if n_off == 0 else tmp)
            if n_off:
                o += tmp
        if bias is not None:
            o += bias.data
        out[sl] = o.transpose(0, 3, 1, 2)

    out_t = np.empty((N, Ho, Wo, C), dtype=dt)
    out = np.empty((N, C, Ho, Wo), dtype=dt)
    parallel_for(forward_rows, N, work=out.size * kh * kw)

    def backward(grad):
        gt = np.empty((N, Ho, Wo, C), dtype=dt)
        dxp = np.zeros(xp.shape, dtype=dt) if x.requires_grad else None
        gx = np.empty(X.shape, dtype=dt) if x.requires_grad else None

        def backward_rows(sl):
            gs = gt[sl]
            gs[...] = grad[sl].transpose(0, 2, 3, 1)
            if dxp is None:
                return
            d = dxp[sl]
            tmp = np.empty(gs.shape, dtype=dt)
            for ki, kj, r, c in offsets:
                np.multiply(gs, Wd[:, 0, ki, kj], out=tmp)
                _shifted(d, r, c, g)[...] += tmp
            gx[sl] = d[:, ph:ph + H, pw:pw + W].transpose(0, 3, 1, 2)

        parallel_for(backward_rows, N, work=grad.size * kh * kw)
        gw = None
        if w.requires_grad:
            gw = np.empty((C, kh, kw), dtype=dt)
            tmp = np.empty(gt.shape, dtype=dt)
            for ki, kj, r, c in offsets:
                np.multiply(gt, _shifted(xp, r, c, g), out=tmp)
                gw[:, ki, kj] = sum_rows(tmp.reshape(-1, C))
            gw = gw.reshape(Wd.shape)
        if bias is None:
            return gx, gw
        return gx, gw, (sum_rows(gt.reshape(-1, C)) if bias.requires_grad else None)
    return _make(out, parents, backward, "conv2d")


# ------------------------------------------------------------------ convolution
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation, like PyTorch), zero padding.

    input (N, C, H, W), weight (O, C/groups, kh, kw), bias (O,) -> (N, O, Ho, Wo)::

        out[n, o, i, j] = b[o] + sum_{c, ki, kj} w[o, c, ki, kj]
                                  * xp[n, g*C/groups + c, i*s + ki*d, j*s + kj*d]

    with ``g = o // (O/groups)`` the group of output channel ``o``, and
    ``Ho = floor((H + 2p - d(kh-1) - 1)/s) + 1``.

    As matrices (K = C/groups*kh*kw, L = Ho*Wo, groups a batch axis)::

        cols = unfold(x)                     (N, groups, K, L)
        out  = W (groups, O/groups, K) @ cols  ->  (N, groups, O/groups, L)

    Backward: ``dW = sum_n g @ cols^T``, ``db = sum of g over (N, Ho, Wo)``,
    ``dcols = W^T @ g`` and ``dx = col2im(dcols)``.

    Fast paths: kernel == stride without padding (ViT's patch embedding) cuts
    the image into patches with one reshape, and its backward is the reverse
    reshape (no overlaps to sum); a 1x1 stride-1 conv needs no copy at all; a
    depth-wise conv (groups == in == out channels) is a weighted sum of
    shifted views (:func:`_depthwise_conv2d`).
    """
    x = as_tensor(input)
    _check_image("conv2d", x)
    w = as_tensor(weight, like=x)
    if w.ndim != 4:
        raise ValueError(f"conv2d: expected weight of shape (out_channels, in_channels/groups, kh, kw), "
                         f"got {tuple(w.shape)}")
    if w.dtype != x.dtype:
        raise TypeError(f"conv2d: input is {x.dtype} but weight is {w.dtype}; convert one "
                        f"(e.g. weight.astype(np.{x.dtype}))")
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    if C % groups:
        raise ValueError(f"conv2d: groups={groups} does not divide the {C} input channels "
                         f"(input shape {tuple(x.shape)})")
    if Cg * groups != C:
        raise ValueError(f"conv2d: input has {C} channels but weight expects {Cg * groups} "
                         f"(weight shape {tuple(w.shape)}, groups={groups})")
    if O % groups:
        raise ValueError(f"conv2d: groups={groups} does not divide the {O} output channels "
                         f"(weight shape {tuple(w.shape)})")
    parents = (x, w)
    if bias is not None:
        bias = as_tensor(bias, like=x)
        if bias.shape != (O,):
            raise ValueError(f"conv2d: bias must have shape ({O},) to match weight {tuple(w.shape)}, "
                             f"got {tuple(bias.shape)}")
        parents = (x, w, bias)
    g = _geometry("conv2d", (H, W), (kh, kw), stride, padding, dilation)
    if _is_depthwise(C, O, groups):
        return _depthwise_conv2d(x, w, bias, g, parents)
    Ho, Wo = g.out_size
    L, K, Og = Ho * Wo, Cg * kh * kw, O // groups

    cols = _conv_cols(x.data, g).reshape(N, groups, K, L)         # (N, groups, K, L)
    Wm = w.data.reshape(groups, Og, K)                             # (groups, O/groups, K)
    out = np.matmul(Wm, cols).reshape(N, O, Ho, Wo)                # (N, groups, O/groups, L) -> (N, O, Ho, Wo)
    if bias is not None:
        out += bias.data.reshape(1, O, 1, 1)

    def backward(grad):
        G = grad.reshape(N, groups, Og, L)
        gx = gw = None
        if x.requires_grad:
            dcols = np.matmul(Wm.transpose(0, 2, 1), G)             # (N, groups, K, L)
            gx = _conv_uncols(dcols.reshape(N, C * kh * kw, L), g, C)
        if w.requires_grad:
            gw = np.matmul(G, cols.transpose(0, 1, 3, 2)).sum(0).reshape(w.shape)   # sum_n g cols^T
        if bias is None:
            return gx, gw
        return gx, gw, (grad.sum(axis=(0, 2, 3)) if bias.requires_grad else None)
    return _make(out, parents, backward, "conv2d")


# ------------------------------------------------------------------ unfold / fold
def unfold(input, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """Extract sliding windows (``torch.nn.functional.unfold`` / ``nn.Unfold``).

    input (N, C, H, W) -> (N, C*kh*kw, L) with L = Ho*Wo::

        out[n, c*kh*kw + ki*kw + kj, i*Wo + j] = xp[n, c, i*s + ki*d, j*s + kj*d]

    (channel-major rows, output positions row-major). This is im2col.
    Backward: col2im (overlapping windows sum their gradients).
    """
    x = as_tensor(input)
    _check_image("unfold", x)
    N, C, H, W = x.shape
    g = _geometry("unfold", (H, W), kernel_size, stride, padding, dilation)
    (kh, kw), (Ho, Wo) = g.kernel, g.out_size
    out = _im2col(x.data, g).reshape(N, C * kh * kw, Ho * Wo)
    return _make(out, (x,), lambda grad: (_col2im(grad.reshape(N, C, kh, kw, Ho, Wo), g),), "unfold")


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """Sum sliding windows back into an image (``torch.nn.functional.fold``).

    input (N, C*kh*kw, L) -> (N, C, H, W) with ``(H, W) = output_size``: the
    adjoint of :func:`unfold` with the same arguments (col2im), so
    ``<fold(y), x> = <y, unfold(x)>``. Values of overlapping windows are
    summed; ``fold(unfold(x))`` is ``x`` only when the windows do not
    overlap. Backward: unfold.
    """
    y = as_tensor(input)
    if y.ndim != 3:
        raise ValueError(f"fold: expected input of shape (N, C*kh*kw, L), got {tuple(y.shape)}")
    if y.dtype.kind != "f":
        raise TypeError(f"fold: expected a floating-point input, got dtype {y.dtype}")
    H, W = _pair("fold", "output_size", output_size, 1)
    g = _geometry("fold", (H, W), kernel_size, stride, padding, dilation)
    (kh, kw), (Ho, Wo) = g.kernel, g.out_size
    N, CK, L = y.shape
    if CK % (kh * kw):
        raise ValueError(f"fold: input has {CK} rows, which is not a multiple of kh*kw = {kh * kw} "
                         f"(kernel_size {g.kernel})")
    if L != Ho * Wo:
        raise ValueError(f"fold: input has L={L} windows, but output_size {(H, W)} with kernel_size "
                         f"{g.kernel}, stride {g.stride}, padding {g.padding}, dilation {g.dilation} "
                         f"has {Ho}x{Wo} = {Ho * Wo}")
    C = CK // (kh * kw)
    out = _col2im(y.data.reshape(N, C, kh, kw, Ho, Wo), g)
    return _make(out, (y,), lambda grad: (_im2col(grad, g).reshape(N, CK, L),), "fold")


# ------------------------------------------------------------------ pooling
def _pool_geometry(op, x, kernel_size, stride, padding, dilation=1) -> _Geometry:
    g = _geometry(op, x.shape[2:], kernel_size, kernel_size if stride is None else stride,
                  padding, dilation)
    if g.padding[0] > g.kernel[0] // 2 or g.padding[1] > g.kernel[1] // 2:
        raise ValueError(f"{op}: padding {g.padding} must be at most half the kernel_size {g.kernel} "
                         f"(as in PyTorch)")
    return g


def _max_pool2d_offsets(x: Tensor, g: _Geometry) -> Tensor:
    """max_pool2d as a running maximum over the kh*kw shifted views (channels last).

    The general path takes ``argmax`` over a strided (N, C, kh*kw, Ho, Wo)
    window view, whose innermost loops run over a handful of pixels. Here
    each kernel offset is one ``np.maximum`` pass over the whole batch, with
    the channels innermost. Backward: the offsets are visited in row-major
    window order, and each output's gradient goes to the first offset whose
    value equals the maximum (PyTorch's rule for ties).
    """
    X = x.data
    N, C, H, W = X.shape
    kh, kw = g.kernel
    (ph, pw), (dh, dw) = g.padding, g.dilation
    xp = np.full((N, H + 2 * ph, W + 2 * pw, C), -np.inf, dtype=X.dtype)
    xp[:, ph:ph + H, pw:pw + W] = X.transpose(0, 2, 3, 1)
    offsets = [(ki * dh, kj * dw) for ki in range(kh) for kj in range(kw)]

    best = _shifted(xp, *offsets[0], g).copy()
    for r, c in offsets[1:]:
        np.maximum(best, _shifted(xp, r, c, g), out=best)
    out = np.ascontiguousarray(best.transpose(0, 3, 1, 2))

    def backward(grad):
        gt = np.ascontiguousarray(grad.transpose(0, 2, 3, 1))
        dxp = np.zeros(xp.shape, dtype=gt.dtype)
        taken = np.zeros(best.shape, dtype=bool)        # outputs whose maximum was already found
        first = np.empty(best.shape, dtype=bool)
        tmp = np.empty(gt.shape, dtype=gt.dtype)
        for r, c in offsets:
            np.equal(_shifted(xp, r, c, g), best, out=first)
            np.greater(first, taken, out=first)         # equal to the max, and no earlier offset was
            taken |= first
            np.multiply(gt, first, out=tmp)
            _shifted(dxp, r, c, g)[...] += tmp
        return (np.ascontiguousarray(dxp[:, ph:ph + H, pw:pw + W].transpose(0, 3, 1, 2)),)
    return _make(out, (x,), backward, "max_pool2d")


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max over each window; stride defaults to kernel_size; padding is -inf.

    input (N, C, H, W) -> (N, C, Ho, Wo),  ``out[n,c,i,j] = max_{ki,kj} xp[n,c,i*s+ki*d, j*s+kj*d]``.

    Backward: the whole gradient goes to the position of the maximum; on ties
    to the first one in row-major window order, as PyTorch does. The fast
    path (:func:`_max_pool2d_offsets`) keeps a running maximum over the
    kh*kw shifted views; the general one takes argmax over the im2col view,
    scatters the gradient into a (N, C, kh*kw, Ho, Wo) array and sums it back
    with col2im (overlapping windows can pick the same pixel). ``ceil_mode``
    is not implemented.
    """
    x = as_tensor(input)
    _check_image("max_pool2d", x)
    if ceil_mode:
        raise NotImplementedError("max_pool2d: ceil_mode=True is not implemented")
    g = _pool_geometry("max_pool2d", x, kernel_size, stride, padding, dilation)
    if _FAST_PATHS:
        return _max_pool2d_offsets(x, g)
    N, C = x.shape[:2]
    (kh, kw), (Ho, Wo) = g.kernel, g.out_size
    win = _im2col(x.data, g, pad_value=-np.inf).reshape(N, C, kh * kw, Ho, Wo)
    arg = win.argmax(axis=2)[:, :, None]                           # (N, C, 1, Ho, Wo), first max
    out = np.take_along_axis(win, arg, axis=2)[:, :, 0]

    def backward(grad):
        cols = np.zeros(win.shape, dtype=grad.dtype)
        np.put_along_axis(cols, arg, grad[:, :, None], axis=2)
        return (_col2im(cols.reshape(N, C, kh, kw, Ho, Wo), g),)
    return _make(out, (x,), backward, "max_pool2d")


def _avg_pool2d_tiles(x: Tensor, g: _Geometry, div) -> Tensor:
    """avg_pool2d when the windows tile the image (kernel == stride, no padding:
    SASA's ``AvgPool2d(2)``): add the kw neighbours along W, then the kh rows,
    each a pass whose inner loop runs along an image row. (The general path
    reduces a strided window view whose inner loops are a few pixels long:
    ~10x slower.) Backward: every pixel of a window gets ``g / divisor``,
    ``np.repeat`` along H and W; pixels no window covers get 0."""
    X = x.data
    N, C, H, W = X.shape
    (kh, kw), (Ho, Wo) = g.kernel, g.out_size
    cols = X[:, :, :Ho * kh, :Wo * kw].reshape(N, C, Ho * kh, Wo, kw)
    rows = cols[..., 0].copy()                                     # (N, C, Ho*kh, Wo)
    for kj in range(1, kw):
        rows += cols[..., kj]
    rows = rows.reshape(N, C, Ho, kh, Wo)
    out = rows[:, :, :, 0].copy()                                  # (N, C, Ho, Wo)
    for ki in range(1, kh):
        out += rows[:, :, :, ki]
    out /= div

    def backward(grad):
        d = np.repeat(np.repeat(grad / div, kh, axis=2), kw, axis=3)
        if d.shape[2:] != (H, W):
            d = np.pad(d, ((0, 0), (0, 0), (0, H - Ho * kh), (0, W - Wo * kw)))
        return (d,)
    return _make(out, (x,), backward, "avg_pool2d")


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override=None) -> Tensor:
    """Mean over each window (argument order as ``torch.nn.functional.avg_pool2d``).

    ``out[n,c,i,j] = sum_{ki,kj} xp[n,c,i*s+ki, j*s+kj] / divisor`` with zero
    padding. The divisor is kh*kw if ``count_include_pad`` (default), else the
    number of real (non-padding) pixels in that window; ``divisor_override``
    replaces both. Backward: ``g / divisor`` spread over each window (col2im).
    Windows that tile the image (kernel == stride, no padding) take a fast
    path (:func:`_avg_pool2d_tiles`). ``ceil_mode`` is not implemented.
    """
    x = as_tensor(input)
    _check_image("avg_pool2d", x)
    if ceil_mode:
        raise NotImplementedError("avg_pool2d: ceil_mode=True is not implemented")
    g = _pool_geometry("avg_pool2d", x, kernel_size, stride, padding)
    N, C = x.shape[:2]
    (kh, kw), (Ho, Wo) = g.kernel, g.out_size
    if divisor_override is not None:
        if divisor_override == 0:
            raise ValueError("avg_pool2d: divisor_override must not be zero")
        div = np.asarray(divisor_override, dtype=x.dtype)
    elif count_include_pad or g.padding == (0, 0):
        div = np.asarray(kh * kw, dtype=x.dtype)
    else:  # count the real pixels under each window: pool an image of ones
        ones = np.ones((1, 1) + g.in_size, dtype=x.dtype)
        div = _im2col(ones, g).sum(axis=(2, 3))                   # (1, 1, Ho, Wo)
    if _is_patchify(g):
        return _avg_pool2d_tiles(x, g, div)
    out = _im2col(x.data, g).sum(axis=(2, 3)) / div

    def backward(grad):
        cols = np.broadcast_to((grad / div)[:, :, None, None], (N, C, kh, kw, Ho, Wo))
        return (_col2im(cols, g),)
    return _make(out, (x,), backward, "avg_pool2d")


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging matrix of PyTorch's adaptive bins:
    bin i covers [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))."""
    A = np.zeros((n_out, n_in))
    for i in range(n_out):                                          # a loop over output bins
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        A[i, start:end] = 1.0 / (end - start)
    return A


def adaptive_avg_pool2d(input, output_size) -> Tensor:
    """Average pooling to a fixed output size (``torch``'s bins).

    input (N, C, H, W) -> (N, C, oh, ow). Output bin i along H averages rows
    ``start = floor(i*H/oh)`` to ``end = ceil((i+1)*H/oh)`` (exclusive), the
    same along W; bins may overlap when oh does not divide H. ``None`` in
    ``output_size`` keeps that input size.

    When oh divides H and ow divides W the bins are equal blocks: a reshape
    and a mean. Otherwise the op is written as ``A_h @ x @ A_w^T`` with the
    (oh, H) and (ow, W) bin-averaging matrices; building them loops over the
    output bins only (cost bound by the output size), the pooling itself is
    two matmuls. Backward: the transposes, ``A_h^T @ g @ A_w``.
    """
    x = as_tensor(input)
    _check_image("adaptive_avg_pool2d", x)
    N, C, H, W = x.shape
    size = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(size) == 2:                                             # None keeps that input size
        size = tuple(n if s is None else s for s, n in zip(size, (H, W)))
    oh, ow = _pair("adaptive_avg_pool2d", "output_size", size, 1)
    if H % oh == 0 and W % ow == 0:                                # equal blocks
        bh, bw = H // oh, W // ow
        out = x.data.reshape(N, C, oh, bh, ow, bw).mean(axis=(3, 5))

        def backward(grad):
            gx = np.broadcast_to((grad / (bh * bw))[:, :, :, None, :, None], (N, C, oh, bh, ow, bw))
            return (gx.reshape(N, C, H, W),)
        return _make(out, (x,), backward, "adaptive_avg_pool2d")
    Ah = _adaptive_matrix(H, oh).astype(x.dtype)                   # (oh, H)
    Aw = _adaptive_matrix(W, ow).astype(x.dtype)                   # (ow, W)
    out = Ah @ x.data @ Aw.T                                        # (N, C, oh, ow)
    return _make(out, (x,), lambda grad: (Ah.T @ grad @ Aw,), "adaptive_avg_pool2d")


# ------------------------------------------------------------------ resizing
def _nearest_source(n_in: int, n_out: int, scale_factor) -> np.ndarray:
    """Row read by each output row: ``min(floor(dst * scale), n_in - 1)``.

    Computed in float32 exactly as PyTorch does, so e.g. 14 -> 46 reads row
    6 for dst 23 (23 * 14/46 = 7 exactly, but float32(14/46) * 23 < 7).
    """
    scale = np.float32(1.0 / scale_factor) if scale_factor else np.float32(n_in) / np.float32(n_out)
    src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


def _resize_matrix(n_in: int, n_out: int, mode: str, align_corners: bool, scale_factor) -> np.ndarray:
    """(n_out, n_in) matrix A with ``out = A @ x`` along one axis (PyTorch's formulas).

    ``scale`` is ``n_in/n_out``, or ``1/scale_factor`` when a scale factor was
    given (PyTorch uses the factor itself, not the rounded sizes).
    """
    dst = np.arange(n_out)
    A = np.zeros((n_out, n_in))
    if mode == "nearest":                                   # one 1 per row
        A[dst, _nearest_source(n_in, n_out, scale_factor)] = 1.0
        return A
    # bilinear: src falls between rows i0 and i1 = i0 + 1, weights (1 - t, t)
    if align_corners:
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        src = scale * dst                                   # corners map to corners
    else:
        scale = 1.0 / scale_factor if scale_factor else n_in / n_out
        src = np.maximum(scale * (dst + 0.5) - 0.5, 0.0)    # pixel centres; clamped at the top edge
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    t = src - i0
    np.add.at(A, (dst, i0), 1.0 - t)                        # add: i0 == i1 at the bottom edge
    np.add.at(A, (dst, i1), t)
    return A


def interpolate(input, size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                recompute_scale_factor=None, antialias: bool = False) -> Tensor:
    """Resize images (``torch.nn.functional.interpolate`` for 4-D input).

    input (N, C, H, W) -> (N, C, Ho, Wo) with ``(Ho, Wo) = size``, or
    ``floor(H * scale_factor)``. Per axis, with ``scale = H/Ho`` (or
    ``1/scale_factor`` if given, like PyTorch):

    - ``"nearest"``: ``out[i] = x[min(floor(i * scale), H - 1)]`` (PyTorch's
      legacy nearest, computed in float32 like PyTorch).
    - ``"bilinear"``: ``src = scale*(i + 0.5) - 0.5`` clamped at 0
      (``align_corners=False``, the default) or ``src = i*(H-1)/(Ho-1)``
      (``align_corners=True``); ``out[i] = (1-t) x[i0] + t x[i0+1]`` with
      ``i0 = floor(src)``, ``t = src - i0`` (the last row repeats at the edge).

    Both are linear and separable, so ``out = A_h @ x @ A_w^T`` with small
    (Ho, H) and (Wo, W) matrices; the backward is ``A_h^T @ g @ A_w``.

    Not implemented: ``bicubic`` (what timm uses to resize position
    embeddings, with ``antialias=True``), ``antialias``, ``area``,
    ``nearest-exact`` and ``linear``/``trilinear``. A bilinear resize of a
    position embedding is close to, not equal to, timm's.
    """
    x = as_tensor(input)
    _check_image("interpolate", x)
    if mode not in ("nearest", "bilinear"):
        raise NotImplementedError(f"interpolate: mode={mode!r} is not implemented; minivit has "
                                  f"'nearest' and 'bilinear' (no bicubic/antialias: timm resizes "
                                  f"position embeddings with bicubic + antialias)")
    if antialias:
        raise NotImplementedError("interpolate: antialias=True is not implemented")
    if mode == "nearest" and align_corners is not None:
        raise ValueError("interpolate: align_corners can only be set with mode='bilinear'")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    N, C, H, W = x.shape
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("interpolate: recompute_scale_factor is not meaningful with an explicit size")
        Ho, Wo = _pair("interpolate", "size", size, 1)
        sh = sw = None
    else:
        sh, sw = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        if not (sh > 0 and sw > 0):
            raise ValueError(f"interpolate: scale_factor must be positive, got {scale_factor!r}")
        Ho, Wo = int(np.floor(H * float(sh))), int(np.floor(W * float(sw)))
        if Ho < 1 or Wo < 1:
            raise ValueError(f"interpolate: scale_factor {scale_factor!r} gives an empty output "
                             f"({Ho}, {Wo}) for input size {(H, W)}")
        if recompute_scale_factor:                       # use the rounded sizes, not the factor
            sh = sw = None
    corners = bool(align_corners)
    Ah = _resize_matrix(H, Ho, mode, corners, sh).astype(x.dtype)   # (Ho, H)
    Aw = _resize_matrix(W, Wo, mode, corners, sw).astype(x.dtype)   # (Wo, W)
    if mode == "nearest":                                # a gather: exact, and cheaper than matmuls
        rows, cols = _nearest_source(H, Ho, sh), _nearest_source(W, Wo, sw)
        out = x.data[:, :, rows[:, None], cols[None, :]]
    else:
        out = Ah @ x.data @ Aw.T                         # (Ho, H) @ (N, C, H, W) @ (W, Wo)
    return _make(out, (x,), lambda grad: (Ah.T @ grad @ Aw,), "interpolate")
