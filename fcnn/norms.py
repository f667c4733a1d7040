"""Normalisation layers: BatchNorm, LayerNorm, GroupNorm, InstanceNorm.

Each layer computes ``y = (x - mean) / sqrt(var + epsilon) * scale + offset`` with the
*biased* variance (divided by the count m, not m - 1) and a per-channel affine transform
(``scale`` ones, ``offset`` zeros, shape (c,); ``affine=False`` leaves them out). They differ
only in the axes the statistics run over, for an input (n, *spatial, c) in channels-last
layout (or (n, c, *spatial) channels-first):

    layer               statistics over                       per           kept as state
    BatchNorm           n and every spatial axis              channel       running mean, var
    LayerNorm           every channel and spatial axis        example       nothing
    GroupNorm(g)        the c/g channels of a group, spatial  example, group  nothing
    InstanceNorm        every spatial axis                    example, channel  nothing

So ``LayerNorm = GroupNorm(1)`` and ``InstanceNorm = GroupNorm(c)`` (Wu & He 2018, Fig. 2);
only BatchNorm mixes the examples of a batch and keeps state.

Layouts: ``layout`` names where the channel axis is: the channels-last names ``NWC``, ``NHWC``,
``NDHWC`` put it last, the channels-first names ``NCW``, ``NCHW``, ``NCDHW`` at axis 1; the
rank comes from ``in_shape`` (1-3 spatial dims: rank 3-5), so ``layout="NHWC"`` serves an
(n, w, c) or (n, d, h, w, c) input too. BatchNorm, LayerNorm and GroupNorm also take (n, c)
(features on the last axis whatever the layout). Under the layer contract (``fcnn.types``)
``init`` needs only the shape; ``apply`` checks its input against the params (the channel
count of ``scale`` or of the running statistics) and raises ``InputShapeError`` naming the
layer and both shapes, and refuses an ``x`` without a floating dtype (``TypeError``: ``y`` has
``x.dtype``, and normalised values cast to ints are wrong). Statistics are computed in at least
float32. ``param_dtype`` is a floating dtype (``None`` is refused).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from fcnn import _checks, shapes
from fcnn.channels import add_channels, channel_mean, scale_channels
from fcnn.dtypes import acc_dtype
from fcnn.types import (Layer, LayerInfo, check_floating, check_param_dtype, check_shape, describe, init_text,
                        input_mismatch, numel)

__all__ = ["BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm"]

IMAGE_RANKS = (3, 4, 5)  # (n, w, c), (n, h, w, c), (n, d, h, w, c) and their channels-first forms


# ----------------------------------------------------------------------------- shared pieces
def _channels_last(layout) -> bool:
    return shapes.is_channels_last(_checks.choice(layout, shapes.ALL_LAYOUTS, "layout"))


def _channel_axis(rank: int, last: bool) -> int:
    return rank - 1 if (last or rank == 2) else 1


def _shape_text(c, last: bool, ranks) -> str:
    """How an input the params fit is written when init's own shape is unknown: ``(n, 4) or (n, ..., 4)``."""
    image = f"(n, ..., {c})" if last else f"(n, {c}, ...)"
    return f"(n, {c}) or {image}" if 2 in ranks else image


def _rank_text(ranks) -> str:
    return " or ".join(map(str, ranks))


def _init_shape(name, in_shape, ranks, seen):
    in_shape = check_shape(in_shape)
    if len(in_shape) not in ranks:
        forms = ("(n, c) or " if 2 in ranks else "") + "rank 3-5 (1-3 spatial dims and a channel axis)"
        raise ValueError(f"in_shape of {name} must be {forms}, got {in_shape}")
    seen["in"] = in_shape
    return in_shape


