"""Per-channel sums and broadcasts: the pair every bias, BatchNorm and affine norm is built from.

``channel_sum(x, axis)`` adds x over every axis but the channel ``axis``, giving (c,);
``add_channels(x, v, axis)`` adds a (c,) vector along it and ``scale_channels`` multiplies by one.
The sum is the adjoint of the broadcast: a bias gradient is ``channel_sum(dZ)``, BatchNorm's
statistics and their gradients are channel sums.

On XLA:CPU these are written as matrix products with a vector of ones. XLA:CPU runs a reduction
over the leading axes of a channels-last array (a column reduction) an order of magnitude slower
than the same sum as a matrix-vector product: (16, 32, 32, 64) float32 took 0.69 ms as
``jnp.sum(axis=(0, 1, 2))`` and 0.084 ms as ``ones @ x`` (``experiments/channels_ab.py``,
docs/perf_notes.md item 31). The
broadcast is an outer product with ones for the same reason: JAX differentiates it into the sum
as a matrix product, where ``x + v`` would differentiate into the slow reduction. Both are plain
linear JAX operations, so derivatives of every order work. Values are those of ``jnp.sum`` and of
``x + v`` up to the order of the additions (float rounding). Other backends (GPU, TPU), and
arrays with fewer than ``MIN_CHANNELS`` channels or ``MIN_SIZE`` elements, get ``jnp.sum`` and
ordinary broadcasting.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fcnn.dtypes import acc_dtype

__all__ = ["channel_sum", "channel_mean", "add_channels", "scale_channels", "uses_matmul"]


MIN_CHANNELS = 8  # the float32 lanes of one AVX2 vector: a narrower channels-last minor axis vectorises poorly
MIN_SIZE = 32768  # smaller arrays: jnp.sum and broadcasting (the sum takes microseconds either way)


def uses_matmul(dtype, channels: int, size: int) -> bool:
    """Whether channel sums and broadcasts are written as matrix products for an array of this
    dtype, channel count and element count: on XLA:CPU, for floating dtypes, at least
    ``MIN_CHANNELS`` channels and ``MIN_SIZE`` elements (docs/perf_notes.md item 31). With 6
    channels ``ones @ x`` took 2.3x the time of ``jnp.sum`` ((64, 28, 28, 6)), with 16 channels
    0.15x. Below 8192 elements both took the same 8 us, at 32768 0.29x (8 vs 29 us); a matrix product
    costs compile time (a BatchNorm gradient compiled in 0.30 s instead of 0.14 s at (2, 6, 6, 8)),
    which small arrays do not earn back. Decided at trace time from ``jax.default_backend()``."""
    return (channels >= MIN_CHANNELS and size >= MIN_SIZE and jnp.issubdtype(dtype, jnp.floating)
            and jax.default_backend() == "cpu")


def _split(shape, axis):
    """(before, c, after): the element counts before the channel axis, of it, and after it."""
    axis = axis % len(shape)
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def channel_sum(x, axis: int = -1):
    """Sum of ``x`` over every axis but ``axis``: (..., c, ...) -> (c,), in x's dtype.

    Args:
      x: an array with at least one axis.
      axis: the channel axis (-1 for channels-last, 1 for channels-first).
    Returns:
      (c,) sums, accumulated in float32 for narrower floats (as ``jnp.sum`` does).
    """
    x = jnp.asarray(x)
    if not uses_matmul(x.dtype, x.shape[axis], x.size):
        axis = axis % x.ndim
        return jnp.sum(x, axis=tuple(a for a in range(x.ndim) if a != axis))
    before, c, after = _split(x.shape, axis)
    acc = acc_dtype(x.dtype)
    s = jnp.reshape(x, (before, c * after))
    if before > 1:  # (c * after,): the leading axes summed as ones @ x
        s = jnp.matmul(jnp.ones((before,), x.dtype), s, preferred_element_type=acc)
    s = jnp.reshape(s, (c, after))
    if after > 1:  # (c,): the trailing axes summed as x @ ones
        s = jnp.matmul(s, jnp.ones((after,), s.dtype), preferred_element_type=acc)
    return jnp.reshape(s, (c,)).astype(x.dtype)


def channel_mean(x, axis: int = -1):
    """Mean of ``x`` over every axis but ``axis`` (``channel_sum / count``), in x's dtype."""
    x = jnp.asarray(x)
    return channel_sum(x, axis) / (x.size // x.shape[axis])


def _broadcast(v, shape, axis):
    """(c,) ``v`` broadcast to ``shape`` along ``axis``; on XLA:CPU an outer product with ones, so
    that its derivative with respect to v is a matrix product (``channel_sum``), not a reduction."""
    if not uses_matmul(v.dtype, shape[axis], math.prod(shape)):
        bshape = [1] * len(shape)
        bshape[axis % len(shape)] = shape[axis]
        return jnp.reshape(v, bshape)  # broadcasting does the rest
    before, c, after = _split(shape, axis)
    b = jnp.matmul(jnp.reshape(v, (c, 1)), jnp.ones((1, after), v.dtype)) if after > 1 else v  # (c, after)
    if before > 1:  # (before, c * after)
        b = jnp.matmul(jnp.ones((before, 1), v.dtype), jnp.reshape(b, (1, c * after)))
    return jnp.reshape(b, shape)


def _check(x, v, axis, name):
    if jnp.ndim(v) != 1 or jnp.shape(v)[0] != jnp.shape(x)[axis]:
        raise ValueError(f"{name}: expected a ({jnp.shape(x)[axis]},) vector for axis {axis} of x "
                         f"{tuple(jnp.shape(x))}, got shape {tuple(jnp.shape(v))}")


def add_channels(x, v, axis: int = -1):
    """``x + v`` with the (c,) vector ``v`` broadcast along the channel ``axis`` (a bias add).

    Its gradient with respect to v is ``channel_sum`` of the output gradient. v is cast to x's dtype.
    """
    x = jnp.asarray(x)
    v = jnp.asarray(v, x.dtype)
    _check(x, v, axis, "add_channels")
    return x + _broadcast(v, x.shape, axis)


def scale_channels(x, v, axis: int = -1):
    """``x * v`` with the (c,) vector ``v`` broadcast along the channel ``axis`` (a per-channel scale).

    Its gradient with respect to v is ``channel_sum(dY * x)``. v is cast to x's dtype.
    """
    x = jnp.asarray(x)
    v = jnp.asarray(v, x.dtype)
    _check(x, v, axis, "scale_channels")
    return x * _broadcast(v, x.shape, axis)
