"""A tiny model and dataset for the step / run / fit tests, written against the Layer contract only.

The model (flatten -> dense 32 -> relu -> dropout 0.2 -> dense k) uses its key (dropout) so
that the per-step key handling is exercised; the data are scikit-learn's real 8x8 digits.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

from fcnn.types import Layer


def mlp(hidden=32, classes=10, drop_rate=0.2):
    def init(key, in_shape):
        d = int(np.prod(in_shape[1:]))
        k1, k2 = jax.random.split(key)
        params = {
            "w1": jax.random.normal(k1, (d, hidden), jnp.float32) / float(np.sqrt(d)),
            "b1": jnp.zeros((hidden,), jnp.float32),
            "w2": jax.random.normal(k2, (hidden, classes), jnp.float32) / float(np.sqrt(hidden)),
            "b2": jnp.zeros((classes,), jnp.float32),
        }
        return (in_shape[0], classes), params, {}

    def apply(params, state, x, *, key=None, train=False):
        h = jax.nn.relu(x.reshape(x.shape[0], int(np.prod(x.shape[1:]))) @ params["w1"] + params["b1"])  # 0 rows too
        if train and drop_rate:
            keep = jax.random.bernoulli(key, 1 - drop_rate, h.shape)
            h = jnp.where(keep, h / (1 - drop_rate), 0).astype(h.dtype)
        return h @ params["w2"] + params["b2"], state

    return Layer(init, apply)


class Data:
    def __init__(self, n_train=400, n_test=150):
        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)[..., None]  # (n, 8, 8, 1)
        y = d.target.astype(np.int32)
        self.x_train, self.y_train = x[:n_train], y[:n_train]
        self.x_test, self.y_test = x[n_train : n_train + n_test], y[n_train : n_train + n_test]
        self.num_classes = 10


def init_trees(model, x, optimizer, seed=0):
    _, params, state = model.init(jax.random.PRNGKey(seed), x.shape)
    return params, state, optimizer.init(params)


def leaves_equal(a, b) -> bool:
    """Whether two pytrees have the same structure and bitwise-equal leaves (chex's comparison)."""
    try:
        chex.assert_trees_all_equal(a, b)
    except AssertionError:
        return False
    return True
