"""Transposed convolution in 1, 2 or 3 spatial dimensions: the adjoint of convolution w.r.t. its input.

DEFINITION. ``conv(x, w)`` maps ``cin`` to ``cout`` channels with the kernel ``w`` in
``shapes.kernel_layout(layout)``; ``conv_transpose(y, w)`` takes the SAME array ``w`` and maps ``cout``
back to ``cin`` channels, so that for every ``x`` and ``y``

    <conv(x, w), y> == <x, conv_transpose(y, w)>      (same stride, dilation, groups, conv pads)

Kernel layout, plainly: channels-last ``w`` is ``(*k, cin/groups, cout)`` (WIO/HWIO/DHWIO) and
channels-first ``(cout, cin/groups, *k)`` (OIW/OIHW/OIDHW): the kernel of the convolution being
transposed, whose leading dimension is the transposed conv's INPUT channels. That is exactly PyTorch's
``ConvTranspose{1,2,3}d`` weight ``(in_channels, out_channels/groups, *k)``
(https://pytorch.org/docs/stable/generated/torch.nn.ConvTranspose2d.html: "weight ... of shape
(in_channels, out_channels/groups, kernel_size[0], kernel_size[1])"), so a PyTorch weight works as is
with ``layout="NCHW"``. ``lax.conv_transpose`` without ``transpose_kernel=True`` is NOT this op: it
slides the un-rotated kernel (jax #14337).

The spec (scatter form, per spatial dimension; ``s`` stride, ``d`` dilation, ``k`` taps,
``F_eff = d*(k-1) + 1``, conv pads ``(lo, hi)``, ``op`` output_padding)::

    full[i*s + t*d, group g, c] += sum_o y[i, g*dg + o] * w[t, c, g*dg + o]    for every i < in, t < k
    out[j] = full[j + lo]    for 0 <= j < out = (in - 1)*s - lo - hi + F_eff + op    (zero past full's end)

Every input pixel stamps its value times the kernel into the output, ``s`` pixels after its neighbour;
the conv pads are cropped; ``output_padding`` extends the END (rows the strided conv never read).

Padding (``shapes.conv_transpose_padding``): PyTorch's int / per-dim ``padding`` (both sides) or
explicit ``(lo, hi)`` pairs, plus ``output_padding`` (``0 <= op < max(stride, dilation)``, PyTorch's
rule); or lax/Flax's strings, which fix the output padding themselves (``output_padding`` must be 0).
Measured with ``lax.conv_transpose(..., transpose_kernel=True)`` in jax 0.10.2 (and equal to it to
rounding, tested): ``"SAME"`` gives ``in*s``, ``"VALID"`` gives ``in*s + max(F_eff - s, 0)``. jax #17618
shows VALID is not ``[(0, 0)]`` there; flax #4593 / #4990 and jax #32268 document how lax's own explicit
pads differ from PyTorch's (lax pads the dilated input; here, as in PyTorch, pads crop the output).
The same outputs in PyTorch's terms, per dimension, with ``e = F_eff - s``:

    ==========  ======================  ==================================  =========================
    string      output                  PyTorch padding, output_padding     note
    ==========  ======================  ==================================  =========================
    "VALID"     (in-1)*s + F_eff        0, 0                                when e >= 0
    "VALID"     in*s                    0, s - F_eff                        when e < 0 (zeros at end)
    "SAME"      in*s                    e/2, 0                              e >= 0 even: identical
    "SAME"      in*s                    0, s - F_eff                        e < 0: identical
    "SAME"      in*s                    ((e-1)/2, (e+1)/2) pair here;       e odd: PyTorch has no
                                        PyTorch (e+1)/2, 1 is 1 px shifted  asymmetric pad
    ==========  ======================  ==================================  =========================

e.g. k=4, s=2 (e=2): SAME = padding 1; k=3, s=2 (e=1): SAME = pads (0, 1), while PyTorch's
``padding=1, output_padding=1`` (its docs' 6 -> 12 example) gives the same size one pixel earlier.

Implementations (``impl=``; identical arguments, agree to rounding, tests/test_conv_transpose.py):

* ``"lax"``: ``lax.conv_general_dilated`` of ``y`` dilated by the stride (lhs dilation) with the
  kernel rotated 180 degrees and in/out channels swapped per group, pads ``F_eff - 1 - lo`` and
  ``F_eff - 1 - hi + op``.
* ``"reference"``: the scatter above, one strided ``.at[].add`` per kernel tap (the spec).
* ``"conv_vjp"``: ``jax.vjp`` of ``fcnn.ops.conv`` (linear, so its pullback is the adjoint).
* ``"custom_vjp"``: forward as ``lax``; backward hand-derived: ``dy = conv(dz, w)`` (a forward
  convolution, pads ``(lo, hi - op)``) and ``dw`` the correlation of ``dz`` with ``y`` (the conv's
  kernel gradient with ``dz`` as its input and ``y`` as its output gradient), ``db = sum(dz)``.

All work channels-last inside (channels-first is transposed in and out); float32, float64, bfloat16
(reference accumulates bfloat16 in float32).
"""
from __future__ import annotations

