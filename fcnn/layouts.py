"""Array layouts and the validation of per-dimension arguments, in 1, 2 or 3 spatial dimensions.

Layouts name the axes: channels-last ``NWC``, ``NHWC``, ``NDHWC`` (the default for each rank)
with kernels ``WIO``, ``HWIO``, ``DHWIO``; channels-first ``NCW``, ``NCHW``, ``NCDHW`` with
kernels ``OIW``, ``OIHW``, ``OIDHW`` (PyTorch's). The number of spatial dimensions (the rank) is
``len(layout) - 2``. ``fcnn.shapes`` re-exports every name here; its formulas build on them.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from fcnn import _checks

Pair = Tuple[int, int]

LAYOUTS = ("NHWC", "NCHW")  # the 2-D layouts (conv2d, the 2-D layers)
LAYOUTS_BY_RANK = {1: ("NWC", "NCW"), 2: ("NHWC", "NCHW"), 3: ("NDHWC", "NCDHW")}
ALL_LAYOUTS = tuple(l for pair in LAYOUTS_BY_RANK.values() for l in pair)
_SPATIAL_NAMES = {1: "width", 2: "height, width", 3: "depth, height, width"}


# ----------------------------------------------------------------------------- layouts
def is_channels_last(layout: str) -> bool:
    return layout.endswith("C")


def layout_rank(layout: str) -> int:
    """Number of spatial dimensions of a layout name (``"NDHWC"`` -> 3)."""
    return len(layout) - 2


def kernel_layout(layout: str) -> str:
    """The kernel layout that goes with an activation layout: ``NHWC`` -> ``HWIO``, ``NCDHW`` -> ``OIDHW``."""
    spatial = layout[1:-1] if is_channels_last(layout) else layout[2:]
    return spatial + "IO" if is_channels_last(layout) else "OI" + spatial


def normalize_layout(layout, ndim: Optional[int] = None, name: str = "layout") -> str:
    """Validate a layout name. Without ``ndim``: one of the 2-D ``LAYOUTS``. With the array's
    ``ndim``: ``None`` means channels-last for that rank, and the layout's rank must match it."""
    if ndim is None:
        return _checks.choice(layout, LAYOUTS, name)
    rank = ndim - 2
    if layout is not None:
        if layout not in ALL_LAYOUTS:  # name the layouts of x's rank when it has one
            _checks.choice(layout, LAYOUTS_BY_RANK.get(rank, ALL_LAYOUTS), name)
        if len(layout) != ndim:
            others = LAYOUTS_BY_RANK.get(rank)
            hint = f"; for rank {ndim} use {name} {' or '.join(others)}" if others else ""
            raise ValueError(f"x must have rank {len(layout)} to match {name}={layout!r}, got rank {ndim}{hint}")
        return layout
    if rank not in LAYOUTS_BY_RANK:
        raise ValueError(f"x must have 1, 2 or 3 spatial dimensions (rank 3, 4 or 5: batch, spatial..., "
                         f"channels), got rank {ndim}")
    return LAYOUTS_BY_RANK[rank][0]


def check_rank(x_shape: Sequence[int], layout: str, name: str = "x") -> None:
    """``x_shape`` must have the rank of ``layout`` (batch + spatial + channels)."""
    if len(x_shape) != len(layout):
        rank = layout_rank(layout)
        what = "channels, " + _SPATIAL_NAMES[rank] if not is_channels_last(layout) else _SPATIAL_NAMES[rank] + ", channels"
        raise ValueError(f"{name} must have rank {len(layout)} (batch, {what} in {layout}), got shape {tuple(x_shape)}")


def check_rank4(x_shape: Sequence[int], name: str = "x") -> None:
    if len(x_shape) != 4:
        raise ValueError(
            f"{name} must have rank 4 (batch, height, width, channels in NHWC or "
            f"batch, channels, height, width in NCHW), got shape {tuple(x_shape)}"
        )


def spatial_dims(shape: Sequence[int], layout: str) -> Tuple[int, ...]:
    """The spatial sizes of an activation shape in ``layout`` (``(h, w)`` for NHWC/NCHW)."""
    return tuple(shape[1:-1]) if is_channels_last(layout) else tuple(shape[2:])


def channel_dim(shape: Sequence[int], layout: str) -> int:
    return shape[-1] if is_channels_last(layout) else shape[1]


def make_shape(n: int, sizes: Sequence[int], c: int, layout: str) -> Tuple[int, ...]:
    return (n, *sizes, c) if is_channels_last(layout) else (n, c, *sizes)


def kernel_parts(w_shape: Sequence[int], layout: str) -> Tuple[Tuple[int, ...], int, int]:
    """``(kernel sizes, cin_per_group, cout)`` of a kernel in ``kernel_layout(layout)``."""
    if is_channels_last(layout):
        return tuple(w_shape[:-2]), w_shape[-2], w_shape[-1]
    return tuple(w_shape[2:]), w_shape[1], w_shape[0]


def kernel_dims(w_shape: Sequence[int], layout: str) -> Tuple[int, int, int, int]:
    """``(kh, kw, cin_per_group, cout)`` of a 2-D kernel: HWIO for NHWC, OIHW for NCHW."""
    (kh, kw), ci, co = kernel_parts(w_shape, layout)
    return kh, kw, ci, co


# ----------------------------------------------------------------------------- validation
def normalize_tuple(value, name: str, rank: int, *, minimum: int = 1) -> Tuple[int, ...]:
    """An int or ``rank`` ints -> a ``rank``-tuple; every entry must be ``>= minimum``."""
    if _checks.is_int(value):
        out = (int(value),) * rank
    elif isinstance(value, (tuple, list)) and len(value) == rank and all(_checks.is_int(v) for v in value):
        out = tuple(int(v) for v in value)
    else:
        what = {1: "a sequence of one int", 2: "a pair of ints"}.get(rank, f"{rank} ints")
        raise TypeError(f"{name} must be an int or {what}, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in every dimension, got {value!r}")
    return out


def normalize_pair(value, name: str, *, minimum: int = 1) -> Pair:
    """An int or a pair of ints -> ``(h, w)``; every entry must be ``>= minimum``."""
    return normalize_tuple(value, name, 2, minimum=minimum)
