"""The device step: one training step, one evaluation step, evaluate and predict.

The train step is fcnn's one jit boundary (evaluation has its own, forward-only):

    step = make_train_step(model, optimizer, task="classify", l2=0.0, steps_per_call=k)   # jit-compiled
    params, state, opt_state, metrics = step(params, state, opt_state, batch, key)

    k == 1: batch = (x (n, ...), y (n, ...)),          key = one PRNG key (2,) uint32
    k > 1 : batch = (x (k, n, ...), y (k, n, ...)),    key = (k, 2) keys, one per step
    metrics = {"loss": (), "sums": {metric name: its batch sums}}   (a leading (k,) for k > 1; the
              loss excludes the l2 term; the sums are the task's metrics' ``batch_sums`` over the
              batch, to add up on the host and finalize: ``fcnn.metrics``), and for a task with
              an accuracy metric (classify) "accuracy": () too, the batch's accuracy

A task (``fcnn.tasks``: a name such as "classify", "segment", "denoise", or a ``Task``) says what
the outputs are trained for: its loss and its metrics. ``task=None`` is "classify", today's
softmax cross-entropy and accuracy; ``loss_fn`` given replaces the task's loss. ``evaluate``
adds the metrics' sums over the whole set, the last batch padded and masked, and finalizes once.

Two builders, one body: ``plain_train_step`` returns the step as a plain Python function (not
compiled; ``fcnn.parallel`` wraps it in ``pmap`` / sharded ``jit`` / ``shard_map``, and a user
may wrap it in their own ``jax.jit``), ``make_train_step`` returns ``jax.jit`` of it with the
carried buffers donated. ``make_eval_step`` is jit-compiled too.

With ``k > 1`` the k steps run inside one dispatch (``lax.scan``); small nets on a GPU are
launch-bound, so this is how to get under the per-dispatch floor. The step's key is
``fold_in(train_key, t)`` for global step t (``step_keys``), so a run depends only on its seed,
and k scanned steps equal k single steps. ``params``, ``state`` and ``opt_state`` are donated:
do not reuse the arrays passed in.

``dtype_policy`` says in which dtype the network computes (it is not ``lax.Precision``, which
``ops.conv2d(precision=...)`` takes): "f32", or "bf16", which casts the inputs and a copy of the
params to bfloat16 for the forward and backward pass while the master params, the optimizer
state, the logits fed to the loss and the loss itself stay float32 (mixed precision without loss
scaling, which bf16's 8-bit exponent does not need). ``precision=`` is its deprecated spelling.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fcnn import _checks, runtime, tasks
from fcnn import data as data_lib
from fcnn import metrics as metrics_lib
from fcnn.losses import l2_penalty
from fcnn.tasks import check_labels  # re-exported: fcnn.step.check_labels
from fcnn.runtime import (CPU_AMX_COMPILER_OPTIONS, CPU_COMPILER_OPTIONS, CPU_HEAP_OPTIONS,  # noqa: F401 - fcnn.step's names too
                           compiler_options)
from fcnn.types import Array, Layer, Params, State, check_key, check_layer

__all__ = ["DTYPE_POLICIES", "CPU_COMPILER_OPTIONS", "CPU_AMX_COMPILER_OPTIONS", "CPU_HEAP_OPTIONS", "compiler_options", "check_dtype_policy", "num_outputs", "check_labels", "resolve_task", "check_targets",
           "plain_train_step", "train_step_fn", "make_train_step", "make_eval_step", "evaluate", "predict",
           "step_keys"]

DTYPE_POLICIES = ("f32", "bf16")


def check_dtype_policy(dtype_policy: str = "f32", precision: Optional[str] = None) -> str:
    """The dtype policy to use; ``precision`` is its deprecated name (warns, and wins when given)."""
    if precision is not None:
        warnings.warn("precision= is deprecated here (it is the dtype policy, not lax.Precision); "
                      "use dtype_policy=", DeprecationWarning, stacklevel=3)
        return _checks.choice(precision, DTYPE_POLICIES, "precision")
    return _checks.choice(dtype_policy, DTYPE_POLICIES, "dtype_policy")


def _output_shape(model: Layer, params: Params, state: State, x_shape) -> tuple:
    """The model's output shape for one input shaped like ``x_shape`` past the batch axis (batch 1),
    by tracing only."""
    x = jax.ShapeDtypeStruct((1,) + tuple(x_shape[1:]), jnp.float32)
    return tuple(jax.eval_shape(lambda p, s, xx: model.apply(p, s, xx)[0], params, state, x).shape)


def num_outputs(model: Layer, params: Params, state: State, x_shape) -> int:
    """The size of the model's last output axis for inputs (n, *x_shape[1:]), by tracing only."""
    return int(_output_shape(model, params, state, x_shape)[-1])


