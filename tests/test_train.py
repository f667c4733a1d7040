"""The train step, evaluation and the fit loop, on a tiny hand-written model.

The model (flatten -> dense 32 -> relu -> dropout 0.2 -> dense k) is written here
against the Layer contract so these tests depend only on fcnn.types; it uses its key
(dropout) so that the per-step key handling is exercised.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from fcnn.losses import softmax_cross_entropy
from fcnn.optim import make_optimizer
from fcnn.train import (
    TrainConfig,
    TrainingDivergedError,
    epoch_order,
    evaluate,
    fit,
    make_train_step,
    step_keys,
)
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
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
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


@pytest.fixture(scope="module")
def data():
    return Data()


def _init(model, x, optimizer, seed=0):
    _, params, state = model.init(jax.random.PRNGKey(seed), x.shape)
    return params, state, optimizer.init(params)


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_loss_falls_on_a_fixed_batch(data):
    model, opt = mlp(drop_rate=0.0), make_optimizer("adam", 1e-2)
    x, y = data.x_train[:64], data.y_train[:64]
    params, state, opt_state = _init(model, x, opt)
    step = make_train_step(model, opt)
    losses = []
    for t in range(60):
        params, state, opt_state, m = step(params, state, opt_state, (x, y), step_keys(jax.random.PRNGKey(1), t))
        losses.append(float(m["loss"]))
    assert losses[0] > 2.0  # about log(10) at init
    assert losses[-1] < losses[0] / 10


def test_sgd_step_with_l2_matches_hand_update(data):
    model, lr, l2 = mlp(drop_rate=0.0), 0.1, 0.01
    opt = make_optimizer("sgd", lr)
    x, y = data.x_train[:32], data.y_train[:32]
    params, state, opt_state = _init(model, x, opt)
    p0 = jax.tree.map(np.array, params)
    data_grad = jax.grad(lambda p: softmax_cross_entropy(model.apply(p, {}, x)[0], y))(params)
    new, _, _, m = make_train_step(model, opt, l2=l2)(params, state, opt_state, (x, y), jax.random.PRNGKey(0))
    for name in ("w1", "w2"):  # kernels: penalty gradient 2 * l2 * w
        np.testing.assert_allclose(new[name], p0[name] - lr * (data_grad[name] + 2 * l2 * p0[name]), rtol=1e-5, atol=1e-7)
    for name in ("b1", "b2"):  # biases are not penalised
        np.testing.assert_allclose(new[name], p0[name] - lr * data_grad[name], rtol=1e-5, atol=1e-7)
    # the reported loss is the data loss, without the penalty
    np.testing.assert_allclose(m["loss"], softmax_cross_entropy(model.apply(p0, {}, x)[0], y), rtol=1e-6)


@pytest.mark.parametrize("unroll", [1, 2, 4])
def test_scanned_steps_equal_single_steps(data, unroll):
    model, opt, k, bs = mlp(), make_optimizer("momentum", 0.05), 4, 32
    x = data.x_train[: k * bs].reshape(k, bs, 8, 8, 1)
    y = data.y_train[: k * bs].reshape(k, bs)
    base = jax.random.PRNGKey(7)
    single = make_train_step(model, opt)
    p, s, o = _init(model, x[0], opt)
    losses = []
    for t in range(k):
        p, s, o, m = single(p, s, o, (x[t], y[t]), step_keys(base, 3 + t))
        losses.append(m["loss"])
    p2, s2, o2 = _init(model, x[0], opt)
    p2, s2, o2, m2 = make_train_step(model, opt, steps_per_call=k, unroll=unroll)(p2, s2, o2, (x, y),
                                                                                   step_keys(base, 3, k))
    assert m2["loss"].shape == (k,)
    for a, b in zip(jax.tree.leaves((p, o)), jax.tree.leaves((p2, o2))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.array(losses), m2["loss"], rtol=1e-6)


def test_train_step_donates_its_state(data):
    model, opt = mlp(), make_optimizer("sgd", 0.1)
    x, y = data.x_train[:16], data.y_train[:16]
    params, state, opt_state = _init(model, x, opt)
    new, *_ = make_train_step(model, opt)(params, state, opt_state, (x, y), jax.random.PRNGKey(0))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(params))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new))


def test_bf16_keeps_float32_master_params_and_learns(data):
    model, opt = mlp(drop_rate=0.0), make_optimizer("adam", 1e-2)
    x, y = data.x_train[:64], data.y_train[:64]
    params, state, opt_state = _init(model, x, opt)
    # the first step's loss is that of the bf16 forward (independent cast here), not the f32 one
    p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    loss16 = float(softmax_cross_entropy(model.apply(p16, {}, x.astype(jnp.bfloat16))[0].astype(jnp.float32), y))
    loss32 = float(softmax_cross_entropy(model.apply(params, {}, x)[0], y))
    step = make_train_step(model, opt, precision="bf16")
    losses = []
    for t in range(40):
        params, state, opt_state, m = step(params, state, opt_state, (x, y), step_keys(jax.random.PRNGKey(1), t))
        losses.append(float(m["loss"]))
    assert losses[0] == pytest.approx(loss16, rel=1e-6) and loss16 != loss32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((params, opt_state)) if leaf.dtype != jnp.int32)
    assert m["loss"].dtype == jnp.float32 and losses[-1] < losses[0] / 5


def test_evaluate_counts_every_example_once(data):
    model = mlp()
    _, params, state = model.init(jax.random.PRNGKey(3), (1, 8, 8, 1))
    x, y = data.x_test[:137], data.y_test[:137]
    # independent reference: NumPy forward over all rows at once
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.maximum(x.reshape(137, -1) @ p["w1"] + p["b1"], 0)
    logits = h @ p["w2"] + p["b2"]
    ref_acc = np.mean(np.argmax(logits, -1) == y)
    z = logits - logits.max(-1, keepdims=True)
    ref_loss = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(137), y])
    got = evaluate(model, params, state, x, y, batch_size=32)  # 137 = 4 * 32 + 9
    assert got["n"] == 137
    assert got["accuracy"] == pytest.approx(ref_acc, abs=1e-12)
    assert got["loss"] == pytest.approx(ref_loss, rel=1e-5)
    assert 0.0 < ref_acc < 0.5  # untrained: a wrong count or padded rows would move it


def _config(**kw):
    base = dict(model="mlp", dataset="digits8", epochs=3, batch_size=32, optimizer="adam", learning_rate=3e-3,
                schedule="cosine", seed=0, eval_batch_size=64)
    base.update(kw)
    return TrainConfig(**base)


def test_same_seed_same_params_bitwise(data):
    a = fit(mlp(), data, _config(epochs=2), verbose=False)
    b = fit(mlp(), data, _config(epochs=2), verbose=False)
    c = fit(mlp(), data, _config(epochs=2, seed=1), verbose=False)
    assert a.step == 2 * (400 // 32)
    assert _leaves_equal(a.params, b.params) and _leaves_equal(a.opt_state, b.opt_state)
    assert not _leaves_equal(a.params, c.params)
    untimed = lambda h: [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k} for r in h]
    assert untimed(a.history) == untimed(b.history) and len(a.history) == 2
    assert a.test == b.test


def test_fit_with_steps_per_call_matches_single_steps(data):
    a = fit(mlp(), data, _config(epochs=2), verbose=False)
    b = fit(mlp(), data, _config(epochs=2, steps_per_call=5), verbose=False)  # 12 steps/epoch: 5 + 5 + 1 + 1
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert b.test["accuracy"] == pytest.approx(a.test["accuracy"], abs=1 / 150)


def test_nan_input_stops_the_run_naming_the_step(data):
    bad = Data()
    bad.x_train = bad.x_train.copy()
    bad.x_train[123, 4, 4, 0] = np.nan
    order = epoch_order(0, 0, 400)
    expected = int(np.flatnonzero(order == 123)[0]) // 32 + 1  # steps counted from 1
    assert expected <= 12, "the poisoned example must be in epoch 0's batches for this test"
    with pytest.raises(TrainingDivergedError, match=f"loss became nan at step {expected}$"):
        fit(mlp(), bad, _config(augment_shift=0), verbose=False)
    assert issubclass(TrainingDivergedError, FloatingPointError)


def test_fit_writes_metrics_log_curves_and_config(data, tmp_path, capsys):
    run = str(tmp_path / "run")
    r = fit(mlp(), data, _config(epochs=3), run_dir=run, progress=False)
    lines = open(os.path.join(run, "metrics.jsonl")).read().splitlines()
    records = [json.loads(line) for line in lines]
    assert [rec["epoch"] for rec in records] == [1, 2, 3]
    assert [rec["step"] for rec in records] == [12, 24, 36]
    for rec in records:
        assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "images_per_s"} <= set(rec)
    assert records[-1]["test_accuracy"] == r.test["accuracy"]
    png = open(os.path.join(run, "curves.png"), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert json.load(open(os.path.join(run, "config.json")))["batch_size"] == 32
    out = capsys.readouterr().out
    assert out.count("epoch ") >= 3 and "test accuracy" in out and f"{r.test['accuracy']:.4f}" in out


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(data, tmp_path):
    cfg = _config(epochs=2, checkpoint_every=5)
    full = fit(mlp(), data, cfg, verbose=False)
    run = str(tmp_path / "run")
    first = fit(mlp(), data, cfg, run_dir=run, max_steps=17, verbose=False)  # stops inside epoch 2
    assert first.step == 17
    rest = fit(mlp(), data, cfg, run_dir=run, resume=True, verbose=False)
    assert rest.step == full.step == 24
    assert _leaves_equal(rest.params, full.params) and _leaves_equal(rest.opt_state, full.opt_state)
    untimed = lambda h: [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k} for r in h]
    assert untimed(rest.history) == untimed(full.history)  # epoch 2's mean spans the interruption
    assert rest.test == full.test


def test_a_used_run_dir_is_not_overwritten(data, tmp_path):
    run = str(tmp_path / "run")
    fit(mlp(), data, _config(epochs=1), run_dir=run, verbose=False)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        fit(mlp(), data, _config(epochs=1), run_dir=run, verbose=False)
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in \['seed'\]"):
        fit(mlp(), data, _config(epochs=2, seed=3), run_dir=run, resume=True, verbose=False)



@pytest.mark.parametrize("kw,message", [
    (dict(steps_per_call=0), "steps_per_call must be a positive int, got 0"),
    (dict(steps_per_call=2, unroll=0), r"unroll must be a positive int \(scan iterations per loop body\), got 0"),
    (dict(l2=-1.0), "l2 must be a non-negative float, got -1.0"),
    (dict(precision="fp8"), "precision must be one of f32, bf16; got 'fp8'"),
])
def test_make_train_step_rejects_bad_options(kw, message):
    with pytest.raises(ValueError, match=message):
        make_train_step(mlp(), make_optimizer("sgd", 0.1), **kw)