def _check_input(name, x, c, last, ranks, seen, fits=None):
    """``x`` of a rank in ``ranks`` with ``c`` channels (``c=None``: any; ``fits(channels)``: an
    extra rule, e.g. groups dividing them), else ``InputShapeError`` naming ``name`` and both shapes."""
    shape = jnp.shape(x)

    def agrees(s):
        ch = s[_channel_axis(len(s), last)] if len(s) in ranks else None
        return ch is not None and (c is None or ch == c) and (fits is None or fits(ch))

    if agrees(shape):
        return
    where = "on the last axis" if last else "on axis 1 (the last at rank 2)"
    what = f"{c} channels" if c is not None else "channels"
    rule = f"x must have rank {_rank_text(ranks)} with the params' {what} {where}"
    if fits is not None and len(shape) in ranks and (c is None or shape[_channel_axis(len(shape), last)] == c):
        rule = fits.rule
    expected = init_text(seen, agrees, _shape_text("c" if c is None else c, last, ranks))
    raise input_mismatch(name, shape, expected, rule, rank_ok=len(shape) in ranks)


def _affine(params, y, ca, dtype):
    """``y * scale + offset`` with (c,) params along channel axis ``ca``; identity without params."""
    if not params:
        return y
    return add_channels(scale_channels(y, params["scale"].astype(dtype), ca), params["offset"].astype(dtype), ca)


def _affine_params(c, affine, dtype):
    return {"scale": jnp.ones((c,), dtype), "offset": jnp.zeros((c,), dtype)} if affine else {}


def _params_channels(params, state):
    """The channel count the params (or BatchNorm's statistics) fix, or None (affine=False, no state)."""
    for tree, key in ((params, "scale"), (state, "mean")):
        if key in tree:
            return jnp.shape(tree[key])[0]
    return None


# ----------------------------------------------------------------------------- BatchNorm
def _pmean(v, axis_name):
    return v if axis_name is None else lax.pmean(v, axis_name)


def _batch_moments(xs, ca, axis_name):
    """Per-channel batch mean, centred input and biased variance over every axis but the channel
    axis ``ca`` (averaged over ``axis_name``: the variance around the global mean). Channel sums
    (``fcnn.channels``): on XLA:CPU a column reduction costs 10x the matrix product (BatchNorm +
    ReLU forward and backward of a (16, 16, 16, 128) input took 4.0 ms with ``jnp.mean``, 0.77 ms
    with them; docs/perf_notes.md, item 31)."""
    mean = _pmean(channel_mean(xs, ca), axis_name)
    xc = add_channels(xs, -mean, ca)
    return mean, xc, _pmean(channel_mean(jnp.square(xc), ca), axis_name)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _batch_norm_train(xs, scale, offset, ca, axis_name, epsilon):
    """``(y, mean, var)``: ``y = (xs - mean) / sqrt(var + epsilon) * scale + offset`` with the batch's
    per-channel mean and biased variance (``_batch_moments``) and (c,) ``scale`` and ``offset``.

    Its derivative is written out (a custom JVP, so forward mode and every order still work):
    with ``inv = 1 / sqrt(var + epsilon)``, ``xhat = (xs - mean) * inv``, ``a = scale * inv`` and
    ``E`` the per-channel mean (over ``axis_name`` too),

        d mean = E[dx],   d var = 2 E[xc dx]   (using E[xc] = 0),
        d y    = a dx - xhat (a E[xhat dx] - d scale) + (d offset - a E[dx]).

    The per-channel vectors are formed before they are broadcast, so the transpose (the backward
    pass) makes two channel sums of the output gradient g, ``sum(g)`` and ``sum(xhat g)``, which are
    also the offset and scale gradients: ``dx = a (g - E[g] - xhat E[xhat g])``, the textbook
    BatchNorm gradient. Autodiff of the forward differentiates through the mean and the variance
    separately; ResNet-18's CPU train step took ~0.97x the time with this (docs/perf_notes.md, item 38).
    """
    return _batch_norm_forward(xs, scale, offset, ca, axis_name, epsilon)[:3]


def _batch_norm_forward(xs, scale, offset, ca, axis_name, epsilon):
    """``(y, mean, var, xc, inv, xhat)``: ``_batch_norm_train``'s outputs and the intermediates its
    derivative reads."""
    mean, xc, var = _batch_moments(xs, ca, axis_name)
    inv = lax.rsqrt(var + epsilon)
    xhat = scale_channels(xc, inv, ca)
    return add_channels(scale_channels(xhat, scale, ca), offset, ca), mean, var, xc, inv, xhat


