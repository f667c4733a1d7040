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

Non-finite values (NaN, +-inf) are never drawn as a colour of the map: the colour ranges are taken
over the finite values only and every non-finite element is drawn in ``BAD_COLOUR`` (magenta, far
from every colour map used here); the functions that know what a value is (``fcnn.viz.filters``,
``feature_maps_figure``, the attribution maps) also warn ``NonFiniteWarning`` naming it.

Where a picture goes: the public functions with ``save=`` check it with ``check_save`` before they
compute anything (``fcnn._checks.new_file``: an existing file is refused unless ``overwrite=True``,
a missing folder is refused, never created). The writers here then write that checked path.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np

from fcnn import _checks

__all__ = ["INSTALL", "BAD_COLOUR", "NonFiniteWarning", "check_save", "warn_non_finite", "matplotlib_or_raise",
           "save_array", "save_nonneg", "figure", "save_figure", "feature_maps_figure", "save_curves"]

INSTALL = "pip install matplotlib (or 'fcnn[viz]')"
BAD_COLOUR = "magenta"  # non-finite values: RGB distance >= 0.74 from gray, inferno, RdBu_r, Blues, viridis


class NonFiniteWarning(UserWarning):
    """A picture holds NaN or +-inf values (drawn in ``BAD_COLOUR``, not as a colour of the map)."""


def check_save(save, overwrite) -> Optional[str]:
    """``save=`` of a public function, checked before it computes: None (nothing is written), or a
    path ``fcnn._checks.new_file`` accepts (not a directory, in an existing writable folder, not an
    existing file unless ``overwrite`` is True)."""
    overwrite = _checks.boolean(overwrite, "overwrite")
    return None if save is None else _checks.new_file(save, "save", overwrite=overwrite)


def warn_non_finite(a: np.ndarray, what: str, stacklevel: int = 3) -> bool:
    """Warn ``NonFiniteWarning`` if ``a`` holds NaN or +-inf (``what`` names it); True if it did."""
    bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    if bad:
        warnings.warn(f"{what} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf) of {np.size(a)}; "
                      f"they are drawn in {BAD_COLOUR}", NonFiniteWarning, stacklevel=stacklevel)
    return bool(bad)


