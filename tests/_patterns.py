"""The localisation data set and detector network shared by test_attribution.py and test_viz.py.

The detector is trained once per session (conftest's ``trained_detector`` fixture calls
``train_detector``).
"""
import contextlib
import warnings
from types import SimpleNamespace

import matplotlib.image
import numpy as np

from fcnn.attribution import BlankMapWarning
from fcnn.combinators import serial
from fcnn.layers import Conv2D, Flatten, MaxPool2D, Relu
from fcnn.run import TrainConfig
from fcnn.train import fit

SIZE, PATCH, NOISE = 16, 8, 0.3
N_CHECK = 32  # test images used for the localisation checks
MIN_INSIDE = 0.70  # the bar; the region is PATCH**2 / SIZE**2 = 25% of the image


# ----------------------------------------------------------------------------- the localisation dataset
def _patterns():
    """Four zero-mean +-1 textures of period 4, one per class: rows, columns, diagonals, 2x2 checks."""
    i, j = np.meshgrid(np.arange(PATCH), np.arange(PATCH), indexing="ij")
    return np.stack([i // 2 % 2, j // 2 % 2, (i + j) // 2 % 2, (i // 2 + j // 2) % 2]) * 2.0 - 1.0  # (4, P, P)


def pattern_data(num_train=1024, num_test=N_CHECK, seed=0):
    """Noise images with the class's texture at a random spot (the evidence) and, elsewhere, a
    random +-1 patch of the same size and energy (a distractor that carries no class information).

    Why not ``data.synthetic``: there the class *is the location* of one bright square, so "no
    square at the other three places" is evidence too and a softmax head rightly reads it; a
    gradient map of a trained net spreads over all four places (measured: 14-37% inside the true
    square). Here nothing outside the pattern says anything about the class, and the distractor
    makes "put the mass on whatever is high-contrast" fail, which is what an untrained net does.
    Returns a dataset-like namespace with ``evidence`` (num_test, SIZE, SIZE) bool per test image.
    """
    rng = np.random.default_rng(seed)
    pats = _patterns()

    def make(n):
        y = rng.permutation(np.arange(n) % 4).astype(np.int32)
        x = NOISE * rng.standard_normal((n, SIZE, SIZE))
        ev = np.zeros((n, SIZE, SIZE), bool)
        dis = np.zeros((n, SIZE, SIZE), bool)
        for t in range(n):
            while True:  # pattern at (r, c), distractor at (r2, c2), not overlapping
                r, c, r2, c2 = rng.integers(0, SIZE - PATCH + 1, 4)
                if abs(r - r2) >= PATCH or abs(c - c2) >= PATCH:
                    break
            x[t, r:r + PATCH, c:c + PATCH] += pats[y[t]]
            x[t, r2:r2 + PATCH, c2:c2 + PATCH] += rng.choice([-1.0, 1.0], (PATCH, PATCH))
            ev[t, r:r + PATCH, c:c + PATCH] = True
            dis[t, r2:r2 + PATCH, c2:c2 + PATCH] = True
        return x[..., None].astype(np.float32), y, ev, dis  # (n, SIZE, SIZE, 1)

    x_tr, y_tr, _, _ = make(num_train)
    x_te, y_te, ev, dis = make(num_test)
    return SimpleNamespace(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, num_classes=4, evidence=ev,
                           distractor=dis)


def detector_net(impl="lax", pool_impl="lax"):
    """Two 3x3 conv layers of 32 features, a 1x1 conv to one evidence map per class, and the
    class score = the map's maximum over the image (a global max pool written as MaxPool2D)."""
    return serial(Conv2D(32, 3, padding="SAME", impl=impl), Relu(),
                  Conv2D(32, 3, padding="SAME", impl=impl), Relu(),  # 3: Grad-CAM's layer
                  Conv2D(4, 1, impl=impl), MaxPool2D(SIZE, impl=pool_impl), Flatten())


CAM_LAYER = 3


def train_detector():
    """(ds, model, params, state): the detector after 10 epochs on ``pattern_data()`` (test accuracy >= 0.95)."""
    ds = pattern_data()
    model = detector_net()
    cfg = TrainConfig(epochs=10, batch_size=32, learning_rate=1e-2, augment_shift=0, impl="lax", pool_impl="lax")
    r = fit(model, ds, cfg, verbose=False, progress=False)
    assert r.test["accuracy"] >= 0.95
    return ds, model, r.params, r.state


@contextlib.contextmanager
def blank_maps_allowed():  # an untrained net's map may be blank; the localisation score counts that as 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlankMapWarning)
        yield


def png(path):
    """(rows, cols) and the largest per-colour-channel pixel variance (0 for a one-colour picture)."""
    img = matplotlib.image.imread(path)
    return img.shape[:2], float(img[..., :3].reshape(-1, 3).var(axis=0).max())


MIN_VAR = 1e-3  # a picture with less pixel variance than this is (nearly) one colour
