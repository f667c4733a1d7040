"""Writers of the real dataset file formats, for the tests of fcnn.data and fcnn.datafiles.

IDX: struct-packed big-endian headers, raw or gzipped; CIFAR-10: pickled dicts with bytes keys
at protocol 2 as the originals, and 3073-byte binary records.
"""
import gzip
import os
import pickle
import struct

import numpy as np


def idx_bytes(array, code=0x08, fmt=">u1", magic=None):
    array = np.asarray(array)
    head = struct.pack(">I", magic if magic is not None else (code << 8) | array.ndim)
    head += b"".join(struct.pack(">I", d) for d in array.shape)
    return head + array.astype(fmt).tobytes()


def write(path, payload):
    if path.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1)
    with open(path, "wb") as f:
        f.write(payload)
    return path


def write_mnist(d, n_train=7, n_test=5, gz=(False, True, False, True), seed=0):
    rng = np.random.default_rng(seed)
    sets = {"train": (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)),
            "t10k": (rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))}
    os.makedirs(d, exist_ok=True)
    i = 0
    for split, (img, lab) in sets.items():
        for kind, arr in (("images-idx3", img), ("labels-idx1", lab)):
            write(os.path.join(d, f"{split}-{kind}-ubyte" + (".gz" if gz[i] else "")), idx_bytes(arr))
            i += 1
    return sets


def cifar_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072)).astype(np.uint8), [int(v) for v in rng.integers(0, 10, n)]


def write_cifar_py(d, n=3):
    os.makedirs(d, exist_ok=True)
    out = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = cifar_arrays(n, i)
        obj = {b"batch_label": b"batch", b"labels": y, b"data": x, b"filenames": [b"f.png"] * n}
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump(obj, f, protocol=2)
        out.append((x, y))
    return out


def write_cifar_bin(d, n=3):
    os.makedirs(d, exist_ok=True)
    out = []
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        x, y = cifar_arrays(n, 10 + i)
        rec = b"".join(bytes([y[j]]) + x[j].tobytes() for j in range(n))
        write(os.path.join(d, name), rec)
        out.append((x, y))
    return out


def _cifar_reference(x):
    """(n, 3072) planes -> (n, 32, 32, 3) by explicit index arithmetic."""
    n = len(x)
    out = np.zeros((n, 32, 32, 3), np.uint8)
    for ch in range(3):
        for r in range(32):
            out[:, r, :, ch] = x[:, ch * 1024 + r * 32 : ch * 1024 + r * 32 + 32]
    return out
