"""Datasets and batching: bundled digits, MNIST / Fashion-MNIST, CIFAR-10, synthetic.

``load(name)`` returns a ``Dataset`` of host numpy arrays: images float32 NHWC
``(n, h, w, c)`` normalised with the *training* set's per-channel mean and std
(``x = (pixel / max_pixel - mean) / std``; the stats are kept in the Dataset),
labels int32 ``(n,)``. Nothing is ever downloaded: ``digits`` and ``synthetic``
are built in memory, the others are read from ``data_dir`` (default
``$FCNN_DATA_DIR`` or ``~/.cache/fcnn``; the files may lie in ``data_dir`` or in
``data_dir/<name>``). File formats and their checks are in ``fcnn.datafiles``.

* ``digits`` (default): scikit-learn's 1,797 real 8x8 handwritten digits
  (``sklearn.datasets.load_digits``, bundled, no download), pixel values 0..16,
  upsampled to 28x28 by **bilinear** interpolation with half-pixel centres and
  clamped edges (what ``jax.image.resize(..., "linear")`` does when upsampling).
  The held-out test set is a fixed stratified 20% of each class chosen by a
  hash of the sample index (``digits_split``): the same 359 indices on every
  machine and every numpy version, whatever the training seed.
* ``mnist`` / ``fashion-mnist``: the four standard IDX files, raw or ``.gz`` (any image
  count and size the files agree on; MNIST's are 28x28).
* ``cifar10``: ``cifar-10-batches-py/`` (pickles, read with a restricted
  unpickler) or ``cifar-10-batches-bin/`` (3073-byte records), or the files
  directly in ``data_dir``.
* ``synthetic``: noise images whose class is a bright square at a per-class
  location; ``Dataset.evidence`` holds the class regions for saliency checks.

Batching keeps shapes fixed so a jitted step never recompiles. One path for training batches,
``epoch_chunks`` (``fit``'s; ``batches`` is its one-at-a-time view), drops the remainder of a
shuffled epoch (a different one each epoch); one for evaluation, ``eval_batches`` (``evaluate``'s
and ``predict``'s), pads the last batch with a 0/1 weight so every example counts exactly once.
The epoch order ``epoch_permutation(seed, epoch, n)`` is a pure function (usable under ``jit``),
so a resumed run sees the same order. Augmentation (``random_crop``, ``random_flip``,
``augment``) runs on device, keyed by a PRNG key; ``Dataset.augment`` is a dataset's own.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Iterator, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fcnn import _checks
from fcnn.datafiles import (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, DataError, MissingDataError, check_labels,  # noqa: F401
                            default_data_dir, find_file, read_cifar_binary, read_cifar_pickle, read_idx,
                            resolved_data_dir)  # the data folders' rule, re-exported here
from fcnn.types import Array

__all__ = [
    "Dataset", "DataError", "MissingDataError", "DATASETS", "OFFICIAL_SIZES", "official_size_note", "load",
    "normalized", "digits", "digits_split", "synthetic",
    "bilinear_resize", "epoch_permutation", "steps_per_epoch", "Chunk", "epoch_chunks", "batches", "eval_batches",
    "random_crop", "random_flip", "augment", "to_device",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic")
OFFICIAL_SIZES = {"mnist": (60000, 10000), "fashion-mnist": (60000, 10000), "cifar10": (50000, 10000)}


class Dataset(NamedTuple):
    """A dataset held in host memory (or on device after ``to_device``)."""

    x_train: np.ndarray  # (n_train, h, w, c) float32, normalised
    y_train: np.ndarray  # (n_train,) int32 in [0, num_classes)
    x_test: np.ndarray  # (n_test, h, w, c) float32, normalised with the train stats
    y_test: np.ndarray  # (n_test,) int32
    num_classes: int
    name: str
    mean: np.ndarray  # (c,) float32: per-channel train mean of pixel / max_pixel
    std: np.ndarray  # (c,) float32: per-channel train std of pixel / max_pixel
    evidence: Optional[np.ndarray] = None  # synthetic only: (num_classes, h, w) bool class regions
    augment: Optional[Callable] = None  # (key, x) -> x applied to each training batch in the step (fit)


def load(name: str = "digits", *, data_dir: Optional[str] = None, normalize: bool = True,
         strict: bool = False) -> Dataset:
    """Load a dataset by name (see the module docstring); never downloads.

    Args:
      name: one of ``DATASETS``.
      data_dir: where file-based datasets are read from (None: ``default_data_dir()``).
      normalize: subtract the train mean and divide by the train std (per channel);
        False leaves pixels scaled to [0, 1] (mean 0, std 1 are recorded).
      strict: require the official sizes (MNIST 60000/10000 images, CIFAR-10 10000
        per batch). The default accepts any file that agrees with itself (header counts
        match the data, labels match the images, train and test images have one size):
        IDX is a general format, and subsets and re-splits are ordinary;
        ``official_size_note`` says when a dataset is not the official one.

    Raises:
      ValueError: unknown name. DataError / MissingDataError: bad or missing files.
    """
    _checks.choice(name, DATASETS, "name")
    data_dir, normalize = _checks.path(data_dir, "data_dir", optional=True), _checks.boolean(normalize, "normalize")
    strict = _checks.boolean(strict, "strict")
    if name == "digits":
        return digits(normalize=normalize)
    if name == "synthetic":
        return synthetic(normalize=normalize)
    base = resolved_data_dir(name, data_dir)
    if name in ("mnist", "fashion-mnist"):
        return _load_idx_set(name, [base, os.path.join(base, name)], normalize, strict)
    return _load_cifar10(base, normalize, strict)


def official_size_note(ds: Dataset) -> Optional[str]:
    """A one-line note when a file dataset's sizes differ from the official release's, else None."""
    want = OFFICIAL_SIZES.get(ds.name)
    got = (len(ds.x_train), len(ds.x_test))
    if want is None or got == want:
        return None
    return (f"note: {ds.name} has {got[0]} train / {got[1]} test images, not the official {want[0]} / {want[1]} "
            f"(a subset or another dataset in the same format)")


def _finish(name, x_train, y_train, x_test, y_test, num_classes, max_value, normalize, evidence=None) -> Dataset:
    """Scale to [0, 1] (dividing by ``max_value``), int32 labels, then ``normalized``."""
    x_train, x_test = (np.asarray(x, np.float32) / np.float32(max_value) for x in (x_train, x_test))
    return normalized(name, x_train, np.asarray(y_train, np.int32), x_test, np.asarray(y_test, np.int32),
                      num_classes, normalize=normalize, evidence=evidence)


def normalized(name, x_train, y_train, x_test, y_test, num_classes, *, normalize=True, evidence=None) -> Dataset:
    """A ``Dataset`` of float32 images normalised with the train set's per-channel mean and std (in place
    where possible; ``normalize=False``: kept, mean 0 and std 1 recorded); the targets as given."""
    x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
    c = x_train.shape[-1]
    if normalize:
        mean = x_train.reshape(-1, c).mean(axis=0, dtype=np.float64).astype(np.float32)
        std = x_train.reshape(-1, c).std(axis=0, dtype=np.float64).astype(np.float32)
        std = np.where(std > 0, std, np.float32(1)).astype(np.float32)
        for x in (x_train, x_test):
            x -= mean
            x /= std
    else:
        mean, std = np.zeros(c, np.float32), np.ones(c, np.float32)
    return Dataset(x_train, y_train, x_test, y_test, num_classes, name, mean, std, evidence)


# ----------------------------------------------------------------------------- digits
def bilinear_resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (n, h, w) images to (n, size, size), half-pixel centres, clamped edges.

    Output pixel ``i`` samples source coordinate ``(i + 0.5) * h / size - 0.5``,
    clamped to ``[0, h - 1]``, and interpolates its two neighbours; done as two
    matrix products ``R_h @ img @ R_w.T`` with interpolation matrices (size, h).
    """
    def matrix(n_in):
        s = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        i0 = np.floor(s).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        r = np.zeros((size, n_in))
        np.add.at(r, (np.arange(size), i0), 1 - (s - i0))
        np.add.at(r, (np.arange(size), i1), s - i0)
        return r  # (size, n_in), rows sum to 1

    _, h, w = images.shape
    return np.einsum("ph,nhw,qw->npq", matrix(h), images.astype(np.float64), matrix(w))  # (n, size, size)