@_batch_norm_train.defjvp
def _batch_norm_train_jvp(ca, axis_name, epsilon, primals, tangents):
    (xs, scale, offset), (dx, d_scale, d_offset) = primals, tangents
    y, mean, var, xc, inv, xhat = _batch_norm_forward(xs, scale, offset, ca, axis_name, epsilon)

    def e(v):  # the per-channel mean E[v]
        return _pmean(channel_mean(v, ca), axis_name)

    a = scale * inv
    d_mean = e(dx)
    d_y = add_channels(scale_channels(dx, a, ca) - scale_channels(xhat, a * e(xhat * dx) - d_scale, ca),
                       d_offset - a * d_mean, ca)
    return (y, mean, var), (d_y, d_mean, 2 * e(xc * dx))


def _values_per_channel(x, ca, unbiased: bool) -> int:
    """x's channel count, after refusing a batch with no values per channel (train=True's statistics),
    or with one where ``unbiased`` (``_check_unbiased``)."""
    c = x.shape[ca]
    if c and not x.size:
        raise ValueError(f"BatchNorm with train=True takes the batch's statistics per channel, and x of shape "
                         f"{tuple(x.shape)} has no values per channel: their mean would be 0/0 and the running "
                         "statistics NaN. Skip the empty batch, or apply with train=False")
    if unbiased:
        _check_unbiased(x.shape, c, "x of shape")
    return c


def _check_unbiased(shape, c: int, what: str) -> None:
    """The rule of ``unbiased_running_var`` without ``axis_name``: ``m / (m - 1)`` needs m >= 2 values
    per channel; checked at init (``what`` = "in_shape") and, as ``torch`` does, at a train apply
    ("x of shape")."""
    if numel(shape) // c < 2:
        raise ValueError(f"unbiased_running_var needs at least 2 values per channel, {what} {tuple(shape)} has 1")


def _unbiased_factor(xs, ca, axis_name):
    """``m / (m - 1)`` for m values per channel (counted over ``axis_name`` too): the factor that
    turns the biased variance into the unbiased one the running average keeps with
    ``unbiased_running_var``."""
    m = xs.size // xs.shape[ca]  # values per channel on this device
    if axis_name is not None:
        m = m * lax.psum(1, axis_name)
    return m / jnp.maximum(m - 1, 1)


