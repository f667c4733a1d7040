"""Writing pictures as PNG files with matplotlib (the object API on the Agg canvas, no pyplot).

matplotlib is optional: it is imported only when a picture is written, and without it an
``ImportError`` says how to install it. ``fcnn.viz`` and ``fcnn.attribution`` compute their
pictures as arrays and hand them here to be saved.

    save_array(img, path, cmap=, scale=, vmin=, vmax=)   a 2-D array, one element per scale x scale block
    save_nonneg(m, path, scale)                          a map >= 0 on the colour range [0, max]
    figure(figsize, dpi=100) / save_figure(fig, path)    a figure of its own canvas, written at 100 dpi
    feature_maps_figure(maps, path, max_channels)        one row of channels per layer
    save_curves(history, path)                           loss and accuracy per epoch (fcnn.report)

PNG sizes: an array picture is exactly ``(rows * scale, cols * scale)`` pixels; a figure is
``figsize * dpi`` pixels. Non-negative maps use the colour range ``[0, max]``, so zero is always
the darkest colour (an all-zero map is one colour: the truthful, blank picture).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from fcnn import _checks

__all__ = ["INSTALL", "matplotlib_or_raise", "save_array", "save_nonneg", "figure", "save_figure",
           "feature_maps_figure", "save_curves"]

INSTALL = "pip install matplotlib (or 'fcnn[viz]')"


def matplotlib_or_raise():
    """(matplotlib, Figure, FigureCanvasAgg), or an ImportError that says how to install matplotlib."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        import matplotlib.image  # noqa: F401
    except ImportError as e:
        raise ImportError(f"saving a picture needs matplotlib, which is not installed: {INSTALL}") from e
    return matplotlib, Figure, FigureCanvasAgg


def _ensure_parent(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def save_array(img: np.ndarray, path: str, *, cmap: str = "viridis", scale: int = 8,
               vmin: Optional[float] = None, vmax: Optional[float] = None) -> None:
    """Write a 2-D array as a PNG of exactly (rows*scale, cols*scale) pixels (NaN: the lowest colour)."""
    mpl, _, _ = matplotlib_or_raise()
    scale = _checks.positive_int(scale, "scale")
    img = np.asarray(img, np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D picture, got shape {img.shape}")
    img = np.nan_to_num(img, nan=np.nanmin(img) if np.isfinite(img).any() else 0.0)
    big = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    _ensure_parent(path)
    mpl.image.imsave(path, big, cmap=cmap, vmin=vmin, vmax=vmax, format="png")


def save_nonneg(m: np.ndarray, path: str, scale: int) -> None:
    """A map >= 0 on the colour range [0, max] (an all-zero map: the darkest colour everywhere)."""
    top = float(np.max(m)) if m.size else 0.0
    save_array(m, path, cmap="inferno", scale=scale, vmin=0.0, vmax=top if top > 0 else 1.0)


def figure(figsize: Tuple[float, float], dpi: int = 100):
    """A matplotlib Figure with its own Agg canvas (no pyplot, no global state)."""
    _, Figure, Canvas = matplotlib_or_raise()
    fig = Figure(figsize=figsize, dpi=dpi)
    Canvas(fig)
    return fig


def save_figure(fig, path: str, dpi: int = 100) -> None:
    _ensure_parent(path)
    fig.savefig(path, dpi=dpi, format="png")


def _channel_strip(a: np.ndarray, channels: int) -> np.ndarray:
    """(h, w, c) -> (h, channels * (w + gap) - gap): the first ``channels`` maps side by side, each
    min-max scaled to [0, 1] on its own (a constant map is 0), NaN (drawn blank) in the gaps and
    in the slots of missing channels."""
    h, w, c = a.shape
    gap = max(1, w // 4)
    strip = np.full((h, channels * (w + gap) - gap), np.nan)
    for j in range(min(c, channels)):
        m = a[..., j].astype(np.float64)
        lo, hi = np.min(m), np.max(m)
        strip[:, j * (w + gap): j * (w + gap) + w] = (m - lo) / (hi - lo) if hi > lo else 0.0
    return strip


def feature_maps_figure(maps: Sequence[Tuple[str, np.ndarray]], path: str, max_channels: int = 8) -> None:
    """One row per ``(name, activation)``: up to ``max_channels`` channels of an (h, w, c) map side by
    side (each on its own colour scale), or a vector as a bar chart across the row;
    (2 * max_channels) x (1.6 * rows) inches at 100 dpi. One axes per row keeps drawing fast."""
    max_channels = _checks.positive_int(max_channels, "max_channels")
    fig = figure((2 * max_channels, 1.6 * len(maps)))
    axes = fig.subplots(len(maps), 1, squeeze=False)[:, 0]
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.01, top=0.99, hspace=0.15)
    for ax, (name, a) in zip(axes, maps):
        if a.ndim == 1:  # a vector: one bar chart across the row
            ax.bar(np.arange(a.shape[0]), a, width=1.0)
            ax.set_xlim(-0.5, a.shape[0] - 0.5)
        elif a.ndim == 3:
            ax.imshow(_channel_strip(a, max_channels), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_anchor("W")
            ax.spines[:].set_visible(False)
        else:
            ax.axis("off")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, fontsize=8)
    save_figure(fig, path)


def save_curves(history: List[dict], path: str) -> None:
    """Loss and accuracy per epoch (``fcnn.report.plot_curves``, 900 x 350 pixels); raises without matplotlib."""
    from fcnn.report import plot_curves

    matplotlib_or_raise()
    _ensure_parent(path)
    plot_curves(history, path)


def side_by_side_figure(panels: Sequence[Tuple[str, np.ndarray]], path: str, *, cmaps: Sequence[str],
                        ranges: Optional[Sequence[Optional[Tuple[float, float]]]] = None) -> None:
    """Images (h, w) in one row, each with its title and colour map (e.g. input / prediction / target).

    ``ranges``: per panel ``(vmin, vmax)`` or None (the image's own range); class maps pin it to the
    class range so that one colour is one class in every panel and every picture."""
    fig = figure((2.6 * len(panels), 2.8))
    ranges = ranges or (None,) * len(panels)
    for ax, (title, img), cmap, lim in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, cmaps, ranges):
        ax.imshow(img, cmap=cmap, interpolation="nearest", **({} if lim is None else dict(vmin=lim[0], vmax=lim[1])))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
