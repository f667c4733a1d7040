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
serve float64 or bfloat16 inputs: mixed precision). ``BatchNorm`` lives in ``fcnn.norms`` and is
re-exported here (``fcnn.layers.BatchNorm`` keeps working).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fcnn import _checks
from fcnn import init as initializers
from fcnn import ops, shapes
from fcnn.activations import (Activation, Elu, Gelu, Lambda, LeakyRelu, LogSoftmax, Relu, Sigmoid,  # noqa: F401
                              Silu, Softmax, Softplus, Tanh)
from fcnn.norms import BatchNorm  # noqa: F401  (re-exported: fcnn.layers.BatchNorm)
from fcnn.types import (InputShapeError, Layer, LayerInfo, check_key, check_shape, describe, init_text, input_mismatch,
                        numel, shape_text)

__all__ = ["Conv2D", "Dense", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "GlobalMaxPool2D", "Flatten",
           "Dropout", "BatchNorm", "Activation", "Lambda", "Relu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
           "Gelu", "Elu", "LeakyRelu", "Silu", "Softplus"]


# ----------------------------------------------------------------------------- validation helpers
def _check_param_dtype(dtype):
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise TypeError(f"param_dtype must be a floating dtype, got {dtype!r}")
    return jnp.dtype(dtype)


def _check_padding_spelling(padding, window, stride, dilation):
    # SAME needs the input size; a dummy one is enough to validate the spelling now.
    shapes.normalize_padding(padding, (1, 1), window, stride, dilation)


def _rank4(in_shape, layout: str):
    in_shape = check_shape(in_shape)
    shapes.check_rank4(in_shape, "in_shape")
    return in_shape


def _h(shape, layout):
    return shapes.spatial_dims(shape, layout)[0]


# ----------------------------------------------------------------------------- apply-time input checks
def _image_text(c, layout) -> str:
    """An init shape known only up to its batch and spatial dims: ``(n, h, w, c)`` in ``layout``."""
    return f"(n, h, w, {c})" if layout == "NHWC" else f"(n, {c}, h, w)"


def _check_image(name, x, layout, seen, channels=None, why=""):
    """``x`` of rank 4 (with ``channels`` channels if given), else ``InputShapeError`` naming ``name``;
    ``seen``: the layer's record of init's in_shape (``types.init_text``)."""
    shape = jnp.shape(x)

    def agrees(s):
        return len(s) == 4 and (channels is None or shapes.channel_dim(s, layout) == channels)

    if agrees(shape):
        return
    plural = "" if channels == 1 else "s"
    rule = f"x must have rank 4 ({layout})" + ("" if channels is None else f" with {channels} channel{plural}{why}")
    expected = init_text(seen, agrees, _image_text("c" if channels is None else channels, layout))
    raise input_mismatch(name, shape, expected, rule + "; height and width may differ", rank_ok=len(shape) == 4)


def _check_fits(name, x, output_shape):
    """``output_shape()`` (a ``shapes`` formula on ``x.shape``); its ValueError re-raised naming ``name``."""
    try:
        output_shape()
    except ValueError as err:
        raise InputShapeError(f"{name}: apply got inputs of shape {shape_text(jnp.shape(x))}, too small "
                              f"for it: {err}") from None


def _check_conv_input(x, w_shape, seen, **conv):
    """Conv2D's input: rank 4 with the kernel's input channels x groups, large enough for the kernel."""
    layout, groups = conv["layout"], conv["groups"]
    cin = (w_shape[2] if layout == "NHWC" else w_shape[1]) * groups
    why = f" (the kernel's {cin // groups} input channels x groups={groups})" if groups > 1 else ""
    _check_image("Conv2D", x, layout, seen, cin, why)
    _check_fits("Conv2D", x, lambda: shapes.conv_output_shape(jnp.shape(x), w_shape, **conv))


