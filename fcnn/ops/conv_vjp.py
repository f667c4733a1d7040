"""The hand-derived convolution backward in 1, 2 or 3 spatial dimensions, and the custom-VJP builder.

Everything here works channels-last (``(n, *spatial, c)`` inputs, ``(*kernel, c/groups, cout)``
kernels); ``fcnn.ops.conv_nd`` transposes channels-first arrays in and out.

Per spatial dimension (the others alike; s stride, d dilation, (lo, hi) pads, k taps,
F_eff = d*(k-1) + 1), the forward is  z[o] = sum_t xp[o*s + t*d] w[t],  o < out.

  db    = sum over n and every spatial position of dZ          (the bias is added to every pixel)
  dW[t] = sum_o xp[t*d + o*s] dz[o]    correlation of xp with dZ: dZ is the "kernel", dilated by
                                       the forward STRIDE; the window stride is the forward DILATION;
                                       channels: contract over n, one (cg, dg) block per group.
  dX    = dXp[lo : lo + size] with dXp[r] = sum_{o, t: o*s + t*d = r} dz[o] w[t]
        = full convolution of u = dZ with s-1 zeros inserted, with the kernel (dilated by d)
          rotated by 180 degrees in every spatial dimension and in/out channels swapped per group:
          dXp[r] = sum_t upad[r + t*d] w[k-1-t], upad = u padded by F_eff - 1 on both sides.
          Positions past s*(out-1) + F_eff were dropped by the stride and get zero; cropping the
          pads (lo at the start, hi at the end) folds into upad's padding, which may go negative.

``conv_backward_input_col2im`` computes the same dX as the transpose of im2col (one matrix product
to patch gradients, then each kernel tap's slice added back into place); ``conv_backward_kernel_patches``
the same dW as im2col's transposed patch matrix times dZ.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcnn import shapes
from fcnn.channels import add_channels, channel_sum
from fcnn.dtypes import acc_dtype, half_float

__all__ = [
    "conv_backward_bias",
    "conv_backward_kernel",
    "conv_backward_input",
    "conv_backward_input_col2im",
    "conv_backward_kernel_patches",
    "concatenate_bits",
    "all_finite",
    "if_finite",
    "tap_windows",
    "make_custom_vjp_conv",
    "fusion_barrier",
    "lax_conv",
    "pad_zeros",
]

Pads = Tuple[Tuple[int, int], ...]


# ----------------------------------------------------------------------------- shared helpers
def pad_zeros(x, pads: Pads):
    """Zero-pad the spatial dims of channels-last ``x``; negative pads crop (``lax.pad`` semantics)."""
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads) + ((0, 0, 0),))


def _spatial(rank: int) -> str:
    return "DHW"[3 - rank:]


def _dimension_numbers(rank: int):
    """Channels-last lax dimension numbers: ("NWC", "WIO", "NWC") in 1-D ... ("NDHWC", "DHWIO", "NDHWC")."""
    sp = _spatial(rank)
    return ("N" + sp + "C", sp + "IO", "N" + sp + "C")


def lax_conv(x, w, stride, pads, dilation, groups, precision):
    """``lax.conv_general_dilated`` on channels-last ``x`` and ``w`` (any rank)."""
    return lax.conv_general_dilated(x, w, stride, pads, rhs_dilation=dilation, feature_group_count=groups,
                                    dimension_numbers=_dimension_numbers(x.ndim - 2), precision=precision)


def tap_windows(xp, kernel: Sequence[int], out: Sequence[int], stride, dilation, first_axis: int = 1):
    """Yield ``(t, window)`` per kernel tap ``t``, row-major: the input positions tap ``t`` meets,
    ``window[..., p, ...] = xp[..., p*s + t*d, ...]`` for ``p < out`` along the spatial axes
    ``first_axis, first_axis + 1, ...`` of the padded ``xp`` (1 for channels-last ``(n, *sp, c)``);
    the other axes whole."""
    for t in itertools.product(*map(range, kernel)):
        start, limit, strides = [0] * xp.ndim, list(xp.shape), [1] * xp.ndim
        for a, ta in enumerate(t):
            ax = first_axis + a
            start[ax] = ta * dilation[a]
            limit[ax] = start[ax] + (out[a] - 1) * stride[a] + 1
            strides[ax] = stride[a]
        yield t, lax.slice(xp, start, limit, strides)


def all_finite(*arrays):
    """Whether every value of every array is finite (a scalar bool): the guard of the
    implementations whose products would multiply zero pads or mix values (im2col_vjp, winograd).
    (Reading 16-bit floats by their exponent bits instead, to spare XLA:CPU's convert to float32,
    changed the ResNet-18 bf16 step by nothing measurable: 241.6 vs 243.0 ms, docs/perf_notes.md
    item 58.)"""
    return functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(a)) for a in arrays])


def if_finite(checked: Sequence, fast: Callable, safe: Callable, *args):
    """``fast(*args)`` when every value of the arrays ``checked`` is finite, else ``safe(*args)`` (one
    ``lax.cond``: only the branch taken runs)."""
    return lax.cond(all_finite(*checked), fast, safe, *args)


def concatenate_bits(arrays, axis: int):
    """``jnp.concatenate``; 16-bit floats are moved as their uint16 bits (the same values): as a
    program of its own, XLA:CPU ran a bfloat16 concatenate in float32 between converts, VGG's
    32x32x64 patch matrix at batch 16 in 25 ms against 14 (docs/perf_notes.md item 57)."""
    dtype = arrays[0].dtype
    if not half_float(dtype):
        return jnp.concatenate(arrays, axis=axis)
    bits = jnp.concatenate([lax.bitcast_convert_type(a, jnp.uint16) for a in arrays], axis=axis)
    return lax.bitcast_convert_type(bits, dtype)


# ----------------------------------------------------------------------------- the three gradients
def conv_backward_bias(dz):
    """``db = sum(dZ)`` over batch and space. dz: (n, *out, cout) -> (cout,) (``fcnn.channels``)."""
    return channel_sum(dz)


def conv_backward_kernel(x, dz, kernel: Sequence[int], *, stride, pads: Pads, dilation, groups: int,
                         precision=None):
    """``dW = xp * dZ`` (correlation; forward stride -> dilation of dZ, forward dilation -> stride).

    Args:
      x: (n, *in, cin) channels-last forward input.
      dz: (n, *out, cout) gradient of the output.
      kernel: the kernel's spatial sizes; stride, pads, dilation, groups: the forward's, normalised.
    Returns:
      dW: (*kernel, cin/groups, cout), the kernel layout of channels-last inputs (WIO, HWIO, DHWIO).
    """
    rank = len(kernel)
    out = dz.shape[1:-1]
    # keep exactly the padded positions the forward read: s*(out-1) + F_eff (drops those the stride skipped)
    used = [stride[a] * (out[a] - 1) + shapes.effective_size(kernel[a], dilation[a]) for a in range(rank)]
    lo_hi = [(pads[a][0], used[a] - x.shape[1 + a] - pads[a][0]) for a in range(rank)]
    # negative pads crop x here; the rest is padding inside the conv (materialising the padded
    # x cost 1.9x on XLA:CPU for LeNet's first layer, docs/perf_notes.md)
    x = pad_zeros(x, tuple((min(lo, 0), min(hi, 0)) for lo, hi in lo_hi))
    padding = [(max(lo, 0), max(hi, 0)) for lo, hi in lo_hi]
    sp = _spatial(rank)
    # lax batch <- channels (cin, split into `groups` contiguous blocks), lax feature <- n (contracted)
    return lax.conv_general_dilated(x, dz, window_strides=dilation, padding=padding, rhs_dilation=stride,
                                    batch_group_count=groups, precision=precision,
                                    dimension_numbers=("C" + sp + "N", "I" + sp + "O", sp + "NC"))


def conv_backward_kernel_patches(x, dz, kernel: Sequence[int], *, stride, pads, dilation, groups: int,
                                  precision=None):
    """``dW`` as one matrix product per group, ``P^T . dZ`` (the conv impl "im2col_vjp"), with the
    transposed patch matrix ``P^T: (prod(K)*cin, n*prod(out))`` built as it is used, so that both operands are in the
    (rows, contracted) x (contracted, columns) form XLA:CPU hands to its fast bfloat16 matmul (a
    transposed operand, ``P.T @ dZ``, fell off it: 31-35 against 2.6 ms, docs/perf_notes.md item 53).
    Same arguments and result as ``conv_backward_kernel``."""
    *_, cin = x.shape
    rank, n = len(kernel), x.shape[0]
    out = dz.shape[1:-1]
    cg, dg, taps, m = cin // groups, dz.shape[-1] // groups, math.prod(kernel), n * math.prod(out)
    xt = jnp.transpose(x, (rank + 1, 0, *range(1, rank + 1)))  # (cin, n, *in)
    xt = lax.pad(xt, jnp.zeros((), x.dtype), ((0, 0, 0), (0, 0, 0)) + tuple((lo, hi, 0) for lo, hi in pads))
    cols = [window for _, window in tap_windows(xt, kernel, out, stride, dilation, first_axis=2)]  # (cin, n, *out)
    pt = jnp.reshape(concatenate_bits(cols, axis=0), (taps, groups, cg, m))  # row t*cin + k*cg + c
    dzm = jnp.reshape(dz, (m, groups, dg))
    acc = acc_dtype(x.dtype)
    if groups == 1:  # one plain matrix product; the grouped einsum's unit axis may hide it from XLA
        dw = lax.dot(jnp.reshape(pt, (taps * cg, m)), dzm[:, 0], precision=precision, preferred_element_type=acc)
    else:
        dw = jnp.einsum("tkcm,mko->tcko", pt, dzm, precision=precision, preferred_element_type=acc)
    return jnp.reshape(dw, (*kernel, cg, groups * dg))


def conv_backward_input(dz, w, in_sizes: Sequence[int], *, stride, pads: Pads, dilation, groups: int,
                        precision=None, conv: Callable = lax_conv):
    """``dX`` = full convolution of the stride-dilated dZ with the 180°-rotated, channel-swapped kernel.

    Args:
      dz: (n, *out, cout) gradient of the output.
      w: (*kernel, cin/groups, cout) forward kernel (channels-last kernel layout).
      in_sizes: spatial sizes of the forward input; stride, pads, dilation, groups: the forward's.
      conv: the channels-last convolution body that computes it (``lax_conv``'s signature; "VALID"
        given as zero pads).
    Returns:
      dX: (n, *in_sizes, cin) channels-last.
    """
    *kernel, cg, cout = w.shape
    rank, dg = len(kernel), cout // groups
    out = dz.shape[1:-1]
    w_t = jnp.reshape(w, (*kernel, cg, groups, dg))  # (*k, cg, g, dg)
    w_t = jnp.transpose(w_t, (*range(rank), rank + 2, rank + 1, rank))  # (*k, dg, g, cg): in/out swapped
    w_t = jnp.reshape(w_t, (*kernel, dg, groups * cg))[(slice(None, None, -1),) * rank]  # rotated 180°
    config = []
    for a in range(rank):
        s, f_eff = stride[a], shapes.effective_size(kernel[a], dilation[a])
        lo = f_eff - 1 - pads[a][0]  # full-convolution pad, minus the forward's low pad
        hi = in_sizes[a] + pads[a][0] - s * out[a] + s - 1  # so that dX has in_sizes[a] positions
        config.append((lo, hi, s - 1))  # s-1 zeros between dZ positions undo the stride
    u = lax.pad(dz, jnp.zeros((), dz.dtype), ((0, 0, 0), *config, (0, 0, 0)))
    return conv(u, w_t, (1,) * rank, ((0, 0),) * rank, dilation, groups, precision)


# ----------------------------------------------------------------------------- col2im
@jax.custom_jvp
def fusion_barrier(x):
    """``x``, materialised: XLA:CPU cannot fuse its producer into its consumers.

    XLA:CPU fuses cheap elementwise producers into every consumer and re-runs them there, even a
    25-tap loop read 4 times by a max-pool backward (LeNet-5 step, docs/perf_notes.md), and it
    drops ``lax.optimization_barrier`` before fusion. A reduce_window is never fused on XLA:CPU,
    so this is one that returns ``x``: the max of each cell and a second tap that always falls
    in the ``-inf`` padding (window 2 along the last axis, dilated past its end). Exact, NaN
    included; one extra pass over ``x``. Differentiation sees the identity (custom JVP).

    ``x`` enters through ``lax.optimization_barrier``: without it XLA's constant folder evaluated
    the reduce-window whenever ``x`` was a constant, e.g. the cotangent of ``jnp.sum(conv(...))``
    (2.6 s of compile for a (16, 32, 32, 64) one); XLA:CPU removes the barrier after folding and
    before fusion, so the reduce-window still separates the fusions.
    """
    c = x.shape[-1]
    ones = (1,) * (x.ndim - 1)
    return lax.reduce_window(lax.optimization_barrier(x), np.array(-np.inf, x.dtype), lax.max, ones + (2,), ones + (1,),
                             ((0, 0),) * (x.ndim - 1) + ((0, c),), window_dilation=ones + (c,))


@fusion_barrier.defjvp
def _fusion_barrier_jvp(primals, tangents):
    return fusion_barrier(primals[0]), tangents[0]


def conv_backward_input_col2im(dz, w, in_sizes: Sequence[int], *, stride, pads: Pads, dilation, groups: int,
                               precision=None):
    """``dX`` as the transpose of im2col: patch gradients ``dZ . W^T``, then col2im.

    The forward reads ``xp[n, p*s + t*d, c]`` for kernel tap ``t`` (multi-indices, per dimension),
    so the gradient of the padded input is ``dXp = sum_t place_t(dP[..., t, :])`` with
    ``dP[n, p, t, c] = sum_o dZ[n, p, o] w[t, c, o]`` (within each group) and ``place_t`` putting
    position ``p`` at ``t*d + p*s`` (zero elsewhere: one ``lax.pad`` with interior padding ``s - 1``).
    Then ``dX`` is ``dXp`` with the forward's pads cropped (a negative pad, which cropped the input,
    gives zeros back). Same arguments and result as ``conv_backward_input``.
    """
    *kernel, cg, cout = w.shape
    n, out, dg = dz.shape[0], dz.shape[1:-1], cout // groups
    taps = math.prod(kernel)
    acc = acc_dtype(dz.dtype)
    # in the accumulation dtype (exact: a product of two bf16 values is exact in f32): a bf16 product
    # into a wide f32 patch gradient is the form YNNPACK's matmul, on where the CPU has AMX
    # (fcnn.step), runs slowest (LeNet-5 b64 bf16 step 5.53 against 4.84 ms; perf_notes item 57)
    dtype, dz, w = dz.dtype, dz.astype(acc), w.astype(acc)
    if groups == 1:  # the grouped einsum below, with its unit group axis, ran 2.3x slower on XLA:CPU
        dp = jnp.einsum("n...o,tco->n...tc", dz, jnp.reshape(w, (taps, cg, cout)), precision=precision,
                        preferred_element_type=acc)  # (n, *out, taps, cin)
    else:
        dzg = jnp.reshape(dz, (n, *out, groups, dg))
        wg = jnp.reshape(w, (taps, cg, groups, dg))
        dp = jnp.einsum("n...ko,tcko->n...tkc", dzg, wg, precision=precision, preferred_element_type=acc)
        dp = jnp.reshape(dp, (n, *out, taps, groups * cg))  # channel k*cg + c, as in x
    grid = [in_sizes[a] + pads[a][0] + pads[a][1] for a in range(len(kernel))]
    dxp = jnp.zeros((n, *grid, groups * cg), acc)
    for index, t in enumerate(itertools.product(*map(range, kernel))):  # row-major, as w's kernel axes
        config = shapes.tap_pad_config([t[a] * dilation[a] for a in range(len(t))], stride, out, grid)
        dxp = dxp + lax.pad(dp[..., index, :], jnp.zeros((), acc), config)
    # materialised: fused into its consumer (a max-pool backward reads each cell 4 times) the
    # per-tap sum ran once per read; in the accumulation dtype, then cast (as the taps forward)
    return fusion_barrier(pad_zeros(dxp, tuple((-lo, -hi) for lo, hi in pads))).astype(dtype)


# ----------------------------------------------------------------------------- the builder
def make_custom_vjp_conv(backward_input: Callable = conv_backward_input,
                         backward_kernel: Callable = conv_backward_kernel,
                         backward_bias: Callable = conv_backward_bias,
                         forward: Optional[Callable] = None) -> Callable:
    """A channels-last conv ``f(x, w, b, stride, pads, dilation, groups, precision)`` with a custom VJP.

    The forward is ``forward`` (a channels-last body with the signature of ``lax_conv``; None:
    lax's); the backward calls the three given functions (same signatures as
    ``conv_backward_input/kernel/bias``), so deliberately wrong variants can be swapped in for
    mutation testing. ``b`` may be None. The backward is differentiable JAX (grad-of-grad works);
    a ``custom_vjp`` function has no forward mode. Any rank: the spatial sizes passed to the
    backward are ``x.shape[1:-1]`` and ``w.shape[:-2]``.
    """
    forward = lax_conv if forward is None else forward

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
    def f(x, w, b, stride, pads, dilation, groups, precision):
        z = forward(x, w, stride, pads, dilation, groups, precision)
        return z if b is None else add_channels(z, b)

    def fwd(x, w, b, stride, pads, dilation, groups, precision):
        return f(x, w, b, stride, pads, dilation, groups, precision), (x, w, b)

    def bwd(stride, pads, dilation, groups, precision, res, dz):
        x, w, b = res
        # dZ materialised once: XLA:CPU otherwise fuses its producer (a max-pool and activation
        # backward) into each of dX, dW and db, computing and compiling it up to three times
        # (LeNet-5's step: a 194 ms LLVM module gone, XLA's module compile time 1.0-1.1 s against
        # 1.6-2.0 s, step time unchanged; docs/perf_notes.md item 42)
        dz = fusion_barrier(dz)
        geo = dict(stride=stride, pads=pads, dilation=dilation, groups=groups, precision=precision)
        dx = backward_input(dz, w, x.shape[1:-1], **geo)
        dw = backward_kernel(x, dz, w.shape[:-2], **geo)
        db = None if b is None else backward_bias(dz).astype(b.dtype)
        return dx.astype(x.dtype), dw.astype(w.dtype), db

    f.defvjp(fwd, bwd)
    return f
