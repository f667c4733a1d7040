"""Pooling per channel in 1, 2 or 3 spatial dimensions: max, average, global and adaptive.

One generic op per kind, rank taken from the input: ``max_pool``, ``avg_pool``, ``global_max_pool``,
``global_avg_pool``, ``adaptive_max_pool``, ``adaptive_avg_pool``; ``max_pool1d/2d/3d`` and
``avg_pool1d/2d/3d`` are the same ops with a rank fixed by name (layouts NWC/NCW, NHWC/NCHW,
NDHWC/NCDHW; the generic ops default to channels-last). The pieces live in ``fcnn.ops.pool_nd``.

Output size per spatial dimension (``fcnn.shapes``)::

    F_eff = D * (F - 1) + 1
    W2    = floor((W1 + P_total - F_eff) / S) + 1       stride S defaults to the window F

Max pooling comes in three implementations with the same signature, ``impl=``:

* ``"lax"``: ``lax.reduce_window(max)`` with a ``-inf`` initial value. JAX's VJP for it
  (``select_and_scatter_add``) gives the whole gradient to the *first* maximum of each
  window, padding cells included, so it implements ``ties="first"`` only. Window dilation works
  forward, but JAX's own VJP raises ``NotImplementedError`` for it: use ``"custom_vjp"``.
* ``"reference"``: the spec. Pads with ``-inf``, stacks one strided slice of the input
  per window tap and takes ``jnp.max`` over the taps. ``jax.grad`` of it is ``jnp.max``'s
  gradient, which *splits* ties evenly, so it implements ``ties="split"`` only.
* ``"custom_vjp"``: forward as ``"lax"``; the backward routes each output gradient to
  the real cell that held the maximum (mask recomputed from the saved input and output),
  accumulating where windows overlap, with window dilation, and with a tie policy:

  - ``"first"`` (default): the first maximum in row-major window order gets the whole
    gradient, as XLA's ``select_and_scatter`` and PyTorch do.
  - ``"split"``: the maxima share it evenly (what ``jnp.max`` does).
  - ``"all"``: every maximum gets the full gradient. This is NOT a valid subgradient
    (the gradient of a window with k tied maxima sums to k times the output gradient);
    it exists to study what a duplicating backward does.

  When windows tile the input (stride == window, no padding, no dilation) the backward
  takes a reshape fast path with no scatter; otherwise it is ``max_pool_backward``
  (``max_pool2d_backward`` is the same function), whose flags (default: this rule) build
  ``fcnn.mutants``' wrong rules through ``make_custom_vjp_max_pool2d``. The backward is itself
  differentiable JAX, so second-order reverse-mode gradients work; forward mode (``jvp``) does
  not, as for every ``custom_vjp``.

Non-finite values, per window (measured on jax 0.10.2, CPU, eager and jitted; tested in
tests/test_pool.py ``test_nonfinite_table``). Forward, every implementation: NaN if the window
holds a NaN, else the max of its real cells, ``-inf`` if they are all ``-inf`` or the window is
only padding. Gradient (who receives the window's output gradient; "first" tie policy for
custom_vjp, PyTorch's CPU kernel ``(val > maxval) || isnan(val)`` for comparison):

================================  =====================  ===================  ===============  ============
window                            ``lax``                ``reference``        ``custom_vjp``   PyTorch
================================  =====================  ===================  ===============  ============
NaN(s)                            XLA's ``>=`` scan (1)  NaN to every cell    the FIRST NaN    the LAST NaN
                                                         eager, 0 jitted
ties at +inf                      first +inf             split                first +inf       first +inf
real cells all -inf, padding      the padding: lost      split over padding   first real cell  first real
before them (low-side pad)        (dx 0)                 and real cells (2)                    cell
real cells all -inf, no padding   first real cell        split (2)            first real cell  first real
before them                                                                                    cell
only padding                      nothing                nothing              nothing          (refused)
================================  =====================  ===================  ===============  ============

(1) ``select_and_scatter``'s running choice is replaced whenever ``chosen >= cell`` fails, and a
NaN never wins a comparison: the gradient goes to the first maximum of the cells after the last
NaN, or to that NaN when it is the window's last cell ([1, NaN, 3, 2] -> the 3; [NaN, 5, NaN, 2]
-> the 2; [1, NaN] -> the NaN). (2) the padding's share is lost.

So ``"lax"`` differs from ``"custom_vjp"`` (and PyTorch) for a window whose maximum is NaN, and
for a window whose real cells are all ``-inf`` when padding precedes the first of them (only
possible with a low-side pad: ``padding=1``, or SAME with a total pad >= 2). Padding the input
with the dtype's lowest finite value instead of ``-inf`` would not help: that padding would then
beat a real ``-inf`` (wrong forward, gradient still lost). With ``ties="split"``/``"all"``
custom_vjp shares/duplicates among the NaNs as among tied maxima. A window made only of padding
outputs ``-inf``, a constant: its gradient is correctly zero, not routed into a real cell.

Average pooling pads with zeros (``count_include_pad`` as PyTorch). Adaptive pooling uses
PyTorch's windows ``[floor(i*in/out), ceil((i+1)*in/out))`` (``shapes.adaptive_pool_windows``);
``adaptive_max_pool``'s gradient goes to the first maximum (the first NaN if any: PyTorch's goes to
the last NaN) and is exact autodiff of a gather. PyTorch differences: no ``ceil_mode``; SAME
padding follows XLA (extra pad at the end).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcnn import _checks, shapes
from fcnn.dtypes import acc_dtype, half_float
from fcnn.ops import auto as _auto
from fcnn.ops import pool_nd
from fcnn.ops.pool_nd import from_channels_last, to_channels_last

POOL_IMPLS = ("lax", "reference", "custom_vjp")
# "auto" resolves to one of POOL_IMPLS per platform and shape (fcnn/ops/auto.py, measured).
POOL_CHOICES = POOL_IMPLS + ("auto",)
AVG_POOL_IMPLS = ("lax", "reference")
TIE_POLICIES = pool_nd.TIE_POLICIES
# The tie policies each implementation's gradient follows (lax: XLA's select_and_scatter; reference:
# jnp.max's rule; custom_vjp: any). ``tie_policy`` picks from it.
IMPL_TIES = {"lax": ("first",), "reference": ("split",), "custom_vjp": TIE_POLICIES}

max_pool_backward = pool_nd.max_pool_backward
max_pool2d_backward = pool_nd.max_pool_backward  # the 2-D name ``fcnn.mutants`` uses: the same rule


# ----------------------------------------------------------------------------- arguments
def tie_policy(impl: str, ties: str = "first") -> str:
    """The tie policy ``impl``'s gradient follows when ``ties`` is asked: ``ties`` if the
    implementation has it (custom_vjp has all; "auto" picks one that has it), else the one it
    implements (``IMPL_TIES``)."""
    supported = IMPL_TIES.get(_checks.choice(impl, POOL_CHOICES, "impl"), TIE_POLICIES)
    return ties if ties in supported else supported[0]


def _check_floating(x) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"x must have a floating dtype (pooling pads with -inf), got {jnp.result_type(x)}")


def _ranked(layout, x, rank: int) -> str:
    """The layout of an op named for a rank (``max_pool2d``, ...): one of that rank's layouts, x of its rank."""
    layout = _checks.choice(layout, shapes.LAYOUTS_BY_RANK[rank], "layout")
    shapes.check_rank(_checks.array_shape(x, "x"), layout, "x")
    return layout


