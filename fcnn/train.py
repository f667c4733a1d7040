"""Training: the jit-compiled train step, evaluation, and the ``fit`` loop.

The train step is fcnn's one jit boundary (evaluation has its own, forward-only):

    step = make_train_step(model, optimizer, loss_fn, l2=0.0, steps_per_call=k)
    params, state, opt_state, metrics = step(params, state, opt_state, batch, key)

    k == 1: batch = (x (n, h, w, c), y (n,)),        key = one PRNG key (2,) uint32
    k > 1 : batch = (x (k, n, h, w, c), y (k, n)),    key = (k, 2) keys, one per step
    metrics = {"loss": (), "accuracy": ()}   ((k,) each for k > 1; loss excludes the l2 term)

With ``k > 1`` the k steps run inside one dispatch (``lax.scan``); small nets on a GPU
are launch-bound, so this is how to get under the per-dispatch floor. The step's key
is ``fold_in(train_key, t)`` for global step t (``step_keys``), so a run depends only
on its seed, and k scanned steps equal k single steps. ``params``, ``state`` and
``opt_state`` are donated: do not reuse the arrays passed in.

Precision "bf16" casts the inputs and a copy of the params to bfloat16 for the
forward and backward pass; the master params, the optimizer state, the logits fed
to the loss and the loss itself stay float32 (mixed precision without loss
scaling, which bf16's 8-bit exponent does not need).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fcnn import __version__
from fcnn import data as data_lib
from fcnn import parallel
from fcnn.losses import accuracy, l2_penalty, softmax_cross_entropy
from fcnn.optim import make_optimizer
from fcnn.report import EpochBar, append_jsonl, epoch_line, plot_curves, read_jsonl, summary_table, write_json, write_jsonl
from fcnn.types import Array, Layer, Params, State

__all__ = [
    "PRECISIONS",
    "TrainConfig",
    "FitResult",
    "fit",
    "load_checkpoint",
    "make_loss_fn",
    "epoch_order",
    "TrainingDivergedError",
    "make_train_step",
    "train_step_fn",
    "make_eval_step",
    "evaluate",
    "predict",
    "step_keys",
]

PRECISIONS = ("f32", "bf16")
RESUME_MAY_CHANGE = ("epochs", "parallel", "devices")  # config fields a resumed run may change


class TrainingDivergedError(FloatingPointError):
    """The training loss became nan or inf; the message names the step."""


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _restore_dtypes(new, old):
    """Cast every leaf of ``new`` to the dtype of the matching leaf of ``old``.

    Keeps the carried pytrees' dtypes fixed step to step (a schedule evaluated in
    float64 under ``jax_enable_x64`` must not promote float32 state).
    """
    return jax.tree.map(lambda n, o: jnp.asarray(n).astype(jnp.result_type(o)), new, old)


def _forward(model: Layer, params: Params, state: State, x: Array, key, train: bool, precision: str):
    """Model logits as float32, and the new model state in the old state's dtypes."""
    if precision == "bf16":
        params = _cast_floats(params, jnp.bfloat16)
        x = x.astype(jnp.bfloat16)
    logits, new_state = model.apply(params, state, x, key=key, train=train)
    return logits.astype(jnp.float32), _restore_dtypes(new_state, state)


def step_keys(train_key, start: int, k: int = 1) -> np.ndarray:
    """Keys for global steps ``start .. start+k-1``: ``fold_in(train_key, t)``, on the host.

    Returns one key (2,) uint32 for ``k == 1`` and stacked keys (k, 2) otherwise. ``fit``
    makes a whole epoch's keys in one call (one dispatch), then slices them per step.
    """
    keys = jax.vmap(lambda t: jax.random.fold_in(train_key, t))(jnp.arange(start, start + k, dtype=jnp.uint32))
    keys = np.asarray(keys)
    return keys[0] if k == 1 else keys


