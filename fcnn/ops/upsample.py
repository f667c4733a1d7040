"""Upsampling (interpolation) in 1, 2 or 3 spatial dimensions, and its adjoint as the gradient.

``upsample(x, scale, method=...)`` resizes every spatial dim to ``out = floor(in * scale)``
(``shapes.upsample_output_shape``). Every method is separable: one 1-D interpolation per axis, each
output cell ``j`` along an axis a weighted sum of at most two input cells::

    y[j] = w0[j] * x[i0[j]] + w1[j] * x[i1[j]]

with the indices and weights computed from the shapes alone (``axis_taps``), following PyTorch's
``F.interpolate(x, scale_factor=scale, mode=..., align_corners=...)`` (aten/src/ATen/native/UpSample.h,
``compute_scales_value``, ``area_pixel_compute_source_index``, ``nearest_idx``):

* ``"nearest"``: ``i0 = min(floor(j / scale), in - 1)`` (PyTorch's legacy "nearest", not
  "nearest-exact"): every output cell copies one input cell.
* ``"linear"`` (1-D), ``"bilinear"`` (2-D), ``"trilinear"`` (3-D): the source coordinate is

  - ``align_corners=False`` (half-pixel centres, the default): ``src = max((j + 0.5) / scale - 0.5, 0)``
  - ``align_corners=True``: ``src = j * (in - 1) / (out - 1)`` (0 when out == 1), the corner
    cells' centres aligned (``scale`` then only sets the output size, as in PyTorch),

  and ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, ``w1 = src - i0``, ``w0 = 1 - w1``.

PyTorch uses ``1 / scale`` as given (``recompute_scale_factor`` unset, its default); with
``recompute_scale_factor=True`` it uses ``in / out`` instead, which differs for scales where
``in * scale`` is not an integer. fcnn computes indices and weights in float64 NumPy (PyTorch: in
float for float32 inputs), so a source coordinate that float32 rounds across an integer may pick
another cell there. One more difference: where an axis keeps its size (``floor(in * scale) == in``,
e.g. 8 cells at scale 1.1) PyTorch 2.13's linear modes copy it, while fcnn interpolates by the
formula above (checked: ``F.interpolate(arange(8), scale_factor=1.1, mode="linear")`` gives 0..7,
fcnn 0, 0.864, 1.773, ...); its nearest mode is not uniform there either (2-D copies, 1-D and 3-D
do not).

The op is linear in ``x``: its gradient is the adjoint (transpose) ``upsample_adjoint``, written by
hand: every output cell ``j`` sends ``w0[j] * g[j]`` to input cell ``i0[j]`` and ``w1[j] * g[j]`` to
``i1[j]`` (per axis, in reverse axis order: a product with the axis's transposed interpolation
matrix when it is small, a segment sum otherwise; nearest with an integer scale ``s`` sums each
cell's ``s`` copies, and its forward is a repeat). ``upsample`` uses it as its custom VJP;
the tests check ``<up(x), y> == <x, up_adjoint(y)>`` and that it equals autodiff of the forward.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcnn import _checks, shapes
from fcnn.dtypes import acc_dtype
from fcnn.ops.pool_nd import from_channels_last, to_channels_last

UPSAMPLE_METHODS = ("nearest", "linear", "bilinear", "trilinear")
_METHOD_RANK = {"linear": 1, "bilinear": 2, "trilinear": 3}


def axis_taps(n_in: int, n_out: int, scale: float, method: str, align_corners: bool):
    """Indices and weights along one axis: ``(i0, i1, w0, w1)``, NumPy arrays of length ``n_out``
    (``i1``/``w1`` are None for "nearest"): output ``j`` = ``w0[j]*x[i0[j]] + w1[j]*x[i1[j]]``."""
    dst = np.arange(n_out, dtype=np.float64)
    if method == "nearest":
        return np.minimum(np.floor(dst / scale).astype(np.int64), n_in - 1), None, np.ones(n_out), None
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = np.maximum((dst + 0.5) / scale - 0.5, 0.0)  # half-pixel centres, clamped at 0 as PyTorch
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = src - i0
    return i0, np.minimum(i0 + 1, n_in - 1), 1.0 - w1, w1


def _weights(w, axis: int, ndim: int, dtype):
    """A per-output-cell weight vector shaped to broadcast along ``axis`` of an ``ndim`` array."""
    return jnp.asarray(np.reshape(w, (-1,) + (1,) * (ndim - axis - 1)), dtype)


# Below this many (out x in) entries an axis's adjoint is a product with its interpolation matrix
# (XLA runs it as a GEMM); above, a segment sum (bilinear x2 of 8x32x32x64: fwd+bwd 2.4x
# jax.image.resize's time with segment sums, bench_decoder.py).
_MATRIX_MAX = 1 << 16


def _whole_copies(n_in: int, n_out: int, scale: float, method: str):
    """``s`` when nearest along this axis is ``s`` whole copies of every cell (integer scale,
    ``out = s * in``): ``i0[j] = j // s``, a repeat; None otherwise."""
    s = int(round(scale))
    return s if method == "nearest" and s == scale and n_out == s * n_in else None


