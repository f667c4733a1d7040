"""Atomic checkpoints of pytrees: save, restore against a template, keep the last k.

File format: ``<run_dir>/ckpt_<step:08d>.npz``, an uncompressed numpy ``.npz`` (a zip
with a CRC per member) holding one array per pytree leaf, ``leaf_00000`` ... in
``jax.tree_util`` flattening order, and ``__manifest__``: UTF-8 JSON (as a uint8
array) with

    format "fcnn-checkpoint", format_version 1, step, fcnn_version, treedef (text,
    for humans), leaves: [{path "params/0/w", shape, dtype, key_impl|null}],
    sha256 (of every stored leaf's bytes in order), metadata (the caller's JSON dict).

Typed PRNG keys (``jax.random.key``) are stored as ``jax.random.key_data`` and
rebuilt with ``wrap_key_data`` and the recorded ``key_impl``; dtypes numpy cannot
store natively (bfloat16, float8) are stored as same-width unsigned ints and viewed
back. Restoring needs a *template* (``like=``) with the same structure, shapes and
dtypes, e.g. a freshly initialised model or ``jax.eval_shape`` of one; a mismatch
says which leaf differs and how.

Atomicity: ``save`` writes a temp file (``.tmp-ckpt_*``) in ``run_dir``, flushes and
fsyncs it, ``os.replace``s it onto the final name, fsyncs the directory, and only
then deletes checkpoints beyond the newest ``keep`` up to its own step (a newer, corrupt
one that a resume skipped is neither counted nor deleted) and stale temp files (one
writer per run_dir). A crash at any instant therefore leaves every earlier
checkpoint intact, and at worst a temp file that ``latest`` never considers.

``latest`` / ``load_latest`` return the newest checkpoint that verifies; a corrupt
newer one (disk damage, a copy cut short) is skipped with a ``RuntimeWarning``
naming it, and a run directory whose checkpoints are all corrupt raises
``CheckpointError``. A template mismatch is never skipped: it raises.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import warnings
import zipfile
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fcnn import _checks, _files
from fcnn._version import __version__

__all__ = ["CheckpointError", "Checkpoint", "save", "restore", "latest", "load_latest", "list_checkpoints",
           "checkpoint_path", "read_manifest"]

FORMAT, FORMAT_VERSION = "fcnn-checkpoint", 1
_NAME = re.compile(r"^ckpt_(\d{8,})\.npz$")
_TMP_PREFIX = ".tmp-ckpt_"


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, truncated, or does not match the template; names the file."""


class _CorruptError(CheckpointError):
    """The file itself is damaged (as opposed to belonging to a different model)."""


class Checkpoint(NamedTuple):
    step: int
    tree: Any  # the restored pytree (the template's structure), or {path: array} without a template
    metadata: dict  # the caller's metadata dict as saved


def _path_str(key_path) -> str:
    parts = []
    for k in key_path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _storable(x) -> tuple:
    """Leaf -> (numpy array to store, entry for the manifest)."""
    impl = None
    if _is_key(x):
        impl = str(jax.random.key_impl(x))
        shape, x = tuple(x.shape), jax.random.key_data(x)
    arr = np.asarray(jax.device_get(x))
    if impl is None:
        shape = arr.shape
    dtype = arr.dtype
    if dtype == object:
        raise TypeError(f"checkpoint leaves must be arrays or numbers, got an object array {arr!r:.60}")
    if dtype.type.__module__.startswith("ml_dtypes"):  # bfloat16, float8...: store the bits
        arr = arr.view(f"u{dtype.itemsize}")
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    return arr, {"shape": list(shape), "dtype": dtype.name, "key_impl": impl}


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()


