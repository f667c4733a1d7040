"""Losses for classification, segmentation and regression (and ``accuracy``, today's batch metric;
metrics over a whole evaluation set are ``fcnn.metrics``).

Every loss maps a batch to a scalar *mean*:

    softmax_cross_entropy(logits, labels)     logits: (n, k); labels: (n,) ints or (n, k) one-hot
    pixelwise_cross_entropy(logits, labels)   logits: (n, ..., k); labels: (n, ...) ints; mean over
                                              the pixels whose label is not ``ignore_index``
    binary_cross_entropy_with_logits(z, t)    any shape; t in [0, 1]
    dice_loss(logits, targets)                (n, ..., k) logits; (n, ...) ints or (n, ..., k) probs
    mse(pred, target), l1(pred, target)       any shape, the same for both

The math, with ``p = softmax(z)``, ``p_j = exp(z_j) / sum_i exp(z_i)``:

    log p_j           = z_j - logsumexp(z)          (computed stably, never log(softmax))
    cross-entropy     = -sum_j t_j log p_j           t: one-hot (or smoothed) target
    label smoothing   : t = (1 - eps) * onehot(y) + eps / k
    MSE               = mean((pred - target)^2)          L1 = mean(|pred - target|)
    BCE with logits   = mean(max(z, 0) - z t + log(1 + exp(-|z|)))
                        (= -t log sigmoid(z) - (1 - t) log(1 - sigmoid(z)), never overflowing)
    soft Dice         = 1 - mean_c (2 sum(p_c t_c) + s) / (sum p_c + sum t_c + s),
                        p = softmax(z) over classes, sums over the batch and every pixel, s = smooth
    L2 penalty        = weight * sum_W ||W||^2      (kernels only; gradient 2 * weight * W)

The L2 penalty is added to the loss, so its gradient passes through the optimizer
(for Adam it is rescaled by the second-moment estimate). *Decoupled* weight decay
(AdamW, Loshchilov & Hutter) instead subtracts ``lr * wd * W`` after the
optimizer's rescaling; the two coincide only for plain SGD. Use ``l2_penalty``
(``fcnn train --l2``) for the former and ``make_optimizer("adamw", ...)`` for the latter.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from fcnn import _checks
from fcnn.dtypes import acc_dtype, half_float
from fcnn.types import Array, Params, is_kernel

__all__ = ["softmax_cross_entropy", "pixelwise_cross_entropy", "binary_cross_entropy_with_logits", "dice_loss",
           "mse", "l1", "l2_penalty", "accuracy", "softmax", "log_softmax"]


def _check_logits(logits) -> None:
    if jnp.ndim(logits) != 2:
        raise ValueError(f"logits must have shape (batch, classes), got shape {jnp.shape(logits)}")
    _check_classes(logits)


def _check_classes(logits) -> None:
    if jnp.shape(logits)[-1] < 1:
        raise ValueError(f"logits must hold at least one class on their last axis, got shape {jnp.shape(logits)}")


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
      labels: (n,) integer class indices, or (n, k) one-hot / probability targets. An index
        outside [0, k) is a zero target row (loss 0 for that row): it cannot be checked inside
        ``jit``; ``fcnn.tasks.check_labels`` and the tasks' checks test labels on the host.
      label_smoothing: eps in [0, 1); targets become ``(1 - eps) * t + eps / k``.

    Returns:
      Scalar mean over the batch, in the logits' dtype (float32 for bf16 logits).
    """
    label_smoothing = _checks.float_in_range(label_smoothing, "label_smoothing", 0, 1)
    _check_logits(logits)
    logits = _float(logits)
    t = _targets(logits, labels)  # (n, k)
    if label_smoothing:
        k = logits.shape[-1]
        t = (1.0 - label_smoothing) * t + label_smoothing / k
    lsm = log_softmax(logits)
    # a class with no target mass adds nothing, also where its logit is -inf (a masked class: 0 * -inf = nan)
    return -jnp.mean(jnp.sum(jnp.where(t != 0, t * lsm, 0), axis=-1))


def _check_same_shape(predictions, targets) -> None:
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(
            f"predictions and targets must have the same shape, got {jnp.shape(predictions)} and {jnp.shape(targets)}"
        )


def mse(predictions: Array, targets: Array) -> Array:
    """Mean squared error ``mean((pred - target)^2)`` over every element.

    Args:
      predictions: any shape.
      targets: the same shape as ``predictions``.
    """
    _check_same_shape(predictions, targets)
    return jnp.mean(jnp.square(jnp.asarray(predictions) - jnp.asarray(targets)))


def l1(predictions: Array, targets: Array) -> Array:
    """Mean absolute error ``mean(|pred - target|)`` over every element (same shapes, any shape)."""
    _check_same_shape(predictions, targets)
    return jnp.mean(jnp.abs(jnp.asarray(predictions) - jnp.asarray(targets)))


