"""Issue 17's bad inputs to fcnn.data (load, the in-memory datasets, batching) and damaged IDX /
CIFAR-10 files (fcnn.datafiles): the error names the file and the rule. The file rows write a few
bytes into ``tmp_path``. The battery's map and conventions: test_bad_inputs.py.
"""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from _bad_inputs import KEY, NAN, _case, _cifar_bin, _cifar_py, _file, _mnist, _put, _x
from _formats import idx_bytes

from fcnn import data
from fcnn.datafiles import (IDX_IMAGES_MAGIC, DataError, MissingDataError, read_cifar_binary,
                            read_cifar_pickle, read_idx)


def _loaded(name, setup, **kw):
    """``data.load(name, data_dir=...)`` after ``setup(d)`` wrote the files (returns the data dir)."""
    return lambda d: data.load(name, data_dir=setup(d), **kw)


def _remove(name):
    return lambda where: os.remove(os.path.join(where, name))


def _idx(d, payload, name="train-images-idx3-ubyte", magic=IDX_IMAGES_MAGIC):
    """``read_idx`` of a file holding exactly ``payload`` (not gzipped here, whatever its name)."""
    path = str(d / name)
    with open(path, "wb") as f:
        f.write(payload)
    return read_idx(path, magic=magic)


_IMG = np.zeros((2, 3, 3), np.uint8)
_HEAD = struct.pack(">IIII", 0x00000803, 2, 3, 3)


def _pickled(obj):
    return pickle.dumps(obj, protocol=2)


def _batch(over=None, n=3):
    obj = {b"batch_label": b"b", b"labels": [0] * n, b"data": np.zeros((n, 3072), np.uint8), b"filenames": [b"f"] * n}
    obj.update(over or {})
    return obj


def _cifar_file(d, payload, name="data_batch_1", reader=read_cifar_pickle, **kw):
    path = str(d / name)
    with open(path, "wb") as f:
        f.write(payload)
    return reader(path, **kw)


def _gen(fn, *args, **kw):
    """The first item of a generator (batching functions check their arguments when iterated)."""
    return next(iter(fn(*args, **kw)))


_XS, _YS = _x(10, 4, 4, 1), np.zeros(10, np.int32)

