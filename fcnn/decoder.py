"""Decoder layers, which grow the spatial size: ``ConvTranspose1D/2D/3D`` and ``Upsample``.

Every constructor returns a ``Layer(init, apply)`` (contract in ``fcnn.types``); validation and input
checks as in ``fcnn.layers_nd``, whose helpers they share.

Transposed convolution (``ops.conv_transpose``) is the adjoint of a convolution with respect to its
input. Its kernel is stored as the kernel OF THAT CONVOLUTION (the one mapping ``out_channels`` back
to ``in_channels``): channels-last ``(*k, out_channels/groups, in_channels)`` (WIO/HWIO/DHWIO),
channels-first ``(in_channels, out_channels/groups, *k)`` = PyTorch's ``ConvTranspose{1,2,3}d.weight``
``(in_channels, out_channels/groups, *kernel_size)``, so a PyTorch weight loads as is with
``layout="NCHW"``. Arguments follow PyTorch's: ``stride``, ``padding`` (an int, one per dim or
``(lo, hi)`` pairs: the conv's pads, cropped from the output; or lax's "SAME"/"VALID"),
``output_padding`` (``< max(stride, dilation)``, added at the end), ``dilation``, ``groups``. Output
size per dim: ``(in - 1)*stride - pad_total + dilation*(k - 1) + output_padding + 1``. The fans given
to ``w_init`` are ``init.fans`` of the stored kernel: ``fan_in = prod(k)*out_channels/groups``, what
PyTorch computes from its ConvTranspose weight (its dim 1 times the kernel size).

``Upsample(scale, method, align_corners)`` is ``ops.upsample`` (nearest, or linear/bilinear/trilinear
for 1/2/3 spatial dims) in any rank, no params.

``summary``: FLOPs of a transposed conv are those of the convolution it transposes plus the bias
(``shapes.conv_transpose_flops``); of upsampling ``shapes.upsample_flops``. The receptive field
column shows "-" from the first decoder layer on: one output pixel sees a varying number of input
pixels (``shapes.conv_transpose_receptive_field`` gives the most) and neighbouring outputs are a
fraction of an input pixel apart, so ``r``/``j`` have no integer value.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fcnn import _checks, ops, shapes
from fcnn import init as initializers
from fcnn.layers_nd import (any_rank_shape, channels_last, check_any_rank, check_fits, check_image, geometry_text,
                            kernel_input, kernel_options, kernel_params, kernel_shape, padding_text,
                            rank_layout)
from fcnn.ops.conv_transpose import CONV_TRANSPOSE_CHOICES
from fcnn.types import Layer, LayerInfo, describe

__all__ = ["ConvTranspose1D", "ConvTranspose2D", "ConvTranspose3D", "Upsample", "conv_transpose_layer"]


def _undefined_rf(in_shape):
    return None  # summary: "-" from here on (module docstring)


def conv_transpose_layer(name, rank, out_channels, kernel, *, stride=1, padding=0, output_padding=0, dilation=1,
                         groups=1, use_bias=True, layout=None, impl="lax", precision=None,
                         w_init=initializers.he_normal(), b_init=initializers.zeros,
                         param_dtype=jnp.float32) -> Layer:
    """The transposed convolution layer in ``rank`` spatial dims; ``ConvTranspose2D`` documents the arguments."""
    layout = shapes.LAYOUTS_BY_RANK[rank][0] if layout is None else layout
    o = kernel_options(rank, out_channels, kernel, stride, dilation, groups, layout, precision, use_bias, w_init,
                       b_init, param_dtype)
    kernel, stride, dilation, groups, layout = o["kernel"], o["stride"], o["dilation"], o["groups"], o["layout"]
    # the padding spelling and PyTorch's output_padding rule, with a dummy input size
    shapes.conv_transpose_padding(padding, output_padding, (1,) * rank, kernel, stride, dilation)
    impl = _checks.choice(impl, CONV_TRANSPOSE_CHOICES, "impl")
    geo = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups,
               layout=layout)
    seen = {}  # init's last in_shape, only to word apply's errors

    def w_shape(cin):
        return kernel_shape(kernel, o["out_channels"] // groups, cin, layout)

    def init(key, in_shape):
        key, in_shape, cin = kernel_input(name, key, in_shape, layout, groups, seen)
        ws = w_shape(cin)
        out_shape = shapes.conv_transpose_output_shape(in_shape, ws, **geo)
        return out_shape, kernel_params(key, ws, o["out_channels"], layout, groups, o["use_bias"], o["w_init"],
                                        o["b_init"], o["param_dtype"]), {}

    def apply(params, state, x, *, key=None, train=False):
        ws = jnp.shape(params["w"])
        cin = shapes.kernel_parts(ws, layout)[2]  # the conv's output channels: this layer's input
        check_image(name, x, layout, seen, cin)
        check_fits(name, x, lambda: shapes.conv_transpose_output_shape(jnp.shape(x), ws, **geo))
        w = params["w"].astype(x.dtype)
        b = params["b"].astype(x.dtype) if o["use_bias"] else None
        return ops.conv_transpose(x, w, b, impl=impl, precision=o["precision"], **geo), state

    def flops(i, out):
        return shapes.conv_transpose_flops(i, out, w_shape(shapes.channel_dim(i, layout)), layout, o["use_bias"])

    op = output_padding if _checks.is_int(output_padding) else tuple(output_padding)
    detail = (f"{o['out_channels']}@{geometry_text(kernel, stride)} {padding_text(padding)}"
              + (f" op={op}" if op else "") + (f" g{groups}" if groups > 1 else ""))
    return describe(Layer(init, apply), LayerInfo(name, "conv", detail, rf=_undefined_rf, flops=flops))


def ConvTranspose1D(out_channels, kernel, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                    use_bias=True, layout="NWC", impl="lax", precision=None, w_init=initializers.he_normal(),
                    b_init=initializers.zeros, param_dtype=jnp.float32) -> Layer:
    """Transposed convolution over (n, w, cin) NWC or (n, cin, w) NCW; arguments as ``ConvTranspose2D``."""
    return conv_transpose_layer("ConvTranspose1D", 1, out_channels, kernel, stride=stride, padding=padding,
                                output_padding=output_padding, dilation=dilation, groups=groups, use_bias=use_bias,
                                layout=layout, impl=impl, precision=precision, w_init=w_init, b_init=b_init,
                                param_dtype=param_dtype)


def ConvTranspose2D(out_channels, kernel, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                    use_bias=True, layout="NHWC", impl="lax", precision=None, w_init=initializers.he_normal(),
                    b_init=initializers.zeros, param_dtype=jnp.float32) -> Layer:
    """Transposed convolution layer (``ops.conv_transpose``), PyTorch's ``ConvTranspose2d`` arguments.

    Args:
      out_channels: output channels (the input channels of the convolution it transposes).
      kernel: int or one per spatial dim.
      stride, dilation: int or one per dim. groups: divides the input and output channels.
      padding: int, one per dim, ``(lo, hi)`` pairs (cropped from the output), or "SAME" (output
        ``in*stride``) / "VALID" as ``lax.conv_transpose``.
      output_padding: int or one per dim, ``< max(stride, dilation)``, extra rows at the end (0 with
        a string padding).
      layout: NHWC (kernel HWIO) or NCHW (kernel OIHW = PyTorch's weight).
      impl: one of ``ops.CONV_TRANSPOSE_IMPLS`` or "auto". precision, use_bias, w_init, b_init, param_dtype:
        as ``fcnn.layers.Conv2D``.
    Params:
      {"w": (kh, kw, out_channels/groups, cin) HWIO or (cin, out_channels/groups, kh, kw) OIHW,
      "b": (out_channels,)} (module docstring: the kernel of the convolution it transposes).
    Shapes:
      (n, h, w, cin) -> (n, oh, ow, out_channels), ``oh = (h-1)*s - pad_total + d*(k-1) + output_padding + 1``.
    """
    return conv_transpose_layer("ConvTranspose2D", 2, out_channels, kernel, stride=stride, padding=padding,
                                output_padding=output_padding, dilation=dilation, groups=groups, use_bias=use_bias,
                                layout=layout, impl=impl, precision=precision, w_init=w_init, b_init=b_init,
                                param_dtype=param_dtype)


def ConvTranspose3D(out_channels, kernel, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                    use_bias=True, layout="NDHWC", impl="lax", precision=None, w_init=initializers.he_normal(),
                    b_init=initializers.zeros, param_dtype=jnp.float32) -> Layer:
    """Transposed convolution over (n, d, h, w, cin) NDHWC or (n, cin, d, h, w) NCDHW; as ``ConvTranspose2D``."""
    return conv_transpose_layer("ConvTranspose3D", 3, out_channels, kernel, stride=stride, padding=padding,
                                output_padding=output_padding, dilation=dilation, groups=groups, use_bias=use_bias,
                                layout=layout, impl=impl, precision=precision, w_init=w_init, b_init=b_init,
                                param_dtype=param_dtype)


def Upsample(scale, *, method="nearest", align_corners=False, layout="NHWC") -> Layer:
    """Upsampling (``ops.upsample``) in any rank: every spatial size ``in -> floor(in * scale)``.

    Args:
      scale: a positive number or one per spatial dim.
      method: "nearest" (any rank), "linear" (1-D), "bilinear" (2-D) or "trilinear" (3-D), with
        PyTorch's half-pixel centres (``align_corners=False``) or ``align_corners=True``.
      layout: any channels-last name (default) or channels-first name; the rank comes from in_shape.
    """
    _checks.choice(method, ops.UPSAMPLE_METHODS, "method")
    _checks.boolean(align_corners, "align_corners")
    if not isinstance(scale, (tuple, list)):
        _checks.positive_float(scale, "scale")
    last = channels_last(layout)
    kw = dict(method=method, align_corners=align_corners)
    seen = {}  # init's last in_shape, only to word apply's errors

    def init(key, in_shape):
        in_shape, lay = any_rank_shape("Upsample", in_shape, last)
        seen["in"] = in_shape
        out = jax.eval_shape(lambda x: ops.upsample(x, scale, layout=lay, **kw),
                             jax.ShapeDtypeStruct(in_shape, jnp.float32))  # the op validates method/rank/scale
        return tuple(out.shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        lay = check_any_rank("Upsample", x, last, seen)
        return ops.upsample(x, scale, layout=lay, **kw), state

    def flops(i, o):
        return shapes.upsample_flops(i, scale, method=method, layout=rank_layout(last, len(i)))

    detail = f"x{scale} {method}" + (" align_corners" if align_corners else "")
    return describe(Layer(init, apply), LayerInfo("Upsample", "upsample", detail, rf=_undefined_rf, flops=flops))