def binary_cross_entropy_with_logits(logits: Array, targets: Array) -> Array:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``targets`` in [0, 1], computed from the
    logits as ``max(z, 0) - z t + log1p(exp(-|z|))`` (finite for any z; no sigmoid is taken).

    Args:
      logits: any shape (one independent binary decision per element).
      targets: the same shape, probabilities in [0, 1] (0/1 labels as floats or ints).
    """
    _check_same_shape(logits, targets)
    z = _float(logits)
    t = jnp.asarray(targets).astype(z.dtype)
    return jnp.mean(jnp.maximum(z, 0) - z * t + jnp.log1p(jnp.exp(-jnp.abs(z))))


def _float(logits: Array) -> Array:
    """``logits`` as an array, bf16/f16 upcast to float32 (losses are reduced in at least float32)."""
    logits = jnp.asarray(logits)
    return logits.astype(acc_dtype(logits.dtype)) if half_float(logits.dtype) else logits


def _dense_labels(logits, labels, name="labels") -> None:
    """(n, ..., k) logits and (n, ...) integer labels, else an error naming ``name`` and both shapes."""
    if jnp.ndim(logits) < 2:
        raise ValueError(f"logits must have shape (batch, ..., classes), got shape {jnp.shape(logits)}")
    _check_classes(logits)
    if jnp.shape(labels) != jnp.shape(logits)[:-1]:
        raise ValueError(f"{name} must have shape (batch, ...) = logits' shape without the class axis "
                         f"{jnp.shape(logits)[:-1]}, got shape {jnp.shape(labels)}")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"{name} must be integer class indices, got dtype {jnp.result_type(labels)}")


def pixelwise_cross_entropy(logits: Array, labels: Array, *, ignore_index: Optional[int] = None) -> Array:
    """Softmax cross-entropy per pixel, averaged over the pixels whose label is not ``ignore_index``.

    ``-sum_{pixels p, label_p != ignore} log softmax(z_p)[label_p] / #{p: label_p != ignore}``
    (PyTorch's ``F.cross_entropy(..., ignore_index=i, reduction="mean")`` with class-last logits);
    0 when every pixel is ignored (PyTorch gives nan). On (n, k) logits and (n,) labels without
    ``ignore_index`` it equals ``softmax_cross_entropy``. Labels outside [0, k) other than
    ``ignore_index`` cannot be checked inside ``jit``; ``fcnn.tasks`` checks them on the host.

    Args:
      logits: (n, ..., k) unnormalised scores, class axis last (bf16 upcast to float32).
      labels: (n, ...) integer class indices.
      ignore_index: an int label whose pixels count neither in the sum nor in the mean, or None.
    """
    if ignore_index is not None and not _checks.is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    _dense_labels(logits, labels)
    z = _float(logits)
    labels = jnp.asarray(labels)
    keep = jnp.ones(labels.shape, z.dtype) if ignore_index is None else (labels != ignore_index).astype(z.dtype)
    safe = jnp.where(labels == ignore_index, 0, labels) if ignore_index is not None else labels
    picked = jnp.take_along_axis(log_softmax(z), safe[..., None], axis=-1)[..., 0]  # (n, ...)
    return -jnp.sum(picked * keep) / jnp.maximum(jnp.sum(keep), 1)


def dice_loss(logits: Array, targets: Array, *, smooth: float = 1.0) -> Array:
    """Soft Dice loss over classes (Milletari et al. 2016 with a smoothing term): with
    ``p = softmax(logits)`` and one-hot (or probability) targets ``t``, per class c
    ``dice_c = (2 sum(p_c t_c) + smooth) / (sum p_c + sum t_c + smooth)``, the sums running over the
    whole batch and every pixel; the loss is ``1 - mean_c dice_c`` (0 for a perfect prediction).

    Args:
      logits: (n, ..., k) scores, class axis last.
      targets: (n, ...) integer labels, or (n, ..., k) probabilities / one-hot.
      smooth: >= 0; keeps a class absent from both prediction and target at dice 1, not 0/0.
    """
    smooth = _checks.non_negative_float(smooth, "smooth")
    z = _float(logits)
    _check_classes(z)
    if jnp.shape(targets) == jnp.shape(z) and jnp.ndim(z) >= 2:
        t = jnp.asarray(targets).astype(z.dtype)
    else:
        _dense_labels(z, targets, "targets")
        t = jax.nn.one_hot(targets, z.shape[-1], dtype=z.dtype)
    p = softmax(z)
    axes = tuple(range(z.ndim - 1))  # all but the class axis
    dice = (2 * jnp.sum(p * t, axis=axes) + smooth) / (jnp.sum(p, axis=axes) + jnp.sum(t, axis=axes) + smooth)
    return 1 - jnp.mean(dice)


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
