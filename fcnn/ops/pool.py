"""2-D pooling, per channel: max and average, each in several implementations.

Output size per spatial dimension (``fcnn.shapes``)::

    F_eff = D * (F - 1) + 1
    W2    = floor((W1 + P_total - F_eff) / S) + 1       stride S defaults to the window F

Max pooling comes in three implementations with the same signature, ``impl=``:

* ``"lax"``: ``lax.reduce_window(max)`` with a ``-inf`` initial value. JAX's VJP for it
  (``select_and_scatter_add``) gives the whole gradient to the *first* maximum of each
  window, so it implements ``ties="first"`` only. Window dilation works forward, but
  JAX's own VJP raises ``NotImplementedError`` for it: use ``"custom_vjp"``.
* ``"reference"``: the spec. Pads with ``-inf``, stacks one strided slice of the input
  per window tap and takes ``jnp.max`` over the taps. ``jax.grad`` of it is ``jnp.max``'s
  gradient, which *splits* ties evenly, so it implements ``ties="split"`` only.
* ``"custom_vjp"``: forward as ``"lax"``; the backward routes each output gradient to
  the position that held the maximum (mask recomputed from the saved input and output),
  accumulating where windows overlap, with window dilation, and with a tie policy:

  - ``"first"`` (default): the first maximum in row-major window order gets the whole
    gradient, as XLA's ``select_and_scatter`` and PyTorch do.
  - ``"split"``: the maxima share it evenly (what ``jnp.max`` does).
  - ``"all"``: every maximum gets the full gradient. This is NOT a valid subgradient
    (the gradient of a window with k tied maxima sums to k times the output gradient);
    it exists to study what a duplicating backward does.

  When windows tile the input (stride == window, no padding, no dilation) the backward
  takes a reshape fast path with no scatter; otherwise it is ``max_pool2d_backward``,
  whose flags (default: this rule) build ``fcnn.mutants``' wrong rules through
  ``make_custom_vjp_max_pool2d``. The backward is itself differentiable JAX,
  so second-order reverse-mode gradients work; forward mode (``jvp``) does not, as for
  every ``custom_vjp``.

Padding cells hold ``-inf`` and are never candidates for the maximum in the custom
backward, so they never receive gradient. A window made only of padding outputs
``-inf``; that output does not depend on ``x``, so its gradient is correctly zero (it is
not routed into a real cell). A window of padding and real ``-inf`` cells outputs
``-inf`` and routes its gradient to the real cell(s).

NaN (measured on jax 0.10.2, CPU): every implementation's forward outputs NaN for a
window containing a NaN. Backward, per window containing NaN:

* ``"custom_vjp"`` treats NaN as the maximum (it is what the output holds): the
  gradient goes to the NaN cell(s) under the tie policy (as PyTorch does);
* ``"lax"`` (XLA) routes it to the largest non-NaN cell;
* ``"reference"`` (``jnp.max``'s rule) gives NaN to every cell of the window.

PyTorch differences: no ``ceil_mode``; SAME padding follows XLA (extra pad at the end).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcnn import _checks, shapes
from fcnn.ops import auto as _auto

POOL_IMPLS = ("lax", "reference", "custom_vjp")
# "auto" resolves to one of POOL_IMPLS per platform and shape (fcnn/ops/auto.py, measured).
POOL_CHOICES = POOL_IMPLS + ("auto",)
AVG_POOL_IMPLS = ("lax", "reference")
TIE_POLICIES = ("first", "split", "all")
# The tie policies each implementation's gradient follows (lax: XLA's select_and_scatter; reference:
# jnp.max's rule; custom_vjp: any). ``tie_policy`` picks from it.
IMPL_TIES = {"lax": ("first",), "reference": ("split",), "custom_vjp": TIE_POLICIES}

Pair = Tuple[int, int]


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


def _pool_geometry(x, window, stride, padding, dilation, layout):
    """Validates everything; returns ``(window, stride, pads, dilation, out_hw)``."""
    layout = shapes.normalize_layout(layout)
    shapes.check_rank4(jnp.shape(x), "x")
    window = shapes.normalize_pair(window, "window")
    stride = window if stride is None else shapes.normalize_pair(stride, "stride")
    dilation = shapes.normalize_pair(dilation, "dilation")
    in_hw = shapes.spatial_dims(jnp.shape(x), layout)
    pads = shapes.normalize_padding(padding, in_hw, window, stride, dilation)
    out_hw = shapes.conv_output_hw(in_hw, window, stride, pads, dilation)
    shapes.check_nonempty(out_hw, in_hw, window, dilation, pads, "the window")
    return window, stride, pads, dilation, out_hw


def _to_nhwc(x, layout):
    return x if layout == "NHWC" else jnp.transpose(x, (0, 2, 3, 1))  # (n, c, h, w) -> (n, h, w, c)


def _from_nhwc(y, layout):
    return y if layout == "NHWC" else jnp.transpose(y, (0, 3, 1, 2))  # (n, h, w, c) -> (n, c, h, w)


def _taps(window: Pair, dilation: Pair):
    """Window taps in row-major order: ``(i, j, row offset, column offset)``."""
    return [(i, j, i * dilation[0], j * dilation[1]) for i in range(window[0]) for j in range(window[1])]


def _tap_slice(xp, off: Pair, stride: Pair, out_hw: Pair):
    """The input cells that tap ``off`` sees for every output position: (n, oh, ow, c)."""
    return xp[:, off[0] : off[0] + (out_hw[0] - 1) * stride[0] + 1 : stride[0],
              off[1] : off[1] + (out_hw[1] - 1) * stride[1] + 1 : stride[1], :]


def _pad_hw(x, pads, value):
    """Pads the spatial dims of an NHWC array with the constant ``value``."""
    return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def _lax_pool(x, init, op, window, stride, pads, dilation, layout):
    spatial = (lambda p: (1, p[0], p[1], 1)) if layout == "NHWC" else (lambda p: (1, 1, p[0], p[1]))
    full_pads = ((0, 0), pads[0], pads[1], (0, 0)) if layout == "NHWC" else ((0, 0), (0, 0), pads[0], pads[1])
    init = np.array(init, dtype=x.dtype)  # a concrete numpy scalar even under jit, so JAX sees a max monoid
    return lax.reduce_window(x, init, op, spatial(window), spatial(stride), full_pads,
                             window_dilation=spatial(dilation))


# ----------------------------------------------------------------------------- max: reference
def _max_pool_reference(x, window, stride, pads, dilation, out_hw):
    """x: (n, h, w, c) NHWC -> (n, oh, ow, c): max over the stacked taps of the padded input."""
    xp = _pad_hw(x, pads, -jnp.inf)  # (n, h + pt + pb, w + pl + pr, c)
    taps = [_tap_slice(xp, (di, dj), stride, out_hw) for _, _, di, dj in _taps(window, dilation)]
    return jnp.max(jnp.stack(taps, axis=-1), axis=-1)  # (n, oh, ow, c, kh*kw) -> (n, oh, ow, c)


# ----------------------------------------------------------------------------- max: custom VJP
def _is_max(xt, y):
    """Where a cell holds its window's output; NaN counts as the maximum when the output is NaN."""
    return (xt == y) | (jnp.isnan(xt) & jnp.isnan(y))