def save(run_dir: str, step: int, tree: Any, *, keep: int = 3, metadata: Optional[dict] = None) -> str:
    """Write ``tree`` as ``run_dir/ckpt_<step:08d>.npz`` atomically; keep the newest ``keep``.

    Args:
      run_dir: directory (created if missing); one writer at a time.
      step: non-negative int, the global step (names and orders the files).
      tree: pytree of arrays, numbers and typed/raw PRNG keys (params, model
        state, optax state, key...).
      keep: how many checkpoints to keep (newest by step); older ones are deleted
        only after the new one is durable.
      metadata: JSON-serialisable dict stored in the manifest (config, epoch...).

    Returns:
      The path written.
    """
    _checks.non_negative_int(step, "step")
    _checks.positive_int(keep, "keep")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    arrays, entries = [], []
    for key_path, leaf in flat:
        arr, entry = _storable(leaf)
        arrays.append(arr)
        entries.append(dict(path=_path_str(key_path), **entry))
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": int(step),
                "fcnn_version": __version__, "treedef": str(treedef), "leaves": entries,
                "sha256": _digest(arrays), "metadata": metadata or {}}
    try:
        manifest_bytes = json.dumps(manifest).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata must be JSON-serialisable: {e}") from None
    payload = {f"leaf_{i:05d}": a for i, a in enumerate(arrays)}
    payload["__manifest__"] = np.frombuffer(manifest_bytes, np.uint8)

    os.makedirs(run_dir, exist_ok=True)
    final = checkpoint_path(run_dir, step)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".npz", dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _files.fsync_dir(run_dir)
    # rotation counts this checkpoint and older ones only: a newer file is one a resume skipped as
    # corrupt (``latest``), so counting it would delete the checkpoint just written (keep=1) and
    # leave nothing resumable; it stays, still skipped, until this run's own save of that step replaces it
    upto = [p for p in list_checkpoints(run_dir) if _step_of(os.path.basename(p)) <= step]
    for old in upto[:-keep]:
        os.remove(old)
    for name in os.listdir(run_dir):  # temp files of crashed earlier saves
        if name.startswith(_TMP_PREFIX):
            try:
                os.remove(os.path.join(run_dir, name))
            except OSError:
                pass
    return final


def checkpoint_path(run_dir: str, step: int) -> str:
    """Where the checkpoint of ``step`` lies: ``run_dir/ckpt_<step:08d>.npz``."""
    return os.path.join(run_dir, f"ckpt_{int(step):08d}.npz")


def _step_of(name: str) -> int:
    """The step a checkpoint's file name ``ckpt_<step>.npz`` holds."""
    return int(_NAME.match(name).group(1))


def list_checkpoints(run_dir: str) -> list:
    """Checkpoint paths in ``run_dir``, oldest step first; temp files are never listed."""
    if not os.path.isdir(run_dir):
        return []
    found = [(_step_of(name), name) for name in os.listdir(run_dir) if _NAME.match(name)]
    return [os.path.join(run_dir, name) for _, name in sorted(found)]


