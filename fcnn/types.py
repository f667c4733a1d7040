"""The layer contract, the layer metadata ``summary`` reads, and the pytree aliases.

The layer contract (stated once, here)::

    init(key, in_shape) -> (out_shape, params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, new_state)

* ``init`` needs only a shape (a tuple of positive ints, batch dimension included, e.g.
  ``(n, h, w, c)``; ``check_shape`` enforces it), never data, and returns the output
  shape, so a whole model's shapes are known before any array exists.
* ``apply`` always returns ``(y, state)``; stateless layers pass ``state`` through (an
  empty dict). Params and state are separate pytrees, so ``jax.grad`` differentiates
  params only.
* ``key`` and ``train`` are keyword-only. Combinators split the key between their
  children. Ops and layers never call ``jit``.
* Kernels (conv ``w``, dense ``w``) are the params leaves with ``ndim >= 2``; biases and
  norm scales/offsets have ``ndim <= 1``. ``is_kernel`` is that rule, used by the L2
  penalty (``losses.l2_penalty``) and by AdamW's decay mask (``optim``).

Layer metadata: a ``Layer`` is a bare ``(init, apply)`` pair, so what a layer *is* (its
name, kernel, stride, FLOPs, children) lives in a side table: ``describe(layer,
LayerInfo(...))`` records it in a ``weakref.WeakKeyDictionary`` keyed by ``layer.init``
(each constructor call makes a fresh ``init`` closure, so the key is unique per layer and
the entry disappears with the layer). ``layer_info(layer)`` reads it back; a layer built
by hand has no entry and reads as ``LayerInfo("?", "unknown")``.

Input checks (at trace time: ``x.shape`` is static under ``jit``, so they cost nothing in
the compiled step): every ``apply`` compares the non-batch shape of ``x`` with what its
params imply about the shape ``init`` was given (Dense: the kernel's rows; Conv2D: the
kernel's input channels times groups; BatchNorm: the statistics' channel count), so the
check needs nothing but the params, whose pytree is what it always was. A mismatch raises
``InputShapeError`` (a ``ValueError``) naming the layer and both shapes, batch written
``n`` (the batch size may differ freely). Only to word that error, a layer remembers on
the Python side (its closure, never its params) the in_shape its ``init`` was last given
and prints it where it agrees with the params (else the params' view, ``(n, h, w, 3)``);
the combinators add the child's position as ``fcnn summary`` numbers its rows ("7",
"3.0.block.1") and the outermost ``serial`` the shape its init was last given. Spatial
sizes are free where the layers allow it (a conv stack takes any image at least as large
as its kernels), so an image of another size than init's is caught where it matters: at
the first Dense after the Flatten. ``check_key`` refuses anything but a PRNG key where a
layer draws randomness or splits a key.
"""
from __future__ import annotations

import contextlib
import functools
import math
import weakref
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from fcnn import _checks

__all__ = ["Array", "Shape", "Params", "State", "PRNGKey", "InitFn", "ApplyFn", "Layer", "LayerInfo",
           "describe", "layer_info", "numel", "check_shape", "is_kernel", "kernel_mask", "InputShapeError",
           "shape_text", "init_text", "input_mismatch", "at_position", "init_context", "check_key", "check_layer",
           "FLOATING", "check_floating", "check_param_dtype"]

Array = jax.Array
Shape = Tuple[int, ...]
Params = Any  # a pytree of arrays (dicts of arrays for fcnn's own layers)
State = Any  # a pytree of arrays that is not differentiated (e.g. BatchNorm stats)
PRNGKey = jax.Array

InitFn = Callable[[PRNGKey, Shape], Tuple[Shape, Params, State]]
ApplyFn = Callable[..., Tuple[Array, State]]


class Layer(NamedTuple):
    """A layer is a pure ``(init, apply)`` pair; see the module docstring."""

    init: InitFn
    apply: ApplyFn


def check_shape(in_shape, name: str = "in_shape") -> Shape:
    """``in_shape`` as a tuple of Python ints, else ``ValueError``: every entry a positive int."""
    if not isinstance(in_shape, (tuple, list)) or not all(_checks.is_int(d) and d > 0 for d in in_shape):
        raise ValueError(f"{name} must be a tuple of positive ints (batch included), got {in_shape!r}")
    return tuple(int(d) for d in in_shape)


