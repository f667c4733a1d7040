"""Interpretability and diagnostics pictures for fcnn models.

Every function returns numpy arrays and, given ``save=path``, also writes a PNG
(matplotlib is imported only then; without it an ``ImportError`` says how to install it).

    filters(conv_params)                         (H, W) grid of kernels, each min-max scaled
    feature_maps(model, params, state, x)        [(name, activation)] per top-level layer
    saliency(model, params, state, x, label)     (h, w) max_c |d z_label / d x[:, :, c]|
    smoothgrad(model, ..., key=, n=, sigma=)     (h, w) saliency averaged over noisy copies of x
    grad_cam(model, params, state, x, label, layer_index)   (h, w) Grad-CAM at a top-level layer
    occlusion(model, params, state, x, label, patch=, stride=)  (h, w) drop of p(label)
    curves(run_dir)                              {metric: (epochs,) array} from metrics.jsonl
    confusion_matrix(y_true, y_pred, num_classes)  (k, k) counts, rows true, columns predicted

``x`` is one NHWC input, ``(h, w, c)`` or ``(1, h, w, c)``; ``z`` are the model's logits.
The maps are computed with the model exactly as built (its own conv/pool implementations,
eval mode), so they inherit its gradients: a model built with ``impl="custom_vjp"`` is
differentiated through the hand-derived backward passes.

The math.
  * Saliency: the gradient ``d z_label / d x`` says how much an infinitesimal change of each
    input pixel moves the class score; the map is its absolute value, max over channels.
  * SmoothGrad: the same, averaged over ``n`` copies ``x + e``, ``e ~ N(0, s^2)``; averaging
    removes the pixel-to-pixel noise of a ReLU network's piecewise-linear gradient.
  * Grad-CAM at top-level layer ``L`` of a ``serial`` model: ``A = f_0..L(x)`` (h', w', K),
    ``w_k = mean_{i,j} d z_label / d A[i, j, k]``, ``cam = relu(sum_k w_k A[..., k])``,
    resized bilinearly to (h, w). ``default_cam_layer`` picks the last top-level layer with
    a rank-4 output that is not a pooling layer (the rectified output of the last conv stage,
    at its full resolution). Because the ``w_k`` are spatial means, evidence that a dense head
    reads by position can cancel (bright *here* raises the class, bright *there* lowers it):
    then ``sum_k w_k A_k <= 0`` everywhere and the map is all zero.
  * Occlusion: the drop of ``softmax(z)[label]`` when a patch of the input is replaced by a
    constant, averaged over the windows covering each pixel (no gradients involved).

A saliency, SmoothGrad or Grad-CAM map that is zero everywhere would save as a blank
picture; it raises ``BlankMapWarning`` instead of passing silently (the PNG is still
written, blank, because that is the truthful picture). ``fcnn viz`` prints it as
``fcnn viz: warning: ...``.

PNG sizes: array pictures (filters, saliency, smoothgrad, grad_cam, occlusion,
confusion_matrix) are written one array element per ``scale`` x ``scale`` pixel block,
so the file is exactly ``(rows * scale, cols * scale)`` pixels; figure pictures
(feature_maps, curves) are ``figsize * dpi`` pixels. Non-negative maps use the colour
range ``[0, max]``, so zero is always the darkest colour.

``cli_main(argv)`` is ``fcnn viz`` (see ``_parser``); ``render`` draws one of its pictures from
Python, optionally reusing a loaded run. Top-level layers are named as
``fcnn summary`` prints them: ``"<index>.<LayerName>"`` (``"4.Relu"``).
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fcnn.summary import layer_info
from fcnn.types import Layer

__all__ = ["filters", "feature_maps", "saliency", "smoothgrad", "grad_cam", "default_cam_layer", "occlusion",
           "curves", "confusion_matrix", "layer_names", "BlankMapWarning", "render", "cli_main"]

_INSTALL = "pip install matplotlib (or 'fcnn[viz]')"


class BlankMapWarning(UserWarning):
    """A saliency / SmoothGrad / Grad-CAM map is zero everywhere (it would save as a blank picture)."""


def _warn_if_blank(m: np.ndarray, what: str, why: str = "") -> None:
    if not np.any(m > 0):
        warnings.warn(f"{what} is zero everywhere, so its picture is blank{why}", BlankMapWarning, stacklevel=3)


# ----------------------------------------------------------------------------- helpers
def _mpl():
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        import matplotlib.image  # noqa: F401
    except ImportError as e:
        raise ImportError(f"saving a picture needs matplotlib, which is not installed: {_INSTALL}") from e
    return matplotlib, Figure, FigureCanvasAgg


def _check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    return scale


def _save_array(img: np.ndarray, path: str, *, cmap: str = "viridis", scale: int = 8,
                vmin: Optional[float] = None, vmax: Optional[float] = None) -> None:
    """Write a 2-D array as a PNG of exactly (rows*scale, cols*scale) pixels."""
    mpl, _, _ = _mpl()
    scale = _check_scale(scale)
    img = np.asarray(img, np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D picture, got shape {img.shape}")
    img = np.nan_to_num(img, nan=np.nanmin(img) if np.isfinite(img).any() else 0.0)
    big = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    _ensure_parent(path)
    mpl.image.imsave(path, big, cmap=cmap, vmin=vmin, vmax=vmax, format="png")


def _save_nonneg(m: np.ndarray, path: str, scale: int) -> None:
    """A map >= 0 on the colour range [0, max] (an all-zero map: the darkest colour everywhere)."""
    top = float(np.max(m)) if m.size else 0.0
    _save_array(m, path, cmap="inferno", scale=scale, vmin=0.0, vmax=top if top > 0 else 1.0)


def _ensure_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def _figure(figsize):
    _, Figure, Canvas = _mpl()
    fig = Figure(figsize=figsize, dpi=100)
    Canvas(fig)
    return fig


def _save_figure(fig, path: str) -> None:
    _ensure_parent(path)
    fig.savefig(path, dpi=100, format="png")


def _one_input(x) -> jnp.ndarray:
    """(h, w, c) or (1, h, w, c) -> (1, h, w, c)."""
    x = jnp.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one NHWC input of shape (h, w, c) or (1, h, w, c), got {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def _check_label(label, logits_shape) -> int:
    k = logits_shape[-1]
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < k:
        raise ValueError(f"label must be an int in [0, {k}), got {label!r}")
    return int(label)


def _children(model: Layer, what: str) -> Tuple[Layer, ...]:
    info = layer_info(model)
    if info.kind != "serial":
        raise ValueError(f"{what} needs a serial model (fcnn.combinators.serial), got a {info.name!r} layer")
    return tuple(info.children)


def layer_names(model: Layer) -> List[str]:
    """Names of a serial model's top-level layers, ``"<index>.<LayerName>"`` as ``fcnn summary`` prints them."""
    return [f"{i}.{layer_info(c).name}" for i, c in enumerate(_children(model, "layer_names"))]