def resolve_task(task=None, loss_fn: Optional[Callable] = None) -> tasks.Task:
    """The ``Task`` to train or evaluate: ``tasks.get_task(task)`` ("classify" when None), with its loss
    replaced by ``loss_fn(outputs, targets) -> scalar`` (a batch mean, every example alike: no
    ``loss_weight``) when that is given."""
    task = tasks.get_task("classify" if task is None else task)
    if loss_fn is not None:  # a loss of the user's: its examples count alike (no loss_weight)
        task = task._replace(loss=_checks.function(loss_fn, "loss_fn", hint="(logits, labels) -> scalar"),
                             loss_weight=None)
    return task


def check_targets(task: tasks.Task, model: Layer, params: Params, state: State, x, y, name: str = "y") -> None:
    """Targets ``y`` for inputs ``x`` checked on the host before any computation: one per input, and
    the task's rule against the model's output shape (``task.check_targets``; classify: ``check_labels``).
    Raises ``ValueError`` / ``TypeError`` naming ``name`` and the rule."""
    target_checker(task, model, params, state, np.shape(x))(x, y, name)


def target_checker(task: tasks.Task, model: Layer, params: Params, state: State, x_shape) -> Callable:
    """``check(x, y, name)``: ``check_targets`` for inputs shaped like ``x_shape`` past the batch axis,
    the model's output shape traced once (a batch source's every batch is checked so)."""
    out = _output_shape(model, params, state, x_shape)

    def check(x, y, name: str = "y") -> None:
        if task.name == "classify":
            if len(out) != 2:
                raise ValueError(f"{name}: task classify needs a model whose outputs are (n, classes); this one "
                                 f"gives {('n',) + tuple(out[1:])} (a dense task, task='segment', 'regress', ...?)")
            return check_labels(x, y, int(out[-1]), name)
        if len(y) != len(x):
            raise ValueError(f"{name} must hold one target per input: the inputs are {len(x)}, the targets {len(y)}")
        try:
            task.check_targets((len(x),) + tuple(out[1:]), y)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{name}: {e}") from None

    return check


def _batch_sums(task: tasks.Task, outputs, targets, mask=None) -> dict:
    """Every metric's ``batch_sums`` of one batch (mask None: every row real), keyed by metric name."""
    mask = jnp.ones(outputs.shape[:1], jnp.float32) if mask is None else mask
    return {m.name: m.batch_sums(outputs, targets, mask) for m in task.metrics}


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _restore_dtypes(new, old):
    """Cast every leaf of ``new`` to the dtype of the matching leaf of ``old``.

    Keeps the carried pytrees' dtypes fixed step to step (a schedule evaluated in
    float64 under ``jax_enable_x64`` must not promote float32 state).
    """
    return jax.tree.map(lambda n, o: jnp.asarray(n).astype(jnp.result_type(o)), new, old)


def _forward(model: Layer, params: Params, state: State, x: Array, key, train: bool, dtype_policy: str):
    """Model logits as float32, and the new model state in the old state's dtypes."""
    if dtype_policy == "bf16":
        params = _cast_floats(params, jnp.bfloat16)
        x = x.astype(jnp.bfloat16)
    logits, new_state = model.apply(params, state, x, key=key, train=train)
    return logits.astype(jnp.float32), _restore_dtypes(new_state, state)


def _non_empty(batch):
    """``batch`` if its x holds an example; refused while tracing (shapes are static) if not."""
    if jnp.shape(batch[0])[0]:
        return batch
    raise ValueError(f"the batch must hold at least one example (the loss is their mean), got x of shape "
                     f"{tuple(jnp.shape(batch[0]))}")


def _weighted_by_device_share(task: tasks.Task, y, grads, loss, axis_name: Optional[str]):
    """``(grads, loss)`` times this device's share of the global batch's loss terms (its
    ``task.loss_weight`` total over the devices' mean, 0 where all are 0), so that the ``pmean`` of
    per-device means is the mean over the global batch's terms when devices hold different numbers
    of them; unchanged without ``axis_name`` or a ``loss_weight``."""
    if axis_name is None or task.loss_weight is None:
        return grads, loss
    weight = jnp.sum(task.loss_weight(y))
    average = jax.lax.pmean(weight, axis_name)
    share = jnp.where(average > 0, weight / jnp.where(average > 0, average, 1), 0)
    return jax.tree.map(lambda g: g * share.astype(g.dtype), grads), loss * share


