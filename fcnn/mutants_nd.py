"""Deliberately wrong N-d and decoder ops, registered in ``fcnn.mutants`` (``MUTANTS``) beside the 2-D ones.

Each is a drop-in replacement for one op of the quick sweep (``fcnn.sweep_nd``), same arguments
minus ``impl``, with one mistake people make when they write these ops by hand:

    name                           op              the bug                                   shows on
    ct_kernel_not_rotated          conv_transpose  slides the kernel un-rotated: lax's       kernel > 1 tap
                                                   conv_transpose without transpose_kernel
                                                   (jax #14337), a port of the scatter as a
                                                   correlation
    ct_output_padding_at_start     conv_transpose  output_padding's extra rows at the start  output_padding > 0
                                                   (zeros), not real rows at the end
    upsample_whole_pixel_centres   upsample        linear source coordinate j/scale, not     linear methods,
                                                   (j + 0.5)/scale - 0.5 (align_corners       align_corners=False
                                                   False = half-pixel centres)
    conv3d_depth_stride_ignored    conv            hand-derived dX and dW with depth stride  3-D, depth stride > 1
                                                   1 (only H and W strides generalised)

The first three are forward bugs (autodiff backward, consistent with the wrong forward): agreement
with another implementation catches them, finite differences cannot. The last is the shipped custom
VJP (``ops.conv_vjp.make_custom_vjp_conv``) with its own backward functions called at depth stride 1.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from fcnn import ops, shapes
from fcnn.ops import conv_vjp

__all__ = ["ct_kernel_not_rotated", "ct_output_padding_at_start", "upsample_whole_pixel_centres",
           "conv3d_depth_stride_ignored", "ROWS"]

_JNP_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}  # PyTorch's names -> jnp.pad's


def _spatial_axes(ndim: int, layout: str, kernel: bool = False):
    """The spatial axes of an activation (or, ``kernel=True``, of its kernel) in ``layout``."""
    rank = ndim - 2
    if shapes.is_channels_last(layout):
        return tuple(range(rank)) if kernel else tuple(range(1, rank + 1))
    return tuple(range(2, rank + 2))


# ----------------------------------------------------------------------------- transposed convolution
def ct_kernel_not_rotated(x, w, b=None, *, layout=None, precision=None, **geo):
    """``ops.conv_transpose`` of the kernel flipped in every spatial dim: the op rotates it once more,
    so the net effect is the un-rotated kernel slid over the stride-dilated input."""
    layout = shapes.normalize_layout(layout, jnp.ndim(x))
    w = jnp.flip(w, _spatial_axes(jnp.ndim(w), layout, kernel=True))
    return ops.conv_transpose(x, w, b, layout=layout, precision=precision, impl="lax", **geo)


def ct_output_padding_at_start(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                               layout=None, precision=None):
    """The transposed conv without output_padding, then ``output_padding`` zero rows at the START of
    each dim (the right output size; PyTorch's op appends real rows of the full output at the end)."""
    layout = shapes.normalize_layout(layout, jnp.ndim(x))
    rank = shapes.layout_rank(layout)
    window = shapes.kernel_parts(jnp.shape(w), layout)[0]
    stride_t = shapes.normalize_tuple(stride, "stride", rank)
    dilation_t = shapes.normalize_tuple(dilation, "dilation", rank)
    pads, op = shapes.conv_transpose_padding(padding, output_padding, shapes.spatial_dims(jnp.shape(x), layout),
                                             window, stride_t, dilation_t)
    z = ops.conv_transpose(x, w, None, stride=stride, padding=pads, dilation=dilation, groups=groups, layout=layout,
                           precision=precision, impl="lax")
    widths = [(0, 0)] * z.ndim
    for axis, o in zip(_spatial_axes(z.ndim, layout), op):
        widths[axis] = (o, 0)  # BUG: PyTorch's output_padding extends the end
    z = jnp.pad(z, widths)
    if b is None:
        return z
    return z + (b if shapes.is_channels_last(layout) else jnp.reshape(b, (-1,) + (1,) * rank))


# ----------------------------------------------------------------------------- upsampling
def upsample_whole_pixel_centres(x, scale, *, method="nearest", align_corners=False, layout=None):
    """``ops.upsample`` whose linear methods take output cell ``j`` from source ``j / scale``: corner-aligned
    on the first cell only, shifted half an output pixel from PyTorch's half-pixel centres."""
    if method == "nearest" or align_corners:
        return ops.upsample(x, scale, method=method, align_corners=align_corners, layout=layout)
    layout = shapes.normalize_layout(layout, jnp.ndim(x))
    out = shapes.spatial_dims(shapes.upsample_output_shape(jnp.shape(x), scale, layout=layout), layout)
    scales = shapes.normalize_scale(scale, len(out))
    for axis, n_out, s in zip(_spatial_axes(jnp.ndim(x), layout), out, scales):
        n_in = x.shape[axis]
        src = np.minimum(np.arange(n_out) / s, n_in - 1)  # BUG: PyTorch's max((j + 0.5)/s - 0.5, 0)
        i0 = np.floor(src).astype(np.int64)
        w1 = np.reshape(src - i0, (-1,) + (1,) * (x.ndim - axis - 1)).astype(np.float64)
        w1 = jnp.asarray(w1, x.dtype)
        x = (1 - w1) * jnp.take(x, i0, axis=axis) + w1 * jnp.take(x, np.minimum(i0 + 1, n_in - 1), axis=axis)
    return x


# ----------------------------------------------------------------------------- 3-D convolution
def _depth_stride_one(fn: Callable) -> Callable:
    def backward(*args, stride, **geo):
        return fn(*args, stride=(1,) + tuple(stride[1:]) if len(stride) == 3 else stride, **geo)

    return backward


_CONV_DEPTH_STRIDE_ONE = conv_vjp.make_custom_vjp_conv(_depth_stride_one(conv_vjp.conv_backward_input),
                                                       _depth_stride_one(conv_vjp.conv_backward_kernel))


def conv3d_depth_stride_ignored(x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1, layout=None,
                                padding_mode="zeros", precision=None):
    """``ops.conv(impl="custom_vjp")`` in any rank whose backward, in 3-D, forgets the depth stride."""
    layout = shapes.normalize_layout(layout, jnp.ndim(x))
    rank = shapes.layout_rank(layout)
    stride = shapes.normalize_tuple(stride, "stride", rank)
    dilation = shapes.normalize_tuple(dilation, "dilation", rank)
    pads = shapes.normalize_padding(padding, shapes.spatial_dims(jnp.shape(x), layout),
                                    shapes.kernel_parts(jnp.shape(w), layout)[0], stride, dilation)
    if not shapes.is_channels_last(layout):
        x, w = jnp.moveaxis(x, 1, -1), jnp.transpose(w, (*range(2, rank + 2), 1, 0))  # -> channels-last
    if padding_mode != "zeros":
        x, pads = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=_JNP_PAD_MODE[padding_mode]), ((0, 0),) * rank
    z = _CONV_DEPTH_STRIDE_ONE(x, w, b, stride, pads, dilation, groups, precision)
    return z if shapes.is_channels_last(layout) else jnp.moveaxis(z, -1, 1)


# (name, op, bug, shows_on, fn): fcnn.mutants' registry rows
ROWS = [
    ("ct_kernel_not_rotated", "conv_transpose", "slides the kernel un-rotated (lax.conv_transpose without "
     "transpose_kernel)", "kernel > 1 tap", ct_kernel_not_rotated),
    ("ct_output_padding_at_start", "conv_transpose", "output_padding's rows added at the start as zeros, not at "
     "the end", "output_padding > 0", ct_output_padding_at_start),
    ("upsample_whole_pixel_centres", "upsample", "linear source coordinate j/scale instead of half-pixel "
     "(j + 0.5)/scale - 0.5", "linear methods, align_corners=False", upsample_whole_pixel_centres),
    ("conv3d_depth_stride_ignored", "conv", "hand-derived dX and dW use depth stride 1", "3-D with depth stride > 1",
     conv3d_depth_stride_ignored),
]
