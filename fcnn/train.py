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
import time
import warnings
from typing import Any, NamedTuple, Optional

import numpy as np

import jax

from fcnn import _checks, checkpoint, parallel, sources, tasks
from fcnn._version import __version__
from fcnn import data as data_lib
from fcnn import metrics as metrics_lib
from fcnn.optim import make_schedule
from fcnn.report import (EpochBar, append_jsonl, epoch_line, plot_curves, progress_default, read_jsonl, summary_table,
                         write_jsonl)
from fcnn.run import (RESUME_MAY_CHANGE, TrainConfig, check_new_run_dir, check_writable, checkpoint_tree, init_run,
                      load_checkpoint, make_loss_fn, make_run_optimizer, make_task, write_config)
from fcnn.step import (DTYPE_POLICIES, check_targets, evaluate, make_eval_step, make_train_step, num_outputs,
                       plain_train_step, predict, resolve_task, step_keys, target_checker, train_step_fn)
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
    """One epoch's training sums so far: the per-step losses and the task's metric sums (host float64 /
    int64 arrays, ``fcnn.metrics``); a checkpoint stores them as a dict (``to_meta``)."""

    loss: float = 0.0
    steps: int = 0
    sums: Optional[dict] = None  # {metric name: {key: array}}, None before the first step

    def add(self, loss: float, sums: dict) -> "EpochSums":
        return EpochSums(self.loss + loss, self.steps + 1, metrics_lib.add_sums(self.sums, sums))

    def values(self, task: tasks.Task):
        """(mean loss over the steps, {metric: value over the epoch's examples}), or (None, {}) before any."""
        if not self.steps:
            return None, {}
        values = metrics_lib.finalize_all(task.metrics, self.sums)
        return self.loss / self.steps, {k: values[k] for k in task.metric_names}

    def to_meta(self) -> dict:
        return {"loss": self.loss, "steps": self.steps, "sums": jax.tree.map(lambda a: a.tolist(), self.sums)}

    @classmethod
    def from_meta(cls, meta, batch_size: int) -> "EpochSums":
        """The sums a checkpoint holds; a list ``[loss, accuracy sum, steps]`` (classify, before tasks)
        becomes correct / count sums over ``steps`` batches of ``batch_size``."""
        if isinstance(meta, dict):
            return cls(meta["loss"], meta["steps"], metrics_lib.host_sums(meta["sums"]) if meta["sums"] is not None else None)
        loss, acc, steps = meta
        sums = {"accuracy": {"correct": np.int64(round(acc * batch_size)), "count": np.int64(steps * batch_size)}}
        return cls(loss, steps, sums if steps else None)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """Deprecated: ``np.asarray(fcnn.data.epoch_permutation(seed, epoch, n))``, the one name for it."""
    warnings.warn("fcnn.train.epoch_order is deprecated; use fcnn.data.epoch_permutation", DeprecationWarning,
                  stacklevel=2)
    return np.asarray(data_lib.epoch_permutation(seed, epoch, n))


def _add_metrics(pending, sums: EpochSums) -> EpochSums:
    """Pull pending step metrics to the host, check them, add them to the epoch sums."""
    for first, k, m in pending:
        m = jax.device_get(m)
        loss = np.atleast_1d(np.asarray(m["loss"], np.float64))
        bad = np.flatnonzero(~np.isfinite(loss))
        if bad.size:
            i = int(bad[0])
            raise TrainingDivergedError(f"loss became {loss[i]} at step {first + i + 1}")
        for i in range(k):
            sums = sums.add(float(loss[i]), m["sums"] if k == 1 else jax.tree.map(lambda a: a[i], m["sums"]))
    return sums