DATA = [
    # load and the in-memory datasets
    _case(lambda d: data.load("imagenet"), ValueError, r"name must be one of digits, mnist, .*got 'imagenet'",
          "load-unknown"),
    _case(lambda d: data.load(3), ValueError, r"name must be one of", "load-int"),
    _case(lambda d: data.load("mnist", data_dir=str(d)), MissingDataError,
          r"dataset file not found; looked for: .*train-images-idx3-ubyte", "load-mnist-empty-dir"),
    _case(lambda d: data.load("fashion-mnist", data_dir=str(d / "nope")), MissingDataError,
          r"looked for: .*nope.*train-images-idx3-ubyte", "load-fashion-missing-dir"),
    _case(lambda d: data.load("cifar10", data_dir=str(d)), MissingDataError, r"CIFAR-10 not found under .*data_batch",
          "load-cifar-empty-dir"),
    _case(lambda d: data.load("mnist", data_dir=_file(d)), MissingDataError, r"f\.txt.*train-images",
          "load-mnist-data-dir-is-file"),
    _case(lambda d: data.load("mnist", data_dir=5), (TypeError, ValueError), r"data_dir", "load-data-dir-int"),
    _case(lambda d: data.load("synthetic", normalize="no"), TypeError,
          r"normalize must be a bool", "load-normalize-str"),
    _case(lambda d: data.synthetic(num_classes=1), ValueError, r"num_classes must be in \[2, ", "synthetic-classes"),
    _case(lambda d: data.synthetic(size=0), ValueError, r"size must be a positive int", "synthetic-size"),
    _case(lambda d: data.synthetic(num_train=-5), ValueError, r"num_train must be a positive int", "synthetic-count"),
    _case(lambda d: data.synthetic(patch=0), ValueError, r"patch must be a positive int", "synthetic-patch"),
    _case(lambda d: data.synthetic(noise=NAN), ValueError, r"noise must be a", "synthetic-noise-nan"),
    # batching
    _case(lambda d: data.epoch_permutation(0, 0, 0), ValueError, r"n must be a positive int, got 0", "permutation-n-0"),
    _case(lambda d: data.epoch_permutation(0, 0, 2.5), ValueError, r"n must be a positive int", "permutation-n-float"),
    _case(lambda d: data.epoch_permutation(-1, 0, 5), ValueError, r"seed must be in \[0, 2\*\*32\), got -1",
          "permutation-seed"),
    _case(lambda d: data.epoch_permutation(0, 2**32, 5), ValueError, r"epoch must be in \[0, 2\*\*32\)",
          "permutation-epoch"),
    _case(lambda d: data.steps_per_epoch(10, 0), ValueError, r"batch_size must be a positive int, got 0",
          "steps_per_epoch-batch-0"),
    _case(lambda d: data.steps_per_epoch(10, 2.0), ValueError, r"batch_size must be a positive int",
          "steps_per_epoch-batch-float"),
    _case(lambda d: data.steps_per_epoch(-5, 2), ValueError, r"\bn must be a non-negative int", "steps_per_epoch-n"),
    _case(lambda d: _gen(data.batches, _XS, _YS[:9], 2, seed=0, epoch=0), ValueError,
          r"x and y must hold the same number of examples, got 10 and 9", "batches-count-mismatch"),
    _case(lambda d: _gen(data.batches, _XS, _YS, 11, seed=0, epoch=0), ValueError,
          r"batch_size must be <= the number of examples \(10\), got 11", "batches-too-large"),
    _case(lambda d: _gen(data.batches, _XS, _YS, 0, seed=0, epoch=0), ValueError, r"batch_size must be a positive int",
          "batches-batch-0"),
    _case(lambda d: _gen(data.epoch_chunks, _XS, _YS, 2, seed=0, epoch=0, steps_per_call=0), ValueError,
          r"steps_per_call must be a positive int", "epoch_chunks-steps-per-call"),
    _case(lambda d: _gen(data.eval_batches, _XS, _YS, 0), ValueError, r"batch_size must be a positive int",
          "eval_batches-batch-0"),
    _case(lambda d: _gen(data.eval_batches, _XS, _YS[:3], 4), ValueError, r"x and y must hold the same number",
          "eval_batches-count-mismatch"),
    _case(lambda d: data.random_crop(KEY, _XS, -1), ValueError, r"padding must be a non-negative int, got -1",
          "random_crop-padding"),
    _case(lambda d: data.augment(KEY, _XS, crop_padding=1.5), ValueError, r"padding must be a non-negative int",
          "augment-crop-padding"),
    # IDX files: each error names the file and the rule
    _case(lambda d: _idx(d, b"\x00\x00"), DataError, r"train-images-idx3-ubyte: 2 bytes is too short for an IDX header",
          "idx-too-short"),
    _case(lambda d: _idx(d, b""), DataError, r"train-images-idx3-ubyte: 0 bytes is too short", "idx-empty"),
    _case(lambda d: _idx(d, idx_bytes(_IMG, magic=0x12345678)), DataError,
          r"train-images-idx3-ubyte: bad IDX magic number 0x12345678, expected 0x00000803", "idx-bad-magic"),
    _case(lambda d: _idx(d, idx_bytes(np.zeros(4, np.uint8))), DataError,
          r"train-images-idx3-ubyte: bad IDX magic number 0x00000801, expected 0x00000803", "idx-labels-as-images"),
    _case(lambda d: _idx(d, idx_bytes(np.zeros(4, np.uint8), code=0x07, magic=0x0701), magic=None), DataError,
          r"train-images-idx3-ubyte: bad IDX magic number 0x00000701 .*dtype code", "idx-unknown-dtype"),
    _case(lambda d: _idx(d, struct.pack(">I", 0x0800), magic=None), DataError,
          r"train-images-idx3-ubyte: bad IDX magic number 0x00000800 .*ndim >= 1", "idx-ndim-0"),
    _case(lambda d: _idx(d, _HEAD[:10]), DataError, r"train-images-idx3-ubyte: truncated IDX header",
          "idx-truncated-header"),
    _case(lambda d: _idx(d, _HEAD + bytes(17)), DataError,
          r"train-images-idx3-ubyte: header says shape \(2, 3, 3\) .*\(truncated\)", "idx-truncated-data"),
    _case(lambda d: _idx(d, _HEAD + bytes(19)), DataError, r"train-images-idx3-ubyte: .*\(trailing bytes\)",
          "idx-trailing-bytes"),
    _case(lambda d: _idx(d, b"not gzip at all", name="train-images-idx3-ubyte.gz"), DataError,
          r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip stream", "idx-corrupt-gzip"),
    _case(lambda d: _idx(d, gzip.compress(idx_bytes(_IMG))[:-12], name="train-images-idx3-ubyte.gz"), DataError,
          r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip stream", "idx-truncated-gzip"),
    _case(lambda d: read_idx(str(d / "absent-idx3-ubyte")), MissingDataError, r"absent-idx3-ubyte: file not found",
          "idx-missing"),
    _case(_loaded("mnist", _mnist(edit=_put("train-labels-idx1-ubyte", idx_bytes(np.zeros(6, np.uint8))))), DataError,
          r"train-images-idx3-ubyte holds 7 images but .*train-labels-idx1-ubyte holds 6 labels",
          "mnist-label-count"),
    _case(_loaded("mnist", _mnist(edit=_put("t10k-labels-idx1-ubyte", idx_bytes(np.array([0, 1, 10, 2, 3]))))),
          DataError, r"t10k-labels-idx1-ubyte: label 10 at index 2 is out of range \[0, 10\)", "mnist-label-range"),
    _case(_loaded("mnist", _mnist(edit=_put("t10k-images-idx3-ubyte", idx_bytes(np.zeros((5, 20, 20)))))), DataError,
          r"t10k-images-idx3-ubyte: test images are 20x20 but the train images are 28x28", "mnist-test-size"),
    _case(_loaded("mnist", _mnist(edit=_put("train-images-idx3-ubyte", idx_bytes(np.zeros((7, 28, 28)), code=0x0B,
                                                                                 fmt=">i2")))), DataError,
          r"train-images-idx3-ubyte: bad IDX magic number 0x00000b03, expected 0x00000803", "mnist-int16-images"),
    _case(_loaded("mnist", _mnist(edit=_put("train-images-idx3-ubyte", idx_bytes(np.zeros((7, 28, 28)))[:-1]))),
          DataError, r"train-images-idx3-ubyte: header says .*\(truncated\)", "mnist-truncated-images"),
    _case(_loaded("mnist", _mnist(edit=_remove("t10k-labels-idx1-ubyte"))), MissingDataError,
          r"dataset file not found; looked for: .*t10k-labels-idx1-ubyte", "mnist-missing-test-labels"),
    _case(_loaded("mnist", _mnist(), strict=True), DataError,
          r"train-images-idx3-ubyte: expected the official 60000 train images, the file holds 7", "mnist-strict"),
    # CIFAR-10 files
    _case(lambda d: _cifar_file(d, _pickled(os.system)), DataError,
          r"data_batch_1: pickle refers to (posix|nt|os)\.system.*refusing to load it", "cifar-malicious-pickle"),
    _case(lambda d: _cifar_file(d, _pickled(_batch())[:100]), DataError,
          r"data_batch_1: corrupt or truncated pickle", "cifar-truncated-pickle"),
    _case(lambda d: _cifar_file(d, _pickled([1, 2, 3])), DataError, r"data_batch_1: expected a pickled dict",
          "cifar-pickle-list"),
    _case(lambda d: _cifar_file(d, _pickled({b"data": np.zeros((3, 3072), np.uint8)})), DataError,
          r"data_batch_1: pickled dict lacks b'data' or b'labels'", "cifar-no-labels"),
    _case(lambda d: _cifar_file(d, _pickled(_batch({b"data": np.zeros((3, 1024), np.uint8)}))), DataError,
          r"data_batch_1: b'data' must be a uint8 array of shape \(n, 3072\), got uint8 \(3, 1024\)",
          "cifar-data-shape"),
    _case(lambda d: _cifar_file(d, _pickled(_batch({b"data": np.zeros((3, 3072), np.float32)}))), DataError,
          r"data_batch_1: b'data' must be a uint8 array", "cifar-data-dtype"),
    _case(lambda d: _cifar_file(d, _pickled(_batch({b"labels": [0, 1]}))), DataError,
          r"data_batch_1: 3 images but labels have shape \(2,\)", "cifar-label-count"),
    _case(lambda d: _cifar_file(d, _pickled(_batch({b"labels": ["a", "b", "c"]}))), DataError,
          r"data_batch_1: b'labels' must be a list of ints", "cifar-label-strings"),
    _case(lambda d: _cifar_file(d, _pickled(_batch({b"labels": [0, 11, 2]}))), DataError,
          r"data_batch_1: label 11 at index 1 is out of range \[0, 10\)", "cifar-label-range"),
    _case(lambda d: _cifar_file(d, _pickled(_batch()), records=10000), DataError,
          r"data_batch_1: expected 10000 records, the file holds 3", "cifar-pickle-records"),
    _case(lambda d: read_cifar_pickle(str(d / "data_batch_9")), MissingDataError, r"data_batch_9: file not found",
          "cifar-pickle-missing"),
    _case(lambda d: _cifar_file(d, bytes(3073 * 2 + 5), "data_batch_1.bin", read_cifar_binary), DataError,
          r"data_batch_1\.bin: length 6151 bytes is not a positive multiple of the 3073-byte", "cifar-bin-length"),
    _case(lambda d: _cifar_file(d, b"", "test_batch.bin", read_cifar_binary), DataError,
          r"test_batch\.bin: length 0 bytes is not a positive multiple", "cifar-bin-empty"),
    _case(lambda d: _cifar_file(d, bytes([12]) + bytes(3072), "data_batch_2.bin", read_cifar_binary), DataError,
          r"data_batch_2\.bin: label 12 at index 0 is out of range", "cifar-bin-label"),
    _case(lambda d: _cifar_file(d, bytes(3073), "data_batch_3.bin", read_cifar_binary, records=2), DataError,
          r"data_batch_3\.bin: expected 2 records, the file holds 1", "cifar-bin-records"),
    _case(_loaded("cifar10", _cifar_bin(edit=_put("test_batch.bin", bytes(100)))), DataError,
          r"test_batch\.bin: length 100 bytes", "load-cifar-bin-damaged"),
    _case(_loaded("cifar10", _cifar_py(edit=_put("data_batch_4", _pickled(_batch({b"labels": [0, 0, 99]}))))),
          DataError, r"data_batch_4: label 99 at index 2", "load-cifar-py-damaged"),
    _case(_loaded("cifar10", _cifar_py(), strict=True), DataError, r"data_batch_1: expected 10000 records",
          "load-cifar-strict"),
    _case(_loaded("cifar10", _cifar_py(edit=_remove("data_batch_3"))), MissingDataError, r"data_batch_3\b",
          "load-cifar-py-one-batch-missing"),
]


@pytest.mark.parametrize("call, exc, pattern", DATA)
def test_data_and_data_files_refuse_bad_input(call, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern):
        call(tmp_path)
