"""What a training run shows and leaves behind: progress bar, metrics log, curves, summary.

Run-directory files written by ``fcnn.train.fit`` (their layout: ``fcnn.run``):

    config.json     the TrainConfig (+ fcnn_version)
    metrics.jsonl   one JSON object per epoch: epoch, step, train_loss, train_<metric> for each of
                    the task's metrics (classify: train_accuracy), images_per_s, epoch_seconds,
                    learning_rate (of the epoch's last step), [test_loss, test_<metric>]; and events, each
                    with an "event" key, at the step they happened: {"event": "extended",
                    "step", "from_epochs", "to_epochs"} when a resumed run got more epochs
    curves.png      loss and each metric per epoch (needs matplotlib; skipped with a note)
    events.out.tfevents.*  the same scalars for TensorBoard (fit(tensorboard=True), fcnn.tensorboard)

The metric names a function shows (``names``) are the task's ``metric_names``; "accuracy", the
classify task's, is the default.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

from fcnn import _files

_SHORT = {"accuracy": "acc"}  # the epoch line's and progress bar's short names

__all__ = ["progress_default", "EpochBar", "epoch_line", "summary_table", "plot_curves", "read_jsonl", "write_jsonl",
           "append_jsonl", "write_json"]


def progress_default() -> bool:
    """Whether long work shows a tqdm bar unless told: stderr is a terminal and $CI is unset."""
    return sys.stderr.isatty() and not os.environ.get("CI")


class EpochBar:
    """A tqdm bar over one epoch's steps showing loss, the task's metrics and images/s (or nothing)."""

    def __init__(self, epoch: int, epochs: int, steps: int, start: int, *, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                             leave=False, dynamic_ncols=True)
        self._at = start

    def update(self, at: int, loss: Optional[float], values: dict, images_per_s: float) -> None:
        """Move the bar to step ``at`` of the epoch; show the epoch's mean loss and metric ``values`` so far."""
        if self._bar is None:
            return
        self._bar.update(at - self._at)
        self._at = at
        if loss is not None:
            shown = {_SHORT.get(k, k): f"{v:.4f}" for k, v in values.items()}
            self._bar.set_postfix(loss=f"{loss:.4f}", **shown, img_s=f"{images_per_s:.0f}", refresh=False)

    def write(self, line: str) -> None:
        if self._bar is None:
            print(line, flush=True)
        else:
            self._bar.write(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def epoch_line(r: dict, epochs: int, names: Sequence[str] = ("accuracy",)) -> str:
    """One printed line per epoch: loss and the metrics ``names``, train and (when evaluated) test."""
    s = f"epoch {r['epoch']:>3}/{epochs}  step {r['step']:>6}  loss {r['train_loss']:.4f}"
    s += "".join(f"  {_SHORT.get(k, k)} {r[f'train_{k}']:.4f}" for k in names)
    if "test_loss" in r:
        s += f"  test_loss {r['test_loss']:.4f}" + "".join(f"  test_{_SHORT.get(k, k)} {r[f'test_{k}']:.4f}"
                                                         for k in names)
    return s + f"  {r['images_per_s']:.0f} img/s  {r['epoch_seconds']:.1f}s"


def summary_table(history: list, steps: int, seconds: float, test: Optional[dict],
                  names: Sequence[str] = ("accuracy",)) -> str:
    """The final table: epochs, steps, time, train loss and metrics ``names`` (last epoch's), test's."""
    last = history[-1]
    rows = [("epochs", f"{last['epoch']}"), ("steps", f"{steps}"), ("time", f"{seconds:.1f} s"),
            ("train loss", f"{last['train_loss']:.4f}")]
    rows += [(f"train {k.replace('_', ' ')}", f"{last[f'train_{k}']:.4f}") for k in names]
    if test is not None:
        rows += [("test loss", f"{test['loss']:.4f}")] + [(f"test {k.replace('_', ' ')}", f"{test[k]:.4f}")
                                                          for k in names] + [("test examples", f"{test['n']}")]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    rule = f"+-{'-' * w0}-+-{'-' * w1}-+"
    lines = [rule] + [f"| {a:<{w0}} | {b:>{w1}} |" for a, b in rows] + [rule]
    return "\n".join(lines)


def plot_curves(history: list, path: str, names: Sequence[str] = ("accuracy",)) -> Optional[str]:
    """Write loss and each metric of ``names`` per epoch to ``path`` (PNG). Returns a note if skipped.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return f"note: matplotlib is not installed; {os.path.basename(path)} not written (pip install 'fcnn[viz]')"
    epochs = [r["epoch"] for r in history]
    whats = ("loss",) + tuple(names)
    fig = Figure(figsize=(4.5 * len(whats), 3.5))
    FigureCanvasAgg(fig)
    for ax, what in zip(fig.subplots(1, len(whats), squeeze=False)[0], whats):
        ax.plot(epochs, [r[f"train_{what}"] for r in history], "o-", label="train")
        if all(f"test_{what}" in r for r in history):
            ax.plot(epochs, [r[f"test_{what}"] for r in history], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        if what == "loss":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return None


def write_json(path: str, obj) -> None:
    """Write JSON atomically and durably (``fcnn._files.write_durably``)."""
    _files.write_durably(path, json.dumps(obj, indent=2))


def read_jsonl(path: str, *, events: bool = False) -> list:
    """The records of a JSON-lines file ([] if it does not exist); a torn last line is dropped, a bad
    line with records after it is a ``ValueError`` naming the file and line (never skipped in silence:
    a resume rewrites the file from what is read here).

    Records with an ``"event"`` key (metrics.jsonl's events) are left out unless ``events``,
    so the default is what has one record per epoch.
    """
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):  # a write cut short by a crash: the records before it stand
                break
            raise ValueError(f"{path}: line {number} is not JSON ({e.msg}), and records follow it: the file "
                             f"was edited or damaged; fix or remove that line") from None
    return out if events else [r for r in out if not (isinstance(r, dict) and "event" in r)]


def write_jsonl(path: str, records) -> None:
    """Replace a JSON-lines file atomically and durably (``fcnn._files.write_durably``)."""
    _files.write_durably(path, "".join(json.dumps(r) + "\n" for r in records))


def append_jsonl(path: str, record) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