def _geometry(x, window, stride, padding, dilation, layout):
    """Validates everything; returns ``(layout, window, stride, pads, dilation, out_sizes)``."""
    layout = shapes.normalize_layout(layout, len(_checks.array_shape(x, "x")))
    rank = shapes.layout_rank(layout)
    window = shapes.normalize_tuple(window, "window", rank)
    stride = window if stride is None else shapes.normalize_tuple(stride, "stride", rank)
    dilation = shapes.normalize_tuple(dilation, "dilation", rank)
    in_sizes = shapes.spatial_dims(jnp.shape(x), layout)
    pads = shapes.normalize_padding(padding, in_sizes, window, stride, dilation)
    out_sizes = shapes.conv_output_hw(in_sizes, window, stride, pads, dilation)
    shapes.check_nonempty(out_sizes, in_sizes, window, dilation, pads, "the window")
    return layout, window, stride, pads, dilation, out_sizes


def _max_pool_custom(x, window, stride, pads, dilation, ties, path="auto"):
    """Custom-VJP max pool, channels-last. ``path``: "auto", "tiled" or "general" (tests force both)."""
    _checks.choice(path, ("auto", "tiled", "general"), "path")
    if path == "tiled" and not pool_nd.tiles(window, stride, pads, dilation):
        raise ValueError("path='tiled' needs stride == window, no padding and no dilation")
    tiled = path == "tiled" or (path == "auto" and pool_nd.tiles(window, stride, pads, dilation))
    if tiled and ties != "split" and half_float(x.dtype) and _auto.normalize_platform(None) == "cpu":
        # bf16/f16 pooled in float32 and cast back, on CPU: the max, and a tiled "first"/"all"
        # gradient (each cell in one window, its gradient g or 0), are exact in either, bit for bit
        # ("split" scales g by 1/count, rounded differently). In the compiled bf16 step XLA:CPU ran
        # the pool's reduce-window and masks in f32 between converts anyway; this way the LeNet-5 b64
        # bf16 step ran 5.6 instead of 6.5 ms (docs/perf_notes.md item 56). Elsewhere (GPU,
        # unmeasured) the input's dtype is kept.
        return _max_pool_vjp(x.astype(jnp.float32), window, stride, pads, dilation, ties, True).astype(x.dtype)
    return _max_pool_vjp(x, window, stride, pads, dilation, ties, tiled)


