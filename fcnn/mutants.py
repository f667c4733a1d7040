"""Deliberately wrong gradients, to show that the checks in ``fcnn.gradcheck`` catch real bugs.

A checker is only as good as the bugs it catches. Each ``Mutant`` is a drop-in replacement for one
op (same arguments as ``ops.conv2d`` / ``ops.max_pool2d`` / ``ops.avg_pool2d``, minus ``impl``)
with one realistic mistake, almost always in a hand-written backward rule (a ``custom_vjp``):

    name                          op          the bug                                      shows on
    conv_kernel_not_rotated       conv2d      dX uses w, not w rotated by 180 degrees      kernel > 1x1
    conv_padding_off_by_one       conv2d      dX's full-conv pad F_eff - p, not F_eff-1-p  any
    conv_pads_lo_hi_swapped       conv2d      dX crops (bottom, top) for (top, bottom)     asymmetric pads
    conv_stride_dilation_swapped  conv2d      dX and dW swap stride and dilation           stride != dilation
    conv_dw_stride_ignored        conv2d      dW: dZ not dilated by the forward stride     stride > 1
    conv_channels_not_swapped     conv2d      dX: (cg, cout) reshaped, not transposed      cg, dg not both 1
    conv_groups_interleaved       conv2d      dX: cin ordered c*g + k, not k*cg + c        groups > 1, cg > 1
    conv_patches_dw_channel_major conv2d      im2col_vjp's dW reads its patch rows as      kernel > 1x1,
                                              c*taps + t, not t*cin + c                     cin/groups > 1
    conv_bias_first_example       conv2d      db sums dZ of the first example only        batch > 1
    conv_same_pad_ignores_stride  conv2d      FORWARD: SAME padded by the stride-1 rule    SAME, stride > 1,
                                              (F_eff - 1: PyTorch's padding=k//2 idiom),    (H-1) % stride != 0
                                              backward by autodiff
    pool_overwrite                max_pool2d  overlapping windows overwrite, not add        stride < window
    pool_ties_all_as_first        max_pool2d  policy "all" claimed as "first"             tied maxima
    pool_grad_to_padding          max_pool2d  scatter cropped at 0, not at the top/left pad top/left padding
                                              (gradient lands in the padding and is lost)
    avg_pool_count_mismatch       avg_pool2d  forward divides by real cells, backward by   padding with
                                              kh*kw                                         count_include_pad=False

N-d and decoder mutants (``fcnn.mutants_nd``, whose docstring tabulates them): ``ct_kernel_not_rotated``
and ``ct_output_padding_at_start`` (conv_transpose), ``upsample_whole_pixel_centres`` (upsample),
``conv3d_depth_stride_ignored`` (conv in 3-D).

The conv mutants reuse ``ops.conv``'s own pieces (``make_custom_vjp_conv2d`` with one of
``conv2d_backward_input/kernel/bias`` called on altered arguments), so each differs from the
shipped rule by exactly the named mistake. The max-pool mutants are ``ops.pool``'s own custom VJP
(``make_custom_vjp_max_pool2d``) with its general backward ``max_pool2d_backward`` called with one
flag turned off (``accumulate``, ``crop_at_pad``) or another tie policy than the one claimed. Which
checks catch which mutant is ``fcnn.sweep.mutation_matrix``'s answer.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, NamedTuple

import jax
import jax.numpy as jnp

from fcnn import _checks, mutants_nd, shapes
from fcnn.ops import pool as pool_ops

conv_ops = importlib.import_module("fcnn.ops.conv")  # the module: fcnn.ops.conv is the N-d conv function

__all__ = ["Mutant", "MUTANTS", "get_mutant", "max_pool_backward", "make_max_pool", "conv_from_nhwc"]


class Mutant(NamedTuple):
    """A wrong implementation of one op."""

    name: str
    op: str  # "conv2d", "max_pool2d", "avg_pool2d" or an N-d/decoder op of fcnn.sweep_nd
    bug: str  # what is wrong, in one line
    shows_on: str  # which configurations expose it
    fn: Callable  # same arguments as the op (without impl)


# ----------------------------------------------------------------------------- conv
def conv_from_nhwc(f: Callable) -> Callable:
    """Wrap ``f(x, w, b, stride, pads, dilation, groups, precision)`` on NHWC/HWIO into ``conv2d``'s
    signature (any padding spelling, either layout)."""

    def conv(x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1, layout="NHWC", precision=None):
        kh, kw, _, _ = shapes.kernel_dims(jnp.shape(w), layout)
        stride = shapes.normalize_pair(stride, "stride")
        dilation = shapes.normalize_pair(dilation, "dilation")
        pads = shapes.normalize_padding(padding, shapes.spatial_dims(jnp.shape(x), layout), (kh, kw), stride, dilation)
        if layout == "NCHW":
            x, w = jnp.transpose(x, (0, 2, 3, 1)), jnp.transpose(w, (2, 3, 1, 0))  # -> NHWC, HWIO
        z = f(x, w, b, stride, pads, dilation, groups, precision)  # (n, oh, ow, cout)
        return z if layout == "NHWC" else jnp.transpose(z, (0, 3, 1, 2))

    return conv


def _conv_mutant(backward_input=conv_ops.conv2d_backward_input, backward_kernel=conv_ops.conv2d_backward_kernel,
                 backward_bias=conv_ops.conv2d_backward_bias) -> Callable:
    return conv_from_nhwc(conv_ops.make_custom_vjp_conv2d(backward_input, backward_kernel, backward_bias))


def _dx_unrotated(dz, w, in_hw, **geom):
    return conv_ops.conv2d_backward_input(dz, w[::-1, ::-1], in_hw, **geom)  # rotated twice = not at all


def _dx_pad_off_by_one(dz, w, in_hw, *, pads, **geom):
    (t, b), (l, r) = pads
    return conv_ops.conv2d_backward_input(dz, w, in_hw, pads=((t + 1, b - 1), (l + 1, r - 1)), **geom)


def _dx_pads_swapped(dz, w, in_hw, *, pads, **geom):
    (t, b), (l, r) = pads
    return conv_ops.conv2d_backward_input(dz, w, in_hw, pads=((b, t), (r, l)), **geom)


def _dx_swap_sd(dz, w, in_hw, *, stride, dilation, **geom):
    return conv_ops.conv2d_backward_input(dz, w, in_hw, stride=dilation, dilation=stride, **geom)


def _dw_swap_sd(x, dz, kernel_hw, *, stride, dilation, **geom):
    return conv_ops.conv2d_backward_kernel(x, dz, kernel_hw, stride=dilation, dilation=stride, **geom)


def _dw_stride_ignored(x, dz, kernel_hw, *, stride, **geom):
    return conv_ops.conv2d_backward_kernel(x, dz, kernel_hw, stride=(1, 1), **geom)


def _dw_patches_channel_major(x, dz, kernel_hw, **geom):
    """im2col_vjp's dW with the transposed patch matrix's rows read channel-major (c*taps + t)."""
    dw = conv_ops.conv2d_backward_kernel_patches(x, dz, kernel_hw, **geom)  # (kh, kw, cg, cout)
    kh, kw, cg, cout = dw.shape
    return jnp.reshape(jnp.transpose(jnp.reshape(dw, (kh * kw, cg, cout)), (1, 0, 2)), (kh, kw, cg, cout))


def _dx_with_swapped_kernel(make_kernel):
    """A dX whose in/out-swapped kernel (kh, kw, dg, cin) is ``make_kernel(w, groups)`` (before the
    180-degree rotation), computed by ``conv2d_backward_input`` on the pre-image of that kernel."""

    def backward_input(dz, w, in_hw, *, groups, **geom):
        kh, kw, cg, cout = w.shape
        dg = cout // groups
        k = jnp.reshape(make_kernel(w, groups), (kh, kw, dg, groups, cg))  # (kh, kw, dg, g, cg)
        w_pre = jnp.reshape(jnp.transpose(k, (0, 1, 4, 3, 2)), w.shape)  # undo the in/out swap
        return conv_ops.conv2d_backward_input(dz, w_pre, in_hw, groups=groups, **geom)

    return backward_input


def _kernel_reshaped(w, groups):
    kh, kw, cg, cout = w.shape
    return jnp.reshape(w, (kh, kw, cout // groups, groups * cg))  # (kh, kw, dg, cin): wrong, no transpose


def _kernel_interleaved(w, groups):
    kh, kw, cg, cout = w.shape
    dg = cout // groups
    k = jnp.transpose(jnp.reshape(w, (kh, kw, cg, groups, dg)), (0, 1, 4, 2, 3))  # (kh, kw, dg, cg, g)
    return jnp.reshape(k, (kh, kw, dg, groups * cg))  # input channel c*g + k: interleaved, not blocked


def _db_first_example(dz):
    return jnp.sum(dz[0], axis=(0, 1))  # forgot the batch axis: (oh, ow, cout) -> (cout,)


def _conv_same_ignores_stride(x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1, layout="NHWC",
                              precision=None):
    """Forward with SAME padded as if the stride were 1; autodiff backward.

    The stride-1 SAME pad is F_eff - 1 in total, split (lo, hi) = (T // 2, T - T // 2): for an odd
    kernel the symmetric ``padding=k//2`` (``d*(k-1)//2``) of PyTorch code, the usual port of a
    TensorFlow/XLA "SAME" layer. At stride s it gives SAME's output size, ceil(H / s), but pads
    more than SAME's ``(ceil(H/s) - 1)*s + F_eff - H`` whenever ``(H - 1) % s != 0`` (stride 2 on
    an even size), and every output reads the input shifted by the difference of the start pads
    (one row/column for stride 2). This misalignment is why timm has ``Conv2dSame``/``pad_same``
    (it pads symmetrically only when the stride is 1 and d*(k-1) is even: ``is_static_pad`` in
    timm/layers/padding.py).
    """
    if isinstance(padding, str) and padding.upper() == "SAME":
        kh, kw, _, _ = shapes.kernel_dims(jnp.shape(w), layout)
        d = shapes.normalize_pair(dilation, "dilation")
        padding = shapes.normalize_padding("SAME", shapes.spatial_dims(jnp.shape(x), layout), (kh, kw), (1, 1), d)
    return conv_ops.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout,
                           precision=precision, impl="lax")


# ----------------------------------------------------------------------------- max pool
max_pool_backward = pool_ops.max_pool2d_backward  # the shipped general backward, with the mutants' flags


def make_max_pool(ties_used: str = "first", *, accumulate: bool = True, crop_at_pad: bool = True) -> Callable:
    """``max_pool2d(impl="custom_vjp")`` (``ties`` argument accepted, ``ties_used`` applied) whose
    backward is the shipped ``max_pool2d_backward`` with the given flags; the defaults are correct."""

    def backward(x, y, g, window, stride, pads, dilation, *, ties):
        del ties  # the mutant claims any policy and applies ties_used
        return max_pool_backward(x, y, g, window, stride, pads, dilation, ties=ties_used, accumulate=accumulate,
                                 crop_at_pad=crop_at_pad)

    return pool_ops.make_custom_vjp_max_pool2d(backward)


def _avg_count_mismatch(x, window, *, stride=None, padding="VALID", layout="NHWC", count_include_pad=True):
    def avg(x, include):
        return pool_ops.avg_pool2d(x, window, stride=stride, padding=padding, layout=layout,
                                   count_include_pad=include)

    @jax.custom_vjp
    def f(x):
        return avg(x, count_include_pad)

    def bwd(x, g):
        return jax.vjp(lambda v: avg(v, True), x)[1](g)  # always divides by kh*kw

    f.defvjp(lambda x: (f(x), x), bwd)
    return f(x)


# ----------------------------------------------------------------------------- registry
def _registry() -> Dict[str, Mutant]:
    swapped = _dx_with_swapped_kernel
    rows = [
        ("conv_kernel_not_rotated", "conv2d", "dX uses w instead of w rotated by 180 degrees", "kernel > 1x1",
         _conv_mutant(backward_input=_dx_unrotated)),
        ("conv_padding_off_by_one", "conv2d", "dX's full-convolution pad is F_eff - p instead of F_eff - 1 - p",
         "any", _conv_mutant(backward_input=_dx_pad_off_by_one)),
        ("conv_pads_lo_hi_swapped", "conv2d", "dX crops (bottom, top) instead of (top, bottom)",
         "asymmetric padding", _conv_mutant(backward_input=_dx_pads_swapped)),
        ("conv_stride_dilation_swapped", "conv2d", "dX and dW use the stride as dilation and vice versa",
         "stride != dilation", _conv_mutant(backward_input=_dx_swap_sd, backward_kernel=_dw_swap_sd)),
        ("conv_dw_stride_ignored", "conv2d", "dW correlates with dZ not dilated by the forward stride",
         "stride > 1", _conv_mutant(backward_kernel=_dw_stride_ignored)),
        ("conv_channels_not_swapped", "conv2d", "dX reshapes the kernel's (cin/g, cout) instead of transposing",
         "cin/groups or cout/groups > 1", _conv_mutant(backward_input=swapped(_kernel_reshaped))),
        ("conv_groups_interleaved", "conv2d", "dX orders input channels c*groups + k instead of k*cg + c",
         "groups > 1 with cin/groups > 1", _conv_mutant(backward_input=swapped(_kernel_interleaved))),
        ("conv_patches_dw_channel_major", "conv2d",
         "im2col_vjp's dW reads its transposed patch rows as c*taps + t instead of t*cin + c",
         "kernel > 1x1 with cin/groups > 1", _conv_mutant(backward_kernel=_dw_patches_channel_major)),
        ("conv_bias_first_example", "conv2d", "db sums dZ over the first example only", "batch > 1 with bias",
         _conv_mutant(backward_bias=_db_first_example)),
        ("conv_same_pad_ignores_stride", "conv2d",
         "forward pads SAME by the stride-1 rule (F_eff - 1 in total, the padding=k//2 idiom)",
         "SAME with stride > 1 and (H - 1) % stride != 0", _conv_same_ignores_stride),
        ("pool_overwrite", "max_pool2d", "overlapping windows overwrite each other's gradient",
         "stride < window", make_max_pool(accumulate=False)),
        ("pool_ties_all_as_first", "max_pool2d", "every tied maximum gets the gradient (policy 'all')",
         "tied maxima", make_max_pool("all")),
        ("pool_grad_to_padding", "max_pool2d", "gradient cropped at 0 instead of the pad: shifted into padding",
         "top/left padding", make_max_pool(crop_at_pad=False)),
        ("avg_pool_count_mismatch", "avg_pool2d", "forward divides by real cells, backward by kh*kw",
         "padding with count_include_pad=False", _avg_count_mismatch),
    ] + mutants_nd.ROWS
    return {r[0]: Mutant(*r) for r in rows}


MUTANTS: Dict[str, Mutant] = _registry()


def get_mutant(name: str) -> Mutant:
    """The mutant called ``name`` (``MUTANTS``); ValueError naming the choices otherwise."""
    return MUTANTS[_checks.choice(name, tuple(MUTANTS), "mutant")]