def _compose(*fns):
    """``augment(key, x)`` applying each of ``fns`` (None: left out) in turn with its own key; None if none."""
    fns = [f for f in fns if f is not None]
    if len(fns) < 2:
        return fns[0] if fns else None

    def augment(key, x):
        for k, f in zip(jax.random.split(key, len(fns)), fns):
            x = f(k, x)
        return x

    return augment


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

    def __init__(self, model, data, config: TrainConfig, run_dir, max_steps, task, steps_per_epoch, test_data):
        self.model, self.config, self.run_dir = model, config, run_dir
        bs = config.batch_size
        first, hook = self.take_data(data, steps_per_epoch, test_data)
        if config.augment_shift and config.augment_shift >= min(first[0].shape[1:3]):
            raise ValueError(f"augment_shift={config.augment_shift} must be smaller than the images "
                             f"({first[0].shape[1]}x{first[0].shape[2]}): a larger shift moves the whole image out of view")
        total = config.epochs * self.spe
        self.last = total if max_steps is None else min(int(max_steps), total)
        self.optimizer = make_run_optimizer(config, total)
        self.schedule = make_schedule(config.learning_rate, config.schedule, total)
        augment = _compose(functools.partial(data_lib.augment, crop_padding=config.augment_shift)
                           if config.augment_shift else None, hook)
        self.params, self.state, self.opt_state, self.train_key = init_run(model, config, (bs,) + first[0].shape[1:],
                                                                           self.optimizer)
        self.task = self.pick_task(task, first[0].shape)
        self.check_batch = target_checker(self.task, model, self.params, self.state, first[0].shape)  # traced once
        self.check_batch(*(first if self.source else (self.x, self.y)), "y_train")
        if self.x_test is not None:
            if self.y_test is None or len(self.x_test) == 0:
                raise ValueError(f"x_test must come with y_test and hold at least one example, got x_test of "
                                 f"{len(self.x_test)} and y_test {'None' if self.y_test is None else len(self.y_test)}")
            sources.floating_inputs(self.x_test, "x_test")
            check_targets(self.task, model, self.params, self.state, self.x_test, self.y_test, "y_test")
        self.plan = parallel.data_parallel_plan(config.parallel, model, self.optimizer, task=self.task,
                                                n_devices=config.devices, batch_size=bs, l2=config.l2,
                                                dtype_policy=config.dtype_policy, augment=augment)
        self.step, self.sums, self.history, self.test, self.first, self.log = 0, EpochSums(), [], None, first, None

    def take_data(self, data, steps_per_epoch, test_data):
        """Arrays (``data.x_train``, ...) or a batch source; set the epoch's size and the test set.
        Returns the first training batch (shapes and the target check) and the data's augment hook."""
        bs = self.config.batch_size
        if not hasattr(data, "x_train"):  # a batch source (seed, epoch, start_step) -> batches
            self.source, self.spe = data, sources.check_steps_per_epoch(steps_per_epoch)
            self.x_test, self.y_test = sources.test_pair(test_data)
            return sources.first_batch(data, self.config.seed, bs), None
        if steps_per_epoch is not None or test_data is not None:
            raise ValueError("steps_per_epoch and test_data are for a batch source; arrays bring their own "
                             "(n // batch_size steps, data.x_test / y_test)")
        self.source = None
        self.x, self.y = np.asarray(data.x_train), np.asarray(data.y_train)
        self.x_test, self.y_test = getattr(data, "x_test", None), getattr(data, "y_test", None)
        n = len(self.x)
        if self.x.ndim < 2 or n == 0:
            raise ValueError(f"x_train must hold at least one example (n, ...), got shape {self.x.shape}")
        sources.floating_inputs(self.x, "x_train")
        self.spe = n // bs
        if self.spe < 1:
            raise ValueError(f"batch_size must be <= the number of training examples ({n}), got {bs}")
        return (self.x[:bs], self.y[:bs]), _checks.function(getattr(data, "augment", None), "data.augment",
                                                            optional=True, hint="(key, x) -> x")

    def pick_task(self, task, x_shape) -> tasks.Task:
        """``task`` (a ``Task``, or a name that must be ``config.task``), else the config's task."""
        if task is None or isinstance(task, str):
            if task is not None and task != self.config.task:
                raise ValueError(f"task={task!r} differs from config.task={self.config.task!r}: the config "
                                 f"records the run's task (TrainConfig(task=...))")
            return make_task(self.config, num_outputs(self.model, self.params, self.state, x_shape))
        if self.config.label_smoothing:
            raise ValueError("label_smoothing applies to the config's own task; a Task given to fit brings its loss")
        return resolve_task(task)

    def open_run_dir(self, resume: bool, overwrite: bool, tensorboard: bool) -> None:
        """Restore the latest checkpoint (``resume``), or make sure a new run destroys nothing; write config.json;
        open the TensorBoard log (``tensorboard``) at the step the run starts from."""
        run_dir = self.run_dir
        if not resume:
            check_new_run_dir(run_dir, overwrite=overwrite)
        os.makedirs(run_dir, exist_ok=True)
        check_writable(run_dir)
        lines = self.restore() if resume else []
        write_config(run_dir, self.config)
        write_jsonl(os.path.join(run_dir, "metrics.jsonl"), lines)
        if tensorboard:
            from fcnn.tensorboard import ScalarLog

            self.log = ScalarLog(run_dir, purge_step=self.step + 1 if self.step else None)  # keeps step's own record

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
        self.sums = EpochSums.from_meta(meta["epoch_sums"], self.config.batch_size)
        saved = TrainConfig.from_dict(meta["config"])
        _check_same_run(saved, self.config)
        lines = read_jsonl(path := os.path.join(self.run_dir, "metrics.jsonl"), events=True)
        if not all(isinstance(r, dict) and _checks.is_int(r.get("step")) for r in lines):
            raise ValueError(f"{path}: a record has no integer 'step' (not written by fit); fix or remove it")
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
                "epoch_sums": self.sums.to_meta(), "epoch": self.step // self.spe, "step_in_epoch": self.step % self.spe}
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
                        self.config.eval_batch_size, task=self.task, eval_step=eval_step)

    def run(self, show: bool, verbose: bool) -> None:
        config, plan = self.config, self.plan
        self.saved = self.step
        self.params, self.state, self.opt_state = plan.put((self.params, self.state, self.opt_state))
        steps = {1: plan.make_step(1)}
        if config.steps_per_call > 1:
            steps[config.steps_per_call] = plan.make_step(config.steps_per_call)
        eval_step = make_eval_step(self.model, task=self.task, dtype_policy=config.dtype_policy)
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
        for b, k, xb, yb in self.chunks(epoch, start, end):
            self.params, self.state, self.opt_state, m = steps[k](
                self.params, self.state, self.opt_state, plan.batch(xb, yb, k), keys[b] if k == 1 else keys[b : b + k])
            pending.append((self.step, k, plan.metrics(m)))
            self.step, self.n_img = self.step + k, self.n_img + k * bs
            due = every is not None and self.step // every > (self.step - k) // every
            if due or b + k == end or sum(p[1] for p in pending) >= 10:
                self.sums, pending = _add_metrics(pending, self.sums), []
                self.bar.update(b + k, *self.sums.values(self.task), self.n_img / (time.perf_counter() - self.t0))
            if due and b + k < self.spe:
                self.save()
        self.bar.close()
        return end == self.spe

    def chunks(self, epoch: int, start: int, stop: int):
        """The epoch's batches ``start .. stop - 1`` in chunks of ``steps_per_call`` (arrays or a source)."""
        config = self.config
        if self.source is None:
            return data_lib.epoch_chunks(self.x, self.y, config.batch_size, seed=config.seed, epoch=epoch, start=start,
                                         stop=stop, steps_per_call=config.steps_per_call)
        return sources.source_chunks(self.source, seed=config.seed, epoch=epoch, start=start, stop=stop,
                                     steps_per_call=config.steps_per_call, like=self.first, check=self.check_batch)

    def end_epoch(self, eval_step, verbose: bool) -> None:
        seconds = time.perf_counter() - self.t0
        loss, values = self.sums.values(self.task)
        lr = self.schedule(self.step - 1) if callable(self.schedule) else self.schedule
        record = {"epoch": self.step // self.spe, "step": self.step, "train_loss": loss,
                  **{f"train_{k}": v for k, v in values.items()},
                  "images_per_s": self.n_img / seconds, "epoch_seconds": seconds, "learning_rate": float(lr)}
        if self.x_test is not None:
            self.test = self.evaluate(eval_step)
            record.update({f"test_{k}": v for k, v in self.test.items() if k != "n"})
        self.history.append(record)
        self.sums = EpochSums()
        if verbose:
            self.bar.write(epoch_line(record, self.config.epochs, self.task.metric_names))
        if self.run_dir is not None:
            append_jsonl(os.path.join(self.run_dir, "metrics.jsonl"), record)
            if self.log is not None:
                self.log.write(record)
        self.save()


