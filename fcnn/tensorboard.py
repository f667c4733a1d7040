"""TensorBoard event files for a run: every scalar of metrics.jsonl, through tensorboardX (optional).

    log = ScalarLog(run_dir, purge_step=None)   # fit(..., tensorboard=True) makes one
    log.write(record)                             # one metrics.jsonl record: each number -> a scalar
    log.close()
    read_scalars(run_dir) -> {tag: [(step, value), ...]}   # the events read back

A record's tag is its metrics.jsonl key (``train_loss``, ``test_psnr``, ``learning_rate``,
``images_per_s``, ...), its step the record's global ``step``; ``epoch`` and ``step`` themselves
are not logged, nor event records (``"event"`` key) or non-numbers. TensorBoard stores float32, so
a value read back equals the float32 rounding of the logged one. A resumed run opens a new event
file with ``purge_step`` = one past the step it resumes from, so TensorBoard drops the old file's
events after that step and keeps the record at it, as metrics.jsonl does. The writer is tensorboardX (``pip install 'fcnn[tensorboard]'``);
``read_scalars`` parses the files directly (TFRecord framing: length u64, masked CRC32C u32,
payload, masked CRC u32; the payload an ``Event`` protobuf), to check what was written.
"""
from __future__ import annotations

import glob
import math
import numbers
import os
import struct
from typing import Dict, List, Optional, Tuple

from fcnn import _checks

__all__ = ["EVENT_FILE_PREFIX", "ScalarLog", "scalars_of", "read_scalars"]

EVENT_FILE_PREFIX = "events.out.tfevents."
_SKIP = ("epoch", "step")


def scalars_of(record: dict) -> Dict[str, float]:
    """The ``{tag: value}`` a metrics.jsonl record logs: its finite or infinite numbers but epoch/step."""
    if "event" in record:
        return {}
    return {k: float(v) for k, v in record.items()
            if k not in _SKIP and isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v)}


def writer_class():
    """tensorboardX's ``SummaryWriter``, or an ImportError saying how to install it (``fit`` asks
    before it writes anything into the run directory)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError("tensorboard=True needs tensorboardX: pip install 'fcnn[tensorboard]' "
                          "(or pip install tensorboardX)") from None
    return SummaryWriter


class ScalarLog:
    """A tensorboardX ``SummaryWriter`` in ``run_dir`` that logs metrics.jsonl records (module docstring)."""

    def __init__(self, run_dir: str, *, purge_step: Optional[int] = None):
        run_dir = _checks.path(run_dir, "run_dir")
        if purge_step is not None:
            _checks.non_negative_int(purge_step, "purge_step")
        SummaryWriter = writer_class()
        # tensorboardX names the file by the second and the host only, and opens it for writing: a
        # second log opened in the same second (a quick resume) replaced the first file. The suffix
        # numbers this run directory's event files, so names differ and sort oldest first.
        taken = len(_event_files(run_dir))
        self._writer = SummaryWriter(logdir=run_dir, purge_step=purge_step or None, flush_secs=10,
                                     filename_suffix=f".{taken:06d}")

    def write(self, record: dict) -> None:
        """Log every scalar of one record at its ``step``, and flush (an epoch's record is small)."""
        for tag, value in scalars_of(record).items():
            self._writer.add_scalar(tag, value, global_step=int(record["step"]))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _event_files(run_dir: str) -> List[str]:
    """The run directory's event files, oldest first (by name: the second, then ``ScalarLog``'s number)."""
    return sorted(glob.glob(os.path.join(run_dir, EVENT_FILE_PREFIX + "*")))


def _records(path: str):
    """The payloads of a TFRecord file (a torn last record is dropped)."""
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at + 12 <= len(data):
        (n,) = struct.unpack_from("<Q", data, at)
        end = at + 12 + n + 4
        if end > len(data):
            break
        yield data[at + 12: at + 12 + n]
        at = end


def read_scalars(run_dir: str) -> Dict[str, List[Tuple[int, float]]]:
    """Every scalar in the run directory's event files, oldest file first: ``{tag: [(step, value)]}``."""
    from tensorboardX.proto import event_pb2

    out: Dict[str, List[Tuple[int, float]]] = {}
    for path in _event_files(run_dir):
        for payload in _records(path):
            event = event_pb2.Event.FromString(payload)
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
    return out
