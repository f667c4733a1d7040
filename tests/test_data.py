"""Tests for fcnn.data: datasets loaded from files in the real formats (tests/_formats.py
writes them), damaged dataset directories (each error names the file), the bundled digits,
batching and augmentation. The readers alone are tested in test_datafiles.py.
"""
import hashlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import data
from _formats import _cifar_reference, idx_bytes, write, write_cifar_bin, write_cifar_py, write_mnist
from fcnn.datafiles import DataError, MissingDataError


def unnormalise(ds, x):
    return np.asarray(x) * ds.std + ds.mean


# ----------------------------------------------------------------------------- IDX
def test_mnist_round_trip_raw_and_gz(tmp_path):
    sets = write_mnist(str(tmp_path))
    ds = data.load("mnist", data_dir=str(tmp_path), strict=False)
    img, lab = sets["train"]
    assert ds.x_train.shape == (7, 28, 28, 1) and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(unnormalise(ds, ds.x_train)[..., 0], img / 255.0, atol=1e-5)
    np.testing.assert_allclose(unnormalise(ds, ds.x_test)[..., 0], sets["t10k"][0] / 255.0, atol=1e-5)
    np.testing.assert_array_equal(ds.y_train, lab)
    np.testing.assert_array_equal(ds.y_test, sets["t10k"][1])
    assert ds.y_train.dtype == np.int32 and ds.num_classes == 10 and ds.name == "mnist"
    np.testing.assert_allclose(ds.mean, [(img / 255.0).mean()], rtol=1e-5)
    np.testing.assert_allclose(ds.std, [(img / 255.0).std()], rtol=1e-5)


def test_fashion_mnist_in_a_named_subdirectory(tmp_path):
    sets = write_mnist(str(tmp_path / "fashion-mnist"), gz=(True,) * 4, seed=3)
    ds = data.load("fashion-mnist", data_dir=str(tmp_path), strict=False, normalize=False)
    np.testing.assert_allclose(ds.x_test[..., 0], sets["t10k"][0] / 255.0, atol=1e-6)
    assert ds.name == "fashion-mnist" and ds.mean.tolist() == [0.0] and ds.std.tolist() == [1.0]


def _damage(tmp_path, which, payload):
    write_mnist(str(tmp_path))
    path = os.path.join(str(tmp_path), which)
    write(path, payload)
    return path


IMG = "train-images-idx3-ubyte"
LAB = "t10k-labels-idx1-ubyte.gz"
IMAGES_3 = np.zeros((7, 28, 28), np.uint8)


@pytest.mark.parametrize("which,payload,message", [
    (IMG, idx_bytes(IMAGES_3, magic=0x00000801), "bad IDX magic number 0x00000801, expected 0x00000803"),
    (IMG, idx_bytes(IMAGES_3)[:-1], "truncated"),
    (IMG, idx_bytes(IMAGES_3) + b"\0", "trailing bytes"),
    (IMG, idx_bytes(IMAGES_3)[:10], "truncated IDX header"),
    (IMG, b"\0\0", "too short"),
    (IMG, idx_bytes(np.zeros((7, 27, 28), np.uint8)), "the train images are 27x28"),
    (IMG, idx_bytes(np.zeros((6, 28, 28), np.uint8)), "holds 6 images but"),
    (LAB, idx_bytes(np.array([0, 1, 10, 2, 3])), "label 10 at index 2 is out of range [0, 10)"),
    (LAB, idx_bytes(np.zeros((5, 28, 28), np.uint8)), "expected 0x00000801"),
])
def test_damaged_idx_files_raise_naming_the_file(tmp_path, which, payload, message):
    path = _damage(tmp_path, which, payload)
    with pytest.raises(DataError, match=None) as e:
        data.load("mnist", data_dir=str(tmp_path), strict=False)
    assert path in str(e.value) and message in str(e.value), str(e.value)


def test_truncated_gzip_raises_naming_the_file(tmp_path):
    write_mnist(str(tmp_path))
    path = os.path.join(str(tmp_path), LAB)
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as e:
        data.load("mnist", data_dir=str(tmp_path), strict=False)
    assert path in str(e.value)