def step_keys(train_key, start: int, k: int = 1) -> np.ndarray:
    """Keys for global steps ``start .. start+k-1``: ``fold_in(train_key, t)``, on the host.

    Returns one key (2,) uint32 for ``k == 1`` and stacked keys (k, 2) otherwise. ``fit``
    makes a whole epoch's keys in one call (one dispatch), then slices them per step.
    """
    keys = jax.vmap(lambda t: jax.random.fold_in(train_key, t))(jnp.arange(start, start + k, dtype=jnp.uint32))
    keys = np.asarray(keys)
    return keys[0] if k == 1 else keys


def plain_train_step(
    model: Layer,
    optimizer: optax.GradientTransformation,
    loss_fn: Optional[Callable] = None,
    *,
    task=None,
    l2: float = 0.0,
    steps_per_call: int = 1,
    dtype_policy: str = "f32",
    augment: Optional[Callable] = None,
    axis_name: Optional[str] = None,
    unroll: int = 1,
    precision: Optional[str] = None,
) -> Callable:
    """The train step as a plain function, *not* jit-compiled; ``make_train_step`` jits it.

    With ``axis_name`` (the function then runs inside ``pmap`` / ``shard_map`` over that
    axis) the step key is folded with the device index, and the gradients, the metrics and
    the new model state are ``lax.pmean``-ed over the axis, so every device applies the
    same update (the metrics' sums are ``lax.psum``-ed: the global batch's sums); a task's
    ``loss_weight`` first weights each device's by its share (``_weighted_by_device_share``).
    ``fcnn.parallel`` builds its data-parallel steps from this function. Arguments as ``make_train_step``.
    """
    check_layer(model, "model")
    task = resolve_task(task, loss_fn)
    _checks.function(augment, "augment", optional=True, hint="(key, x) -> x")
    _checks.positive_int(steps_per_call, "steps_per_call")
    l2 = _checks.non_negative_float(l2, "l2")
    if axis_name is not None and (not isinstance(axis_name, str) or not axis_name):
        raise ValueError(f"axis_name must be None or a non-empty str, got {axis_name!r}")
    _checks.positive_int(unroll, "unroll", hint="scan iterations per loop body")
    dtype_policy = check_dtype_policy(dtype_policy, precision)

    def mean(tree):
        return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

    def objective(params, state, x, y, key):
        logits, new_state = _forward(model, params, state, x, key, True, dtype_policy)
        loss = task.loss(logits, y)
        total = loss + l2_penalty(params, l2) if l2 else loss
        return total, (loss, logits, new_state)

    def one_step(params, state, opt_state, batch, key):
        x, y = _non_empty(batch)
        check_key(key, "the train step")
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        if augment is not None:
            aug_key, key = jax.random.split(key)
            x = augment(aug_key, x)
        grads, (loss, logits, new_state) = jax.grad(objective, has_aux=True)(params, state, x, y, key)
        sums = _batch_sums(task, logits, y)
        grads, loss = _weighted_by_device_share(task, y, grads, loss, axis_name)
        grads = mean(grads)
        if axis_name is not None:
            new_state = _restore_dtypes(mean(new_state), state)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        new_opt_state = _restore_dtypes(new_opt_state, opt_state)
        total = sums if axis_name is None else jax.lax.psum(sums, axis_name)
        metrics = {"loss": mean(loss), "sums": total}
        if "accuracy" in total:  # classification's per-batch accuracy, as the step always returned it
            metrics["accuracy"] = total["accuracy"]["correct"] / total["accuracy"]["count"]
        return new_params, new_state, new_opt_state, metrics

    def many_steps(params, state, opt_state, batch, keys):
        check_key(keys, f"the train step (steps_per_call={steps_per_call})", steps=steps_per_call)

        def body(carry, inputs):
            p, s, o = carry
            b, key = inputs
            p, s, o, metrics = one_step(p, s, o, b, key)
            return (p, s, o), metrics

        (params, state, opt_state), metrics = jax.lax.scan(body, (params, state, opt_state), (batch, keys),
                                                           unroll=unroll)
        return params, state, opt_state, metrics

    return one_step if steps_per_call == 1 else many_steps


def train_step_fn(*args, **kwargs) -> Callable:
    """Deprecated name of ``plain_train_step`` (it did not say the step is not compiled)."""
    warnings.warn("fcnn train_step_fn is deprecated; use fcnn.step.plain_train_step", DeprecationWarning,
                  stacklevel=2)
    return plain_train_step(*args, **kwargs)


