"""The pooling core in 1, 2 or 3 spatial dimensions, on channels-last arrays ``(n, *spatial, c)``.

``fcnn.ops.pool`` validates the arguments, converts layouts and states the semantics (ties, NaN,
-inf, padding); this module holds the pieces it is built from, each written once for every rank:

* window taps in row-major order and the strided slice each tap reads (the reference forwards);
* ``lax_pool``: ``lax.reduce_window`` in any layout (the "lax" forwards);
* the custom-VJP max pool: ``max_pool_backward`` (masks per tap, tie weights, scatter by padding),
  the reshape fast path for tiling windows, and ``make_max_pool_vjp``, which ``fcnn.mutants`` uses
  to plant deliberately wrong backward rules;
* ``adaptive_windows``: the cells of PyTorch's adaptive windows, gathered per dimension.

Geometry arrives normalised: one int per spatial dim for window, stride and dilation, pads as
``((lo, hi), ...)``.
"""
from __future__ import annotations

import functools
import itertools
import math
from functools import partial
from typing import Callable, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcnn import shapes

Sizes = Tuple[int, ...]


# ----------------------------------------------------------------------------- layout and taps
def to_channels_last(x, layout: str):
    return x if shapes.is_channels_last(layout) else jnp.moveaxis(x, 1, -1)  # (n, c, *s) -> (n, *s, c)


def from_channels_last(y, layout: str):
    return y if shapes.is_channels_last(layout) else jnp.moveaxis(y, -1, 1)  # (n, *s, c) -> (n, c, *s)


def window_offsets(window: Sizes, dilation: Sizes):
    """Window taps in row-major order, each as its offset (one int per dim) into the padded input."""
    return [tuple(i * d for i, d in zip(idx, dilation)) for idx in itertools.product(*(range(k) for k in window))]


def tap_slice(xp, offset: Sizes, stride: Sizes, out_sizes: Sizes):
    """The cells tap ``offset`` sees for every output position: (n, *out, c) of the padded (n, *grid, c)."""
    idx = tuple(slice(o, o + (m - 1) * s + 1, s) for o, s, m in zip(offset, stride, out_sizes))
    return xp[(slice(None),) + idx + (slice(None),)]


def pad_spatial(x, pads, value):
    """Pads the spatial dims of a channels-last array with the constant ``value``."""
    return jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),), constant_values=value)


def lax_pool(x, init, op, window, stride, pads, dilation, layout: str):
    """``lax.reduce_window(op)`` over the spatial dims of ``x`` in ``layout`` (no transposes)."""
    if shapes.is_channels_last(layout):
        def full(t, one):
            return (one, *t, one)
    else:
        def full(t, one):
            return (one, one, *t)
    init = np.array(init, dtype=x.dtype)  # a concrete numpy scalar even under jit, so JAX sees a max monoid
    return lax.reduce_window(x, init, op, full(window, 1), full(stride, 1), full(tuple(pads), (0, 0)),
                             window_dilation=full(dilation, 1))


# ----------------------------------------------------------------------------- references
def max_pool_reference(x, window, stride, pads, dilation, out_sizes):
    """(n, *in, c) -> (n, *out, c): ``jnp.max`` over the stacked taps of the ``-inf``-padded input."""
    xp = pad_spatial(x, pads, -jnp.inf)
    taps = [tap_slice(xp, off, stride, out_sizes) for off in window_offsets(window, dilation)]
    return jnp.max(jnp.stack(taps, axis=-1), axis=-1)  # (n, *out, c, prod(window)) -> (n, *out, c)


def window_sums_reference(x, window, stride, pads, out_sizes):
    """(n, *in, c) -> (n, *out, c): the sum of the taps of the zero-padded input (average pooling)."""
    xp = pad_spatial(x, pads, 0)
    return sum(tap_slice(xp, off, stride, out_sizes) for off in window_offsets(window, (1,) * len(window)))


def real_counts(in_sizes, window, stride, pads, out_sizes):
    """Static (*out) count of real (non-padding) cells in each window, from the shapes alone."""
    counts = []
    for d in range(len(in_sizes)):
        starts = np.arange(out_sizes[d]) * stride[d] - pads[d][0]  # window start in input coordinates
        counts.append(np.clip(np.minimum(starts + window[d], in_sizes[d]) - np.maximum(starts, 0), 0, None))
    return functools.reduce(np.multiply.outer, counts)


