"""Activation functions as layers, and ``Lambda`` for any pure function.

Each constructor returns a stateless, parameter-free ``Layer``: ``init`` returns the
input shape unchanged (``Lambda``: the shape ``jax.eval_shape`` finds), after tracing the
function on it (a function that fails on that shape, or an activation that changes it, is
refused there, naming the layer), ``{}`` params
and ``{}`` state; ``apply`` computes ``A = g(Z)`` elementwise (softmax: along
``axis``) in the input's dtype. Summary FLOPs count one per output element (a
convention: transcendental functions cost more).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from fcnn import _checks
from fcnn.types import Layer, LayerInfo, check_shape, describe, numel

__all__ = ["Activation", "Lambda", "Relu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Gelu",
           "Elu", "LeakyRelu", "Silu", "Softplus"]


def Activation(fn: Callable, *, name: str = "Activation") -> Layer:
    """A layer applying the elementwise (shape-preserving) function ``fn`` to ``x`` of any shape.

    Args:
      fn: ``x -> y`` with ``y.shape == x.shape``; must be a pure JAX function.
      name: shown by ``summary``.
    """
    _checks.function(fn, "fn")

    def init(key, in_shape):
        in_shape = check_shape(in_shape)
        out_shape = _traced_shape(fn, in_shape, name)
        if out_shape != tuple(in_shape):
            raise ValueError(f"{name}: fn must keep the shape of its input (an elementwise activation), but maps "
                             f"{tuple(in_shape)} to {out_shape}; use Lambda for a function that changes it")
        return in_shape, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return describe(Layer(init, apply), LayerInfo(name, "activation", flops=lambda i, o: numel(o)))


def _traced_shape(fn: Callable, in_shape, name: str) -> tuple:
    """The shape of ``fn``'s output on a float32 input of ``in_shape`` (``jax.eval_shape``: no
    computation), so that a function that cannot take that input fails at init, naming the layer."""
    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(tuple(in_shape), jnp.float32))
    except Exception as e:  # noqa: BLE001 - any failure of the user's function is reported as one
        raise ValueError(f"{name}: its function fails on an input of shape {tuple(in_shape)}: "
                         f"{type(e).__name__}: {e}") from e
    if not hasattr(out, "shape"):
        raise ValueError(f"{name}: its function must return one array, got {type(out).__name__}")
    return tuple(out.shape)


def Lambda(fn: Callable, *, name: str = "Lambda") -> Layer:
    """A parameter-free layer applying any pure function ``fn: x -> y``.

    The output shape comes from ``jax.eval_shape(fn, ...)`` on a float32 input at init time,
    so a shape error in ``fn`` surfaces at init.
    """
    _checks.function(fn, "fn")

    def init(key, in_shape):
        return _traced_shape(fn, check_shape(in_shape), name), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return describe(Layer(init, apply), LayerInfo(name, "lambda", flops=lambda i, o: numel(o)))


def _check_axis(axis):
    if not _checks.is_int(axis):
        raise TypeError(f"axis must be an int, got {axis!r}")
    return int(axis)


def _number(value, name: str) -> float:
    """A finite real number (a nan or inf coefficient would turn every negative input into nan/inf)."""
    if not _checks.is_real(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return _checks.finite_float(value, name)


def relu(x):
    """``max(x, 0)`` written as the select ``where(x <= 0, 0, x)``.

    Values are ``jax.nn.relu``'s (NaN stays NaN, as ``max`` propagates it); the derivative is 1
    where x > 0 and 0 where x <= 0 (at x = 0 too, as jax.nn.relu's); at a NaN input it passes the
    cotangent, where jax.nn.relu's gives 0. ResNet-18's CPU train step ran 0.965-0.98x the time
    of the same step with jax.nn.relu, interleaved, in five pairs; LeNet-5 and the VGG net
    measured the same (docs/perf_notes.md, item 40).
    """
    return jnp.where(x <= 0, jnp.zeros_like(x), x)


def Relu() -> Layer:
    """max(x, 0) (``relu``)."""
    return Activation(relu, name="Relu")


def Sigmoid() -> Layer:
    """1 / (1 + exp(-x))."""
    return Activation(jax.nn.sigmoid, name="Sigmoid")


def Tanh() -> Layer:
    return Activation(jnp.tanh, name="Tanh")


def Softmax(*, axis: int = -1) -> Layer:
    """exp(x_i) / sum_j exp(x_j) along ``axis`` (max-subtracted, stable)."""
    axis = _check_axis(axis)
    return Activation(lambda x: jax.nn.softmax(x, axis=axis), name="Softmax")


def LogSoftmax(*, axis: int = -1) -> Layer:
    """x_i - logsumexp(x) along ``axis``."""
    axis = _check_axis(axis)
    return Activation(lambda x: jax.nn.log_softmax(x, axis=axis), name="LogSoftmax")


def Gelu(*, approximate: bool = False) -> Layer:
    """x * Phi(x) (exact erf form by default; ``approximate=True`` is the tanh form)."""
    approximate = _checks.boolean(approximate, "approximate")
    return Activation(lambda x: jax.nn.gelu(x, approximate=approximate), name="Gelu")


def Elu(*, alpha: float = 1.0) -> Layer:
    """x if x > 0 else alpha * (exp(x) - 1)."""
    alpha = _number(alpha, "alpha")
    return Activation(lambda x: jax.nn.elu(x, alpha), name="Elu")


def LeakyRelu(*, negative_slope: float = 0.01) -> Layer:
    """x if x >= 0 else negative_slope * x."""
    negative_slope = _number(negative_slope, "negative_slope")
    return Activation(lambda x: jax.nn.leaky_relu(x, negative_slope), name="LeakyRelu")


def Silu() -> Layer:
    """x * sigmoid(x) (a.k.a. swish)."""
    return Activation(jax.nn.silu, name="Silu")


def Softplus() -> Layer:
    """log(1 + exp(x)), computed stably."""
    return Activation(jax.nn.softplus, name="Softplus")
