"""Combinators: build one ``Layer`` out of several.

* ``serial(l0, l1, ...)``: ``y = l_{k-1}(... l1(l0(x)))``. Params and state are tuples with
  one entry per child. ``init`` splits its key into k keys (child i gets
  ``jax.random.split(key, k)[i]``), and so does ``apply`` when given a key, so every
  ``Dropout`` draws its own mask.
* ``residual(block, shortcut=None)``: ``y = block(x) + shortcut(x)`` (identity shortcut by
  default). Params/state: ``{"block": ..., "shortcut": ...}`` (``{}`` for the identity);
  keys: ``split(key, 2)`` -> (block, shortcut).
* ``branches(l0, l1, ..., merge="concat"|"sum")``: fan-out of ``x`` to every branch, then
  concatenation along the channel axis or elementwise sum (fan-in). Params/state: tuples;
  keys split as in ``serial``.
* ``skip_concat(block)``: ``y = concat(x, block(x))`` along the channel axis (a U-Net or DenseNet
  skip connection): ``branches(identity(), block, merge="concat")``, params/state ``({}, block's)``.

Output shapes flow through ``init`` without data; mismatched shapes raise ``ValueError``
at init. At apply (trace time), a child's ``InputShapeError`` gets the child's position
added as ``fcnn summary`` numbers it (serial/branches: the index; residual: "block" or
"shortcut"; a Dense right after a Flatten also gets a hint about the image size), paths
that disagree for this input (``residual``, ``branches``) raise one naming both shapes, and
a ``key`` that is neither None nor a PRNG key raises naming ``key``. Every ``init`` checks
``in_shape`` (``types.check_shape``), and every ``apply`` checks that ``params`` and ``state``
have init's structure at the top: one entry per child (``serial``, ``branches``), the keys
"block" and "shortcut" (``residual``); else ``ValueError`` naming them (zip would run fewer
layers, silently).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from fcnn import _checks, shapes
from fcnn.types import (InputShapeError, Layer, LayerInfo, at_position, check_key, check_shape, describe, init_context,
                        layer_info, numel, shape_text)

__all__ = ["serial", "residual", "branches", "identity", "skip_concat"]


def _check_layers(layers, what: str):
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{what} argument {i} must be a Layer (init, apply), got {type(layer).__name__}")


def _keys(key, n: int, who: str):
    key = check_key(key, who, optional=True)
    return [None] * n if key is None else list(jax.random.split(key, n))


def _what(tree) -> str:
    if isinstance(tree, (tuple, list)):
        return f"{len(tree)} {'entry' if len(tree) == 1 else 'entries'}"
    return f"a {type(tree).__name__}"


def _check_entries(params, state, n: int, who: str) -> None:
    """``params`` and ``state`` of a ``serial``/``branches`` of ``n`` layers: a tuple (or list) of
    ``n`` entries each, as init returns them."""
    for name, tree in (("params", params), ("state", state)):
        if not isinstance(tree, (tuple, list)) or len(tree) != n:
            raise ValueError(f"{who}: {name} must have one entry per layer ({n}, as init returns), got {_what(tree)}")


def _check_residual_trees(params, state) -> None:
    for name, tree in (("params", params), ("state", state)):
        if not isinstance(tree, Mapping) or "block" not in tree or "shortcut" not in tree:
            keys = sorted(map(str, tree)) if isinstance(tree, Mapping) else None
            got = f"keys {keys}" if keys is not None else f"a {type(tree).__name__}"
            raise ValueError(f"residual: {name} must be a dict with the keys 'block' and 'shortcut' (as init "
                             f"returns), got {got}")


_AFTER_FLATTEN = ("the Flatten before it makes h*w*c features, so an input of another height or width "
                  "than init's changes their count")


def serial(*layers: Layer) -> Layer:
    """Compose layers in order; see the module docstring for params, state and keys."""
    if not layers:
        raise ValueError("serial needs at least one layer")
    _check_layers(layers, "serial")
    n = len(layers)
    notes = [_AFTER_FLATTEN if i and layer_info(layers[i - 1]).name == "Flatten" else None for i in range(n)]

    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        seen["in"] = shape = check_shape(in_shape)
        params, states = [], []
        for layer, k in zip(layers, jax.random.split(check_key(key, "serial.init"), n)):
            shape, p, s = layer.init(k, shape)
            params.append(p)
            states.append(s)
        return shape, tuple(params), tuple(states)

    def apply(params, state, x, *, key=None, train=False):
        _check_entries(params, state, n, f"serial of {n} layers")
        new_states = []
        with init_context("serial", seen.get("in"), jnp.shape(x)):
            for i, (layer, p, s, k) in enumerate(zip(layers, params, state, _keys(key, n, "serial"))):
                with at_position(str(i), notes[i]):
                    x, s = layer.apply(p, s, x, key=k, train=train)
                new_states.append(s)
        return x, tuple(new_states)

    return describe(Layer(init, apply), LayerInfo("serial", "serial", children=tuple(layers)))


def residual(block: Layer, shortcut: Layer = None) -> Layer:
    """``y = block(x) + shortcut(x)``; ``shortcut=None`` is the identity.

    Raises ValueError at init unless both paths produce the same shape (for the identity:
    the block must keep the input shape; use a projection shortcut, e.g. a 1x1 stride-2
    ``Conv2D``, where it does not).
    """
    _check_layers((block,) if shortcut is None else (block, shortcut), "residual")

    def init(key, in_shape):
        in_shape = check_shape(in_shape)
        kb, ks = jax.random.split(check_key(key, "residual.init"))
        out, pb, sb = block.init(kb, in_shape)
        if shortcut is None:
            sc_out, ps, ss = in_shape, {}, {}
        else:
            sc_out, ps, ss = shortcut.init(ks, in_shape)
        if tuple(out) != tuple(sc_out):
            which = "the input shape (identity shortcut)" if shortcut is None else "the shortcut's output shape"
            raise ValueError(f"residual: the block's output shape {tuple(out)} must equal {which} "
                             f"{tuple(sc_out)} for in_shape {in_shape}")
        return tuple(out), {"block": pb, "shortcut": ps}, {"block": sb, "shortcut": ss}

    def apply(params, state, x, *, key=None, train=False):
        _check_residual_trees(params, state)
        kb, ks = _keys(key, 2, "residual")
        with at_position("block"):
            y, sb = block.apply(params["block"], state["block"], x, key=kb, train=train)
        if shortcut is None:
            r, ss = x, state["shortcut"]
        else:
            with at_position("shortcut"):
                r, ss = shortcut.apply(params["shortcut"], state["shortcut"], x, key=ks, train=train)
        if y.shape != r.shape:
            which = "the identity shortcut" if shortcut is None else "the shortcut"
            raise InputShapeError(f"residual: apply got inputs of shape {shape_text(x.shape)}, for which the block "
                                  f"gives {shape_text(y.shape)} but {which} gives {shape_text(r.shape)} (they "
                                  f"must be equal, as they were for init's in_shape)")
        return y + r, {"block": sb, "shortcut": ss}

    return describe(Layer(init, apply), LayerInfo("residual", "residual", "+ identity" if shortcut is None else
                                                  "+ projection", flops=lambda i, o: numel(o),
                                                  children=(block, shortcut)))


def branches(*layers: Layer, merge: str = "concat", layout: str = "NHWC") -> Layer:
    """Fan ``x`` out to every layer and merge the outputs.

    Args:
      layers: the branches, each applied to the same ``x``.
      merge: "concat" joins the outputs along the channel axis (channels-last: last; channels-first:
        axis 1 of a rank 3-5 output; a rank-2 output: last), so they must agree on every other axis
        (a U-Net skip: ``branches(identity, block)``); "sum" adds them, so their shapes must be equal.
      layout: which axis is the channel axis: any of ``shapes.ALL_LAYOUTS``, read only for
        channels-last or channels-first (the rank comes from the outputs, as in ``fcnn.norms``).
    """
    if not layers:
        raise ValueError("branches needs at least one layer")
    _check_layers(layers, "branches")
    merge = _checks.choice(merge, ("concat", "sum"), "merge")
    first = not shapes.is_channels_last(_checks.choice(layout, shapes.ALL_LAYOUTS, "layout"))
    n = len(layers)

    def axis(rank):
        return 1 if (first and rank >= 3) else rank - 1

    def merged(outs):
        first = outs[0]
        if merge == "sum":
            if any(o != first for o in outs):
                raise ValueError(f"branches(merge='sum'): every branch must produce the same shape, got {outs}")
            out = first
        else:
            a = axis(len(first))
            rest = [o[:a] + o[a + 1:] for o in outs]
            if any(len(o) != len(first) for o in outs) or any(r != rest[0] for r in rest):
                raise ValueError(f"branches(merge='concat'): branch outputs must agree on every axis but the "
                                 f"channel axis {a}, got {outs}")
            out = first[:a] + (sum(o[a] for o in outs),) + first[a + 1:]
        return out

    def init(key, in_shape):
        in_shape = check_shape(in_shape)
        outs, params, states = [], [], []
        for layer, k in zip(layers, jax.random.split(check_key(key, "branches.init"), n)):
            o, p, s = layer.init(k, in_shape)
            outs.append(tuple(o))
            params.append(p)
            states.append(s)
        return merged(outs), tuple(params), tuple(states)

    def apply(params, state, x, *, key=None, train=False):
        _check_entries(params, state, n, f"branches of {n} layers")
        ys, new_states = [], []
        for i, (layer, p, s, k) in enumerate(zip(layers, params, state, _keys(key, n, "branches"))):
            with at_position(str(i)):
                y, s = layer.apply(p, s, x, key=k, train=train)
            ys.append(y)
            new_states.append(s)
        try:
            merged([tuple(y.shape) for y in ys])
        except ValueError as err:
            raise InputShapeError(f"{err} for apply's inputs of shape {shape_text(x.shape)} (init's in_shape "
                                  f"gave agreeing shapes)") from None
        if merge == "sum":
            out = ys[0]
            for y in ys[1:]:
                out = out + y
        else:
            out = jnp.concatenate(ys, axis=axis(ys[0].ndim))
        return out, tuple(new_states)

    return describe(Layer(init, apply), LayerInfo("branches", "branches", merge, children=tuple(layers),
                                                  flops=lambda i, o: (n - 1) * numel(o) if merge == "sum" else 0))


def identity() -> Layer:
    """``y = x``: no params, no FLOPs (the pass-through path of ``skip_concat``)."""
    def init(key, in_shape):
        return check_shape(in_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return x, state

    return describe(Layer(init, apply), LayerInfo("identity", "reshape", flops=lambda i, o: 0))


def skip_concat(block: Layer, *, layout: str = "NHWC") -> Layer:
    """``y = concat(x, block(x))`` along the channel axis (``layout`` as in ``branches``): the skip
    connection of a U-Net level, whose ``block`` goes down and comes back up to x's spatial size."""
    _check_layers((block,), "skip_concat")
    return branches(identity(), block, merge="concat", layout=layout)
