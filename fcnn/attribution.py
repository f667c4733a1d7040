"""Attribution maps: which input pixels a model's class score rests on, as (h, w) arrays.

    saliency(model, params, state, x, label)                  max_c |d z_label / d x[:, :, c]|
    smoothgrad(model, ..., key=, n=, sigma=)                   saliency averaged over noisy copies of x
    grad_cam(model, params, state, x, label, layer_index)      Grad-CAM at a top-level layer
    default_cam_layer(model, params, state, x)                 Grad-CAM's usual layer
    occlusion(model, params, state, x, label, patch=, stride=) drop of p(label) under a patch

``x`` is one NHWC input, ``(h, w, c)`` or ``(1, h, w, c)``; ``z`` are the model's logits. The maps
are computed with the model exactly as built (its own conv/pool implementations, eval mode), so
they inherit its gradients: a model built with ``impl="custom_vjp"`` is differentiated through the
hand-derived backward passes. ``save=path`` also writes the map as a PNG (``fcnn.figures``; one
element per ``scale`` x ``scale`` pixel block, colour range ``[0, max]``); the path is checked before
anything is computed: an existing file is refused unless ``overwrite=True``, a missing folder is
refused (never created). ``fcnn.viz`` re-exports every name here and draws the maps from the
``fcnn viz`` command.

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

A saliency, SmoothGrad or Grad-CAM map that is zero everywhere would save as a blank picture; it
raises ``BlankMapWarning`` instead of passing silently (the PNG is still written, blank, because
that is the truthful picture). A map holding NaN or +-inf (a model whose output or gradient is not
finite) raises ``fcnn.figures.NonFiniteWarning`` instead; those pixels are drawn in magenta.
``fcnn viz`` prints either as ``fcnn viz: warning: ...``.
Top-level layers are named as ``fcnn summary`` prints them: ``"<index>.<LayerName>"`` (``"4.Relu"``).
"""
from __future__ import annotations

import functools
import warnings
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fcnn import _checks, figures
from fcnn.summary import layer_info
from fcnn.types import Layer, check_key

__all__ = ["saliency", "smoothgrad", "grad_cam", "default_cam_layer", "occlusion", "layer_names", "BlankMapWarning"]


class BlankMapWarning(UserWarning):
    """A saliency / SmoothGrad / Grad-CAM map is zero everywhere (it would save as a blank picture)."""


def _warn_if_blank(m: np.ndarray, what: str, why: str = "") -> None:
    """``NonFiniteWarning`` if ``m`` holds NaN or +-inf, else ``BlankMapWarning`` if it is zero everywhere."""
    if figures.warn_non_finite(m, what, stacklevel=4):
        return
    if not np.any(m > 0):
        warnings.warn(f"{what} is zero everywhere, so its picture is blank{why}", BlankMapWarning, stacklevel=3)


