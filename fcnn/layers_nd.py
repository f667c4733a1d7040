"""Layers in 1, 2 or 3 spatial dimensions: convolution, windowed/global/adaptive pooling, SpatialDropout.

Every constructor returns a ``Layer(init, apply)`` (contract in ``fcnn.types``). Each family is one
rank-generic core: ``Conv1D``/``Conv3D`` here and ``fcnn.layers.Conv2D`` are ``conv_layer`` at rank 1, 3
and 2; ``MaxPool1D``/``AvgPool3D``... and the 2-D pools of ``fcnn.layers`` are ``window_pool``.

Layouts. Fixed-rank layers take their rank's layouts (``shapes.LAYOUTS_BY_RANK``: NWC/NCW,
NHWC/NCHW, NDHWC/NCDHW; channels-last by default). Any-rank layers (``GlobalAvgPool``,
``GlobalMaxPool``, ``AdaptiveAvgPool``, ``AdaptiveMaxPool``, ``SpatialDropout``; ``fcnn.decoder``'s
``Upsample``) take the rank from ``in_shape`` (3-5: batch, 1-3 spatial dims, channels) and read
``layout`` only for where the channels are, as ``fcnn.norms`` does: any channels-last name (the
default "NHWC") means channels-last in every rank.

Arguments are validated when the layer is built, shapes when ``init`` runs; ``apply`` checks its
input at trace time and raises ``InputShapeError`` naming the layer and both shapes (``fcnn.types``).
Conv layers create params in ``param_dtype`` and cast them to ``x.dtype`` in ``apply``.

``summary``'s receptive field runs along H: the first spatial axis in 1-D (W) and 2-D, the second
in 3-D (D, H, W). An adaptive pool has one where its windows are regular (``in % out == 0``:
window = stride = in/out); otherwise, as after a transposed conv or upsampling (``fcnn.decoder``),
the rows show "-" (a fractional jump has no integer receptive field).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fcnn import _checks, ops, shapes
from fcnn import init as initializers
from fcnn.types import (InputShapeError, Layer, LayerInfo, check_floating, check_key, check_param_dtype,
                        check_shape, describe, init_text, input_mismatch, numel, shape_text)

__all__ = ["Conv1D", "Conv3D", "MaxPool1D", "MaxPool3D", "AvgPool1D", "AvgPool3D", "GlobalAvgPool",
           "GlobalMaxPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "SpatialDropout", "conv_layer", "window_pool",
           "global_pool"]

_SPATIAL = {1: "the width", 2: "height and width", 3: "depth, height and width"}
IMAGE_RANKS = (3, 4, 5)


# ----------------------------------------------------------------------------- shared checks
def fixed_layout(layout, rank: int) -> str:
    """A fixed-rank layer's layout: one of ``shapes.LAYOUTS_BY_RANK[rank]``."""
    return _checks.choice(layout, shapes.LAYOUTS_BY_RANK[rank], "layout")


def channels_last(layout) -> bool:
    """An any-rank layer's ``layout``: any of ``shapes.ALL_LAYOUTS``, read only for channels-last or -first."""
    return shapes.is_channels_last(_checks.choice(layout, shapes.ALL_LAYOUTS, "layout"))


def rank_layout(last: bool, ndim: int) -> str:
    """The layout name of an input of rank ``ndim`` (3-5) with channels last or first."""
    return shapes.LAYOUTS_BY_RANK[ndim - 2][0 if last else 1]


def rf_axis(rank: int) -> int:
    """The spatial axis ``summary``'s receptive field runs along: H (W in 1-D)."""
    return 1 if rank == 3 else 0


def image_shape(in_shape, layout: str):
    """``in_shape`` of ``layout``'s rank, else ``ValueError``."""
    in_shape = check_shape(in_shape)
    shapes.check_rank(in_shape, layout, "in_shape")
    return in_shape


def any_rank_shape(name: str, in_shape, last: bool):
    """``(in_shape, layout)`` for an any-rank layer: rank 3-5, the layout named for that rank."""
    in_shape = check_shape(in_shape)
    if len(in_shape) not in IMAGE_RANKS:
        raise ValueError(f"in_shape of {name} must have rank 3, 4 or 5 (batch, 1-3 spatial dims, channels), "
                         f"got {in_shape}")
    return in_shape, rank_layout(last, len(in_shape))