_max_pool_vjp = pool_nd.make_max_pool_vjp(pool_nd.max_pool_backward)


def make_custom_vjp_max_pool2d(backward: Callable = max_pool2d_backward) -> Callable:
    """``max_pool2d(impl="custom_vjp")`` with ``backward`` in place of ``max_pool2d_backward``.

    Returns a function of ``(x, window, *, stride, padding, dilation, layout, ties)`` (``max_pool2d``'s
    arguments without ``impl``) with the same forward, residuals and second-order behaviour as the
    shipped implementation, but ``backward(x, y, g, window, stride, pads, dilation, *, ties)`` on NHWC
    for every geometry (no tiled fast path), so a deliberately wrong rule (``fcnn.mutants``) shows
    wherever it differs. With the default it is the shipped gradient.
    """
    vjp = pool_nd.make_max_pool_vjp(backward)

    def max_pool(x, window, *, stride=None, padding="VALID", dilation=1, layout="NHWC", ties="first"):
        ties = _checks.choice(ties, TIE_POLICIES, "ties")
        layout, window, stride, pads, dilation, _ = _geometry(x, window, stride, padding, dilation,
                                                              _ranked(layout, x, 2))
        _check_floating(x)
        y = vjp(to_channels_last(jnp.asarray(x), layout), window, stride, pads, dilation, ties, False)
        return from_channels_last(y, layout)

    return max_pool