def _index_hash(i: np.ndarray) -> np.ndarray:
    """splitmix64 of each index: a fixed pseudo-random key independent of any RNG library."""
    z = i.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def digits_split(labels: np.ndarray, test_fraction: float = 0.2) -> Tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split: ``(train_idx, test_idx)``, both sorted.

    In each class the ``round(test_fraction * count)`` samples with the smallest
    ``splitmix64(index)`` go to the test set, so the split never depends on a seed.
    """
    labels = np.asarray(labels)
    keys = _index_hash(np.arange(len(labels)))
    test = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        test.append(idx[np.argsort(keys[idx], kind="stable")[: int(round(test_fraction * len(idx)))]])
    test_idx = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test_idx), test_idx


def digits(*, size: int = 28, normalize: bool = True) -> Dataset:
    """scikit-learn's bundled 8x8 digits upsampled to ``size`` x ``size`` (1,438 train / 359 test)."""
    from sklearn.datasets import load_digits

    _checks.positive_int(size, "size"), _checks.boolean(normalize, "normalize")
    d = load_digits()
    x = bilinear_resize(d.images, size)[..., None]  # (1797, size, size, 1), values in [0, 16]
    y = d.target.astype(np.int32)
    tr, te = digits_split(y)
    return _finish("digits", x[tr], y[tr], x[te], y[te], 10, 16.0, normalize)


