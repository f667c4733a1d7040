"""Losses and metrics for classification and regression.

Every loss maps a batch to a scalar *mean* over the batch:

    loss_fn(logits, labels) -> ()      logits: (n, k); labels: (n,) ints or (n, k) one-hot

The math, with ``p = softmax(z)``, ``p_j = exp(z_j) / sum_i exp(z_i)``:

    log p_j           = z_j - logsumexp(z)          (computed stably, never log(softmax))
    cross-entropy     = -sum_j t_j log p_j           t: one-hot (or smoothed) target
    label smoothing   : t = (1 - eps) * onehot(y) + eps / k
    MSE               = mean((pred - target)^2)
    L2 penalty        = weight * sum_W ||W||^2      (kernels only; gradient 2 * weight * W)

The L2 penalty is added to the loss, so its gradient passes through the optimizer
(for Adam it is rescaled by the second-moment estimate). *Decoupled* weight decay
(AdamW, Loshchilov & Hutter) instead subtracts ``lr * wd * W`` after the
optimizer's rescaling; the two coincide only for plain SGD. Use ``l2_penalty``
(``fcnn train --l2``) for the former and ``make_optimizer("adamw", ...)`` for the latter.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fcnn import _checks
from fcnn.types import Array, Params, is_kernel

__all__ = ["softmax_cross_entropy", "mse", "l2_penalty", "accuracy", "softmax", "log_softmax"]


def _check_logits(logits) -> None:
    if jnp.ndim(logits) != 2:
        raise ValueError(f"logits must have shape (batch, classes), got shape {jnp.shape(logits)}")


def _targets(logits: Array, labels: Array) -> Array:
    """Integer (n,) or one-hot / probability (n, k) labels -> (n, k) float targets."""
    n, k = logits.shape
    if jnp.shape(labels) == (n,):
        if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
            raise TypeError(f"labels of shape (batch,) must be integers, got dtype {jnp.result_type(labels)}")
        return jax.nn.one_hot(labels, k, dtype=logits.dtype)
    if jnp.shape(labels) == (n, k):
        return jnp.asarray(labels).astype(logits.dtype)
    raise ValueError(
        f"labels must have shape (batch,) of class indices or (batch, classes) one-hot, "
        f"matching logits {tuple(logits.shape)}; got shape {jnp.shape(labels)}"
    )


def log_softmax(logits: Array) -> Array:
    """``z - logsumexp(z)`` over the last axis. logits: (..., k) -> (..., k)."""
    return jax.nn.log_softmax(logits, axis=-1)


def softmax(logits: Array) -> Array:
    """Class probabilities ``exp(z_j) / sum_i exp(z_i)`` over the last axis. (..., k) -> (..., k)."""
    return jax.nn.softmax(logits, axis=-1)


def softmax_cross_entropy(logits: Array, labels: Array, *, label_smoothing: float = 0.0) -> Array:
    """Mean softmax cross-entropy ``-sum_j t_j log softmax(z)_j``.

    Args:
      logits: (n, k) unnormalised scores. bf16 logits are upcast to float32 first.
      labels: (n,) integer class indices, or (n, k) one-hot / probability targets.
      label_smoothing: eps in [0, 1); targets become ``(1 - eps) * t + eps / k``.

    Returns:
      Scalar mean over the batch, in the logits' dtype (float32 for bf16 logits).
    """
    label_smoothing = _checks.float_in_range(label_smoothing, "label_smoothing", 0, 1)
    _check_logits(logits)
    logits = jnp.asarray(logits)
    if logits.dtype in (jnp.bfloat16, jnp.float16):
        logits = logits.astype(jnp.float32)
    t = _targets(logits, labels)  # (n, k)
    if label_smoothing:
        k = logits.shape[-1]
        t = (1.0 - label_smoothing) * t + label_smoothing / k
    return -jnp.mean(jnp.sum(t * log_softmax(logits), axis=-1))


def mse(predictions: Array, targets: Array) -> Array:
    """Mean squared error ``mean((pred - target)^2)`` over every element.

    Args:
      predictions: any shape.
      targets: the same shape as ``predictions``.
    """
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(
            f"predictions and targets must have the same shape, got {jnp.shape(predictions)} and {jnp.shape(targets)}"
        )
    return jnp.mean(jnp.square(jnp.asarray(predictions) - jnp.asarray(targets)))


def l2_penalty(params: Params, weight: float, *, include_biases: bool = False) -> Array:
    """``weight * sum ||W||^2`` over the weights of a parameter pytree.

    Weights are the leaves ``types.is_kernel`` accepts, ``ndim >= 2`` (conv kernels, dense
    matrices). Leaves with ``ndim <= 1`` (biases, BatchNorm scale/offset) are skipped unless
    ``include_biases``.
    Note there is no factor 1/2: the gradient is ``2 * weight * W``. This is L2
    regularisation of the loss, not decoupled weight decay (see the module docstring).

    Args:
      params: a pytree of arrays.
      weight: the coefficient, >= 0.

    Returns:
      A float32 scalar (0.0 when ``weight == 0``).
    """
    weight = _checks.non_negative_float(weight, "weight")
    include_biases = _checks.boolean(include_biases, "include_biases")
    leaves = [p for p in jax.tree.leaves(params) if include_biases or is_kernel(p)]
    total = jnp.zeros((), jnp.float32)
    for p in leaves:
        total = total + jnp.sum(jnp.square(jnp.asarray(p).astype(jnp.float32)))
    return weight * total


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of rows whose arg-max matches the label.

    Args:
      logits: (n, k) scores (or probabilities).
      labels: (n,) integer class indices or (n, k) one-hot targets (arg-max taken).

    Returns:
      A float32 scalar in [0, 1].
    """
    _check_logits(logits)
    if jnp.shape(labels) == jnp.shape(logits):
        labels = jnp.argmax(labels, axis=-1)
    elif jnp.shape(labels) != jnp.shape(logits)[:1]:
        raise ValueError(
            f"labels must have shape (batch,) or (batch, classes) matching logits {jnp.shape(logits)}, "
            f"got shape {jnp.shape(labels)}"
        )
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
