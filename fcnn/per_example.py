"""Per-example gradients, their norms, clipping and DP-SGD (``vmap`` of ``grad``).

Each example is a batch of one:

    loss = model_loss(model)                     # loss(params, state, x (1, ...), y (1,)) -> ()
    g = per_example_grads(loss, params, state, x, y)   # params pytree, every leaf (n, *leaf.shape)
    norms = per_example_grad_norms(g)             # (n,) global L2 norm per example
    g_dp = dp_sgd_grad(loss, params, state, x, y, max_norm=1.0, noise_multiplier=1.1, key=k)

``model_loss`` runs the model in eval mode (``train=False``): a BatchNorm normalises with its
running statistics, because batch statistics of a batch of one are not the statistics the
model is trained with, and they would couple examples in a real batch.

16-bit gradients (bfloat16, float16) are squared, summed, scaled and noised in float32
(``dtypes.acc_dtype``): a float16 gradient of norm 346 squares to 120000, past float16's 65504.
The norms come back in that float32; clipped and DP-SGD gradients are rounded to each leaf's dtype
once, at the end.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from fcnn import _checks
from fcnn.dtypes import acc_dtype
from fcnn.losses import softmax_cross_entropy
from fcnn.types import Array, Layer, Params, State

__all__ = ["model_loss", "per_example_grads", "per_example_grad_norms", "clip_per_example", "dp_sgd_grad"]


def model_loss(model: Layer, loss_fn: Callable = softmax_cross_entropy) -> Callable:
    """``loss(params, state, x, y) -> ()``: ``loss_fn`` of the model's eval-mode logits."""
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a Layer, got {type(model).__name__}")

    def loss(params, state, x, y):
        logits, _ = model.apply(params, state, x, train=False)
        return loss_fn(logits, y)

    return loss


def _check_xy(x, y):
    if jnp.ndim(x) < 1 or jnp.ndim(y) < 1 or jnp.shape(x)[0] != jnp.shape(y)[0]:
        raise ValueError(f"x and y must share a leading example axis, got x {jnp.shape(x)} and y {jnp.shape(y)}")


def per_example_grads(loss_fn: Callable, params: Params, state: State, x: Array, y: Array) -> Params:
    """Gradient of ``loss_fn`` w.r.t. ``params`` for every example separately.

    Args:
      loss_fn: ``loss_fn(params, state, x, y) -> ()`` on a batch (``model_loss``).
      x: (n, ...) examples; each is passed as a batch of one (1, ...).
      y: (n, ...) labels.

    Returns:
      A pytree like ``params`` whose leaves have a leading axis n: leaf[i] is the gradient
      of ``loss_fn`` on example i alone.
    """
    _check_xy(x, y)

    def one(xi, yi):
        return jax.grad(loss_fn)(params, state, xi[None], yi[None])

    return jax.vmap(one)(x, y)


def per_example_grad_norms(grads: Params) -> Array:
    """(n,) global L2 norm of each example's gradient (over every leaf of the pytree), summed in
    ``acc_dtype`` (float32 for 16-bit leaves, so it does not overflow) and returned in it."""
    leaves = [jnp.asarray(g) for g in jax.tree.leaves(grads)]
    if not leaves:
        raise ValueError("grads must have at least one leaf")
    sq = [jnp.sum(jnp.square(_wide(g)), axis=tuple(range(1, g.ndim))) for g in leaves]  # (n,) each, n = 0 too
    return jnp.sqrt(sum(sq))


def _wide(g: Array) -> Array:
    """``g`` in the dtype fcnn accumulates it in (float32 for 16-bit floats)."""
    return g.astype(acc_dtype(g.dtype))


def _check_max_norm(max_norm):
    _checks.positive_float(max_norm, "max_norm")


def clip_per_example(grads: Params, max_norm: float) -> Params:
    """Scale each example's gradient to global norm at most ``max_norm``.

    ``g_i * min(1, max_norm / ||g_i||)``, written ``max_norm / max(||g_i||, max_norm)`` so a
    zero gradient stays zero without a division by zero. The norm and the product are computed in
    float32 for 16-bit leaves, and each leaf is returned in its own dtype.
    """
    _check_max_norm(max_norm)
    return _clip(grads, max_norm, wide=False)


def _clip(grads: Params, max_norm: float, *, wide: bool) -> Params:
    """``clip_per_example``, its leaves in ``acc_dtype`` (``wide``) or rounded back to their dtype."""
    norms = per_example_grad_norms(grads)
    factor = max_norm / jnp.maximum(norms, max_norm)  # (n,)

    def scale(g):
        g = jnp.asarray(g)
        out = _wide(g) * factor.reshape((-1,) + (1,) * (g.ndim - 1)).astype(acc_dtype(g.dtype))
        return out if wide else out.astype(g.dtype)

    return jax.tree.map(scale, grads)


def dp_sgd_grad(loss_fn: Callable, params: Params, state: State, x: Array, y: Array, *, max_norm: float,
                noise_multiplier: float = 0.0, key=None) -> Params:
    """DP-SGD gradient: clip every per-example gradient, sum, add noise, divide by n.

    ``(sum_i clip(g_i) + N(0, (noise_multiplier * max_norm)^2 I)) / n``; without noise
    (``noise_multiplier == 0``) it is the mean clipped gradient.

    Args:
      noise_multiplier: >= 0; > 0 needs ``key``.
      key: PRNG key for the noise (one normal draw per leaf from ``split(key, n_leaves)``).

    Returns:
      A pytree like ``params``, each leaf in its gradient's dtype; for 16-bit leaves the clipping,
      the sum over examples, the noise and the division are done in float32 and rounded once.
    """
    _check_max_norm(max_norm)
    _checks.non_negative_float(noise_multiplier, "noise_multiplier")
    if noise_multiplier > 0 and key is None:
        raise ValueError("key is required when noise_multiplier > 0")
    _check_xy(x, y)
    n = jnp.shape(x)[0]
    if n == 0:
        raise ValueError(f"x must hold at least one example: DP-SGD's gradient is a mean over them, got x {jnp.shape(x)}")
    grads = per_example_grads(loss_fn, params, state, x, y)
    dtypes = jax.tree.map(lambda g: g.dtype, grads)
    summed = jax.tree.map(lambda g: jnp.sum(g, axis=0), _clip(grads, max_norm, wide=True))  # in acc_dtype
    if noise_multiplier > 0:
        leaves, treedef = jax.tree.flatten(summed)
        keys = jax.random.split(key, len(leaves))
        std = float(noise_multiplier) * float(max_norm)
        leaves = [g + std * jax.random.normal(k, g.shape, g.dtype) for g, k in zip(leaves, keys)]
        summed = jax.tree.unflatten(treedef, leaves)
    return jax.tree.map(lambda g, d: (g / n).astype(d), summed, dtypes)
