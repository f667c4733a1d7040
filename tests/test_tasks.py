"""Tasks: each built-in's loss and metrics against the losses/NumPy, target checks, get_task, a user's Task."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import losses, step
from fcnn import metrics as M
from fcnn import tasks as T


def test_classify_is_todays_loss_and_accuracy():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(13, 5)).astype(np.float32), rng.integers(0, 5, 13)
    task = T.get_task("classify")
    assert task.loss is losses.softmax_cross_entropy and task.metric_names == ("accuracy",)
    assert float(task.loss(logits, labels)) == float(losses.softmax_cross_entropy(logits, labels))
    got = T.score(task, logits, labels, batch_size=4)  # 4 batches, the last 1 real row + 3 padding rows
    # today's evaluate: float(correct) / n in Python (losses.accuracy: the same ratio in float32)
    assert got["accuracy"] == float(np.sum(logits.argmax(-1) == labels)) / 13
    assert got["accuracy"] == pytest.approx(float(losses.accuracy(logits, labels)), rel=1e-7)
    smooth = T.classify(label_smoothing=0.1)
    assert float(smooth.loss(logits, labels)) == float(losses.softmax_cross_entropy(logits, labels,
                                                                                     label_smoothing=0.1))
    task.check_targets((13, 5), labels)
    task.check_targets((13, 5), np.eye(5)[labels])  # one-hot rows are fine


def test_segment_loss_and_metrics():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 4, 4, 3))
    labels = rng.integers(0, 3, size=(6, 4, 4))
    labels[0, 0] = 255
    task = T.segment(3, ignore_index=255)
    np.testing.assert_allclose(task.loss(logits, labels),
                               losses.pixelwise_cross_entropy(logits, labels, ignore_index=255), rtol=0)
    got = T.score(task, logits, labels, batch_size=4)
    keep = labels != 255
    pred = logits.argmax(-1)
    ious = [((pred == c) & (labels == c) & keep).sum() / (((pred == c) | (labels == c)) & keep).sum()
            for c in range(3)]
    assert got["pixel_accuracy"] == pytest.approx((pred == labels)[keep].mean(), rel=1e-14)
    assert got["mean_iou"] == pytest.approx(np.mean(ious), rel=1e-14)
    assert got["foreground_iou"] == pytest.approx(np.mean(ious[1:]), rel=1e-14)
    assert task.metric_names == ("pixel_accuracy", "mean_iou", "foreground_iou")
    task.check_targets(logits.shape, labels)


@pytest.mark.parametrize("name", ["reconstruct", "denoise"])
def test_reconstruct_and_denoise_mse_or_l1_and_psnr(name):
    rng = np.random.default_rng(2)
    target = rng.uniform(size=(7, 5, 5, 1))
    out = target + 0.1 * rng.normal(size=target.shape)
    task = T.get_task(name)
    assert task.name == name and task.metric_names == ("psnr",)
    assert float(task.loss(out, target)) == float(losses.mse(out, target))
    want = 10 * np.log10(1.0 / np.mean((out - target) ** 2))
    assert T.score(task, out, target, batch_size=3)["psnr"] == pytest.approx(want, rel=1e-12)
    assert float(T.get_task(name, loss="l1").loss(out, target)) == pytest.approx(np.mean(np.abs(out - target)),
                                                                                   rel=1e-14)
    assert T.score(T.get_task(name, data_range=255.0), out, target)["psnr"] == pytest.approx(
        want + 20 * np.log10(255.0), rel=1e-12)


@pytest.mark.parametrize("shape", [(9,), (9, 3), (9, 2, 2)])
def test_regress_any_target_shape(shape):
    rng = np.random.default_rng(3)
    out, target = rng.normal(size=shape), rng.normal(size=shape)
    task = T.regress()
    task.check_targets(shape, target)
    got = T.score(task, out, target, batch_size=4)
    assert got == pytest.approx({"mse": np.mean((out - target) ** 2), "mae": np.mean(np.abs(out - target))},
                                rel=1e-12)


@pytest.mark.parametrize("task, outputs_shape, y, exc, match", [
    (T.classify(), (4, 5), np.array([0, 1, 5, 2]), ValueError, r"classify labels must be in \[0, 5\); got 5 at "
                                                               r"index \(2,\)"),
    (T.classify(), (4, 5), np.array([0.0, 1.0, 2.0, 2.0]), TypeError, "classify targets must be integer"),
    (T.classify(), (4, 5), np.zeros((4, 3), np.int32), ValueError, r"shape \(n,\) labels or \(n, 5\) one-hot"),
    (T.classify(), (4, 5, 5, 3), np.zeros(4, np.int32), ValueError, "outputs of shape"),
    (T.segment(11), (2, 8, 8, 11), np.zeros((2, 8, 8)), TypeError, "segment targets must be integer"),
    (T.segment(11), (2, 8, 8, 11), np.full((2, 8, 8), 11), ValueError, r"labels must be in \[0, 11\); got 11"),
    (T.segment(11, ignore_index=255), (2, 8, 8, 11), np.full((2, 8, 8), -1), ValueError,
     r"\(or ignore_index=255\); got -1"),
    (T.segment(11), (2, 8, 8, 11), np.zeros((2, 8, 7), np.int32), ValueError, r"targets must have shape \(n, 8, 8\)"),
    (T.segment(11), (2, 8, 8, 10), np.zeros((2, 8, 8), np.int32), ValueError, r"outputs of shape \(n, ..., 11\)"),
    (T.denoise(), (2, 8, 8, 1), np.zeros((2, 8, 8)), ValueError, r"denoise targets must have the outputs' shape"),
    (T.regress(), (2, 3), np.array([[True] * 3] * 2), TypeError, "regress targets must be real numbers"),
    # before: a nan target trained until the loss was nan ("diverged") or gave a nan test set silently;
    # complex targets failed inside JAX's grad
    (T.regress(), (2, 3), np.array([[0.0, 1.0, 2.0], [3.0, np.nan, 5.0]]), ValueError,
     r"regress targets must be finite; got nan at index \(1, 1\)"),
    (T.denoise(), (1, 2, 2, 1), np.array([[[[0.0], [np.inf]], [[0.0], [0.0]]]]), ValueError,
     r"denoise targets must be finite; got inf at index \(0, 0, 1, 0\)"),
    (T.regress(), (2, 1), np.zeros((2, 1), np.complex64), TypeError, "regress targets must be real numbers, got "
                                                                     "dtype complex64"),
])
def test_check_targets_refuses_what_does_not_fit_the_task(task, outputs_shape, y, exc, match):
    with pytest.raises(exc, match=match):
        task.check_targets(outputs_shape, y)


def test_segment_accepts_ignored_labels():
    T.segment(11, ignore_index=255).check_targets((1, 2, 2, 11), np.array([[[0, 255], [10, 3]]]))


def test_get_task_errors_and_metric_override():
    with pytest.raises(ValueError, match="task must be one of classify, denoise, reconstruct, regress, segment; "
                                         "got 'detect'"):
        T.get_task("detect")
    with pytest.raises(ValueError, match="metric must be one of accuracy, .*; got 'f1'"):
        T.get_task("regress", metrics=["mse", "f1"])
    with pytest.raises(ValueError, match="metric 'mean_iou' needs the task option num_classes"):
        T.get_task("reconstruct", metrics=["mean_iou"])
    with pytest.raises(ValueError, match="loss must be one of mse, l1; got 'huber'"):
        T.get_task("regress", loss="huber")
    task = T.get_task("reconstruct", metrics=["mse", "mae", "psnr"])
    assert [m.name for m in task.metrics] == ["mse", "mae", "psnr"] and task.metric_names == ("mse", "mae", "psnr")
    seg = T.get_task("segment", num_classes=3, metrics=["mean_iou", "pixel_accuracy"])
    assert [m.name for m in seg.metrics] == ["confusion"]  # one set of confusion counts serves both


def test_metric_options_reach_the_metrics_of_any_task():
    """The advice "needs the task option num_classes (get_task(..., num_classes=...))" now works for a
    task that does not take it (the option went to classify() and raised TypeError), as does
    data_range for psnr on regress; options nothing reads are refused naming what is taken."""
    with pytest.raises(ValueError, match=r"get_task\(\.\.\., num_classes=\.\.\.\)"):
        T.get_task("classify", metrics=["mean_iou"])
    cls = T.get_task("classify", metrics=["accuracy", "mean_iou"], num_classes=3)
    outputs = np.array([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [1.0, 0, 0]], np.float32)
    got = T.score(cls, outputs, np.array([0, 1, 1, 0]))
    # by hand: predicted 0,1,2,0 against 0,1,1,0 -> IoU class 0: 2/2, class 1: 1/2, class 2: 0/1
    assert got["accuracy"] == 0.75 and got["mean_iou"] == pytest.approx((1 + 0.5 + 0) / 3)
    reg = T.get_task("regress", metrics=["psnr"], data_range=255.0)
    psnr = T.score(reg, np.full((2, 3), 10.0, np.float32), np.zeros((2, 3), np.float32))["psnr"]
    assert psnr == pytest.approx(10 * np.log10(255.0 ** 2 / 100.0))
    with pytest.raises(ValueError, match=r"options \['num_classes'\] apply to no part of this task: task 'classify' "
                                         "takes label_smoothing"):
        T.get_task("classify", num_classes=3)
    with pytest.raises(ValueError, match=r"options \['colour'\] apply to no part"):
        T.get_task("regress", metrics=["mse"], colour=1)
    assert T.get_task(cls, metrics=["mean_iou"], num_classes=3).metric_names == ("mean_iou",)
    with pytest.raises(ValueError, match="a Task takes none"):
        T.get_task(cls, num_classes=3)


def test_a_users_own_task_works_with_no_change_to_fcnn():
    def loss(outputs, targets):
        return jnp.mean(jnp.abs(outputs - targets) ** 3)

    def check(outputs_shape, y):
        if np.shape(y) != tuple(outputs_shape):
            raise ValueError("my targets must match")

    mine = T.Task("cube", loss, (M.MeanAbsoluteError(),), check, ("mae",))
    assert T.get_task(mine) is mine
    out, target = np.array([[1.0], [2.0], [4.0]]), np.array([[0.0], [0.0], [0.0]])
    assert float(mine.loss(out, target)) == pytest.approx((1 + 8 + 64) / 3)
    assert T.score(mine, out, target, batch_size=2) == {"mae": pytest.approx(7 / 3)}
    with pytest.raises(ValueError, match=r"options \['num_classes'\] apply to no part of this task: a Task takes none"):
        T.get_task(mine, num_classes=3)


def test_score_refuses_no_rows_or_unequal_rows():
    """0 rows crashed inside the batching (range step 0, or a KeyError); now a ValueError names both."""
    task = T.classify()
    with pytest.raises(ValueError, match="outputs and targets must hold the same non-zero number of rows, got 0 and 0"):
        T.score(task, np.zeros((0, 3), np.float32), np.zeros(0, int))
    with pytest.raises(ValueError, match="got 0 and 0"):
        T.score(task, np.zeros((0, 3), np.float32), np.zeros(0, int), batch_size=4)
    with pytest.raises(ValueError, match="got 2 and 3"):
        T.score(task, np.zeros((2, 3), np.float32), np.zeros(3, int))


def test_evaluate_segment_loss_with_ignored_pixels_is_the_mean_over_every_kept_pixel():
    """With an ignore_index the loss averages over kept pixels, so the set's loss is the one batch of
    the whole set gives, for every batch size. Before, it was the mean of per-image means: an image
    with every pixel ignored added a loss of 0 and images with few kept pixels weighed like full ones."""
    from fcnn.combinators import serial
    from fcnn.layers import Conv2D

    model, task = serial(Conv2D(3, 3, padding="SAME")), T.segment(3, ignore_index=255)
    _, params, state = model.init(jax.random.PRNGKey(0), (1, 6, 6, 2))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, (5, 6, 6)).astype(np.int32)
    y[1] = 255  # no pixel kept
    y[3, :4] = 255
    logits = np.asarray(model.apply(params, state, jnp.asarray(x))[0], np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # NumPy's cross-entropy, not fcnn's
    kept = y != 255
    want = -np.take_along_axis(logp, np.where(kept, y, 0)[..., None], -1)[..., 0][kept].mean()
    for batch_size in (1, 2, 3, 5, 8):
        got = step.evaluate(model, params, state, x, y, batch_size, task=task)["loss"]
        np.testing.assert_allclose(got, want, rtol=1e-5)
