"""Layers: Conv2D, Dense, pooling, Flatten, Dropout (activations in fcnn.activations, norms in fcnn.norms).

Every constructor returns a ``Layer(init, apply)`` (contract in ``fcnn.types``)::

    init(key, in_shape) -> (out_shape, params, state)        in_shape includes the batch dim
    apply(params, state, x, *, key=None, train=False) -> (y, state)

Arguments are validated when the layer is built and shapes when ``init`` runs, so bad
input raises ``ValueError``/``TypeError`` naming the argument before any computation.
``apply`` checks its input against what the params imply about init's shape (at trace time,
free under ``jit``; ``fcnn.types`` states the rule) and raises ``InputShapeError`` naming
the layer and both shapes; ``Dropout`` checks its key (``types.check_key``).
Layers never call ``jit``.

dtypes: params are created in ``param_dtype`` (float32 by default). ``Conv2D`` and
``Dense`` cast their params to ``x.dtype`` inside ``apply`` (so float32 master params
serve float64 or bfloat16 inputs: mixed precision), so ``Dense`` and ``Dropout`` refuse an ``x``
without a floating dtype (``types.check_floating``; so do the norms and ``SpatialDropout``).
``BatchNorm`` lives in ``fcnn.norms`` and is re-exported here (``fcnn.layers.BatchNorm`` keeps working).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fcnn import _checks
from fcnn import init as initializers
from fcnn import ops, shapes
from fcnn.activations import (Activation, Elu, Gelu, Lambda, LeakyRelu, LogSoftmax, Relu, Sigmoid,  # noqa: F401
                              Silu, Softmax, Softplus, Tanh)
from fcnn.layers_nd import (IMAGE_RANKS, avg_pool_layer, channels_last, conv_layer, global_pool, max_pool_layer,
                            rank_layout, rf_axis)
from fcnn.norms import BatchNorm  # noqa: F401  (re-exported: fcnn.layers.BatchNorm)
from fcnn.types import (Layer, LayerInfo, check_floating, check_key, check_param_dtype, check_shape, describe,
                        init_text, input_mismatch, numel)

__all__ = ["Conv2D", "Dense", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "GlobalMaxPool2D", "Flatten",
           "Dropout", "BatchNorm", "Activation", "Lambda", "Relu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
           "Gelu", "Elu", "LeakyRelu", "Silu", "Softplus"]


# ----------------------------------------------------------------------------- Conv2D
def Conv2D(out_channels, kernel, *, stride=1, padding="VALID", dilation=1, groups=1, use_bias=True,
           layout="NHWC", impl="lax", padding_mode="zeros", precision=None, w_init=initializers.he_normal(),
           b_init=initializers.zeros, param_dtype=jnp.float32) -> Layer:
    """2-D convolution layer ``Z = W * A_prev + b`` (``ops.conv2d``); ``layers_nd.conv_layer`` at rank 2.

    Args:
      out_channels: number of kernels = output channels.
      kernel: int or (kh, kw).
      stride, padding, dilation, groups, layout, impl, padding_mode: as in ``ops.conv2d``.
      precision: ``lax.Precision`` for the conv's dot products (None, a ``lax.Precision``, its
        name such as "highest", or a pair; as in ``ops.conv2d``); not the training dtype
        policy (that is ``param_dtype`` here and the dtype of ``x``).
      use_bias: add a per-channel bias ``b`` of shape (out_channels,).
      w_init, b_init: initialisers ``(key, shape, dtype, fan_in, fan_out)``; fans from
        ``init.fans`` (fan_in = kh*kw*cin/groups).
      param_dtype: dtype of the created params; ``apply`` casts them to ``x.dtype``.
    Params:
      {"w": (kh, kw, cin/groups, out_channels) HWIO for NHWC or (out_channels, cin/groups, kh, kw)
      OIHW for NCHW, "b": (out_channels,)} ("b" only with use_bias).
    Shapes:
      x (n, h, w, cin) -> (n, oh, ow, out_channels) in NHWC (NCHW likewise), oh from
      ``shapes.conv_output_shape``.
    """
    return conv_layer("Conv2D", 2, out_channels, kernel, stride=stride, padding=padding, dilation=dilation,
                      groups=groups, use_bias=use_bias, layout=layout, impl=impl, padding_mode=padding_mode,
                      precision=precision, w_init=w_init, b_init=b_init, param_dtype=param_dtype)


# ----------------------------------------------------------------------------- Dense
def Dense(out_features, *, use_bias=True, w_init=initializers.he_normal(), b_init=initializers.zeros,
          param_dtype=jnp.float32) -> Layer:
    """Fully connected layer ``y = x @ w + b`` over the last axis.

    Params: {"w": (n_in, out_features), "b": (out_features,)}. Shapes: (..., n_in) -> (..., out_features).
    ``apply`` casts the params to ``x.dtype``, so ``x`` must have a floating dtype (``TypeError``).
    """
    out_features = _checks.positive_int(out_features, "out_features")
    use_bias = _checks.boolean(use_bias, "use_bias")
    w_init = initializers.check_initializer(w_init, "w_init")
    b_init = initializers.check_initializer(b_init, "b_init")
    param_dtype = check_param_dtype(param_dtype)

    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        key = check_key(key, "Dense.init")
        in_shape = check_shape(in_shape)
        if len(in_shape) < 2:
            raise ValueError(f"in_shape of Dense must be (batch, ..., features), got {in_shape}")
        seen["in"] = in_shape
        n_in = in_shape[-1]
        kw_, kb = jax.random.split(key)
        params = {"w": w_init(kw_, (n_in, out_features), param_dtype, n_in, out_features)}
        if use_bias:
            params["b"] = b_init(kb, (out_features,), param_dtype, n_in, out_features)
        return in_shape[:-1] + (out_features,), params, {}

    def apply(params, state, x, *, key=None, train=False):
        check_floating(x, "Dense")
        shape, n_in = jnp.shape(x), jnp.shape(params["w"])[0]
        if len(shape) < 2 or shape[-1] != n_in:
            fallback = f"(n, {n_in})" if len(shape) <= 2 else f"(n, ..., {n_in})"
            expected = init_text(seen, lambda s: s[-1] == n_in, fallback)
            rule = "x must have rank >= 2: a batch dim and the features" if len(shape) < 2 else (
                f"the last dim must match: {shape[-1]} features, the kernel has {n_in} rows")
            raise input_mismatch("Dense", shape, expected, rule, rank_ok=len(shape) >= 2)
        y = jnp.matmul(x, params["w"].astype(x.dtype))
        if use_bias:
            y = y + params["b"].astype(x.dtype)
        return y, state

    def flops(i, o):
        return shapes.dense_flops(numel(i[:-1]), i[-1], out_features, use_bias)

    return describe(Layer(init, apply), LayerInfo("Dense", "dense", str(out_features), flops=flops))


# ----------------------------------------------------------------------------- pooling (layers_nd's cores at rank 2)
def MaxPool2D(window, *, stride=None, padding="VALID", dilation=1, layout="NHWC", impl="lax",
              ties="first") -> Layer:
    """Max pooling per channel (``ops.max_pool2d``); stride defaults to the window.

    ``impl``/``ties`` pick the gradient's tie policy ("lax" does "first", "reference" does
    "split", "custom_vjp" any); a combination the op does not implement raises here.
    Shapes: (n, h, w, c) -> (n, oh, ow, c) in NHWC.
    """
    return max_pool_layer("MaxPool2D", 2, window, stride, padding, dilation, layout, impl, ties)


def AvgPool2D(window, *, stride=None, padding="VALID", layout="NHWC", count_include_pad=True,
              impl="lax") -> Layer:
    """Average pooling per channel (``ops.avg_pool2d``); stride defaults to the window."""
    return avg_pool_layer("AvgPool2D", 2, window, stride, padding, layout, count_include_pad, impl)


def GlobalAvgPool2D(*, layout="NHWC") -> Layer:
    """Mean over height and width: (n, h, w, c) NHWC or (n, c, h, w) NCHW -> (n, c)."""
    return global_pool("GlobalAvgPool2D", ops.global_avg_pool, layout, rank=2)


def GlobalMaxPool2D(*, layout="NHWC") -> Layer:
    """Max over height and width: (n, h, w, c) NHWC or (n, c, h, w) NCHW -> (n, c)."""
    return global_pool("GlobalMaxPool2D", ops.global_max_pool, layout, rank=2)


# ----------------------------------------------------------------------------- Flatten, Dropout
def Flatten(*, layout="NHWC") -> Layer:
    """(n, d1, d2, ...) -> (n, d1*d2*...) in memory order (NHWC: h, w, c; no transpose).

    ``layout`` only tells ``summary`` where the channels are (any layout name, read for
    channels-last or -first as the any-rank layers read it): a Dense after Flatten sees the whole
    remaining extent along the receptive field's axis (W in 1-D, H in 2-D and 3-D, as for
    ``GlobalAvgPool``).
    """
    last = channels_last(layout)

    def init(key, in_shape):
        in_shape = check_shape(in_shape)
        if len(in_shape) < 2:
            raise ValueError(f"in_shape of Flatten must have a batch dim and at least one more, got {in_shape}")
        return (in_shape[0], numel(in_shape[1:])), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if jnp.ndim(x) < 2:
            raise input_mismatch("Flatten", jnp.shape(x), "(n, ...)", "x must have rank >= 2: a batch dim and at "
                                 "least one more", rank_ok=False)
        return jnp.reshape(x, (x.shape[0], numel(x.shape[1:]))), state  # not -1: a batch of 0 has no quotient

    def rf(i):
        if len(i) not in IMAGE_RANKS:  # (n, features): nothing spatial left to see
            return 1, 1, 1
        return shapes.spatial_dims(i, rank_layout(last, len(i)))[rf_axis(len(i) - 2)], 1, 1

    return describe(Layer(init, apply), LayerInfo("Flatten", "reshape", rf=rf, flops=lambda i, o: 0))


def Dropout(drop_rate) -> Layer:
    """Inverted dropout: with ``train=True`` zero each element with probability ``drop_rate``
    and scale the kept ones by ``1/(1 - drop_rate)`` (expected value unchanged); identity
    with ``train=False``. Training needs ``key=`` a PRNG key (``jax.random.PRNGKey`` or
    ``jax.random.key``; None, an int or a float array raise naming ``key``); ``serial`` gives
    every Dropout its own. ``x`` must have a floating dtype (``TypeError``, in either mode: the
    scale ``1/(1 - drop_rate)`` has no integer value).
    """
    drop_rate = _checks.float_in_range(drop_rate, "drop_rate", 0, 1)
    keep = 1.0 - drop_rate

    def init(key, in_shape):
        return check_shape(in_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        check_floating(x, "Dropout")
        if not train or drop_rate == 0:
            return x, state
        check_key(key, "Dropout with train=True")
        mask = jax.random.bernoulli(key, keep, jnp.shape(x))
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype)), state

    return describe(Layer(init, apply), LayerInfo("Dropout", "dropout", f"p={drop_rate}",
                                                  flops=lambda i, o: numel(o)))