def _tie_weights(masks, ties, dtype):
    """Per-tap max masks (each (n, oh, ow, c) bool, row-major tap order) -> per-tap gradient weights."""
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


def _tiles(window, stride, pads, dilation) -> bool:
    """Whether the windows tile (a prefix of) the input: stride == window, no padding, no dilation."""
    return stride == window and pads == ((0, 0), (0, 0)) and dilation == (1, 1)


def _max_pool_bwd_tiled(x, y, g, window, ties):
    """Reshape fast path. x: (n, h, w, c); y, g: (n, oh, ow, c) -> dx: (n, h, w, c).

    The windows are transposed to (n, oh, ow, kh*kw, c). Keeping the free (n, oh, kh, ow, kw, c)
    view instead (experiments/bench_ops.py's ``proto``) is faster per op, but inside XLA:CPU's
    LeNet-5 train step it fused badly and the step went from ~8.5 to ~14 ms (docs/perf_notes.md,
    outcome 7); it has not been measured in a GPU step.
    """
    n, h, w, c = x.shape
    _, oh, ow, _ = y.shape
    kh, kw = window
    xc = x[:, : oh * kh, : ow * kw, :]
    xw = jnp.reshape(xc, (n, oh, kh, ow, kw, c))
    xw = jnp.reshape(jnp.transpose(xw, (0, 1, 3, 2, 4, 5)), (n, oh, ow, kh * kw, c))  # row-major window axis
    m = _is_max(xw, y[:, :, :, None, :])  # (n, oh, ow, kh*kw, c)
    if ties == "first":
        wts = (m & (jnp.cumsum(m.astype(jnp.int32), axis=3) == 1)).astype(x.dtype)
    elif ties == "split":
        mf = m.astype(x.dtype)
        wts = mf / jnp.maximum(jnp.sum(mf, axis=3, keepdims=True), jnp.ones((), x.dtype))
    else:
        wts = m.astype(x.dtype)
    dxw = wts * g[:, :, :, None, :]  # (n, oh, ow, kh*kw, c)
    dxw = jnp.transpose(jnp.reshape(dxw, (n, oh, ow, kh, kw, c)), (0, 1, 3, 2, 4, 5))  # (n, oh, kh, ow, kw, c)
    dxc = jnp.reshape(dxw, (n, oh * kh, ow * kw, c))
    return jnp.pad(dxc, ((0, 0), (0, h - oh * kh), (0, w - ow * kw), (0, 0)))  # uncovered cells get 0