def _forward(x, plan):
    """The reference: (n, *in, c) -> (n, *out, c), one gather-and-weigh pass per spatial axis.
    Nearest with an integer scale repeats each cell (the same indices ``j // s``, as a broadcast)."""
    for a, (n_in, n_out, scale) in enumerate(zip(*plan[:3])):
        axis = 1 + a
        copies = _whole_copies(n_in, n_out, scale, plan[3])
        if copies is not None:
            x = jnp.repeat(x, copies, axis=axis)
            continue
        i0, i1, w0, w1 = axis_taps(n_in, n_out, scale, plan[3], plan[4])
        if i1 is None:
            x = jnp.take(x, i0, axis=axis)  # nearest: a copy of one cell
        else:
            x = (_weights(w0, axis, x.ndim, x.dtype) * jnp.take(x, i0, axis=axis)
                 + _weights(w1, axis, x.ndim, x.dtype) * jnp.take(x, i1, axis=axis))
    return x


def _adjoint(g, plan):
    """The hand-written transpose of ``_forward``: (n, *out, c) -> (n, *in, c), axes in reverse order."""
    for a in reversed(range(len(plan[0]))):
        n_in, n_out, scale = plan[0][a], plan[1][a], plan[2][a]
        copies = _whole_copies(n_in, n_out, scale, plan[3])
        if copies is not None:  # each input cell gets the sum of its s copies' gradients
            shape = g.shape
            g = jnp.sum(jnp.reshape(g, shape[:1 + a] + (n_in, copies) + shape[2 + a:]), axis=2 + a)
            continue
        i0, i1, w0, w1 = axis_taps(n_in, n_out, scale, plan[3], plan[4])
        if n_in * n_out <= _MATRIX_MAX:  # the transpose as one small matrix product along the axis
            m = np.zeros((n_out, n_in))
            np.add.at(m, (np.arange(n_out), i0), w0)
            if i1 is not None:
                np.add.at(m, (np.arange(n_out), i1), w1)
            acc = acc_dtype(g.dtype)  # bf16 gradients summed in f32
            dx = lax.dot_general(g, jnp.asarray(m, g.dtype), (((1 + a,), (0,)), ((), ())),
                                 precision=lax.Precision.HIGHEST, preferred_element_type=acc)  # (n, ..., in)
            g = jnp.moveaxis(dx.astype(g.dtype), -1, 1 + a)
            continue
        acc = acc_dtype(g.dtype)  # bf16 gradients summed in f32, as on the matrix path
        ga = jnp.moveaxis(g, 1 + a, 0).astype(acc)  # (out, ...): output cells first
        w0 = _weights(w0, 0, ga.ndim, acc)
        dx = jax.ops.segment_sum(w0 * ga, i0, num_segments=n_in)  # cell j gives w0[j]*g[j] to i0[j]
        if i1 is not None:
            dx = dx + jax.ops.segment_sum(_weights(w1, 0, ga.ndim, acc) * ga, i1, num_segments=n_in)
        g = jnp.moveaxis(dx.astype(g.dtype), 0, 1 + a)
    return g


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _upsample(x, plan):
    return _forward(x, plan)


