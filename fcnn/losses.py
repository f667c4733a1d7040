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

Dtypes: every loss computes in ``dtypes.acc_dtype`` of its inputs: float32 for integer, bool and
16-bit float inputs, float64 where an input is float64 (so ``mse`` of uint8 images is not taken
modulo 256, and a float16 error of 300 squares to 90000, not inf). The result has that dtype.

Integer class labels (``softmax_cross_entropy``'s (n,) labels, ``pixelwise_cross_entropy``'s) must be
in [0, k) (or ``ignore_index``). Concrete labels are checked before computing (``ValueError`` naming
``labels``); traced ones (under ``jit``, ``grad``, ``vmap``) cannot be, and a label outside the rule
makes the loss nan, never a value that looks right.

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
from fcnn.dtypes import acc_dtype
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


def _check_label_range(labels, k: int, ignore_index: Optional[int] = None, name: str = "labels") -> None:
    """Concrete integer labels in [0, k) (or ``ignore_index``), else ``ValueError`` naming ``name``;
    traced labels are left to ``_nan_outside``."""
    if isinstance(labels, jax.core.Tracer):
        return
    found = _checks.labels_outside(labels, k, ignore_index)
    if found:
        extra = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
        raise ValueError(f"{name} must be class indices in [0, {k}){extra}; got {found[0]} at index {found[1]} "
                         f"({found[2]} such labels)")


def _nan_outside(values: Array, labels, k: int, ignore_index: Optional[int] = None) -> Array:
    """``values`` (shaped like ``labels``, or with a trailing class axis), nan where a traced label is
    outside [0, k) and not ``ignore_index``, so the loss is nan. Elementwise, so XLA fuses it into the
    loss's own loops: an ``any`` over the labels was a pass of its own, 1-2% of LeNet-5's train step
    (docs/perf_notes.md item 70). Concrete labels were refused by ``_check_label_range`` already."""
    if not isinstance(labels, jax.core.Tracer):
        return values
    ok = _checks.labels_kept(labels, k, ignore_index)
    return jnp.where(ok.reshape(ok.shape + (1,) * (jnp.ndim(values) - ok.ndim)), values, jnp.nan)


def _targets(logits: Array, labels: Array) -> Array:
    """Integer (n,) or one-hot / probability (n, k) labels -> (n, k) float targets."""
    n, k = logits.shape
    if jnp.shape(labels) == (n,):
        if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
            raise TypeError(f"labels of shape (batch,) must be integers, got dtype {jnp.result_type(labels)}")
        _check_label_range(labels, k)
        return _nan_outside(jax.nn.one_hot(labels, k, dtype=logits.dtype), labels, k)
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
      logits: (n, k) unnormalised scores. 16-bit and integer logits are upcast to float32 first.
      labels: (n,) integer class indices in [0, k), or (n, k) one-hot / probability targets. An
        index outside [0, k) is a ``ValueError`` when the labels are concrete, and makes the loss
        nan under tracing (``jit``, ``grad``, ``vmap``), where it cannot be raised.
      label_smoothing: eps in [0, 1); targets become ``(1 - eps) * t + eps / k``.

    Returns:
      Scalar mean over the batch, in ``acc_dtype`` of the logits (float32 for 16-bit or int logits).
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


def _difference(predictions: Array, targets: Array) -> Array:
    """``pred - target`` in ``acc_dtype`` of both (float32 for ints, bools and 16-bit floats; float64
    if either is float64): no integer wrap-around or overflow, no float16 overflow of the square."""
    _check_same_shape(predictions, targets)
    dtype = acc_dtype(jnp.result_type(predictions, targets))  # a Python scalar takes the other's dtype
    return jnp.asarray(predictions).astype(dtype) - jnp.asarray(targets).astype(dtype)


def mse(predictions: Array, targets: Array) -> Array:
    """Mean squared error ``mean((pred - target)^2)`` over every element.

    Args:
      predictions: any shape, any real dtype.
      targets: the same shape as ``predictions``.

    Returns:
      A scalar in float32 for integer, bool and 16-bit float inputs (the difference is taken in
      float32: uint8 0 vs 255 gives 65025), float64 if either input is float64.
    """
    return jnp.mean(jnp.square(_difference(predictions, targets)))


def l1(predictions: Array, targets: Array) -> Array:
    """Mean absolute error ``mean(|pred - target|)`` over every element (same shapes, any shape); the
    difference and the result in float32, or float64 if either input is float64 (as ``mse``)."""
    return jnp.mean(jnp.abs(_difference(predictions, targets)))


