"""Tests for fcnn.datafiles: the IDX and CIFAR-10 readers against files in the real formats.

Each damaged variant must raise a DataError naming the file; the restricted unpickler must
refuse code. Loading whole datasets through these readers is tested in test_data.py.
"""
import os
import pickle

import numpy as np
import pytest

from _formats import _cifar_reference, cifar_arrays, idx_bytes, write
from fcnn import data
from fcnn.datafiles import DataError, MissingDataError, read_cifar_binary, read_cifar_pickle, read_idx


def test_read_idx_is_big_endian_for_wide_dtypes(tmp_path):
    a = np.array([[1, -2, 300], [32767, -32768, 0]], np.int16)
    path = write(str(tmp_path / "x.idx"), idx_bytes(a, code=0x0B, fmt=">i2"))
    out = read_idx(path)
    np.testing.assert_array_equal(out, a)
    assert out.dtype == np.int16


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _pickle_to(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _pickle_to(str(tmp_path / "data_batch_1"), {b"data": _Evil(), b"labels": [0]})
    with pytest.raises(DataError, match="refusing to load") as e:
        read_cifar_pickle(path)
    assert path in str(e.value) and "system" in str(e.value)
    assert not os.path.exists(tmp_path / "pwned")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_protocols(tmp_path, protocol):
    x, y = cifar_arrays(4, 0)
    path = _pickle_to(str(tmp_path / "b"), {"data": x, "labels": y}, protocol)  # str keys accepted too
    images, labels = read_cifar_pickle(path)
    np.testing.assert_array_equal(images, _cifar_reference(x))
    np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("obj,message", [
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "label 10 at index 1 is out of range"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but labels have shape (1,)"),
    ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}, "must be a uint8 array of shape (n, 3072)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "must be a uint8 array"),
    ({b"labels": [0, 1]}, "lacks b'data'"),
    ([1, 2], "expected a pickled dict"),
    # labels that only a cast makes ints: refused, not truncated (0.9 -> 0) or parsed ("1" -> 1)
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.9, 1.7]}, "b'labels' must be a list of ints, got float64"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["1", "2"]}, "b'labels' must be a list of ints, got <U1"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [True, False]}, "b'labels' must be a list of ints, got bool"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": np.array([0.0, 1.0])}, "got float64 values"),
])
def test_bad_cifar_pickles(tmp_path, obj, message):
    path = _pickle_to(str(tmp_path / "test_batch"), obj)
    with pytest.raises(DataError) as e:
        read_cifar_pickle(path)
    assert path in str(e.value) and message in str(e.value), str(e.value)


def test_truncated_cifar_pickle(tmp_path):
    x, y = cifar_arrays(5, 0)
    path = _pickle_to(str(tmp_path / "data_batch_2"), {b"data": x, b"labels": y})
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) - 100])
    with pytest.raises(DataError, match="corrupt or truncated pickle") as e:
        read_cifar_pickle(path)
    assert path in str(e.value)


def test_bad_cifar_binary(tmp_path):
    path = write(str(tmp_path / "data_batch_1.bin"), bytes(3073 * 2 - 1))
    with pytest.raises(DataError, match="not a positive multiple of the 3073-byte"):
        read_cifar_binary(path)
    path = write(str(tmp_path / "test_batch.bin"), bytes([11]) + bytes(3072))
    with pytest.raises(DataError, match="label 11 at index 0 is out of range"):
        read_cifar_binary(path)
    with pytest.raises(MissingDataError, match="cifar-10-batches-bin"):
        data.load("cifar10", data_dir=str(tmp_path / "nothing"))