def _check_fit_args(data, config, run_dir, resume, overwrite, max_steps, tensorboard) -> Optional[str]:
    """``fit``'s argument rules, before anything is built; returns ``run_dir`` checked."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not (all(hasattr(data, a) for a in ("x_train", "y_train")) or callable(data)):
        raise TypeError(f"data must have x_train and y_train (and x_test, y_test to evaluate), as "
                        f"fcnn.data.Dataset has, or be a batch source (seed, epoch, start_step) -> (x, y) batches; "
                        f"got {type(data).__name__}")
    run_dir = _checks.path(run_dir, "run_dir", optional=True)
    resume, overwrite = _checks.boolean(resume, "resume"), _checks.boolean(overwrite, "overwrite")
    if _checks.boolean(tensorboard, "tensorboard") and run_dir is None:
        raise ValueError("tensorboard=True writes its event files into run_dir: give one")
    if tensorboard:
        from fcnn.tensorboard import writer_class

        writer_class()  # installed? asked before the run directory is made
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir holding a checkpoint")
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other: continue the run or replace it")
    if resume and not os.path.isdir(run_dir):  # before open_run_dir would make it
        raise FileNotFoundError(f"run_dir {run_dir!r} does not exist: nothing to resume")
    if max_steps is not None:
        _checks.positive_int(max_steps, "max_steps")
    return run_dir


def fit(
    model: Layer,
    data,
    config: TrainConfig,
    *,
    task=None,
    run_dir: Optional[str] = None,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: Optional[int] = None,
    progress: Optional[bool] = None,
    verbose: bool = True,
    tensorboard: bool = False,
    steps_per_epoch: Optional[int] = None,
    test_data=None,
) -> FitResult:
    """Train ``model`` on ``data`` for ``config.task`` as ``config`` says; resumable and bitwise reproducible.

    Each epoch visits ``n // batch_size`` fixed-shape batches in the order
    ``data.epoch_permutation(seed, epoch, n)`` (``data.epoch_chunks``; the remainder is
    dropped, a different one each epoch), or a batch source's ``steps_per_epoch`` batches. With
    ``run_dir`` it writes ``config.json``, ``metrics.jsonl`` (one JSON line per epoch: train and
    test loss and the task's metrics, learning rate, images/s), ``curves.png`` and checkpoints
    (every ``checkpoint_every`` steps and at each epoch end, and at the last step) holding params,
    model state, optimizer state, the RNG key, the step and the partial epoch sums.
    ``resume=True`` restores the latest checkpoint and continues at the same step of the
    same epoch order, so an interrupted run ends bitwise equal to an uninterrupted one (on CPU).

    Args:
      model: the ``Layer`` to train.
      data: arrays: has ``x_train`` (n, ...), ``y_train`` (n, ...), optional ``x_test``, ``y_test``
        and ``augment`` (``(key, x) -> x`` applied to each training batch inside the step, after
        ``config.augment_shift``'s shift); or a batch source ``source(seed, epoch, start_step) ->
        iterable of (x, y)`` (``fcnn.sources``) with ``steps_per_epoch`` and optional
        ``test_data=(x_test, y_test)``.
      config: a ``TrainConfig``; ``config.task`` names the task (its loss and metrics).
      task: a ``fcnn.tasks.Task`` to train instead of the config's (a user's own loss and metrics),
        or the config's task name; None: ``run.make_task(config, outputs)``.
      run_dir: directory for logs and checkpoints (None: nothing is written).
      resume: continue from the latest checkpoint in ``run_dir`` (with the same config; ``epochs``
        may grow, ``parallel`` and ``devices`` may change).
      overwrite: replace the fcnn run ``run_dir`` holds. Without it a ``run_dir`` must not exist
        or be empty; never is a directory with files fcnn did not write used
        (``fcnn.run.check_new_run_dir``).
      max_steps: stop after this global step (a checkpoint is saved there); None: all epochs.
      progress: show a tqdm bar (default: stderr is a TTY and $CI is unset).
      verbose: print a line per epoch and the final summary table.
      tensorboard: also write every scalar of metrics.jsonl as TensorBoard events in ``run_dir``
        (``fcnn.tensorboard``; needs tensorboardX).

    Raises:
      TrainingDivergedError: the loss became nan or inf ("loss became nan at step 37",
        steps counted from 1).
      ValueError, TypeError: targets that do not fit the model's outputs or the task, before training.
    """
    run_dir = _check_fit_args(data, config, run_dir, resume, overwrite, max_steps, tensorboard)
    loop = _Loop(model, data, config, run_dir, max_steps, task, steps_per_epoch, test_data)
    if run_dir is not None:
        loop.open_run_dir(resume, overwrite, tensorboard)
    t_fit = time.perf_counter()
    try:
        loop.run(progress_default() if progress is None else bool(progress), verbose)
    finally:
        if loop.log is not None:
            loop.log.close()
    seconds = time.perf_counter() - t_fit
    names = loop.task.metric_names
    if run_dir is not None and loop.history:
        note = plot_curves(loop.history, os.path.join(run_dir, "curves.png"), names)
        if note and verbose:
            print(note)
    if verbose and loop.history:
        print(summary_table(loop.history, loop.step, seconds, loop.test, names))
    return FitResult(*loop.plan.get((loop.params, loop.state, loop.opt_state)), loop.step, loop.history, loop.test,
                     seconds)