def _run(children, params, state, x, start: int, stop: int):
    for i in range(start, stop):
        x, _ = children[i].apply(params[i], state[i], x, train=False)
    return x


# The array work below is jit-compiled once per (model, shapes) and reused: the functions are
# cached on the model object (a Layer is a tuple of functions, so it hashes by identity).
@functools.lru_cache(maxsize=32)
def _input_grad_fn(model: Layer):
    """jit (params, state, xs (n, h, w, c), label) -> d sum_i z_i[label] / d xs, (n, h, w, c).

    In eval mode no layer mixes examples (BatchNorm uses its running statistics), so row i of the
    gradient of the summed logits is the gradient of example i's own logit.
    """
    def f(params, state, xs, label):
        def total(xs_):
            logits, _ = model.apply(params, state, xs_, train=False)
            return jnp.sum(logits[:, label])
        return jax.grad(total)(xs)
    return jax.jit(f)


@functools.lru_cache(maxsize=32)
def _probs_fn(model: Layer):
    """jit (params, state, xs, label) -> softmax(model(xs))[:, label] in eval mode, (n,)."""
    def f(params, state, xs, label):
        logits, _ = model.apply(params, state, xs, train=False)
        return jax.nn.softmax(logits, axis=-1)[:, label]
    return jax.jit(f)