# ----------------------------------------------------------------------------- inputs, layers
def one_input(x) -> jnp.ndarray:
    """One NHWC input: (h, w, c) or (1, h, w, c) -> (1, h, w, c), floating point."""
    x = jnp.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one NHWC input of shape (h, w, c) or (1, h, w, c), got {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def serial_children(model: Layer, what: str) -> Tuple[Layer, ...]:
    """The top-level layers of a ``serial`` model; ``what`` names the caller in the error otherwise."""
    info = layer_info(model)
    if info.kind != "serial":
        raise ValueError(f"{what} needs a serial model (fcnn.combinators.serial), got a {info.name!r} layer")
    return tuple(info.children)


def layer_names(model: Layer) -> List[str]:
    """Names of a serial model's top-level layers, ``"<index>.<LayerName>"`` as ``fcnn summary`` prints them."""
    return [f"{i}.{layer_info(c).name}" for i, c in enumerate(serial_children(model, "layer_names"))]


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


@functools.lru_cache(maxsize=64)
def _prefix_fn(model: Layer, stop: Optional[int]):
    """jit (params, state, x) -> the output of top-level layers [0, stop) in eval mode (None: the logits).

    Used for shapes (``jax.eval_shape``): a jitted function is traced once per input shape, where a
    fresh lambda would trace the whole model again on every call.
    """
    if stop is None:
        return jax.jit(lambda params, state, x: model.apply(params, state, x, train=False)[0])
    children = serial_children(model, "grad_cam")
    return jax.jit(lambda params, state, x: _run(children, params, state, x, 0, stop))


def _label_for(model: Layer, params, state, x, label) -> int:
    out = jax.eval_shape(_prefix_fn(model, None), params, state, x)
    return _checks.int_in_range(label, "label", 0, out.shape[-1])


# ----------------------------------------------------------------------------- gradients
def saliency(model: Layer, params, state, x, label, *, save: Optional[str] = None, scale: int = 8,
             overwrite: bool = False) -> np.ndarray:
    """Vanilla gradient saliency: ``max_c |d logit_label / d x[h, w, c]|``, shape (h, w)."""
    save, scale = figures.check_save(save, overwrite), _checks.positive_int(scale, "scale")
    x = one_input(x)
    label = _label_for(model, params, state, x, label)
    g = _input_grad_fn(model)(params, state, x, label)  # (1, h, w, c)
    sal = np.asarray(jnp.max(jnp.abs(g[0]), axis=-1))
    _warn_if_blank(sal, f"the saliency of class {label} (its logit's input gradient)")
    if save is not None:
        figures.save_nonneg(sal, save, scale)
    return sal


def smoothgrad(model: Layer, params, state, x, label, *, key, n: int = 16, sigma: float = 0.15,
               save: Optional[str] = None, scale: int = 8, overwrite: bool = False) -> np.ndarray:
    """SmoothGrad: mean of ``saliency`` over ``n`` copies of x plus N(0, s^2) noise.

    ``key``: one PRNG key (``jax.random.key(0)`` or ``jax.random.PRNGKey(0)``) for the noise.
    ``sigma`` is relative to the input's range: ``s = sigma * (max(x) - min(x))``.
    Returns (h, w).
    """
    save, scale = figures.check_save(save, overwrite), _checks.positive_int(scale, "scale")
    key = check_key(key, "smoothgrad")
    n = _checks.positive_int(n, "n")
    sigma = _checks.non_negative_float(sigma, "sigma")
    x = one_input(x)
    label = _label_for(model, params, state, x, label)
    s = sigma * float(jnp.max(x) - jnp.min(x))
    xs = x + s * jax.random.normal(key, (n,) + x.shape[1:], x.dtype)  # (n, h, w, c) noisy copies
    g = _input_grad_fn(model)(params, state, xs, label)  # (n, h, w, c), one gradient per copy
    sal = np.asarray(jnp.mean(jnp.max(jnp.abs(g), axis=-1), axis=0))
    _warn_if_blank(sal, f"the SmoothGrad map of class {label}")
    if save is not None:
        figures.save_nonneg(sal, save, scale)
    return sal


def _check_layer_index(children, layer_index) -> int:
    n = len(children)
    if not _checks.is_int(layer_index) or not 0 <= layer_index < n - 1:
        raise ValueError(f"layer_index must be an int in [0, {n - 1}) (a top-level layer with layers after it), "
                         f"got {layer_index!r}")
    return int(layer_index)


def default_cam_layer(model: Layer, params, state, x) -> int:
    """Grad-CAM's usual layer: the last top-level layer with layers after it whose output is
    rank 4 and which is not a pooling layer (the rectified output of the last conv stage, before
    it is pooled: the finest map that has seen the most); a pooling layer only if nothing else is."""
    children = serial_children(model, "grad_cam")
    a, best, best_pool = one_input(x), None, None
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
    children = serial_children(model, "grad_cam")
    head = lambda p, s, a: _run(children, p, s, a, layer_index + 1, len(children))  # noqa: E731

    def f(params, state, x, label):
        a = _run(children, params, state, x, 0, layer_index + 1)  # (1, h', w', K)
        g = jax.grad(lambda a_: head(params, state, a_)[0, label])(a)  # d z_label / d A
        weights = jnp.mean(g[0], axis=(0, 1))  # (K,): spatial mean of the gradient
        cam = jax.nn.relu(jnp.einsum("hwk,k->hw", a[0], weights))  # (h', w')
        return jax.image.resize(cam, x.shape[1:3], method="linear")  # (h, w)
    return jax.jit(f)


def grad_cam(model: Layer, params, state, x, label, layer_index: int, *, save: Optional[str] = None,
             scale: int = 8, overwrite: bool = False) -> np.ndarray:
    """Grad-CAM at top-level layer ``layer_index`` of a serial model, resized to (h, w).

    Returns ``relu(sum_k w_k A[..., k])`` (h, w) >= 0 in the units of ``A`` times the logit's
    gradient (not normalised; the PNG spans [0, max]). ``default_cam_layer`` gives the usual
    choice of layer. Warns ``BlankMapWarning`` when the map is zero everywhere.
    Raises ValueError if ``layer_index`` is out of range or that layer's output is not
    rank 4 (NHWC feature maps).
    """
    save, scale = figures.check_save(save, overwrite), _checks.positive_int(scale, "scale")
    children = serial_children(model, "grad_cam")
    layer_index = _check_layer_index(children, layer_index)
    x = one_input(x)
    a = jax.eval_shape(_prefix_fn(model, layer_index + 1), params, state, x)
    if len(a.shape) != 4:
        raise ValueError(f"layer_index={layer_index} ({layer_info(children[layer_index]).name}) outputs shape "
                         f"{tuple(a.shape)}; Grad-CAM needs a rank-4 (n, h, w, c) feature map")
    label = _label_for(model, params, state, x, label)
    cam = np.maximum(np.asarray(_grad_cam_fn(model, layer_index)(params, state, x, label)), 0.0)
    _warn_if_blank(cam, f"Grad-CAM of class {label} at layer {layer_index}.{layer_info(children[layer_index]).name}",
                   ": sum_k w_k A_k <= 0 at every position (the spatially averaged channel weights w_k cancel or "
                   "are negative there); try an earlier, finer layer, or the saliency")
    if save is not None:
        figures.save_nonneg(cam, save, scale)
    return cam


def occlusion(model: Layer, params, state, x, label, *, patch: int = 4, stride: int = 2, value: float = 0.0,
              save: Optional[str] = None, scale: int = 8, overwrite: bool = False) -> np.ndarray:
    """Occlusion sensitivity: mean drop of ``softmax(model(x))[label]`` when a patch covers a pixel.

    A ``patch`` x ``patch`` square filled with ``value`` slides with ``stride`` (the last
    position is clamped to the border so every pixel is covered); each pixel gets the mean
    of ``p(x) - p(occluded x)`` over the windows covering it; ``value`` must be a finite float.
    Returns (h, w); the PNG's colour range is symmetric about 0.
    """
    save, scale = figures.check_save(save, overwrite), _checks.positive_int(scale, "scale")
    value = _checks.finite_float(value, "value")
    patch, stride = _checks.positive_int(patch, "patch"), _checks.positive_int(stride, "stride")
    x = one_input(x)
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
    figures.warn_non_finite(heat, f"the occlusion map of class {label}")
    if save is not None:
        top = float(np.max(np.abs(heat), where=np.isfinite(heat), initial=0.0))
        figures.save_array(heat, save, cmap="RdBu_r", scale=scale, vmin=-top, vmax=top)
    return heat
