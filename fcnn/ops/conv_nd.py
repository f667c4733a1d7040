"""Convolution in 1, 2 or 3 spatial dimensions: the rank-generic spec, its implementations, ``conv``.

The spec, channels-last (``x: (n, *S, C_in)``, ``w: (*K, cg, C_out)``; ``g`` groups of
``cg = C_in/g`` input and ``dg = C_out/g`` output channels; ``xp`` is ``x`` padded by the resolved
``((lo, hi), ...)``; ``p`` and ``t`` are multi-indices, products and sums taken per dimension)::

    z[n, p, k*dg + o] = b[k*dg + o] + sum_{t < K, c < cg} xp[n, p*s + t*d, k*cg + c] * w[t, c, k*dg + o]

for ``0 <= p < out`` with ``out = floor((S + P - F_eff) / s) + 1``, ``F_eff = d*(K-1) + 1``
(``shapes.conv_output_shape``). Layouts: channels-last ``NWC``/``NHWC``/``NDHWC`` (the default for
x's rank) with kernels ``WIO``/``HWIO``/``DHWIO``, channels-first ``NCW``/``NCHW``/``NCDHW`` with
kernels ``OIW``/``OIHW``/``OIDHW`` (PyTorch's); ``shapes.kernel_layout`` names the pair.

Implementations, selected by ``impl=``, in every rank with every option (all take identical
arguments and agree to rounding on finite inputs; ``fcnn/ops/conv.py`` tabulates non-finite ones):

* ``"lax"``: ``lax.conv_general_dilated``, natively in either layout.
* ``"reference"``: the formula above, one strided slice of ``xp`` per kernel tap ``t``.
* ``"im2col"``: the taps stacked into a patch matrix ``(n*prod(out), prod(K)*cg)`` per group, then
  one matrix product with the kernel matrix ``(prod(K)*cg, dg)``.
* ``"fft"``: correlation theorem, ``corr(xp, k) = irfftn(rfftn(xp) * conj(rfftn(k)))`` with the
  zero-inserted (dilated) kernel; the valid part is subsampled by the stride.
* ``"custom_vjp"``: forward through lax, backward hand-derived (``fcnn/ops/conv_vjp.py``).
* ``"col2im"``: lax forward; the input gradient as im2col's transpose (``conv_backward_input_col2im``).
* ``"taps"``: the reference forward, materialised, with col2im's backward.
* ``"im2col_vjp"``: three patch-matrix products, each ``(rows, contracted) x (contracted, columns)``:
  im2col's forward; ``dX`` as im2col's convolution of the stride-dilated dZ with the rotated kernel
  (``conv_backward_input``'s formula); ``dW`` as the transposed patch matrix times dZ. The form in
  which XLA:CPU runs bfloat16 products on AMX; for a kernel with a non-finite value it computes
  lax's forward and col2im's dX instead, so its NaN/inf pattern is lax's.
* ``"winograd"`` (restricted: 2-D 3x3, stride 1, dilation 1; ``RESTRICTED_IMPLS``): Winograd's
  minimal filtering F(2x2, 3x3) with a hand-derived VJP (``fcnn/ops/winograd.py``); lax's forward
  and col2im's dX where an operand is not finite, so its NaN/inf pattern is lax's too.
* ``"onednn"`` (restricted: 2-D, where oneDNN is available; ``fcnn/ops/onednn.py``): oneDNN's
  convolution kernels (PyTorch's on CPU) for the forward and both gradients, as XLA custom calls;
  float32 and bfloat16 with groups 1 (lax for the rest); lax's NaN/inf pattern (guards as above).

Non-lax implementations work channels-last and transpose channels-first arrays in and out.
Empty operands: where x or w has no elements (a batch of 0, 0 input or output channels) every output
is a sum of no products, so z is empty or the bias alone. lax computes such a call whatever ``impl``
says: oneDNN refuses zero channels (an INTERNAL error at run time), the fusion barrier of the
col2im-based gradients (``conv_vjp.fusion_barrier``, a reduce_window) an empty channel axis, and
"auto"'s CPU cost rule divides by the batch.
dtypes: float32, float64 and bfloat16; reference/im2col accumulate bfloat16 products in float32,
fft computes in float32 (float64 for float64 inputs) and casts back.

Padding: anything ``shapes.normalize_padding`` accepts ("VALID"; "SAME" with the odd extra pad at
the end, as XLA and PyTorch's ``padding="same"``; an int; one int or one (lo, hi) pair per dimension).
``padding_mode`` (PyTorch's names and semantics) says what the pad cells hold: ``"zeros"``;
``"reflect"`` mirrors the input without repeating its edge (``[1 2 3]`` padded by 2 at the start:
``3 2 | 1 2 3``); ``"replicate"`` repeats the edge (``1 1 | 1 2 3``); ``"circular"`` wraps around
(``2 3 | 1 2 3``). Non-zero modes pad the input (``jnp.pad`` modes "reflect", "edge", "wrap",
differentiable) and run a VALID convolution. As PyTorch: reflect needs every pad < the input size
in its dimension, circular every pad <= it (``F.pad``: "Padding size should be less than the
corresponding input dimension", "Padding value causes wrapping around more than once").
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcnn import _checks, shapes
from fcnn.channels import add_channels
from fcnn.dtypes import acc_dtype
from fcnn.ops import auto as _auto
from fcnn.ops import onednn as _onednn
from fcnn.ops import winograd as _winograd
from fcnn.ops.conv_vjp import (concatenate_bits, conv_backward_input, conv_backward_input_col2im,
                                conv_backward_kernel_patches, fusion_barrier, if_finite, lax_conv, make_custom_vjp_conv,
                                pad_zeros, tap_windows)

__all__ = ["conv", "conv1d", "conv3d", "CONV_IMPLS", "RESTRICTED_IMPLS", "conv_impls_for", "CONV_CHOICES", "PADDING_MODES", "check_precision"]

CONV_IMPLS = ("lax", "reference", "im2col", "fft", "custom_vjp", "col2im", "taps", "im2col_vjp")
# Implementations of one kind of convolution only, each with the rule of what it computes.
RESTRICTED_IMPLS = {"winograd": _winograd.supports, "onednn": _onednn.supports}
_REFUSALS = {"winograd": _winograd.refusal, "onednn": _onednn.refusal}  # why one does not compute a conv
# "auto" resolves to one of CONV_IMPLS per platform and shape (fcnn/ops/auto.py, measured).
CONV_CHOICES = CONV_IMPLS + tuple(RESTRICTED_IMPLS) + ("auto",)
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_JNP_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


# ----------------------------------------------------------------------------- arguments
def check_precision(precision):
    """None, a ``lax.Precision``, its name ("highest", "float32", ...) or a pair of those."""
    if precision is None or isinstance(precision, lax.Precision):
        return precision
    if isinstance(precision, str):
        try:
            return lax.Precision(precision)
        except ValueError:
            pass
    elif isinstance(precision, tuple) and len(precision) == 2:
        return tuple(check_precision(p) for p in precision)
    raise ValueError(f"precision must be None, a lax.Precision, its name (e.g. 'highest') or a pair, got {precision!r}")


def check_padding_mode(padding_mode, pads, in_sizes: Sequence[int]) -> str:
    """``padding_mode`` is one of ``PADDING_MODES`` and its pads fit the input (PyTorch's rules)."""
    mode = _checks.choice(padding_mode, PADDING_MODES, "padding_mode")
    if mode in ("reflect", "circular"):
        too_big = [max(p) >= s if mode == "reflect" else max(p) > s for p, s in zip(pads, in_sizes)]
        if any(too_big):
            rule = "< the input size (reflection excludes the edge)" if mode == "reflect" else \
                "<= the input size (it wraps around at most once)"
            raise ValueError(f"padding_mode={mode!r} needs every pad {rule} in its dimension, as PyTorch; "
                             f"got pads {tuple(pads)} for input sizes {tuple(in_sizes)}")
    return mode


def _geometry(x, w, b, stride, padding, dilation, groups, layout, impl, padding_mode):
    """Validate every argument (before any computation); return the normalised geometry."""
    _checks.choice(impl, CONV_CHOICES, "impl")
    x_shape, w_shape = _checks.array_shape(x, "x"), _checks.array_shape(w, "w")
    shapes.conv_output_shape(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation,
                             groups=groups, layout=layout)
    layout = shapes.normalize_layout(layout, len(x_shape))
    rank = shapes.layout_rank(layout)
    stride = shapes.normalize_tuple(stride, "stride", rank)
    dilation = shapes.normalize_tuple(dilation, "dilation", rank)
    kernel, _, cout = shapes.kernel_parts(w_shape, layout)
    in_sizes = shapes.spatial_dims(x_shape, layout)
    pads = shapes.normalize_padding(padding, in_sizes, kernel, stride, dilation)
    mode = check_padding_mode(padding_mode, pads, in_sizes)
    if impl in RESTRICTED_IMPLS and impl not in conv_impls_for(kernel, stride, dilation):
        raise ValueError(_REFUSALS[impl](kernel, stride, dilation))
    b_shape = None if b is None else _checks.array_shape(b, "b")
    if b_shape is not None and b_shape != (cout,):
        raise ValueError(f"b must have shape (cout,) = ({cout},) to match w, got {b_shape}")
    args = (x, w) if b is None else (x, w, b)
    dtype = jnp.result_type(*args)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"x and w must have a floating dtype (float32, float64, bfloat16, ...), got {dtype}")
    return layout, stride, pads, dilation, mode, dtype