def image_text(c, layout: str) -> str:
    """An init shape known only up to its batch and spatial dims: ``(n, h, w, c)`` in ``layout``."""
    return "(" + ", ".join("n" if a == "N" else str(c) if a == "C" else a.lower() for a in layout) + ")"


def check_image(name, x, layout, seen, channels=None, why=""):
    """``x`` of ``layout``'s rank (with ``channels`` channels if given), else ``InputShapeError`` naming
    ``name``; ``seen``: the layer's record of init's in_shape (``types.init_text``)."""
    shape, ndim = jnp.shape(x), len(layout)

    def agrees(s):
        return len(s) == ndim and (channels is None or shapes.channel_dim(s, layout) == channels)

    if agrees(shape):
        return
    plural = "" if channels == 1 else "s"
    rule = f"x must have rank {ndim} ({layout})" + ("" if channels is None else f" with {channels} channel{plural}{why}")
    expected = init_text(seen, agrees, image_text("c" if channels is None else channels, layout))
    raise input_mismatch(name, shape, expected, f"{rule}; {_SPATIAL[ndim - 2]} may differ", rank_ok=len(shape) == ndim)


def check_any_rank(name, x, last: bool, seen) -> str:
    """``x`` of rank 3-5 for an any-rank layer; returns its layout name."""
    shape = jnp.shape(x)
    if len(shape) not in IMAGE_RANKS:
        expected = init_text(seen, lambda s: True, "(n, ..., c)" if last else "(n, c, ...)")
        raise input_mismatch(name, shape, expected, "x must have rank 3, 4 or 5 (batch, 1-3 spatial dims, "
                             "channels)", rank_ok=False)
    return rank_layout(last, len(shape))


def check_fits(name, x, output_shape):
    """``output_shape()`` (a ``shapes`` formula on ``x.shape``); its ValueError re-raised naming ``name``."""
    try:
        output_shape()
    except ValueError as err:
        raise InputShapeError(f"{name}: apply got inputs of shape {shape_text(jnp.shape(x))}, too small "
                              f"for it: {err}") from None


def check_padding_spelling(padding, window, stride, dilation):
    """SAME needs the input size; a dummy one is enough to validate the spelling now."""
    shapes.normalize_padding(padding, (1,) * len(window), window, stride, dilation)


def padding_text(padding) -> str:
    return padding if isinstance(padding, str) else f"pad={padding}"


def geometry_text(kernel, stride) -> str:
    """``3x3 s2`` (one stride when all are equal, else ``s1x2``)."""
    s = str(stride[0]) if len(set(stride)) == 1 else "x".join(map(str, stride))
    return f"{'x'.join(map(str, kernel))} s{s}"


def kernel_shape(kernel, cin_per_group: int, cout: int, layout: str):
    """A kernel in ``shapes.kernel_layout(layout)``: (*k, cin/g, cout) or (cout, cin/g, *k)."""
    if shapes.is_channels_last(layout):
        return (*kernel, cin_per_group, cout)
    return (cout, cin_per_group, *kernel)


def kernel_params(key, ws, n_bias, layout, groups, use_bias, w_init, b_init, param_dtype):
    """``{"w": w_init(ws), "b": b_init((n_bias,))}`` with the fans of ``init.fans`` (conv kind)."""
    fan_in, fan_out = initializers.fans(ws, kind="conv", layout=layout, groups=groups)
    kw_, kb = jax.random.split(key)
    params = {"w": w_init(kw_, ws, param_dtype, fan_in, fan_out)}
    if use_bias:
        params["b"] = b_init(kb, (n_bias,), param_dtype, fan_in, fan_out)
    return params


def kernel_input(name, key, in_shape, layout, groups, seen):
    """A kernel layer's init prologue: ``(key, in_shape, cin)`` checked (a PRNG key, the layout's rank,
    ``groups`` dividing the input channels); ``seen["in"]`` records in_shape for apply's errors."""
    key = check_key(key, f"{name}.init")
    seen["in"] = in_shape = image_shape(in_shape, layout)
    cin = shapes.channel_dim(in_shape, layout)
    if cin % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({cin}) of in_shape {in_shape}")
    return key, in_shape, cin


