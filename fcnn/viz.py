"""Pictures of a trained network, as arrays and as PNG files, and the ``fcnn viz`` command.

Every function returns numpy arrays and, given ``save=path``, also writes a PNG (through
``fcnn.figures``: matplotlib is imported only then; without it an ``ImportError`` says how to
install it). ``save`` is checked before anything is computed: an existing file is refused unless
``overwrite=True`` is passed too, and a missing folder is refused (never created), as ``fcnn viz
--out`` [``--overwrite``]. Non-finite values are drawn in magenta (``figures.BAD_COLOUR``), never as a
colour of the map, and warn ``NonFiniteWarning``.

    filters(conv_params)                         (H, W) grid of kernels, each min-max scaled
    feature_maps(model, params, state, x)        [(name, activation)] per top-level layer
    curves(run_dir)                              {metric: (epochs,) array} from metrics.jsonl
    confusion_matrix(y_true, y_pred, num_classes)  (k, k) counts, rows true, columns predicted
    saliency, smoothgrad, grad_cam, default_cam_layer, occlusion, layer_names, BlankMapWarning
                                                 the attribution maps, from ``fcnn.attribution``
    NonFiniteWarning                             from ``fcnn.figures``

``x`` is one NHWC input, ``(h, w, c)`` or ``(1, h, w, c)``. PNG sizes: array pictures (filters,
the attribution maps, confusion_matrix) are one array element per ``scale`` x ``scale`` pixel
block; figure pictures (feature_maps, curves) are ``figsize * dpi`` pixels.

``cli_main(argv)`` is ``fcnn viz`` (see ``_parser``); ``render`` draws one of its pictures from
Python, optionally reusing a loaded run. Top-level layers are named as ``fcnn summary`` prints
them: ``"<index>.<LayerName>"`` (``"4.Relu"``).
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

from fcnn import _checks, figures
from fcnn.attribution import (BlankMapWarning, default_cam_layer, grad_cam, layer_names, occlusion, one_input,
                              saliency, serial_children, smoothgrad)
from fcnn.figures import NonFiniteWarning
from fcnn.report import read_jsonl
from fcnn.run import load_run
from fcnn.step import num_outputs, predict
from fcnn.summary import layer_info
from fcnn.types import Layer

__all__ = ["filters", "feature_maps", "saliency", "smoothgrad", "grad_cam", "default_cam_layer", "occlusion",
           "curves", "confusion_matrix", "layer_names", "BlankMapWarning", "NonFiniteWarning", "render", "cli_main"]


# ----------------------------------------------------------------------------- filters
def filters(params_of_conv, *, layout: str = "NHWC", save: Optional[str] = None, scale: int = 8,
            pad: int = 1, overwrite: bool = False) -> np.ndarray:
    """Image grid of a conv layer's kernels: one tile per (output, input) channel pair.

    Args:
      params_of_conv: a ``Conv2D``'s params ``{"w": ...}`` or the kernel itself, HWIO
        (kh, kw, cin, cout) for layout "NHWC", OIHW for "NCHW".
      pad: pixels of separation between tiles (filled with NaN in the returned array,
        drawn in the lowest colour).
      save, overwrite: the PNG to write, checked before anything is computed: an existing file
        is refused unless ``overwrite=True``, a missing folder is refused.
    Returns:
      (rows*(kh+pad)-pad, cols*(kw+pad)-pad) float array; each tile min-max scaled to [0, 1] over
      its finite values (a constant tile is 0.5). A kernel's non-finite values (NaN, +-inf) stay NaN
      in their tile, are drawn in ``figures.BAD_COLOUR`` (magenta), and warn ``NonFiniteWarning``
      naming the tiles. Tiles run row-major over (cout, cin), cols = ceil(sqrt(n)).
    """
    save = figures.check_save(save, overwrite)
    scale = _checks.positive_int(scale, "scale")
    w = params_of_conv["w"] if isinstance(params_of_conv, dict) else params_of_conv
    w = np.asarray(w, np.float64)
    if w.ndim != 4:
        raise ValueError(f"params_of_conv must be a Conv2D's params or a rank-4 kernel, got shape {w.shape}")
    if layout == "NCHW":
        w = w.transpose(2, 3, 1, 0)
    elif layout != "NHWC":
        raise ValueError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
    pad = _checks.non_negative_int(pad, "pad")
    kh, kw, cin, cout = w.shape
    tiles = w.transpose(3, 2, 0, 1).reshape(cout * cin, kh, kw)
    n = tiles.shape[0]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (kh + pad) - pad, cols * (kw + pad) - pad), np.nan)
    in_tile = np.zeros(grid.shape, bool)
    for t in range(n):
        r, c = divmod(t, cols)
        tile, finite = tiles[t], np.isfinite(tiles[t])
        lo, hi = (tile[finite].min(), tile[finite].max()) if finite.any() else (0.0, 0.0)
        tile = np.where(finite, (tile - lo) / (hi - lo) if hi > lo else 0.5, np.nan)
        at = (slice(r * (kh + pad), r * (kh + pad) + kh), slice(c * (kw + pad), c * (kw + pad) + kw))
        grid[at], in_tile[at] = tile, True
    bad = [t for t in range(n) if not np.isfinite(tiles[t]).all()]
    if bad:
        named = ", ".join(f"(out {t // cin}, in {t % cin})" for t in bad[:8]) + (", ..." if len(bad) > 8 else "")
        figures.warn_non_finite(tiles[bad], f"the kernel's tile{'s' if len(bad) > 1 else ''} {named}", stacklevel=3)
    if save is not None:  # the gaps in the lowest colour, the kernels' NaN in BAD_COLOUR
        figures.save_array(np.where(in_tile, grid, 0.0), save, cmap="gray", scale=scale, vmin=0.0, vmax=1.0)
    return grid


# ----------------------------------------------------------------------------- feature maps
@functools.lru_cache(maxsize=32)
def _layer_outputs_fn(model: Layer):
    """jit (params, state, x (1, h, w, c)) -> [output of each top-level layer] in eval mode (one compiled
    program, not every op of every layer compiled on its own)."""
    children = serial_children(model, "feature_maps")

    def f(params, state, x):
        outputs = []
        for i, child in enumerate(children):
            x, _ = child.apply(params[i], state[i], x, train=False)
            outputs.append(x)
        return outputs
    return jax.jit(f)


def feature_maps(model: Layer, params, state, x, *, save: Optional[str] = None,
                 max_channels: int = 8, overwrite: bool = False) -> List[Tuple[str, np.ndarray]]:
    """Activations of every top-level layer of a serial model for one input.

    Returns:
      ``[(name, activation)]`` with one entry per child, in order: ``name`` is
      ``"<index>.<LayerName>"`` (as ``fcnn summary`` prints it) and ``activation`` the child's output without the batch
      dimension ((h, w, c) for conv-like layers, (features,) after Flatten/Dense).
    ``save``: one row per layer showing up to ``max_channels`` channels (vectors as one bar chart across the row);
    the PNG is (2 * max_channels) x (1.6 * layers) inches at 100 dpi. Each map is scaled over its finite values;
    non-finite values are drawn in ``figures.BAD_COLOUR`` (magenta) and warn ``NonFiniteWarning`` naming the layer
    and channels. ``save`` is checked before anything is computed: an existing file is refused unless
    ``overwrite=True``, a missing folder is refused.
    """
    save = figures.check_save(save, overwrite)
    max_channels = _checks.positive_int(max_channels, "max_channels")
    outputs = _layer_outputs_fn(model)(params, state, one_input(x))  # a model that is not serial: ValueError
    out = [(name, np.asarray(a[0])) for name, a in zip(layer_names(model), outputs)]
    if save is not None:
        figures.feature_maps_figure(out, save, max_channels)
    return out


# ----------------------------------------------------------------------------- curves, confusion
def curves(run_dir: str, *, save: Optional[str] = None, overwrite: bool = False) -> Dict[str, np.ndarray]:
    """Per-epoch metrics of a run: ``{name: (epochs,) array}`` from ``run_dir/metrics.jsonl``.

    Keys are those every record has (e.g. epoch, train_loss, train_accuracy, test_loss,
    test_accuracy). ``save``: loss and accuracy plots, 900 x 350 pixels (an existing file is refused
    unless ``overwrite=True``, a missing folder is refused; checked before the run is read).
    """
    save = figures.check_save(save, overwrite)
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"run_dir {run_dir!r} has no metrics.jsonl")
    history = read_jsonl(path)
    if not history:
        raise ValueError(f"{path} holds no complete epoch record")
    keys = [k for k in history[0] if all(k in r for r in history)]
    out = {k: np.asarray([r[k] for r in history], np.float64) for k in keys}
    if save is not None:
        figures.save_curves(history, save)
    return out


def confusion_matrix(y_true, y_pred, num_classes: int, *, save: Optional[str] = None, scale: int = 32,
                     overwrite: bool = False) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: ``m[t, p]`` = examples of class t predicted p.

    ``save``: an existing file is refused unless ``overwrite=True``, a missing folder is refused."""
    save = figures.check_save(save, overwrite)
    scale = _checks.positive_int(scale, "scale")
    num_classes = _checks.positive_int(num_classes, "num_classes")
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.ndim != 1 or yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred must be 1-D of the same length, got {yt.shape} and {yp.shape}")
    for name, y in (("y_true", yt), ("y_pred", yp)):
        if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} must hold ints in [0, {num_classes})")
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (yt.astype(np.int64), yp.astype(np.int64)), 1)
    if save is not None:
        figures.save_array(m, save, cmap="Blues", scale=scale, vmin=0)
    return m