def _label_for(model: Layer, params, state, x, label) -> int:
    out = jax.eval_shape(lambda p, s, x_: model.apply(p, s, x_, train=False)[0], params, state, x)
    return _check_label(label, out.shape)


# ----------------------------------------------------------------------------- filters
def filters(params_of_conv, *, layout: str = "NHWC", save: Optional[str] = None, scale: int = 8,
            pad: int = 1) -> np.ndarray:
    """Image grid of a conv layer's kernels: one tile per (output, input) channel pair.

    Args:
      params_of_conv: a ``Conv2D``'s params ``{"w": ...}`` or the kernel itself, HWIO
        (kh, kw, cin, cout) for layout "NHWC", OIHW for "NCHW".
      pad: pixels of separation between tiles (filled with NaN in the returned array,
        drawn in the lowest colour).
    Returns:
      (rows*(kh+pad)-pad, cols*(kw+pad)-pad) float array; each tile min-max scaled to [0, 1]
      (a constant tile is 0.5). Tiles run row-major over (cout, cin), cols = ceil(sqrt(n)).
    """
    w = params_of_conv["w"] if isinstance(params_of_conv, dict) else params_of_conv
    w = np.asarray(w, np.float64)
    if w.ndim != 4:
        raise ValueError(f"params_of_conv must be a Conv2D's params or a rank-4 kernel, got shape {w.shape}")
    if layout == "NCHW":
        w = w.transpose(2, 3, 1, 0)
    elif layout != "NHWC":
        raise ValueError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be a non-negative int, got {pad!r}")
    kh, kw, cin, cout = w.shape
    tiles = w.transpose(3, 2, 0, 1).reshape(cout * cin, kh, kw)
    n = tiles.shape[0]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (kh + pad) - pad, cols * (kw + pad) - pad), np.nan)
    for t in range(n):
        r, c = divmod(t, cols)
        tile = tiles[t]
        lo, hi = tile.min(), tile.max()
        tile = (tile - lo) / (hi - lo) if hi > lo else np.full_like(tile, 0.5)
        grid[r * (kh + pad): r * (kh + pad) + kh, c * (kw + pad): c * (kw + pad) + kw] = tile
    if save is not None:
        _save_array(np.nan_to_num(grid, nan=0.0), save, cmap="gray", scale=scale, vmin=0.0, vmax=1.0)
    return grid


# ----------------------------------------------------------------------------- feature maps
def feature_maps(model: Layer, params, state, x, *, save: Optional[str] = None,
                 max_channels: int = 8) -> List[Tuple[str, np.ndarray]]:
    """Activations of every top-level layer of a serial model for one input.

    Returns:
      ``[(name, activation)]`` with one entry per child, in order: ``name`` is
      ``"<index>.<LayerName>"`` (as ``fcnn summary`` prints it) and ``activation`` the child's output without the batch
      dimension ((h, w, c) for conv-like layers, (features,) after Flatten/Dense).
    ``save``: one row per layer showing up to ``max_channels`` channels (vectors as one bar chart across the row);
    the PNG is (2 * max_channels) x (1.6 * layers) inches at 100 dpi.
    """
    children = _children(model, "feature_maps")
    names = layer_names(model)
    x = _one_input(x)
    out = []
    for i, child in enumerate(children):
        x, _ = child.apply(params[i], state[i], x, train=False)
        out.append((names[i], np.asarray(x[0])))
    if save is not None:
        if isinstance(max_channels, bool) or not isinstance(max_channels, int) or max_channels < 1:
            raise ValueError(f"max_channels must be a positive int, got {max_channels!r}")
        fig = _figure((2 * max_channels, 1.6 * len(out)))
        axes = fig.subplots(len(out), max_channels, squeeze=False)
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.01, top=0.99, wspace=0.08, hspace=0.15)
        grid = axes[0, 0].get_gridspec()
        for i, (row, (name, a)) in enumerate(zip(axes, out)):
            if a.ndim == 1:  # a vector: one bar chart across the row
                for ax in row:
                    ax.remove()
                row = [fig.add_subplot(grid[i, :])]
                row[0].bar(np.arange(a.shape[0]), a, width=1.0)
                row[0].set_xlim(-0.5, a.shape[0] - 0.5)
            for j, ax in enumerate(row):
                ax.set_xticks([])
                ax.set_yticks([])
                if a.ndim == 3 and j < a.shape[-1]:
                    ax.imshow(a[..., j], cmap="viridis", interpolation="nearest")
                elif a.ndim != 1:
                    ax.axis("off")
            row[0].set_ylabel(name, fontsize=8)
        _save_figure(fig, save)
    return out