def max_pool2d_backward(x, y, g, window: Pair, stride: Pair, pads, dilation: Pair, *, ties: str = "first",
                        accumulate: bool = True, crop_at_pad: bool = True):
    """The general max-pool backward: masks and scatter-add by padding, NHWC.

    Every flag's default is the shipped rule; ``fcnn.mutants`` turns one off at a time, so each
    pool mutant differs from this backward by exactly its named mistake.

    Args:
      x: (n, h, w, c) forward input; y, g: (n, oh, ow, c) forward output and its gradient.
      window, stride, pads, dilation: the forward's, normalised (pads ``((top, bottom), (left, right))``).
      ties: the tie policy applied (``TIE_POLICIES``).
      accumulate: overlapping windows add their gradients in a cell (False: the window that
        reaches it by the tap later in row-major window order overwrites it).
      crop_at_pad: dX is the padded gradient cropped at the top/left pad (False: cropped at 0, so
        the gradient is shifted by the pad and part of it lands in the padding).
    Returns:
      dx: (n, h, w, c).
    """
    n, h, w, c = x.shape
    out_hw = y.shape[1:3]
    xp = _pad_hw(x, pads, -jnp.inf)  # (n, hp, wp, c)
    hp, wp = xp.shape[1:3]
    real = np.zeros((hp, wp), bool)  # static: which padded cells are real input
    real[pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + w] = True
    taps = _taps(window, dilation)
    masks = []
    for _, _, di, dj in taps:
        real_t = real[di : di + (out_hw[0] - 1) * stride[0] + 1 : stride[0],
                      dj : dj + (out_hw[1] - 1) * stride[1] + 1 : stride[1]]  # (oh, ow)
        masks.append(_is_max(_tap_slice(xp, (di, dj), stride, out_hw), y) & real_t[None, :, :, None])
    zero = jnp.zeros((), x.dtype)
    dxp = jnp.zeros_like(xp)
    for (_, _, di, dj), wt in zip(taps, _tie_weights(masks, ties, x.dtype)):
        # place g*wt at rows di, di+sh, ... and columns dj, dj+sw, ...
        config = shapes.tap_pad_config((di, dj), stride, out_hw, (hp, wp))
        placed = lax.pad(g * wt, zero, config)  # (n, hp, wp, c)
        if accumulate:
            dxp = dxp + placed  # overlapping windows accumulate
        else:
            dxp = jnp.where(lax.pad(wt, zero, config) > 0, placed, dxp)
    top, left = (pads[0][0], pads[1][0]) if crop_at_pad else (0, 0)
    return dxp[:, top : top + h, left : left + w, :]


def _max_pool_custom(x, window, stride, pads, dilation, ties, path="auto"):
    """Custom-VJP max pool on NHWC. ``path``: "auto", "tiled" or "general" (tests force both)."""
    _checks.choice(path, ("auto", "tiled", "general"), "path")
    if path == "tiled" and not _tiles(window, stride, pads, dilation):
        raise ValueError("path='tiled' needs stride == window, no padding and no dilation")
    tiled = path == "tiled" or (path == "auto" and _tiles(window, stride, pads, dilation))
    return _max_pool_vjp(x, window, stride, pads, dilation, ties, tiled)


def _forward(x, window, stride, pads, dilation):
    return _lax_pool(x, -jnp.inf, lax.max, window, stride, pads, dilation, "NHWC")


