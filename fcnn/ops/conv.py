"""2-D convolution (cross-correlation, as in every deep-learning library) in eight implementations.

The spec, per output pixel (NHWC input, HWIO kernel, ``g`` groups of ``cg = C_in/g`` input and
``dg = C_out/g`` output channels; ``xp`` is ``x`` zero-padded by ``((top, bottom), (left, right))``)::

    z[n, p, q, k*dg + o] = b[k*dg + o] + sum_{i < kh, j < kw, c < cg}
                           xp[n, p*sh + i*dh, q*sw + j*dw, k*cg + c] * w[i, j, c, k*dg + o]

for ``0 <= p < oh``, ``0 <= q < ow`` with ``oh = floor((H + P_h - F_eff) / sh) + 1``,
``F_eff = dh*(kh-1) + 1`` (``shapes.conv_output_shape``). Convolution over volume: each kernel
spans all ``cg`` channels of its group and produces one output channel; the output depth is the
number of kernels. ``dilation`` is the *kernel* (rhs) dilation.

``conv2d`` is ``conv`` (``fcnn/ops/conv_nd.py``) in two spatial dimensions, with the 2-D names
(``layout="NHWC"`` by default, rank 4 required). Its implementations, selected by ``impl=``
(``CONV_IMPLS``: lax, reference, im2col, fft, custom_vjp, col2im, taps, im2col_vjp), are conv_nd's, one
rank-generic code for every rank; the hand-derived backward pieces are ``fcnn/ops/conv_vjp.py``'s,
exported here under their 2-D names (``conv2d_backward_input`` ...) for the mutants and tests.
Every implementation supports every option (stride, padding, padding_mode, dilation, groups,
both layouts, precision).

Non-finite values (tests/test_conv_nd.py::test_nonfinite_table measures this; one NaN or inf
pixel ``x[n, i, j, c]`` or kernel tap ``w[t, c, o]``, a finite output gradient). dx for a bad
tap: lax, col2im, reference, im2col, taps and im2col_vjp make the x of channel c that tap t meets
non-finite; custom_vjp and fft every x of channel c (their dx multiplies dZ's explicit zero padding).
im2col_vjp's products would multiply zero pads too; for a kernel with any non-finite value it
computes lax's forward and col2im's dx instead (one ``lax.cond`` on ``all(isfinite(w))``):

=============  ============================  ===============================  ================  ==================
non-finite     impl                          z                                dx                dw
=============  ============================  ===============================  ================  ==================
NaN in x       lax, reference, im2col,       NaN at the outputs whose window  finite (dx does   NaN at the taps of
               custom_vjp, col2im, taps,     holds it, every output channel   not depend on x)  channel c that met
               im2col_vjp                    of c's group (0 * NaN = NaN)                       it, c's group
NaN in x       fft                           NaN at EVERY output of example   finite            as above
                                             n in c's group
inf in x       lax ... im2col_vjp (above)    +-inf (the weight's sign) at     finite            +-inf at those taps
                                             those outputs; NaN where the                       (NaN where +inf and
                                             weight is 0 or +inf meets -inf                     -inf meet)
inf in x       fft                           NaN at every output of example   finite            NaN at those taps
                                             n in c's group
NaN/inf in w   lax, custom_vjp, col2im,      NaN/+-inf at every output o      see below         finite
(tap t, input  reference, taps (skip the     whose tap t reads a real pixel
c, output o)   pads' terms), im2col_vjp
NaN/inf in w   im2col, fft                   also NaN where tap t reads       see below         finite
               (explicit zero pads)          padding (0 * NaN); fft NaN only
=============  ============================  ===============================  ================  ==================

fft cannot match the others in general: each DFT coefficient sums every input position, and each
output sums every coefficient, so one non-finite value reaches every output of its example and
group (inf - inf and inf * 0 inside the transforms give NaN). Matching would need the non-finite
positions convolved directly, a second convolution. ``impl="auto"`` never selects fft; for a
non-finite x every implementation it selects has lax's pattern (tests/test_auto.py checks its whole
table). A non-finite *kernel* with padding separates the implementations that multiply explicit
zero pads (im2col, fft; custom_vjp's dx) from those that skip the pads' terms (lax, col2im, and the
reference and taps, whose tap loop masks the outputs where a tap reads padding): every
implementation auto selects (lax, taps, col2im, im2col_vjp, winograd, and onednn through its guard:
fcnn/ops/onednn.py) skips them, so auto keeps lax's pattern for non-finite x and w.

Padding: anything ``shapes.normalize_padding`` accepts; "SAME" follows XLA (odd extra pad at the
bottom/right). PyTorch's ``padding="same"`` also puts it at the end (pytorch/pytorch#45667) but
refuses stride > 1. ``padding_mode``: "zeros", "reflect", "replicate", "circular" (conv_nd).
"""
from __future__ import annotations

from fcnn import shapes
from fcnn.ops.conv_nd import _CUSTOM_VJP, _IMPLS, CONV_CHOICES, CONV_IMPLS, PADDING_MODES, conv, ranked_layout
from fcnn.ops.conv_nd import check_precision as _check_precision
from fcnn.ops.conv_vjp import conv_backward_bias as conv2d_backward_bias
from fcnn.ops.conv_vjp import conv_backward_input as conv2d_backward_input
from fcnn.ops.conv_vjp import conv_backward_input_col2im as conv2d_backward_input_col2im
from fcnn.ops.conv_vjp import conv_backward_kernel as conv2d_backward_kernel
from fcnn.ops.conv_vjp import conv_backward_kernel_patches as conv2d_backward_kernel_patches
from fcnn.ops.conv_vjp import fusion_barrier as _fusion_barrier
from fcnn.ops.conv_vjp import make_custom_vjp_conv as make_custom_vjp_conv2d

__all__ = [
    "CONV_IMPLS",
    "conv2d",
    "conv2d_backward_input",
    "conv2d_backward_input_col2im",
    "conv2d_backward_kernel",
    "conv2d_backward_kernel_patches",
    "conv2d_backward_bias",
    "make_custom_vjp_conv2d",
]


def conv2d(x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1, layout="NHWC", impl="lax",
           precision=None, padding_mode="zeros"):
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
      impl: one of ``CONV_IMPLS``; all support every option above. ``"winograd"``: 3x3 stride-1
        dilation-1 kernels only; ``"onednn"``: where oneDNN is available (``fcnn/ops/onednn.py``;
        ``ops.conv_impls_for`` says which apply). ``"auto"`` picks one per
        platform and shape from measurements (``fcnn.ops.auto.select_conv_impl``).
      precision: None, a ``lax.Precision`` or its name ("highest"), passed to every conv/dot/einsum.
      padding_mode: "zeros", "reflect", "replicate" or "circular" (PyTorch's): what the pads hold.
    Returns:
      z: (n, oh, ow, cout) NHWC or (n, cout, oh, ow) NCHW, the dtype of ``x``/``w`` (promoted), with
      ``oh, ow`` from ``shapes.conv_output_shape``.
    Raises:
      ValueError/TypeError naming the argument, before any computation.
    """
    layout = shapes.normalize_layout(layout)  # the 2-D layouts: "layout must be one of NHWC, NCHW"
    return conv(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                layout=ranked_layout(x, layout, 2, "conv2d"), impl=impl, padding_mode=padding_mode,
                precision=precision)