def _to_channels_last(x, w, layout):
    """Channels-first x and OI* kernel -> channels-last x and *IO kernel (identity if channels-last)."""
    if shapes.is_channels_last(layout):
        return x, w
    r = x.ndim
    return jnp.transpose(x, (0, *range(2, r), 1)), jnp.transpose(w, (*range(2, r), 1, 0))


def _from_channels_last(z, layout):
    return z if shapes.is_channels_last(layout) else jnp.transpose(z, (0, z.ndim - 1, *range(1, z.ndim - 1)))


def _reads_real_pixels(t, in_sizes, out, stride, pads, dilation):
    """Static mask ``(*out,)`` of the outputs whose tap ``t`` reads a real pixel, not padding; None if
    all do. The reference skips the pads' terms as lax does, so a non-finite weight never meets a
    zero pad (0 * NaN = NaN): the non-finite table in fcnn/ops/conv.py."""
    axes = [((np.arange(o) * s + ti * d - lo >= 0) & (np.arange(o) * s + ti * d - lo < size))
            for ti, size, o, s, (lo, _), d in zip(t, in_sizes, out, stride, pads, dilation)]
    if all(a.all() for a in axes):
        return None
    return functools.reduce(np.logical_and.outer, axes) if len(axes) > 1 else axes[0]