def binary_cross_entropy_with_logits(logits: Array, targets: Array) -> Array:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``targets`` in [0, 1], computed from the
    logits as ``max(z, 0) - z t + log1p(exp(-|z|))`` (finite for any z; no sigmoid is taken).

    Args:
      logits: any shape (one independent binary decision per element); integer and 16-bit logits
        are converted to float32 first (as every loss here), so float targets are never truncated.
      targets: the same shape, probabilities in [0, 1] (0/1 labels as floats or ints).

    Returns:
      A scalar in ``acc_dtype`` of the logits (float32, or float64 for float64 logits).
    """
    _check_same_shape(logits, targets)
    z = _float(logits)
    t = jnp.asarray(targets).astype(z.dtype)
    return jnp.mean(jnp.maximum(z, 0) - z * t + jnp.log1p(jnp.exp(-jnp.abs(z))))


def _float(logits: Array) -> Array:
    """``logits`` as a float array in ``acc_dtype``: ints, bools, bf16 and f16 become float32 (losses
    compute and reduce in at least float32); float32 and float64 stay as they are."""
    logits = jnp.asarray(logits)
    return logits.astype(acc_dtype(logits.dtype))


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
    ``ignore_index`` it equals ``softmax_cross_entropy``, also on bad labels: a label outside
    [0, k) other than ``ignore_index`` is a ``ValueError`` when the labels are concrete, and makes
    the loss nan under tracing (``jit``, ``grad``, ``vmap``; ``fcnn.tasks`` checks
    them on the host).

    Args:
      logits: (n, ..., k) unnormalised scores, class axis last (16-bit and ints upcast to float32).
      labels: (n, ...) integer class indices in [0, k), or ``ignore_index``.
      ignore_index: an int label whose pixels count neither in the sum nor in the mean, or None.
    """
    if ignore_index is not None and not _checks.is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    _dense_labels(logits, labels)
    k = jnp.shape(logits)[-1]
    _check_label_range(labels, k, ignore_index)
    z, y = _float(logits), jnp.asarray(labels)
    kept = jnp.ones(y.shape, bool) if ignore_index is None else y != ignore_index
    safe = jnp.where(_checks.labels_kept(y, k), y, 0)  # in range: never wrapped (-1) nor nan-filled
    picked = jnp.take_along_axis(log_softmax(z), safe[..., None], axis=-1)[..., 0]  # (n, ...)
    picked = _nan_outside(picked, labels, k, ignore_index)
    # where, not a product: an ignored pixel whose stand-in class 0 has logit -inf would give 0 * -inf = nan
    return -jnp.sum(jnp.where(kept, picked, 0)) / jnp.maximum(jnp.sum(kept, dtype=z.dtype), 1)


def dice_loss(logits: Array, targets: Array, *, smooth: float = 1.0) -> Array:
    """Soft Dice loss over classes (Milletari et al. 2016 with a smoothing term): with
    ``p = softmax(logits)`` and one-hot (or probability) targets ``t``, per class c
    ``dice_c = (2 sum(p_c t_c) + smooth) / (sum p_c + sum t_c + smooth)``, the sums running over the
    whole batch and every pixel; the loss is ``1 - mean_c dice_c`` (0 for a perfect prediction).

    Args:
      logits: (n, ..., k) scores, class axis last.
      targets: (n, ...) integer labels in [0, k) (outside it: ``ValueError`` when concrete, a nan loss
        under tracing, as the cross-entropies), or (n, ..., k) probabilities / one-hot.
      smooth: > 0 (a positive float); keeps a class absent from both prediction and target at
        dice 1, not 0/0. 0 is refused: softmax probabilities underflow to 0 in floating point, so
        without it such a class gives nan (mathematically p_c > 0, but not in float32).
    """
    smooth = _checks.positive_float(smooth, "smooth")
    z = _float(logits)
    _check_classes(z)
    if jnp.shape(targets) == jnp.shape(z) and jnp.ndim(z) >= 2:
        t = jnp.asarray(targets).astype(z.dtype)
    else:
        _dense_labels(z, targets, "targets")
        _check_label_range(targets, z.shape[-1], name="targets")
        t = _nan_outside(jax.nn.one_hot(targets, z.shape[-1], dtype=z.dtype), targets, z.shape[-1])
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