import functools
import itertools
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from fcnn import _checks, shapes
from fcnn.channels import add_channels, channel_sum
from fcnn.dtypes import acc_dtype
from fcnn.ops import auto as _auto
from fcnn.ops.conv_nd import check_precision, conv

__all__ = ["CONV_TRANSPOSE_IMPLS", "CONV_TRANSPOSE_CHOICES", "conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]

CONV_TRANSPOSE_IMPLS = ("lax", "reference", "conv_vjp", "custom_vjp")
# "auto" resolves to one of CONV_TRANSPOSE_IMPLS per platform and shape (fcnn/ops/auto.py, measured).
CONV_TRANSPOSE_CHOICES = CONV_TRANSPOSE_IMPLS + ("auto",)


class _Geometry(NamedTuple):
    """Normalised arguments, one entry per spatial dimension (hashable: a custom_vjp static argument)."""
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    pads: Tuple[Tuple[int, int], ...]  # the conv pads (lo, hi): cropped from the full output
    output_padding: Tuple[int, ...]
    groups: int


def _dimension_numbers(rank: int):
    sp = shapes.LAYOUTS_BY_RANK[rank][0][1:-1]  # "W", "HW", "DHW"
    return ("N" + sp + "C", sp + "IO", "N" + sp + "C")


def _geometry(x, w, b, stride, padding, output_padding, dilation, groups, layout, impl):
    """Validate every argument before any computation; return (layout, geometry, dtype)."""
    _checks.choice(impl, CONV_TRANSPOSE_CHOICES, "impl")
    x_shape, w_shape = _checks.array_shape(x, "x"), _checks.array_shape(w, "w")
    out_shape = shapes.conv_transpose_output_shape(x_shape, w_shape, stride=stride, padding=padding,
                                                   output_padding=output_padding, dilation=dilation,
                                                   groups=groups, layout=layout)
    layout = shapes.normalize_layout(layout, len(x_shape))
    rank = shapes.layout_rank(layout)
    stride = shapes.normalize_tuple(stride, "stride", rank)
    dilation = shapes.normalize_tuple(dilation, "dilation", rank)
    window = shapes.kernel_parts(w_shape, layout)[0]
    pads, op = shapes.conv_transpose_padding(padding, output_padding, shapes.spatial_dims(x_shape, layout), window,
                                             stride, dilation)
    cin = shapes.channel_dim(out_shape, layout)
    b_shape = None if b is None else _checks.array_shape(b, "b")
    if b_shape is not None and b_shape != (cin,):
        raise ValueError(f"b must have shape (cin,) = ({cin},): one bias per output channel of conv_transpose, "
                         f"got {b_shape}")
    dtype = jnp.result_type(*((x, w) if b is None else (x, w, b)))
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"x and w must have a floating dtype (float32, float64, bfloat16, ...), got {dtype}")
    return layout, _Geometry(stride, dilation, pads, op, groups), dtype


def _to_channels_last(x, w, layout):
    """(n, c, *sp) / (cout, cg, *k) -> (n, *sp, c) / (*k, cg, cout); identity for channels-last."""
    if shapes.is_channels_last(layout):
        return x, w
    r = x.ndim - 2
    return jnp.moveaxis(x, 1, -1), jnp.transpose(w, (*range(2, r + 2), 1, 0))


# ----------------------------------------------------------------------------- implementations (channels-last)
def _rotated_kernel(w, groups: int):
    """(*k, cg, g*dg) -> (*k, dg, g*cg): every spatial axis reversed (180°), in/out swapped per group."""
    *k, cg, cout = w.shape
    r, dg = len(k), cout // groups
    wt = jnp.reshape(w, (*k, cg, groups, dg))  # (*k, cg, g, dg)
    wt = jnp.transpose(wt, (*range(r), r + 2, r + 1, r))  # (*k, dg, g, cg)
    wt = jnp.reshape(wt, (*k, dg, groups * cg))  # (*k, dg, cin): output channel g*cg + c, as x's in conv
    return lax.rev(wt, tuple(range(r)))


def _ct_lax(x, w, g: _Geometry, precision):
    """Full correlation of the stride-dilated ``x`` with the rotated kernel, conv pads cropped."""
    window = w.shape[:-2]
    f_eff = [shapes.effective_size(k, d) for k, d in zip(window, g.dilation)]
    pads = [(f - 1 - lo, f - 1 - hi + op) for f, (lo, hi), op in zip(f_eff, g.pads, g.output_padding)]
    return lax.conv_general_dilated(x, _rotated_kernel(w, g.groups), (1,) * len(window), pads,
                                    lhs_dilation=g.stride, rhs_dilation=g.dilation, feature_group_count=g.groups,
                                    dimension_numbers=_dimension_numbers(len(window)), precision=precision)