def BatchNorm(*, momentum=0.9, epsilon=1e-5, axis_name=None, layout="NHWC", affine=True,
              unbiased_running_var=False, param_dtype=jnp.float32) -> Layer:
    """Batch normalisation per channel: ``y = (x - mean) / sqrt(var + epsilon) * scale + offset``.

    ``train=True`` normalises with the statistics of the batch (mean and *biased* variance
    over every axis but the channel one, m values per channel) and returns the state updated by
    ``running = momentum * running + (1 - momentum) * batch``; with ``unbiased_running_var``
    the variance that enters the running average is the unbiased ``var * m / (m - 1)``, as
    PyTorch keeps it (the batch is still normalised by the biased one; pytorch#60528,
    timm#815). ``train=False`` uses the running statistics and returns the state unchanged.
    An empty batch (no values per channel) is refused with ``train=True`` (ValueError), where its
    statistics would be 0/0 and the running ones NaN from then on; ``train=False`` takes it.
    With ``axis_name`` (inside ``pmap``/``shard_map``) the mean and then the variance around
    the global mean are averaged with ``lax.pmean`` (m counts the global batch), so with
    equal per-device batches they equal the statistics of the global batch. The train-mode
    derivative is written out (``_batch_norm_train``: the textbook gradient, two channel sums in
    the backward pass) and checked against autodiff of the plain formula in tests/test_norms.py.

    Porting from PyTorch (``torch.nn.BatchNorm2d`` documents ``x_new = (1 - momentum) * x
    + momentum * x_t``, default 0.1, running_var unbiased):

        PyTorch                          fcnn
        momentum=0.1 (default)           momentum=0.9 (default)
        momentum=p                       momentum=1 - p
        eps                              epsilon
        weight, bias                     params["scale"], params["offset"]
        running_mean, running_var        state["mean"], state["var"]
        running_var unbiased             unbiased_running_var=True (default False: biased)
        affine=False                     affine=False

    Args:
      momentum: in [0, 1]; weight of the old running statistics.
      epsilon: > 0, added to the variance.
      layout: where the channel axis is (module docstring): last for NHWC (and NWC, NDHWC),
        1 for NCHW (NCW, NCDHW); an (n, c) input uses the last axis.
      affine: learn the per-channel ``scale`` and ``offset``.
      unbiased_running_var: keep ``var * m / (m - 1)`` in the running variance (m >= 2: init, train apply).
    Params: {"scale": (c,) ones, "offset": (c,) zeros} ({} without affine).
    State: {"mean": (c,) zeros, "var": (c,) ones} in float32 (at least).
    """
    momentum = _checks.float_in_range(momentum, "momentum", 0, 1, closed_high=True)
    epsilon = _checks.positive_float(epsilon, "epsilon")
    if axis_name is not None and not isinstance(axis_name, (str, tuple)):
        raise TypeError(f"axis_name must be None, a str or a tuple of names, got {axis_name!r}")
    last = _channels_last(layout)
    affine = _checks.boolean(affine, "affine")
    unbiased = _checks.boolean(unbiased_running_var, "unbiased_running_var")
    param_dtype = check_param_dtype(param_dtype)
    stat_dtype = acc_dtype(param_dtype)
    ranks = (2,) + IMAGE_RANKS
    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        in_shape = _init_shape("BatchNorm", in_shape, ranks, seen)
        c = in_shape[_channel_axis(len(in_shape), last)]
        if unbiased and axis_name is None:
            _check_unbiased(in_shape, c, "in_shape")
        state = {"mean": jnp.zeros((c,), stat_dtype), "var": jnp.ones((c,), stat_dtype)}
        return in_shape, _affine_params(c, affine, param_dtype), state

    def apply(params, state, x, *, key=None, train=False):
        check_floating(x, "BatchNorm")
        _check_input("BatchNorm", x, jnp.shape(state["mean"])[0], last, ranks, seen)
        ca = _channel_axis(x.ndim, last)
        xs = x.astype(acc_dtype(x.dtype))
        if train:
            c = _values_per_channel(xs, ca, unbiased and axis_name is None)
            scale, offset = ((params["scale"].astype(xs.dtype), params["offset"].astype(xs.dtype)) if params
                             else (jnp.ones((c,), xs.dtype), jnp.zeros((c,), xs.dtype)))
            y, mean, var = _batch_norm_train(xs, scale, offset, ca, axis_name, epsilon)
            kept = var * _unbiased_factor(xs, ca, axis_name) if unbiased else var
            state = {"mean": momentum * state["mean"] + (1 - momentum) * mean.astype(stat_dtype),
                     "var": momentum * state["var"] + (1 - momentum) * kept.astype(stat_dtype)}
        else:
            mean, var = state["mean"].astype(xs.dtype), state["var"].astype(xs.dtype)
            y = _affine(params, scale_channels(add_channels(xs, -mean, ca), lax.rsqrt(var + epsilon), ca), ca, xs.dtype)
        return y.astype(x.dtype), state

    detail = f"m={momentum}" + (" unbiased" if unbiased else "")
    return describe(Layer(init, apply), LayerInfo("BatchNorm", "norm", detail, flops=lambda i, o: 4 * numel(o)))


# ----------------------------------------------------------------------------- per-example norms
class _Divides:
    """The rule GroupNorm's groups add to the input check: they divide the channels."""

    def __init__(self, groups):
        self.groups = groups
        self.rule = f"num_groups={groups} must divide the channels"

    def __call__(self, channels):
        return channels % self.groups == 0