FLOATING = "a floating dtype (float32, float64, bfloat16, ...)"  # the rule, worded as the conv ops word it


def check_floating(x, who: str, name: str = "x") -> None:
    """``TypeError`` naming ``who`` and ``name`` unless ``x`` has a floating dtype: the rule of every
    layer whose ``apply`` computes in ``x.dtype`` (an int ``x`` would cast the params, the normalised
    values or the dropout scale to ints: wrong values, silently). At trace time, free under ``jit``."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{who}: {name} must have {FLOATING}, got {dtype}")


def check_param_dtype(dtype, name: str = "param_dtype"):
    """``dtype`` as a ``jnp.dtype`` if it names a floating dtype, else ``TypeError`` naming ``name``
    (``None`` too: ``jnp.dtype(None)`` is float64, a default nobody asked for)."""
    try:
        resolved = None if dtype is None else jnp.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or not jnp.issubdtype(resolved, jnp.floating):
        raise TypeError(f"{name} must be {FLOATING}, got {dtype!r}")
    return resolved


def numel(shape: Sequence[int]) -> int:
    """Number of elements of an array of ``shape`` (1 for ``()``)."""
    return math.prod(int(s) for s in shape)


def is_kernel(leaf) -> bool:
    """True for a params leaf with ``ndim >= 2`` (a conv kernel or dense matrix), False for biases."""
    return jnp.ndim(leaf) >= 2


def kernel_mask(params: Params) -> Params:
    """The pytree of ``params`` with ``is_kernel`` at every leaf (an optax mask)."""
    return jax.tree.map(is_kernel, params)


# ----------------------------------------------------------------------------- layer metadata
RFFn = Callable[[Shape], Optional[Tuple[int, int, int]]]  # in_shape -> (kernel, stride, dilation) along H; None: undefined
FlopsFn = Callable[[Shape, Shape], int]  # (in_shape, out_shape) -> FLOPs


class LayerInfo(NamedTuple):
    """What ``summary`` knows about a layer.

    name: display name ("Conv2D"). kind: "conv", "dense", "pool", "activation", "norm",
    "dropout", "reshape", "lambda", "serial", "residual" or "branches".
    detail: short hyperparameter text ("6@5x5 SAME"). rf: in_shape -> (kernel, stride,
    dilation) along H, None for pointwise layers. flops: (in_shape, out_shape) -> int.
    children: sub-layers of a combinator (residual: (block, shortcut-or-None)).
    """

    name: str
    kind: str
    detail: str = ""
    rf: Optional[RFFn] = None
    flops: Optional[FlopsFn] = None
    children: Tuple[Optional[Layer], ...] = ()


_INFO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def describe(layer: Layer, info: LayerInfo) -> Layer:
    """Record ``info`` for ``layer`` and return the layer unchanged."""
    _INFO[layer.init] = info
    return layer


def layer_info(layer: Layer) -> LayerInfo:
    """The recorded info, or an anonymous entry for a layer built by hand."""
    return _INFO.get(layer.init, LayerInfo("?", "unknown"))


# ----------------------------------------------------------------------------- apply-time checks
class InputShapeError(ValueError):
    """``apply`` got an input that the layer's params (what ``init`` saw) cannot take.

    ``where``: the layer's position as ``fcnn summary`` numbers it, one segment per enclosing
    combinator; ``notes``: hints they add; ``context``: what the outermost ``serial`` was
    last initialised with (all filled in on the way out by ``at_position``/``init_context``).
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message, self.where, self.notes, self.context = message, [], [], None

    def __str__(self) -> str:
        text = self.message
        if self.where:
            text += f" (layer {'.'.join(self.where)} in `fcnn summary`)"
        return "; ".join([text] + self.notes + ([self.context] if self.context else []))


