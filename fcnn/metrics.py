"""Metrics over a whole evaluation set, from sums: never a mean of per-batch means.

A metric is a pair of functions (and the names of the values it reports)::

    batch_sums(outputs, targets, mask) -> {name: array}   one batch, inside jit; mask: (n,) 1.0 for a
                                                          real row, 0.0 for a padding row
    finalize(total_sums) -> {name: float}                 on the host, once, after adding every
                                                          batch's sums (``add_sums``)

A mean of per-batch means weights a short last batch like a full one (and counts its padding
rows); sums of counts and errors do not, so the value is exactly the full-set value whatever the
batch size. The metrics:

    Accuracy()          correct, count                     accuracy = correct / count
    Confusion(k)        (k, k) counts [true, predicted]    pixel_accuracy = trace / total;
                                                           iou_c = TP_c / (TP_c + FP_c + FN_c);
                                                           mean_iou: mean over the classes present
                                                           (union TP+FP+FN > 0; absent classes are
                                                           left out, not counted as 0 or 1);
                                                           foreground_iou: the same over classes
                                                           1..k-1 (class 0 the background)
    PSNR(data_range)    squared error, count               psnr = 10 log10(data_range^2 / (sq / count))
    MeanSquaredError()  squared error, count               mse = sq / count
    MeanAbsoluteError() absolute error, count              mae = abs / count

A batch's counts are int32 and its error sums in at least float32; ``add_sums`` adds batches on
the host in int64 / float64 (``host_sums``), so a set's counts stay exact past 2**31 elements (an
int32 total wrapped negative there: MSE < 0, PSNR nan). A value with nothing to average (count 0,
no class present) is nan.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fcnn import _checks
from fcnn.dtypes import acc_dtype

__all__ = ["Metric", "Accuracy", "Confusion", "PSNR", "MeanSquaredError", "MeanAbsoluteError", "add_sums", "host_sums",
           "finalize_all", "confusion_counts", "iou_from_confusion"]


class Metric(NamedTuple):
    """A metric computed from sums: ``batch_sums(outputs, targets, mask) -> {key: array}`` per batch,
    ``finalize(total_sums) -> {name: float}`` once; ``names``: the values it reports (the keys of
    ``finalize``'s result a log shows; it may return more, e.g. per-class IoU)."""

    name: str
    batch_sums: Callable
    finalize: Callable
    names: Tuple[str, ...]


def host_sums(sums: dict) -> dict:
    """Sums as host arrays widened to float64 (floating leaves) or int64 (integer leaves)."""
    def wide(a):  # no copy of a leaf already wide (a running total)
        a = np.asarray(a)
        return a.astype(np.float64 if np.issubdtype(a.dtype, np.floating) else np.int64, copy=False)
    return jax.tree.map(wide, sums)


def add_sums(total: Optional[dict], sums: dict) -> dict:
    """``total + sums`` leaf by leaf on the host, in float64 / int64 (``host_sums``; ``total=None``:
    the first batch)."""
    sums = host_sums(sums)
    return sums if total is None else jax.tree.map(np.add, host_sums(total), sums)


def finalize_all(metrics, totals: dict) -> Dict[str, float]:
    """Every metric's ``finalize`` on its own sums (``totals[metric.name]``), merged into one dict."""
    out = {}
    for m in metrics:
        out.update(m.finalize(totals[m.name]))
    return out


def _row_mask(mask, n: int, ndim: int):
    """(n,) mask -> (n, 1, ..., 1) of rank ``ndim``, else ValueError naming ``mask``."""
    if jnp.shape(mask) != (n,):
        raise ValueError(f"mask must have shape (batch,) = ({n},), one entry per row, got shape {jnp.shape(mask)}")
    return jnp.reshape(jnp.asarray(mask), (n,) + (1,) * (ndim - 1))


def _ratio(num, den) -> float:
    num, den = float(num), float(den)
    return num / den if den else math.nan


def _int_labels(targets, name="targets"):
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise TypeError(f"{name} must be integer class indices, got dtype {jnp.result_type(targets)}")
    return jnp.asarray(targets)


# ----------------------------------------------------------------------------- classification
def Accuracy() -> Metric:
    """Fraction of real rows whose arg-max matches the label.

    outputs: (n, k) scores; targets: (n,) integer labels or (n, k) one-hot (arg-max taken).
    """
    def batch_sums(outputs, targets, mask):
        if jnp.ndim(outputs) != 2:
            raise ValueError(f"outputs must have shape (batch, classes), got shape {jnp.shape(outputs)}")
        labels = jnp.argmax(targets, axis=-1) if jnp.shape(targets) == jnp.shape(outputs) else targets
        if jnp.shape(labels) != jnp.shape(outputs)[:1]:
            raise ValueError(f"targets must have shape (batch,) or (batch, classes) matching outputs "
                             f"{jnp.shape(outputs)}, got shape {jnp.shape(targets)}")
        real = _row_mask(mask, outputs.shape[0], 1) > 0
        hit = (jnp.argmax(outputs, axis=-1) == labels) & real
        return {"correct": jnp.sum(hit, dtype=jnp.int32), "count": jnp.sum(real, dtype=jnp.int32)}

    def finalize(s):
        return {"accuracy": _ratio(s["correct"], s["count"])}

    return Metric("accuracy", batch_sums, finalize, ("accuracy",))


# ----------------------------------------------------------------------------- segmentation
def confusion_counts(predicted, labels, weight, num_classes: int):
    """(k, k) int32 counts ``C[t, p]`` of pixels with true class t and predicted class p, over the
    pixels with ``weight`` true; labels outside [0, k) (e.g. an ignore_index) count nowhere."""
    t = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * weight[..., None].astype(jnp.int32)
    p = jax.nn.one_hot(predicted, num_classes, dtype=jnp.int32)
    return jnp.einsum("...t,...p->tp", t, p, preferred_element_type=jnp.int32)


def iou_from_confusion(conf) -> Dict[str, float]:
    """pixel_accuracy, mean_iou, foreground_iou and iou_c for every class from (k, k) counts [true, pred]."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp  # TP + FP + FN
    present = union > 0
    iou = np.where(present, tp / np.where(present, union, 1), np.nan)
    out = {"pixel_accuracy": _ratio(tp.sum(), conf.sum()),
           "mean_iou": float(iou[present].mean()) if present.any() else math.nan,
           "foreground_iou": float(iou[1:][present[1:]].mean()) if present[1:].any() else math.nan}
    out.update({f"iou_{c}": float(v) for c, v in enumerate(iou)})
    return out


def Confusion(num_classes: int, ignore_index: Optional[int] = None) -> Metric:
    """Per-pixel confusion counts over the evaluation set -> pixel accuracy and IoU (module docstring).

    outputs: (n, ..., k) per-pixel scores (class axis last); targets: (n, ...) integer labels;
    pixels labelled ``ignore_index`` count nowhere.
    """
    num_classes = _checks.positive_int(num_classes, "num_classes")
    if ignore_index is not None and not _checks.is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")

    def batch_sums(outputs, targets, mask):
        labels = _int_labels(targets)
        if jnp.shape(outputs) != jnp.shape(labels) + (num_classes,):
            raise ValueError(f"outputs must have shape targets' shape + ({num_classes},) classes = "
                             f"{jnp.shape(labels) + (num_classes,)}, got shape {jnp.shape(outputs)}")
        weight = jnp.broadcast_to(_row_mask(mask, labels.shape[0], labels.ndim) > 0, labels.shape)
        if ignore_index is not None:
            weight = weight & (labels != ignore_index)
        return {"confusion": confusion_counts(jnp.argmax(outputs, axis=-1), labels, weight, num_classes)}

    def finalize(s):
        return iou_from_confusion(s["confusion"])

    return Metric("confusion", batch_sums, finalize, ("pixel_accuracy", "mean_iou", "foreground_iou"))


# ----------------------------------------------------------------------------- regression
def _error_sums(kind: str):
    def batch_sums(outputs, targets, mask):
        if jnp.shape(outputs) != jnp.shape(targets):
            raise ValueError(f"outputs and targets must have the same shape, got {jnp.shape(outputs)} and "
                             f"{jnp.shape(targets)}")
        o = jnp.asarray(outputs)
        dtype = acc_dtype(o.dtype)
        diff = o.astype(dtype) - jnp.asarray(targets).astype(dtype)
        err = jnp.square(diff) if kind == "sq" else jnp.abs(diff)
        real = jnp.broadcast_to(_row_mask(mask, o.shape[0], o.ndim) > 0, o.shape)
        return {kind: jnp.sum(jnp.where(real, err, 0)), "count": jnp.sum(real, dtype=jnp.int32)}

    return batch_sums


def PSNR(data_range: float = 1.0) -> Metric:
    """Peak signal-to-noise ratio in dB of the whole set: ``10 log10(data_range^2 / MSE)`` with the MSE
    from the summed squared error over every element of every real row (inf for a perfect match).

    outputs and targets: the same shape (n, ...); ``data_range``: max - min of the signal (1.0 for [0, 1]).
    """
    data_range = _checks.positive_float(data_range, "data_range")

    def finalize(s):
        mse = _ratio(s["sq"], s["count"])
        return {"psnr": 10 * math.log10(data_range ** 2 / mse) if mse > 0 else (math.inf if mse == 0 else math.nan)}

    return Metric("psnr", _error_sums("sq"), finalize, ("psnr",))


def MeanSquaredError() -> Metric:
    """Mean of ``(output - target)^2`` over every element of every real row of the set."""
    return Metric("mse", _error_sums("sq"), lambda s: {"mse": _ratio(s["sq"], s["count"])}, ("mse",))


def MeanAbsoluteError() -> Metric:
    """Mean of ``|output - target|`` over every element of every real row of the set."""
    return Metric("mae", _error_sums("abs"), lambda s: {"mae": _ratio(s["abs"], s["count"])}, ("mae",))
