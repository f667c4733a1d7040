"""The one copy of fcnn's argument validators.

Every public function checks its arguments before computing and raises a ``ValueError``
(wrong value) or ``TypeError`` (wrong kind) whose message names the argument and the rule:

    positive_int(v, "batch_size")            -> "batch_size must be a positive int, got 0"
    non_negative_int(v, "seed")              -> "seed must be a non-negative int, got -1"
    choice(v, ("f32", "bf16"), "precision")  -> "precision must be one of f32, bf16; got 'fp8'"
    positive_float(v, "learning_rate")      -> "learning_rate must be a positive float, got 0.0"

``hint`` adds a parenthesised note to the rule ("augment_shift must be a non-negative int
(pixels), got -1"). bools are refused wherever a number is asked for (``True`` is an int in
Python, never a batch size). NumPy integers and floats are accepted and returned as Python
``int`` / ``float``.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Optional, Sequence

import numpy as np

__all__ = ["is_int", "is_real", "positive_int", "non_negative_int", "int_in_range", "positive_float",
           "non_negative_float", "finite_float", "float_in_range", "choice", "boolean", "optional_positive_int",
           "string", "path", "new_file", "function", "array_shape", "sizes", "labels_kept", "labels_outside"]


def _rule(rule: str, hint: str) -> str:
    return f"{rule} ({hint})" if hint else rule


def is_int(value) -> bool:
    """An integral number that is not a bool (Python or NumPy ints)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number that is not a bool (ints and floats, Python or NumPy)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(value, name: str, *, hint: str = "") -> int:
    """``value`` as an int >= 1, else ``ValueError`` naming ``name``."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be {_rule('a positive int', hint)}, got {value!r}")
    return int(value)


def optional_positive_int(value, name: str, *, hint: str = "") -> Optional[int]:
    """None, or ``positive_int(value, name)``."""
    if value is None:
        return None
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be {_rule('a positive int', hint)} or None, got {value!r}")
    return int(value)


def non_negative_int(value, name: str, *, hint: str = "") -> int:
    """``value`` as an int >= 0, else ``ValueError`` naming ``name``."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be {_rule('a non-negative int', hint)}, got {value!r}")
    return int(value)


def int_in_range(value, name: str, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high)``."""
    if not is_int(value) or not low <= value < high:
        raise ValueError(f"{name} must be an int in [{low}, {high}), got {value!r}")
    return int(value)


def _number(value, name: str, rule: str, hint: str) -> float:
    if not is_real(value):
        raise ValueError(f"{name} must be {_rule(rule, hint)}, got {value!r} ({type(value).__name__})")
    return float(value)


def positive_float(value, name: str, *, hint: str = "") -> float:
    """``value`` as a finite float > 0."""
    v = _number(value, name, "a positive float", hint)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be {_rule('a positive float', hint)}, got {value!r}")
    return v


def non_negative_float(value, name: str, *, hint: str = "") -> float:
    """``value`` as a finite float >= 0."""
    v = _number(value, name, "a non-negative float", hint)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be {_rule('a non-negative float', hint)}, got {value!r}")
    return v


def finite_float(value, name: str, *, hint: str = "") -> float:
    """``value`` as a finite float (no nan, no inf)."""
    v = _number(value, name, "a finite float", hint)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be {_rule('a finite float', hint)}, got {value!r}")
    return v


def float_in_range(value, name: str, low: float, high: float, *, closed_high: bool = False) -> float:
    """``value`` as a float in ``[low, high)`` (``[low, high]`` with ``closed_high``)."""
    interval = f"[{low}, {high}{']' if closed_high else ')'}"
    v = _number(value, name, f"a float in {interval}", "")
    if not (low <= v <= high if closed_high else low <= v < high):
        raise ValueError(f"{name} must be a float in {interval}, got {value!r}")
    return v


def choice(value, choices: Sequence[str], name: str) -> str:
    """``value`` if it is one of ``choices`` (strings), else ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def boolean(value, name: str) -> bool:
    """``value`` if it is a bool (not 0/1, not a string), else ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def string(value, name: str, *, optional: bool = False, hint: str = "") -> Optional[str]:
    """``value`` if it is a str (or None with ``optional``), else ``TypeError`` naming ``name``."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        rule = _rule("a str", hint) + (" or None" if optional else "")
        raise TypeError(f"{name} must be {rule}, got {value!r} ({type(value).__name__})")
    return value


