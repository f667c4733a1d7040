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


def test_a_masked_class_at_minus_inf_adds_nothing():
    """A class whose logit is -inf (masked) has probability 0 and no target mass: it adds nothing, as in
    PyTorch's cross_entropy (1.3133 here by hand). 0 * -inf made the loss nan while its gradient was
    finite, so a step reported nan and trained on; one-hot targets and the pixel-wise loss agree."""
    logits, y = jnp.array([[0.0, -jnp.inf, 1.0]]), jnp.array([0])
    want = np.log(1 + np.e)  # -log(e^0 / (e^0 + e^1))
    for got in (losses.softmax_cross_entropy(logits, y), losses.softmax_cross_entropy(logits, jnp.eye(3)[y]),
                losses.pixelwise_cross_entropy(logits, y)):
        np.testing.assert_allclose(float(got), want, rtol=1e-6)
    g = jax.grad(losses.softmax_cross_entropy)(logits, y)
    np.testing.assert_allclose(np.asarray(g), [[1 / (1 + np.e) - 1, 0.0, np.e / (1 + np.e)]], rtol=1e-6)


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
        # no class at all: refused (label smoothing divided by k = 0; the loss came out -0.0; accuracy's
        # argmax of nothing; dice nan)
        (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 0)), jnp.zeros((2,), jnp.int32), label_smoothing=0.1),
         r"logits must hold at least one class on their last axis, got shape \(2, 0\)"),
        (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 0)), jnp.zeros((2,), jnp.int32)), "at least one class"),
        (lambda: losses.accuracy(jnp.zeros((2, 0)), jnp.zeros((2,), jnp.int32)), "at least one class"),
        (lambda: losses.dice_loss(jnp.zeros((2, 0)), jnp.zeros((2,), jnp.int32)), "at least one class"),
        (lambda: losses.pixelwise_cross_entropy(jnp.zeros((2, 3, 0)), jnp.zeros((2, 3), jnp.int32)),
         "at least one class"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ----------------------------------------------------------------------------- dense-task losses
def _fd_check(f, *args):
    """First-order reverse-mode gradient against central finite differences (float64)."""
    from jax.test_util import check_grads
    check_grads(f, args, order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-7)


def test_pixelwise_cross_entropy_ignores_pixels_and_averages_the_rest():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 4, 5)) * 2  # (n, h, w, k)
    labels = rng.integers(0, 5, size=(2, 3, 4))
    labels[0, 0, :] = 255
    labels[1, 2, 1] = 255  # 5 ignored pixels, 19 kept
    lp = _np_log_softmax(logits)
    kept = [(-lp[i, j, k, labels[i, j, k]]) for i in range(2) for j in range(3) for k in range(4)
            if labels[i, j, k] != 255]
    assert len(kept) == 19
    got = losses.pixelwise_cross_entropy(logits, jnp.asarray(labels), ignore_index=255)
    np.testing.assert_allclose(got, np.mean(kept), rtol=1e-12)
    _fd_check(lambda z: losses.pixelwise_cross_entropy(z, jnp.asarray(labels), ignore_index=255), logits)
    assert float(losses.pixelwise_cross_entropy(logits, jnp.full((2, 3, 4), 255), ignore_index=255)) == 0.0


def test_pixelwise_cross_entropy_on_rows_is_todays_softmax_cross_entropy(batch):
    logits, labels = batch
    a = losses.pixelwise_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    b = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(a, b, rtol=1e-14)


def test_binary_cross_entropy_with_logits_by_hand_and_stable():
    # z = 0, t = 1: log 2; z = ln 3, t = 0: -log(1 - 3/4) = log 4; z = -ln 3, t = 0.5: log 4 / 2 + log(4/3) / 2
    z = np.array([0.0, np.log(3.0), -np.log(3.0)])
    t = np.array([1.0, 0.0, 0.5])
    want = np.mean([np.log(2), np.log(4), 0.5 * np.log(4) + 0.5 * np.log(4 / 3)])
    np.testing.assert_allclose(losses.binary_cross_entropy_with_logits(z, t), want, rtol=1e-12)
    big = losses.binary_cross_entropy_with_logits(jnp.array([1000.0, -1000.0], jnp.float32), jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(big, 1000.0, rtol=1e-6)  # finite: each element loses 1000 nats
    rng = np.random.default_rng(2)
    targets = rng.uniform(size=(3, 4))
    _fd_check(lambda x: losses.binary_cross_entropy_with_logits(x, targets), rng.normal(size=(3, 4)))


def test_dice_loss_matches_numpy_and_integer_equals_one_hot():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 4, 4, 3))
    labels = rng.integers(0, 3, size=(2, 4, 4))
    p = np.exp(_np_log_softmax(logits))
    t = np.eye(3)[labels]
    dice = [(2 * (p[..., c] * t[..., c]).sum() + 1) / (p[..., c].sum() + t[..., c].sum() + 1) for c in range(3)]
    got = losses.dice_loss(logits, jnp.asarray(labels))
    np.testing.assert_allclose(got, 1 - np.mean(dice), rtol=1e-12)
    np.testing.assert_allclose(losses.dice_loss(logits, t), got, rtol=1e-14)
    _fd_check(lambda z: losses.dice_loss(z, jnp.asarray(labels), smooth=0.5), logits)
    # a near-perfect prediction: dice -> 1 for every class, loss -> 0
    assert float(losses.dice_loss(100.0 * (2 * t - 1), jnp.asarray(labels))) < 1e-12


def test_l1_and_mse_on_any_shape_by_hand():
    pred = np.array([[[1.0, -2.0]], [[0.5, 4.0]]])  # (2, 1, 2)
    target = np.array([[[0.0, 0.0]], [[0.5, 1.0]]])
    np.testing.assert_allclose(losses.l1(pred, target), (1 + 2 + 0 + 3) / 4, rtol=1e-14)
    np.testing.assert_allclose(losses.mse(pred, target), (1 + 4 + 0 + 9) / 4, rtol=1e-14)
    _fd_check(lambda x: losses.l1(x, target), pred + 0.25)  # no element at the kink |0|


@pytest.mark.parametrize("call, exc, match", [
    (lambda: losses.pixelwise_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4), jnp.int32)), ValueError,
     r"labels must have shape \(batch, ...\)"),
    (lambda: losses.pixelwise_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3))), TypeError, "integer"),
    (lambda: losses.pixelwise_cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), ignore_index=1.5),
     TypeError, "ignore_index must be an int"),
    (lambda: losses.dice_loss(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), smooth=-1), ValueError, "smooth"),
    (lambda: losses.dice_loss(jnp.zeros((2, 3)), jnp.zeros((2, 2))), ValueError, "targets must have shape"),
    (lambda: losses.l1(jnp.zeros(3), jnp.zeros(4)), ValueError, "same shape"),
    (lambda: losses.binary_cross_entropy_with_logits(jnp.zeros(3), jnp.zeros((3, 1))), ValueError, "same shape"),
])
def test_dense_losses_refuse_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