def test_missing_file_lists_the_paths_tried(tmp_path):
    write_mnist(str(tmp_path))
    os.remove(os.path.join(str(tmp_path), "t10k-images-idx3-ubyte"))
    with pytest.raises(MissingDataError, match="t10k-images-idx3-ubyte.gz") as e:
        data.load("mnist", data_dir=str(tmp_path), strict=False)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)


def test_idx_files_named_with_a_dot_are_read_alike(tmp_path):
    # "train-images.idx3-ubyte" is how many re-distributions name the same IDX files
    sets = write_mnist(str(tmp_path / "dash"), gz=(False,) * 4)
    os.makedirs(tmp_path / "dot")
    for f in os.listdir(tmp_path / "dash"):
        os.rename(tmp_path / "dash" / f, tmp_path / "dot" / f.replace("-idx", ".idx"))
    ds = data.load("mnist", data_dir=str(tmp_path / "dot"), strict=False, normalize=False)
    np.testing.assert_allclose(ds.x_train[..., 0], sets["train"][0] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(ds.y_test, sets["t10k"][1])


def test_a_self_consistent_idx_subset_of_another_size_loads_with_a_note(tmp_path):
    """IDX is a general format: 7 + 5 images of 20x24 load by default; the note says they are not MNIST's."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 7), ("t10k", 5)):
        write(str(tmp_path / f"{split}-images-idx3-ubyte"), idx_bytes(rng.integers(0, 256, (n, 20, 24), dtype=np.uint8)))
        write(str(tmp_path / f"{split}-labels-idx1-ubyte"), idx_bytes(rng.integers(0, 10, n, dtype=np.uint8)))
    ds = data.load("mnist", data_dir=str(tmp_path))
    assert ds.x_train.shape == (7, 20, 24, 1) and ds.x_test.shape == (5, 20, 24, 1)
    assert data.official_size_note(ds) == ("note: mnist has 7 train / 5 test images, not the official 60000 / 10000 "
                                           "(a subset or another dataset in the same format)")
    assert data.official_size_note(data.load("digits")) is None


def test_strict_requires_the_official_sizes(tmp_path):
    write_mnist(str(tmp_path))
    with pytest.raises(DataError, match="expected the official 60000 train images, the file holds 7"):
        data.load("mnist", data_dir=str(tmp_path), strict=True)


def test_full_size_mnist_loads_in_seconds(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60000), ("t10k", 10000)):
        write(str(tmp_path / f"{split}-images-idx3-ubyte"), idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
        write(str(tmp_path / f"{split}-labels-idx1-ubyte"), idx_bytes(rng.integers(0, 10, n, dtype=np.uint8)))
    t = time.perf_counter()
    ds = data.load("mnist", data_dir=str(tmp_path))
    seconds = time.perf_counter() - t
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert seconds < 10.0, f"loading MNIST-size data took {seconds:.1f}s"


# ----------------------------------------------------------------------------- CIFAR-10
@pytest.mark.parametrize("version", ["py", "bin"])
def test_cifar10_round_trip(tmp_path, version):
    d = str(tmp_path / f"cifar-10-batches-{version}")
    parts = (write_cifar_py if version == "py" else write_cifar_bin)(d)
    ds = data.load("cifar10", data_dir=str(tmp_path), strict=False, normalize=False)
    x_tr = np.concatenate([_cifar_reference(x) for x, _ in parts[:5]])
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(ds.x_train, x_tr / 255.0, atol=1e-6)
    np.testing.assert_allclose(ds.x_test, _cifar_reference(parts[5][0]) / 255.0, atol=1e-6)
    np.testing.assert_array_equal(ds.y_train, sum((y for _, y in parts[:5]), []))
    np.testing.assert_array_equal(ds.y_test, parts[5][1])
    assert ds.y_train.dtype == np.int32


def test_cifar10_per_channel_normalisation(tmp_path):
    write_cifar_py(str(tmp_path))  # directly in data_dir
    ds = data.load("cifar10", data_dir=str(tmp_path), strict=False)
    assert ds.mean.shape == (3,) and ds.std.shape == (3,)
    np.testing.assert_allclose(ds.x_train.reshape(-1, 3).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.reshape(-1, 3).std(0), 1, atol=1e-5)


def test_cifar_strict_record_count(tmp_path):
    write_cifar_bin(str(tmp_path / "cifar-10-batches-bin"))
    with pytest.raises(DataError, match="data_batch_1.bin: expected 10000 records, the file holds 3"):
        data.load("cifar10", data_dir=str(tmp_path), strict=True)


@pytest.mark.parametrize("version, missing", [("py", "data_batch_3"), ("py", "test_batch"),
                                              ("bin", "data_batch_5.bin")])
def test_cifar10_with_one_batch_missing_names_that_file(tmp_path, version, missing):
    """Once one format's files are there, a missing batch is named (not a fall-back to the other format
    and a 'CIFAR-10 not found' that lists the other format's first file)."""
    d = tmp_path / f"cifar-10-batches-{version}"
    (write_cifar_py if version == "py" else write_cifar_bin)(str(d))
    os.remove(d / missing)
    with pytest.raises(MissingDataError, match=rf"dataset file not found; looked for: .*{missing}$") as err:
        data.load("cifar10", data_dir=str(tmp_path))
    assert "CIFAR-10 not found" not in str(err.value)
    with pytest.raises(MissingDataError, match=r"CIFAR-10 not found under .*: neither the python batches"):
        data.load("cifar10", data_dir=str(tmp_path / "empty"))


def test_load_and_batching_refuse_bad_arguments_naming_them():
    with pytest.raises(TypeError, match=r"^data_dir must be a path \(a str\) or None, got 5 \(int\)$"):
        data.load("mnist", data_dir=5)
    with pytest.raises(TypeError, match=r"^normalize must be a bool, got 'no'$"):
        data.load("synthetic", normalize="no")
    with pytest.raises(TypeError, match=r"^strict must be a bool"):
        data.load("mnist", strict=1)
    for bad in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match=r"^noise must be a non-negative float \(the std of the pixel noise\)"):
            data.synthetic(noise=bad)
    assert np.all(data.synthetic(noise=0.0, normalize=False).x_train[0] >= 0)  # noise 0: squares on zeros
    with pytest.raises(ValueError, match=r"^n must be a non-negative int \(examples\), got -5$"):
        data.steps_per_epoch(-5, 2)
    assert data.steps_per_epoch(0, 2) == 0 and data.steps_per_epoch(5, 2, drop_last=False) == 3