def train_step_fn(
    model: Layer,
    optimizer: optax.GradientTransformation,
    loss_fn: Callable = softmax_cross_entropy,
    *,
    l2: float = 0.0,
    steps_per_call: int = 1,
    precision: str = "f32",
    augment: Optional[Callable] = None,
    axis_name: Optional[str] = None,
    unroll: int = 1,
) -> Callable:
    """The train step as a plain (not jit-compiled) function; ``make_train_step`` jits it.

    With ``axis_name`` (the function then runs inside ``pmap`` / ``shard_map`` over that
    axis) the step key is folded with the device index, and the gradients, the metrics and
    the new model state are ``lax.pmean``-ed over the axis, so every device applies the
    same update. ``fcnn.parallel`` builds its data-parallel steps from this function.
    Arguments as ``make_train_step``.
    """
    if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int) or steps_per_call < 1:
        raise ValueError(f"steps_per_call must be a positive int, got {steps_per_call!r}")
    if not float(l2) >= 0:
        raise ValueError(f"l2 must be a non-negative float, got {l2!r}")
    if axis_name is not None and (not isinstance(axis_name, str) or not axis_name):
        raise ValueError(f"axis_name must be None or a non-empty str, got {axis_name!r}")
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be a positive int (scan iterations per loop body), got {unroll!r}")
    _check_precision(precision)

    def mean(tree):
        return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

    def objective(params, state, x, y, key):
        logits, new_state = _forward(model, params, state, x, key, True, precision)
        loss = loss_fn(logits, y)
        total = loss + l2_penalty(params, float(l2)) if l2 else loss
        return total, (loss, accuracy(logits, y), new_state)

    def one_step(params, state, opt_state, batch, key):
        x, y = batch
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        if augment is not None:
            aug_key, key = jax.random.split(key)
            x = augment(aug_key, x)
        grads, (loss, acc, new_state) = jax.grad(objective, has_aux=True)(params, state, x, y, key)
        grads = mean(grads)
        if axis_name is not None:
            new_state = _restore_dtypes(mean(new_state), state)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        new_opt_state = _restore_dtypes(new_opt_state, opt_state)
        return new_params, new_state, new_opt_state, mean({"loss": loss, "accuracy": acc})

    def many_steps(params, state, opt_state, batch, keys):
        def body(carry, inputs):
            p, s, o = carry
            b, key = inputs
            p, s, o, metrics = one_step(p, s, o, b, key)
            return (p, s, o), metrics

        (params, state, opt_state), metrics = jax.lax.scan(body, (params, state, opt_state), (batch, keys),
                                                           unroll=unroll)
        return params, state, opt_state, metrics

    return one_step if steps_per_call == 1 else many_steps


def make_train_step(
    model: Layer,
    optimizer: optax.GradientTransformation,
    loss_fn: Callable = softmax_cross_entropy,
    *,
    l2: float = 0.0,
    steps_per_call: int = 1,
    donate: bool = True,
    precision: str = "f32",
    augment: Optional[Callable] = None,
    unroll: int = 1,
):
    """Build the jit-compiled train step (see the module docstring for its contract).

    Args:
      model: a ``Layer`` whose apply returns logits (n, k).
      optimizer: an optax transformation (``fcnn.optim.make_optimizer``).
      loss_fn: ``loss_fn(logits, labels) -> scalar`` batch mean.
      l2: coefficient of ``l2_penalty`` added to the objective (kernels only).
      steps_per_call: k >= 1 steps per dispatch, scanned over a stacked chunk of k batches.
      donate: donate the params / state / opt_state buffers to the outputs.
      precision: "f32" or "bf16" (see the module docstring).
      augment: optional ``augment(key, x) -> x`` applied to each training batch inside the
        step (on device); the step key is then split into (augment key, model key).
      unroll: with k > 1, scan iterations per loop body (``lax.scan(unroll=...)``); ``k``
        unrolls fully: one straight kernel sequence instead of a device loop whose trip
        test syncs with the host every step (faster for launch-bound nets on a GPU, longer
        compile; see docs/benchmarks.md).

    Returns:
      ``step(params, state, opt_state, batch, key) -> (params, state, opt_state, metrics)``.
    """
    fn = train_step_fn(model, optimizer, loss_fn, l2=l2, steps_per_call=steps_per_call, precision=precision,
                       augment=augment, unroll=unroll)
    return jax.jit(fn, donate_argnums=(0, 1, 2) if donate else ())