# ----------------------------------------------------------------------------- gradients
def saliency(model: Layer, params, state, x, label, *, save: Optional[str] = None, scale: int = 8) -> np.ndarray:
    """Vanilla gradient saliency: ``max_c |d logit_label / d x[h, w, c]|``, shape (h, w)."""
    x = _one_input(x)
    label = _label_for(model, params, state, x, label)
    g = _input_grad_fn(model)(params, state, x, label)  # (1, h, w, c)
    sal = np.asarray(jnp.max(jnp.abs(g[0]), axis=-1))
    _warn_if_blank(sal, f"the saliency of class {label} (its logit's input gradient)")
    if save is not None:
        _save_nonneg(sal, save, scale)
    return sal


def smoothgrad(model: Layer, params, state, x, label, *, key, n: int = 16, sigma: float = 0.15,
               save: Optional[str] = None, scale: int = 8) -> np.ndarray:
    """SmoothGrad: mean of ``saliency`` over ``n`` copies of x plus N(0, s^2) noise.

    ``sigma`` is relative to the input's range: ``s = sigma * (max(x) - min(x))``.
    Returns (h, w).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not float(sigma) >= 0:
        raise ValueError(f"sigma must be a non-negative float, got {sigma!r}")
    x = _one_input(x)
    label = _label_for(model, params, state, x, label)
    s = float(sigma) * float(jnp.max(x) - jnp.min(x))
    xs = x + s * jax.random.normal(key, (n,) + x.shape[1:], x.dtype)  # (n, h, w, c) noisy copies
    g = _input_grad_fn(model)(params, state, xs, label)  # (n, h, w, c), one gradient per copy
    sal = np.asarray(jnp.mean(jnp.max(jnp.abs(g), axis=-1), axis=0))
    _warn_if_blank(sal, f"the SmoothGrad map of class {label}")
    if save is not None:
        _save_nonneg(sal, save, scale)
    return sal


def _check_layer_index(children, layer_index) -> int:
    n = len(children)
    if isinstance(layer_index, bool) or not isinstance(layer_index, (int, np.integer)) \
            or not 0 <= int(layer_index) < n - 1:
        raise ValueError(f"layer_index must be an int in [0, {n - 1}) (a top-level layer with layers after it), "
                         f"got {layer_index!r}")
    return int(layer_index)


def default_cam_layer(model: Layer, params, state, x) -> int:
    """Grad-CAM's usual layer: the last top-level layer with layers after it whose output is
    rank 4 and which is not a pooling layer (the rectified output of the last conv stage, before
    it is pooled: the finest map that has seen the most); a pooling layer only if nothing else is."""
    children = _children(model, "grad_cam")
    a, best, best_pool = _one_input(x), None, None
    for i, child in enumerate(children[:-1]):  # shapes only: nothing is computed
        a = jax.eval_shape(lambda p, s, a_, c=child: c.apply(p, s, a_, train=False)[0], params[i], state[i], a)
        if len(a.shape) == 4:
            if layer_info(child).kind == "pool":
                best_pool = i
            else:
                best = i
    if best is None:
        best = best_pool
    if best is None:
        raise ValueError("the model has no top-level layer with a rank-4 (n, h, w, c) output for Grad-CAM")
    return best


@functools.lru_cache(maxsize=32)
def _grad_cam_fn(model: Layer, layer_index: int):
    """jit (params, state, x (1, h, w, c), label) -> Grad-CAM (h, w) at top-level layer ``layer_index``."""
    children = _children(model, "grad_cam")
    head = lambda p, s, a: _run(children, p, s, a, layer_index + 1, len(children))  # noqa: E731

    def f(params, state, x, label):
        a = _run(children, params, state, x, 0, layer_index + 1)  # (1, h', w', K)
        g = jax.grad(lambda a_: head(params, state, a_)[0, label])(a)  # d z_label / d A
        weights = jnp.mean(g[0], axis=(0, 1))  # (K,): spatial mean of the gradient
        cam = jax.nn.relu(jnp.einsum("hwk,k->hw", a[0], weights))  # (h', w')
        return jax.image.resize(cam, x.shape[1:3], method="linear")  # (h, w)
    return jax.jit(f)


def grad_cam(model: Layer, params, state, x, label, layer_index: int, *, save: Optional[str] = None,
             scale: int = 8) -> np.ndarray:
    """Grad-CAM at top-level layer ``layer_index`` of a serial model, resized to (h, w).

    Returns ``relu(sum_k w_k A[..., k])`` (h, w) >= 0 in the units of ``A`` times the logit's
    gradient (not normalised; the PNG spans [0, max]). ``default_cam_layer`` gives the usual
    choice of layer. Warns ``BlankMapWarning`` when the map is zero everywhere.
    Raises ValueError if ``layer_index`` is out of range or that layer's output is not
    rank 4 (NHWC feature maps).
    """
    children = _children(model, "grad_cam")
    layer_index = _check_layer_index(children, layer_index)
    x = _one_input(x)
    a = jax.eval_shape(lambda p, s, x_: _run(children, p, s, x_, 0, layer_index + 1), params, state, x)
    if len(a.shape) != 4:
        raise ValueError(f"layer_index={layer_index} ({layer_info(children[layer_index]).name}) outputs shape "
                         f"{tuple(a.shape)}; Grad-CAM needs a rank-4 (n, h, w, c) feature map")
    label = _label_for(model, params, state, x, label)
    cam = np.maximum(np.asarray(_grad_cam_fn(model, layer_index)(params, state, x, label)), 0.0)
    _warn_if_blank(cam, f"Grad-CAM of class {label} at layer {layer_index}.{layer_info(children[layer_index]).name}",
                   ": sum_k w_k A_k <= 0 at every position (the spatially averaged channel weights w_k cancel or "
                   "are negative there); try an earlier, finer layer, or the saliency")
    if save is not None:
        _save_nonneg(cam, save, scale)
    return cam


def occlusion(model: Layer, params, state, x, label, *, patch: int = 4, stride: int = 2, value: float = 0.0,
              save: Optional[str] = None, scale: int = 8) -> np.ndarray:
    """Occlusion sensitivity: mean drop of ``softmax(model(x))[label]`` when a patch covers a pixel.

    A ``patch`` x ``patch`` square filled with ``value`` slides with ``stride`` (the last
    position is clamped to the border so every pixel is covered); each pixel gets the mean
    of ``p(x) - p(occluded x)`` over the windows covering it. Returns (h, w).
    """
    for arg, v in (("patch", patch), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")
    x = _one_input(x)
    _, h, w, _ = x.shape
    if patch > min(h, w):
        raise ValueError(f"patch={patch} is larger than the input's spatial size {(h, w)}")
    label = _label_for(model, params, state, x, label)
    probs = _probs_fn(model)
    p0 = probs(params, state, x, label)[0]

    def starts(size):
        s = list(range(0, size - patch + 1, stride))
        return s if s[-1] == size - patch else s + [size - patch]

    pos = [(r, c) for r in starts(h) for c in starts(w)]
    masks = np.zeros((len(pos), h, w), bool)
    for t, (r, c) in enumerate(pos):
        masks[t, r:r + patch, c:c + patch] = True
    m = jnp.asarray(masks)[..., None]
    xs = jnp.where(m, jnp.asarray(value, x.dtype), x)  # (positions, h, w, c)
    p = jnp.concatenate([probs(params, state, xs[i:i + 256], label) for i in range(0, len(pos), 256)])
    drop = np.asarray(p0 - p, np.float64)  # (positions,)
    total = np.tensordot(drop, masks.astype(np.float64), axes=1)
    heat = total / masks.sum(axis=0)
    if save is not None:
        _save_array(heat, save, cmap="RdBu_r", scale=scale, vmin=-np.abs(heat).max(), vmax=np.abs(heat).max())
    return heat


# ----------------------------------------------------------------------------- curves, confusion
def curves(run_dir: str, *, save: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Per-epoch metrics of a run: ``{name: (epochs,) array}`` from ``run_dir/metrics.jsonl``.

    Keys are those every record has (e.g. epoch, train_loss, train_accuracy, test_loss,
    test_accuracy). ``save``: loss and accuracy plots, 900 x 350 pixels.
    """
    from fcnn.report import plot_curves, read_jsonl

    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"run_dir {run_dir!r} has no metrics.jsonl")
    history = read_jsonl(path)
    if not history:
        raise ValueError(f"{path} holds no complete epoch record")
    keys = [k for k in history[0] if all(k in r for r in history)]
    out = {k: np.asarray([r[k] for r in history], np.float64) for k in keys}
    if save is not None:
        _mpl()
        _ensure_parent(save)
        plot_curves(history, save)
    return out


