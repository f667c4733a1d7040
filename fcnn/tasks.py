"""Tasks: what a network is trained for = a loss, metrics over the evaluation set, and a target check.

    Task(name, loss, metrics, check_targets, metric_names, loss_weight=None)
      loss(outputs, targets) -> ()                  the training loss, a mean over the batch
      metrics: tuple of fcnn.metrics.Metric         sums per batch, finalized over the whole set
      check_targets(outputs_shape, y) -> None       on the host, before any computation: raises
                                                    ValueError/TypeError naming the rule
      metric_names: the finalized values a log shows
      loss_weight(targets) -> (n,)                  how many terms each example adds to the loss's
                                                    mean, where examples differ (None: equal);
                                                    a set's or a global batch's loss weights each
                                                    example's loss by it (``fcnn.step``)

    built-in                          loss                               metrics (logged)
    classify()                        softmax cross-entropy              accuracy
    segment(num_classes, ignore_index) per-pixel cross-entropy           pixel_accuracy, mean_iou,
                                      (ignored pixels left out)          foreground_iou
    reconstruct(loss="mse"|"l1")      MSE or L1                          psnr (data_range 1.0)
    denoise(...)                      the same as reconstruct            psnr
    regress(loss="mse"|"l1")          MSE or L1, any target shape        mse, mae

``classify`` is exactly today's classification: its loss is ``losses.softmax_cross_entropy`` and
its accuracy the fraction of rows whose arg-max is the label. ``get_task(name, metrics=..., **opts)``
builds one by name (a ``Task`` passes through), optionally with other metrics by name
(``METRIC_NAMES``); a user's own ``Task`` needs nothing from this module.
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from fcnn import _checks, losses
from fcnn import metrics as M

__all__ = ["Task", "classify", "segment", "reconstruct", "denoise", "regress", "TASKS", "METRIC_NAMES", "get_task",
           "score", "check_labels"]


class Task(NamedTuple):
    """A loss, its metrics and a target check (module docstring)."""

    name: str
    loss: Callable
    metrics: Tuple[M.Metric, ...]
    check_targets: Callable
    metric_names: Tuple[str, ...]
    loss_weight: Optional[Callable] = None


# ----------------------------------------------------------------------------- target checks
def _shape(y) -> tuple:
    return tuple(np.shape(y))


def _is_int(y) -> bool:
    return np.issubdtype(np.asarray(y).dtype, np.integer)


def _check_labels(y, k: int, ignore_index: Optional[int], what: str) -> None:
    """Integer labels in [0, k) (or ``ignore_index``), else an error saying which value broke it."""
    if not _is_int(y):
        raise TypeError(f"{what} targets must be integer class labels, got dtype {np.asarray(y).dtype}")
    found = _checks.labels_outside(y, k, ignore_index)
    if found:
        extra = f" (or ignore_index={ignore_index})" if ignore_index is not None else ""
        raise ValueError(f"{what} labels must be in [0, {k}){extra}; got {found[0]} at index {found[1]}")


def check_labels(x, y, num_classes: int, name: str = "y") -> None:
    """Class targets for images ``x``: one per image, either int labels in ``[0, num_classes)`` or
    one-hot / soft rows (n, num_classes). Raises ``ValueError`` naming ``name`` and the rule."""
    y = np.asarray(y)
    if len(y) != len(x):
        raise ValueError(f"{name} must hold one label per image: the images are {len(x)}, the labels {len(y)}")
    if y.ndim == 2 and y.shape[1] == num_classes and np.issubdtype(y.dtype, np.number):  # one-hot / soft rows
        bad = np.flatnonzero(~(np.isfinite(y) & (y >= 0)).all(axis=1))
        if not len(bad):
            return
        raise ValueError(f"{name} rows are class probabilities and must be finite and >= 0; row {bad[0]} is "
                         f"{y[bad[0]].tolist()} ({len(bad)} such rows)")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be int class labels (n,) or one-hot rows (n, {num_classes}), "
                         f"got {y.dtype} {y.shape}")
    found = _checks.labels_outside(y, num_classes)
    if found:
        value, (index,), count = found
        raise ValueError(f"{name} holds labels outside [0, {num_classes}) (the model has {num_classes} outputs): "
                         f"{value} at index {index} ({count} such labels)")


def _check_classify(outputs_shape, y) -> None:
    outputs_shape = tuple(outputs_shape)
    if len(outputs_shape) != 2:
        raise ValueError(f"classify needs outputs of shape (n, classes), the model gives {outputs_shape}")
    n, k = outputs_shape
    if _shape(y)[1:] == (k,) and len(_shape(y)) == 2:
        return  # one-hot / probability rows
    if len(_shape(y)) != 1:
        raise ValueError(f"classify targets must have shape (n,) labels or (n, {k}) one-hot for outputs "
                         f"{outputs_shape}, got shape {_shape(y)}")
    _check_labels(y, k, None, "classify")


def _same_shape(task: str):
    def check(outputs_shape, y) -> None:
        if _shape(y)[1:] != tuple(outputs_shape)[1:]:
            want = ", ".join(["n"] + [str(d) for d in outputs_shape[1:]])
            raise ValueError(f"{task} targets must have the outputs' shape ({want}), got shape {_shape(y)}")
        y = np.asarray(y)
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)) or y.dtype == bool:
            raise TypeError(f"{task} targets must be real numbers, got dtype {y.dtype}")
        finite = np.isfinite(y)
        if not finite.all():  # a nan target made the loss nan after some steps, read as divergence
            raise ValueError(f"{task} targets must be finite; got {y[~finite].flat[0]} at index "
                             f"{tuple(int(i) for i in np.argwhere(~finite)[0])}")
    return check


# ----------------------------------------------------------------------------- built-in tasks
def classify(*, label_smoothing: float = 0.0) -> Task:
    """Softmax cross-entropy on (n, k) logits against (n,) labels or (n, k) one-hot; accuracy."""
    label_smoothing = _checks.float_in_range(label_smoothing, "label_smoothing", 0, 1)
    def smoothed(outputs, targets):
        return losses.softmax_cross_entropy(outputs, targets, label_smoothing=label_smoothing)

    loss = smoothed if label_smoothing else losses.softmax_cross_entropy
    return Task("classify", loss, (M.Accuracy(),), _check_classify, ("accuracy",))


def segment(num_classes: int, *, ignore_index: Optional[int] = None) -> Task:
    """Per-pixel softmax cross-entropy on (n, ..., k) logits against (n, ...) integer labels in
    [0, num_classes) (pixels labelled ``ignore_index`` count nowhere); confusion counts over the set
    give pixel accuracy, mean IoU and foreground IoU (``fcnn.metrics``). With ``ignore_index`` the
    loss is a mean over the kept pixels, so its ``loss_weight`` counts each example's: a set's loss
    and a data-parallel step's are then that mean over all of them, as one batch would give."""
    num_classes = _checks.positive_int(num_classes, "num_classes")
    if ignore_index is not None and not _checks.is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    conf = M.Confusion(num_classes, ignore_index)

    def loss(outputs, targets):
        return losses.pixelwise_cross_entropy(outputs, targets, ignore_index=ignore_index)

    def kept_pixels(targets):  # the loss averages over these: an example's mean weighs by its count
        t = jnp.asarray(targets)
        return jnp.sum(t != ignore_index, axis=tuple(range(1, t.ndim)), dtype=jnp.float32)

    def check(outputs_shape, y) -> None:
        outputs_shape = tuple(outputs_shape)
        if len(outputs_shape) < 3 or outputs_shape[-1] != num_classes:
            raise ValueError(f"segment needs outputs of shape (n, ..., {num_classes}) (class axis last), "
                             f"the model gives {outputs_shape}")
        if _shape(y)[1:] != outputs_shape[1:-1]:
            raise ValueError(f"segment targets must have shape (n, {', '.join(map(str, outputs_shape[1:-1]))}) "
                             f"(one label per pixel) for outputs {outputs_shape}, got shape {_shape(y)}")
        _check_labels(y, num_classes, ignore_index, "segment")

    return Task("segment", loss, (conf,), check, conf.names, None if ignore_index is None else kept_pixels)


