"""A run: its definition (``TrainConfig``) and its directory, written by ``fit`` and read back here.

    <run_dir>/config.json        TrainConfig fields + fcnn_version   (write_config / read_config)
    <run_dir>/ckpt_<step>.npz    {"params", "state", "opt_state", "key"} + metadata (checkpoint_tree)
    <run_dir>/metrics.jsonl      one line per epoch (fcnn.report)
    <run_dir>/curves.png         loss and accuracy per epoch (fcnn.report)

A run depends only on its config: ``split_seed(seed)`` gives the key that initialises the
params and the key every training step folds its step number into, ``init_run`` builds the
initial trees from them, and ``build_model`` / ``load_data`` rebuild the model and the data a
config names. ``load_run(run_dir)`` brings a finished or interrupted run back for evaluation
and pictures: params and model state only, without rebuilding the optimizer.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import re
import tempfile
import warnings
from typing import Any, Callable, NamedTuple, Optional

import jax
import optax

from fcnn import _checks, checkpoint, tasks
from fcnn._version import __version__
from fcnn.datafiles import resolved_data_dir
from fcnn.losses import softmax_cross_entropy
from fcnn.optim import make_optimizer
from fcnn.parallel import PMAP_AXIS, check_devices_for_mode
from fcnn.report import write_json
from fcnn.step import DTYPE_POLICIES
from fcnn.types import Layer, Params, State

__all__ = ["TrainConfig", "TASK_DEFAULTS", "RESUME_MAY_CHANGE", "CONFIG_FILE", "make_loss_fn", "make_task", "make_run_optimizer", "split_seed",
           "init_run", "checkpoint_tree", "write_config", "read_config", "check_model_name", "build_model",
           "load_data", "load_checkpoint", "Run", "load_run", "free_run_dir", "check_new_run_dir",
           "check_writable"]

# config fields a resumed run may change (data_dir is where the files are, not what they are: a moved folder)
RESUME_MAY_CHANGE = ("epochs", "parallel", "devices", "data_dir")
CONFIG_FILE = "config.json"
_RENAMED = {"precision": "dtype_policy"}  # config.json fields of earlier versions -> today's names
# every file fit writes into a run directory (temp files of interrupted writes included)
_RUN_FILE = re.compile(r"^(config\.json|metrics\.jsonl|curves\.png|ckpt_\d{8,}\.npz|\.tmp-ckpt_.*\.npz|events\.out\.tfevents\..*|"
                       r"(config\.json|metrics\.jsonl|curves\.png)\.tmp(\.png)?)$")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved as ``config.json`` and in every checkpoint.

    ``model``, ``dataset``, ``data_dir``, ``impl`` and ``pool_impl`` are recorded for
    rebuilding the run (``fcnn eval``); ``fit`` itself takes the model and data built
    from them. ``checkpoint_every`` is in steps (None: at each epoch end only).
    ``dtype_policy``: "f32" or "bf16" (bf16 forward and backward, f32 master params and loss;
    ``fcnn.step``); written ``precision`` before, which ``from_dict`` still reads.
    ``parallel``: "none" (one device), "pmap" or "sharding" (data parallel over ``devices``
    devices, default all; ``fcnn.parallel.data_parallel_plan``); checkpoints hold one copy
    either way, so a run may resume under another mode.
    ``augment_shift``: training images are translated by up to this many pixels
    (``fcnn.data.augment(crop_padding=...)``: pad with 0 and crop, on device; 0: none). The
    defaults are the tuned ``fcnn train`` job (LeNet-5 on digits, >= 98% test accuracy).
    ``task``: what the model is trained for (``fcnn.tasks.TASKS``; the data a config names comes
    with that task's targets, ``fcnn.dense_data``); a task other than "classify" takes no
    ``label_smoothing`` and no ``augment_shift`` (a shifted input would no longer fit its dense
    target). ``TrainConfig.for_task(task, **fields)`` starts from the task's tuned job (``TASK_DEFAULTS``).
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
    dtype_policy: str = "f32"
    augment_shift: int = 3
    seed: int = 0
    steps_per_call: int = 1
    parallel: str = "none"
    devices: Optional[int] = None
    checkpoint_every: Optional[int] = None
    keep: int = 3
    eval_batch_size: int = 512
    task: str = "classify"

    def __post_init__(self):
        _checks.choice(self.task, sorted(tasks.TASKS), "task")
        for name, v in (("label_smoothing", self.label_smoothing), ("augment_shift", self.augment_shift)):
            if self.task != "classify" and v:
                raise ValueError(f"{name}={v} applies to task 'classify' only; task {self.task!r} needs {name}=0")
        for name in ("model", "dataset", "impl", "pool_impl"):  # names, checked against their lists when used
            _checks.string(getattr(self, name), name)
        _checks.string(self.data_dir, "data_dir", optional=True)
        for name in ("epochs", "batch_size", "steps_per_call", "keep", "eval_batch_size"):
            _checks.positive_int(getattr(self, name), name)
        _checks.optional_positive_int(self.checkpoint_every, "checkpoint_every", hint="steps")
        _checks.non_negative_int(self.augment_shift, "augment_shift", hint="pixels")
        _checks.int_in_range(self.seed, "seed", 0, 2 ** 32)  # the epoch order's and PRNGKey's range
        _checks.non_negative_float(self.l2, "l2")
        _checks.float_in_range(self.label_smoothing, "label_smoothing", 0.0, 1.0)
        _checks.choice(self.dtype_policy, DTYPE_POLICIES, "dtype_policy")
        check_devices_for_mode(self.parallel, self.devices)
        make_optimizer(self.optimizer, self.learning_rate, momentum=self.momentum, schedule=self.schedule,
                       total_steps=1, weight_decay=self.weight_decay)  # validates those fields

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def for_task(cls, task: str, **fields) -> "TrainConfig":
        """The config of ``task``'s tuned job (``TASK_DEFAULTS[task]``) with ``fields`` given on top."""
        _checks.choice(task, sorted(tasks.TASKS), "task")
        return cls(**{**TASK_DEFAULTS.get(task, {}), "task": task, **fields})

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config a dict (``config.json``, a checkpoint's metadata) describes.

        Fields renamed since an earlier version (``precision`` -> ``dtype_policy``) are read
        under their new name with a ``DeprecationWarning``.
        """
        d = dict(d)
        for old, new in _RENAMED.items():
            if old in d:
                warnings.warn(f"config field {old!r} is now {new!r}", DeprecationWarning, stacklevel=2)
                d.setdefault(new, d.pop(old))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config has unknown fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)


# each task's tuned job on the digits (TrainConfig.for_task, fcnn train --task); other fields: TrainConfig's
TASK_DEFAULTS = {
    "segment": dict(model="unet", augment_shift=0, epochs=20, batch_size=32),
    "denoise": dict(model="unet", augment_shift=0, epochs=6, batch_size=32),  # 20.4 dB by epoch 5 (measured)
    "reconstruct": dict(model="unet", augment_shift=0, epochs=10, batch_size=32),
    "regress": dict(model="lenet5", augment_shift=0, epochs=10),
}


def make_loss_fn(label_smoothing: float = 0.0) -> Callable:
    """``softmax_cross_entropy`` with the given label smoothing."""
    if not label_smoothing:
        return softmax_cross_entropy
    return functools.partial(softmax_cross_entropy, label_smoothing=float(label_smoothing))


def make_task(config: TrainConfig, num_outputs: int) -> tasks.Task:
    """The ``Task`` a config names for a model with ``num_outputs`` outputs on its last axis:
    classify with ``make_loss_fn(label_smoothing)`` as its loss, segment over ``num_outputs`` classes."""
    if config.task == "classify":
        return tasks.classify()._replace(loss=make_loss_fn(config.label_smoothing))
    if config.task == "segment":
        return tasks.get_task("segment", num_classes=num_outputs)
    return tasks.get_task(config.task)


def make_run_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax optimizer a config names, its schedule spread over ``total_steps``."""
    return make_optimizer(config.optimizer, config.learning_rate, momentum=config.momentum,
                          schedule=config.schedule, total_steps=total_steps, weight_decay=config.weight_decay)


def split_seed(seed: int):
    """``(init_key, train_key)``: the key that draws the initial params, and the key each train
    step folds its global step number into (``fcnn.step.step_keys``)."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(_checks.non_negative_int(seed, "seed")))
    return init_key, train_key


def init_run(model: Layer, config: TrainConfig, in_shape, optimizer: Optional[optax.GradientTransformation]):
    """A run's starting point: ``(params, state, opt_state, train_key)``.

    ``in_shape``: the model's input shape (batch, ...); ``optimizer`` None gives ``opt_state``
    None (for loading params without an optimizer).
    """
    init_key, train_key = split_seed(config.seed)
    _, params, state = model.init(init_key, tuple(in_shape))
    # jitted: one compile for the whole state instead of one eager zeros_like per parameter shape
    # (adam: LeNet-5 0.43 -> 0.24 s, ResNet-18 1.0 -> 0.47 s in a fresh process; perf_notes item 49)
    return params, state, None if optimizer is None else jax.jit(optimizer.init)(params), train_key


def checkpoint_tree(params: Params, state: State, opt_state: Any, train_key) -> dict:
    """What a run's checkpoint holds."""
    return {"params": params, "state": state, "opt_state": opt_state, "key": train_key}


def write_config(run_dir: str, config: TrainConfig) -> None:
    """``run_dir/config.json``: the config's fields and the fcnn version (atomic write)."""
    write_json(os.path.join(run_dir, CONFIG_FILE), dict(config.to_dict(), fcnn_version=__version__))


def read_config(run_dir: str) -> TrainConfig:
    """The ``TrainConfig`` of a run directory; errors name the file."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"run directory {run_dir!r} has no config.json (is it a directory written by fcnn train?)")
    with open(path, encoding="utf-8") as f:
        try:
            d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # JSON is UTF-8: other bytes are no config
            raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object of TrainConfig fields, got {type(d).__name__}")
    d.pop("fcnn_version", None)
    try:
        return TrainConfig.from_dict(d)
    except (TypeError, ValueError) as e:  # a field that breaks its rule, an unknown field: name the file
        raise (TypeError if isinstance(e, TypeError) else ValueError)(f"{path}: {e}") from None


def check_model_name(name: str) -> None:
    from fcnn import models

    if name not in models.MODELS:
        raise ValueError(f"--model must be one of {', '.join(sorted(models.MODELS))}; got {name!r}")


def build_model(config: TrainConfig, num_classes: int) -> Layer:
    """The ``Layer`` a config names: ``fcnn.models.get_model`` with its impl choices."""
    from fcnn import models

    check_model_name(config.model)
    opts = dict(num_classes=num_classes, impl=config.impl, pool_impl=config.pool_impl)
    if config.parallel == "pmap" and "bn_axis_name" in inspect.signature(models.MODELS[config.model][0]).parameters:
        opts["bn_axis_name"] = PMAP_AXIS  # BatchNorm statistics over the global batch, not each device's
    return models.get_model(config.model, **opts)


def load_data(config: TrainConfig):
    """The ``fcnn.data.Dataset`` a config names with its task's targets (``fcnn.dense_data.load``; read
    from ``config.data_dir`` where file-based)."""
    from fcnn import data, dense_data

    _checks.choice(config.dataset, data.DATASETS, "dataset")  # named as the config field / --dataset
    return dense_data.load(config.task, config.dataset, data_dir=config.data_dir)


def load_checkpoint(model: Layer, config: TrainConfig, run_dir: str, in_shape):
    """Latest checkpoint of a run: ``(step, params, state)``; no optimizer is built.

    Args:
      in_shape: shape of the model's inputs (n, h, w, c); only (h, w, c) matters.
    """
    template = dict(zip(("params", "state"), init_run(model, config, (1,) + tuple(in_shape[1:]), None)))
    template = jax.eval_shape(lambda: template)
    restored = checkpoint.load_latest(run_dir, like=template, subtrees=True)
    if restored is None:
        raise FileNotFoundError(f"run_dir {run_dir!r} holds no checkpoint")
    step, tree, _ = restored
    return step, tree["params"], tree["state"]


class Run(NamedTuple):
    """A run brought back from its directory (``load_run``)."""

    config: TrainConfig
    dataset: Any  # fcnn.data.Dataset
    model: Layer
    params: Params
    state: State
    step: int  # the global step of the checkpoint loaded


def load_run(run_dir: str, data_dir: Optional[str] = None) -> Run:
    """Rebuild a run from its directory: config, dataset, model and the latest checkpoint's params.
    ``data_dir``: read the dataset from there instead of the recorded folder (the files moved)."""
    config = read_config(run_dir)
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=resolved_data_dir(config.dataset, data_dir))
    ds = load_data(config)
    model = build_model(config, ds.num_classes)
    step, params, state = load_checkpoint(model, config, run_dir, ds.x_train.shape)
    return Run(config, ds, model, params, state, step)


def _holds_fcnn_config(run_dir: str) -> bool:
    try:
        with open(os.path.join(run_dir, CONFIG_FILE)) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "fcnn_version" in d


def _check_creatable(run_dir: str) -> None:
    """A path that does not exist yet can be made: its nearest existing ancestor is a writable directory."""
    if os.path.lexists(run_dir):
        raise ValueError(f"run_dir {run_dir!r} is a broken symbolic link: choose a new directory")
    parent = os.path.dirname(os.path.abspath(run_dir))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"run_dir {run_dir!r} cannot be created: {parent!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"run_dir {run_dir!r} cannot be created: {parent!r} is not writable")


def check_new_run_dir(run_dir: str, *, overwrite: bool = False, dry_run: bool = False) -> None:
    """Make sure starting a run in ``run_dir`` destroys nothing; raise before any write if it would.

    A path that does not exist (and can be created: under a writable directory, not under a
    file) or an empty writable directory is accepted. A directory that holds an fcnn run (its
    ``config.json`` and only the files ``fit`` writes) is refused, unless ``overwrite`` is True:
    then those files, and only those, are deleted (``dry_run``: checked, nothing deleted; the CLI
    checks before loading data, ``fit`` deletes). Anything else (a file, a directory with a file
    fcnn did not write) is refused whatever ``overwrite`` says.
    """
    _checks.boolean(overwrite, "overwrite"), _checks.boolean(dry_run, "dry_run")
    run_dir = _checks.path(run_dir, "run_dir")
    if not os.path.exists(run_dir):
        _check_creatable(run_dir)
        return
    if not os.path.isdir(run_dir):
        raise ValueError(f"run_dir {run_dir!r} is a file, not a directory: choose a new directory")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ValueError(f"run_dir {run_dir!r} is not writable: a run needs to save checkpoints there")
    names = sorted(os.listdir(run_dir))
    if not names:
        return
    foreign = [n for n in names if not _RUN_FILE.match(n)]
    if foreign or not _holds_fcnn_config(run_dir):
        shown = ", ".join(repr(n) for n in (foreign or names)[:3])
        raise ValueError(f"run_dir {run_dir!r} is not empty and does not hold an fcnn run (it holds {shown}"
                         f"{', ...' if len(foreign or names) > 3 else ''}): choose a new directory")
    if not overwrite:
        if checkpoint.list_checkpoints(run_dir):
            raise ValueError(f"run_dir {run_dir!r} holds an fcnn run (it already holds checkpoints): resume it "
                             f"(fcnn train --resume {run_dir}, fit(resume=True)) or replace it (--overwrite, "
                             f"fit(overwrite=True))")
        raise ValueError(f"run_dir {run_dir!r} holds an fcnn run without checkpoints (it stopped before its first, "
                         f"or they were deleted): nothing to resume; replace it (--overwrite, fit(overwrite=True))")
    for n in [] if dry_run else names:
        os.remove(os.path.join(run_dir, n))


def check_writable(run_dir: str) -> None:
    """Create, write and remove a probe file in ``run_dir``: a read-only or full directory fails here,
    before any training, with an ``OSError`` that names the directory."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-ckpt_probe", suffix=".npz", dir=run_dir)
        try:
            os.write(fd, b"fcnn")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        raise OSError(e.errno, f"run_dir {run_dir!r} is not writable ({e.strerror}): a run needs to save checkpoints "
                               f"there") from None


def free_run_dir(config: TrainConfig) -> str:
    """``runs/<model>-<dataset>[-<task>]`` (no task part for classify), or the first ``-2``, ``-3``, ... that does not exist or is empty."""
    task = "" if config.task == "classify" else f"-{config.task}"
    base = os.path.join("runs", f"{config.model}-{config.dataset}{task}")
    path, i = base, 1
    while os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        i += 1
        path = f"{base}-{i}"
    return path