# ----------------------------------------------------------------------------- Conv2D
def Conv2D(out_channels, kernel, *, stride=1, padding="VALID", dilation=1, groups=1, use_bias=True,
           layout="NHWC", impl="lax", precision=None, w_init=initializers.he_normal(),
           b_init=initializers.zeros, param_dtype=jnp.float32) -> Layer:
    """2-D convolution layer ``Z = W * A_prev + b`` (``ops.conv2d``).

    Args:
      out_channels: number of kernels = output channels.
      kernel: int or (kh, kw).
      stride, padding, dilation, groups, layout, impl: as in ``ops.conv2d``.
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
    out_channels = _checks.positive_int(out_channels, "out_channels")
    kernel = shapes.normalize_pair(kernel, "kernel")
    stride = shapes.normalize_pair(stride, "stride")
    dilation = shapes.normalize_pair(dilation, "dilation")
    groups = _checks.positive_int(groups, "groups")
    if out_channels % groups:
        raise ValueError(f"groups={groups} must divide out_channels={out_channels}")
    _check_padding_spelling(padding, kernel, stride, dilation)
    layout = shapes.normalize_layout(layout)
    impl = _checks.choice(impl, ops.CONV_CHOICES, "impl")
    precision = ops.conv_nd.check_precision(precision)  # ops.conv2d's rule, at construction rather than at apply
    use_bias = _checks.boolean(use_bias, "use_bias")
    w_init = initializers.check_initializer(w_init, "w_init")
    b_init = initializers.check_initializer(b_init, "b_init")
    param_dtype = _check_param_dtype(param_dtype)

    def w_shape(cin):
        kh, kw = kernel
        if layout == "NHWC":
            return (kh, kw, cin // groups, out_channels)
        return (out_channels, cin // groups, kh, kw)

    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        key = check_key(key, "Conv2D.init")
        seen["in"] = in_shape = _rank4(in_shape, layout)
        cin = shapes.channel_dim(in_shape, layout)
        if cin % groups:
            raise ValueError(f"groups={groups} must divide the input channels ({cin}) of in_shape {in_shape}")
        ws = w_shape(cin)
        out_shape = shapes.conv_output_shape(in_shape, ws, stride=stride, padding=padding, dilation=dilation,
                                             groups=groups, layout=layout)
        fan_in, fan_out = initializers.fans(ws, kind="conv", layout=layout, groups=groups)
        kw_, kb = jax.random.split(key)
        params = {"w": w_init(kw_, ws, param_dtype, fan_in, fan_out)}
        if use_bias:
            params["b"] = b_init(kb, (out_channels,), param_dtype, fan_in, fan_out)
        return out_shape, params, {}

    def apply(params, state, x, *, key=None, train=False):
        _check_conv_input(x, jnp.shape(params["w"]), seen, stride=stride, padding=padding, dilation=dilation,
                          groups=groups, layout=layout)
        w = params["w"].astype(x.dtype)
        b = params["b"].astype(x.dtype) if use_bias else None
        y = ops.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                       layout=layout, impl=impl, precision=precision)
        return y, state

    def flops(i, o):
        return shapes.conv_flops(o, w_shape(shapes.channel_dim(i, layout)), layout, use_bias)

    pad = padding if isinstance(padding, str) else f"pad={padding}"
    detail = f"{out_channels}@{kernel[0]}x{kernel[1]} s{stride[0]} {pad}" + (f" g{groups}" if groups > 1 else "")
    return describe(Layer(init, apply), LayerInfo("Conv2D", "conv", detail,
                                                  rf=lambda i: (kernel[0], stride[0], dilation[0]), flops=flops))


# ----------------------------------------------------------------------------- Dense
def Dense(out_features, *, use_bias=True, w_init=initializers.he_normal(), b_init=initializers.zeros,
          param_dtype=jnp.float32) -> Layer:
    """Fully connected layer ``y = x @ w + b`` over the last axis.

    Params: {"w": (n_in, out_features), "b": (out_features,)}. Shapes: (..., n_in) -> (..., out_features).
    ``apply`` casts the params to ``x.dtype``.
    """
    out_features = _checks.positive_int(out_features, "out_features")
    use_bias = _checks.boolean(use_bias, "use_bias")
    w_init = initializers.check_initializer(w_init, "w_init")
    b_init = initializers.check_initializer(b_init, "b_init")
    param_dtype = _check_param_dtype(param_dtype)

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


# ----------------------------------------------------------------------------- pooling
def _window_pool(name, op, window, stride, padding, dilation, layout, **op_kw) -> Layer:
    """A pooling layer calling ``op(x, window, ...)``; stride defaults to the window.

    ``dilation=None`` for an op without a dilation argument (average pooling): 1 in the shape formulas.
    """
    window = shapes.normalize_pair(window, "window")
    stride = window if stride is None else shapes.normalize_pair(stride, "stride")
    kw = dict(stride=stride, padding=padding, **op_kw)
    if dilation is not None:
        kw["dilation"] = dilation = shapes.normalize_pair(dilation, "dilation")
    dilation = dilation or (1, 1)
    _check_padding_spelling(padding, window, stride, dilation)
    kw["layout"] = layout = shapes.normalize_layout(layout)
    # run the op abstractly on a tiny input so it validates its own argument combinations now
    size = tuple(shapes.effective_size(window[i], dilation[i]) for i in range(2))
    jax.eval_shape(lambda x: op(x, window, **{**kw, "layout": "NHWC", "padding": "VALID"}),
                   jax.ShapeDtypeStruct((1,) + size + (1,), jnp.float32))

    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        seen["in"] = in_shape = _rank4(in_shape, layout)
        return shapes.pool_output_shape(in_shape, window, stride=stride, padding=padding, dilation=dilation,
                                        layout=layout), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        _check_image(name, x, layout, seen)
        _check_fits(name, x, lambda: shapes.pool_output_shape(x.shape, window, stride=stride, padding=padding,
                                                               dilation=dilation, layout=layout))
        return op(x, window, **kw), state

    pad = padding if isinstance(padding, str) else f"pad={padding}"
    return describe(Layer(init, apply), LayerInfo(
        name, "pool", f"{window[0]}x{window[1]} s{stride[0]} {pad}",
        rf=lambda i: (window[0], stride[0], dilation[0]), flops=lambda i, o: shapes.pool_flops(o, window)))


def MaxPool2D(window, *, stride=None, padding="VALID", dilation=1, layout="NHWC", impl="lax",
              ties="first") -> Layer:
    """Max pooling per channel (``ops.max_pool2d``); stride defaults to the window.

    ``impl``/``ties`` pick the gradient's tie policy ("lax" does "first", "reference" does
    "split", "custom_vjp" any); a combination the op does not implement raises here.
    Shapes: (n, h, w, c) -> (n, oh, ow, c) in NHWC.
    """
    impl = _checks.choice(impl, ops.POOL_CHOICES, "impl")
    ties = _checks.choice(ties, ops.TIE_POLICIES, "ties")
    return _window_pool("MaxPool2D", ops.max_pool2d, window, stride, padding, dilation, layout, impl=impl,
                        ties=ties)


def AvgPool2D(window, *, stride=None, padding="VALID", layout="NHWC", count_include_pad=True,
              impl="lax") -> Layer:
    """Average pooling per channel (``ops.avg_pool2d``); stride defaults to the window."""
    count_include_pad = _checks.boolean(count_include_pad, "count_include_pad")
    return _window_pool("AvgPool2D", ops.avg_pool2d, window, stride, padding, None, layout,
                        count_include_pad=count_include_pad, impl=impl)


def _global_pool(op, name, layout):
    layout = shapes.normalize_layout(layout)

    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        seen["in"] = in_shape = _rank4(in_shape, layout)
        return (in_shape[0], shapes.channel_dim(in_shape, layout)), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        _check_image(name, x, layout, seen)
        return op(x, layout=layout), state

    return describe(Layer(init, apply), LayerInfo(name, "pool", "global", rf=lambda i: (_h(i, layout), 1, 1),
                                                  flops=lambda i, o: numel(i)))


def GlobalAvgPool2D(*, layout="NHWC") -> Layer:
    """Mean over height and width: (n, h, w, c) NHWC or (n, c, h, w) NCHW -> (n, c)."""
    return _global_pool(ops.global_avg_pool2d, "GlobalAvgPool2D", layout)


def GlobalMaxPool2D(*, layout="NHWC") -> Layer:
    """Max over height and width: (n, h, w, c) NHWC or (n, c, h, w) NCHW -> (n, c)."""
    return _global_pool(ops.global_max_pool2d, "GlobalMaxPool2D", layout)


# ----------------------------------------------------------------------------- Flatten, Dropout
def Flatten(*, layout="NHWC") -> Layer:
    """(n, d1, d2, ...) -> (n, d1*d2*...) in memory order (NHWC: h, w, c; no transpose).

    ``layout`` only tells ``summary`` which axis is the height (a Dense after Flatten sees
    the whole remaining height).
    """
    layout = shapes.normalize_layout(layout)

    def init(key, in_shape):
        in_shape = check_shape(in_shape)
        if len(in_shape) < 2:
            raise ValueError(f"in_shape of Flatten must have a batch dim and at least one more, got {in_shape}")
        return (in_shape[0], numel(in_shape[1:])), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if jnp.ndim(x) < 2:
            raise input_mismatch("Flatten", jnp.shape(x), "(n, ...)", "x must have rank >= 2: a batch dim and at "
                                 "least one more", rank_ok=False)
        return jnp.reshape(x, (x.shape[0], -1)), state

    def rf(i):
        return (_h(i, layout) if len(i) == 4 else 1, 1, 1)

    return describe(Layer(init, apply), LayerInfo("Flatten", "reshape", rf=rf, flops=lambda i, o: 0))


def Dropout(drop_rate) -> Layer:
    """Inverted dropout: with ``train=True`` zero each element with probability ``drop_rate``
    and scale the kept ones by ``1/(1 - drop_rate)`` (expected value unchanged); identity
    with ``train=False``. Training needs ``key=`` a PRNG key (``jax.random.PRNGKey`` or
    ``jax.random.key``; None, an int or a float array raise naming ``key``); ``serial`` gives
    every Dropout its own.
    """
    drop_rate = _checks.float_in_range(drop_rate, "drop_rate", 0, 1)
    keep = 1.0 - drop_rate

    def init(key, in_shape):
        return check_shape(in_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if not train or drop_rate == 0:
            return x, state
        check_key(key, "Dropout with train=True")
        mask = jax.random.bernoulli(key, keep, jnp.shape(x))
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype)), state

    return describe(Layer(init, apply), LayerInfo("Dropout", "dropout", f"p={drop_rate}",
                                                  flops=lambda i, o: numel(o)))
