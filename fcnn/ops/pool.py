"""2-D pooling: max and average, per channel (first version: lax implementations).

Output size per spatial dimension: ``W2 = floor((W1 + P_total - F_eff) / S) + 1``
(see ``fcnn.shapes``).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from fcnn import shapes

POOL_IMPLS = ("lax", "reference", "custom_vjp")
TIE_POLICIES = ("first", "split", "all")


def _window_args(x, window, stride, padding, dilation, layout):
    layout = shapes.normalize_layout(layout)
    shapes.check_rank4(jnp.shape(x), "x")
    window = shapes.normalize_pair(window, "window")
    stride = window if stride is None else shapes.normalize_pair(stride, "stride")
    dilation = shapes.normalize_pair(dilation, "dilation")
    in_hw = shapes.spatial_dims(jnp.shape(x), layout)
    pads = shapes.normalize_padding(padding, in_hw, window, stride, dilation)
    out_hw = shapes.conv_output_hw(in_hw, window, stride, pads, dilation)
    shapes.check_nonempty(out_hw, in_hw, window, dilation, pads, "the window")
    if layout == "NHWC":
        dims = lambda hw: (1, hw[0], hw[1], 1)
        full_pads = ((0, 0), pads[0], pads[1], (0, 0))
    else:
        dims = lambda hw: (1, 1, hw[0], hw[1])
        full_pads = ((0, 0), (0, 0), pads[0], pads[1])
    return dims(window), dims(stride), dims(dilation), full_pads


def max_pool2d(x, window, *, stride=None, padding="VALID", dilation=1, layout="NHWC", impl="lax", ties="first"):
    """Max pooling (temporary lax-only version)."""
    wd, sd, dd, pads = _window_args(x, window, stride, padding, dilation, layout)
    x = jnp.asarray(x)
    init = jnp.array(-jnp.inf, x.dtype)
    return lax.reduce_window(x, init, lax.max, wd, sd, pads, window_dilation=dd)


def avg_pool2d(x, window, *, stride=None, padding="VALID", layout="NHWC", count_include_pad=True, impl="lax"):
    """Average pooling (temporary lax-only version)."""
    wd, sd, dd, pads = _window_args(x, window, stride, padding, 1, layout)
    x = jnp.asarray(x)
    sums = lax.reduce_window(x, jnp.array(0, x.dtype), lax.add, wd, sd, pads)
    if count_include_pad:
        return sums / (wd[1] * wd[2] * wd[3] * wd[0])
    ones = jnp.ones(x.shape, x.dtype)
    counts = lax.reduce_window(ones, jnp.array(0, x.dtype), lax.add, wd, sd, pads)
    return sums / counts


def global_avg_pool2d(x, *, layout="NHWC"):
    """Mean over the spatial dimensions: (n, h, w, c) -> (n, c)."""
    layout = shapes.normalize_layout(layout)
    shapes.check_rank4(jnp.shape(x), "x")
    return jnp.mean(x, axis=(1, 2) if layout == "NHWC" else (2, 3))


def global_max_pool2d(x, *, layout="NHWC"):
    """Max over the spatial dimensions: (n, h, w, c) -> (n, c)."""
    layout = shapes.normalize_layout(layout)
    shapes.check_rank4(jnp.shape(x), "x")
    return jnp.max(x, axis=(1, 2) if layout == "NHWC" else (2, 3))