def kernel_options(rank, out_channels, kernel, stride, dilation, groups, layout, precision, use_bias, w_init, b_init,
                   param_dtype) -> dict:
    """The validated arguments every kernel layer (conv, transposed conv) takes."""
    opts = dict(out_channels=_checks.positive_int(out_channels, "out_channels"),
                kernel=shapes.normalize_tuple(kernel, "kernel", rank),
                stride=shapes.normalize_tuple(stride, "stride", rank),
                dilation=shapes.normalize_tuple(dilation, "dilation", rank),
                groups=_checks.positive_int(groups, "groups"), layout=fixed_layout(layout, rank),
                precision=ops.conv_nd.check_precision(precision), use_bias=_checks.boolean(use_bias, "use_bias"),
                w_init=initializers.check_initializer(w_init, "w_init"),
                b_init=initializers.check_initializer(b_init, "b_init"), param_dtype=check_param_dtype(param_dtype))
    if opts["out_channels"] % opts["groups"]:
        raise ValueError(f"groups={opts['groups']} must divide out_channels={opts['out_channels']}")
    return opts


# ----------------------------------------------------------------------------- convolution
def conv_layer(name, rank, out_channels, kernel, *, stride=1, padding="VALID", dilation=1, groups=1, use_bias=True,
               layout=None, impl="lax", padding_mode="zeros", precision=None, w_init=initializers.he_normal(),
               b_init=initializers.zeros, param_dtype=jnp.float32) -> Layer:
    """The convolution layer ``Z = W * A_prev + b`` in ``rank`` spatial dims (``ops.conv``); ``Conv1D``,
    ``Conv3D`` and ``fcnn.layers.Conv2D`` document the arguments. ``name``: the layer's name in errors."""
    layout = shapes.LAYOUTS_BY_RANK[rank][0] if layout is None else layout
    o = kernel_options(rank, out_channels, kernel, stride, dilation, groups, layout, precision, use_bias, w_init,
                       b_init, param_dtype)
    kernel, stride, dilation, groups, layout = o["kernel"], o["stride"], o["dilation"], o["groups"], o["layout"]
    check_padding_spelling(padding, kernel, stride, dilation)
    impl = _checks.choice(impl, ops.CONV_CHOICES, "impl")
    padding_mode = _checks.choice(padding_mode, ops.PADDING_MODES, "padding_mode")
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)
    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        key, in_shape, cin = kernel_input(name, key, in_shape, layout, groups, seen)
        ws = kernel_shape(kernel, cin // groups, o["out_channels"], layout)
        out_shape = shapes.conv_output_shape(in_shape, ws, **geo)
        in_sizes = shapes.spatial_dims(in_shape, layout)
        ops.conv_nd.check_padding_mode(padding_mode, shapes.normalize_padding(padding, in_sizes, kernel, stride,
                                                                              dilation), in_sizes)
        return out_shape, kernel_params(key, ws, o["out_channels"], layout, groups, o["use_bias"], o["w_init"],
                                        o["b_init"], o["param_dtype"]), {}

    def apply(params, state, x, *, key=None, train=False):
        w_shape = jnp.shape(params["w"])
        cin = shapes.kernel_parts(w_shape, layout)[1] * groups
        why = f" (the kernel's {cin // groups} input channels x groups={groups})" if groups > 1 else ""
        check_image(name, x, layout, seen, cin, why)
        check_fits(name, x, lambda: shapes.conv_output_shape(jnp.shape(x), w_shape, **geo))
        w = params["w"].astype(x.dtype)
        b = params["b"].astype(x.dtype) if o["use_bias"] else None
        return ops.conv(x, w, b, impl=impl, padding_mode=padding_mode, precision=o["precision"], **geo), state

    def flops(i, out):
        ws = kernel_shape(kernel, shapes.channel_dim(i, layout) // groups, o["out_channels"], layout)
        return shapes.conv_flops(out, ws, layout, o["use_bias"])

    a = rf_axis(rank)
    detail = (f"{o['out_channels']}@{geometry_text(kernel, stride)} {padding_text(padding)}"
              + (f" g{groups}" if groups > 1 else "") + ("" if padding_mode == "zeros" else f" {padding_mode}"))
    return describe(Layer(init, apply), LayerInfo(name, "conv", detail, flops=flops,
                                                  rf=lambda i: (kernel[a], stride[a], dilation[a])))


def Conv1D(out_channels, kernel, *, stride=1, padding="VALID", dilation=1, groups=1, use_bias=True, layout="NWC",
           impl="lax", padding_mode="zeros", precision=None, w_init=initializers.he_normal(),
           b_init=initializers.zeros, param_dtype=jnp.float32) -> Layer:
    """1-D convolution layer (``ops.conv1d``): x (n, w, cin) NWC or (n, cin, w) NCW -> (n, ow, out_channels).

    Arguments as ``fcnn.layers.Conv2D`` with one int per spatial dim; ``padding_mode`` "zeros", "reflect",
    "replicate" or "circular" (PyTorch's). Params: {"w": (k, cin/groups, out_channels) WIO or
    (out_channels, cin/groups, k) OIW, "b": (out_channels,)}.
    """
    return conv_layer("Conv1D", 1, out_channels, kernel, stride=stride, padding=padding, dilation=dilation,
                      groups=groups, use_bias=use_bias, layout=layout, impl=impl, padding_mode=padding_mode,
                      precision=precision, w_init=w_init, b_init=b_init, param_dtype=param_dtype)


def Conv3D(out_channels, kernel, *, stride=1, padding="VALID", dilation=1, groups=1, use_bias=True, layout="NDHWC",
           impl="lax", padding_mode="zeros", precision=None, w_init=initializers.he_normal(),
           b_init=initializers.zeros, param_dtype=jnp.float32) -> Layer:
    """3-D convolution layer (``ops.conv3d``): x (n, d, h, w, cin) NDHWC or (n, cin, d, h, w) NCDHW.

    Arguments as ``Conv1D``. Params: {"w": (kd, kh, kw, cin/groups, out_channels) DHWIO or
    (out_channels, cin/groups, kd, kh, kw) OIDHW, "b": (out_channels,)}.
    """
    return conv_layer("Conv3D", 3, out_channels, kernel, stride=stride, padding=padding, dilation=dilation,
                      groups=groups, use_bias=use_bias, layout=layout, impl=impl, padding_mode=padding_mode,
                      precision=precision, w_init=w_init, b_init=b_init, param_dtype=param_dtype)


# ----------------------------------------------------------------------------- windowed pooling
def window_pool(name, rank, op, window, stride, padding, dilation, layout, **op_kw) -> Layer:
    """A pooling layer calling ``op(x, window, ..., layout=)`` (``ops.max_pool``/``ops.avg_pool``); stride
    defaults to the window. ``dilation=None`` for an op without one (average pooling): 1 in the formulas."""
    window = shapes.normalize_tuple(window, "window", rank)
    stride = window if stride is None else shapes.normalize_tuple(stride, "stride", rank)
    kw = dict(stride=stride, padding=padding, **op_kw)
    if dilation is not None:
        kw["dilation"] = dilation = shapes.normalize_tuple(dilation, "dilation", rank)
    dilation = dilation or (1,) * rank
    check_padding_spelling(padding, window, stride, dilation)
    kw["layout"] = layout = fixed_layout(layout, rank)
    # run the op abstractly on a tiny input so it validates its own argument combinations now
    size = tuple(shapes.effective_size(w, d) for w, d in zip(window, dilation))
    jax.eval_shape(lambda x: op(x, window, **{**kw, "layout": shapes.LAYOUTS_BY_RANK[rank][0], "padding": "VALID"}),
                   jax.ShapeDtypeStruct((1,) + size + (1,), jnp.float32))
    geo = dict(stride=stride, padding=padding, dilation=dilation, layout=layout)
    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        seen["in"] = in_shape = image_shape(in_shape, layout)
        return shapes.pool_output_shape(in_shape, window, **geo), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        check_image(name, x, layout, seen)
        check_fits(name, x, lambda: shapes.pool_output_shape(x.shape, window, **geo))
        return op(x, window, **kw), state

    a = rf_axis(rank)
    return describe(Layer(init, apply), LayerInfo(
        name, "pool", f"{geometry_text(window, stride)} {padding_text(padding)}",
        rf=lambda i: (window[a], stride[a], dilation[a]), flops=lambda i, o: shapes.pool_flops(o, window)))


def max_pool_layer(name, rank, window, stride, padding, dilation, layout, impl, ties) -> Layer:
    impl = _checks.choice(impl, ops.POOL_CHOICES, "impl")
    ties = _checks.choice(ties, ops.TIE_POLICIES, "ties")
    return window_pool(name, rank, ops.max_pool, window, stride, padding, dilation, layout, impl=impl, ties=ties)


def avg_pool_layer(name, rank, window, stride, padding, layout, count_include_pad, impl) -> Layer:
    count_include_pad = _checks.boolean(count_include_pad, "count_include_pad")
    return window_pool(name, rank, ops.avg_pool, window, stride, padding, None, layout,
                       count_include_pad=count_include_pad, impl=impl)


def MaxPool1D(window, *, stride=None, padding="VALID", dilation=1, layout="NWC", impl="lax", ties="first") -> Layer:
    """Max pooling over (n, w, c) NWC or (n, c, w) NCW (``ops.max_pool1d``); arguments as ``MaxPool2D``."""
    return max_pool_layer("MaxPool1D", 1, window, stride, padding, dilation, layout, impl, ties)


def MaxPool3D(window, *, stride=None, padding="VALID", dilation=1, layout="NDHWC", impl="lax",
              ties="first") -> Layer:
    """Max pooling over (n, d, h, w, c) NDHWC or (n, c, d, h, w) NCDHW (``ops.max_pool3d``)."""
    return max_pool_layer("MaxPool3D", 3, window, stride, padding, dilation, layout, impl, ties)


def AvgPool1D(window, *, stride=None, padding="VALID", layout="NWC", count_include_pad=True, impl="lax") -> Layer:
    """Average pooling over (n, w, c) NWC or (n, c, w) NCW (``ops.avg_pool1d``)."""
    return avg_pool_layer("AvgPool1D", 1, window, stride, padding, layout, count_include_pad, impl)


def AvgPool3D(window, *, stride=None, padding="VALID", layout="NDHWC", count_include_pad=True,
              impl="lax") -> Layer:
    """Average pooling over (n, d, h, w, c) NDHWC or (n, c, d, h, w) NCDHW (``ops.avg_pool3d``)."""
    return avg_pool_layer("AvgPool3D", 3, window, stride, padding, layout, count_include_pad, impl)


# ----------------------------------------------------------------------------- global and adaptive pooling
def global_pool(name, op, layout, rank=None) -> Layer:
    """``op(x, layout=)`` over every spatial dim -> (n, c). ``rank=None``: any rank (``layout`` read for
    channels-last/first only); else that rank's layouts (``fcnn.layers.GlobalAvgPool2D``)."""
    last = channels_last(layout) if rank is None else None
    layout = None if rank is None else fixed_layout(layout, rank)
    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        if rank is None:
            in_shape, lay = any_rank_shape(name, in_shape, last)
        else:
            in_shape, lay = image_shape(in_shape, layout), layout
        seen["in"] = in_shape
        return (in_shape[0], shapes.channel_dim(in_shape, lay)), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if rank is None:
            lay = check_any_rank(name, x, last, seen)
        else:
            check_image(name, x, layout, seen)
            lay = layout
        return op(x, layout=lay), state

    def rf(i):
        lay = layout or rank_layout(last, len(i))
        return shapes.spatial_dims(i, lay)[rf_axis(len(i) - 2)], 1, 1

    return describe(Layer(init, apply), LayerInfo(name, "pool", "global", rf=rf, flops=lambda i, o: numel(i)))


def GlobalAvgPool(*, layout="NHWC") -> Layer:
    """Mean over every spatial dim, any rank: (n, *spatial, c) or (n, c, *spatial) -> (n, c)."""
    return global_pool("GlobalAvgPool", ops.global_avg_pool, layout)


def GlobalMaxPool(*, layout="NHWC") -> Layer:
    """Max over every spatial dim, any rank (``ops.global_max_pool``, ties to the first): -> (n, c)."""
    return global_pool("GlobalMaxPool", ops.global_max_pool, layout)


def _output_size(output_size):
    if _checks.is_int(output_size):
        return _checks.positive_int(output_size, "output_size")
    if isinstance(output_size, (tuple, list)) and 1 <= len(output_size) <= 3:
        return tuple(_checks.positive_int(v, "output_size") for v in output_size)
    raise TypeError(f"output_size must be a positive int or one per spatial dim (1-3 ints), got {output_size!r}")


def adaptive_pool(name, op, output_size, layout) -> Layer:
    """Pooling to ``output_size`` over PyTorch's adaptive windows (``ops.adaptive_avg_pool``/``max``), any rank."""
    output_size = _output_size(output_size)
    last = channels_last(layout)
    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        in_shape, lay = any_rank_shape(name, in_shape, last)
        seen["in"] = in_shape
        return shapes.adaptive_pool_output_shape(in_shape, output_size, layout=lay), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        lay = check_any_rank(name, x, last, seen)
        check_fits(name, x, lambda: shapes.adaptive_pool_output_shape(jnp.shape(x), output_size, layout=lay))
        return op(x, output_size, layout=lay), state

    def rf(i):  # regular windows only: window = stride = in/out; else undefined ("-")
        lay = rank_layout(last, len(i))
        a = rf_axis(len(i) - 2)
        n_in, n_out = shapes.spatial_dims(i, lay)[a], shapes.normalize_tuple(output_size, "output_size", len(i) - 2)[a]
        return None if n_in % n_out else (n_in // n_out, n_in // n_out, 1)

    def flops(i, o):
        return shapes.adaptive_pool_flops(i, output_size, layout=rank_layout(last, len(i)))

    size = output_size if _checks.is_int(output_size) else "x".join(map(str, output_size))
    return describe(Layer(init, apply), LayerInfo(name, "pool", f"-> {size}", rf=rf, flops=flops))


def AdaptiveAvgPool(output_size, *, layout="NHWC") -> Layer:
    """Average over PyTorch's adaptive windows to ``output_size`` (an int or one per spatial dim), any rank:
    (n, *spatial, c) -> (n, *output_size, c); window ``i`` covers ``[floor(i*in/out), ceil((i+1)*in/out))``."""
    return adaptive_pool("AdaptiveAvgPool", ops.adaptive_avg_pool, output_size, layout)


def AdaptiveMaxPool(output_size, *, layout="NHWC") -> Layer:
    """Max over PyTorch's adaptive windows (see ``AdaptiveAvgPool``); the gradient goes to the first maximum."""
    return adaptive_pool("AdaptiveMaxPool", ops.adaptive_max_pool, output_size, layout)


# ----------------------------------------------------------------------------- SpatialDropout
def SpatialDropout(drop_rate, *, layout="NHWC") -> Layer:
    """Channel dropout (Tompson et al. 2015; PyTorch's ``Dropout1d/2d/3d``): with ``train=True`` zero each
    channel of each example, all its pixels at once, with probability ``drop_rate`` and scale the kept ones
    by ``1/(1 - drop_rate)``; identity with ``train=False``. Any rank 3-5. Training needs ``key=`` a
    PRNG key (checked as ``Dropout``'s).
    """
    drop_rate = _checks.float_in_range(drop_rate, "drop_rate", 0, 1)
    keep = 1.0 - drop_rate
    last = channels_last(layout)
    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        seen["in"] = in_shape = any_rank_shape("SpatialDropout", in_shape, last)[0]
        return in_shape, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        check_floating(x, "SpatialDropout")
        lay = check_any_rank("SpatialDropout", x, last, seen)
        if not train or drop_rate == 0:
            return x, state
        check_key(key, "SpatialDropout with train=True")
        shape = jnp.shape(x)
        c = shapes.channel_dim(shape, lay)
        mask = jax.random.bernoulli(key, keep, shapes.make_shape(shape[0], (1,) * (len(shape) - 2), c, lay))
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype)), state

    return describe(Layer(init, apply), LayerInfo("SpatialDropout", "dropout", f"p={drop_rate}",
                                                  flops=lambda i, o: numel(o)))