# ----------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_digits_sizes_and_split(digits):
    from sklearn.datasets import load_digits

    y = load_digits().target
    assert len(y) == 1797
    assert digits.x_train.shape == (1438, 28, 28, 1) and digits.x_test.shape == (359, 28, 28, 1)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32
    assert set(digits.y_train.tolist()) == set(range(10)) == set(digits.y_test.tolist())
    counts, test_counts = np.bincount(y), np.bincount(digits.y_test)
    np.testing.assert_array_equal(test_counts, np.round(0.2 * counts).astype(int))  # stratified
    tr, te = data.digits_split(y)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 1797


def test_digits_split_is_fixed_forever(digits):
    from sklearn.datasets import load_digits

    y = load_digits().target
    _, te = data.digits_split(y)
    _, te2 = data.digits_split(y)
    np.testing.assert_array_equal(te, te2)
    # pinned: a changed split would silently change every reported test accuracy
    assert hashlib.sha256(te.astype("<i8").tobytes()).hexdigest()[:16] == PINNED_SPLIT
    np.testing.assert_array_equal(digits.y_test, y[te])


PINNED_SPLIT = "d32a8589aae1dfdd"  # sha256 of the 359 sorted test indices (3, 10, 18, 21, ...)


def test_digits_values_against_jax_resize(digits):
    from sklearn.datasets import load_digits

    d = load_digits()
    tr, te = data.digits_split(d.target)
    ref = jax.image.resize(jnp.asarray(d.images[te], jnp.float64) / 16.0, (len(te), 28, 28), "linear")
    np.testing.assert_allclose(unnormalise(digits, digits.x_test)[..., 0], np.asarray(ref), atol=1e-5)
    train = np.asarray(jax.image.resize(jnp.asarray(d.images[tr], jnp.float64) / 16.0, (len(tr), 28, 28), "linear"))
    np.testing.assert_allclose(digits.mean, [train.mean()], rtol=1e-5)
    np.testing.assert_allclose(digits.std, [train.std()], rtol=1e-5)
    assert abs(float(digits.x_train.mean())) < 1e-5 and abs(float(digits.x_train.std()) - 1) < 1e-5


