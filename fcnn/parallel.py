"""Data parallelism: the single-device step of ``fcnn.step`` placed on devices (pmap, jit
sharding, shard_map), the placement ``fit`` uses (``Plan``), and multi-process start-up.
Per-example gradients, clipping and DP-SGD are in ``fcnn.per_example``.

Data parallel train steps, all with the contract of ``step.make_train_step``
(``step(params, state, opt_state, batch, key) -> (params, state, opt_state, metrics)``):

    make_pmap_train_step      pmap over local devices; params/state/opt_state *replicated*
                              with a leading device axis (``replicate``/``unreplicate``), batch
                              (d, n/d, ...) (``shard_batch``); grads ``lax.pmean``-ed.
    make_sharded_train_step   jit with ``NamedSharding``: batch sharded on the mesh axis "data",
                              everything else replicated; XLA inserts the all-reduce. Global
                              arrays in, so a BatchNorm *without* ``axis_name`` already sees the
                              global batch.
    make_shard_map_train_step ``jax.shard_map`` over the mesh axis "data" with an explicit
                              ``lax.pmean`` of grads; params replicated, batch (n, ...) sharded.

With equal per-device batches the mean of per-device mean losses is the global mean loss,
so all three equal the single-device step on the global batch (up to float rounding). For a
BatchNorm to use global-batch statistics under pmap / shard_map build it with
``BatchNorm(axis_name=...)`` naming the step's axis ("batch" for pmap, "data" for shard_map);
under ``make_sharded_train_step`` build it without ``axis_name``. The BatchNorm running
statistics returned are the device mean (identical on every device when ``axis_name`` is set).
The step key is folded with the device index, so each device draws its own dropout mask.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fcnn import _checks
from fcnn.per_example import (clip_per_example, dp_sgd_grad, model_loss, per_example_grad_norms,
                              per_example_grads)
from fcnn.step import make_train_step, plain_train_step
from fcnn.types import Layer

__all__ = [
    "replicate",
    "unreplicate",
    "shard_batch",
    "make_mesh",
    "make_pmap_train_step",
    "make_sharded_train_step",
    "make_shard_map_train_step",
    "batch_sharding",
    "data_parallel_plan",
    "check_parallel",
    "check_devices_for_mode",
    "Plan",
    "PARALLEL_MODES",
    "initialize_distributed",
    # fcnn.per_example's names, public here before that module existed
    "model_loss", "per_example_grads", "per_example_grad_norms", "clip_per_example", "dp_sgd_grad",
]

DATA_AXIS = "data"


# --------------------------------------------------------------------------- helpers


def _check_devices(n_devices, name="n_devices") -> int:
    return _checks.positive_int(n_devices, name)


def replicate(tree, n_devices: Optional[int] = None):
    """Stack ``n_devices`` (default: local device count) copies of every leaf: (d, *leaf.shape)."""
    d = jax.local_device_count() if n_devices is None else _check_devices(n_devices)
    return jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a), (d,) + jnp.shape(a)), tree)


def unreplicate(tree):
    """The first device's copy of every leaf of a replicated pytree."""
    return jax.tree.map(lambda a: a[0], tree)


