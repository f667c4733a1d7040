"""Output-size and padding formulas, argument normalisation, counts.

The formulas (per spatial dimension):

    F_eff = D * (F - 1) + 1                       effective (dilated) kernel size
    W2    = floor((W1 - F_eff + P_total) / S) + 1 conv / pool output size
    SAME  : W2 = ceil(W1 / S); P_total = max((W2 - 1) * S + F_eff - W1, 0),
            split as (P_total // 2, P_total - P_total // 2)  (XLA: extra pad at the END)

PyTorch differs: ``padding="same"`` there is only allowed with stride 1 and puts
the odd extra pad on the *left/top*; fcnn follows XLA/TensorFlow.

A conv output has as many channels as there are kernels (C_out). A conv layer
has ``kh*kw*(cin/groups)*cout + cout`` parameters (sparse connections and
parameter sharing) instead of a dense layer's ``in*out + out``.

Every ``normalize_*`` function validates its argument and raises ``ValueError``
or ``TypeError`` naming the argument and the rule before any computation.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence, Tuple

Pair = Tuple[int, int]
Padding = Tuple[Pair, Pair]

from fcnn import _checks

LAYOUTS = ("NHWC", "NCHW")


# ----------------------------------------------------------------------------- validation

def normalize_pair(value, name: str, *, minimum: int = 1) -> Pair:
    """An int or a pair of ints -> ``(h, w)``; every entry must be ``>= minimum``."""
    if _checks.is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_checks.is_int(v) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in every dimension, got {value!r}")
    return pair


def normalize_layout(layout) -> str:
    """``layout`` if it is one of ``LAYOUTS``, else ValueError."""
    return _checks.choice(layout, LAYOUTS, "layout")


def check_rank4(x_shape: Sequence[int], name: str = "x") -> None:
    if len(x_shape) != 4:
        raise ValueError(
            f"{name} must have rank 4 (batch, height, width, channels in NHWC or "
            f"batch, channels, height, width in NCHW), got shape {tuple(x_shape)}"
        )


def spatial_dims(shape: Sequence[int], layout: str) -> Pair:
    """``(h, w)`` of an activation shape in ``layout``."""
    return (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])


def channel_dim(shape: Sequence[int], layout: str) -> int:
    return shape[3] if layout == "NHWC" else shape[1]


def make_shape(n: int, hw: Pair, c: int, layout: str) -> Tuple[int, int, int, int]:
    return (n, hw[0], hw[1], c) if layout == "NHWC" else (n, c, hw[0], hw[1])


def kernel_dims(w_shape: Sequence[int], layout: str) -> Tuple[int, int, int, int]:
    """``(kh, kw, cin_per_group, cout)`` of a kernel: HWIO for NHWC, OIHW for NCHW."""
    if layout == "NHWC":
        kh, kw, ci, co = w_shape
    else:
        co, ci, kh, kw = w_shape
    return kh, kw, ci, co


# ----------------------------------------------------------------------------- formulas
def effective_size(f: int, d: int = 1) -> int:
    """Dilated kernel extent: ``F_eff = D*(F-1) + 1``."""
    return d * (f - 1) + 1


def tap_pad_config(offset: Pair, stride: Pair, out_hw: Pair, grid_hw: Pair):
    """The ``lax.pad`` config (NHWC) that scatters a strided tap back into its grid.

    A tap reads ``grid[offset + p*stride]`` for output pixel ``p`` (per spatial axis); padding its
    ``out_hw`` values by this config puts each at that position in a ``grid_hw`` array, zeros
    elsewhere (interior padding ``stride - 1``): the transpose of the read.
    """
    return ((0, 0, 0),) + tuple(
        (offset[a], grid_hw[a] - offset[a] - (out_hw[a] - 1) * stride[a] - 1, stride[a] - 1) for a in range(2)
    ) + ((0, 0, 0),)


def output_size(w1: int, f: int, s: int = 1, p_total: int = 0, d: int = 1) -> int:
    """``W2 = floor((W1 - F_eff + P_total) / S) + 1`` (may be <= 0: empty output)."""
    return (w1 - effective_size(f, d) + p_total) // s + 1


def same_padding(w1: int, f: int, s: int = 1, d: int = 1) -> Pair:
    """XLA SAME padding ``(lo, hi)`` for one dimension; output size ``ceil(W1/S)``."""
    w2 = -(-w1 // s)
    total = max((w2 - 1) * s + effective_size(f, d) - w1, 0)
    return (total // 2, total - total // 2)


def normalize_padding(padding, in_hw: Pair, window: Pair, stride: Pair, dilation: Pair) -> Padding:
    """Any accepted padding spelling -> explicit ``((top, bottom), (left, right))``.

    Accepted: ``"VALID"``, ``"SAME"`` (case-insensitive), an int ``p`` (p on every
    side), a pair ``(ph, pw)`` (symmetric per dimension) or explicit
    ``((top, bottom), (left, right))``. Pads must be non-negative.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode == "SAME":
            return tuple(same_padding(in_hw[i], window[i], stride[i], dilation[i]) for i in range(2))
        raise ValueError(f"padding must be 'VALID', 'SAME', an int, a pair or ((top, bottom), (left, right)), got {padding!r}")
    if _checks.is_int(padding):
        p = int(padding)
        pads = ((p, p), (p, p))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(_checks.is_int(v) for v in padding):
        pads = ((int(padding[0]),) * 2, (int(padding[1]),) * 2)
    elif (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(_checks.is_int(v) for v in p) for p in padding)
    ):
        pads = tuple((int(p[0]), int(p[1])) for p in padding)
    else:
        raise TypeError(f"padding must be 'VALID', 'SAME', an int, a pair or ((top, bottom), (left, right)), got {padding!r}")
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return pads