def make_eval_step(model: Layer, loss_fn: Callable = softmax_cross_entropy, *, precision: str = "f32"):
    """Jit-compiled ``eval_step(params, state, x, y, mask) -> (loss_sum, correct_sum)``.

    ``mask`` (n,) is 1.0 for real rows and 0.0 for padding, so a padded last batch
    keeps the compiled shape. Per-example losses come from applying ``loss_fn`` to
    one row at a time (``vmap``), so any batch-mean loss works.
    """
    _check_precision(precision)

    def eval_step(params, state, x, y, mask):
        logits, _ = _forward(model, params, state, x, None, False, precision)
        per_example = jax.vmap(lambda l, t: loss_fn(l[None], t[None]))(logits, y)
        correct = (jnp.argmax(logits, axis=-1) == (y if y.ndim == 1 else jnp.argmax(y, -1))).astype(jnp.float32)
        return jnp.sum(per_example * mask), jnp.sum(correct * mask)

    return jax.jit(eval_step)


def _padded_batches(x: np.ndarray, y: np.ndarray, batch_size: int):
    """Fixed-shape batches covering every row once: yields (xb, yb, mask), last one zero-padded."""
    n = len(x)
    for i in range(0, n, batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        m = len(xb)
        mask = np.zeros(batch_size, np.float32)
        mask[:m] = 1.0
        if m < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - m,) + x.shape[1:], x.dtype)])
            yb = np.concatenate([yb, np.zeros((batch_size - m,) + y.shape[1:], y.dtype)])
        yield xb, yb, mask