def shard_batch(batch, n_devices: int):
    """Reshape every leaf (N, ...) of ``batch`` to (n_devices, N / n_devices, ...) (host side).

    Raises ``ValueError`` if a leaf's global batch N is not divisible by ``n_devices`` or the
    leaves disagree on N.
    """
    d = _check_devices(n_devices)
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch must have at least one array")
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"batch arrays must share a leading batch axis, got leading sizes {sorted(map(str, sizes))}")
    n = sizes.pop()
    if n % d:
        raise ValueError(f"global batch size {n} is not divisible by n_devices={d}")
    return jax.tree.map(lambda a: np.reshape(np.asarray(a), (d, n // d) + np.shape(a)[1:]), batch)


def make_mesh(n_devices: Optional[int] = None, devices=None) -> Mesh:
    """A 1-D ``Mesh`` with axis "data" over the first ``n_devices`` of ``devices`` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    d = len(devices) if n_devices is None else _check_devices(n_devices)
    if d > len(devices):
        raise ValueError(f"n_devices={d} exceeds the {len(devices)} available devices")
    return Mesh(np.array(devices[:d]), (DATA_AXIS,))


def _check_model_opt(model, optimizer):
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a Layer, got {type(model).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")


def _check_batch(batch):
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(f"batch must be a pair (x, y), got {type(batch).__name__}")
    return batch


# --------------------------------------------------------------------------- train steps
#
# Every step below is ``fcnn.step.plain_train_step`` (the single-device step) placed on
# devices three ways; ``step_opts`` are its keyword options (task, l2, dtype_policy, augment,
# steps_per_call). The metrics' sums come back summed over the devices: the global batch's. With steps_per_call k > 1 the batch gains a leading step axis k
# (after the device axis for pmap) and ``key`` is (k, 2), one key per step.


def make_pmap_train_step(model: Layer, optimizer: optax.GradientTransformation,
                         loss_fn: Optional[Callable] = None, *, axis_name: str = "batch",
                         devices=None, donate: bool = False, **step_opts):
    """Data-parallel train step with ``jax.pmap`` over local devices.

    ``step(params, state, opt_state, batch, key)``: params / state / opt_state replicated
    (d, ...) (``replicate``), batch = (x (d, n/d, ...), y (d, n/d)) (``shard_batch``), key one
    PRNG key shared by all devices (folded with the device index inside). Returns replicated
    params / state / opt_state and metrics (d,) (equal on every device).

    Args:
      axis_name: the pmap axis; grads and metrics are ``lax.pmean``-ed over it, and a
        ``BatchNorm(axis_name=axis_name)`` in ``model`` uses cross-device statistics.
      devices: devices to map over (default: all local devices).
      donate: donate the replicated params / state / opt_state buffers.
    """
    _check_model_opt(model, optimizer)
    if not isinstance(axis_name, str) or not axis_name:
        raise ValueError(f"axis_name must be a non-empty str, got {axis_name!r}")
    devs = list(jax.local_devices() if devices is None else devices)
    d = len(devs)
    fn = jax.pmap(plain_train_step(model, optimizer, loss_fn, axis_name=axis_name, **step_opts), axis_name=axis_name,
                  in_axes=(0, 0, 0, 0, None), devices=devs, donate_argnums=(0, 1, 2) if donate else ())

    def step(params, state, opt_state, batch, key):
        x, y = _check_batch(batch)
        for name, a in (("batch x", x), ("batch y", y)):
            if np.ndim(a) < 2 or np.shape(a)[0] != d:
                raise ValueError(f"{name} must have a leading device axis of size {d} (the device count), "
                                 f"got shape {np.shape(a)}; use shard_batch(batch, {d})")
        lead = {np.shape(a)[0] for a in jax.tree.leaves(params)}
        if lead and lead != {d}:
            raise ValueError(f"params must be replicated with a leading device axis of size {d}, "
                             f"got leading sizes {sorted(lead)}; use replicate(params, {d})")
        return fn(params, state, opt_state, (x, y), key)

    step.n_devices = d
    return step


def _batch_axis(step_opts) -> int:
    return 0 if step_opts.get("steps_per_call", 1) == 1 else 1


def _check_divisible(batch, mesh, axis=0):
    x, y = _check_batch(batch)
    d = mesh.shape[DATA_AXIS]
    for name, a in (("batch x", x), ("batch y", y)):
        if np.ndim(a) <= axis or np.shape(a)[axis] % d:
            raise ValueError(f"{name} global batch size {np.shape(a)[axis:axis + 1]} must be divisible by the {d} "
                             f"devices of mesh axis {DATA_AXIS!r}")
    return x, y


def _check_mesh(mesh):
    if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must be a jax.sharding.Mesh with an axis named {DATA_AXIS!r} (make_mesh), got {mesh!r}")


def batch_sharding(mesh: Mesh, steps_per_call: int = 1) -> NamedSharding:
    """Sharding of a (global) batch array: split on "data" along the example axis."""
    return NamedSharding(mesh, P(DATA_AXIS) if steps_per_call == 1 else P(None, DATA_AXIS))


def make_sharded_train_step(model: Layer, optimizer: optax.GradientTransformation, mesh: Mesh,
                            loss_fn: Optional[Callable] = None, *, donate: bool = False, **step_opts):
    """Data-parallel train step by ``jit`` sharding: batch split on "data", the rest replicated.

    ``step(params, state, opt_state, batch, key)`` takes *global* arrays (x (N, ...), y (N,)),
    N divisible by the mesh's "data" size, and returns replicated global arrays. The model
    is written for one device (a BatchNorm must not set ``axis_name``): this is the
    single-device step compiled for the mesh, and XLA inserts the all-reduces.
    """
    _check_model_opt(model, optimizer)
    _check_mesh(mesh)
    rep = NamedSharding(mesh, P())
    data = batch_sharding(mesh, step_opts.get("steps_per_call", 1))
    fn = jax.jit(plain_train_step(model, optimizer, loss_fn, **step_opts), donate_argnums=(0, 1, 2) if donate else (),
                 in_shardings=(rep, rep, rep, (data, data), rep), out_shardings=(rep, rep, rep, rep))
    axis = _batch_axis(step_opts)

    def step(params, state, opt_state, batch, key):
        return fn(params, state, opt_state, _check_divisible(batch, mesh, axis), key)

    return step


def make_shard_map_train_step(model: Layer, optimizer: optax.GradientTransformation, mesh: Mesh,
                              loss_fn: Optional[Callable] = None, **step_opts):
    """Data-parallel train step with ``jax.shard_map`` over mesh axis "data" and ``lax.pmean``.

    Same calling convention as ``make_sharded_train_step`` (global arrays). Inside, each
    device sees its (N/d, ...) shard; a ``BatchNorm(axis_name="data")`` uses global
    statistics. ``check_vma=False``: gradients are computed per device and averaged
    explicitly (with ``check_vma=True`` the gradient of replicated params is already summed).
    """
    _check_model_opt(model, optimizer)
    _check_mesh(mesh)
    local = plain_train_step(model, optimizer, loss_fn, axis_name=DATA_AXIS, **step_opts)
    axis = _batch_axis(step_opts)
    batch_spec = P(DATA_AXIS) if axis == 0 else P(None, DATA_AXIS)
    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), batch_spec, P()),
                           out_specs=(P(), P(), P(), P()), check_vma=False)
    fn = jax.jit(mapped)

    def step(params, state, opt_state, batch, key):
        return fn(params, state, opt_state, _check_divisible(batch, mesh, axis), key)

    return step


# --------------------------------------------------------------------------- fit's placement

PARALLEL_MODES = ("none", "pmap", "sharding")
PMAP_AXIS = "batch"


class Plan(NamedTuple):
    """How ``fit`` lays a run out on devices (``data_parallel_plan``).

    ``put((params, state, opt_state))`` places the carried trees for the step, ``get(tree)``
    returns one global copy (for checkpoints and evaluation), ``batch(x, y, k)`` turns host
    arrays (n, ...) (k == 1) or (k, n, ...) into the step's batch, ``make_step(k)`` builds the
    donated step for k steps per call, and ``metrics(m)`` returns one copy of its metrics.
    """

    mode: str
    n_devices: int
    put: Callable
    get: Callable
    batch: Callable
    make_step: Callable
    metrics: Callable


def _identity(tree):
    return tree


def _available(mode: str):
    return jax.local_devices() if mode == "pmap" else jax.devices()


def check_devices_for_mode(mode: str, n_devices: Optional[int]) -> None:
    """The checks of a (parallel mode, device count) pair that need no devices: the mode is one of
    ``PARALLEL_MODES``, the count a positive int or None, and "none" means one device."""
    _checks.choice(mode, PARALLEL_MODES, "parallel")
    _checks.optional_positive_int(n_devices, "devices", hint="all devices")
    if mode == "none" and n_devices not in (None, 1):
        raise ValueError(f"devices={n_devices} needs parallel 'pmap' or 'sharding' (parallel='none' uses one device)")


def check_parallel(mode: str, n_devices: Optional[int], batch_size: int) -> int:
    """Validate a (parallel mode, device count, global batch size) choice; return the device count."""
    check_devices_for_mode(mode, n_devices)
    if mode == "none":
        return 1
    available = _available(mode)
    d = len(available) if n_devices is None else n_devices
    if d > len(available):
        raise ValueError(f"devices={d} exceeds the {len(available)} available {jax.default_backend()} devices")
    if batch_size % d:
        raise ValueError(f"batch_size {batch_size} must be divisible by the {d} devices of parallel={mode!r}")
    return d


def data_parallel_plan(mode: str, model: Layer, optimizer: optax.GradientTransformation,
                       loss_fn: Optional[Callable] = None, *, n_devices: Optional[int] = None,
                       batch_size: int, **step_opts) -> Plan:
    """The placement ``fit`` uses for ``TrainConfig.parallel``.

    "none": one device, ``train.make_train_step``. "sharding": ``make_sharded_train_step`` on
    ``make_mesh(n_devices)`` (params replicated, the global batch split). "pmap":
    ``make_pmap_train_step`` over the first ``n_devices`` local devices with axis ``PMAP_AXIS``
    (build BatchNorms with ``axis_name=PMAP_AXIS`` for global statistics). ``n_devices``
    None means all devices; ``batch_size`` must be divisible by the device count.
    """
    d = check_parallel(mode, n_devices, batch_size)
    if mode == "none":
        return Plan(mode, 1, _identity, _identity, lambda x, y, k: (x, y),
                    lambda k: make_train_step(model, optimizer, loss_fn, steps_per_call=k, **step_opts), _identity)
    available = _available(mode)
    if mode == "sharding":
        mesh = make_mesh(d, available)
        rep = NamedSharding(mesh, P())
        return Plan(mode, d, lambda tree: jax.device_put(tree, rep), _identity, lambda x, y, k: (x, y),
                    lambda k: make_sharded_train_step(model, optimizer, mesh, loss_fn, donate=True, steps_per_call=k,
                                                      **step_opts), _identity)
    devs = available[:d]

    def batch(x, y, k):
        if k == 1:
            return shard_batch((x, y), d)
        # (k, n, ...) -> (d, k, n / d, ...): device axis first, each device its rows of every step
        return tuple(np.swapaxes(np.reshape(a, (k, d, -1) + np.shape(a)[2:]), 0, 1) for a in (x, y))

    return Plan(mode, d, lambda tree: replicate(tree, d), unreplicate, batch,
                lambda k: make_pmap_train_step(model, optimizer, loss_fn, axis_name=PMAP_AXIS, devices=devs,
                                               donate=True, steps_per_call=k, **step_opts), unreplicate)


# --------------------------------------------------------------------------- multi-process


def initialize_distributed(coordinator: str, num_processes: int, process_id: int, *,
                           local_device_ids=None, initialization_timeout: int = 300) -> None:
    """Join a multi-process JAX job: a thin wrapper over ``jax.distributed.initialize``.

    Call once per process before any other JAX call. ``coordinator`` is "host:port" of
    process 0. Afterwards ``jax.devices()`` lists every process's devices and the sharded
    steps above run over all of them (feed each process's rows with
    ``jax.make_array_from_process_local_data``).
    """
    if not isinstance(coordinator, str) or ":" not in coordinator:
        raise ValueError(f"coordinator must be 'host:port', got {coordinator!r}")
    num_processes = _check_devices(num_processes, "num_processes")
    _checks.int_in_range(process_id, "process_id", 0, num_processes)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=int(process_id), local_device_ids=local_device_ids,
                               initialization_timeout=initialization_timeout)