# ----------------------------------------------------------------------------- implementations (channels-last)
def _conv_reference(x, w, stride, pads, dilation, groups, precision):
    """The formula: accumulate ``tap(t) . w[t]`` over the kernel taps, group by group."""
    *kernel, cg, cout = w.shape
    n, dg = x.shape[0], cout // groups
    acc = acc_dtype(x.dtype)
    # bf16/f16 inputs go up to f32 once here, not once per tap (XLA:CPU materialised 25 converted
    # taps: LeNet-5 bf16 step, docs/perf_notes.md); exact, since a product of two bf16 (or f16)
    # values is exact in f32, as with preferred_element_type=f32
    xp = pad_zeros(x, pads).astype(acc)
    out = shapes.conv_output_hw(x.shape[1:-1], kernel, stride, pads, dilation)
    wg = jnp.reshape(w, (*kernel, cg, groups, dg)).astype(acc)  # (*k, cg, g, dg)
    z = jnp.zeros((n, *out, groups, dg), acc)
    for t, tap in tap_windows(xp, kernel, out, stride, dilation):
        tap = jnp.reshape(tap, (n, *out, groups, cg))  # (n, *out, g, cg)
        term = jnp.einsum("n...kc,cko->n...ko", tap, wg[t], precision=precision, preferred_element_type=acc)
        real = _reads_real_pixels(t, x.shape[1:-1], out, stride, pads, dilation)
        z = z + (term if real is None else jnp.where(real[None, ..., None, None], term, 0))
    return jnp.reshape(z, (n, *out, cout)).astype(x.dtype)  # (n, *out, cout)


