"""Readers for the on-disk dataset formats: IDX (MNIST, Fashion-MNIST) and CIFAR-10.

Every reader checks the file before trusting it and raises ``DataError`` (a
``ValueError``) naming the file and the rule it broke: a bad magic number, a header
that disagrees with the file length, an unknown dtype, a label out of range, an
image/label count mismatch, a truncated or corrupt gzip stream. A missing file
raises ``MissingDataError`` (both a ``DataError`` and a ``FileNotFoundError``).
Nothing here ever returns fewer samples than the file's header promises.

Formats:

* IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header ``0x00 0x00 <dtype>
  <ndim>`` then ``ndim`` big-endian uint32 sizes, then the data, big-endian, row
  major. MNIST labels have magic ``0x00000801`` (uint8, 1 dim), images
  ``0x00000803`` (uint8, 3 dims). Files may be raw or gzipped (``.gz``).
* CIFAR-10 python batches: a (Python 2) pickle of a dict with ``b'data'`` (uint8
  (n, 3072): 1024 red, 1024 green, 1024 blue values, each a 32x32 row-major plane)
  and ``b'labels'`` (n ints). They are read with a *restricted* unpickler that only
  resolves the few numpy/codecs globals an ndarray needs; any other global (the
  way a malicious pickle runs code) raises ``DataError``.
* CIFAR-10 binary batches: records of 3073 bytes, a label byte then the 3072 pixel
  bytes in the same plane order; no header, so the file length must be a multiple
  of 3073 (``records=`` checks an exact count).
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from typing import Optional, Tuple

import numpy as np

from fcnn import _checks

__all__ = ["DataError", "MissingDataError", "read_idx", "read_cifar_pickle", "read_cifar_binary", "find_file",
           "default_data_dir", "resolved_data_dir"]

IN_MEMORY = ("digits", "synthetic")  # fcnn.data's datasets built without files


def default_data_dir() -> str:
    """Where file datasets are read from unless told: ``$FCNN_DATA_DIR``, else ``~/.cache/fcnn``."""
    return os.environ.get("FCNN_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fcnn")


def resolved_data_dir(name: str, data_dir: Optional[str] = None) -> Optional[str]:
    """The absolute folder ``fcnn.data.load(name, data_dir=data_dir)`` reads (``default_data_dir()``
    when None), or None for a dataset built in memory: what a run records, so that evaluating it
    later from another working directory, or with another $FCNN_DATA_DIR, reads the same files."""
    if name in IN_MEMORY:
        return None
    data_dir = _checks.path(data_dir, "data_dir", optional=True)
    return os.path.abspath(os.path.expanduser(data_dir) if data_dir is not None else default_data_dir())


class DataError(ValueError):
    """A dataset file is missing, truncated or corrupt; the message names the file."""


class MissingDataError(DataError, FileNotFoundError):
    """A dataset file is not where it was looked for."""


# IDX dtype codes -> big-endian numpy dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_LABELS_MAGIC = 0x00000801
IDX_IMAGES_MAGIC = 0x00000803
CIFAR_RECORD = 1 + 3 * 32 * 32  # 3073 bytes: label, then R, G, B planes


def find_file(directories, names) -> str:
    """The first existing ``directory/name`` over all directories and names.

    Raises:
      MissingDataError: none exists; the message lists every path tried.
    """
    tried = []
    for d in directories:
        for name in names:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                return path
            tried.append(path)
    raise MissingDataError(f"dataset file not found; looked for: {', '.join(tried)}")


def _read_bytes(path: str) -> bytes:
    """The file's contents, gunzipped when the name ends in ``.gz``."""
    if not os.path.isfile(path):
        raise MissingDataError(f"{path}: file not found")
    with open(path, "rb") as f:
        raw = f.read()
    if not path.endswith(".gz"):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is an EOFError
        raise DataError(f"{path}: corrupt or truncated gzip stream ({e})") from None


