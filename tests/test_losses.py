"""Losses and metrics against independent NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import losses


def _np_log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 5)) * 3.0
    labels = rng.integers(0, 5, size=7)
    return logits, labels


def test_cross_entropy_matches_numpy_logsumexp(batch):
    logits, labels = batch
    ref = -np.mean(_np_log_softmax(logits)[np.arange(7), labels])
    got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_cross_entropy_integer_equals_one_hot(batch):
    logits, labels = batch
    one_hot = np.eye(5)[labels]
    a = losses.softmax_cross_entropy(logits, jnp.asarray(labels))
    b = losses.softmax_cross_entropy(logits, jnp.asarray(one_hot))
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = jnp.array([[1000.0, 0.0], [0.0, -1000.0]], jnp.float32)
    got = losses.softmax_cross_entropy(logits, jnp.array([1, 1]))
    # -log p = 1000 for the first row, 1000 for the second: mean 1000, finite.
    np.testing.assert_allclose(got, 1000.0, rtol=1e-6)


def test_label_smoothing_by_hand(batch):
    logits, labels = batch
    eps, k = 0.1, 5
    logp = _np_log_softmax(logits)
    # (1 - eps) * CE(true label) + eps * mean over classes of -log p
    ref = np.mean((1 - eps) * -logp[np.arange(7), labels] + eps * -logp.sum(axis=-1) / k)
    got = losses.softmax_cross_entropy(logits, jnp.asarray(labels), label_smoothing=eps)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_bf16_logits_give_float32_loss(batch):
    logits, labels = batch
    got = losses.softmax_cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels))
    assert got.dtype == jnp.float32
    ref = -np.mean(_np_log_softmax(np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float64))[np.arange(7), labels])
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_mse_by_hand():
    p = np.array([[1.0, 2.0], [3.0, 4.0]])
    t = np.array([[0.0, 2.0], [5.0, 4.0]])
    assert float(losses.mse(p, t)) == pytest.approx((1 + 0 + 4 + 0) / 4)


def test_l2_penalty_skips_biases_by_default():
    params = {"conv": {"w": np.full((2, 2, 1, 3), 2.0), "b": np.full((3,), 5.0)}, "dense": [np.ones((4, 2)), np.ones(2)]}
    # compiled, not op by op (each eager op is a compile of its own on CPU)
    penalty = jax.jit(losses.l2_penalty, static_argnums=1, static_argnames="include_biases")
    # kernels: 12 * 4 + 8 * 1 = 56
    assert float(penalty(params, 0.5)) == pytest.approx(0.5 * 56)
    # with biases: + 3 * 25 + 2 * 1
    assert float(penalty(params, 0.5, include_biases=True)) == pytest.approx(0.5 * (56 + 75 + 2))
    g = jax.jit(jax.grad(lambda p: losses.l2_penalty(p, 0.5)))(params)
    np.testing.assert_allclose(g["conv"]["w"], 2 * 0.5 * 2.0)
    np.testing.assert_allclose(g["conv"]["b"], 0.0)


def test_accuracy_integer_and_one_hot():
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = jnp.array([1, 1, 1, 0])
    assert float(losses.accuracy(logits, labels)) == pytest.approx(0.75)
    assert float(losses.accuracy(logits, jax.nn.one_hot(labels, 2))) == pytest.approx(0.75)


def test_softmax_rows_sum_to_one(batch):
    logits, _ = batch
    p = np.asarray(losses.softmax(logits))
    np.testing.assert_allclose(p, np.exp(_np_log_softmax(logits)), rtol=1e-12)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: losses.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.zeros((3,), jnp.int32), label_smoothing=1.0), "label_smoothing"),
        (lambda: losses.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.zeros((4,), jnp.int32)), "labels must have shape"),
        (lambda: losses.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.zeros((3,))), "must be integers"),
        (lambda: losses.softmax_cross_entropy(jnp.zeros((3,)), jnp.zeros((3,), jnp.int32)), "logits must have shape"),
        (lambda: losses.mse(jnp.zeros(3), jnp.zeros(4)), "same shape"),
        (lambda: losses.l2_penalty({}, -1.0), "non-negative"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
