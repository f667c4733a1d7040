"""The one copy of fcnn's durable file writes: what survives a crash or a power cut.

A rename (``os.replace``) is atomic, but it is durable only once the folder that holds the new name
is fsynced, and the renamed file's bytes only once the file itself was fsynced before the rename.
Checkpoints (``fcnn.checkpoint``) and a run's config / metrics files (``fcnn.report``) are written
this way, so a reader finds the old file or the new one, never an empty or torn one.
"""
from __future__ import annotations

import os

__all__ = ["fsync_dir", "write_durably"]


def fsync_dir(folder: str) -> None:
    """fsync ``folder`` itself, making the names created, renamed or removed in it durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str, text: str) -> None:
    """``text`` into ``path`` atomically and durably: a temp file beside it, fsynced, renamed onto
    ``path``, then the folder fsynced."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