def confusion_matrix(y_true, y_pred, num_classes: int, *, save: Optional[str] = None, scale: int = 32) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: ``m[t, p]`` = examples of class t predicted p."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.ndim != 1 or yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred must be 1-D of the same length, got {yt.shape} and {yp.shape}")
    for name, y in (("y_true", yt), ("y_pred", yp)):
        if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} must hold ints in [0, {num_classes})")
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (yt.astype(np.int64), yp.astype(np.int64)), 1)
    if save is not None:
        _save_array(m, save, cmap="Blues", scale=scale, vmin=0)
    return m


# ----------------------------------------------------------------------------- CLI
_WHAT = ("filters", "features", "saliency", "smoothgrad", "gradcam", "occlusion", "curves", "confusion")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fcnn viz", description="Pictures of a trained run: filters, feature maps, saliency, "
                                             "SmoothGrad, Grad-CAM, occlusion, training curves, confusion matrix.")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a directory written by fcnn train")
    p.add_argument("--what", required=True, choices=_WHAT)
    p.add_argument("--index", type=int, default=0,
                   help="test-set image index (features/saliency/smoothgrad/gradcam/occlusion)")
    p.add_argument("--layer", default=None,
                   help="top-level layer, by index (4) or by name as fcnn summary prints it (4.Relu, or Relu when "
                        "only one layer has that name). filters: a Conv2D, default the first; gradcam: default "
                        "the last non-pooling layer with a rank-4 output")
    p.add_argument("--label", type=int, default=None, help="class to explain (default: the image's true label)")
    p.add_argument("--patch", type=int, default=4, help="occlusion patch size")
    p.add_argument("--stride", type=int, default=2, help="occlusion stride")
    p.add_argument("--seed", type=int, default=0, help="smoothgrad noise seed")
    p.add_argument("--out", required=True, help="PNG file to write")
    return p


