"""``fit``: the epoch loop of a run, resumable and bitwise reproducible.

    result = fit(model, data, TrainConfig(...), run_dir="runs/x")   # FitResult

The loop reads top to bottom: the run's config (``fcnn.run``) fixes the optimizer, the initial
trees and the run directory; ``fcnn.parallel`` places the device step (``fcnn.step``) on the
devices; each epoch takes its batches from ``fcnn.data.epoch_chunks`` and its step keys from
``step.step_keys``; the step metrics are summed on the host into ``EpochSums``; checkpoints
(``fcnn.checkpoint``) hold the trees, the key, the step and the partial sums, so a run stopped
anywhere continues at the same batch of the same epoch order. What is printed and logged is in
``fcnn.report``.

For compatibility ``fcnn.train`` also re-exports the names that lived here before the
layout split (``TrainConfig``, ``make_train_step``, ``evaluate``, ``predict``, ...).
"""
from __future__ import annotations

import functools
import os
import sys
import time
import warnings
from typing import Any, NamedTuple, Optional

import numpy as np

from fcnn import _checks, checkpoint, parallel
from fcnn._version import __version__
from fcnn import data as data_lib
from fcnn.report import EpochBar, append_jsonl, epoch_line, plot_curves, read_jsonl, summary_table, write_jsonl
from fcnn.run import (RESUME_MAY_CHANGE, TrainConfig, check_new_run_dir, check_writable, checkpoint_tree, init_run,
                      load_checkpoint, make_loss_fn, make_run_optimizer, write_config)
from fcnn.step import (DTYPE_POLICIES, check_labels, evaluate, make_eval_step, make_train_step, num_outputs,
                       plain_train_step, predict, step_keys, train_step_fn)
from fcnn.types import Layer, Params, State

__all__ = ["fit", "FitResult", "EpochSums", "TrainingDivergedError", "CheckpointWriteError", "epoch_order",
           # re-exported from fcnn.run and fcnn.step (their home since the layout split)
           "TrainConfig", "RESUME_MAY_CHANGE", "load_checkpoint", "make_loss_fn", "DTYPE_POLICIES",
           "make_train_step", "plain_train_step", "train_step_fn", "make_eval_step", "evaluate", "predict",
           "step_keys"]

PRECISIONS = DTYPE_POLICIES  # deprecated name


class TrainingDivergedError(FloatingPointError):
    """The training loss became nan or inf; the message names the step."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, ...); the earlier ones are intact."""


class FitResult(NamedTuple):
    params: Params
    state: State
    opt_state: Any
    step: int  # global steps done
    history: list  # one dict per epoch (the lines of metrics.jsonl)
    test: Optional[dict]  # final evaluate() on the test set, or None
    seconds: float  # wall time of this fit call


class EpochSums(NamedTuple):
    """Sums of one epoch's per-step metrics so far; a checkpoint stores them as a list."""

    loss: float = 0.0
    accuracy: float = 0.0
    steps: int = 0

    def add(self, loss: float, accuracy: float) -> "EpochSums":
        return EpochSums(self.loss + loss, self.accuracy + accuracy, self.steps + 1)

    def means(self):
        """(mean loss, mean accuracy) over the steps summed, or (None, None) before the first."""
        return (self.loss / self.steps, self.accuracy / self.steps) if self.steps else (None, None)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """Deprecated: ``np.asarray(fcnn.data.epoch_permutation(seed, epoch, n))``, the one name for it."""
    warnings.warn("fcnn.train.epoch_order is deprecated; use fcnn.data.epoch_permutation", DeprecationWarning,
                  stacklevel=2)
    return np.asarray(data_lib.epoch_permutation(seed, epoch, n))


def _progress_default() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def _add_metrics(pending, sums: EpochSums) -> EpochSums:
    """Pull pending step metrics to the host, check them, add them to the epoch sums."""
    for first, k, m in pending:
        loss = np.atleast_1d(np.asarray(m["loss"], np.float64))
        acc = np.atleast_1d(np.asarray(m["accuracy"], np.float64))
        bad = np.flatnonzero(~np.isfinite(loss))
        if bad.size:
            i = int(bad[0])
            raise TrainingDivergedError(f"loss became {loss[i]} at step {first + i + 1}")
        for i in range(k):
            sums = sums.add(float(loss[i]), float(acc[i]))
    return sums