# ----------------------------------------------------------------------------- file datasets
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_names(name: str) -> list:
    """The file names an IDX file goes by: the official ``train-images-idx3-ubyte`` and the
    common re-distributed ``train-images.idx3-ubyte``, each raw or gzipped."""
    dotted = name.replace("-idx", ".idx")
    return [name, name + ".gz", dotted, dotted + ".gz"]


def _load_idx_set(name, dirs, normalize, strict) -> Dataset:
    parts, size, first = {}, None, None
    for split, (img_name, lab_name) in _IDX_FILES.items():
        img_path = find_file(dirs, _idx_names(img_name))
        lab_path = find_file(dirs, _idx_names(lab_name))
        images = read_idx(img_path, magic=IDX_IMAGES_MAGIC)
        labels = read_idx(lab_path, magic=IDX_LABELS_MAGIC)
        if images.dtype != np.uint8 or min(images.shape[1:]) < 1:
            raise DataError(f"{img_path}: expected uint8 images (n, h, w), got {images.dtype} {images.shape}")
        if size is not None and images.shape[1:] != size:
            raise DataError(f"{img_path}: test images are {images.shape[1]}x{images.shape[2]} but the train images "
                            f"are {size[0]}x{size[1]} ({first})")
        size, first = images.shape[1:], img_path
        if len(images) != len(labels):
            raise DataError(f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} labels")
        want = 60000 if split == "train" else 10000
        if strict and len(images) != want:
            raise DataError(f"{img_path}: expected the official {want} {split} images, the file holds "
                            f"{len(images)} (pass strict=False for a subset)")
        parts[split] = (images[..., None], check_labels(lab_path, labels, 10))  # (n, h, w, 1)
    return _finish(name, *parts["train"], *parts["test"], 10, 255.0, normalize)


def _load_cifar10(base, normalize, strict) -> Dataset:
    py_dirs = [os.path.join(base, "cifar-10-batches-py"), base, os.path.join(base, "cifar10", "cifar-10-batches-py")]
    bin_dirs = [os.path.join(base, "cifar-10-batches-bin"), base, os.path.join(base, "cifar10", "cifar-10-batches-bin")]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    records = 10000 if strict else None
    for dirs, ext, reader in ((py_dirs, "", read_cifar_pickle), (bin_dirs, ".bin", read_cifar_binary)):
        if any(os.path.isfile(os.path.join(d, n + ext)) for d in dirs for n in names):  # this format's files
            paths = [find_file(dirs, [n + ext]) for n in names]  # a missing batch is named, not skipped
            break
    else:
        raise MissingDataError(f"CIFAR-10 not found under {base}: neither the python batches "
                               f"(cifar-10-batches-py/data_batch_1..5, test_batch) nor the binary ones "
                               f"(cifar-10-batches-bin/data_batch_1..5.bin, test_batch.bin)")
    batches_ = [reader(p, records=records) for p in paths]
    x_tr = np.concatenate([b[0] for b in batches_[:5]])
    y_tr = np.concatenate([b[1] for b in batches_[:5]])
    return _finish("cifar10", x_tr, y_tr, *batches_[5], 10, 255.0, normalize)