def path(value, name: str, *, optional: bool = False) -> Optional[str]:
    """``value`` as a str path: a non-empty str or ``os.PathLike`` (or None with ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (a str){' or None' if optional else ''}, got {value!r} "
                        f"({type(value).__name__})")
    text = os.fspath(value)
    if not isinstance(text, str) or not text:
        raise ValueError(f"{name} must be a non-empty path, got {value!r}")
    return text


def new_file(value, name: str, *, overwrite: bool = False, flag: str = "overwrite=True") -> str:
    """``value`` as the path of a file about to be written, checked before any computation: not a
    directory, in a folder that exists and can be written, and not an existing file unless
    ``overwrite`` (``flag`` names how to say so: ``--overwrite`` for a command)."""
    text, overwrite = path(value, name), boolean(overwrite, "overwrite")
    if os.path.isdir(text):
        raise ValueError(f"{name} {text!r} is a directory; give the path of a file")
    if os.path.lexists(text) and not overwrite:
        raise ValueError(f"{name} {text!r} exists; pass {flag} to replace it")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise ValueError(f"{name} {text!r}: {folder!r} {'is not a folder' if os.path.exists(folder) else 'does not exist'}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{name} {text!r}: the folder {folder!r} is not writable")
    return text


def function(value, name: str, *, optional: bool = False, hint: str = ""):
    """``value`` if it is callable (or None with ``optional``), else ``TypeError`` naming ``name``."""
    if value is None and optional:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be {_rule('callable', hint)}{' or None' if optional else ''}, got {value!r}")
    return value


def array_shape(value, name: str) -> tuple:
    """The shape of ``value`` if it is an array (anything with a ``.shape``: a jax or NumPy array, a
    tracer), a Python number or a nested list of them; else ``TypeError`` naming ``name``. (``None``
    would otherwise pass JAX's ``jnp.shape`` as a scalar, with a deprecation warning, and fail later
    with a rank error that hides the cause.)"""
    shape = getattr(value, "shape", None)
    if shape is not None and not callable(shape):
        return tuple(shape)
    if isinstance(value, (numbers.Number, list, tuple)) and not isinstance(value, bool):
        return tuple(np.shape(value))
    raise TypeError(f"{name} must be an array, got {value!r:.60} ({type(value).__name__})")


def sizes(value, name: str) -> tuple:
    """An array shape given by hand: a tuple or list of non-negative ints (NumPy ints accepted, bools
    and floats refused) -> a tuple of Python ints, else ``ValueError`` / ``TypeError`` naming ``name``."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of ints (an array shape), got {value!r:.60}")
    if not all(is_int(v) and v >= 0 for v in value):
        raise ValueError(f"{name} must hold non-negative ints (an array shape), got {tuple(value)!r:.80}")
    return tuple(int(v) for v in value)


def labels_kept(labels, num_classes: int, ignore_index: Optional[int] = None):
    """The one rule for integer class labels, elementwise: True where a label is in ``[0, num_classes)``
    or is ``ignore_index``. Operators only, so it serves NumPy arrays and traced JAX arrays alike."""
    kept = (labels >= 0) & (labels < num_classes)
    return kept if ignore_index is None else kept | (labels == ignore_index)


def labels_outside(labels, num_classes: int, ignore_index: Optional[int] = None) -> Optional[tuple]:
    """``labels_kept`` on concrete labels: ``None`` when every label keeps the rule, else ``(value,
    index, count)``: the first label that breaks it (in C order), its index as a tuple, and how many
    do. Callers word the error for their input."""
    labels = np.asarray(labels)
    bad = ~labels_kept(labels, num_classes, ignore_index)
    count = int(np.count_nonzero(bad))
    if not count:
        return None
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), labels.shape))
    return labels[index].item(), index, count