# ----------------------------------------------------------------------------- CLI
_WHAT = ("filters", "features", "saliency", "smoothgrad", "gradcam", "occlusion", "curves", "confusion", "prediction")


def prediction_panels(task: str, model, params, state, x, target) -> list:
    """``[(title, (h, w) image)]``: input / prediction / target of one test example of a dense task
    (segment: the arg-max class map; denoise, reconstruct: the output image, channel 0)."""
    if task not in ("segment", "denoise", "reconstruct"):
        raise ValueError(f"--what prediction shows a dense task's input, prediction and target (segment, denoise, "
                         f"reconstruct); this run's task is {task!r}")
    out = np.asarray(predict(model, params, state, np.asarray(x)[None], task=task))[0]
    pred = out.argmax(-1) if task == "segment" else out[..., 0]
    target = np.asarray(target)
    return [("input", np.asarray(x)[..., 0]), ("prediction", pred),
            ("target", target if task == "segment" else target[..., 0])]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fcnn viz", description="Pictures of a trained run: filters, feature maps, saliency, "
                                             "SmoothGrad, Grad-CAM, occlusion, training curves, confusion matrix, "
                                             "and a dense task's predictions.")
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
    p.add_argument("--out", required=True, help="PNG file to write (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the file --out if it exists")
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
           label: Optional[int] = None, patch: int = 4, stride: int = 2, seed: int = 0, loaded=None,
           overwrite: bool = False) -> str:
    """Draw one ``fcnn viz`` picture of run directory ``run`` into ``out``; returns the report line.

    The keywords are the command's flags (``layer`` as text, like ``--layer``). ``loaded``: the
    ``fcnn.run.load_run(run)`` tuple, to draw several pictures of one run without reloading it
    (the same code path as the command, so a picture equals the command's). ``out`` must not exist
    unless ``overwrite`` (``--overwrite``), checked with its folder before anything is loaded.
    ``overwrite`` is passed on to the picture's own ``save=`` check. Warnings (``BlankMapWarning``,
    ``NonFiniteWarning``) are raised as usual; ``cli_main`` prints them as one line each.
    """
    if what not in _WHAT:
        raise ValueError(f"what must be one of {', '.join(_WHAT)}, got {what!r}")
    if not os.path.isdir(run):
        raise FileNotFoundError(f"--run {run!r}: no such run directory")
    out = _checks.new_file(out, "--out", overwrite=overwrite, flag="--overwrite")
    if what == "curves":
        curves(run, save=out, overwrite=overwrite)
        return f"wrote {out}"
    config, ds, model, params, state, step = load_run(run) if loaded is None else loaded
    if what == "prediction":
        if not 0 <= index < len(ds.x_test):
            raise ValueError(f"--index {index} is out of range: the test set has {len(ds.x_test)} images")
        panels = prediction_panels(config.task, model, params, state, ds.x_test[index], ds.y_test[index])
        seg = config.task == "segment"
        # one colour per class in every picture: the scale spans the model's classes (traced, not run)
        classes = (0, num_outputs(model, params, state, np.shape(ds.x_test)) - 1) if seg else None
        figures.side_by_side_figure(panels, out, cmaps=("gray",) + ("tab20" if seg else "gray",) * 2,
                                    ranges=(None, classes, classes))
        return f"wrote {out} (prediction, task {config.task}, test image {index}, run {run}, checkpoint step {step})"
    children = serial_children(model, f"--what {what}")
    names = layer_names(model)
    layer = None if layer is None else _resolve_layer(names, str(layer))
    if not 0 <= index < len(ds.x_test):
        raise ValueError(f"--index {index} is out of range: the test set has {len(ds.x_test)} images")
    x = ds.x_test[index]
    label = int(ds.y_test[index]) if label is None else label
    if what == "filters":
        layer = _conv_layer(children, names, layer)
        filters(params[layer], save=out, overwrite=overwrite)
    elif what == "features":
        feature_maps(model, params, state, x, save=out, overwrite=overwrite)
    elif what == "saliency":
        saliency(model, params, state, x, label, save=out, overwrite=overwrite)
    elif what == "smoothgrad":
        smoothgrad(model, params, state, x, label, key=jax.random.PRNGKey(seed), save=out, overwrite=overwrite)
    elif what == "gradcam":
        layer = default_cam_layer(model, params, state, x) if layer is None else layer
        grad_cam(model, params, state, x, label, layer, save=out, overwrite=overwrite)
    elif what == "occlusion":
        occlusion(model, params, state, x, label, patch=patch, stride=stride, save=out, overwrite=overwrite)
    else:  # confusion
        probs = predict(model, params, state, ds.x_test, dtype_policy=config.dtype_policy, batch_size=512)
        confusion_matrix(ds.y_test, np.asarray(jnp.argmax(probs, axis=-1)), ds.num_classes, save=out,
                         overwrite=overwrite)
    where = "" if layer is None or what not in ("filters", "gradcam") else f", layer {names[layer]}"
    return f"wrote {out} ({what}{where}, run {run}, checkpoint step {step})"


def relay_blank_warnings(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, printing each ``BlankMapWarning`` and ``NonFiniteWarning`` as
    ``fcnn viz: warning: ...`` on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BlankMapWarning)
        warnings.simplefilter("always", NonFiniteWarning)
        result = fn(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, (BlankMapWarning, NonFiniteWarning)):
            print(f"fcnn viz: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``fcnn viz --run RUN_DIR --what WHAT [--index N] [--layer L] --out FILE.png``.

    Errors (missing run directory, bad --index, unknown --layer) raise ValueError or
    FileNotFoundError with a one-line message (``fcnn`` prints ``fcnn: error: ...`` and
    exits 2). A ``BlankMapWarning`` or ``NonFiniteWarning`` is printed as ``fcnn viz: warning: ...`` on stderr.
    """
    a = _parser().parse_args(list(argv) if argv is not None else None)
    print(relay_blank_warnings(render, a.run, a.what, a.out, index=a.index, layer=a.layer, label=a.label,
                               patch=a.patch, stride=a.stride, seed=a.seed, overwrite=a.overwrite))
    return 0