# ----------------------------------------------------------------------------- synthetic
def synthetic(*, num_train: int = 512, num_test: int = 256, num_classes: int = 4, size: int = 16,
              channels: int = 1, patch: int = 4, noise: float = 0.3, seed: int = 0,
              normalize: bool = True) -> Dataset:
    """Gaussian-noise images whose class is a bright ``patch`` x ``patch`` square at a class location.

    Class ``k``'s square sits at cell ``k`` (row-major) of a grid with stride
    ``2 * patch`` starting ``patch // 2`` from the border; only that square
    carries information, so ``evidence[k]`` (the square, bool (size, size)) is
    where a faithful saliency map of class ``k`` should put its mass. Pixels:
    ``noise * N(0, 1)`` everywhere, plus 1 on the class square, in every channel.

    Raises:
      ValueError: a size too small to fit ``num_classes`` separated squares, or a
        non-positive count.
    """
    for arg, v in (("num_train", num_train), ("num_test", num_test), ("num_classes", num_classes),
                   ("size", size), ("channels", channels), ("patch", patch)):
        _checks.positive_int(v, arg)
    noise = _checks.non_negative_float(noise, "noise", hint="the std of the pixel noise")
    _checks.boolean(normalize, "normalize")
    starts = list(range(patch // 2, size - patch + 1, 2 * patch))
    if num_classes < 2 or num_classes > len(starts) ** 2:
        raise ValueError(f"num_classes must be in [2, {len(starts) ** 2}] for size={size}, patch={patch} "
                         f"(squares on a stride-{2 * patch} grid); got {num_classes}")
    evidence = np.zeros((num_classes, size, size), bool)
    for k in range(num_classes):
        r, c = starts[k // len(starts)], starts[k % len(starts)]
        evidence[k, r : r + patch, c : c + patch] = True
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
        x = noise * rng.standard_normal((n, size, size, channels)) + evidence[y][..., None]
        return x, y  # (n, size, size, channels)

    (x_tr, y_tr), (x_te, y_te) = make(num_train), make(num_test)
    return _finish("synthetic", x_tr, y_tr, x_te, y_te, num_classes, 1.0, normalize, evidence)


# ----------------------------------------------------------------------------- batching
@functools.partial(jax.jit, static_argnums=2)
def _permutation(seed, epoch, n):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
    return jax.random.permutation(key, n).astype(jnp.int32)


def epoch_permutation(seed, epoch, n: int) -> Array:
    """The order of epoch ``epoch``: a permutation of ``range(n)``, int32 (n,).

    A pure function of ``(seed, epoch, n)``: ``permutation(fold_in(PRNGKey(seed),
    epoch), n)``. ``seed`` and ``epoch`` may be traced (usable inside ``jit``);
    ``n`` must be a static int.
    """
    _checks.positive_int(n, "n")
    for arg, v in (("seed", seed), ("epoch", epoch)):
        if isinstance(v, (int, np.integer)) and not 0 <= v < 2**32:
            raise ValueError(f"{arg} must be in [0, 2**32), got {v}")
    if isinstance(seed, (int, np.integer)):
        seed = np.uint32(seed)
    if isinstance(epoch, (int, np.integer)):
        epoch = np.uint32(epoch)
    return _permutation(seed, epoch, int(n))


def steps_per_epoch(n: int, batch_size: int, *, drop_last: bool = True) -> int:
    """Batches per epoch: ``n // batch_size`` (training) or ``ceil(n / batch_size)`` (evaluation)."""
    _checks.non_negative_int(n, "n", hint="examples")
    _checks.positive_int(batch_size, "batch_size")
    return n // batch_size if drop_last else -(-n // batch_size)


def _check_xy(x, y, batch_size):
    if y is not None and len(x) != len(y):
        raise ValueError(f"x and y must hold the same number of examples, got {len(x)} and {len(y)}")
    steps_per_epoch(len(x), batch_size)


class Chunk(NamedTuple):
    """``k`` consecutive training batches of one epoch, starting at batch index ``first``."""

    first: int  # index of the first batch in the epoch
    k: int  # number of batches: 1, or steps_per_call
    x: np.ndarray  # (batch_size, ...) for k == 1, else (k, batch_size, ...)
    y: np.ndarray  # (batch_size, ...) for k == 1, else (k, batch_size, ...)


def epoch_chunks(x, y, batch_size: int, *, seed: int, epoch: int, start: int = 0, stop: Optional[int] = None,
                 steps_per_call: int = 1) -> Iterator[Chunk]:
    """The training batches of one epoch, grouped ``steps_per_call`` at a time: the one batching path.

    The epoch's order is ``epoch_permutation(seed, epoch, n)``; batch ``b`` is the rows
    ``order[b * batch_size : (b + 1) * batch_size]`` (the remainder ``n % batch_size`` is
    dropped, a different one each epoch). Batches ``start .. stop - 1`` are yielded (``stop``
    None: ``steps_per_epoch``), in chunks of ``steps_per_call`` stacked batches while that many
    remain and single batches after that, so a resumed or truncated epoch visits exactly the
    batches an uninterrupted one would. ``fcnn.train.fit`` consumes this; ``batches`` is the
    one-batch-at-a-time view of it.
    """
    _check_xy(x, y, batch_size)
    _checks.positive_int(steps_per_call, "steps_per_call")
    n = len(x)
    if batch_size > n:
        raise ValueError(f"batch_size must be <= the number of examples ({n}), got {batch_size}")
    spe = n // batch_size
    stop = spe if stop is None else min(int(stop), spe)
    order = np.asarray(epoch_permutation(seed, epoch, n))
    b = int(start)
    while b < stop:
        k = steps_per_call if stop - b >= steps_per_call else 1
        idx = order[b * batch_size : (b + k) * batch_size]
        xb, yb = x[idx], y[idx]
        if k > 1:
            xb, yb = xb.reshape((k, batch_size) + xb.shape[1:]), yb.reshape((k, batch_size) + yb.shape[1:])
        yield Chunk(b, k, xb, yb)
        b += k


def batches(x, y, batch_size: int, *, seed: int, epoch: int, start: int = 0) -> Iterator[Tuple[Array, Array]]:
    """Shuffled training batches of exactly ``batch_size`` examples; the remainder is dropped.

    Args:
      x: (n, ...) images; y: (n,) labels (numpy or device arrays).
      seed, epoch: fix the order, ``epoch_permutation(seed, epoch, n)``.
      start: first batch to yield (resume in the middle of an epoch).

    Yields:
      ``(x[idx], y[idx])``, (batch_size, ...) each (``epoch_chunks`` one batch at a time).
    """
    for chunk in epoch_chunks(x, y, batch_size, seed=seed, epoch=epoch, start=start):
        yield chunk.x, chunk.y


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """``a`` (m, ...) with zero rows appended up to (rows, ...)."""
    return a if len(a) == rows else np.concatenate([a, np.zeros((rows - len(a),) + a.shape[1:], a.dtype)])


def eval_batches(x, y, batch_size: int) -> Iterator[Tuple[Array, Optional[Array], Array]]:
    """In-order evaluation batches of fixed shape; the last is zero-padded.

    ``y`` may be None (prediction without labels); the yielded ``yb`` is then None.

    Yields:
      ``(xb, yb, weight)``: (batch_size, ...), (batch_size, ...) and float32 (batch_size,) with 1 for
      real examples and 0 for padding: summing ``weight * per_example_metric`` counts each once.
    """
    _check_xy(x, y, batch_size)
    x, y = np.asarray(x), (None if y is None else np.asarray(y))
    for s in range(0, len(x), batch_size):
        xb = x[s : s + batch_size]
        weight = (np.arange(batch_size) < len(xb)).astype(np.float32)
        yb = None if y is None else _pad_rows(y[s : s + batch_size], batch_size)
        yield _pad_rows(xb, batch_size), yb, weight


# ----------------------------------------------------------------------------- augmentation
def random_flip(key: Array, x: Array) -> Array:
    """Mirror each image left-right with probability 1/2. x: (n, h, w, c) -> same shape."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
    return jnp.where(flip[:, None, None, None], jnp.flip(x, axis=2), x)


def random_crop(key: Array, x: Array, padding: int, *, pad_value: float = 0.0) -> Array:
    """Pad each image by ``padding`` on every side, then cut a random (h, w) window.

    Each image's window offset (dy, dx) is uniform in ``[0, 2 * padding]^2``, so the
    content moves by up to ``padding`` pixels; ``padding=0`` is the identity.
    x: (n, h, w, c) -> (n, h, w, c).
    """
    _checks.non_negative_int(padding, "padding")
    if padding == 0:
        return x
    n, h, w, c = x.shape
    p = padding
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=pad_value)  # (n, h+2p, w+2p, c)
    offsets = jax.random.randint(key, (n, 2), 0, 2 * p + 1)  # (n, 2): (dy, dx)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))  # noqa: E731
    return jax.vmap(crop)(xp, offsets)


def augment(key: Array, x: Array, *, crop_padding: int = 0, flip: bool = False) -> Array:
    """``random_crop`` (when ``crop_padding > 0``) then ``random_flip`` (when ``flip``); jittable.

    Flipping suits CIFAR-10, not digits (a mirrored 2 is no digit).
    """
    k_crop, k_flip = jax.random.split(key)
    x = random_crop(k_crop, x, crop_padding)
    return random_flip(k_flip, x) if flip else x


def to_device(dataset: Dataset, device=None) -> Dataset:
    """The dataset with its image and label arrays put on ``device`` (default device if None)."""
    put = functools.partial(jax.device_put, device=device)
    return dataset._replace(x_train=put(dataset.x_train), y_train=put(dataset.y_train),
                            x_test=put(dataset.x_test), y_test=put(dataset.y_test))