def _finite_range(img: np.ndarray) -> Tuple[float, float]:
    finite = img[np.isfinite(img)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


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


def save_array(img: np.ndarray, path: str, *, cmap: str = "viridis", scale: int = 8,
               vmin: Optional[float] = None, vmax: Optional[float] = None) -> None:
    """Write a 2-D array as a PNG of exactly (rows*scale, cols*scale) pixels to ``path`` (checked by the
    caller). ``vmin`` / ``vmax`` default to the finite values' range; NaN and +-inf: ``BAD_COLOUR``."""
    mpl, _, _ = matplotlib_or_raise()
    scale = _checks.positive_int(scale, "scale")
    img = np.asarray(img, np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D picture, got shape {img.shape}")
    lo, hi = _finite_range(img)
    big = np.ma.masked_invalid(np.repeat(np.repeat(img, scale, axis=0), scale, axis=1))
    colours = mpl.colormaps[cmap].with_extremes(bad=BAD_COLOUR)
    mpl.image.imsave(path, big, cmap=colours, vmin=lo if vmin is None else vmin, vmax=hi if vmax is None else vmax,
                     format="png")


def save_nonneg(m: np.ndarray, path: str, scale: int) -> None:
    """A map >= 0 on the colour range [0, max of the finite values] (an all-zero map: the darkest colour
    everywhere; NaN, +-inf: ``BAD_COLOUR``)."""
    top = _finite_range(np.asarray(m, np.float64))[1] if np.size(m) else 0.0
    save_array(m, path, cmap="inferno", scale=scale, vmin=0.0, vmax=top if top > 0 else 1.0)


def figure(figsize: Tuple[float, float], dpi: int = 100):
    """A matplotlib Figure with its own Agg canvas (no pyplot, no global state)."""
    _, Figure, Canvas = matplotlib_or_raise()
    fig = Figure(figsize=figsize, dpi=dpi)
    Canvas(fig)
    return fig


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Write ``fig`` as a PNG to ``path`` (checked by the caller; its folder is not created)."""
    fig.savefig(path, dpi=dpi, format="png")


def _channel_strip(a: np.ndarray, channels: int) -> Tuple[np.ndarray, np.ndarray]:
    """(h, w, c) -> (strip, bad), both (h, channels * (w + gap) - gap): the first ``channels`` maps side
    by side, each min-max scaled to [0, 1] over its own finite values (a constant map is 0), NaN (drawn
    blank) in the gaps and in the slots of missing channels; the maps' non-finite values are NaN in
    ``strip`` too and True in ``bad`` (drawn in ``BAD_COLOUR``)."""
    h, w, c = a.shape
    gap = max(1, w // 4)
    strip = np.full((h, channels * (w + gap) - gap), np.nan)
    bad = np.zeros(strip.shape, bool)
    for j in range(min(c, channels)):
        m = a[..., j].astype(np.float64)
        finite = np.isfinite(m)
        lo, hi = _finite_range(m)
        cols = slice(j * (w + gap), j * (w + gap) + w)
        strip[:, cols] = np.where(finite, (m - lo) / (hi - lo) if hi > lo else 0.0, np.nan)
        bad[:, cols] = ~finite
    return strip, bad


def _draw_row(ax, name: str, a: np.ndarray, max_channels: int) -> None:
    """One row of ``feature_maps_figure``; non-finite values in ``BAD_COLOUR``, with a warning naming them."""
    if a.ndim == 1:  # a vector: one bar chart across the row, a full-height BAD_COLOUR line per non-finite entry
        finite = np.isfinite(a)
        ax.bar(np.arange(a.shape[0]), np.where(finite, a, 0.0), width=1.0)
        if not finite.all():
            ax.vlines(np.flatnonzero(~finite), 0, 1, transform=ax.get_xaxis_transform(), colors=BAD_COLOUR)
            warn_non_finite(a, f"feature map {name}", stacklevel=4)
        ax.set_xlim(-0.5, a.shape[0] - 0.5)
    elif a.ndim == 3:
        strip, bad = _channel_strip(a, max_channels)
        ax.imshow(strip, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        if bad.any():
            overlay = np.zeros(bad.shape + (4,))
            overlay[bad] = _mpl_rgba(BAD_COLOUR)
            ax.imshow(overlay, interpolation="nearest")
            shown = a[..., :max_channels]
            chans = [j for j in range(shown.shape[-1]) if not np.isfinite(shown[..., j]).all()]
            warn_non_finite(shown, f"feature map {name} (channel{'s' if len(chans) > 1 else ''} "
                                   f"{', '.join(map(str, chans))})", stacklevel=4)
        ax.set_anchor("W")
        ax.spines[:].set_visible(False)
    else:
        ax.axis("off")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(name, fontsize=8)


def _mpl_rgba(colour: str) -> Tuple[float, float, float, float]:
    mpl, _, _ = matplotlib_or_raise()
    return mpl.colors.to_rgba(colour)


def feature_maps_figure(maps: Sequence[Tuple[str, np.ndarray]], path: str, max_channels: int = 8) -> None:
    """One row per ``(name, activation)``: up to ``max_channels`` channels of an (h, w, c) map side by
    side (each on its own colour scale), or a vector as a bar chart across the row;
    (2 * max_channels) x (1.6 * rows) inches at 100 dpi. One axes per row keeps drawing fast.
    Non-finite values are drawn in ``BAD_COLOUR`` (a vector's: a full-height line) and warn
    ``NonFiniteWarning`` naming the layer and channels."""
    max_channels = _checks.positive_int(max_channels, "max_channels")
    fig = figure((2 * max_channels, 1.6 * len(maps)))
    axes = fig.subplots(len(maps), 1, squeeze=False)[:, 0]
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.01, top=0.99, hspace=0.15)
    for ax, (name, a) in zip(axes, maps):
        _draw_row(ax, name, np.asarray(a), max_channels)
    save_figure(fig, path)


def save_curves(history: List[dict], path: str) -> None:
    """Loss and accuracy per epoch (``fcnn.report.plot_curves``, 900 x 350 pixels); raises without matplotlib."""
    from fcnn.report import plot_curves

    matplotlib_or_raise()
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