def make_train_step(
    model: Layer,
    optimizer: optax.GradientTransformation,
    loss_fn: Optional[Callable] = None,
    *,
    task=None,
    l2: float = 0.0,
    steps_per_call: int = 1,
    donate: bool = True,
    dtype_policy: str = "f32",
    augment: Optional[Callable] = None,
    unroll: int = 1,
    heap_limit: bool = True,
    precision: Optional[str] = None,
):
    """Build the **jit-compiled** train step (see the module docstring for its contract).

    Args:
      model: a ``Layer`` whose apply returns the task's outputs (classify: logits (n, k)).
      optimizer: an optax transformation (``fcnn.optim.make_optimizer``).
      loss_fn: ``loss_fn(outputs, targets) -> scalar`` batch mean (None: the task's loss).
      task: a task name of ``fcnn.tasks.TASKS`` or a ``Task`` (None: "classify"); its metrics'
        sums over each batch are the step's ``metrics["sums"]``.
      l2: coefficient of ``l2_penalty`` added to the objective (kernels only).
      steps_per_call: k >= 1 steps per dispatch, scanned over a stacked chunk of k batches.
      donate: donate the params / state / opt_state buffers to the outputs.
      dtype_policy: "f32" or "bf16" (see the module docstring); ``precision`` is its
        deprecated name.
      augment: optional ``augment(key, x) -> x`` applied to each training batch inside the
        step (on device); the step key is then split into (augment key, model key).
      unroll: with k > 1, scan iterations per loop body (``lax.scan(unroll=...)``); ``k``
        unrolls fully: one straight kernel sequence instead of a device loop whose trip
        test syncs with the host every step (faster for launch-bound nets on a GPU, longer
        compile; see docs/benchmarks.md).
      heap_limit: on CPU, compile with XLA's per-heap limit (``fcnn.runtime.compiler_options``):
        False gives XLA's one block of temporaries, and no compile-time warning for arrays over
        the limit (wide nets at batch 64 and more).

    Returns:
      ``step(params, state, opt_state, batch, key) -> (params, state, opt_state, metrics)``; a batch
      of 0 examples is refused (ValueError) while the step is traced.

    On CPU it compiles with ``compiler_options()`` and calls ``fcnn.runtime.keep_cpu_memory()``:
    glibc then keeps the step's freed temporaries for the next call instead of handing out new
    pages (ResNet-18 b16 bf16 8-15% faster). That setting is the process's; ``FCNN_KEEP_CPU_MEMORY=0`` in
    the environment leaves glibc's defaults.
    """
    _checks.boolean(donate, "donate")
    options = compiler_options(heap_limit=heap_limit)  # checks heap_limit
    runtime.keep_cpu_memory_by_default()
    fn = plain_train_step(model, optimizer, loss_fn, task=task, l2=l2, steps_per_call=steps_per_call,
                          dtype_policy=check_dtype_policy(dtype_policy, precision), augment=augment, unroll=unroll)
    return jax.jit(fn, donate_argnums=(0, 1, 2) if donate else (), compiler_options=options)


def make_eval_step(model: Layer, loss_fn: Optional[Callable] = None, *, task=None, dtype_policy: str = "f32",
                   precision: Optional[str] = None):
    """**Jit-compiled** ``eval_step(params, state, x, y, mask) -> (loss_sum, sums)``.

    ``mask`` (n,) is 1.0 for real rows and 0.0 for padding, so a padded last batch keeps the
    compiled shape. Per-example losses come from applying the task's loss (or ``loss_fn``) to
    one row at a time (``vmap``), so any batch-mean loss works; ``loss_sum`` adds them over the
    real rows, each times the task's ``loss_weight`` where it has one (segment with an
    ignore_index: the example's kept pixels), so the set's loss is ``loss_sum`` over the weights'
    total. ``sums`` holds the task's metrics' batch sums over the real rows (``{metric name:
    sums}``, to ``metrics.add_sums``).
    """
    task = resolve_task(task, loss_fn)
    dtype_policy = check_dtype_policy(dtype_policy, precision)

    def eval_step(params, state, x, y, mask):
        logits, _ = _forward(model, params, state, x, None, False, dtype_policy)
        per_example = jax.vmap(lambda l, t: task.loss(l[None], t[None]))(logits, y)
        weight = mask if task.loss_weight is None else mask * task.loss_weight(y)
        return jnp.sum(per_example * weight), _batch_sums(task, logits, y, mask)

    return jax.jit(eval_step, compiler_options=compiler_options(heap_limit=False))