def test_bilinear_resize_against_jax():
    x = np.random.default_rng(0).random((3, 5, 7))
    for size in (5, 9, 28):
        x_sq = x[:, :5, :5]
        ref = jax.image.resize(jnp.asarray(x_sq), (3, size, size), "linear")
        np.testing.assert_allclose(data.bilinear_resize(x_sq, size), np.asarray(ref), atol=1e-12)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_evidence_and_determinism():
    ds = data.synthetic(num_train=64, num_test=32, seed=1, normalize=False)
    assert ds.evidence.shape == (4, 16, 16) and ds.evidence.dtype == bool
    assert ds.evidence.sum(axis=(1, 2)).tolist() == [16] * 4
    assert not np.any(ds.evidence.sum(0) > 1)  # regions do not overlap
    for k in range(4):  # the class square is bright, everything else is zero-mean noise
        xk = ds.x_train[ds.y_train == k, ..., 0]
        assert xk[:, ds.evidence[k]].mean() > 0.8
        assert abs(xk[:, ~ds.evidence[k]].mean()) < 0.1
    assert np.bincount(ds.y_train).tolist() == [16] * 4
    again = data.synthetic(num_train=64, num_test=32, seed=1, normalize=False)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    other = data.synthetic(num_train=64, num_test=32, seed=2, normalize=False)
    assert not np.array_equal(ds.x_train, other.x_train)
    assert data.load("synthetic").x_train.shape == (512, 16, 16, 1)


def test_synthetic_rejects_too_many_classes():
    with pytest.raises(ValueError, match=r"num_classes must be in \[2, 4\] for size=16, patch=4"):
        data.synthetic(num_classes=5)
    with pytest.raises(ValueError, match="num_train must be a positive int"):
        data.synthetic(num_train=0)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="name must be one of digits, mnist"):
        data.load("imagenet")


# ----------------------------------------------------------------------------- batching
def test_epoch_permutation_is_a_pure_permutation():
    p = np.asarray(data.epoch_permutation(3, 5, 101))
    assert sorted(p.tolist()) == list(range(101)) and p.dtype == np.int32
    np.testing.assert_array_equal(p, np.asarray(data.epoch_permutation(3, 5, 101)))
    assert not np.array_equal(p, np.asarray(data.epoch_permutation(3, 6, 101)))
    assert not np.array_equal(p, np.asarray(data.epoch_permutation(4, 5, 101)))
    jitted = jax.jit(lambda s, e: data.epoch_permutation(s, e, 101))(jnp.uint32(3), jnp.uint32(5))
    np.testing.assert_array_equal(p, np.asarray(jitted))
    with pytest.raises(ValueError, match="n must be a positive int"):
        data.epoch_permutation(0, 0, 0)


def test_batches_fixed_shapes_deterministic_and_disjoint():
    x = np.arange(103 * 2, dtype=np.float32).reshape(103, 2)
    y = np.arange(103, dtype=np.int32)
    got = list(data.batches(x, y, 10, seed=7, epoch=2))
    assert len(got) == data.steps_per_epoch(103, 10) == 10
    assert all(xb.shape == (10, 2) and yb.shape == (10,) for xb, yb in got)
    seen = np.concatenate([yb for _, yb in got])
    np.testing.assert_array_equal(seen, np.asarray(data.epoch_permutation(7, 2, 103))[:100])
    assert len(set(seen.tolist())) == 100
    np.testing.assert_array_equal(got[4][0][:, 0], 2 * got[4][1])  # x and y stay paired
    again = [yb for _, yb in data.batches(x, y, 10, seed=7, epoch=2)]
    assert all(np.array_equal(a, b) for a, b in zip(again, (yb for _, yb in got)))
    resumed = [yb for _, yb in data.batches(x, y, 10, seed=7, epoch=2, start=6)]
    assert len(resumed) == 4 and all(np.array_equal(a, b[1]) for a, b in zip(resumed, got[6:]))
    with pytest.raises(ValueError, match="same number of examples"):
        next(data.batches(x, y[:5], 10, seed=0, epoch=0))