# ----------------------------------------------------------------------------- max: custom VJP
TIE_POLICIES = ("first", "split", "all")  # where a tied maximum's gradient goes (``tie_weights``)


def is_max(xt, y):
    """Where a cell holds its window's output; NaN counts as the maximum when the output is NaN."""
    return (xt == y) | (jnp.isnan(xt) & jnp.isnan(y))


def tie_weights(masks, ties, dtype):
    """Per-tap max masks (each (n, *out, c) bool, row-major tap order) -> per-tap gradient weights."""
    if ties == "all":
        return [m.astype(dtype) for m in masks]
    if ties == "split":
        count = sum(m.astype(dtype) for m in masks)
        count = jnp.maximum(count, jnp.ones_like(count))  # a window with no real maximum gets nothing
        return [m.astype(dtype) / count for m in masks]
    taken = jnp.zeros_like(masks[0])
    weights = []
    for m in masks:  # row-major window order: the first maximum wins
        weights.append((m & ~taken).astype(dtype))
        taken = taken | m
    return weights


def tiles(window, stride, pads, dilation) -> bool:
    """Whether the windows tile (a prefix of) the input: stride == window, no padding, no dilation."""
    return tuple(stride) == tuple(window) and all(p == (0, 0) for p in pads) and all(d == 1 for d in dilation)


def _window_axis_perm(rank: int):
    """(n, o1, k1, ..., od, kd, c) -> (n, o1..od, k1..kd, c): the output axes, then the window axes."""
    return (0, *range(1, 2 * rank, 2), *range(2, 2 * rank + 1, 2), 2 * rank + 1)


def _free_view_parts(xv):
    """(n, out sizes, window sizes, c, the per-window shape (n, o1, 1, ..., od, 1, c)) of a free view
    (n, o1, k1, ..., od, kd, c)."""
    n, c, out, window = xv.shape[0], xv.shape[-1], xv.shape[1:-1:2], xv.shape[2:-1:2]
    return n, out, window, c, (n, *(v for o in out for v in (o, 1)), c)


def window_cells(xv):
    """The free view (n, o1, k1, ..., od, kd, c) with each window's cells on one axis, transposed
    next to each other: (n, o1, ..., od, k1*...*kd, c), cells in row-major window order."""
    n, out, window, c, _ = _free_view_parts(xv)
    return jnp.reshape(jnp.transpose(xv, _window_axis_perm(len(window))), (n, *out, math.prod(window), c))


def free_view_of_cells(cells, window: Sizes):
    """``window_cells``' inverse: (n, o1, ..., od, k1*...*kd, c) back to the free view
    (n, o1, k1, ..., od, kd, c)."""
    n, c, out = cells.shape[0], cells.shape[-1], cells.shape[1:-2]
    per_axis = jnp.reshape(cells, (n, *out, *window, c))
    return jnp.transpose(per_axis, np.argsort(_window_axis_perm(len(window))))


def first_max_mask(xv):
    """Where each window holds its first maximum, on the free view ``xv`` (n, o1, k1, ..., od, kd, c)
    of tiling windows: True at one cell per window, the first in row-major window order that holds
    the maximum, or the first NaN when the window has one (the "first" tie policy).

    That is ``argmax`` over the window's cells (it returns the first maximum, or the first NaN),
    exactly the first cell ``is_max`` marks for the forward's NaN-propagating max. The argmax
    needs the cells on one axis, so it reads them transposed next to each other; the mask is then
    a comparison with each cell's row-major index in the free view, with no transpose back.
    XLA compiles the argmax to one variadic reduce: the mask and running scan it replaces
    (``is_max`` then an int32 cumsum, or an unrolled OR) compiled 3-4x longer on XLA:CPU and ran
    1.5-3x slower (docs/perf_notes.md, item 35).
    """
    _, _, window, _, per_window = _free_view_parts(xv)
    first = jnp.reshape(jnp.argmax(window_cells(xv), axis=-2), per_window)
    cell = sum(lax.broadcasted_iota(first.dtype, xv.shape, 2 + 2 * a) * math.prod(window[a + 1:])
               for a in range(len(window)))
    return cell == first


