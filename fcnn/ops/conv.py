"""2-D convolution (cross-correlation, as in every deep-learning library) in seven implementations.

The spec, per output pixel (NHWC input, HWIO kernel, ``g`` groups of ``cg = C_in/g`` input and
``dg = C_out/g`` output channels; ``xp`` is ``x`` zero-padded by ``((top, bottom), (left, right))``)::

    z[n, p, q, k*dg + o] = b[k*dg + o] + sum_{i < kh, j < kw, c < cg}
                           xp[n, p*sh + i*dh, q*sw + j*dw, k*cg + c] * w[i, j, c, k*dg + o]

for ``0 <= p < oh``, ``0 <= q < ow`` with ``oh = floor((H + P_h - F_eff) / sh) + 1``,
``F_eff = dh*(kh-1) + 1`` (``shapes.conv_output_shape``). Convolution over volume: each kernel
spans all ``cg`` channels of its group and produces one output channel; the output depth is the
number of kernels. ``dilation`` is the *kernel* (rhs) dilation.

Implementations, selected by ``impl=`` (all take identical arguments and agree to rounding):

* ``"lax"``: ``lax.conv_general_dilated`` with ``feature_group_count``.
* ``"reference"``: the formula above, one strided slice of ``xp`` per kernel tap ``(i, j)``.
* ``"im2col"``: the taps stacked into a patch matrix ``(n*oh*ow, kh*kw*cg)`` per group, then one
  matrix product with the kernel matrix ``(kh*kw*cg, dg)``.
* ``"fft"``: correlation theorem, ``corr(xp, k) = irfft2(rfft2(xp) * conj(rfft2(k)))`` with the
  zero-inserted (dilated) kernel; the valid part is subsampled by the stride.
* ``"custom_vjp"``: forward through lax, backward hand-derived (``conv2d_backward_*`` below).
* ``"col2im"``: forward through lax, backward hand-derived with the input gradient as im2col's
  transpose: one matrix product ``dZ . W^T`` gives every patch's gradient, and col2im adds the
  ``kh*kw`` shifted slices back into place (``conv2d_backward_input_col2im``).
* ``"taps"``: the reference forward (one multiply-add per kernel tap, which XLA fuses into one
  loop: fast on XLA:CPU when a group has one or few input channels) with col2im's backward.

Every implementation supports every option (stride, padding, dilation, groups, both layouts,
precision). Non-lax implementations work in NHWC/HWIO and transpose NCHW/OIHW in and out.
dtypes: float32, float64 and bfloat16; reference/im2col accumulate bfloat16 products in float32,
fft computes in float32 (float64 for float64 inputs) and casts back.

Padding: anything ``shapes.normalize_padding`` accepts; "SAME" follows XLA (odd extra pad at the
bottom/right; PyTorch's ``padding="same"`` puts it at the top/left and forbids stride > 1).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcnn import _checks, shapes
from fcnn.ops import auto as _auto

__all__ = [
    "CONV_IMPLS",
    "conv2d",
    "conv2d_backward_input",
    "conv2d_backward_input_col2im",
    "conv2d_backward_kernel",
    "conv2d_backward_bias",
    "make_custom_vjp_conv2d",
]

CONV_IMPLS = ("lax", "reference", "im2col", "fft", "custom_vjp", "col2im", "taps")
# "auto" resolves to one of CONV_IMPLS per platform and shape (fcnn/ops/auto.py, measured).
CONV_CHOICES = CONV_IMPLS + ("auto",)

Pair = Tuple[int, int]
Pads = Tuple[Pair, Pair]


# ----------------------------------------------------------------------------- arguments
def _check_precision(precision):
    """None, a ``lax.Precision``, its name ("highest", "float32", ...) or a pair of those."""
    if precision is None or isinstance(precision, lax.Precision):
        return precision
    if isinstance(precision, str):
        try:
            return lax.Precision(precision)
        except ValueError:
            pass
    elif isinstance(precision, tuple) and len(precision) == 2:
        return tuple(_check_precision(p) for p in precision)
    raise ValueError(f"precision must be None, a lax.Precision, its name (e.g. 'highest') or a pair, got {precision!r}")


def _geometry(x, w, b, stride, padding, dilation, groups, layout, impl):
    """Validate every argument (before any computation); return the normalised geometry."""
    _checks.choice(impl, CONV_CHOICES, "impl")
    out_shape = shapes.conv_output_shape(jnp.shape(x), jnp.shape(w), stride=stride, padding=padding,
                                         dilation=dilation, groups=groups, layout=layout)
    stride = shapes.normalize_pair(stride, "stride")
    dilation = shapes.normalize_pair(dilation, "dilation")
    kh, kw, _, cout = shapes.kernel_dims(jnp.shape(w), layout)
    pads = shapes.normalize_padding(padding, shapes.spatial_dims(jnp.shape(x), layout), (kh, kw), stride, dilation)
    if b is not None and tuple(jnp.shape(b)) != (cout,):
        raise ValueError(f"b must have shape (cout,) = ({cout},) to match w, got {tuple(jnp.shape(b))}")
    args = (x, w) if b is None else (x, w, b)
    dtype = jnp.result_type(*args)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"x and w must have a floating dtype (float32, float64, bfloat16, ...), got {dtype}")
    return stride, pads, dilation, out_shape, dtype


def _to_nhwc(x, w, layout):
    """NCHW/OIHW -> NHWC/HWIO (identity for NHWC)."""
    if layout == "NHWC":
        return x, w
    return jnp.transpose(x, (0, 2, 3, 1)), jnp.transpose(w, (2, 3, 1, 0))


def _taps(xp, kernel_hw: Pair, out_hw: Pair, stride: Pair, dilation: Pair):
    """Yield ``((i, j), tap)``: the input pixels kernel tap (i, j) meets, ``tap: (n, oh, ow, cin)``.

    ``tap[n, p, q, c] = xp[n, p*sh + i*dh, q*sw + j*dw, c]``.
    """
    n, _, _, cin = xp.shape
    (oh, ow), (sh, sw), (dh, dw) = out_hw, stride, dilation
    for i in range(kernel_hw[0]):
        for j in range(kernel_hw[1]):
            start = (0, i * dh, j * dw, 0)
            limit = (n, i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1, cin)
            yield (i, j), lax.slice(xp, start, limit, (1, sh, sw, 1))


def _pad_hw(x, pads: Pads):
    """Zero-pad the spatial dims of NHWC ``x``; negative pads crop (``lax.pad`` semantics)."""
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))


def _acc_dtype(dtype):
    """Accumulate bfloat16/float16 products in float32 (what XLA does for lax.conv)."""
    return jnp.promote_types(dtype, jnp.float32)


# ----------------------------------------------------------------------------- implementations (NHWC/HWIO)
def _conv_reference(x, w, stride, pads, dilation, groups, precision):
    """The formula: accumulate ``tap(i, j) . w[i, j]`` over the kernel taps, group by group."""
    kh, kw, cg, cout = w.shape
    n, dg = x.shape[0], cout // groups
    acc = _acc_dtype(x.dtype)
    # bf16/f16 inputs go up to f32 once here, not once per tap (XLA:CPU materialised 25 converted
    # taps: LeNet-5 bf16 step, docs/perf_notes.md); exact, since a product of two bf16 (or f16)
    # values is exact in f32, as with preferred_element_type=f32
    xp = _pad_hw(x, pads).astype(acc)
    out_hw = shapes.conv_output_hw(x.shape[1:3], (kh, kw), stride, pads, dilation)
    wg = jnp.reshape(w, (kh, kw, cg, groups, dg)).astype(acc)  # (kh, kw, cg, g, dg)
    z = jnp.zeros((n, *out_hw, groups, dg), acc)
    for (i, j), tap in _taps(xp, (kh, kw), out_hw, stride, dilation):
        tap = jnp.reshape(tap, (n, *out_hw, groups, cg))  # (n, oh, ow, g, cg)
        z = z + jnp.einsum("npqkc,cko->npqko", tap, wg[i, j], precision=precision,
                           preferred_element_type=z.dtype)
    return jnp.reshape(z, (n, *out_hw, cout)).astype(x.dtype)  # (n, oh, ow, cout)


def _conv_im2col(x, w, stride, pads, dilation, groups, precision):
    """Patch matrix ``(g, n*oh*ow, kh*kw*cg)`` times kernel matrix ``(g, kh*kw*cg, dg)``."""
    kh, kw, cg, cout = w.shape
    n, dg = x.shape[0], cout // groups
    xp = _pad_hw(x, pads)
    oh, ow = shapes.conv_output_hw(x.shape[1:3], (kh, kw), stride, pads, dilation)
    cols = jnp.stack([t for _, t in _taps(xp, (kh, kw), (oh, ow), stride, dilation)], axis=3)
    # cols: (n, oh, ow, kh*kw, cin), taps in row-major (i, j) order like w's (kh, kw) axes
    cols = jnp.reshape(cols, (n * oh * ow, kh * kw, groups, cg))  # (n*oh*ow, kh*kw, g, cg)
    cols = jnp.transpose(cols, (2, 0, 1, 3))  # (g, n*oh*ow, kh*kw, cg)
    cols = jnp.reshape(cols, (groups, n * oh * ow, kh * kw * cg))  # (g, n*oh*ow, kh*kw*cg)
    wm = jnp.reshape(w, (kh * kw * cg, groups, dg))  # (kh*kw*cg, g, dg)
    z = jnp.einsum("gmt,tgo->mgo", cols, wm, precision=precision,
                   preferred_element_type=_acc_dtype(x.dtype))  # (n*oh*ow, g, dg)
    return jnp.reshape(z, (n, oh, ow, cout)).astype(x.dtype)  # (n, oh, ow, cout)


def _conv_fft(x, w, stride, pads, dilation, groups, precision):
    """Correlation theorem on the padded input; exact up to FFT rounding.

    ``c[n, a, e, o] = sum_{u, v, c} xp[n, a+u, e+v, c] * kd[u, v, c, o]`` (``kd``: the kernel with
    ``d-1`` zeros inserted between taps) is, for ``a <= Hp - F_eff``, the circular correlation of
    size ``(Hp, Wp)`` (no wrap-around there), i.e. ``irfft2(rfft2(xp) * conj(rfft2(kd)))`` summed
    over channels per group. ``z = c[:, ::sh, ::sw]`` restricted to ``(oh, ow)``.
    """
    kh, kw, cg, cout = w.shape
    n, dg = x.shape[0], cout // groups
    (sh, sw), (dh, dw) = stride, dilation
    oh, ow = shapes.conv_output_hw(x.shape[1:3], (kh, kw), stride, pads, dilation)
    real = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
    xp = _pad_hw(x.astype(real), pads)  # (n, hp, wp, cin)
    hp, wp = xp.shape[1:3]
    zero = jnp.zeros((), real)
    kd = lax.pad(w.astype(real), zero, ((0, 0, dh - 1), (0, 0, dw - 1), (0, 0, 0), (0, 0, 0)))
    # kd: (F_eff_h, F_eff_w, cg, cout), zero-padded at the end to (hp, wp) by rfft2's s=
    xf = jnp.fft.rfft2(xp, axes=(1, 2))  # (n, hp, wp//2+1, cin)
    kf = jnp.fft.rfft2(kd, s=(hp, wp), axes=(0, 1))  # (hp, wp//2+1, cg, cout)
    xf = jnp.reshape(xf, (n, hp, wp // 2 + 1, groups, cg))  # (n, hp, wf, g, cg)
    kf = jnp.reshape(kf, (hp, wp // 2 + 1, cg, groups, dg))  # (hp, wf, cg, g, dg)
    zf = jnp.einsum("nhwkc,hwcko->nhwko", xf, jnp.conj(kf), precision=precision)  # (n, hp, wf, g, dg)
    zf = jnp.reshape(zf, (n, hp, wp // 2 + 1, cout))  # (n, hp, wf, cout)
    c = jnp.fft.irfft2(zf, s=(hp, wp), axes=(1, 2))  # (n, hp, wp, cout)
    z = lax.slice(c, (0, 0, 0, 0), (n, (oh - 1) * sh + 1, (ow - 1) * sw + 1, cout), (1, sh, sw, 1))
    return z.astype(x.dtype)  # (n, oh, ow, cout)


def _conv_lax_nhwc(x, w, stride, pads, dilation, groups, precision):
    return lax.conv_general_dilated(x, w, stride, pads, rhs_dilation=dilation, feature_group_count=groups,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


# ----------------------------------------------------------------------------- hand-derived backward
# Per spatial dimension (the other is alike; s stride, d dilation, (lo, hi) pads, k = kh taps,
# F_eff = d*(k-1) + 1), the forward is  z[o] = sum_t xp[o*s + t*d] w[t],  o < oh.
#
#   db    = sum over n, p, q of dZ                                   (bias is added to every pixel)
#   dW[t] = sum_o xp[t*d + o*s] dz[o]    correlation of xp with dZ: dZ is the "kernel", dilated by
#                                        the forward STRIDE; the window stride is the forward DILATION;
#                                        channels: contract over n, one (cg, dg) block per group.
#   dX    = dXp[lo : lo + H] with dXp[r] = sum_{o, t: o*s + t*d = r} dz[o] w[t]
#         = full convolution of u = dZ with s-1 zeros inserted, with the kernel (dilated by d)
#           rotated by 180 degrees and in/out channels swapped per group:
#           dXp[r] = sum_t upad[r + t*d] w[k-1-t], upad = u padded by F_eff - 1 on both sides.
#           Rows past s*(oh-1) + F_eff were dropped by the stride and get zero; cropping the pads
#           (lo at the start, hi at the end) folds into upad's padding, which may go negative.
def conv2d_backward_bias(dz):
    """``db = sum(dZ)`` over batch and space. dz: (n, oh, ow, cout) -> (cout,)."""
    return jnp.sum(dz, axis=(0, 1, 2))


def conv2d_backward_kernel(x, dz, kernel_hw: Pair, *, stride: Pair, pads: Pads, dilation: Pair, groups: int,
                           precision=None):
    """``dW = xp * dZ`` (correlation; forward stride -> dilation of dZ, forward dilation -> stride).

    Args:
      x: (n, h, w, cin) NHWC forward input.
      dz: (n, oh, ow, cout) gradient of the output.
      kernel_hw: (kh, kw); stride, pads, dilation, groups: the forward's, normalised.
    Returns:
      dW: (kh, kw, cin/groups, cout) HWIO.
    """
    (sh, sw), (dh, dw) = stride, dilation
    oh, ow = dz.shape[1:3]
    # keep exactly the padded rows the forward read: s*(oh-1) + F_eff (drops rows the stride skipped)
    used = (sh * (oh - 1) + shapes.effective_size(kernel_hw[0], dh),
            sw * (ow - 1) + shapes.effective_size(kernel_hw[1], dw))
    lo_hi = [(pads[a][0], used[a] - x.shape[1 + a] - pads[a][0]) for a in range(2)]
    # negative pads crop x here; the rest is padding inside the conv (materialising the padded
    # x cost 1.9x on XLA:CPU for LeNet's first layer, docs/perf_notes.md)
    crop = [(max(-lo, 0), x.shape[1 + a] - max(-hi, 0)) for a, (lo, hi) in enumerate(lo_hi)]
    x = lax.slice(x, (0, crop[0][0], crop[1][0], 0), (x.shape[0], crop[0][1], crop[1][1], x.shape[3]))
    padding = [(max(lo, 0), max(hi, 0)) for lo, hi in lo_hi]
    # lax batch <- channels (cin, split into `groups` contiguous blocks), lax feature <- n (contracted)
    return lax.conv_general_dilated(x, dz, window_strides=dilation, padding=padding, rhs_dilation=stride,
                                    batch_group_count=groups, precision=precision,
                                    dimension_numbers=("CHWN", "IHWO", "HWNC"))  # (kh, kw, cg, cout)


def conv2d_backward_input(dz, w, in_hw: Pair, *, stride: Pair, pads: Pads, dilation: Pair, groups: int,
                          precision=None):
    """``dX`` = full convolution of the stride-dilated dZ with the 180°-rotated, channel-swapped kernel.

    Args:
      dz: (n, oh, ow, cout) gradient of the output.
      w: (kh, kw, cin/groups, cout) HWIO forward kernel.
      in_hw: (h, w) of the forward input; stride, pads, dilation, groups: the forward's, normalised.
    Returns:
      dX: (n, h, w, cin) NHWC.
    """
    kh, kw, cg, cout = w.shape
    dg = cout // groups
    oh, ow = dz.shape[1:3]
    w_t = jnp.reshape(w, (kh, kw, cg, groups, dg))  # (kh, kw, cg, g, dg)
    w_t = jnp.transpose(w_t, (0, 1, 4, 3, 2))  # (kh, kw, dg, g, cg): in/out swapped per group
    w_t = jnp.reshape(w_t, (kh, kw, dg, groups * cg))[::-1, ::-1]  # (kh, kw, dg, cin), rotated 180°
    lo_hi = []
    for a, (k, s, d) in enumerate(zip((kh, kw), stride, dilation)):
        f_eff = shapes.effective_size(k, d)
        lo = f_eff - 1 - pads[a][0]  # full-convolution pad, minus the forward's top/left pad
        hi = in_hw[a] + pads[a][0] - s * (oh if a == 0 else ow) + s - 1  # so the output has in_hw[a] rows
        lo_hi.append((lo, hi, s - 1))  # s-1 zeros between dZ rows undo the stride
    u = lax.pad(dz, jnp.zeros((), dz.dtype), ((0, 0, 0), lo_hi[0], lo_hi[1], (0, 0, 0)))
    return lax.conv_general_dilated(u, w_t, (1, 1), "VALID", rhs_dilation=dilation, feature_group_count=groups,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


@jax.custom_jvp
def _fusion_barrier(x):
    """``x``, materialised: XLA:CPU cannot fuse its producer into its consumers.

    XLA:CPU fuses cheap elementwise producers into every consumer and re-runs them there, even a
    25-tap loop read 4 times by a max-pool backward (LeNet-5 step, docs/perf_notes.md), and it
    drops ``lax.optimization_barrier`` before fusion. A reduce_window is never fused on XLA:CPU,
    so this is one that returns ``x``: the max of each cell and a second tap that always falls
    in the ``-inf`` padding (window 2 along the last axis, dilated past its end). Exact, NaN
    included; one extra pass over ``x``. Differentiation sees the identity (custom JVP).
    """
    c = x.shape[-1]
    ones = (1,) * (x.ndim - 1)
    return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, ones + (2,), ones + (1,),
                             ((0, 0),) * (x.ndim - 1) + ((0, c),), window_dilation=ones + (c,))


@_fusion_barrier.defjvp
def _fusion_barrier_jvp(primals, tangents):
    return _fusion_barrier(primals[0]), tangents[0]


def conv2d_backward_input_col2im(dz, w, in_hw: Pair, *, stride: Pair, pads: Pads, dilation: Pair, groups: int,
                                 precision=None):
    """``dX`` as the transpose of im2col: patch gradients ``dZ . W^T``, then col2im.

    The forward reads ``xp[n, p*sh + i*dh, q*sw + j*dw, c]`` for tap ``(i, j)``, so the gradient of
    the padded input is ``dXp = sum_{i, j} place_{i, j}(dP[:, :, :, i, j, :])`` with
    ``dP[n, p, q, i, j, c] = sum_o dZ[n, p, q, o] w[i, j, c, o]`` (within each group) and
    ``place_{i, j}`` putting pixel ``(p, q)`` at ``(i*dh + p*sh, j*dw + q*sw)`` (zero elsewhere: one
    ``lax.pad`` with interior padding ``s - 1``). Then ``dX`` is ``dXp`` with the forward's pads
    cropped (a negative pad, which cropped the input, gives zero rows back).
    Same arguments and result as ``conv2d_backward_input``.
    """
    kh, kw, cg, cout = w.shape
    n, oh, ow, _ = dz.shape
    dg = cout // groups
    acc = _acc_dtype(dz.dtype)
    if groups == 1:  # the grouped einsum below, with its unit group axis, ran 2.3x slower on XLA:CPU
        dp = jnp.einsum("npqo,ijco->npqijc", dz, w, precision=precision, preferred_element_type=acc)
    else:
        dzg = jnp.reshape(dz, (n, oh, ow, groups, dg))
        wg = jnp.reshape(w, (kh, kw, cg, groups, dg))
        dp = jnp.einsum("npqko,ijcko->npqijkc", dzg, wg, precision=precision, preferred_element_type=acc)
    dp = jnp.reshape(dp, (n, oh, ow, kh, kw, groups * cg))  # channel k*cg + c, as in x
    hp, wp = (in_hw[a] + pads[a][0] + pads[a][1] for a in range(2))
    dh, dw = dilation
    dxp = jnp.zeros((n, hp, wp, groups * cg), acc)
    for i in range(kh):
        for j in range(kw):
            config = shapes.tap_pad_config((i * dh, j * dw), stride, (oh, ow), (hp, wp))
            dxp = dxp + lax.pad(dp[:, :, :, i, j, :], jnp.zeros((), acc), config)
    # materialised: fused into its consumer (a max-pool backward reads each cell 4 times) the
    # kh*kw-slice sum ran once per read
    return _fusion_barrier(_pad_hw(dxp, tuple((-lo, -hi) for lo, hi in pads)).astype(dz.dtype))  # (n, h, w, cin)


def make_custom_vjp_conv2d(backward_input: Callable = conv2d_backward_input,
                           backward_kernel: Callable = conv2d_backward_kernel,
                           backward_bias: Callable = conv2d_backward_bias,
                           forward: Optional[Callable] = None) -> Callable:
    """An NHWC conv ``f(x, w, b, stride, pads, dilation, groups, precision)`` with a custom VJP.

    The forward is ``forward`` (an NHWC body with the signature of ``_conv_lax_nhwc``; None: lax's);
    the backward calls the three given functions (same signatures as
    ``conv2d_backward_input/kernel/bias``), so deliberately wrong variants can be swapped in for
    mutation testing. ``b`` may be None. The backward is differentiable JAX (grad-of-grad works);
    a ``custom_vjp`` function has no forward mode.
    """
    forward = _conv_lax_nhwc if forward is None else forward

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
    def f(x, w, b, stride, pads, dilation, groups, precision):
        z = forward(x, w, stride, pads, dilation, groups, precision)
        return z if b is None else z + b

    def fwd(x, w, b, stride, pads, dilation, groups, precision):
        return f(x, w, b, stride, pads, dilation, groups, precision), (x, w, b)

    def bwd(stride, pads, dilation, groups, precision, res, dz):
        x, w, b = res
        dx = backward_input(dz, w, x.shape[1:3], stride=stride, pads=pads, dilation=dilation, groups=groups,
                            precision=precision)
        dw = backward_kernel(x, dz, w.shape[:2], stride=stride, pads=pads, dilation=dilation, groups=groups,
                             precision=precision)
        db = None if b is None else backward_bias(dz).astype(b.dtype)
        return dx.astype(x.dtype), dw.astype(w.dtype), db

    f.defvjp(fwd, bwd)
    return f


def _conv_taps_forward(x, w, stride, pads, dilation, groups, precision):
    """The reference forward, materialised (``_fusion_barrier``): XLA:CPU otherwise re-runs the tap
    loop inside each consumer (activation, max-pool forward and backward)."""
    return _fusion_barrier(_conv_reference(x, w, stride, pads, dilation, groups, precision))


_CUSTOM_VJP = {  # f(x, w, b, stride, pads, dilation, groups, precision), NHWC/HWIO
    "custom_vjp": make_custom_vjp_conv2d(),
    "col2im": make_custom_vjp_conv2d(backward_input=conv2d_backward_input_col2im),
    "taps": make_custom_vjp_conv2d(backward_input=conv2d_backward_input_col2im, forward=_conv_taps_forward),
}

_IMPLS = {  # NHWC/HWIO bodies; "lax" runs natively in either layout inside conv2d
    "reference": _conv_reference,
    "im2col": _conv_im2col,
    "fft": _conv_fft,
}


# ----------------------------------------------------------------------------- public entry point
def conv2d(x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1, layout="NHWC", impl="lax",
           precision=None):
    """2-D convolution ``z = w * x + b`` (cross-correlation; see the module docstring for the formula).

    Args:
      x: (n, h, w, cin) NHWC or (n, cin, h, w) NCHW; float32, float64 or bfloat16.
      w: (kh, kw, cin/groups, cout) HWIO for NHWC or (cout, cin/groups, kh, kw) OIHW for NCHW.
      b: (cout,) bias or None.
      stride: int or (sh, sw), >= 1.
      padding: "VALID", "SAME" (XLA: odd extra pad at the end), int, (ph, pw) or
        ((top, bottom), (left, right)).
      dilation: kernel (rhs) dilation, int or (dh, dw), >= 1.
      groups: feature groups; divides cin and cout (groups = cin: depthwise).
      layout: "NHWC" or "NCHW".
      impl: one of ``CONV_IMPLS``; all support every option above. ``"auto"`` picks one per
        platform and shape from measurements (``fcnn.ops.auto.select_conv_impl``).
      precision: None, a ``lax.Precision`` or its name ("highest"), passed to every conv/dot/einsum.
    Returns:
      z: (n, oh, ow, cout) NHWC or (n, cout, oh, ow) NCHW, the dtype of ``x``/``w`` (promoted), with
      ``oh, ow`` from ``shapes.conv_output_shape``.
    Raises:
      ValueError/TypeError naming the argument, before any computation.
    """
    stride, pads, dilation, _, dtype = _geometry(x, w, b, stride, padding, dilation, groups, layout, impl)
    precision = _check_precision(precision)
    if impl == "auto":
        impl = _auto.select_conv_impl(jax.default_backend(), jnp.shape(x), jnp.shape(w), stride=stride,
                                      dilation=dilation, groups=groups, layout=layout)
    x = jnp.asarray(x, dtype)
    w = jnp.asarray(w, dtype)
    b = None if b is None else jnp.asarray(b, dtype)
    if impl == "lax":
        dn = (layout, "HWIO" if layout == "NHWC" else "OIHW", layout)
        z = lax.conv_general_dilated(x, w, stride, pads, rhs_dilation=dilation, feature_group_count=groups,
                                     dimension_numbers=dn, precision=precision)
        return z if b is None else z + _bias_shape(b, layout)
    xh, wh = _to_nhwc(x, w, layout)
    if impl in _CUSTOM_VJP:
        z = _CUSTOM_VJP[impl](xh, wh, b, stride, pads, dilation, groups, precision)  # (n, oh, ow, cout)
    else:
        z = _IMPLS[impl](xh, wh, stride, pads, dilation, groups, precision)  # (n, oh, ow, cout)
        z = z if b is None else z + b
    return z if layout == "NHWC" else jnp.transpose(z, (0, 3, 1, 2))


def _bias_shape(b, layout):
    """(cout,) -> broadcastable against the output in ``layout``."""
    return b if layout == "NHWC" else jnp.reshape(b, (-1, 1, 1))  # (cout, 1, 1)
