"""Metrics from sums: uneven batches with a padded last batch give exactly the full-set value
computed by NumPy in one go (and not the mean of per-batch means); IoU against a hand-made table."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import metrics as M

N, BATCH = 23, 5  # batches of 5, 5, 5, 5 and a last one of 3 real rows + 2 padding rows


def _over_batches(metric, outputs, targets, batch=BATCH):
    """Sums over fixed-size batches, the last padded with rows that would change the value if counted."""
    step = jax.jit(metric.batch_sums)
    total, per_batch = None, []
    for start in range(0, len(outputs), batch):
        o, t = outputs[start:start + batch], targets[start:start + batch]
        pad = batch - len(o)
        mask = np.array([1.0] * len(o) + [0.0] * pad)
        o = np.concatenate([o, np.repeat(o[:1] * 7 + 3, pad, 0)])  # garbage rows
        t = np.concatenate([t, np.repeat(np.zeros_like(t[:1]), pad, 0)])
        sums = step(o, t, mask)
        per_batch.append(metric.finalize(jax.device_get(step(o[:len(o) - pad], t[:len(t) - pad],
                                                             mask[:len(mask) - pad]))))
        total = M.add_sums(total, sums)
    return metric.finalize(jax.device_get(total)), per_batch


def test_accuracy_over_uneven_batches_is_the_full_set_value():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(N, 4)), rng.integers(0, 4, N)
    want = np.mean(logits.argmax(-1) == labels)
    got, per_batch = _over_batches(M.Accuracy(), logits, labels)
    assert got["accuracy"] == want
    assert np.mean([b["accuracy"] for b in per_batch]) != pytest.approx(want, abs=1e-9)


def test_confusion_iou_from_a_hand_made_table():
    """[true, pred] = [[3, 1, 0], [0, 2, 0], [0, 0, 0]]: class 0 IoU 3 / (3 + 1) = 0.75; class 1 IoU
    2 / (2 + 1 + 0) = 2/3; class 2 absent (union 0) and left out of the means; 5 of 6 pixels right."""
    out = M.iou_from_confusion(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]))
    assert out["pixel_accuracy"] == pytest.approx(5 / 6, rel=1e-15)
    assert out["iou_0"] == 0.75 and out["iou_1"] == pytest.approx(2 / 3, rel=1e-15) and math.isnan(out["iou_2"])
    assert out["mean_iou"] == pytest.approx((0.75 + 2 / 3) / 2, rel=1e-15)
    assert out["foreground_iou"] == pytest.approx(2 / 3, rel=1e-15)


def _np_iou(pred, labels, k, ignore):
    keep = labels != ignore
    conf = np.zeros((k, k), np.int64)
    np.add.at(conf, (labels[keep], pred[keep]), 1)
    ious = {}
    for c in range(k):
        tp, fp, fn = conf[c, c], conf[:, c].sum() - conf[c, c], conf[c, :].sum() - conf[c, c]
        if tp + fp + fn:
            ious[c] = tp / (tp + fp + fn)
    return conf, ious


def test_confusion_over_uneven_batches_is_the_full_set_value():
    rng = np.random.default_rng(1)
    k = 4
    logits = rng.normal(size=(N, 3, 5, k))
    logits[..., 3] = -50.0  # class 3 never predicted ...
    labels = rng.integers(0, 3, size=(N, 3, 5))  # ... nor present: left out of the means
    labels[rng.uniform(size=labels.shape) < 0.2] = 255
    conf, ious = _np_iou(logits.argmax(-1), labels, k, 255)
    got, per_batch = _over_batches(M.Confusion(k, ignore_index=255), logits, labels)
    assert got["pixel_accuracy"] == pytest.approx(np.trace(conf) / conf.sum(), rel=1e-15)
    assert got["mean_iou"] == pytest.approx(np.mean(list(ious.values())), rel=1e-15)
    assert got["foreground_iou"] == pytest.approx(np.mean([ious[1], ious[2]]), rel=1e-15)
    assert math.isnan(got["iou_3"]) and set(ious) == {0, 1, 2}
    assert np.mean([b["mean_iou"] for b in per_batch]) != pytest.approx(got["mean_iou"], abs=1e-9)


@pytest.mark.parametrize("metric, name, data_range", [
    (M.PSNR(), "psnr", 1.0), (M.PSNR(2.0), "psnr", 2.0), (M.MeanSquaredError(), "mse", 1),
    (M.MeanAbsoluteError(), "mae", 1)])
def test_error_metrics_over_uneven_batches_are_the_full_set_value(metric, name, data_range):
    rng = np.random.default_rng(2)
    target = rng.uniform(size=(N, 4, 4, 1))
    out = target + rng.normal(size=target.shape) * np.linspace(0.01, 0.3, N)[:, None, None, None]
    mse = np.mean((out - target) ** 2)
    want = {"psnr": 10 * np.log10(data_range ** 2 / mse), "mse": mse, "mae": np.mean(np.abs(out - target))}[name]
    got, per_batch = _over_batches(metric, out, target)
    assert got[name] == pytest.approx(want, rel=1e-12)
    assert np.mean([b[name] for b in per_batch]) != pytest.approx(want, rel=1e-6)


def test_set_totals_stay_exact_past_int32():
    """Two batches of 1.2e9 elements each (a 256x256x3 reconstruction set passes 2**31 elements at
    ~11k images): int32 totals wrapped negative, so MSE came out -1.27 and PSNR nan; the host's int64
    / float64 totals give MSE 1, PSNR 0 dB and the exact count."""
    batch = {"sq": jnp.float32(1.2e9), "count": jnp.int32(1_200_000_000)}
    total = M.add_sums(M.add_sums(None, batch), batch)
    assert int(total["count"]) == 2_400_000_000 and total["count"].dtype == np.int64
    assert M.MeanSquaredError().finalize(total)["mse"] == 1.0
    assert M.PSNR(1.0).finalize(total)["psnr"] == 0.0
    hits = {"correct": jnp.int32(2 ** 31 - 1), "count": jnp.int32(2 ** 31 - 1)}
    assert M.Accuracy().finalize(M.add_sums(M.add_sums(None, hits), hits))["accuracy"] == 1.0


def test_psnr_by_hand_and_limits():
    # MSE 0.01 with data range 1: 10 log10(1 / 0.01) = 20 dB
    assert M.PSNR().finalize({"sq": 0.04, "count": 4})["psnr"] == pytest.approx(20.0, rel=1e-14)
    assert M.PSNR().finalize({"sq": 0.0, "count": 4})["psnr"] == math.inf
    assert math.isnan(M.PSNR().finalize({"sq": 0.0, "count": 0})["psnr"])


@pytest.mark.parametrize("call, exc, match", [
    (lambda: M.Accuracy().batch_sums(jnp.zeros((3, 2)), jnp.zeros(3, jnp.int32), jnp.ones(4)), ValueError,
     r"mask must have shape \(batch,\) = \(3,\)"),
    (lambda: M.Confusion(3).batch_sums(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4)), jnp.ones(2)), TypeError,
     "targets must be integer"),
    (lambda: M.Confusion(3).batch_sums(jnp.zeros((2, 4, 5)), jnp.zeros((2, 4), jnp.int32), jnp.ones(2)), ValueError,
     r"outputs must have shape .* \(2, 4, 3\)"),
    (lambda: M.PSNR().batch_sums(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.ones(2)), ValueError, "same shape"),
    (lambda: M.PSNR(0.0), ValueError, "data_range must be a positive float"),
    (lambda: M.Confusion(0), ValueError, "num_classes must be a positive int"),
])
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