def free_view(x, out: Sizes, window: Sizes):
    """The free view of tiling windows: x (n, *in, c) cut to the cells the ``out`` windows of size
    ``window`` cover and reshaped to (n, o1, k1, ..., od, kd, c), no transpose."""
    n, c = x.shape[0], x.shape[-1]
    covered = tuple(o * k for o, k in zip(out, window))
    xc = x[(slice(None),) + tuple(slice(0, e) for e in covered) + (slice(None),)]
    return jnp.reshape(xc, (n, *(v for o, k in zip(out, window) for v in (o, k)), c))


def from_free_view(av, in_shape):
    """An array of a free view's shape (n, o1, k1, ..., od, kd, c) back to ``in_shape`` (n, *in, c),
    with zeros in the cells no window covers (``free_view``'s adjoint)."""
    n, out, window, c, _ = _free_view_parts(av)
    covered = tuple(o * k for o, k in zip(out, window))
    uncovered = tuple((0, s - e) for s, e in zip(in_shape[1:-1], covered))
    return jnp.pad(jnp.reshape(av, (n, *covered, c)), ((0, 0),) + uncovered + ((0, 0),))


def max_pool_bwd_tiled(x, y, g, window, ties):
    """Reshape fast path. x: (n, *in, c); y, g: (n, *out, c) -> dx: (n, *in, c).

    Works on the free view (n, o1, k1, ..., od, kd, c) of the windows, a reshape of x: each
    window's output and gradient broadcast against its cells, and the gradient reshaped back. The
    version before it transposed the windows next to each other (and back) and marked the first
    maximum by a scan: it compiled and ran slower on XLA:CPU (docs/perf_notes.md, item 35). An
    older free-view version, with stacked tie masks, had slowed the LeNet-5 step (items 7, 9).
    """
    xv = free_view(x, y.shape[1:-1], window)  # (n, o1, k1, ..., c)
    per_window = _free_view_parts(xv)[-1]  # (n, o1, 1, ..., c): against xv's cells
    gv = jnp.reshape(g, per_window)
    if ties == "first":
        dxv = jnp.where(first_max_mask(xv), gv, jnp.zeros((), g.dtype))
    else:
        m = is_max(xv, jnp.reshape(y, per_window)).astype(x.dtype)
        if ties == "split":  # the count over the cells transposed together: XLA:CPU's sum over the
            # free view's separate window axes ran 1.1-1.4x slower; a window with no maximum gets nothing
            count = jnp.sum(is_max(window_cells(xv), y[..., None, :]), axis=-2, dtype=x.dtype)
            m = m / jnp.maximum(jnp.reshape(count, per_window), jnp.ones((), x.dtype))
        dxv = m * gv
    return from_free_view(dxv, x.shape)  # uncovered cells get 0


def max_pool_backward(x, y, g, window, stride, pads, dilation, *, ties: str = "first",
                      accumulate: bool = True, crop_at_pad: bool = True):
    """The general max-pool backward in any rank: masks and scatter-add by padding, channels-last.

    Every flag's default is the shipped rule; ``fcnn.mutants`` turns one off at a time, so each
    pool mutant differs from this backward by exactly its named mistake.

    Args:
      x: (n, *in, c) forward input; y, g: (n, *out, c) forward output and its gradient.
      window, stride, pads, dilation: the forward's, normalised (pads ``((lo, hi), ...)``).
      ties: the tie policy applied (``TIE_POLICIES``).
      accumulate: overlapping windows add their gradients in a cell (False: the window that
        reaches it by the tap later in row-major window order overwrites it).
      crop_at_pad: dX is the padded gradient cropped at the low pads (False: cropped at 0, so
        the gradient is shifted by the pad and part of it lands in the padding).
    Returns:
      dx: (n, *in, c).
    """
    in_sizes, out_sizes = x.shape[1:-1], y.shape[1:-1]
    xp = pad_spatial(x, pads, -jnp.inf)  # (n, *grid, c)
    grid = xp.shape[1:-1]
    real = np.zeros((1, *grid, 1), bool)  # static: which padded cells are real input
    real[(slice(None),) + tuple(slice(p[0], p[0] + s) for p, s in zip(pads, in_sizes)) + (slice(None),)] = True
    offsets = window_offsets(window, dilation)
    masks = [is_max(tap_slice(xp, off, stride, out_sizes), y) & tap_slice(real, off, stride, out_sizes)
             for off in offsets]
    zero = jnp.zeros((), x.dtype)
    dxp = jnp.zeros_like(xp)
    for off, wt in zip(offsets, tie_weights(masks, ties, x.dtype)):
        config = shapes.tap_pad_config(off, stride, out_sizes, grid)  # g*wt to offset, offset+stride, ...
        placed = lax.pad(g * wt, zero, config)  # (n, *grid, c)
        if accumulate:
            dxp = dxp + placed  # overlapping windows accumulate
        else:
            dxp = jnp.where(lax.pad(wt, zero, config) > 0, placed, dxp)
    low = tuple(p[0] for p in pads) if crop_at_pad else (0,) * len(pads)
    return dxp[(slice(None),) + tuple(slice(lo, lo + s) for lo, s in zip(low, in_sizes)) + (slice(None),)]