def _ct_reference(x, w, g: _Geometry, precision):
    """The scatter: for each kernel tap ``t``, ``full[i*s + t*d] += y[i] . w[t]`` (per group), then crop."""
    n, *in_sizes, cout = x.shape
    *window, cg, _ = w.shape
    groups, dg = g.groups, cout // g.groups
    acc = acc_dtype(x.dtype)  # bfloat16 products accumulate in float32
    full_sizes = [(i - 1) * s + shapes.effective_size(k, d) for i, k, s, d in zip(in_sizes, window, g.stride, g.dilation)]
    xg = jnp.reshape(x.astype(acc), (n, *in_sizes, groups, dg))  # (n, *in, g, dg)
    wg = jnp.reshape(w.astype(acc), (*window, cg, groups, dg))  # (*k, cg, g, dg)
    full = jnp.zeros((n, *full_sizes, groups, cg), acc)  # (n, *full, g, cg)
    for tap in itertools.product(*(range(k) for k in window)):
        stamp = jnp.einsum("n...ko,cko->n...kc", xg, wg[tap], precision=precision,
                           preferred_element_type=acc)  # (n, *in, g, cg): every pixel's value times w[tap]
        where = tuple(slice(t * d, t * d + (i - 1) * s + 1, s)
                      for t, i, s, d in zip(tap, in_sizes, g.stride, g.dilation))
        full = full.at[(slice(None), *where)].add(stamp)
    full = jnp.reshape(full, (n, *full_sizes, groups * cg))  # (n, *full, cin)
    # out[j] = full[j + lo]: crop lo at the start; the end keeps full's rows up to out (zeros past it)
    config = ((0, 0, 0),) + tuple((-lo, op - hi, 0) for (lo, hi), op in zip(g.pads, g.output_padding)) + ((0, 0, 0),)
    return lax.pad(full, jnp.zeros((), acc), config).astype(x.dtype)  # (n, *out, cin)


def _conv_forward(z, w, g: _Geometry, in_sizes, precision):
    """The convolution this op transposes: (n, *out, cin) -> (n, *in, cout), pads ``(lo, hi - op)``.

    ``hi - op`` may be negative: the last rows are then cropped (lax pads), the rows the transposed
    output gained by ``output_padding``; the result has exactly ``in_sizes``."""
    pads = [(lo, hi - op) for (lo, hi), op in zip(g.pads, g.output_padding)]
    y = lax.conv_general_dilated(z, w, g.stride, pads, rhs_dilation=g.dilation, feature_group_count=g.groups,
                                 dimension_numbers=_dimension_numbers(len(in_sizes)), precision=precision)
    return y[(slice(None), *(slice(0, i) for i in in_sizes))]


def _ct_conv_vjp(x, w, g: _Geometry, precision):
    """``jax.vjp`` of ``fcnn.ops.conv`` (pads ``(lo, hi)``, output cut to ``x``'s sizes: with
    ``output_padding >= stride`` the conv has extra trailing outputs), pulled back at ``x``."""
    in_sizes = x.shape[1:-1]
    out_sizes = [shapes.conv_transpose_output_size(i, k, s, lo + hi, d, op) for i, k, s, (lo, hi), d, op in
                 zip(in_sizes, w.shape[:-2], g.stride, g.pads, g.dilation, g.output_padding)]

    def forward(z):  # (n, *out, cin) -> (n, *in, cout)
        y = conv(z, w, stride=g.stride, padding=g.pads, dilation=g.dilation, groups=g.groups, precision=precision)
        return y[(slice(None), *(slice(0, i) for i in in_sizes))]

    _, pullback = jax.vjp(forward, jnp.zeros((x.shape[0], *out_sizes, w.shape[-2] * g.groups), x.dtype))
    return pullback(x)[0]


def _kernel_gradient(dz, x, window, g: _Geometry, precision):
    """``dw[t, c, o] = sum_{n, i} dzp[n, i*s + t*d, c] x[n, i, o]``: the correlation of the output
    gradient (padded like the conv's input) with ``x``; stride and dilation swap roles, channels
    pair up per group (lax batch <- channels of dz, lax feature <- n, contracted)."""
    sp = shapes.LAYOUTS_BY_RANK[len(window)][0][1:-1]
    pads = [(lo, hi - op) for (lo, hi), op in zip(g.pads, g.output_padding)]
    return lax.conv_general_dilated(dz, x, window_strides=g.dilation, padding=pads, rhs_dilation=g.stride,
                                    batch_group_count=g.groups, precision=precision,
                                    dimension_numbers=("C" + sp + "N", "I" + sp + "O", sp + "NC"))  # (*k, cg, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _ct_custom(x, w, b, g: _Geometry, precision):
    z = _ct_lax(x, w, g, precision)
    return z if b is None else add_channels(z, b)