def _make_max_pool_vjp(backward: Callable):
    """NHWC ``f(x, window, stride, pads, dilation, ties, tiled)``: the lax forward with a custom VJP
    whose backward is the tiled fast path when ``tiled``, else ``backward`` (the signature of
    ``max_pool2d_backward``). The static arguments are hashable tuples/strings."""

    @partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
    def f(x, window, stride, pads, dilation, ties, tiled):
        return _forward(x, window, stride, pads, dilation)  # (n, oh, ow, c)

    def fwd(x, window, stride, pads, dilation, ties, tiled):
        # y through the custom-VJP function itself, not lax: when this rule is differentiated
        # again (second order), y's derivative must use our backward, since JAX's reduce_window
        # VJP rejects window dilation and follows its own NaN rule.
        y = f(x, window, stride, pads, dilation, ties, tiled)
        return y, (x, y)  # the mask is recomputed from x and y in the backward

    def bwd(window, stride, pads, dilation, ties, tiled, res, g):
        x, y = res
        if tiled:
            return (_max_pool_bwd_tiled(x, y, g, window, ties),)
        return (backward(x, y, g, window, stride, pads, dilation, ties=ties),)

    f.defvjp(fwd, bwd)
    return f


_max_pool_vjp = _make_max_pool_vjp(max_pool2d_backward)


def make_custom_vjp_max_pool2d(backward: Callable = max_pool2d_backward) -> Callable:
    """``max_pool2d(impl="custom_vjp")`` with ``backward`` in place of ``max_pool2d_backward``.

    Returns a function of ``(x, window, *, stride, padding, dilation, layout, ties)`` (``max_pool2d``'s
    arguments without ``impl``) with the same forward, residuals and second-order behaviour as the
    shipped implementation, but ``backward(x, y, g, window, stride, pads, dilation, *, ties)`` on NHWC
    for every geometry (no tiled fast path), so a deliberately wrong rule (``fcnn.mutants``) shows
    wherever it differs. With the default it is the shipped gradient.
    """
    vjp = _make_max_pool_vjp(backward)

    def max_pool(x, window, *, stride=None, padding="VALID", dilation=1, layout="NHWC", ties="first"):
        ties = _checks.choice(ties, TIE_POLICIES, "ties")
        window, stride, pads, dilation, _ = _pool_geometry(x, window, stride, padding, dilation, layout)
        _check_floating(x)
        y = vjp(_to_nhwc(jnp.asarray(x), layout), window, stride, pads, dilation, ties, False)
        return _from_nhwc(y, layout)

    return max_pool


# ----------------------------------------------------------------------------- public: max
def max_pool2d(x, window, *, stride=None, padding="VALID", dilation=1, layout="NHWC", impl="lax", ties="first"):
    """2-D max pooling, per channel.

    Args:
      x: (n, h, w, c) NHWC or (n, c, h, w) NCHW, floating dtype.
      window: int or (kh, kw) window size.
      stride: int or (sh, sw); ``None`` means stride = window (non-overlapping windows).
      padding: "VALID", "SAME", an int, a pair or ((top, bottom), (left, right)); padding
        cells hold -inf.
      dilation: int or (dh, dw) window dilation (gaps between taps).
      layout: "NHWC" or "NCHW".
      impl: one of ``POOL_IMPLS``; see the module docstring.
      ties: one of ``TIE_POLICIES``, the gradient's tie policy. "lax" implements only
        "first" and "reference" only "split"; asking them for another raises ValueError.
    Returns:
      (n, oh, ow, c) NHWC or (n, c, oh, ow) NCHW with
      ``oh = floor((h + pt + pb - (dh*(kh-1)+1)) / sh) + 1`` (likewise ow). A window made
      only of padding outputs -inf; a window containing NaN outputs NaN.
    Raises:
      ValueError/TypeError naming the argument, before any computation.
    """
    impl = _checks.choice(impl, POOL_CHOICES, "impl")
    ties = _checks.choice(ties, TIE_POLICIES, "ties")
    if impl == "auto":
        impl = _auto.select_pool_impl(jax.default_backend(), jnp.shape(x), window, stride=stride, padding=padding,
                                      dilation=dilation, layout=layout, ties=ties)
    if tie_policy(impl, ties) != ties:
        raise ValueError(
            f"ties={ties!r} is not what impl={impl!r} implements: its gradient follows ties="
            f"{tie_policy(impl, ties)!r} (use impl='custom_vjp' for any of {TIE_POLICIES})"
        )
    window, stride, pads, dilation, out_hw = _pool_geometry(x, window, stride, padding, dilation, layout)
    _check_floating(x)
    x = jnp.asarray(x)
    if impl == "lax":
        return _lax_pool(x, -jnp.inf, lax.max, window, stride, pads, dilation, layout)
    xn = _to_nhwc(x, layout)
    if impl == "reference":
        return _from_nhwc(_max_pool_reference(xn, window, stride, pads, dilation, out_hw), layout)
    return _from_nhwc(_max_pool_custom(xn, window, stride, pads, dilation, ties), layout)