def _group_norm(name, groups, epsilon, layout, affine, param_dtype, ranks, detail) -> Layer:
    """Statistics per example over (the channels of one group, every spatial axis); ``groups=None``:
    one group per channel (InstanceNorm)."""
    epsilon = _checks.positive_float(epsilon, "epsilon")
    last = _channels_last(layout)
    affine = _checks.boolean(affine, "affine")
    param_dtype = check_param_dtype(param_dtype)
    fits = None if groups in (None, 1) else _Divides(groups)
    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        in_shape = _init_shape(name, in_shape, ranks, seen)
        c = in_shape[_channel_axis(len(in_shape), last)]
        if fits is not None and not fits(c):
            raise ValueError(f"num_groups={groups} must divide the channels ({c}) of in_shape {in_shape}")
        return in_shape, _affine_params(c, affine, param_dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        check_floating(x, name)
        _check_input(name, x, _params_channels(params, state), last, ranks, seen, fits)
        ca = _channel_axis(x.ndim, last)
        c = x.shape[ca]
        g = c if groups is None else groups
        xs = x.astype(acc_dtype(x.dtype))
        # split the channel axis into (g, c/g): (n, *sp, g, c/g) channels-last, (n, g, c/g, *sp) first
        xg = jnp.reshape(xs, x.shape[:ca] + (g, c // g) + x.shape[ca + 1:])
        axes = tuple(a for a in range(1, xg.ndim) if a != ca)  # all but the batch and the group axis
        mean = jnp.mean(xg, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
        y = jnp.reshape((xg - mean) * lax.rsqrt(var + epsilon), x.shape)
        return _affine(params, y, ca, xs.dtype).astype(x.dtype), state

    return describe(Layer(init, apply), LayerInfo(name, "norm", detail, flops=lambda i, o: 5 * numel(o)))


def LayerNorm(*, epsilon=1e-5, layout="NHWC", affine=True, param_dtype=jnp.float32) -> Layer:
    """Layer normalisation (Ba et al. 2016): per example, statistics over every channel and
    spatial axis; on an (n, features) input over the features (``torch.nn.LayerNorm(features)``).

    The affine ``scale``/``offset`` are per channel, (c,) (= ``GroupNorm(1)``); PyTorch's
    ``nn.LayerNorm([c, h, w])`` learns one per element instead (equal at initialisation).
    Params: {"scale": (c,), "offset": (c,)} ({} without affine). State: {}.
    """
    return _group_norm("LayerNorm", 1, epsilon, layout, affine, param_dtype, (2,) + IMAGE_RANKS, "")


def GroupNorm(num_groups, *, epsilon=1e-5, layout="NHWC", affine=True, param_dtype=jnp.float32) -> Layer:
    """Group normalisation (Wu & He 2018; ``torch.nn.GroupNorm``): the c channels split into
    ``num_groups`` consecutive groups of c/num_groups; per example and group, statistics over
    the group's channels and every spatial axis; then a per-channel affine transform.

    Args:
      num_groups: a positive int that divides the channel count (checked at init).
    Params: {"scale": (c,), "offset": (c,)} ({} without affine). State: {}.
    """
    num_groups = _checks.positive_int(num_groups, "num_groups")
    return _group_norm("GroupNorm", num_groups, epsilon, layout, affine, param_dtype, (2,) + IMAGE_RANKS,
                       f"g={num_groups}")


def InstanceNorm(*, epsilon=1e-5, layout="NHWC", affine=True, param_dtype=jnp.float32) -> Layer:
    """Instance normalisation (Ulyanov et al. 2016): per example and channel, statistics over the
    spatial axes (= GroupNorm with one channel per group). Needs a spatial axis (rank 3-5).

    PyTorch's ``nn.InstanceNorm2d`` defaults to ``affine=False`` and no running statistics;
    fcnn's defaults to ``affine=True`` like the other norms and never keeps statistics.
    Params: {"scale": (c,), "offset": (c,)} ({} without affine). State: {}.
    """
    return _group_norm("InstanceNorm", None, epsilon, layout, affine, param_dtype, IMAGE_RANKS, "")