def _regression_loss(loss: str) -> Callable:
    return {"mse": losses.mse, "l1": losses.l1}[_checks.choice(loss, ("mse", "l1"), "loss")]


def reconstruct(*, loss: str = "mse", data_range: float = 1.0, name: str = "reconstruct") -> Task:
    """MSE or L1 between outputs and targets of the same shape; PSNR in dB over the whole set."""
    loss_fn, psnr = _regression_loss(loss), M.PSNR(data_range)
    return Task(name, loss_fn, (psnr,), _same_shape(name), psnr.names)


def denoise(*, loss: str = "mse", data_range: float = 1.0) -> Task:
    """``reconstruct`` named for denoising (noisy input, clean target)."""
    return reconstruct(loss=loss, data_range=data_range, name="denoise")


def regress(*, loss: str = "mse") -> Task:
    """MSE or L1 on any target shape (the outputs' shape); MSE and MAE over the whole set."""
    return Task("regress", _regression_loss(loss), (M.MeanSquaredError(), M.MeanAbsoluteError()),
                _same_shape("regress"), ("mse", "mae"))


TASKS: Dict[str, Callable[..., Task]] = {"classify": classify, "segment": segment, "reconstruct": reconstruct,
                                         "denoise": denoise, "regress": regress}

# metric value name -> (builder from the task's options, options it needs)
_METRICS = {
    "accuracy": (lambda o: M.Accuracy(), ()),
    "pixel_accuracy": (lambda o: M.Confusion(o["num_classes"], o.get("ignore_index")), ("num_classes",)),
    "mean_iou": (lambda o: M.Confusion(o["num_classes"], o.get("ignore_index")), ("num_classes",)),
    "foreground_iou": (lambda o: M.Confusion(o["num_classes"], o.get("ignore_index")), ("num_classes",)),
    "psnr": (lambda o: M.PSNR(o.get("data_range", 1.0)), ()),
    "mse": (lambda o: M.MeanSquaredError(), ()),
    "mae": (lambda o: M.MeanAbsoluteError(), ()),
}
METRIC_NAMES = tuple(_METRICS)