def conv_output_hw(in_hw: Pair, window: Pair, stride: Pair, pads: Padding, dilation: Pair) -> Pair:
    return tuple(output_size(in_hw[i], window[i], stride[i], sum(pads[i]), dilation[i]) for i in range(2))


def check_nonempty(out_hw: Pair, in_hw: Pair, window: Pair, dilation: Pair, pads: Padding, what: str) -> None:
    if min(out_hw) < 1:
        raise ValueError(
            f"{what} is larger than the padded input: input {in_hw} with padding {pads} "
            f"cannot hold a window of effective size "
            f"{tuple(effective_size(window[i], dilation[i]) for i in range(2))} (output would be {out_hw})"
        )


def conv_output_shape(x_shape, w_shape, *, stride=1, padding="VALID", dilation=1, groups=1, layout="NHWC"):
    """Output shape of ``ops.conv2d`` from the formulas, validating every argument.

    Args:
      x_shape: (n, h, w, c) for NHWC or (n, c, h, w) for NCHW.
      w_shape: (kh, kw, c/groups, cout) HWIO for NHWC or (cout, c/groups, kh, kw) OIHW for NCHW.
    Returns:
      The output shape in the same layout; its channel count is the number of kernels.
    """
    layout = normalize_layout(layout)
    check_rank4(x_shape, "x")
    check_rank4(w_shape, "w")
    stride = normalize_pair(stride, "stride")
    dilation = normalize_pair(dilation, "dilation")
    groups = _checks.positive_int(groups, "groups")
    kh, kw, ci, co = kernel_dims(w_shape, layout)
    c = channel_dim(x_shape, layout)
    if c % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({c})")
    if co % groups:
        raise ValueError(f"groups={groups} must divide the output channels of w ({co})")
    if ci * groups != c:
        raise ValueError(
            f"w has {ci} input channels per group but x has {c} channels with groups={groups} "
            f"(w's input-channel dimension must equal channels/groups = {c // groups})"
        )
    in_hw = spatial_dims(x_shape, layout)
    pads = normalize_padding(padding, in_hw, (kh, kw), stride, dilation)
    out_hw = conv_output_hw(in_hw, (kh, kw), stride, pads, dilation)
    check_nonempty(out_hw, in_hw, (kh, kw), dilation, pads, "the kernel")
    return make_shape(x_shape[0], out_hw, co, layout)


def pool_output_shape(x_shape, window, *, stride=None, padding="VALID", dilation=1, layout="NHWC"):
    """Output shape of a 2-D pooling (``W2 = floor((W1 + P - F_eff)/S) + 1``); channels unchanged.

    ``stride=None`` means stride = window (non-overlapping windows).
    """
    layout = normalize_layout(layout)
    check_rank4(x_shape, "x")
    window = normalize_pair(window, "window")
    stride = window if stride is None else normalize_pair(stride, "stride")
    dilation = normalize_pair(dilation, "dilation")
    in_hw = spatial_dims(x_shape, layout)
    pads = normalize_padding(padding, in_hw, window, stride, dilation)
    out_hw = conv_output_hw(in_hw, window, stride, pads, dilation)
    check_nonempty(out_hw, in_hw, window, dilation, pads, "the window")
    return make_shape(x_shape[0], out_hw, channel_dim(x_shape, layout), layout)


# ----------------------------------------------------------------------------- counts
def conv_param_count(kh: int, kw: int, cin: int, cout: int, groups: int = 1, bias: bool = True) -> int:
    """``kh*kw*(cin/groups)*cout + cout`` (the bias term only if ``bias``)."""
    return kh * kw * (cin // groups) * cout + (cout if bias else 0)


def dense_param_count(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def conv_flops(out_shape, w_shape, layout: str = "NHWC", bias: bool = True) -> int:
    """FLOPs of one forward conv: 2 per multiply-add, ``kh*kw*cin/groups`` per output element, + bias."""
    kh, kw, ci, _ = kernel_dims(w_shape, layout)
    n_out = math.prod(out_shape)
    return 2 * n_out * kh * kw * ci + (n_out if bias else 0)


def dense_flops(batch: int, n_in: int, n_out: int, bias: bool = True) -> int:
    return 2 * batch * n_in * n_out + (batch * n_out if bias else 0)


def pool_flops(out_shape, window: Pair) -> int:
    """Comparisons/additions of a pooling: ``window_h*window_w - 1`` per output element."""
    return math.prod(out_shape) * (window[0] * window[1] - 1)


def receptive_field(layers: Iterable[Tuple[int, int, int]]) -> Tuple[int, int]:
    """Receptive field and jump of a stack of 1-D (kernel, stride, dilation) layers.

    ``r_l = r_{l-1} + (F_eff_l - 1) * j_{l-1}``, ``j_l = j_{l-1} * S_l`` with ``r_0 = j_0 = 1``.
    Returns ``(r, j)``: how many input pixels one output pixel sees, and the input distance
    between neighbouring output pixels.
    """
    r, j = 1, 1
    for f, s, d in layers:
        r += (effective_size(f, d) - 1) * j
        j *= s
    return r, j
