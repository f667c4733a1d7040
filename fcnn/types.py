"""Types shared across fcnn: the layer contract and pytree aliases.

The layer contract (stated once, here):

    init(key, in_shape) -> (out_shape, params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, new_state)

* ``init`` needs only a shape (a tuple of ints, batch dimension included, e.g.
  ``(n, h, w, c)``), never data, and returns the output shape, so a whole
  model's shapes are known before any array exists.
* ``apply`` always returns ``(y, state)``; stateless layers pass ``state``
  through (an empty dict). Params and state are separate pytrees, so
  ``jax.grad`` differentiates params only.
* ``key`` and ``train`` are keyword-only. Combinators split the key between
  their children. Ops and layers never call ``jit``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Tuple

import jax

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
