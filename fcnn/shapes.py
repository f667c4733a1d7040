"""Output-size and padding formulas and counts, in 1, 2 or 3 spatial dimensions.

The formulas (per spatial dimension):

    F_eff = D * (F - 1) + 1                       effective (dilated) kernel size
    W2    = floor((W1 - F_eff + P_total) / S) + 1 conv / pool output size
    SAME  : W2 = ceil(W1 / S); P_total = max((W2 - 1) * S + F_eff - W1, 0),
            split as (P_total // 2, P_total - P_total // 2)  (XLA: extra pad at the END)

PyTorch's ``padding="same"`` (stride 1 only) also puts the odd extra pad at the end
(pytorch/pytorch#45667: ``F.conv1d`` of [1, 2, 3, 4, 5] with kernel [1, 0] gives [1, 2, 3, 4, 5]),
so for stride 1 the two agree; fcnn's SAME also allows stride > 1, as XLA/TensorFlow do.

Layouts (``NWC`` ... ``NCDHW``) and the per-dimension argument validators live in
``fcnn.layouts`` and are re-exported here.

A conv output has as many channels as there are kernels (C_out). A conv layer
has ``prod(kernel)*(cin/groups)*cout + cout`` parameters (sparse connections and
parameter sharing) instead of a dense layer's ``in*out + out``.

Every ``normalize_*`` function validates its argument and raises ``ValueError``
or ``TypeError`` naming the argument and the rule before any computation.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence, Tuple

from fcnn import _checks
from fcnn.layouts import (  # noqa: F401  (re-exported: shapes is where callers look)
    LAYOUTS, LAYOUTS_BY_RANK, ALL_LAYOUTS,
    is_channels_last, layout_rank, kernel_layout, normalize_layout, check_rank,
    check_rank4, spatial_dims, channel_dim, make_shape, kernel_parts,
    kernel_dims, normalize_tuple, normalize_pair,
)

Pair = Tuple[int, int]
Padding = Tuple[Pair, ...]


# ----------------------------------------------------------------------------- formulas
def effective_size(f: int, d: int = 1) -> int:
    """Dilated kernel extent: ``F_eff = D*(F-1) + 1``."""
    return d * (f - 1) + 1


def tap_pad_config(offset: Sequence[int], stride: Sequence[int], out_sizes: Sequence[int],
                   grid_sizes: Sequence[int]):
    """The ``lax.pad`` config (channels-last) that scatters a strided tap back into its grid.

    A tap reads ``grid[offset + p*stride]`` for output pixel ``p`` (per spatial axis); padding its
    ``out_sizes`` values by this config puts each at that position in a ``grid_sizes`` array, zeros
    elsewhere (interior padding ``stride - 1``): the transpose of the read.
    """
    return ((0, 0, 0),) + tuple(
        (offset[a], grid_sizes[a] - offset[a] - (out_sizes[a] - 1) * stride[a] - 1, stride[a] - 1)
        for a in range(len(offset))
    ) + ((0, 0, 0),)


def output_size(w1: int, f: int, s: int = 1, p_total: int = 0, d: int = 1) -> int:
    """``W2 = floor((W1 - F_eff + P_total) / S) + 1`` (may be <= 0: empty output)."""
    return (w1 - effective_size(f, d) + p_total) // s + 1


def same_padding(w1: int, f: int, s: int = 1, d: int = 1) -> Pair:
    """XLA SAME padding ``(lo, hi)`` for one dimension; output size ``ceil(W1/S)``."""
    w2 = -(-w1 // s)
    total = max((w2 - 1) * s + effective_size(f, d) - w1, 0)
    return (total // 2, total - total // 2)


def _padding_rule(rank: int) -> str:
    if rank == 2:
        return "'VALID', 'SAME', an int, a pair or ((top, bottom), (left, right))"
    return f"'VALID', 'SAME', an int, {rank} ints or {rank} (low, high) pairs"


def normalize_padding(padding, in_sizes: Sequence[int], window: Sequence[int], stride: Sequence[int],
                      dilation: Sequence[int]) -> Padding:
    """Any accepted padding spelling -> explicit ``((lo, hi), ...)``, one pair per spatial dimension.

    Accepted: ``"VALID"``, ``"SAME"`` (case-insensitive), an int ``p`` (p on every side),
    one int per dimension (symmetric per dimension) or one ``(lo, hi)`` pair per dimension
    (2-D: ``((top, bottom), (left, right))``). Pads must be non-negative.
    """
    rank = len(in_sizes)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0),) * rank
        if mode == "SAME":
            return tuple(same_padding(in_sizes[i], window[i], stride[i], dilation[i]) for i in range(rank))
        raise ValueError(f"padding must be {_padding_rule(rank)}, got {padding!r}")
    seq = isinstance(padding, (tuple, list)) and len(padding) == rank
    if _checks.is_int(padding):
        pads = ((int(padding),) * 2,) * rank
    elif seq and all(_checks.is_int(v) for v in padding):
        pads = tuple((int(v),) * 2 for v in padding)
    elif seq and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(_checks.is_int(v) for v in p)
                     for p in padding):
        pads = tuple((int(p[0]), int(p[1])) for p in padding)
    else:
        raise TypeError(f"padding must be {_padding_rule(rank)}, got {padding!r}")
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return pads


def conv_output_hw(in_sizes: Sequence[int], window: Sequence[int], stride: Sequence[int], pads: Padding,
                   dilation: Sequence[int]) -> Tuple[int, ...]:
    """Output spatial sizes, one per dimension (the name is 2-D's; every rank works)."""
    return tuple(output_size(in_sizes[i], window[i], stride[i], sum(pads[i]), dilation[i])
                 for i in range(len(in_sizes)))


def check_nonempty(out_sizes, in_sizes, window, dilation, pads: Padding, what: str) -> None:
    if min(out_sizes) < 1:
        raise ValueError(
            f"{what} is larger than the padded input: input {tuple(in_sizes)} with padding {pads} "
            f"cannot hold a window of effective size "
            f"{tuple(effective_size(window[i], dilation[i]) for i in range(len(window)))} "
            f"(output would be {tuple(out_sizes)})"
        )


def check_groups(c: int, ci: int, co: int, groups: int) -> None:
    """``groups`` divides both channel counts and the kernel holds ``c/groups`` inputs per group."""
    if c % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({c})")
    if co % groups:
        raise ValueError(f"groups={groups} must divide the output channels of w ({co})")
    if ci * groups != c:
        raise ValueError(
            f"w has {ci} input channels per group but x has {c} channels with groups={groups} "
            f"(w's input-channel dimension must equal channels/groups = {c // groups})"
        )


def _conv_arguments(x_shape, w_shape, stride, dilation, groups, layout):
    """The arguments conv and transposed conv share, validated: x/w ranks and layout, stride, dilation,
    groups, kernel sizes >= 1. Returns ``(x_shape, layout, rank, stride, dilation, groups, window, ci, co)``."""
    x_shape, w_shape = _checks.sizes(x_shape, "x_shape"), _checks.sizes(w_shape, "w_shape")
    if layout is None and len(x_shape) != len(w_shape):
        raise ValueError(f"x and w must have the same rank (batch and channels + spatial dims; kernel: spatial + "
                         f"in + out), got x {tuple(x_shape)} and w {tuple(w_shape)}")
    layout = normalize_layout(layout, len(x_shape))
    check_rank(w_shape, layout, "w")
    rank = layout_rank(layout)
    stride = normalize_tuple(stride, "stride", rank)
    dilation = normalize_tuple(dilation, "dilation", rank)
    groups = _checks.positive_int(groups, "groups")
    window, ci, co = kernel_parts(w_shape, layout)
    if min(window) < 1:
        raise ValueError(f"w must have a kernel of size >= 1 in every spatial dimension, got kernel sizes "
                         f"{tuple(window)} (w shape {tuple(w_shape)}, {kernel_layout(layout)})")
    return x_shape, layout, rank, stride, dilation, groups, window, ci, co


def conv_output_shape(x_shape, w_shape, *, stride=1, padding="VALID", dilation=1, groups=1, layout=None):
    """Output shape of ``ops.conv2d`` / ``ops.conv`` from the formulas, validating every argument.

    Args:
      x_shape: (n, *spatial, c) channels-last or (n, c, *spatial) channels-first.
      w_shape: (*kernel, c/groups, cout) channels-last or (cout, c/groups, *kernel) channels-first.
      layout: any of ``ALL_LAYOUTS`` (its rank must match ``x_shape``), or None: channels-last.
    Returns:
      The output shape in the same layout; its channel count is the number of kernels.
    """
    x_shape, layout, rank, stride, dilation, groups, window, ci, co = _conv_arguments(
        x_shape, w_shape, stride, dilation, groups, layout)
    check_groups(channel_dim(x_shape, layout), ci, co, groups)
    in_sizes = spatial_dims(x_shape, layout)
    pads = normalize_padding(padding, in_sizes, window, stride, dilation)
    out_sizes = conv_output_hw(in_sizes, window, stride, pads, dilation)
    check_nonempty(out_sizes, in_sizes, window, dilation, pads, "the kernel")
    return make_shape(x_shape[0], out_sizes, co, layout)


def pool_output_shape(x_shape, window, *, stride=None, padding="VALID", dilation=1, layout=None):
    """Output shape of a pooling (``W2 = floor((W1 + P - F_eff)/S) + 1``); channels unchanged.

    ``stride=None`` means stride = window (non-overlapping windows). Any rank, as ``conv_output_shape``.
    """
    x_shape = _checks.sizes(x_shape, "x_shape")
    layout = normalize_layout(layout, len(x_shape))
    rank = layout_rank(layout)
    window = normalize_tuple(window, "window", rank)
    stride = window if stride is None else normalize_tuple(stride, "stride", rank)
    dilation = normalize_tuple(dilation, "dilation", rank)
    in_sizes = spatial_dims(x_shape, layout)
    pads = normalize_padding(padding, in_sizes, window, stride, dilation)
    out_sizes = conv_output_hw(in_sizes, window, stride, pads, dilation)
    check_nonempty(out_sizes, in_sizes, window, dilation, pads, "the window")
    return make_shape(x_shape[0], out_sizes, channel_dim(x_shape, layout), layout)


# ----------------------------------------------------------------------------- counts
def conv_param_count(kh: int, kw: int, cin: int, cout: int, groups: int = 1, bias: bool = True) -> int:
    """``kh*kw*(cin/groups)*cout + cout`` (the bias term only if ``bias``); 1-D: kw=1, 3-D: kh=kd*kh."""
    check_groups(cin, cin // _checks.positive_int(groups, "groups"), cout, groups)
    return kh * kw * (cin // groups) * cout + (cout if bias else 0)


def dense_param_count(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def conv_flops(out_shape, w_shape, layout: str = "NHWC", bias: bool = True) -> int:
    """FLOPs of one forward conv: 2 per multiply-add, ``prod(kernel)*cin/groups`` per output element, + bias."""
    window, ci, _ = kernel_parts(w_shape, layout)
    n_out = math.prod(out_shape)
    return 2 * n_out * math.prod(window) * ci + (n_out if bias else 0)


def dense_flops(batch: int, n_in: int, n_out: int, bias: bool = True) -> int:
    return 2 * batch * n_in * n_out + (batch * n_out if bias else 0)


def pool_flops(out_shape, window: Sequence[int]) -> int:
    """Comparisons/additions of a pooling: ``prod(window) - 1`` per output element."""
    return math.prod(out_shape) * (math.prod(window) - 1)


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


# ---- transposed convolution
# conv_transpose(y, w) is the adjoint (w.r.t. its input) of conv(x, w) with the SAME kernel array; per
# spatial dimension, with conv pads (lo, hi) and output_padding op (PyTorch's formula):
#     out = (in - 1)*S - lo - hi + F_eff + op,    out[j] = full[j + lo]  (full: length (in-1)*S + F_eff)
# lax/Flax strings: "VALID" = pads (0, 0), "SAME" = the pads SAME gives a conv of an in*S input, both with
# op = max(S - F_eff, 0); so VALID gives in*S + max(F_eff - S, 0) and SAME gives in*S (jax 0.10.2, measured).
def normalize_output_padding(output_padding, stride: Sequence[int], dilation: Sequence[int]) -> Tuple[int, ...]:
    """An int or one int per dimension, each ``>= 0`` and ``< max(stride, dilation)`` (PyTorch's rule)."""
    op = normalize_tuple(output_padding, "output_padding", len(stride), minimum=0)
    for i, (o, s, d) in enumerate(zip(op, stride, dilation)):
        if o >= max(s, d):
            raise ValueError(f"output_padding must be smaller than max(stride, dilation) in every dimension, "
                             f"got {o} >= max({s}, {d}) in dimension {i}")
    return op


def conv_transpose_padding(padding, output_padding, in_sizes: Sequence[int], window: Sequence[int],
                           stride: Sequence[int], dilation: Sequence[int]) -> Tuple[Padding, Tuple[int, ...]]:
    """-> explicit conv pads ``((lo, hi), ...)`` and output_padding. Ints/pairs: the pads of the conv it
    transposes (PyTorch's); "VALID"/"SAME" as lax (above) fix output_padding, which must then be 0."""
    rank = len(in_sizes)
    if isinstance(padding, str) and padding.upper() in ("VALID", "SAME"):
        if normalize_tuple(output_padding, "output_padding", rank, minimum=0) != (0,) * rank:
            raise ValueError(f"output_padding must be 0 with padding={padding!r} (the string fixes the output size), "
                             f"got {output_padding!r}")
        conv_in = tuple(n * s for n, s in zip(in_sizes, stride))  # SAME: a conv of this input gives in_sizes
        pads = normalize_padding(padding, conv_in, window, stride, dilation)
        return pads, tuple(max(s - effective_size(f, d), 0) for f, s, d in zip(window, stride, dilation))
    pads = normalize_padding(padding, in_sizes, window, stride, dilation)
    return pads, normalize_output_padding(output_padding, stride, dilation)


def conv_transpose_output_size(w1: int, f: int, s: int = 1, p_total: int = 0, d: int = 1, output_padding: int = 0) -> int:
    """``(W1 - 1)*S - P_total + D*(F - 1) + output_padding + 1`` (PyTorch's ConvTranspose formula)."""
    return (w1 - 1) * s - p_total + effective_size(f, d) + output_padding


def conv_transpose_output_shape(x_shape, w_shape, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                                layout=None):
    """Output shape of ``ops.conv_transpose``, validating every argument.

    Args:
      x_shape: (n, *spatial, cout) channels-last or (n, cout, *spatial) channels-first: the channels of
        the *output* of the convolution whose adjoint this is.
      w_shape: that convolution's kernel, ``kernel_layout(layout)``: (*k, cin/groups, cout) or
        (cout, cin/groups, *k) (= PyTorch's ConvTranspose weight (in_channels, out_channels/groups, *k)).
    Returns:
      (n, *out, cin) or (n, cin, *out) with ``out`` from ``conv_transpose_output_size``.
    """
    x_shape, layout, rank, stride, dilation, groups, window, ci, co = _conv_arguments(
        x_shape, w_shape, stride, dilation, groups, layout)
    if co % groups:
        raise ValueError(f"groups={groups} must divide the output channels of w ({co}), the channels of x")
    if channel_dim(x_shape, layout) != co:
        raise ValueError(f"x must have as many channels as w has output channels ({co}; conv_transpose maps a "
                         f"convolution's output channels back to its input channels), got {channel_dim(x_shape, layout)}")
    in_sizes = spatial_dims(x_shape, layout)
    pads, op = conv_transpose_padding(padding, output_padding, in_sizes, window, stride, dilation)
    out = tuple(conv_transpose_output_size(in_sizes[i], window[i], stride[i], sum(pads[i]), dilation[i], op[i])
                for i in range(rank))
    if min(out) < 1:
        raise ValueError(f"padding {pads} crops more than the transposed convolution produces: input {tuple(in_sizes)} "
                         f"would give output {out}")
    return make_shape(x_shape[0], out, ci * groups, layout)


def conv_transpose_flops(x_shape, out_shape, w_shape, layout: str = "NHWC", bias: bool = True) -> int:
    """FLOPs: the multiply-adds of the conv it transposes (the same products), + the bias adds."""
    return conv_flops(x_shape, w_shape, layout, bias=False) + (math.prod(out_shape) if bias else 0)


def conv_transpose_receptive_field(f: int, s: int = 1, d: int = 1) -> int:
    """Most input pixels (per dimension) one output pixel sees: output ``j`` gets ``x[i] w[t]`` for
    ``j = i*S + t*D``; the taps ``t < F`` with ``t*D`` in one class mod S: ``ceil(F / (S / gcd(S, D))))``."""
    period = s // math.gcd(s, d)
    return -(-f // period)


# ---- adaptive pooling and upsampling
def adaptive_pool_windows(in_size: int, out_size: int) -> list[Pair]:
    """PyTorch's adaptive-pool windows along one dimension: ``[start_i, end_i)`` for ``i < out_size`` with

        start_i = floor(i * in / out),   end_i = ceil((i + 1) * in / out)

    (``start_index``/``end_index`` in PyTorch's aten/src/ATen/native/AdaptivePooling.h; here in exact
    integer arithmetic). Every window is non-empty; neighbours overlap when ``in`` is not a multiple
    of ``out``, and ``out > in`` repeats cells. in=5, out=3: [0, 2), [1, 4), [3, 5).
    """
    return [((i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)) for i in range(out_size)]


def adaptive_pool_output_shape(x_shape, output_size, *, layout=None):
    """Output shape of an adaptive pool: ``output_size`` (an int or one per spatial dim) in place of
    the spatial sizes, channels unchanged. The input's spatial sizes must be >= 1."""
    x_shape = _checks.sizes(x_shape, "x_shape")
    layout = normalize_layout(layout, len(x_shape))
    out_sizes = normalize_tuple(output_size, "output_size", layout_rank(layout))
    in_sizes = spatial_dims(x_shape, layout)
    if min(in_sizes) < 1:
        raise ValueError(f"x must have non-empty spatial dimensions, got shape {tuple(x_shape)}")
    return make_shape(x_shape[0], out_sizes, channel_dim(x_shape, layout), layout)


def adaptive_pool_flops(x_shape, output_size, *, layout=None) -> int:
    """Comparisons/additions of an adaptive pool: ``cells - 1`` per output element, summed over the
    windows (separable: the cells of all windows are the product over dims of the window lengths' sums)."""
    out_shape = adaptive_pool_output_shape(x_shape, output_size, layout=layout)
    layout = normalize_layout(layout, len(x_shape))
    in_sizes, out_sizes = spatial_dims(x_shape, layout), spatial_dims(out_shape, layout)
    cells = math.prod(sum(e - s for s, e in adaptive_pool_windows(i, o)) for i, o in zip(in_sizes, out_sizes))
    return x_shape[0] * channel_dim(x_shape, layout) * (cells - math.prod(out_sizes))


def normalize_scale(scale, rank: int, name: str = "scale") -> Tuple[float, ...]:
    """A positive finite number, or ``rank`` of them (one per spatial dim) -> ``rank`` floats."""
    if isinstance(scale, (tuple, list)):
        if len(scale) != rank:
            raise ValueError(f"{name} must be a number or {rank} numbers (one per spatial dim), got {scale!r}")
        return tuple(_checks.positive_float(s, name) for s in scale)
    return (_checks.positive_float(scale, name),) * rank


def upsample_output_shape(x_shape, scale, *, layout=None):
    """Output shape of ``ops.upsample``: ``out = floor(in * scale)`` per spatial dim (PyTorch's
    ``interpolate(scale_factor=...)``, computed in Python floats as PyTorch does); must be >= 1."""
    x_shape = _checks.sizes(x_shape, "x_shape")
    layout = normalize_layout(layout, len(x_shape))
    scales = normalize_scale(scale, layout_rank(layout))
    in_sizes = spatial_dims(x_shape, layout)
    if not all(math.isfinite(i * s) for i, s in zip(in_sizes, scales)):
        raise ValueError(f"scale={scale!r} is too large: spatial sizes {tuple(in_sizes)} times it overflow a float")
    out_sizes = tuple(math.floor(i * s) for i, s in zip(in_sizes, scales))
    if min(out_sizes) < 1:
        raise ValueError(f"scale={scale!r} gives an empty output: spatial sizes {tuple(in_sizes)} -> "
                         f"floor(in * scale) = {out_sizes}")
    return make_shape(x_shape[0], out_sizes, channel_dim(x_shape, layout), layout)


def upsample_flops(x_shape, scale, *, method: str = "nearest", layout=None) -> int:
    """FLOPs of ``ops.upsample``: 0 for "nearest" (a gather); for the linear methods 3 per element
    (two multiplies, one add) of each separable pass, axis by axis (pass ``a`` has the output size
    in dims ``<= a`` and the input size after)."""
    method = _checks.choice(method, ("nearest", "linear", "bilinear", "trilinear"), "method")  # ops.UPSAMPLE_METHODS
    out_shape = upsample_output_shape(x_shape, scale, layout=layout)
    if method == "nearest":
        return 0
    layout = normalize_layout(layout, len(x_shape))
    in_sizes, out_sizes = spatial_dims(x_shape, layout), spatial_dims(out_shape, layout)
    nc = x_shape[0] * channel_dim(x_shape, layout)
    return sum(3 * nc * math.prod(out_sizes[: a + 1]) * math.prod(in_sizes[a + 1 :]) for a in range(len(in_sizes)))