# ----------------------------------------------------------------------------- max
def max_pool(x, window, *, stride=None, padding="VALID", dilation=1, layout=None, impl="lax", ties="first"):
    """Max pooling per channel in 1, 2 or 3 spatial dimensions (the rank of ``x``).

    Args:
      x: (n, *spatial, c) channels-last (NWC, NHWC, NDHWC) or (n, c, *spatial) channels-first,
        floating dtype.
      window: an int or one per spatial dim.
      stride: likewise; ``None`` means stride = window (non-overlapping windows).
      padding: "VALID", "SAME", an int, one int per dim or one (lo, hi) pair per dim; padding
        cells hold -inf.
      dilation: an int or one per dim: window dilation (gaps between taps).
      layout: one of ``shapes.ALL_LAYOUTS`` of x's rank; None: channels-last.
      impl: one of ``POOL_CHOICES``; see the module docstring.
      ties: one of ``TIE_POLICIES``, the gradient's tie policy. "lax" implements only
        "first" and "reference" only "split"; asking them for another raises ValueError.
    Returns:
      (n, *out, c) or (n, c, *out) with ``out = floor((in + P_total - (D*(F-1)+1)) / S) + 1`` per dim.
      A window made only of padding outputs -inf; a window containing NaN outputs NaN.
    Raises:
      ValueError/TypeError naming the argument, before any computation.
    """
    impl = _checks.choice(impl, POOL_CHOICES, "impl")
    ties = _checks.choice(ties, TIE_POLICIES, "ties")
    layout, window, stride, pads, dilation, out_sizes = _geometry(x, window, stride, padding, dilation, layout)
    if impl == "auto":  # measured in 2-D; other ranks take the implementation with every option
        impl = (_auto.select_pool_impl(jax.default_backend(), jnp.shape(x), window, stride=stride, padding=pads,
                                       dilation=dilation, layout=layout, ties=ties)
                if len(window) == 2 else "custom_vjp")
    if tie_policy(impl, ties) != ties:
        raise ValueError(
            f"ties={ties!r} is not what impl={impl!r} implements: its gradient follows ties="
            f"{tie_policy(impl, ties)!r} (use impl='custom_vjp' for any of {TIE_POLICIES})"
        )
    _check_floating(x)
    x = jnp.asarray(x)
    if impl == "lax":
        return pool_nd.lax_pool(x, -jnp.inf, lax.max, window, stride, pads, dilation, layout)
    xc = to_channels_last(x, layout)
    if impl == "reference":
        return from_channels_last(pool_nd.max_pool_reference(xc, window, stride, pads, dilation, out_sizes), layout)
    return from_channels_last(_max_pool_custom(xc, window, stride, pads, dilation, ties), layout)


def max_pool1d(x, window, *, stride=None, padding="VALID", dilation=1, layout="NWC", impl="lax", ties="first"):
    """``max_pool`` on x (n, w, c) NWC or (n, c, w) NCW."""
    return max_pool(x, window, stride=stride, padding=padding, dilation=dilation, layout=_ranked(layout, x, 1),
                    impl=impl, ties=ties)


def max_pool2d(x, window, *, stride=None, padding="VALID", dilation=1, layout="NHWC", impl="lax", ties="first"):
    """``max_pool`` on x (n, h, w, c) NHWC or (n, c, h, w) NCHW: window, stride, dilation an int or a
    pair, padding also ((top, bottom), (left, right)); output (n, oh, ow, c) or (n, c, oh, ow)."""
    return max_pool(x, window, stride=stride, padding=padding, dilation=dilation, layout=_ranked(layout, x, 2),
                    impl=impl, ties=ties)


def max_pool3d(x, window, *, stride=None, padding="VALID", dilation=1, layout="NDHWC", impl="lax", ties="first"):
    """``max_pool`` on x (n, d, h, w, c) NDHWC or (n, c, d, h, w) NCDHW."""
    return max_pool(x, window, stride=stride, padding=padding, dilation=dilation, layout=_ranked(layout, x, 3),
                    impl=impl, ties=ties)