def _conv_im2col(x, w, stride, pads, dilation, groups, precision):
    """Patch matrix ``(g, n*prod(out), prod(K)*cg)`` times kernel matrix ``(g, prod(K)*cg, dg)``."""
    *kernel, cg, cout = w.shape
    n, dg, taps = x.shape[0], cout // groups, math.prod(kernel)
    xp = pad_zeros(x, pads)
    out = shapes.conv_output_hw(x.shape[1:-1], kernel, stride, pads, dilation)
    m = n * math.prod(out)
    cols = concatenate_bits([t for _, t in tap_windows(xp, kernel, out, stride, dilation)], axis=-1)
    # cols: (n, *out, taps*cin), taps in row-major order like w's kernel axes
    if groups == 1:  # one plain matrix product: the grouped einsum's unit batch axis cost XLA:CPU
        # transposes and kept the product off YNNPACK's AMX matmul (VGG 32x32 64->128 bf16 forward
        # 31.9 against 16.0 ms, docs/perf_notes.md item 57)
        z = lax.dot(jnp.reshape(cols, (m, taps * cg)), jnp.reshape(w, (taps * cg, cout)), precision=precision,
                    preferred_element_type=acc_dtype(x.dtype))
        return jnp.reshape(z, (n, *out, cout)).astype(x.dtype)
    cols = jnp.reshape(cols, (m, taps, groups, cg))  # (n*prod(out), taps, g, cg)
    cols = jnp.transpose(cols, (2, 0, 1, 3))  # (g, m, taps, cg)
    cols = jnp.reshape(cols, (groups, m, taps * cg))  # (g, m, taps*cg)
    wm = jnp.reshape(w, (taps * cg, groups, dg))  # (taps*cg, g, dg)
    z = jnp.einsum("gmt,tgo->mgo", cols, wm, precision=precision,
                   preferred_element_type=acc_dtype(x.dtype))  # (m, g, dg)
    return jnp.reshape(z, (n, *out, cout)).astype(x.dtype)  # (n, *out, cout)


def _conv_im2col_finite_kernel(x, w, stride, pads, dilation, groups, precision):
    """im2col's forward, or lax's where they differ: with padding and a non-finite kernel (im2col
    multiplies the zero pads, 0 * NaN = NaN; lax skips them)."""
    geo = (stride, pads, dilation, groups, precision)
    if all(lo == hi == 0 for lo, hi in pads):
        return _conv_im2col(x, w, *geo)
    return if_finite((w,), lambda x, w: _conv_im2col(x, w, *geo), lambda x, w: lax_conv(x, w, *geo), x, w)


def _conv_backward_input_patches(dz, w, in_sizes, *, stride, pads, dilation, groups, precision=None):
    """``dX`` as im2col's convolution of the stride-dilated dZ with the rotated kernel (a patch matrix
    times a kernel matrix, like the forward); col2im's ``dX`` for a non-finite kernel, which has lax's
    non-finite pattern (the full convolution multiplies dZ's zero padding)."""
    geo = dict(in_sizes=in_sizes, stride=stride, pads=pads, dilation=dilation, groups=groups, precision=precision)
    fast = functools.partial(conv_backward_input, conv=_conv_im2col, **geo)
    safe = functools.partial(conv_backward_input_col2im, **geo)
    return if_finite((w,), fast, safe, dz, w)