def test_eval_batches_cover_every_example_once():
    x = np.random.default_rng(0).random((23, 3, 3, 1)).astype(np.float32)
    y = np.arange(23, dtype=np.int32)
    got = list(data.eval_batches(x, y, 8))
    assert len(got) == data.steps_per_epoch(23, 8, drop_last=False) == 3
    assert all(xb.shape == (8, 3, 3, 1) and yb.shape == (8,) and w.shape == (8,) for xb, yb, w in got)
    w = np.concatenate([w for _, _, w in got])
    assert w.sum() == 23 and w.tolist() == [1.0] * 23 + [0.0] * 1
    np.testing.assert_array_equal(np.concatenate([xb for xb, _, _ in got])[:23], x)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb, _ in got])[:23], y)


def test_steps_per_epoch():
    assert data.steps_per_epoch(100, 32) == 3 and data.steps_per_epoch(100, 32, drop_last=False) == 4
    assert data.steps_per_epoch(96, 32, drop_last=False) == 3
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        data.steps_per_epoch(10, 0)


# ----------------------------------------------------------------------------- augmentation
X = np.random.default_rng(0).random((16, 5, 6, 2)).astype(np.float32)


def test_flip_twice_is_identity_and_flips_by_rows():
    key = jax.random.PRNGKey(0)
    once = np.asarray(data.random_flip(key, X))
    np.testing.assert_array_equal(np.asarray(data.random_flip(key, once)), X)
    flipped = [i for i in range(16) if not np.array_equal(once[i], X[i])]
    assert 0 < len(flipped) < 16
    for i in range(16):
        np.testing.assert_array_equal(once[i], X[i, :, ::-1] if i in flipped else X[i])


def test_crop_padding_zero_is_identity():
    np.testing.assert_array_equal(np.asarray(data.random_crop(jax.random.PRNGKey(1), X, 0)), X)


def test_crop_is_a_window_of_the_padded_image():
    p = 2
    out = np.asarray(jax.jit(lambda k, x: data.random_crop(k, x, p))(jax.random.PRNGKey(2), X))
    padded = np.pad(X, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = set()
    for i in range(16):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if np.array_equal(out[i], padded[i, dy : dy + 5, dx : dx + 6])]
        assert hits, f"image {i} is not a window of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets are random per image
    with pytest.raises(ValueError, match="padding must be a non-negative int"):
        data.random_crop(jax.random.PRNGKey(0), X, -1)


def test_augment_composes_and_is_keyed():
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(np.asarray(data.augment(key, X)), X)
    a = np.asarray(data.augment(key, X, crop_padding=1, flip=True))
    np.testing.assert_array_equal(a, np.asarray(data.augment(key, X, crop_padding=1, flip=True)))
    k_crop, k_flip = jax.random.split(key)
    ref = data.random_flip(k_flip, data.random_crop(k_crop, X, 1))
    np.testing.assert_array_equal(a, np.asarray(ref))


def test_to_device_keeps_values():
    ds = data.synthetic(num_train=8, num_test=4)
    dev = data.to_device(ds)
    assert isinstance(dev.x_train, jax.Array)
    np.testing.assert_array_equal(np.asarray(dev.x_train), ds.x_train)
    np.testing.assert_array_equal(np.asarray(dev.y_test), ds.y_test)
    # batching device arrays gathers on device and gives the same batches as the host arrays
    host = list(data.batches(ds.x_train, ds.y_train, 4, seed=1, epoch=0))
    on_dev = list(data.batches(dev.x_train, dev.y_train, 4, seed=1, epoch=0))
    assert isinstance(on_dev[0][0], jax.Array) and len(on_dev) == len(host) == 2  # zip below must not stop short
    for (hx, hy), (dx, dy) in zip(host, on_dev):
        np.testing.assert_array_equal(np.asarray(dx), hx)
        np.testing.assert_array_equal(np.asarray(dy), hy)