# ----------------------------------------------------------------------------- average
def avg_pool(x, window, *, stride=None, padding="VALID", layout=None, count_include_pad=True, impl="lax"):
    """Average pooling per channel in 1, 2 or 3 spatial dimensions (the rank of ``x``).

    Args:
      x, window, stride, padding, layout: as in ``max_pool`` (padding cells hold 0).
      count_include_pad: True divides every window sum by prod(window) (padding counts as zeros,
        PyTorch's default); False divides by the number of real cells in the window. A
        window with no real cell (only possible with explicit padding >= window) averages
        to 0 rather than 0/0.
      impl: "lax" (``reduce_window`` add) or "reference" (sum of stacked taps).
    Returns:
      (n, *out, c) or (n, c, *out).
    """
    impl = _checks.choice(impl, AVG_POOL_IMPLS, "impl")
    _checks.boolean(count_include_pad, "count_include_pad")
    layout, window, stride, pads, dilation, out_sizes = _geometry(x, window, stride, padding, 1, layout)
    _check_floating(x)
    x = jnp.asarray(x)
    xs = x.astype(acc_dtype(x.dtype))  # 16-bit windows summed in float32 (a bf16 sum stops growing at 256)
    if impl == "lax":
        sums = to_channels_last(pool_nd.lax_pool(xs, 0, lax.add, window, stride, pads, dilation, layout), layout)
    else:
        sums = pool_nd.window_sums_reference(to_channels_last(xs, layout), window, stride, pads, out_sizes)
    if count_include_pad:
        count = np.full(out_sizes, np.prod(window))
    else:
        in_sizes = shapes.spatial_dims(x.shape, layout)
        count = np.maximum(pool_nd.real_counts(in_sizes, window, stride, pads, out_sizes), 1)
    y = (sums / jnp.asarray(count[None, ..., None], sums.dtype)).astype(x.dtype)  # (n, *out, c)
    return from_channels_last(y, layout)


def avg_pool1d(x, window, *, stride=None, padding="VALID", layout="NWC", count_include_pad=True, impl="lax"):
    """``avg_pool`` on x (n, w, c) NWC or (n, c, w) NCW."""
    return avg_pool(x, window, stride=stride, padding=padding, layout=_ranked(layout, x, 1),
                    count_include_pad=count_include_pad, impl=impl)


def avg_pool2d(x, window, *, stride=None, padding="VALID", layout="NHWC", count_include_pad=True, impl="lax"):
    """``avg_pool`` on x (n, h, w, c) NHWC or (n, c, h, w) NCHW."""
    return avg_pool(x, window, stride=stride, padding=padding, layout=_ranked(layout, x, 2),
                    count_include_pad=count_include_pad, impl=impl)


def avg_pool3d(x, window, *, stride=None, padding="VALID", layout="NDHWC", count_include_pad=True, impl="lax"):
    """``avg_pool`` on x (n, d, h, w, c) NDHWC or (n, c, d, h, w) NCDHW."""
    return avg_pool(x, window, stride=stride, padding=padding, layout=_ranked(layout, x, 3),
                    count_include_pad=count_include_pad, impl=impl)


# ----------------------------------------------------------------------------- global
def _global_sizes(x, layout):
    """Validates x for a global pool; returns ``(layout, spatial sizes)``."""
    x_shape = _checks.array_shape(x, "x")
    layout = shapes.normalize_layout(layout, len(x_shape))
    sizes = shapes.spatial_dims(x_shape, layout)
    _check_floating(x)
    if min(sizes) < 1:
        raise ValueError(f"x must have non-empty spatial dimensions, got shape {x_shape}")
    return layout, sizes


def global_avg_pool(x, *, layout=None):
    """Mean over the spatial dimensions: (n, *spatial, c) or (n, c, *spatial) -> (n, c), any rank.
    An input without pixels is refused (its mean would be 0/0)."""
    layout, _ = _global_sizes(x, layout)
    rank = shapes.layout_rank(layout)
    axes = tuple(range(1, rank + 1)) if shapes.is_channels_last(layout) else tuple(range(2, rank + 2))
    return jnp.mean(jnp.asarray(x), axis=axes)