# ----------------------------------------------------------------------------- public: average
def _real_counts(in_hw, window, stride, pads, out_hw):
    """Static (oh, ow) count of real (non-padding) cells in each window, from the shapes alone."""
    counts = []
    for d in range(2):
        starts = np.arange(out_hw[d]) * stride[d] - pads[d][0]  # window start in input coordinates
        ends = starts + window[d]
        counts.append(np.clip(np.minimum(ends, in_hw[d]) - np.maximum(starts, 0), 0, None))
    return np.outer(counts[0], counts[1])  # (oh, ow)


def avg_pool2d(x, window, *, stride=None, padding="VALID", layout="NHWC", count_include_pad=True, impl="lax"):
    """2-D average pooling, per channel.

    Args:
      x: (n, h, w, c) NHWC or (n, c, h, w) NCHW, floating dtype.
      window, stride, padding, layout: as in ``max_pool2d`` (padding cells hold 0).
      count_include_pad: True divides every window sum by kh*kw (padding counts as zeros,
        PyTorch's default); False divides by the number of real cells in the window. A
        window with no real cell (only possible with explicit padding >= window) averages
        to 0 rather than 0/0.
      impl: "lax" (``reduce_window`` add) or "reference" (sum of stacked taps).
    Returns:
      (n, oh, ow, c) NHWC or (n, c, oh, ow) NCHW.
    """
    impl = _checks.choice(impl, AVG_POOL_IMPLS, "impl")
    _checks.boolean(count_include_pad, "count_include_pad")
    window, stride, pads, dilation, out_hw = _pool_geometry(x, window, stride, padding, 1, layout)
    _check_floating(x)
    x = jnp.asarray(x)
    if impl == "lax":
        sums = _to_nhwc(_lax_pool(x, 0, lax.add, window, stride, pads, dilation, layout), layout)  # (n, oh, ow, c)
    else:
        xp = _pad_hw(_to_nhwc(x, layout), pads, 0)  # (n, hp, wp, c)
        sums = sum(_tap_slice(xp, (di, dj), stride, out_hw) for _, _, di, dj in _taps(window, dilation))
    if count_include_pad:
        count = np.full(out_hw, window[0] * window[1])
    else:
        count = np.maximum(_real_counts(shapes.spatial_dims(x.shape, layout), window, stride, pads, out_hw), 1)
    y = sums / jnp.asarray(count[None, :, :, None], x.dtype)  # (n, oh, ow, c)
    return _from_nhwc(y, layout)


# ----------------------------------------------------------------------------- public: global
def global_avg_pool2d(x, *, layout="NHWC"):
    """Mean over the spatial dimensions: x (n, h, w, c) NHWC or (n, c, h, w) NCHW -> (n, c)."""
    layout = shapes.normalize_layout(layout)
    shapes.check_rank4(jnp.shape(x), "x")
    _check_floating(x)
    return jnp.mean(jnp.asarray(x), axis=(1, 2) if layout == "NHWC" else (2, 3))


def global_max_pool2d(x, *, layout="NHWC"):
    """Max over the spatial dimensions: x (n, h, w, c) NHWC or (n, c, h, w) NCHW -> (n, c).

    A ``max_pool2d(impl="custom_vjp")`` whose window is the whole image, so the gradient
    follows the library default ``ties="first"`` (``jnp.max`` would split ties) and NaN is
    handled as in ``max_pool2d``'s custom VJP.
    """
    layout = shapes.normalize_layout(layout)
    shapes.check_rank4(jnp.shape(x), "x")
    hw = shapes.spatial_dims(jnp.shape(x), layout)
    if min(hw) < 1:
        raise ValueError(f"x must have non-empty spatial dimensions, got shape {tuple(jnp.shape(x))}")
    y = max_pool2d(x, hw, layout=layout, impl="custom_vjp")  # (n, 1, 1, c) or (n, c, 1, 1)
    return jnp.reshape(y, (y.shape[0], -1))  # (n, c)
