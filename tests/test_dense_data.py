"""Tests for fcnn.dense_data: each task's targets derived from the real digits, checked against
the definitions computed here from sklearn's images (the same bilinear upsampling), the on-device
noise hook (new per key, its sigma measured), and the fixed noisy test set."""
import jax
import numpy as np
import pytest

from fcnn import data, dense_data, tasks


@pytest.fixture(scope="module")
def clean():
    return data.load("digits", normalize=False)  # pixels in [0, 1]


def test_segment_labels_are_background_or_class_plus_one(clean):
    ds = dense_data.load("segment")
    assert ds.y_train.shape == (1438, 28, 28) and ds.y_train.dtype == np.int32 and ds.num_classes == 11
    for x, y, lab in ((clean.x_train, ds.y_train, clean.y_train), (clean.x_test, ds.y_test, clean.y_test)):
        ink = x[..., 0] >= 0.5
        want = np.zeros(ink.shape, np.int32)
        for i in range(len(x)):  # the definition, row by row
            want[i][ink[i]] = lab[i] + 1
        np.testing.assert_array_equal(y, want)
    # every digit has ink and a background; each class 1..10 appears in the test set
    assert (ds.y_test > 0).any(axis=(1, 2)).all() and (ds.y_test == 0).any(axis=(1, 2)).all()
    assert set(np.unique(ds.y_test)) == set(range(11))
    # inputs normalised with the train stats (the same images)
    np.testing.assert_allclose(ds.x_test * ds.std + ds.mean, clean.x_test, atol=1e-5)
    assert abs(float(ds.x_train.mean())) < 1e-4 and float(ds.x_train.std()) == pytest.approx(1, abs=1e-4)


def test_segment_labels_hand_case():
    x = np.array([[0.0, 0.49], [0.5, 1.0]], np.float32)[None, :, :, None]
    np.testing.assert_array_equal(dense_data.segment_labels(x, [7]), [[[0, 0], [8, 8]]])


def test_denoise_clean_targets_fixed_test_noise_and_the_hook(clean):
    ds = dense_data.load("denoise")
    np.testing.assert_array_equal(ds.x_train, clean.x_train)  # train noise is not in the data...
    np.testing.assert_array_equal(ds.y_train, clean.x_train)
    np.testing.assert_array_equal(ds.y_test, clean.x_test)
    noise = ds.x_test - clean.x_test
    assert noise.std() == pytest.approx(0.5, rel=0.01) and abs(noise.mean()) < 0.005
    np.testing.assert_array_equal(dense_data.load("denoise").x_test, ds.x_test)  # fixed by noise_seed
    assert not np.array_equal(dense_data.load("denoise", noise_seed=1).x_test, ds.x_test)
    # ...it is drawn by the hook, on device, new for every key
    a = np.asarray(ds.augment(jax.random.PRNGKey(1), ds.x_train[:64]))
    b = np.asarray(ds.augment(jax.random.PRNGKey(2), ds.x_train[:64]))
    assert not np.array_equal(a, b)
    assert (a - ds.x_train[:64]).std() == pytest.approx(0.5, rel=0.02)
    # the noisy input's own PSNR: 10 log10(1 / mse), mse from the data here
    mse = np.mean((ds.x_test.astype(np.float64) - clean.x_test) ** 2)
    assert dense_data.input_psnr(ds) == pytest.approx(10 * np.log10(1 / mse), abs=1e-4)
    assert 5.9 < dense_data.input_psnr(ds) < 6.2


def test_reconstruct_and_regress(clean):
    rec = dense_data.load("reconstruct")
    np.testing.assert_array_equal(rec.x_test, rec.y_test)
    np.testing.assert_array_equal(rec.y_train, clean.x_train)
    reg = dense_data.load("regress")
    assert reg.y_train.shape == (1438, 1) and reg.num_classes == 1
    np.testing.assert_allclose(reg.y_test[:, 0], clean.x_test.reshape(len(clean.x_test), -1).mean(1), rtol=1e-6)
    for t, ds in (("reconstruct", rec), ("regress", reg)):  # each task accepts its targets
        task = tasks.get_task(t)
        task.check_targets((len(ds.y_train),) + ds.y_train.shape[1:], ds.y_train)


def test_classify_is_data_load():
    a, b = dense_data.load("classify"), data.load("digits")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)


@pytest.mark.parametrize("kw,err,match", [
    (dict(task="detect"), ValueError, "task must be one of classify, segment"),
    (dict(task="denoise", sigma=-0.1), ValueError, "sigma"),
    (dict(task="denoise", noise_seed=-1), ValueError, r"noise_seed must be an int in \[0, 4294967296\), got -1"),
    (dict(task="denoise", noise_seed=2**63), ValueError, r"noise_seed must be an int in \[0, 4294967296\)"),  # was JAX's OverflowError
])
def test_bad_arguments(kw, err, match):
    with pytest.raises(err, match=match):
        dense_data.load(**kw)