def _metrics_by_name(names: Sequence[str], opts: dict) -> Tuple[M.Metric, ...]:
    built = {}
    for n in names:
        build, needs = _METRICS[_checks.choice(n, METRIC_NAMES, "metric")]
        missing = [o for o in needs if o not in opts]
        if missing:
            raise ValueError(f"metric {n!r} needs the task option {missing[0]} (e.g. get_task(..., {missing[0]}=...))")
        m = build(opts)
        built.setdefault(m.name, m)
    return tuple(built.values())


_METRIC_OPTIONS = ("num_classes", "ignore_index", "data_range")  # what the builders in _METRICS read


def get_task(task, *, metrics: Optional[Sequence[str]] = None, **opts) -> Task:
    """``TASKS[task](**opts)``, or ``task`` itself when it is a ``Task``; ``metrics``: names from
    ``METRIC_NAMES`` that replace the task's own, built from ``opts`` (``num_classes``,
    ``ignore_index``, ``data_range``) whether or not the task itself takes them, e.g.
    ``get_task("classify", metrics=["mean_iou"], num_classes=10)``."""
    named = not isinstance(task, Task)
    build = TASKS[_checks.choice(task, sorted(TASKS), "task")] if named else None
    takes = set(inspect.signature(build).parameters) if named else set()
    others = sorted(k for k in opts if k not in takes)
    if others and (metrics is None or not set(others) <= set(_METRIC_OPTIONS)):
        whose = f"task {task!r} takes {', '.join(sorted(takes)) or 'none'}" if named else "a Task takes none"
        raise ValueError(f"options {others} apply to no part of this task: {whose}, and metrics= may take "
                         f"{', '.join(_METRIC_OPTIONS)}")
    if named:
        task = build(**{k: v for k, v in opts.items() if k in takes})
    if metrics is None:
        return task
    if isinstance(metrics, str) or not isinstance(metrics, Sequence) or not metrics:
        raise TypeError(f"metrics must be a non-empty sequence of metric names, got {metrics!r}")
    return task._replace(metrics=_metrics_by_name(metrics, opts), metric_names=tuple(metrics))


def score(task: Task, outputs, targets, *, batch_size: Optional[int] = None) -> Dict[str, float]:
    """The task's metrics over ``(outputs, targets)`` (host arrays), summed over batches of
    ``batch_size`` rows (the last padded and masked, as an evaluation step sees them; None: one batch).
    Raises ValueError unless both hold the same non-zero number of rows."""
    n = len(outputs)
    if n != len(targets) or n == 0:
        raise ValueError(f"outputs and targets must hold the same non-zero number of rows, got {n} and {len(targets)}")
    batch_size = n if batch_size is None else _checks.positive_int(batch_size, "batch_size")
    totals = {}
    for start in range(0, n, batch_size):
        o, t = np.asarray(outputs[start:start + batch_size]), np.asarray(targets[start:start + batch_size])
        real, pad = len(o), batch_size - len(o)
        mask = np.concatenate([np.ones(real), np.zeros(pad)]).astype(np.float32)
        if pad:
            o = np.concatenate([o, np.zeros((pad,) + o.shape[1:], o.dtype)])
            t = np.concatenate([t, np.zeros((pad,) + t.shape[1:], t.dtype)])
        for m in task.metrics:
            totals[m.name] = M.add_sums(totals.get(m.name), m.batch_sums(o, t, mask))
    return M.finalize_all(task.metrics, totals)