def evaluate(
    model: Layer,
    params: Params,
    state: State,
    x,
    y,
    batch_size: int,
    *,
    loss_fn: Callable = softmax_cross_entropy,
    precision: str = "f32",
    eval_step=None,
) -> dict:
    """Mean loss and accuracy over ``(x, y)`` with every example counted exactly once.

    Args:
      x: (n, h, w, c) inputs; y: (n,) labels (or (n, k) one-hot).
      batch_size: rows per compiled batch; the last batch is padded and masked, so
        one compilation serves any n.
      eval_step: a ``make_eval_step`` result to reuse (avoids recompiling per call).

    Returns:
      ``{"loss": float, "accuracy": float, "n": int}``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must hold the same non-zero number of examples, got {len(x)} and {len(y)}")
    if eval_step is None:
        eval_step = make_eval_step(model, loss_fn, precision=precision)
    loss_sum, correct = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
    for xb, yb, mask in _padded_batches(x, y, batch_size):
        l, c = eval_step(params, state, xb, yb, mask)
        loss_sum, correct = loss_sum + l, correct + c
    loss_sum, correct = jax.device_get((loss_sum, correct))
    return {"loss": float(loss_sum) / len(x), "accuracy": float(correct) / len(x), "n": len(x)}


def predict(model: Layer, params: Params, state: State, x, *, precision: str = "f32") -> Array:
    """Class probabilities ``softmax(model(x))`` in eval mode. x: (n, h, w, c) -> (n, k)."""
    logits, _ = _forward(model, params, state, jnp.asarray(x), None, False, precision)
    return jax.nn.softmax(logits, axis=-1)



# ----------------------------------------------------------------------------- fit
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved as ``config.json`` and in every checkpoint.

    ``model``, ``dataset``, ``data_dir``, ``impl`` and ``pool_impl`` are recorded for
    rebuilding the run (``fcnn eval``); ``fit`` itself takes the model and data built
    from them. ``checkpoint_every`` is in steps (None: at each epoch end only).
    ``parallel``: "none" (one device), "pmap" or "sharding" (data parallel over ``devices``
    devices, default all; ``fcnn.parallel.data_parallel_plan``); checkpoints hold one copy
    either way, so a run may resume under another mode.
    ``augment_shift``: training images are translated by up to this many pixels
    (``fcnn.data.augment(crop_padding=...)``: pad with 0 and crop, on device; 0: none). The defaults are the tuned
    ``fcnn train`` job (LeNet-5 on digits, >= 98% test accuracy).
    """

    model: str = "lenet5"
    dataset: str = "digits"
    data_dir: Optional[str] = None
    impl: str = "auto"
    pool_impl: str = "auto"
    epochs: int = 25
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    l2: float = 0.0
    label_smoothing: float = 0.0
    precision: str = "f32"
    augment_shift: int = 3
    seed: int = 0
    steps_per_call: int = 1
    parallel: str = "none"
    devices: Optional[int] = None
    checkpoint_every: Optional[int] = None
    keep: int = 3
    eval_batch_size: int = 512

    def __post_init__(self):
        for name in ("epochs", "batch_size", "steps_per_call", "keep", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.checkpoint_every is not None and (not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be a positive int (steps) or None, got {self.checkpoint_every!r}")
        if isinstance(self.augment_shift, bool) or not isinstance(self.augment_shift, int) or self.augment_shift < 0:
            raise ValueError(f"augment_shift must be a non-negative int (pixels), got {self.augment_shift!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not float(self.l2) >= 0:
            raise ValueError(f"l2 must be a non-negative float, got {self.l2!r}")
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be a float in [0, 1), got {self.label_smoothing!r}")
        _check_precision(self.precision)
        if self.parallel not in parallel.PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {', '.join(parallel.PARALLEL_MODES)}; got {self.parallel!r}")
        if self.devices is not None and (isinstance(self.devices, bool) or not isinstance(self.devices, int)
                                         or self.devices < 1):
            raise ValueError(f"devices must be a positive int or None (all devices), got {self.devices!r}")
        if self.parallel == "none" and self.devices not in (None, 1):
            raise ValueError(f"devices={self.devices} needs parallel 'pmap' or 'sharding' (parallel='none' uses one device)")
        make_optimizer(self.optimizer, self.learning_rate, momentum=self.momentum, schedule=self.schedule,
                       total_steps=1, weight_decay=self.weight_decay)  # validates those fields

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config has unknown fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)


class FitResult(NamedTuple):
    params: Params
    state: State
    opt_state: Any
    step: int  # global steps done
    history: list  # one dict per epoch (the lines of metrics.jsonl)
    test: Optional[dict]  # final evaluate() on the test set, or None
    seconds: float  # wall time of this fit call


def make_loss_fn(label_smoothing: float = 0.0) -> Callable:
    """``softmax_cross_entropy`` with the given label smoothing."""
    if not label_smoothing:
        return softmax_cross_entropy
    return functools.partial(softmax_cross_entropy, label_smoothing=float(label_smoothing))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of epoch ``epoch``: a pure function of (seed, epoch, n)."""
    return np.asarray(data_lib.epoch_permutation(seed, epoch, n))


def _init_all(model, config: TrainConfig, in_shape, optimizer):
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
    _, params, state = model.init(init_key, in_shape)
    return params, state, optimizer.init(params), train_key


def _checkpoint_tree(params, state, opt_state, train_key):
    return {"params": params, "state": state, "opt_state": opt_state, "key": train_key}


def _optimizer_for(config: TrainConfig, total_steps: int):
    return make_optimizer(config.optimizer, config.learning_rate, momentum=config.momentum,
                          schedule=config.schedule, total_steps=total_steps, weight_decay=config.weight_decay)


def load_checkpoint(model: Layer, config: TrainConfig, run_dir: str, train_shape):
    """Latest checkpoint of a run: ``(step, params, state)``.

    Args:
      train_shape: shape of the training inputs (n, h, w, c), which fixes the
        optimizer-state template (schedules depend on the number of steps).
    """
    from fcnn import checkpoint

    n, bs = train_shape[0], config.batch_size
    optimizer = _optimizer_for(config, config.epochs * max(1, n // bs))
    template = _checkpoint_tree(*_init_all(model, config, (bs,) + tuple(train_shape[1:]), optimizer))
    restored = checkpoint.load_latest(run_dir, like=template)
    if restored is None:
        raise FileNotFoundError(f"run_dir {run_dir!r} holds no checkpoint")
    step, tree, _ = restored
    return step, tree["params"], tree["state"]


def _progress_default() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def fit(
    model: Layer,
    data,
    config: TrainConfig,
    *,
    run_dir: Optional[str] = None,
    resume: bool = False,
    max_steps: Optional[int] = None,
    progress: Optional[bool] = None,
    verbose: bool = True,
) -> FitResult:
    """Train ``model`` on ``data`` as ``config`` says; resumable and bitwise reproducible.

    Each epoch visits ``n // batch_size`` fixed-shape batches in the order
    ``epoch_order(seed, epoch, n)`` (the remainder is dropped; it differs per epoch).
    With ``run_dir`` it writes ``config.json``, ``metrics.jsonl`` (one JSON line per
    epoch), ``curves.png`` and checkpoints (every ``checkpoint_every`` steps and at
    each epoch end, and at the last step) holding params, model state, optimizer
    state, the RNG key, the step and the partial epoch sums. ``resume=True`` restores
    the latest checkpoint and continues at the same step of the same epoch order, so
    an interrupted run ends bitwise equal to an uninterrupted one (on CPU).

    Args:
      model: the ``Layer`` to train.
      data: has ``x_train`` (n, h, w, c), ``y_train`` (n,), optional ``x_test``, ``y_test``.
      config: a ``TrainConfig``.
      run_dir: directory for logs and checkpoints (None: nothing is written).
      resume: continue from the latest checkpoint in ``run_dir``.
      max_steps: stop after this global step (a checkpoint is saved there); None: all epochs.
      progress: show a tqdm bar (default: stderr is a TTY and $CI is unset).
      verbose: print a line per epoch and the final summary table.

    Raises:
      TrainingDivergedError: the loss became nan or inf ("loss became nan at step 37",
        steps counted from 1).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir holding a checkpoint")
    x_tr, y_tr = np.asarray(data.x_train), np.asarray(data.y_train)
    x_te = getattr(data, "x_test", None)
    y_te = getattr(data, "y_test", None)
    n, bs, k_max = len(x_tr), config.batch_size, config.steps_per_call
    spe = n // bs
    if spe < 1:
        raise ValueError(f"batch_size must be <= the number of training examples ({n}), got {bs}")
    total = config.epochs * spe
    last = total if max_steps is None else min(int(max_steps), total)
    optimizer = _optimizer_for(config, total)
    loss_fn = make_loss_fn(config.label_smoothing)
    augment = functools.partial(data_lib.augment, crop_padding=config.augment_shift) if config.augment_shift else None
    plan = parallel.data_parallel_plan(config.parallel, model, optimizer, loss_fn, n_devices=config.devices,
                                       batch_size=bs, l2=config.l2, precision=config.precision, augment=augment)
    params, state, opt_state, train_key = _init_all(model, config, (bs,) + x_tr.shape[1:], optimizer)
    step, sums, history = 0, [0.0, 0.0, 0], []
    if run_dir is not None:
        from fcnn import checkpoint

        os.makedirs(run_dir, exist_ok=True)
        if resume:
            restored = checkpoint.load_latest(run_dir, like=_checkpoint_tree(params, state, opt_state, train_key))
            if restored is None:
                raise FileNotFoundError(f"run_dir {run_dir!r} holds no checkpoint to resume from")
            step, tree, meta = restored
            params, state, opt_state, train_key = tree["params"], tree["state"], tree["opt_state"], tree["key"]
            sums = list(meta["epoch_sums"])
            _check_same_run(TrainConfig.from_dict(meta["config"]), config)
            history = [r for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if r["step"] <= step]
        elif checkpoint.latest(run_dir) is not None:
            raise ValueError(f"run_dir {run_dir!r} already holds checkpoints; resume it or choose a new run_dir")
        write_json(os.path.join(run_dir, "config.json"), dict(config.to_dict(), fcnn_version=__version__))
        write_jsonl(os.path.join(run_dir, "metrics.jsonl"), history)

    saved = [step]

    def save():
        if run_dir is not None and saved[0] != step:
            saved[0] = step
            meta = {"config": config.to_dict(), "fcnn_version": __version__, "epoch_sums": list(sums),
                    "epoch": step // spe, "step_in_epoch": step % spe}
            checkpoint.save(run_dir, step, _checkpoint_tree(*plan.get((params, state, opt_state)), train_key),
                            keep=config.keep, metadata=meta)

    params, state, opt_state = plan.put((params, state, opt_state))
    step_1 = plan.make_step(1)
    step_k = plan.make_step(k_max) if k_max > 1 else None
    eval_step = make_eval_step(model, loss_fn, precision=config.precision)
    show = _progress_default() if progress is None else bool(progress)

    t_fit = time.perf_counter()
    test = None
    while step < last:
        epoch, b = divmod(step, spe)
        order = epoch_order(config.seed, epoch, n)
        keys = step_keys(train_key, epoch * spe, spe).reshape(spe, -1)
        bar = EpochBar(epoch, config.epochs, spe, b, enabled=show)
        t0, pending, n_img = time.perf_counter(), [], 0
        end = min(spe, b + last - step)
        while b < end:
            k = k_max if end - b >= k_max else 1
            idx = order[b * bs : (b + k) * bs]
            xb, yb = x_tr[idx], y_tr[idx]
            if k > 1:
                xb, yb = xb.reshape((k, bs) + xb.shape[1:]), yb.reshape((k, bs) + yb.shape[1:])
            fn = step_k if k > 1 else step_1
            params, state, opt_state, m = fn(params, state, opt_state, plan.batch(xb, yb, k),
                                             keys[b] if k == 1 else keys[b : b + k])
            pending.append((step, k, plan.metrics(m)))
            step, b, n_img = step + k, b + k, n_img + k * bs
            due = config.checkpoint_every is not None and step // config.checkpoint_every > (step - k) // config.checkpoint_every
            if due or b == end or sum(p[1] for p in pending) >= 10:
                _flush(pending, sums)
                pending = []
                bar.update(b, sums, n_img / (time.perf_counter() - t0))
            if due and b < spe:
                save()
        bar.close()
        if b < spe:  # stopped by max_steps inside an epoch
            save()
            break
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "step": step, "train_loss": sums[0] / sums[2], "train_accuracy": sums[1] / sums[2],
                  "images_per_s": n_img / seconds, "epoch_seconds": seconds}
        if x_te is not None:
            test = evaluate(model, *plan.get((params, state)), x_te, y_te, config.eval_batch_size, eval_step=eval_step)
            record.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        history.append(record)
        sums = [0.0, 0.0, 0]
        if verbose:
            bar.write(epoch_line(record, config.epochs))
        if run_dir is not None:
            append_jsonl(os.path.join(run_dir, "metrics.jsonl"), record)
        save()
    if test is None and x_te is not None:
        test = evaluate(model, *plan.get((params, state)), x_te, y_te, config.eval_batch_size, eval_step=eval_step)
    seconds = time.perf_counter() - t_fit
    if run_dir is not None and history:
        note = plot_curves(history, os.path.join(run_dir, "curves.png"))
        if note and verbose:
            print(note)
    if verbose and history:
        print(summary_table(history, step, seconds, test))
    return FitResult(*plan.get((params, state, opt_state)), step, history, test, seconds)


def _flush(pending, sums) -> None:
    """Pull pending step metrics to the host, check them, add them to the epoch sums."""
    for first, k, m in pending:
        loss = np.atleast_1d(np.asarray(m["loss"], np.float64))
        acc = np.atleast_1d(np.asarray(m["accuracy"], np.float64))
        bad = np.flatnonzero(~np.isfinite(loss))
        if bad.size:
            i = int(bad[0])
            raise TrainingDivergedError(f"loss became {loss[i]} at step {first + i + 1}")
        for i in range(k):
            sums[0] += float(loss[i])
            sums[1] += float(acc[i])
            sums[2] += 1


def _check_same_run(saved: TrainConfig, given: TrainConfig) -> None:
    a, b = saved.to_dict(), given.to_dict()
    for free in RESUME_MAY_CHANGE:
        a.pop(free), b.pop(free)
    diff = sorted(f for f in a if a[f] != b[f])
    if diff:
        raise ValueError(f"resume config differs from the checkpoint's in {diff}; only "
                         f"{', '.join(RESUME_MAY_CHANGE)} may change on resume")
