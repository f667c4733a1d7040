"""The layer contract, the layer metadata ``summary`` reads, and the pytree aliases.

The layer contract (stated once, here)::

    init(key, in_shape) -> (out_shape, params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, new_state)

* ``init`` needs only a shape (a tuple of positive ints, batch dimension included, e.g.
  ``(n, h, w, c)``; ``check_shape`` enforces it), never data, and returns the output
  shape, so a whole model's shapes are known before any array exists.
* ``apply`` always returns ``(y, state)``; stateless layers pass ``state`` through (an
  empty dict). Params and state are separate pytrees, so ``jax.grad`` differentiates
  params only.
* ``key`` and ``train`` are keyword-only. Combinators split the key between their
  children. Ops and layers never call ``jit``.
* Kernels (conv ``w``, dense ``w``) are the params leaves with ``ndim >= 2``; biases and
  norm scales/offsets have ``ndim <= 1``. ``is_kernel`` is that rule, used by the L2
  penalty (``losses.l2_penalty``) and by AdamW's decay mask (``optim``).

Layer metadata: a ``Layer`` is a bare ``(init, apply)`` pair, so what a layer *is* (its
name, kernel, stride, FLOPs, children) lives in a side table: ``describe(layer,
LayerInfo(...))`` records it in a ``weakref.WeakKeyDictionary`` keyed by ``layer.init``
(each constructor call makes a fresh ``init`` closure, so the key is unique per layer and
the entry disappears with the layer). ``layer_info(layer)`` reads it back; a layer built
by hand has no entry and reads as ``LayerInfo("?", "unknown")``.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from fcnn import _checks

__all__ = ["Array", "Shape", "Params", "State", "PRNGKey", "InitFn", "ApplyFn", "Layer", "LayerInfo",
           "describe", "layer_info", "numel", "check_shape", "is_kernel", "kernel_mask"]

Array = jax.Array
Shape = Tuple[int, ...]
Params = Any  # a pytree of arrays (dicts of arrays for fcnn's own layers)
State = Any  # a pytree of arrays that is not differentiated (e.g. BatchNorm stats)
PRNGKey = jax.Array

InitFn = Callable[[PRNGKey, Shape], Tuple[Shape, Params, State]]
ApplyFn = Callable[..., Tuple[Array, State]]


class Layer(NamedTuple):
    """A layer is a pure ``(init, apply)`` pair; see the module docstring."""

    init: InitFn
    apply: ApplyFn


def check_shape(in_shape, name: str = "in_shape") -> Shape:
    """``in_shape`` as a tuple of Python ints, else ``ValueError``: every entry a positive int."""
    if not isinstance(in_shape, (tuple, list)) or not all(_checks.is_int(d) and d > 0 for d in in_shape):
        raise ValueError(f"{name} must be a tuple of positive ints (batch included), got {in_shape!r}")
    return tuple(int(d) for d in in_shape)


def numel(shape: Sequence[int]) -> int:
    """Number of elements of an array of ``shape`` (1 for ``()``)."""
    return math.prod(int(s) for s in shape)


def is_kernel(leaf) -> bool:
    """True for a params leaf with ``ndim >= 2`` (a conv kernel or dense matrix), False for biases."""
    return jnp.ndim(leaf) >= 2


def kernel_mask(params: Params) -> Params:
    """The pytree of ``params`` with ``is_kernel`` at every leaf (an optax mask)."""
    return jax.tree.map(is_kernel, params)


# ----------------------------------------------------------------------------- layer metadata
RFFn = Callable[[Shape], Tuple[int, int, int]]  # in_shape -> (kernel, stride, dilation) along H
FlopsFn = Callable[[Shape, Shape], int]  # (in_shape, out_shape) -> FLOPs


class LayerInfo(NamedTuple):
    """What ``summary`` knows about a layer.

    name: display name ("Conv2D"). kind: "conv", "dense", "pool", "activation", "norm",
    "dropout", "reshape", "lambda", "serial", "residual" or "branches".
    detail: short hyperparameter text ("6@5x5 SAME"). rf: in_shape -> (kernel, stride,
    dilation) along H, None for pointwise layers. flops: (in_shape, out_shape) -> int.
    children: sub-layers of a combinator (residual: (block, shortcut-or-None)).
    """

    name: str
    kind: str
    detail: str = ""
    rf: Optional[RFFn] = None
    flops: Optional[FlopsFn] = None
    children: Tuple[Optional[Layer], ...] = ()


_INFO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def describe(layer: Layer, info: LayerInfo) -> Layer:
    """Record ``info`` for ``layer`` and return the layer unchanged."""
    _INFO[layer.init] = info
    return layer


def layer_info(layer: Layer) -> LayerInfo:
    """The recorded info, or an anonymous entry for a layer built by hand."""
    return _INFO.get(layer.init, LayerInfo("?", "unknown"))