def _resolve_layer(names: Sequence[str], text: str) -> int:
    """``"4"``, ``"4.Relu"`` or a name held by exactly one layer (``"Flatten"``) -> index."""
    listing = ", ".join(names)
    if text.lstrip("-").isdigit():
        i = int(text)
        if not 0 <= i < len(names):
            raise ValueError(f"--layer {text} is out of range: the model has {len(names)} top-level layers "
                             f"({listing})")
        return i
    if text in names:
        return names.index(text)
    hits = [i for i, n in enumerate(names) if n.split(".", 1)[1] == text]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ValueError(f"--layer {text!r} is ambiguous: {', '.join(names[i] for i in hits)}; give one of those")
    raise ValueError(f"--layer {text!r}: no top-level layer has that name; this model's layers are {listing}")


def _conv_layer(children, names, layer: Optional[int]) -> int:
    convs = [i for i, c in enumerate(children) if layer_info(c).kind == "conv"]
    if layer is None:
        if not convs:
            raise ValueError("the model has no top-level Conv2D layer to show filters of")
        return convs[0]
    if layer not in convs:
        raise ValueError(f"--layer {names[layer]} is not a top-level Conv2D of this model; Conv2D layers: "
                         f"{', '.join(names[i] for i in convs)}")
    return layer