def evaluate(
    model: Layer,
    params: Params,
    state: State,
    x,
    y,
    batch_size: int,
    *,
    task=None,
    loss_fn: Optional[Callable] = None,
    dtype_policy: str = "f32",
    eval_step=None,
    precision: Optional[str] = None,
) -> dict:
    """Mean loss and the task's metrics over ``(x, y)``, every example counted exactly once (the
    loss of a task with a ``loss_weight``, segment with an ignore_index: the mean over every kept
    pixel of the set, as one batch of the whole set would give).

    The metrics come from sums over the whole set (``fcnn.metrics``): the last batch is padded
    and its padding rows masked, so the values are the full-set values whatever ``batch_size``.

    Args:
      x: (n, ...) inputs; y: (n, ...) targets (classify: (n,) labels or (n, k) one-hot).
      batch_size: rows per compiled batch (``fcnn.data.eval_batches``), so one compilation
        serves any n.
      task: a task name or ``Task`` (None: "classify"); ``loss_fn`` replaces its loss.
      eval_step: a ``make_eval_step`` result for the same task to reuse (avoids recompiling).

    Returns:
      ``{"loss": float, <each of task.metric_names>: float, "n": int}`` (classify: ``accuracy``);
      all nan (with a ``RuntimeWarning``) when an input holds nan or inf.

    Raises:
      ValueError, TypeError: targets that do not fit the inputs, the model's outputs or the task
        (``check_targets``), before any computation.
    """
    task = resolve_task(task, loss_fn)
    _checks.positive_int(batch_size, "batch_size")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must hold the same non-zero number of examples, got {len(x)} and {len(y)}")
    check_targets(task, model, params, state, x, y)
    bad = int(np.sum(~np.isfinite(x).reshape(len(x), -1).all(axis=1))) if np.issubdtype(x.dtype, np.floating) else 0
    if eval_step is None:
        eval_step = make_eval_step(model, task=task, dtype_policy=check_dtype_policy(dtype_policy, precision))
    batches = [eval_step(params, state, xb, yb, mask) for xb, yb, mask in data_lib.eval_batches(x, y, batch_size)]
    loss_sum, totals = 0.0, None  # added on the host, in float64 / int64 (fcnn.metrics.add_sums)
    for l, sums in jax.device_get(batches):
        loss_sum, totals = loss_sum + float(l), metrics_lib.add_sums(totals, sums)
    if bad:  # a metric over images the model could not see is no metric
        warnings.warn(f"x holds {bad} of {len(x)} examples with nan or inf values: loss and "
                      f"{', '.join(task.metric_names)} are nan", RuntimeWarning, stacklevel=2)
        return {"loss": float("nan"), **{k: float("nan") for k in task.metric_names}, "n": len(x)}
    values = metrics_lib.finalize_all(task.metrics, totals)
    weight = len(x) if task.loss_weight is None else float(np.sum(np.asarray(task.loss_weight(y), np.float64)))
    return {"loss": loss_sum / max(weight, 1.0), **{k: values[k] for k in task.metric_names}, "n": len(x)}


_PROBABILITIES = ("classify", "segment")  # tasks whose predictions are softmax probabilities


def predict(model: Layer, params: Params, state: State, x, *, task=None, dtype_policy: str = "f32",
            batch_size: Optional[int] = None, precision: Optional[str] = None) -> Array:
    """The model's predictions in eval mode: for "classify" and "segment" (and task None) the class
    probabilities ``softmax(model(x))`` over the last axis (x (n, h, w, c) -> (n, k), or
    (n, h, w, k) per pixel); for other tasks the outputs themselves.

    ``batch_size``: None runs all n rows in one call (not compiled, as ``model.apply``);
    an int runs one compiled forward over fixed-shape batches (``fcnn.data.eval_batches``,
    the last padded and its padding rows dropped), for test sets too large for one call.
    """
    dtype_policy = check_dtype_policy(dtype_policy, precision)
    softmax = (task.name if isinstance(task, tasks.Task) else _checks.choice(
        "classify" if task is None else task, sorted(tasks.TASKS), "task")) in _PROBABILITIES

    def probs(params, state, xb):
        logits, _ = _forward(model, params, state, jnp.asarray(xb), None, False, dtype_policy)
        return jax.nn.softmax(logits, axis=-1) if softmax else logits

    if batch_size is None:
        return probs(params, state, x)
    _checks.positive_int(batch_size, "batch_size")
    fn = jax.jit(probs, compiler_options=compiler_options(heap_limit=False))
    out = [fn(params, state, xb)[: int(w.sum())] for xb, _, w in data_lib.eval_batches(x, None, batch_size)]
    if out:
        return jnp.concatenate(out)
    empty = jax.eval_shape(probs, params, state, jax.ShapeDtypeStruct(np.shape(x), jnp.float32))  # 0 rows
    return jnp.zeros(empty.shape, empty.dtype)