def _read(path: str):
    """(manifest, stored arrays) after checking the format and the checksum."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            manifest = json.loads(bytes(z["__manifest__"]).decode())
            if manifest.get("format") != FORMAT:
                raise _CorruptError(f"{path}: not an fcnn checkpoint (format {manifest.get('format')!r})")
            arrays = [z[f"leaf_{i:05d}"] for i in range(len(manifest["leaves"]))]
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, UnicodeDecodeError) as e:
        raise _CorruptError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {manifest.get('format_version')} is not "
                              f"supported (this fcnn reads {FORMAT_VERSION})")
    for a, e in zip(arrays, manifest["leaves"]):
        n = len(e["shape"])
        if list(a.shape[:n]) != e["shape"] or (e["key_impl"] is None and a.ndim != n):
            raise _CorruptError(f"{path}: leaf {e['path']!r} is stored with shape {a.shape}, the manifest says "
                                f"{tuple(e['shape'])}")
    if _digest(arrays) != manifest["sha256"]:
        raise _CorruptError(f"{path}: checksum mismatch: the checkpoint's data is corrupt")
    return manifest, arrays


def read_manifest(path: str) -> dict:
    """The verified manifest of a checkpoint file (step, leaves, metadata, ...)."""
    return _read(path)[0]


def _decode(arr: np.ndarray, entry: dict):
    dtype = jnp.dtype(entry["dtype"])
    if arr.dtype != dtype:
        arr = arr.view(dtype)
    if entry["key_impl"] is not None:
        return jax.random.wrap_key_data(arr, impl=entry["key_impl"])
    return arr


def _leaf_like(value, like, entry):
    if entry["key_impl"] is not None:
        return value
    if isinstance(like, (bool, int, float, complex)) and not hasattr(like, "shape"):
        return type(like)(value.item())
    if isinstance(like, (np.ndarray, np.generic)):
        return np.asarray(value)
    return jnp.asarray(value)


def restore(path: str, like: Any = None, *, subtrees: bool = False) -> Checkpoint:
    """Read a checkpoint; with ``like``, rebuild ``like``'s pytree structure.

    Args:
      path: a ``ckpt_*.npz`` file.
      like: template pytree (arrays, numbers, keys or ``jax.ShapeDtypeStruct``)
        with the structure, shapes and dtypes of the saved tree. Leaves come back
        as jax arrays, numpy arrays or Python numbers like the template's.
        None: the tree is a dict ``{"params/0/w": array, ...}``.
      subtrees: ``like`` is a dict naming some of the saved dict's top-level entries
        (e.g. ``{"params": ..., "state": ...}`` of a ``{"params", "state", "opt_state",
        "key"}`` checkpoint): only those are rebuilt (the whole file is still verified).

    Raises:
      CheckpointError: corrupt/truncated file, or a template that differs
        ("checkpoint ... is from a different model: leaf 'params/0/w' has shape
        (5, 5, 1, 6), expected (3, 3, 1, 6)").
    """
    manifest, arrays = _read(path)
    entries = manifest["leaves"]
    values = [_decode(a, e) for a, e in zip(arrays, entries)]
    step, meta = int(manifest["step"]), manifest.get("metadata", {})
    if like is None:
        return Checkpoint(step, {e["path"]: v for e, v in zip(entries, values)}, meta)
    if subtrees:
        if not isinstance(like, dict):
            raise TypeError(f"like must be a dict of top-level entries with subtrees=True, got {type(like).__name__}")
        kept = [(e, v) for e, v in zip(entries, values) if e["path"].split("/")[0] in like]
        entries, values = [e for e, _ in kept], [v for _, v in kept]
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    where = f"checkpoint {path} is from a different model"
    if len(flat) != len(entries):
        raise CheckpointError(f"{where}: it holds {len(entries)} leaves, the template has {len(flat)}")
    out = []
    for (key_path, t), e, v in zip(flat, entries, values):
        name = _path_str(key_path)
        if name != e["path"]:
            raise CheckpointError(f"{where}: leaf {e['path']!r} is where the template has {name!r}")
        if _is_key(t) != (e["key_impl"] is not None):
            raise CheckpointError(f"{where}: leaf {name!r} is {'a' if e['key_impl'] else 'not a'} typed PRNG key "
                                  f"in the checkpoint but {'is' if _is_key(t) else 'is not'} in the template")
        t_shape = tuple(np.shape(t))
        if tuple(e["shape"]) != t_shape:
            raise CheckpointError(f"{where}: leaf {name!r} has shape {tuple(e['shape'])}, expected {t_shape}")
        if not _is_key(t) and hasattr(t, "dtype") and jnp.dtype(e["dtype"]) != jnp.dtype(t.dtype):
            raise CheckpointError(f"{where}: leaf {name!r} has dtype {e['dtype']}, expected {jnp.dtype(t.dtype).name}")
        out.append(_leaf_like(v, t, e))
    return Checkpoint(step, jax.tree_util.tree_unflatten(treedef, out), meta)


def latest(run_dir: str) -> Optional[str]:
    """Path of the newest checkpoint in ``run_dir`` that verifies, or None if there is none.

    A corrupt newer checkpoint is skipped with a ``RuntimeWarning``; if checkpoints
    exist but none verifies, ``CheckpointError`` is raised naming each (never a silent
    restart; no warnings then, the error says it all).
    """
    return _newest(run_dir, lambda p: (_read(p), p)[1])


def load_latest(run_dir: str, like: Any = None, *, subtrees: bool = False) -> Optional[Checkpoint]:
    """``restore`` of the newest valid checkpoint in ``run_dir`` (see ``latest``); None if none."""
    return _newest(run_dir, lambda p: restore(p, like, subtrees=subtrees))


def _newest(run_dir, read):
    paths = list_checkpoints(run_dir)
    bad = []
    for p in reversed(paths):
        try:
            found = read(p)
        except _CorruptError as e:
            bad.append(str(e))
            continue
        for e in bad:  # warned only when an older checkpoint is used instead; if none is, the error says it all
            warnings.warn(f"skipping corrupt checkpoint: {e}", RuntimeWarning, stacklevel=3)
        return found
    if bad:
        raise CheckpointError(f"{run_dir}: every checkpoint is corrupt: {'; '.join(bad)}")
    return None