def render(run: str, what: str, out: str, *, index: int = 0, layer: Optional[str] = None,
           label: Optional[int] = None, patch: int = 4, stride: int = 2, seed: int = 0, loaded=None) -> str:
    """Draw one ``fcnn viz`` picture of run directory ``run`` into ``out``; returns the report line.

    The keywords are the command's flags (``layer`` as text, like ``--layer``). ``loaded``: the
    ``fcnn.cli.load_run(run)`` tuple, to draw several pictures of one run without reloading it
    (the same code path as the command, so a picture equals the command's). Warnings
    (``BlankMapWarning``) are raised as usual; ``cli_main`` prints them as one line each.
    """
    if what not in _WHAT:
        raise ValueError(f"what must be one of {', '.join(_WHAT)}, got {what!r}")
    if not os.path.isdir(run):
        raise FileNotFoundError(f"--run {run!r}: no such run directory")
    if what == "curves":
        curves(run, save=out)
        return f"wrote {out}"
    from fcnn.train import predict

    if loaded is None:
        from fcnn.cli import load_run

        loaded = load_run(run)
    config, ds, model, params, state, step = loaded
    children = _children(model, f"--what {what}")
    names = layer_names(model)
    layer = None if layer is None else _resolve_layer(names, str(layer))
    if not 0 <= index < len(ds.x_test):
        raise ValueError(f"--index {index} is out of range: the test set has {len(ds.x_test)} images")
    x = ds.x_test[index]
    label = int(ds.y_test[index]) if label is None else label
    if what == "filters":
        layer = _conv_layer(children, names, layer)
        filters(params[layer], save=out)
    elif what == "features":
        feature_maps(model, params, state, x, save=out)
    elif what == "saliency":
        saliency(model, params, state, x, label, save=out)
    elif what == "smoothgrad":
        smoothgrad(model, params, state, x, label, key=jax.random.PRNGKey(seed), save=out)
    elif what == "gradcam":
        layer = default_cam_layer(model, params, state, x) if layer is None else layer
        grad_cam(model, params, state, x, label, layer, save=out)
    elif what == "occlusion":
        occlusion(model, params, state, x, label, patch=patch, stride=stride, save=out)
    else:  # confusion
        preds = []
        for i in range(0, len(ds.x_test), 512):
            preds.append(np.asarray(jnp.argmax(predict(model, params, state, ds.x_test[i:i + 512],
                                                       precision=config.precision), axis=-1)))
        confusion_matrix(ds.y_test, np.concatenate(preds), ds.num_classes, save=out)
    where = "" if layer is None or what not in ("filters", "gradcam") else f", layer {names[layer]}"
    return f"wrote {out} ({what}{where}, run {run}, checkpoint step {step})"


def relay_blank_warnings(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, printing each ``BlankMapWarning`` as ``fcnn viz: warning: ...`` on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BlankMapWarning)
        result = fn(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, BlankMapWarning):
            print(f"fcnn viz: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``fcnn viz --run RUN_DIR --what WHAT [--index N] [--layer L] --out FILE.png``.

    Errors (missing run directory, bad --index, unknown --layer) raise ValueError or
    FileNotFoundError with a one-line message (``fcnn`` prints ``fcnn: error: ...`` and
    exits 2). A ``BlankMapWarning`` is printed as ``fcnn viz: warning: ...`` on stderr.
    """
    a = _parser().parse_args(list(argv) if argv is not None else None)
    print(relay_blank_warnings(render, a.run, a.what, a.out, index=a.index, layer=a.layer, label=a.label,
                               patch=a.patch, stride=a.stride, seed=a.seed))
    return 0