def _ct_custom_fwd(x, w, b, g, precision):
    return _ct_custom(x, w, b, g, precision), (x, w, b)


def _ct_custom_bwd(g, precision, res, dz):
    x, w, b = res
    dx = _conv_forward(dz, w, g, x.shape[1:-1], precision)  # input gradient: a forward convolution
    dw = _kernel_gradient(dz, x, w.shape[:-2], g, precision)  # kernel gradient: a correlation
    db = None if b is None else channel_sum(dz).astype(b.dtype)
    return dx.astype(x.dtype), dw.astype(w.dtype), db


_ct_custom.defvjp(_ct_custom_fwd, _ct_custom_bwd)

_IMPLS = {"lax": _ct_lax, "reference": _ct_reference, "conv_vjp": _ct_conv_vjp}


# ----------------------------------------------------------------------------- public entry points
def conv_transpose(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, layout=None,
                   impl="lax", precision=None):
    """Transposed convolution: the adjoint of ``conv(., w)`` w.r.t. its input (module docstring).

    Args:
      x: (n, *spatial, cout) channels-last (NWC/NHWC/NDHWC) or (n, cout, *spatial) channels-first;
        the rank (1-3 spatial dims) is taken from ``x``.
      w: the kernel of the convolution being transposed: (*k, cin/groups, cout) channels-last,
        (cout, cin/groups, *k) channels-first = PyTorch's ConvTranspose weight
        (in_channels, out_channels/groups, *k).
      b: (cin,) bias (one per output channel) or None.
      stride, dilation: int or one per dimension, >= 1.
      padding: PyTorch's int / one int per dimension, ``(lo, hi)`` pairs (the conv's pads: cropped
        from the output), or "SAME" (output in*s) / "VALID" as ``lax.conv_transpose``.
      output_padding: int or one per dimension, ``< max(stride, dilation)``, added at the end
        (0 with a string padding).
      groups: divides cin and cout. layout: None (channels-last) or any of ``shapes.ALL_LAYOUTS``.
      impl: one of ``CONV_TRANSPOSE_IMPLS`` or "auto" (one per platform and shape from measurements:
        ``fcnn.ops.auto.select_conv_transpose_impl``). precision: as ``ops.conv2d``.
    Returns:
      (n, *out, cin) / (n, cin, *out), ``out = (in-1)*s - lo - hi + d*(k-1) + output_padding + 1``.
    Raises:
      ValueError/TypeError naming the argument, before any computation.
    """
    layout, g, dtype = _geometry(x, w, b, stride, padding, output_padding, dilation, groups, layout, impl)
    precision = check_precision(precision)
    if impl == "auto":
        impl = _auto.select_conv_transpose_impl(jax.default_backend(), jnp.shape(x), jnp.shape(w), stride=g.stride,
                                                dilation=g.dilation, groups=g.groups, layout=layout)
    x, w = _to_channels_last(jnp.asarray(x, dtype), jnp.asarray(w, dtype), layout)
    b = None if b is None else jnp.asarray(b, dtype)
    if impl == "custom_vjp":
        z = _ct_custom(x, w, b, g, precision)
    else:
        z = _IMPLS[impl](x, w, g, precision)
        z = z if b is None else add_channels(z, b)
    return z if shapes.is_channels_last(layout) else jnp.moveaxis(z, -1, 1)


def _ranked(rank: int):
    """``conv_transpose`` that insists on ``rank`` spatial dimensions (the 1d/2d/3d names)."""
    def ranked(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, layout=None,
               impl="lax", precision=None):
        x_shape = _checks.array_shape(x, "x")
        if len(x_shape) != rank + 2:
            raise ValueError(f"x must have rank {rank + 2} (batch, {rank} spatial dims, channels) for "
                             f"conv_transpose{rank}d, got shape {x_shape}")
        return conv_transpose(x, w, b, stride=stride, padding=padding, output_padding=output_padding,
                              dilation=dilation, groups=groups, layout=layout, impl=impl, precision=precision)

    ranked.__name__ = ranked.__qualname__ = f"conv_transpose{rank}d"
    ranked.__doc__ = f"``conv_transpose`` for {rank} spatial dimension{'s' if rank > 1 else ''} (x of rank {rank + 2})."
    return ranked


conv_transpose1d = _ranked(1)
conv_transpose2d = _ranked(2)
conv_transpose3d = _ranked(3)
