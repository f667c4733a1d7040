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


def test_binary_cross_entropy_with_integer_logits_keeps_float_targets():
    """Integer logits are converted to float32 (as every loss here converts them), not the targets to the
    logits' int: 0.3 and 0.7 were truncated to 0, giving 1.7201 instead of 0.8701."""
    z, t = np.array([1, 2]), np.array([0.3, 0.7])
    zf = z.astype(np.float64)
    want = np.mean(np.maximum(zf, 0) - zf * t + np.log1p(np.exp(-np.abs(zf))))  # NumPy float64: 0.87009...
    got = losses.binary_cross_entropy_with_logits(z, t)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    np.testing.assert_allclose(float(got), 0.8700948, rtol=1e-6)  # torch 2.13, float logits


@pytest.mark.parametrize("pred, target, dtype", [
    (np.array([0], np.uint8), np.array([255], np.uint8), jnp.float32),          # wrapped to 1 (mod 256)
    (np.array([100000], np.int32), np.array([0], np.int32), jnp.float32),       # overflowed int32
    (np.array([300.0], np.float16), np.array([0.0], np.float16), jnp.float32),  # 90000 > float16's 65504
    (np.array([[1, 2], [3, 250]], np.uint8), np.array([[3, 1], [3, 5]], np.uint8), jnp.float32),
    (np.array([1.5, 2.0]), np.array([1, 7], np.int32), jnp.float64),           # float64 stays float64
])
def test_mse_and_l1_take_the_difference_in_a_float(pred, target, dtype):
    d = pred.astype(np.float64) - target.astype(np.float64)  # NumPy float64 reference
    for f, want in ((losses.mse, np.mean(d ** 2)), (losses.l1, np.mean(np.abs(d)))):
        got = f(pred, target)
        assert got.dtype == dtype, f.__name__
        np.testing.assert_allclose(float(got), want, rtol=1e-6, err_msg=f.__name__)


@pytest.mark.parametrize("labels, bad", [([-1, 0], -1), ([7, 0], 7), ([0, 4], 4)])
def test_cross_entropies_refuse_labels_outside_the_classes(labels, bad):
    """torch raises "Target -1 is out of bounds"; both losses refuse concrete labels outside [0, k) (the
    pixel-wise one wrapped -1 to the last class and gave nan for 7), and make the loss nan under jit."""
    logits, y = jnp.zeros((2, 4)), jnp.array(labels)
    for loss in (losses.softmax_cross_entropy, losses.pixelwise_cross_entropy):
        with pytest.raises(ValueError, match=rf"labels must be class indices in \[0, 4\); got {bad}"):
            loss(logits, y)
        assert np.isnan(float(jax.jit(loss)(logits, y)))
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\) or ignore_index=-1"):
        losses.pixelwise_cross_entropy(logits, jnp.array([7, -1]), ignore_index=-1)
    # the ignored label itself is fine, concrete or traced: mean over the kept pixel, -log(1/4)
    for f in (losses.pixelwise_cross_entropy, jax.jit(losses.pixelwise_cross_entropy, static_argnames="ignore_index")):
        np.testing.assert_allclose(float(f(logits, jnp.array([-1, 0]), ignore_index=-1)), np.log(4), rtol=1e-6)


def test_pixelwise_ignored_pixel_over_a_masked_class_adds_nothing():
    """An ignored pixel whose class-0 logit is -inf (masked) gave 0 * -inf = nan. By hand (as torch's
    cross_entropy with ignore_index): only the second pixel counts, -log(e / (1 + e))."""
    logits = jnp.array([[-jnp.inf, 0.0], [0.0, 1.0]])
    got = losses.pixelwise_cross_entropy(logits, jnp.array([255, 1]), ignore_index=255)
    np.testing.assert_allclose(float(got), np.log1p(np.exp(-1.0)), rtol=1e-6)


def test_cross_entropies_agree_with_torch_and_torch_refuses_bad_labels():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    z = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -3.0, 0.25]])
    want = float(F.cross_entropy(torch.tensor(z), torch.tensor([2, 0])))
    y = jnp.array([2, 0])
    np.testing.assert_allclose(float(losses.pixelwise_cross_entropy(z, y)), want, rtol=1e-12)
    np.testing.assert_allclose(float(losses.softmax_cross_entropy(z, y)), want, rtol=1e-12)
    want = float(F.cross_entropy(torch.tensor(z), torch.tensor([-1, 0]), ignore_index=-1))  # row 1 only
    np.testing.assert_allclose(float(losses.pixelwise_cross_entropy(z, jnp.array([-1, 0]), ignore_index=-1)),
                               want, rtol=1e-12)
    with pytest.raises((IndexError, RuntimeError), match="out of bounds"):
        F.cross_entropy(torch.tensor(z), torch.tensor([-1, 0]))


def test_dice_loss_needs_a_positive_smooth():
    """smooth=0 gave nan for a class absent from both prediction (p underflows to 0) and target; now it
    is refused. With any smooth > 0 that class has dice s / s = 1, class 0 (2 + s) / (2 + s) = 1: loss 0."""
    logits, labels = jnp.array([[0.0, -1e9]]), jnp.array([0])
    with pytest.raises(ValueError, match="smooth must be a positive float, got 0"):
        losses.dice_loss(logits, labels, smooth=0)
    assert float(losses.dice_loss(logits, labels, smooth=1e-6)) == pytest.approx(0.0, abs=1e-6)


def test_dice_loss_refuses_integer_targets_outside_the_classes():
    """Before: a label of -1 or k was an all-zero one-hot row, counted as 'no class' without a word.
    Now concrete labels are refused naming targets, and traced ones make the loss nan."""
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3, 4)))
    bad = np.zeros((2, 3, 3), np.int32)
    bad[1, 2, 0] = 4
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 4\); got 4 at index \(1, 2, 0\)"):
        losses.dice_loss(logits, bad)
    assert np.isnan(float(jax.jit(losses.dice_loss)(logits, bad)))
    good = np.zeros((2, 3, 3), np.int32)
    assert float(jax.jit(losses.dice_loss)(logits, good)) == pytest.approx(float(losses.dice_loss(logits, good)))