def make_max_pool_vjp(backward: Callable = max_pool_backward):
    """Channels-last ``f(x, window, stride, pads, dilation, ties, tiled)``: the lax forward with a custom
    VJP whose backward is the tiled fast path when ``tiled``, else ``backward`` (the signature of
    ``max_pool_backward``). The static arguments are hashable tuples/strings."""

    @partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
    def f(x, window, stride, pads, dilation, ties, tiled):
        layout = shapes.LAYOUTS_BY_RANK[len(window)][0]
        return lax_pool(x, -jnp.inf, lax.max, window, stride, pads, dilation, layout)  # (n, *out, c)

    def fwd(x, window, stride, pads, dilation, ties, tiled):
        # y through the custom-VJP function itself, not lax: when this rule is differentiated
        # again (second order), y's derivative must use our backward, since JAX's reduce_window
        # VJP rejects window dilation and follows its own NaN and padding rules.
        y = f(x, window, stride, pads, dilation, ties, tiled)
        return y, (x, y)  # the mask is recomputed from x and y in the backward

    def bwd(window, stride, pads, dilation, ties, tiled, res, g):
        x, y = res
        if tiled:
            return (max_pool_bwd_tiled(x, y, g, window, ties),)
        return (backward(x, y, g, window, stride, pads, dilation, ties=ties),)

    f.defvjp(fwd, bwd)
    return f


# ----------------------------------------------------------------------------- adaptive windows
def adaptive_windows(x, out_sizes: Sequence[int]):
    """The cells of every adaptive window, gathered one spatial dim at a time.

    Args:
      x: (n, *in, c) channels-last; out_sizes: one output size per spatial dim.
    Returns:
      ``(cells, inside)``: cells (n, *out, L, c) with L = the product of the longest window per
      dim, in row-major window order; ``inside`` a static (*out, L) bool array, False for the
      slots past a shorter window's end (those slots repeat the window's last cell).
    """
    n, c, rank = x.shape[0], x.shape[-1], len(out_sizes)
    inside = np.ones((), bool)
    for a, (n_in, n_out) in enumerate(zip(x.shape[1:-1], out_sizes)):
        bounds = shapes.adaptive_pool_windows(n_in, n_out)
        length = max(e - s for s, e in bounds)
        idx = np.array([[min(s + t, e - 1) for t in range(length)] for s, e in bounds])  # (out, L)
        x = jnp.take(x, idx, axis=1 + 2 * a, mode="clip")  # (n, o1, L1, ..., o_a, L_a, in_{a+1}, ..., c)
        inside = np.multiply.outer(inside, np.array([[s + t < e for t in range(length)] for s, e in bounds]))
    perm = _window_axis_perm(rank)
    lengths = x.shape[2 : 2 * rank + 1 : 2]
    cells = jnp.reshape(jnp.transpose(x, perm), (n, *out_sizes, math.prod(lengths), c))
    inside = np.reshape(np.transpose(inside, np.array(perm[1:-1]) - 1), (*out_sizes, math.prod(lengths)))
    return cells, inside.astype(bool)