def _conv_fft(x, w, stride, pads, dilation, groups, precision):
    """Correlation theorem on the padded input; exact up to FFT rounding.

    ``c[n, a, o] = sum_{u, c} xp[n, a+u, c] * kd[u, c, o]`` (``kd``: the kernel with ``d-1`` zeros
    inserted between taps) is, for ``a <= Sp - F_eff``, the circular correlation over the padded
    size ``Sp`` (no wrap-around there), i.e. ``irfftn(rfftn(xp) * conj(rfftn(kd)))`` summed over
    channels per group. ``z = c[:, ::s]`` restricted to ``out``.
    """
    *kernel, cg, cout = w.shape
    rank, n, dg = len(kernel), x.shape[0], cout // groups
    out = shapes.conv_output_hw(x.shape[1:-1], kernel, stride, pads, dilation)
    real = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
    xp = pad_zeros(x.astype(real), pads)  # (n, *sp, cin)
    sp = xp.shape[1:-1]
    freq = (*sp[:-1], sp[-1] // 2 + 1)  # rfftn halves the last axis
    zero = jnp.zeros((), real)
    kd = lax.pad(w.astype(real), zero, tuple((0, 0, d - 1) for d in dilation) + ((0, 0, 0),) * 2)
    # kd: (*F_eff, cg, cout), zero-padded at the end to sp by rfftn's s=
    xf = jnp.fft.rfftn(xp, axes=tuple(range(1, rank + 1)))  # (n, *freq, cin)
    kf = jnp.fft.rfftn(kd, s=sp, axes=tuple(range(rank)))  # (*freq, cg, cout)
    xf = jnp.reshape(xf, (n, *freq, groups, cg))  # (n, *freq, g, cg)
    kf = jnp.reshape(kf, (*freq, cg, groups, dg))  # (*freq, cg, g, dg)
    zf = jnp.einsum("n...kc,...cko->n...ko", xf, jnp.conj(kf), precision=precision)  # (n, *freq, g, dg)
    zf = jnp.reshape(zf, (n, *freq, cout))  # (n, *freq, cout)
    c = jnp.fft.irfftn(zf, s=sp, axes=tuple(range(1, rank + 1)))  # (n, *sp, cout)
    limit = [(out[a] - 1) * stride[a] + 1 for a in range(rank)]
    z = lax.slice(c, (0,) * (rank + 2), (n, *limit, cout), (1, *stride, 1))
    return z.astype(x.dtype)  # (n, *out, cout)


def _conv_taps_forward(x, w, stride, pads, dilation, groups, precision):
    """The reference forward, materialised (``fusion_barrier``): XLA:CPU otherwise re-runs the tap
    loop inside each consumer (activation, max-pool forward and backward). Materialised in the
    accumulation dtype, then cast: the same values as the reference's own cast, and for bf16 the
    LeNet-5 step ran 6.4 instead of 8.0 ms (XLA:CPU laid the tap loop out channel-major around a
    bf16 barrier; docs/perf_notes.md item 56)."""
    acc = acc_dtype(x.dtype)
    z = _conv_reference(x.astype(acc), w.astype(acc), stride, pads, dilation, groups, precision)
    return fusion_barrier(z).astype(x.dtype)


_CUSTOM_VJP = {  # f(x, w, b, stride, pads, dilation, groups, precision), channels-last, the bias their own
    "custom_vjp": make_custom_vjp_conv(),
    "col2im": make_custom_vjp_conv(backward_input=conv_backward_input_col2im),
    "taps": make_custom_vjp_conv(backward_input=conv_backward_input_col2im, forward=_conv_taps_forward),
    "im2col_vjp": make_custom_vjp_conv(forward=_conv_im2col_finite_kernel, backward_input=_conv_backward_input_patches,
                                       backward_kernel=conv_backward_kernel_patches),
    "onednn": _onednn.conv,  # the bias inside oneDNN's forward and kernel-gradient calls
}

_IMPLS = {  # channels-last bodies; "lax" runs natively in either layout inside conv
    "reference": _conv_reference,
    "im2col": _conv_im2col,
    "fft": _conv_fft,
    "winograd": _winograd.conv2d_winograd,
}


def conv_impls_for(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> tuple:
    """Every implementation that computes this convolution: ``CONV_IMPLS`` and the restricted ones
    whose rule admits it (``winograd``: 2-D 3x3, stride 1, dilation 1; ``onednn``: 2-D, where oneDNN
    is available)."""
    return CONV_IMPLS + tuple(name for name, ok in RESTRICTED_IMPLS.items() if ok(kernel, stride, dilation))


# ----------------------------------------------------------------------------- public entry points
def conv(x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1, layout=None, impl="lax",
         padding_mode="zeros", precision=None):
    """Convolution ``z = w * x + b`` in 1, 2 or 3 spatial dimensions (cross-correlation; module docstring).

    Args:
      x: (n, *spatial, cin) channels-last or (n, cin, *spatial) channels-first, 1-3 spatial dims;
        float32, float64 or bfloat16.
      w: (*kernel, cin/groups, cout) for channels-last, (cout, cin/groups, *kernel) for channels-first.
      b: (cout,) bias or None.
      stride: int or one int per spatial dimension, >= 1.
      padding: "VALID", "SAME" (odd extra pad at the end), int, one int or one (lo, hi) pair per dim.
      dilation: kernel (rhs) dilation, int or one per spatial dimension, >= 1.
      groups: feature groups; divides cin and cout (groups = cin: depthwise).
      layout: None (channels-last for x's rank: NWC, NHWC, NDHWC) or one of ``shapes.ALL_LAYOUTS``
        of x's rank (NCW, NCHW, NCDHW: channels-first).
      impl: one of ``CONV_IMPLS`` (every one supports every option), ``"winograd"`` (2-D 3x3 stride 1
        dilation 1 only), ``"onednn"`` (2-D, where oneDNN is available; it hands float64, float16 and
        grouped convolutions to lax; ``conv_impls_for`` says which apply) or ``"auto"``: one per
        platform and shape from measurements (``fcnn.ops.auto.select_conv_impl``).
      padding_mode: "zeros", "reflect", "replicate" or "circular" (PyTorch's), what the pads hold.
      precision: None, a ``lax.Precision`` or its name ("highest"), passed to every conv/dot/einsum.
    Returns:
      z: (n, *out, cout) or (n, cout, *out) in ``layout``, the dtype of ``x``/``w`` (promoted), with
      ``out`` from ``shapes.conv_output_shape``.
      An empty x or w (no examples, no input or output channels) is computed by lax, whatever
      ``impl`` says: z is empty, or b alone (each output a sum of no products); gradients are lax's.
    Raises:
      ValueError/TypeError naming the argument, before any computation.
    """
    layout, stride, pads, dilation, mode, dtype = _geometry(x, w, b, stride, padding, dilation, groups, layout,
                                                            impl, padding_mode)
    precision = check_precision(precision)
    if 0 in jnp.shape(x) or 0 in jnp.shape(w):
        impl = "lax"  # an empty sum: every implementation's value, which several cannot form (module docstring)
    if impl == "auto":
        impl = _auto.select_conv_impl(jax.default_backend(), jnp.shape(x), jnp.shape(w), stride=stride,
                                      padding=pads, dilation=dilation, groups=groups, layout=layout, dtype=dtype)
    x = jnp.asarray(x, dtype)
    w = jnp.asarray(w, dtype)
    b = None if b is None else jnp.asarray(b, dtype)
    if mode != "zeros":  # pad with the mode's values, then a VALID convolution
        widths = shapes.make_shape((0, 0), pads, (0, 0), layout)
        x, pads = jnp.pad(x, widths, mode=_JNP_PAD_MODE[mode]), ((0, 0),) * len(pads)
    if impl == "lax":
        dn = (layout, shapes.kernel_layout(layout), layout)
        z = lax.conv_general_dilated(x, w, stride, pads, rhs_dilation=dilation, feature_group_count=groups,
                                     dimension_numbers=dn, precision=precision)
        if b is None:
            return z
        return add_channels(z, b, -1 if shapes.is_channels_last(layout) else 1)
    xc, wc = _to_channels_last(x, w, layout)
    if impl in _CUSTOM_VJP:
        z = _CUSTOM_VJP[impl](xc, wc, b, stride, pads, dilation, groups, precision)  # (n, *out, cout)
    else:
        z = _IMPLS[impl](xc, wc, stride, pads, dilation, groups, precision)  # (n, *out, cout)
        z = z if b is None else add_channels(z, b)
    return _from_channels_last(z, layout)


def ranked_layout(x, layout, rank: int, name: str) -> str:
    """The layout of a rank-specific entry point (``conv1d``: 1): None means channels-last; x must
    have that rank."""
    layout = shapes.LAYOUTS_BY_RANK[rank][0] if layout is None else \
        _checks.choice(layout, shapes.LAYOUTS_BY_RANK[rank], "layout")
    try:
        shapes.check_rank(_checks.array_shape(x, "x"), layout)
    except ValueError as e:
        raise ValueError(f"{e} ({name} takes {rank} spatial dimension{'s' if rank > 1 else ''})") from None
    return layout


def conv1d(x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1, layout=None, impl="lax",
           padding_mode="zeros", precision=None):
    """``conv`` over one spatial dimension: x (n, w, cin) NWC or (n, cin, w) NCW; w (k, cin/g, cout) WIO
    or (cout, cin/g, k) OIW. Same arguments as ``conv``; x must have rank 3."""
    return conv(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                layout=ranked_layout(x, layout, 1, "conv1d"), impl=impl, padding_mode=padding_mode,
                precision=precision)


def conv3d(x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1, layout=None, impl="lax",
           padding_mode="zeros", precision=None):
    """``conv`` over three spatial dimensions: x (n, d, h, w, cin) NDHWC or (n, cin, d, h, w) NCDHW;
    w (kd, kh, kw, cin/g, cout) DHWIO or (cout, cin/g, kd, kh, kw) OIDHW. Same arguments as ``conv``;
    x must have rank 5."""
    return conv(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                layout=ranked_layout(x, layout, 3, "conv3d"), impl=impl, padding_mode=padding_mode,
                precision=precision)