def global_max_pool(x, *, layout=None):
    """Max over the spatial dimensions: (n, *spatial, c) or (n, c, *spatial) -> (n, c), any rank.

    A ``max_pool(impl="custom_vjp")`` whose window is the whole input, so the gradient follows the
    library default ``ties="first"`` (``jnp.max`` would split ties) and NaN is handled as there.
    """
    layout, sizes = _global_sizes(x, layout)
    y = max_pool(x, sizes, layout=layout, impl="custom_vjp")  # (n, 1, ..., c) or (n, c, 1, ...)
    return jnp.reshape(y, (y.shape[0], math.prod(y.shape[1:])))  # (n, c); not -1: a batch of 0 has no quotient


def global_avg_pool2d(x, *, layout="NHWC"):
    """``global_avg_pool`` of x (n, h, w, c) NHWC or (n, c, h, w) NCHW -> (n, c)."""
    return global_avg_pool(x, layout=_ranked(layout, x, 2))


def global_max_pool2d(x, *, layout="NHWC"):
    """``global_max_pool`` of x (n, h, w, c) NHWC or (n, c, h, w) NCHW -> (n, c)."""
    return global_max_pool(x, layout=_ranked(layout, x, 2))


# ----------------------------------------------------------------------------- adaptive
def _adaptive_cells(x, output_size, layout):
    """Validates; returns ``(layout, cells (n, *out, L, c), inside (*out, L, 1))`` (``pool_nd.adaptive_windows``)."""
    x_shape = _checks.array_shape(x, "x")
    out_shape = shapes.adaptive_pool_output_shape(x_shape, output_size, layout=layout)
    layout = shapes.normalize_layout(layout, len(x_shape))
    _check_floating(x)
    cells, inside = pool_nd.adaptive_windows(to_channels_last(jnp.asarray(x), layout),
                                             shapes.spatial_dims(out_shape, layout))
    return layout, cells, inside[..., None]


def adaptive_avg_pool(x, output_size, *, layout=None):
    """Average over PyTorch's adaptive windows: output size ``output_size`` (an int or one per dim).

    Window ``i`` of a dim covers ``[floor(i*in/out), ceil((i+1)*in/out))`` (``shapes.adaptive_pool_windows``).
    x: (n, *spatial, c) or (n, c, *spatial), any rank -> (n, *output_size, c) or (n, c, *output_size).
    The gradient is autodiff of the gather and masked sum: exact (the op is linear).
    """
    layout, cells, inside = _adaptive_cells(x, output_size, layout)
    acc = acc_dtype(cells.dtype)  # 16-bit windows summed in float32
    sums = jnp.sum(jnp.where(inside, cells, jnp.zeros((), cells.dtype)), axis=-2, dtype=acc)  # (n, *out, c)
    return from_channels_last((sums / jnp.asarray(inside.sum(axis=-2), acc)).astype(cells.dtype), layout)


def adaptive_max_pool(x, output_size, *, layout=None):
    """Max over PyTorch's adaptive windows (see ``adaptive_avg_pool``).

    The gradient goes to the first maximum of each window in row-major order (``jnp.argmax``; a
    window holding NaN outputs NaN and its gradient goes to the first NaN, where PyTorch's goes to
    the last): exact autodiff of picking that cell.
    """
    layout, cells, inside = _adaptive_cells(x, output_size, layout)
    cells = jnp.where(inside, cells, jnp.asarray(-jnp.inf, cells.dtype))  # slots past a window's end lose
    first = jnp.argmax(cells, axis=-2)  # (n, *out, c); the slot (0, ..., 0) is real, so -inf ties pick it
    y = jnp.take_along_axis(cells, first[..., None, :], axis=-2)[..., 0, :]
    return from_channels_last(y, layout)
