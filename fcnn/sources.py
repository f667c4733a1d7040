"""Batch sources: training data larger than memory, fed to ``fit`` one batch at a time.

    source(seed, epoch, start_step) -> iterable of (x, y) batches

A source yields the batches of epoch ``epoch`` from its batch ``start_step`` on, each
``(x (batch_size, ...), y (batch_size, ...))`` as host arrays of one fixed shape, every epoch
the same number of them (``fit(..., steps_per_epoch=...)``). Its order must be a function of
``(seed, epoch)`` alone, and ``start_step`` must skip exactly that many batches: then a run
stopped at any step and resumed (``fit(resume=True)`` calls ``source(seed, epoch, step)``)
sees the batches an uninterrupted run would, and ends bitwise equal to it. ``array_source``
is the reference: the arrays' batches in ``fcnn.data.epoch_chunks``'s order (what ``fit`` does
with arrays), for a test or as a model for a source that reads files.
``source_chunks`` is what ``fit`` does with a source: it groups ``steps_per_call`` batches into
the chunks of ``epoch_chunks`` and checks every batch's shape.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterator, Optional

import jax.numpy as jnp
import numpy as np

from fcnn import _checks
from fcnn import data as data_lib

__all__ = ["array_source", "first_batch", "source_chunks", "check_steps_per_epoch", "test_pair"]


def array_source(x, y, batch_size: int) -> Callable:
    """A source over in-memory arrays with ``epoch_chunks``'s order (the remainder dropped)."""
    x, y = np.asarray(x), np.asarray(y)
    batch_size = _checks.positive_int(batch_size, "batch_size")
    data_lib.steps_per_epoch(len(x), batch_size)

    def source(seed: int, epoch: int, start_step: int):
        for chunk in data_lib.epoch_chunks(x, y, batch_size, seed=seed, epoch=epoch, start=start_step):
            yield chunk.x, chunk.y

    return source


def _pair(batch, index: int):
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(f"a batch source must yield (x, y) pairs; batch {index} is a {type(batch).__name__}")
    return np.asarray(batch[0]), np.asarray(batch[1])


def floating_inputs(x, name: str) -> None:
    """Inputs a model can take: a floating dtype, else ``TypeError`` naming ``name`` (uint8 pixels
    would train on 0-255 or fail deep in a layer). ``fit``'s rule for x_train, x_test and sources."""
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype  # no copy of an array, host or device
    if not jnp.issubdtype(dtype, jnp.floating):  # bfloat16 included
        raise TypeError(f"{name} must hold floating-point inputs (float32, ...), got {dtype}: scale integer "
                        f"pixels first (fcnn.data.normalized does, with the train set's mean and std)")


def first_batch(source: Callable, seed: int, batch_size: int):
    """``(x, y)``: the first batch of epoch 0 (``fit`` builds the model's shapes and checks the
    targets from it); a batch of another size or no batch at all is a ``ValueError``."""
    _checks.function(source, "data", hint="a batch source (seed, epoch, start_step) -> (x, y) batches")
    for x, y in (_pair(b, 0) for b in itertools.islice(source(seed, 0, 0), 1)):
        if len(x) != batch_size or len(y) != batch_size:
            raise ValueError(f"the batch source's batches must hold batch_size={batch_size} examples, the first "
                             f"has x {x.shape} and y {y.shape}")
        floating_inputs(x, "the batch source's x")  # later batches must share its dtype (source_chunks)
        return x, y
    raise ValueError("the batch source yielded no batch for epoch 0")


def source_chunks(source: Callable, *, seed: int, epoch: int, start: int, stop: int, steps_per_call: int,
                  like, check: Optional[Callable] = None) -> Iterator[data_lib.Chunk]:
    """Batches ``start .. stop - 1`` of ``source(seed, epoch, start)`` as ``fcnn.data.Chunk`` s,
    ``steps_per_call`` stacked while that many remain (the grouping of ``epoch_chunks``).

    ``like``: the first batch ``(x, y)``; a batch of another shape or dtype is a ``ValueError``
    naming the epoch and batch, as is a source that runs out before ``stop``. ``check(x, y, name)``
    (``fit``: the task's target rule, ``fcnn.step.target_checker``) runs on every batch too, so a
    label out of range in a later batch is refused as in the first.
    """
    it = iter(source(seed, epoch, start))
    want = [(np.shape(a), np.asarray(a).dtype) for a in like]
    b = start
    while b < stop:
        k = steps_per_call if stop - b >= steps_per_call else 1
        got = list(itertools.islice(it, k))
        if len(got) < k:
            raise ValueError(f"the batch source ran out at batch {b + len(got)} of epoch {epoch}: it must yield "
                             f"steps_per_epoch batches every epoch")
        pairs = [_pair(p, b + i) for i, p in enumerate(got)]
        for i, pair in enumerate(pairs):
            have = [(a.shape, a.dtype) for a in pair]
            if have != want:
                raise ValueError(f"batch {b + i} of epoch {epoch} from the batch source has (x, y) shapes and dtypes "
                                 f"{have}, the first batch {want}: every batch must have one shape")
            if check is not None:
                check(*pair, f"y of batch {b + i} of epoch {epoch} from the batch source")
        xs, ys = (p[0] for p in pairs), (p[1] for p in pairs)
        xb, yb = (pairs[0] if k == 1 else (np.stack(list(xs)), np.stack(list(ys))))
        yield data_lib.Chunk(b, k, xb, yb)
        b += k


def test_pair(test_data):
    """A source's ``fit(test_data=...)``: ``(x_test, y_test)``, or ``(None, None)`` for None."""
    if test_data is None:
        return None, None
    if not (isinstance(test_data, (tuple, list)) and len(test_data) == 2):
        raise TypeError(f"test_data must be an (x_test, y_test) pair, got {type(test_data).__name__}"
                        f"{f' of {len(test_data)}' if isinstance(test_data, (tuple, list)) else ''}")
    return tuple(test_data)


def check_steps_per_epoch(steps_per_epoch: Optional[int]) -> int:
    """``fit``'s rule: a source needs ``steps_per_epoch``, a positive int."""
    if steps_per_epoch is None:
        raise ValueError("a batch source needs steps_per_epoch=N (its batches per epoch): fit cannot count them")
    return _checks.positive_int(steps_per_epoch, "steps_per_epoch")