def _check_same_run(saved: TrainConfig, given: TrainConfig) -> None:
    if given.epochs < saved.epochs:
        raise ValueError(f"epochs={given.epochs} is fewer than the run's {saved.epochs}: a resumed run may be "
                         f"extended, never shortened (use max_steps / --max-steps to stop early)")
    a, b = saved.to_dict(), given.to_dict()
    for free in RESUME_MAY_CHANGE:
        a.pop(free), b.pop(free)
    diff = sorted(f for f in a if a[f] != b[f])
    if diff:
        raise ValueError(f"resume config differs from the checkpoint's in {diff}; only "
                         f"{', '.join(RESUME_MAY_CHANGE)} may change on resume")


class _Loop:
    """The state one ``fit`` call carries from step to step, and the loop over it."""

    def __init__(self, model, data, config: TrainConfig, run_dir, max_steps):
        self.model, self.config, self.run_dir = model, config, run_dir
        self.x, self.y = np.asarray(data.x_train), np.asarray(data.y_train)
        self.x_test, self.y_test = getattr(data, "x_test", None), getattr(data, "y_test", None)
        n, bs = len(self.x), config.batch_size
        if self.x.ndim < 2 or n == 0:
            raise ValueError(f"x_train must hold at least one example (n, ...), got shape {self.x.shape}")
        if config.augment_shift and config.augment_shift >= min(self.x.shape[1:3]):
            raise ValueError(f"augment_shift={config.augment_shift} must be smaller than the images "
                             f"({self.x.shape[1]}x{self.x.shape[2]}): a larger shift moves the whole image out of view")
        self.spe = n // bs
        if self.spe < 1:
            raise ValueError(f"batch_size must be <= the number of training examples ({n}), got {bs}")
        total = config.epochs * self.spe
        self.last = total if max_steps is None else min(int(max_steps), total)
        self.optimizer = make_run_optimizer(config, total)
        self.loss_fn = make_loss_fn(config.label_smoothing)
        augment = (functools.partial(data_lib.augment, crop_padding=config.augment_shift)
                   if config.augment_shift else None)
        self.plan = parallel.data_parallel_plan(config.parallel, model, self.optimizer, self.loss_fn,
                                                n_devices=config.devices, batch_size=bs, l2=config.l2,
                                                dtype_policy=config.dtype_policy, augment=augment)
        self.params, self.state, self.opt_state, self.train_key = init_run(model, config, (bs,) + self.x.shape[1:],
                                                                           self.optimizer)
        k = num_outputs(model, self.params, self.state, self.x.shape)
        check_labels(self.x, self.y, k, "y_train")
        if self.x_test is not None:
            check_labels(self.x_test, self.y_test, k, "y_test")
        self.step, self.sums, self.history, self.test = 0, EpochSums(), [], None

    def open_run_dir(self, resume: bool, overwrite: bool) -> None:
        """Restore the latest checkpoint (``resume``), or make sure a new run destroys nothing; write config.json."""
        run_dir = self.run_dir
        if not resume:
            check_new_run_dir(run_dir, overwrite=overwrite)
        os.makedirs(run_dir, exist_ok=True)
        check_writable(run_dir)
        lines = self.restore() if resume else []
        write_config(run_dir, self.config)
        write_jsonl(os.path.join(run_dir, "metrics.jsonl"), lines)

    def restore(self) -> list:
        """Load the latest checkpoint; return metrics.jsonl's lines up to its step, plus an "extended"
        event when the config asks for more epochs than the checkpoint's."""
        like = checkpoint_tree(self.params, self.state, self.opt_state, self.train_key)
        restored = checkpoint.load_latest(self.run_dir, like=like)
        if restored is None:
            raise FileNotFoundError(f"run_dir {self.run_dir!r} holds no checkpoint to resume from")
        self.step, tree, meta = restored
        lacks = [k for k in ("config", "epoch_sums") if k not in meta]
        if lacks:
            raise checkpoint.CheckpointError(f"{checkpoint.checkpoint_path(self.run_dir, self.step)} cannot be "
                                             f"resumed: its metadata lacks {', '.join(lacks)} (not saved by fit)")
        self.params, self.state, self.opt_state, self.train_key = (tree["params"], tree["state"], tree["opt_state"],
                                                                   tree["key"])
        self.sums = EpochSums(*meta["epoch_sums"])
        saved = TrainConfig.from_dict(meta["config"])
        _check_same_run(saved, self.config)
        lines = read_jsonl(os.path.join(self.run_dir, "metrics.jsonl"), events=True)
        lines = [r for r in lines if r["step"] <= self.step]  # epochs and events up to the checkpoint
        self.history = [r for r in lines if "event" not in r]
        if self.config.epochs > saved.epochs:
            lines.append({"event": "extended", "step": self.step, "from_epochs": saved.epochs,
                          "to_epochs": self.config.epochs})
        return lines

    def save(self) -> None:
        if self.run_dir is None or self.saved == self.step:
            return
        self.saved = self.step
        meta = {"config": self.config.to_dict(), "fcnn_version": __version__,
                "epoch_sums": list(self.sums), "epoch": self.step // self.spe, "step_in_epoch": self.step % self.spe}
        tree = checkpoint_tree(*self.plan.get((self.params, self.state, self.opt_state)), self.train_key)
        try:
            checkpoint.save(self.run_dir, self.step, tree, keep=self.config.keep, metadata=meta)
        except OSError as e:  # disk full, directory gone: what was saved before is intact
            last = checkpoint.latest(self.run_dir)
            kept = f"the checkpoint {os.path.basename(last)} is intact" if last else "no earlier checkpoint exists"
            raise CheckpointWriteError(e.errno, f"could not save the checkpoint of step {self.step} in "
                                                f"{self.run_dir!r} ({e.strerror or e}); {kept}: make room and resume "
                                                f"the run") from e

    def evaluate(self, eval_step) -> dict:
        return evaluate(self.model, *self.plan.get((self.params, self.state)), self.x_test, self.y_test,
                        self.config.eval_batch_size, eval_step=eval_step)

    def run(self, show: bool, verbose: bool) -> None:
        config, plan = self.config, self.plan
        self.saved = self.step
        self.params, self.state, self.opt_state = plan.put((self.params, self.state, self.opt_state))
        steps = {1: plan.make_step(1)}
        if config.steps_per_call > 1:
            steps[config.steps_per_call] = plan.make_step(config.steps_per_call)
        eval_step = make_eval_step(self.model, self.loss_fn, dtype_policy=config.dtype_policy)
        while self.step < self.last:
            if not self.run_epoch(steps, show):  # stopped by max_steps inside an epoch
                self.save()
                break
            self.end_epoch(eval_step, verbose)
        if self.test is None and self.x_test is not None:
            self.test = self.evaluate(eval_step)

    def run_epoch(self, steps, show: bool) -> bool:
        """Train until the epoch ends or ``last``; True if the epoch was completed."""
        config, plan, bs = self.config, self.plan, self.config.batch_size
        epoch, start = divmod(self.step, self.spe)
        keys = step_keys(self.train_key, epoch * self.spe, self.spe).reshape(self.spe, -1)
        self.bar = EpochBar(epoch, config.epochs, self.spe, start, enabled=show)
        self.t0, pending, self.n_img = time.perf_counter(), [], 0
        end = min(self.spe, start + self.last - self.step)
        every = config.checkpoint_every
        for b, k, xb, yb in data_lib.epoch_chunks(self.x, self.y, bs, seed=config.seed, epoch=epoch, start=start,
                                                  stop=end, steps_per_call=config.steps_per_call):
            self.params, self.state, self.opt_state, m = steps[k](
                self.params, self.state, self.opt_state, plan.batch(xb, yb, k), keys[b] if k == 1 else keys[b : b + k])
            pending.append((self.step, k, plan.metrics(m)))
            self.step, self.n_img = self.step + k, self.n_img + k * bs
            due = every is not None and self.step // every > (self.step - k) // every
            if due or b + k == end or sum(p[1] for p in pending) >= 10:
                self.sums, pending = _add_metrics(pending, self.sums), []
                self.bar.update(b + k, *self.sums.means(), self.n_img / (time.perf_counter() - self.t0))
            if due and b + k < self.spe:
                self.save()
        self.bar.close()
        return end == self.spe

    def end_epoch(self, eval_step, verbose: bool) -> None:
        seconds = time.perf_counter() - self.t0
        loss, acc = self.sums.means()
        record = {"epoch": self.step // self.spe, "step": self.step, "train_loss": loss, "train_accuracy": acc,
                  "images_per_s": self.n_img / seconds, "epoch_seconds": seconds}
        if self.x_test is not None:
            self.test = self.evaluate(eval_step)
            record.update(test_loss=self.test["loss"], test_accuracy=self.test["accuracy"])
        self.history.append(record)
        self.sums = EpochSums()
        if verbose:
            self.bar.write(epoch_line(record, self.config.epochs))
        if self.run_dir is not None:
            append_jsonl(os.path.join(self.run_dir, "metrics.jsonl"), record)
        self.save()


def fit(
    model: Layer,
    data,
    config: TrainConfig,
    *,
    run_dir: Optional[str] = None,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: Optional[int] = None,
    progress: Optional[bool] = None,
    verbose: bool = True,
) -> FitResult:
    """Train ``model`` on ``data`` as ``config`` says; resumable and bitwise reproducible.

    Each epoch visits ``n // batch_size`` fixed-shape batches in the order
    ``data.epoch_permutation(seed, epoch, n)`` (``data.epoch_chunks``; the remainder is
    dropped, a different one each epoch). With ``run_dir`` it writes ``config.json``,
    ``metrics.jsonl`` (one JSON line per epoch), ``curves.png`` and checkpoints (every
    ``checkpoint_every`` steps and at each epoch end, and at the last step) holding params,
    model state, optimizer state, the RNG key, the step and the partial epoch sums.
    ``resume=True`` restores the latest checkpoint and continues at the same step of the
    same epoch order, so an interrupted run ends bitwise equal to an uninterrupted one (on CPU).

    Args:
      model: the ``Layer`` to train.
      data: has ``x_train`` (n, h, w, c), ``y_train`` (n,), optional ``x_test``, ``y_test``.
      config: a ``TrainConfig``.
      run_dir: directory for logs and checkpoints (None: nothing is written).
      resume: continue from the latest checkpoint in ``run_dir`` (with the same config; ``epochs``
        may grow, ``parallel`` and ``devices`` may change).
      overwrite: replace the fcnn run ``run_dir`` holds. Without it a ``run_dir`` must not exist
        or be empty; never is a directory with files fcnn did not write used
        (``fcnn.run.check_new_run_dir``).
      max_steps: stop after this global step (a checkpoint is saved there); None: all epochs.
      progress: show a tqdm bar (default: stderr is a TTY and $CI is unset).
      verbose: print a line per epoch and the final summary table.

    Raises:
      TrainingDivergedError: the loss became nan or inf ("loss became nan at step 37",
        steps counted from 1).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not all(hasattr(data, a) for a in ("x_train", "y_train")):
        raise TypeError(f"data must have x_train and y_train (and x_test, y_test to evaluate), as "
                        f"fcnn.data.Dataset has; got {type(data).__name__}")
    run_dir = _checks.path(run_dir, "run_dir", optional=True)
    resume, overwrite = _checks.boolean(resume, "resume"), _checks.boolean(overwrite, "overwrite")
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir holding a checkpoint")
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other: continue the run or replace it")
    if max_steps is not None:
        _checks.positive_int(max_steps, "max_steps")
    loop = _Loop(model, data, config, run_dir, max_steps)
    if run_dir is not None:
        loop.open_run_dir(resume, overwrite)
    t_fit = time.perf_counter()
    loop.run(_progress_default() if progress is None else bool(progress), verbose)
    seconds = time.perf_counter() - t_fit
    if run_dir is not None and loop.history:
        note = plot_curves(loop.history, os.path.join(run_dir, "curves.png"))
        if note and verbose:
            print(note)
    if verbose and loop.history:
        print(summary_table(loop.history, loop.step, seconds, loop.test))
    return FitResult(*loop.plan.get((loop.params, loop.state, loop.opt_state)), loop.step, loop.history, loop.test,
                     seconds)