def _upsample_fwd(x, plan):
    return _forward(x, plan), None  # linear: the backward needs no residual


def _upsample_bwd(plan, _, g):
    return (_adjoint(g, plan),)


_upsample.defvjp(_upsample_fwd, _upsample_bwd)


def _plan(x_shape, scale, method, align_corners, layout):
    """Validates; returns ``(layout, plan, out_shape)``. ``plan`` (hashable): in sizes, out sizes,
    scales, method, align_corners."""
    layout = shapes.normalize_layout(layout, len(x_shape))
    rank = shapes.layout_rank(layout)
    method = _checks.choice(method, UPSAMPLE_METHODS, "method")
    if _METHOD_RANK.get(method, rank) != rank:
        fits = [m for m, r in _METHOD_RANK.items() if r == rank]
        raise ValueError(f"method={method!r} is for {_METHOD_RANK[method]}-D inputs; x has {rank} spatial "
                         f"dimension(s) ({layout}): use method 'nearest' or {fits[0]!r}")
    _checks.boolean(align_corners, "align_corners")
    if align_corners and method == "nearest":
        raise ValueError("align_corners=True needs an interpolating method (linear, bilinear, trilinear), "
                         "as in PyTorch; got method='nearest'")
    out_shape = shapes.upsample_output_shape(x_shape, scale, layout=layout)
    plan = (shapes.spatial_dims(x_shape, layout), shapes.spatial_dims(out_shape, layout),
            shapes.normalize_scale(scale, rank), method, align_corners)
    return layout, plan, out_shape


def _check_floating(x, name):
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"{name} must have a floating dtype (interpolation weights), got {jnp.result_type(x)}")


def upsample(x, scale, *, method="nearest", align_corners=False, layout=None):
    """Upsample (or resize) the spatial dims of ``x`` by ``scale``; see the module docstring.

    Args:
      x: (n, *spatial, c) channels-last (NWC, NHWC, NDHWC) or (n, c, *spatial) channels-first, floating.
      scale: a positive number or one per spatial dim; ``out = floor(in * scale)`` must be >= 1.
      method: "nearest" (any rank), "linear" (1-D), "bilinear" (2-D) or "trilinear" (3-D).
      align_corners: only for the interpolating methods, as PyTorch's.
      layout: one of ``shapes.ALL_LAYOUTS`` of x's rank; None: channels-last.
    Returns:
      (n, *out, c) or (n, c, *out), x's dtype; its gradient is ``upsample_adjoint``.
    """
    layout, plan, _ = _plan(_checks.array_shape(x, "x"), scale, method, align_corners, layout)
    _check_floating(x, "x")
    return from_channels_last(_upsample(to_channels_last(jnp.asarray(x), layout), plan), layout)


def upsample_adjoint(y, x_shape, scale, *, method="nearest", align_corners=False, layout=None):
    """The adjoint of ``upsample`` at input shape ``x_shape``: ``<upsample(x), y> == <x, upsample_adjoint(y)>``.

    Args:
      y: an array of ``upsample``'s output shape for an input of ``x_shape``.
      x_shape, scale, method, align_corners, layout: as for ``upsample``.
    Returns:
      An array of shape ``x_shape``.
    """
    layout, plan, out_shape = _plan(tuple(x_shape), scale, method, align_corners, layout)
    if tuple(jnp.shape(y)) != tuple(out_shape):
        raise ValueError(f"y must have upsample's output shape {tuple(out_shape)} for x_shape {tuple(x_shape)}, "
                         f"got {tuple(jnp.shape(y))}")
    _check_floating(y, "y")
    return from_channels_last(_adjoint(to_channels_last(jnp.asarray(y), layout), plan), layout)