def shape_text(shape, batch: bool = True) -> str:
    """``(n, 28, 28, 1)``: ``shape`` with its batch dim written ``n``; as it is with ``batch=False``
    (an input of the wrong rank, whose first dim need not be a batch) or at rank 0/1."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2 or not batch:
        return str(shape)
    return "(" + ", ".join(["n"] + [str(d) for d in shape[1:]]) + ")"


def init_text(seen: dict, agrees: Callable[[Shape], bool], fallback: str) -> str:
    """How an error names init's in_shape: the one ``init`` last recorded in ``seen["in"]`` (Python
    side, never in params) when it ``agrees`` with the params, else ``fallback``, the params' own
    view (e.g. ``"(n, h, w, 3)"``: params loaded from elsewhere, or a layer initialised twice)."""
    shape = seen.get("in")
    return shape_text(shape) if shape is not None and agrees(shape) else fallback


def input_mismatch(layer: str, x_shape, expected: str, rule: str, *, rank_ok: bool = True) -> InputShapeError:
    """The error for an ``apply`` input of ``x_shape`` where init was given ``expected`` (text);
    ``rank_ok=False`` prints ``x_shape`` as it is (its first dim need not be the batch)."""
    return InputShapeError(f"{layer}: apply got inputs of shape {shape_text(x_shape, rank_ok)} but init was "
                           f"given {expected} ({rule})")


@contextlib.contextmanager
def at_position(where: str, note: Optional[str] = None):
    """An ``InputShapeError`` raised inside gets ``where`` (a child's position) and ``note`` added."""
    try:
        yield
    except InputShapeError as err:
        err.where.insert(0, where)
        if note:
            err.notes.append(note)
        raise


@contextlib.contextmanager
def init_context(name: str, init_shape, x_shape):
    """An ``InputShapeError`` raised inside says what ``name`` was last initialised with and got
    (when they differ and the message does not show ``x_shape`` already); the outermost wins."""
    try:
        yield
    except InputShapeError as err:
        got = shape_text(x_shape, len(x_shape) == len(init_shape or ()))
        if init_shape is not None and tuple(init_shape[1:]) != tuple(x_shape[1:]) and got not in err.message:
            err.context = f"{name}: init was last given inputs of shape {shape_text(init_shape)}, apply got {got}"
        raise


_KEY_RULE = ("a PRNG key (jax.random.PRNGKey(seed): uint32 of shape {raw}; or jax.random.key(seed): a typed key "
             "of shape ())")
_KEYS_RULE = ("a PRNG key per step, stacked (jax.random.PRNGKey per step: uint32 of shape {raw}; or typed keys "
              "of shape ({k},))")


@functools.lru_cache(maxsize=None)
def _raw_key_shape(impl: str) -> Shape:
    return tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape)  # (2,) for the default threefry2x32


def _what(value) -> str:
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{value!r} ({type(value).__name__})"


def check_key(key, who: str, *, optional: bool = False, steps: Optional[int] = None):
    """``key`` if it is one PRNG key, else an error naming ``key`` and the rule (at trace time).

    A typed key (``jax.random.key``) of shape ``()`` or a raw ``uint32`` key of the shape
    ``jax.random.PRNGKey`` makes ((2,) by default; a NumPy copy or a tracer of either is fine).
    ``steps``: a stack of that many keys instead, one per scanned step (typed ``(steps,)`` or raw
    ``(steps, 2)``), named ``keys``. ``optional``: ``None`` is accepted and returned (a
    combinator passes it on); otherwise ``None`` (a key not given) raises ``ValueError`` ("Dropout
    with train=True needs a PRNG key: ...") and anything else that is not a key ``TypeError``.
    """
    raw = _raw_key_shape(str(getattr(jax.config, "jax_default_prng_impl", "")))
    lead = () if steps is None else (steps,)
    name = "key" if steps is None else "keys"
    rule = _KEY_RULE.format(raw=raw) if steps is None else _KEYS_RULE.format(raw=lead + raw, k=steps)
    needs = "a PRNG key" if steps is None else "a PRNG key per step"
    if key is None:
        if optional:
            return None
        raise ValueError(f"{who} needs {needs}: pass {name}= {rule}, got None")
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and shape is not None:
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            if tuple(shape) == lead:
                return key
        elif dtype == jnp.uint32 and tuple(shape) == lead + raw:
            return key
    if optional:
        raise TypeError(f"{who}: {name} must be {rule} or None, got {_what(key)}")
    raise TypeError(f"{who} needs {needs}: {name} must be {rule}, got {_what(key)}")


def check_layer(value, name: str = "model") -> "Layer":
    """``value`` if it is a ``Layer`` (an ``(init, apply)`` pair), else ``TypeError`` naming ``name``."""
    if not isinstance(value, Layer):
        raise TypeError(f"{name} must be a Layer, got {type(value).__name__}")
    return value