def read_idx(path: str, *, magic: Optional[int] = None) -> np.ndarray:
    """Read an IDX file (raw or ``.gz``) into a native-endian numpy array.

    Args:
      path: the file.
      magic: the 32-bit magic number the file must carry (e.g. ``IDX_IMAGES_MAGIC``);
        None accepts any valid IDX header.

    Returns:
      An array with the header's shape and dtype (uint8 for MNIST).

    Raises:
      DataError: bad magic, unknown dtype code, or a data length that differs from
        what the header's sizes imply (truncated or padded file).
    """
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise DataError(f"{path}: {len(buf)} bytes is too short for an IDX header (needs at least 4)")
    (file_magic,) = struct.unpack(">I", buf[:4])
    zero, code, ndim = file_magic >> 16, (file_magic >> 8) & 0xFF, file_magic & 0xFF
    if magic is not None and file_magic != magic:
        raise DataError(f"{path}: bad IDX magic number 0x{file_magic:08x}, expected 0x{magic:08x}")
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: bad IDX magic number 0x{file_magic:08x} (expected 0x0000 then a dtype code "
                        f"in {sorted(hex(c) for c in _IDX_DTYPES)} then ndim >= 1)")
    head = 4 + 4 * ndim
    if len(buf) < head:
        raise DataError(f"{path}: truncated IDX header ({len(buf)} bytes, the {ndim}-dim header needs {head})")
    dims = struct.unpack(f">{ndim}I", buf[4:head])
    dtype = np.dtype(_IDX_DTYPES[code])
    want = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(buf) - head != want:
        raise DataError(f"{path}: header says shape {dims} of {dtype.name} ({want} data bytes) but the file "
                        f"holds {len(buf) - head} data bytes ({'truncated' if len(buf) - head < want else 'trailing bytes'})")
    return np.frombuffer(buf, dtype=dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def check_labels(path: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``labels`` as int32 after checking every value is in ``[0, num_classes)``."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{path}: labels must be 1-D, got shape {labels.shape}")
    found = _checks.labels_outside(labels, num_classes)
    if found:
        value, (index,), _ = found
        raise DataError(f"{path}: label {value} at index {index} is out of range [0, {num_classes})")
    return labels.astype(np.int32)


# ----------------------------------------------------------------------------- CIFAR-10
class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled numpy array needs; refuses everything else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")  # the real files are Python 2 pickles
        self._path = path

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"{self._path}: pickle refers to {module}.{name}, which a CIFAR-10 batch never needs; "
                            f"refusing to load it (only numpy array globals are allowed)")
        return super().find_class(module, name)


def _cifar_images(path: str, data: np.ndarray) -> np.ndarray:
    """(n, 3072) uint8 planes -> (n, 32, 32, 3) uint8 NHWC."""
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (n, c, h, w) -> (n, h, w, c)


def _check_records(path: str, n: int, records: Optional[int]) -> None:
    if records is not None and n != records:
        raise DataError(f"{path}: expected {records} records, the file holds {n}")


def read_cifar_pickle(path: str, *, records: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch with a restricted unpickler.

    Args:
      path: e.g. ``cifar-10-batches-py/data_batch_1``.
      records: the exact number of images the batch must hold (10000 for the real
        files); None accepts any count.

    Returns:
      ``(images, labels)``: uint8 (n, 32, 32, 3) NHWC and int32 (n,).
    """
    if not os.path.isfile(path):
        raise MissingDataError(f"{path}: file not found")
    with open(path, "rb") as f:
        try:
            obj = _RestrictedUnpickler(f, path).load()
        except DataError:
            raise
        except Exception as e:  # truncated or corrupt pickles raise many types
            raise DataError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict with b'data' and b'labels', got {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: pickled dict lacks b'data' or b'labels' (keys: {sorted(map(repr, obj))})")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (n, 3072), got {desc}")
    raw = np.asarray(labels) if isinstance(labels, (list, tuple, np.ndarray)) else None
    # ints only: a cast would truncate 1.7 to 1 and parse "1" (CIFAR's pickles hold a list of Python ints)
    if raw is None or not (raw.size == 0 or np.issubdtype(raw.dtype, np.integer)) or raw.dtype == bool:
        got = type(labels).__name__ if raw is None else f"{raw.dtype} values"
        raise DataError(f"{path}: b'labels' must be a list of ints, got {got}")
    labels = raw.astype(np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but labels have shape {labels.shape}")
    _check_records(path, len(data), records)
    return _cifar_images(path, data), check_labels(path, labels, 10)


def read_cifar_binary(path: str, *, records: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch (``data_batch_1.bin`` ...): 3073-byte records.

    Args:
      path: the ``.bin`` file.
      records: the exact number of records required (10000 for the real files).

    Returns:
      ``(images, labels)``: uint8 (n, 32, 32, 3) NHWC and int32 (n,).
    """
    buf = _read_bytes(path)
    if len(buf) == 0 or len(buf) % CIFAR_RECORD:
        raise DataError(f"{path}: length {len(buf)} bytes is not a positive multiple of the {CIFAR_RECORD}-byte "
                        f"CIFAR-10 record (truncated or not a CIFAR-10 binary batch)")
    rec = np.frombuffer(buf, dtype=np.uint8).reshape(-1, CIFAR_RECORD)  # (n, 3073)
    _check_records(path, len(rec), records)
    labels = check_labels(path, rec[:, 0], 10)
    return _cifar_images(path, rec[:, 1:]), labels
