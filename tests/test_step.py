"""The device step (fcnn.step): train step, scanned steps, dtype policy, evaluate, predict."""
import contextlib
import re
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import runtime, tasks
from _tiny import Data, init_trees, mlp
from fcnn.losses import softmax_cross_entropy
from fcnn.optim import make_optimizer
from fcnn.step import (compiler_options, evaluate, make_eval_step, make_train_step, plain_train_step, predict,
                       step_keys, train_step_fn)


@pytest.fixture(scope="module")
def data():
    return Data()


def test_loss_falls_on_a_fixed_batch(data):
    model, opt = mlp(drop_rate=0.0), make_optimizer("adam", 1e-2)
    x, y = data.x_train[:64], data.y_train[:64]
    params, state, opt_state = init_trees(model, x, opt)
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
    params, state, opt_state = init_trees(model, x, opt)
    p0 = jax.tree.map(np.array, params)
    logits = jax.jit(lambda p: model.apply(p, {}, x)[0])  # the reference side, compiled once
    data_grad = jax.jit(jax.grad(lambda p: softmax_cross_entropy(logits(p), y)))(params)
    new, _, _, m = make_train_step(model, opt, l2=l2)(params, state, opt_state, (x, y), jax.random.PRNGKey(0))
    for name in ("w1", "w2"):  # kernels: penalty gradient 2 * l2 * w
        np.testing.assert_allclose(new[name], p0[name] - lr * (data_grad[name] + 2 * l2 * p0[name]), rtol=1e-5, atol=1e-7)
    for name in ("b1", "b2"):  # biases are not penalised
        np.testing.assert_allclose(new[name], p0[name] - lr * data_grad[name], rtol=1e-5, atol=1e-7)
    # the reported loss is the data loss, without the penalty
    np.testing.assert_allclose(m["loss"], softmax_cross_entropy(logits(p0), y), rtol=1e-6)
    # classify's metrics: the batch's accuracy (as the step always reported) and its sums, counted by NumPy
    correct = int(np.sum(np.argmax(np.asarray(logits(p0)), -1) == np.asarray(y)))
    assert (int(m["sums"]["accuracy"]["correct"]), int(m["sums"]["accuracy"]["count"])) == (correct, 32)
    assert float(m["accuracy"]) == pytest.approx(correct / 32, abs=1e-7)


@pytest.mark.parametrize("unroll", [1, 2, 4])
def test_scanned_steps_equal_single_steps(data, unroll):
    model, opt, k, bs = mlp(), make_optimizer("momentum", 0.05), 4, 32
    x = data.x_train[: k * bs].reshape(k, bs, 8, 8, 1)
    y = data.y_train[: k * bs].reshape(k, bs)
    base = jax.random.PRNGKey(7)
    single = make_train_step(model, opt)
    p, s, o = init_trees(model, x[0], opt)
    losses = []
    for t in range(k):
        p, s, o, m = single(p, s, o, (x[t], y[t]), step_keys(base, 3 + t))
        losses.append(m["loss"])
    p2, s2, o2 = init_trees(model, x[0], opt)
    p2, s2, o2, m2 = make_train_step(model, opt, steps_per_call=k, unroll=unroll)(p2, s2, o2, (x, y),
                                                                                   step_keys(base, 3, k))
    assert m2["loss"].shape == (k,)
    chex.assert_trees_all_close((p, o), (p2, o2), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.array(losses), m2["loss"], rtol=1e-6)


def test_train_step_donates_its_state(data):
    model, opt = mlp(), make_optimizer("sgd", 0.1)
    x, y = data.x_train[:16], data.y_train[:16]
    params, state, opt_state = init_trees(model, x, opt)
    new, *_ = make_train_step(model, opt)(params, state, opt_state, (x, y), jax.random.PRNGKey(0))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(params))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new))


def test_bf16_keeps_float32_master_params_and_learns(data):
    model, opt = mlp(drop_rate=0.0), make_optimizer("adam", 1e-2)
    x, y = data.x_train[:64], data.y_train[:64]
    params, state, opt_state = init_trees(model, x, opt)
    # the first step's loss is that of the bf16 forward (independent cast here), not the f32 one
    p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    loss16 = float(softmax_cross_entropy(model.apply(p16, {}, x.astype(jnp.bfloat16))[0].astype(jnp.float32), y))
    loss32 = float(softmax_cross_entropy(model.apply(params, {}, x)[0], y))
    step = make_train_step(model, opt, dtype_policy="bf16")
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


@pytest.mark.parametrize("kw,message", [
    (dict(steps_per_call=0), "steps_per_call must be a positive int, got 0"),
    (dict(steps_per_call=2, unroll=0), r"unroll must be a positive int \(scan iterations per loop body\), got 0"),
    (dict(l2=-1.0), "l2 must be a non-negative float, got -1.0"),
    (dict(precision="fp8"), "precision must be one of f32, bf16; got 'fp8'"),
])
def test_make_train_step_rejects_bad_options(kw, message):
    # precision= is the deprecated name of dtype_policy=: its warning comes before the error
    warned = (pytest.warns(DeprecationWarning, match="precision= is deprecated") if "precision" in kw
              else contextlib.nullcontext())
    with warned, pytest.raises(ValueError, match=message):
        make_train_step(mlp(), make_optimizer("sgd", 0.1), **kw)


def test_precision_is_a_deprecated_alias_of_dtype_policy(data):
    """The old keyword still selects the policy (bf16's first loss differs from f32's) and warns."""
    model, opt = mlp(drop_rate=0.0), make_optimizer("sgd", 0.1)
    x, y = data.x_train[:32], data.y_train[:32]
    losses = {}
    for kw in (dict(dtype_policy="bf16"), dict(precision="bf16"), dict()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step = make_train_step(model, opt, **kw)
        assert any(issubclass(w.category, DeprecationWarning) for w in caught) == ("precision" in kw)
        p, s, o = init_trees(model, x, opt)
        losses[tuple(kw.items())] = float(step(p, s, o, (x, y), jax.random.PRNGKey(0))[3]["loss"])
    assert losses[(("dtype_policy", "bf16"),)] == losses[(("precision", "bf16"),)] != losses[()]


def test_plain_train_step_is_the_uncompiled_body_of_make_train_step(data):
    """A user's own jax.jit around plain_train_step, with fcnn's compiler options, computes exactly
    fcnn's jitted step."""
    model, opt = mlp(), make_optimizer("momentum", 0.05)
    x, y = data.x_train[:32], data.y_train[:32]
    fn = plain_train_step(model, opt)
    assert not hasattr(fn, "lower")  # not a jitted function
    p1, s1, o1 = init_trees(model, x, opt)
    p2, s2, o2 = init_trees(model, x, opt)
    a = make_train_step(model, opt)(p1, s1, o1, (x, y), jax.random.PRNGKey(4))
    b = jax.jit(fn, compiler_options=compiler_options())(p2, s2, o2, (x, y), jax.random.PRNGKey(4))
    chex.assert_trees_all_close(a, b, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="plain_train_step"):
        train_step_fn(model, opt)


def test_predict_in_batches_equals_one_call(data):
    """Fixed-shape batches with a padded last one give the same probabilities, row for row."""
    model = mlp()
    _, params, state = model.init(jax.random.PRNGKey(3), (1, 8, 8, 1))
    x = data.x_test[:37]  # 37 = 2 * 16 + 5
    whole = predict(model, params, state, x)
    batched = predict(model, params, state, x, batch_size=16)
    assert batched.shape == (37, 10)
    chex.assert_trees_all_close(batched, whole, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(whole).sum(-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        predict(model, params, state, x, batch_size=0)
    # no rows: (0, classes) either way (in batches it was (0,))
    assert predict(model, params, state, x[:0], batch_size=16).shape == predict(model, params, state, x[:0]).shape == (0, 10)


@pytest.mark.parametrize("key,exc,got", [
    (0, TypeError, "an array of shape () and dtype int"),  # traced: jit sees a 0-d int array
    (None, ValueError, "pass key= a PRNG key"),  # a key not given: the layers' rule (types.check_key)
    (np.zeros(3, np.uint32), TypeError, "an array of shape (3,) and dtype uint32"),
    (np.zeros(2, np.int32), TypeError, "an array of shape (2,) and dtype int32"),
])
def test_the_step_refuses_anything_but_a_prng_key(data, key, exc, got):
    model, opt = mlp(), make_optimizer("sgd", 0.1)
    x, y = data.x_train[:8], data.y_train[:8]
    p, s, o = init_trees(model, x, opt)
    with pytest.raises(exc, match=r"^the train step needs a PRNG key: .*" + re.escape(got)):
        make_train_step(model, opt, donate=False)(p, s, o, (x, y), key)
    loss = lambda k: float(make_train_step(model, opt, donate=False)(p, s, o, (x, y), k)[3]["loss"])  # noqa: E731
    assert loss(jax.random.key(0)) == loss(jax.random.PRNGKey(0))  # new-style keys work: the same bits, same dropout


def test_the_step_refuses_an_empty_batch(data):
    """0 examples gave a NaN loss and accuracy without a word; now refused while tracing, one step or k."""
    model, opt = mlp(), make_optimizer("sgd", 0.1)
    x, y = data.x_train[:8], data.y_train[:8]
    p, s, o = init_trees(model, x, opt)
    with pytest.raises(ValueError, match=re.escape("the batch must hold at least one example (the loss is their "
                                                   f"mean), got x of shape {(0,) + x.shape[1:]}")):
        make_train_step(model, opt, donate=False)(p, s, o, (x[:0], y[:0]), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="the batch must hold at least one example"):
        make_train_step(model, opt, donate=False, steps_per_call=2)(
            p, s, o, (np.stack([x[:0]] * 2), np.stack([y[:0]] * 2)), jax.random.split(jax.random.PRNGKey(0), 2))


def test_the_scanned_step_wants_one_key_per_step(data):
    model, opt = mlp(), make_optimizer("sgd", 0.1)
    x, y = data.x_train[:8], data.y_train[:8]
    p, s, o = init_trees(model, x, opt)
    step = make_train_step(model, opt, donate=False, steps_per_call=2)
    batch = (np.stack([x, x]), np.stack([y, y]))
    with pytest.raises(TypeError, match=r"^the train step \(steps_per_call=2\) needs a PRNG key per step: keys must "
                                        r"be a PRNG key per step, stacked .*uint32 of shape \(2, 2\).*typed keys of "
                                        r"shape \(2,\)\), got an array of shape \(2,\) and dtype uint32"):
        step(p, s, o, batch, jax.random.PRNGKey(0))  # one key where two are needed
    for keys in (jax.random.split(jax.random.PRNGKey(0), 2), jax.random.split(jax.random.key(0), 2)):
        assert step(p, s, o, batch, keys)[3]["loss"].shape == (2,)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(model="mlp"), TypeError, r"^model must be a Layer, got str$"),
    (dict(loss_fn="xent"), TypeError, r"^loss_fn must be callable \(\(logits, labels\) -> scalar\), got 'xent'$"),
    (dict(augment=3), TypeError, r"^augment must be callable \(\(key, x\) -> x\) or None, got 3$"),
    (dict(donate="no"), TypeError, r"^donate must be a bool, got 'no'$"),
    (dict(heap_limit=1), TypeError, r"^heap_limit must be a bool, got 1$"),
])
def test_make_train_step_checks_its_arguments_before_tracing(kw, exc, match):
    kw = {"model": mlp(), "optimizer": make_optimizer("sgd", 0.1), **kw}
    with pytest.raises(exc, match=match):
        make_train_step(**kw)


def test_evaluate_checks_labels_against_the_images_and_the_model(data):
    model = mlp()
    _, params, state = model.init(jax.random.PRNGKey(3), (1, 8, 8, 1))
    x, y = data.x_test[:20], data.y_test[:20]
    with pytest.raises(ValueError, match=r"y holds labels outside \[0, 10\) .*: 10 at index 3"):
        evaluate(model, params, state, x, np.where(np.arange(20) == 3, 10, y), batch_size=8)
    with pytest.raises(ValueError, match="x and y must hold the same non-zero number of examples, got 20 and 21"):
        evaluate(model, params, state, x, np.concatenate([y, y[:1]]), batch_size=8)
    with pytest.raises(ValueError, match=r"int class labels \(n,\) or one-hot rows \(n, 10\)"):
        evaluate(model, params, state, x, y.astype(np.float32), batch_size=8)
    onehot = np.eye(10, dtype=np.float32)[y]
    assert evaluate(model, params, state, x, onehot, batch_size=8) == evaluate(model, params, state, x, y, batch_size=8)
    # integer one-hot rows too, as the task's own check, the loss and the accuracy take them (they
    # were refused with a message that listed them as allowed)
    assert evaluate(model, params, state, x, onehot.astype(np.int32), batch_size=8) == evaluate(
        model, params, state, x, y, batch_size=8)
    soft = np.where((np.arange(20) == 5)[:, None] & (np.arange(10) < 2), [-0.5, 1.5] + [0] * 8, onehot)  # was silent
    with pytest.raises(ValueError, match=r"y rows are class probabilities and must be finite and >= 0; row 5 is \[-0"):
        evaluate(model, params, state, x, soft, batch_size=8)


def test_non_finite_test_inputs_warn_and_give_nan_not_a_number(data):
    model = mlp()
    _, params, state = model.init(jax.random.PRNGKey(3), (1, 8, 8, 1))
    x = data.x_test[:20].copy()
    x[5, 1, 1, 0] = np.nan
    x[9, 0, 0, 0] = np.inf
    with pytest.warns(RuntimeWarning, match="2 of 20 examples with nan or inf"):
        got = evaluate(model, params, state, x, data.y_test[:20], batch_size=8)
    assert np.isnan(got["loss"]) and np.isnan(got["accuracy"]) and got["n"] == 20


def test_evaluate_segment_metrics_are_full_set_values_on_an_uneven_last_batch():
    """20 images in batches of 7 (the last has 6 real rows, 1 padding row): pixel accuracy and mean /
    foreground IoU equal NumPy's over the 20 images at once (confusion counted pixel by pixel here),
    not a mean of per-batch values; the loss is the mean of per-image losses."""
    from fcnn.combinators import serial
    from fcnn.layers import Conv2D
    from fcnn.activations import Relu

    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 5, 5, 2)).astype(np.float32)
    y = rng.integers(0, 4, size=(20, 5, 5)).astype(np.int32)
    y[:, 0, 0] = 255  # ignored pixels count nowhere
    model = serial(Conv2D(6, 3, padding="SAME"), Relu(), Conv2D(4, 3, padding="SAME"))
    _, params, state = model.init(jax.random.PRNGKey(0), x.shape)
    task = tasks.segment(4, ignore_index=255)
    got = evaluate(model, params, state, x, y, 7, task=task)
    logits = np.asarray(model.apply(params, state, x)[0], np.float64)
    pred = logits.argmax(-1)
    conf = np.zeros((4, 4))
    for t, p in zip(y.ravel(), pred.ravel()):
        if t != 255:
            conf[t, p] += 1
    iou = [conf[c, c] / (conf[c].sum() + conf[:, c].sum() - conf[c, c]) for c in range(4)]
    assert got["pixel_accuracy"] == pytest.approx(np.trace(conf) / conf.sum(), abs=1e-12)
    assert got["mean_iou"] == pytest.approx(np.mean(iou), abs=1e-12)
    assert got["foreground_iou"] == pytest.approx(np.mean(iou[1:]), abs=1e-12)
    keep = y != 255
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.where(keep, y, 0)[..., None], -1)[..., 0]
    per_image = (nll * keep).sum((1, 2)) / keep.sum((1, 2))
    assert got["loss"] == pytest.approx(per_image.mean(), rel=1e-5) and got["n"] == 20
    by_batch = [evaluate(model, params, state, x[s:s + 7], y[s:s + 7], 7, task=task)["mean_iou"] for s in (0, 7, 14)]
    assert np.mean(by_batch) != pytest.approx(got["mean_iou"], abs=1e-6)  # the sums are what makes it exact


def test_evaluate_psnr_and_predict_for_a_dense_task():
    from fcnn.layers import Conv2D

    rng = np.random.default_rng(4)
    x = rng.uniform(size=(11, 4, 4, 1)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
    model = Conv2D(1, 3, padding="SAME")
    _, params, state = model.init(jax.random.PRNGKey(1), x.shape)
    out = np.asarray(predict(model, params, state, x, task="denoise", batch_size=4), np.float64)
    np.testing.assert_allclose(out, np.asarray(model.apply(params, state, x)[0]), rtol=1e-6)  # raw outputs
    got = evaluate(model, params, state, x, y, 4, task="denoise")
    assert got["psnr"] == pytest.approx(10 * np.log10(1 / np.mean((out - y) ** 2)), abs=1e-4)
    probs = predict(model, params, state, x, task="segment")  # per-pixel softmax over the last axis
    np.testing.assert_allclose(np.asarray(probs), 1.0, rtol=1e-6)  # one class: probability 1


def test_cpu_steps_compile_without_ynnpack_fusions_and_agree_with_the_default(monkeypatch):
    """On CPU the jitted steps compile with CPU_COMPILER_OPTIONS (XLA's Eigen convolutions and dots
    instead of YNNPACK's: 0.64x / 0.79x the step time, docs/perf_notes.md item 30): the optimized
    program has no YNN fusion where the default compile has one, and the new params agree with the
    default program's to float32 rounding. (A CPU with bfloat16 dot instructions, avx512_bf16 or AMX,
    gets CPU_AMX_COMPILER_OPTIONS: the next test.)"""
    from fcnn import layers
    from fcnn.activations import Relu
    from fcnn.combinators import serial
    from fcnn.ops import auto
    from fcnn.step import CPU_COMPILER_OPTIONS, CPU_HEAP_OPTIONS

    if jax.default_backend() != "cpu":
        pytest.skip("the options are for XLA:CPU")
    monkeypatch.setattr(auto, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # no bf16 dot instructions
    monkeypatch.setattr(runtime, "persistent_cache_on", lambda: False)  # this suite's cache drops the heap limit
    assert compiler_options() == {**CPU_COMPILER_OPTIONS, **CPU_HEAP_OPTIONS}
    assert compiler_options(heap_limit=False) == CPU_COMPILER_OPTIONS  # make_eval_step's and predict's
    for flags in ({"avx2", "avx512f", "avx512_bf16"}, {"avx2", "amx_bf16"}):  # bf16 dot instructions: the next test's
        monkeypatch.setattr(auto, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert compiler_options(heap_limit=False) == runtime.CPU_AMX_COMPILER_OPTIONS
    monkeypatch.setattr(auto, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    with pytest.raises(TypeError, match="heap_limit"):
        compiler_options(heap_limit="yes")
    model = serial(layers.Conv2D(4, 3), Relu(), layers.Flatten(), layers.Dense(10))
    opt = make_optimizer("sgd", 0.1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 8)
    params, state, opt_state = init_trees(model, x, opt)
    args = (params, state, opt_state, (x, y), jax.random.PRNGKey(1))
    ours, default = make_train_step(model, opt, donate=False), jax.jit(plain_train_step(model, opt))
    assert "__ynn_fusion" not in ours.lower(*args).compile().as_text()
    assert "__ynn_fusion" in default.lower(*args).compile().as_text()
    for a, b in zip(jax.tree.leaves(ours(*args)[0]), jax.tree.leaves(default(*args)[0])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _temp_allocations(dump_dir) -> list:
    """(size, largest value) of each temporary block in the buffer assignments XLA dumped to ``dump_dir``
    (its ``xla_dump_to`` option): the blocks a call of the program allocates for its temporaries."""
    blocks = []
    for path in dump_dir.glob("*buffer-assignment.txt"):
        for block in re.split(r"\n(?=allocation \d+:)", path.read_text()):
            head = re.match(r"allocation \d+: size (\d+), preallocated-temp", block)
            if head:
                values = [int(v) for v in re.findall(r"\(size=(\d+),offset=", block)]
                blocks.append((int(head.group(1)), max(values)))
    return blocks


# the limit is forced on under the suite's compilation cache, which cannot store a step with several heaps
@pytest.mark.filterwarnings("ignore:Error writing persistent compilation cache entry")
def test_cpu_steps_split_their_temporaries_into_heaps_under_the_limit(monkeypatch, tmp_path):
    """On CPU the train steps compile with CPU_HEAP_OPTIONS: XLA gives a call's temporaries in heaps of at most
    the limit instead of one block the size of the program's peak (glibc hands a block over 32 MiB out as
    fresh pages every call, docs/perf_notes.md item 65). With the limit patched to 256 KiB, the step whose
    temporaries XLA's defaults (``make_train_step(heap_limit=False)``) put in one block of more than that
    gets several, each within the limit or holding one larger array alone, and computes the same new
    params bit for bit."""
    from fcnn import layers
    from fcnn.activations import Relu
    from fcnn.combinators import serial

    if jax.default_backend() != "cpu":
        pytest.skip("the option is for XLA:CPU")
    limit = 256 * 1024
    monkeypatch.setattr(runtime, "CPU_HEAP_OPTIONS", {"xla_multiheap_size_constraint_per_heap": limit})
    monkeypatch.setattr(runtime, "persistent_cache_on", lambda: False)
    assert compiler_options()["xla_multiheap_size_constraint_per_heap"] == limit
    model = serial(layers.Conv2D(8, 3, padding="SAME"), Relu(), layers.Conv2D(8, 3, padding="SAME"), Relu(),
                   layers.Flatten(), layers.Dense(10))
    opt = make_optimizer("sgd", 0.1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 16, 16, 1)).astype(np.float32), rng.integers(0, 10, 16)
    params, state, opt_state = init_trees(model, x, opt)
    args = (params, state, opt_state, (x, y), jax.random.PRNGKey(1))
    ours = make_train_step(model, opt, donate=False)
    plain = make_train_step(model, opt, donate=False, heap_limit=False)  # XLA's default: one block
    ours.lower(*args).compile({"xla_dump_to": str(tmp_path / "ours")})
    plain.lower(*args).compile({"xla_dump_to": str(tmp_path / "plain")})
    (one_block, _), = _temp_allocations(tmp_path / "plain")
    assert one_block > 2 * limit
    heaps = _temp_allocations(tmp_path / "ours")
    assert len(heaps) >= 2
    assert all(size <= max(limit, largest) for size, largest in heaps)
    for a, b in zip(jax.tree.leaves(ours(*args)[0]), jax.tree.leaves(plain(*args)[0])):
        np.testing.assert_array_equal(a, b)
    # the eval step compiles without the limit: its temporaries stay one block (XLA's default)
    xs = np.concatenate([x] * 8)  # a batch whose eval temporaries exceed the limit
    make_eval_step(model).lower(params, state, xs, np.concatenate([y] * 8), np.ones(len(xs), np.float32)).compile(
        {"xla_dump_to": str(tmp_path / "eval")})
    (eval_block, _), = _temp_allocations(tmp_path / "eval")
    assert eval_block > limit


def test_cpu_with_amx_steps_hand_only_the_matmuls_to_ynnpack(monkeypatch):
    """On a CPU with AMX (or avx512_bf16) the steps compile with CPU_AMX_COMPILER_OPTIONS: YNNPACK takes each matrix
    product (the form in which XLA:CPU reaches AMX, for im2col_vjp's bf16 products), XLA keeps the
    convolutions (Eigen's); the one-step params agree with the default program's to bf16 rounding."""
    from fcnn import layers
    from fcnn.activations import Relu
    from fcnn.combinators import serial
    from fcnn.ops import auto
    from fcnn.step import CPU_AMX_COMPILER_OPTIONS, CPU_HEAP_OPTIONS

    if jax.default_backend() != "cpu":
        pytest.skip("the options are for XLA:CPU")
    monkeypatch.setattr(auto, "cpu_has_amx_bf16", lambda: True)
    monkeypatch.setattr(runtime, "persistent_cache_on", lambda: False)
    assert compiler_options() == {**CPU_AMX_COMPILER_OPTIONS, **CPU_HEAP_OPTIONS}
    # the second conv (256 -> 256 channels, bf16) is im2col_vjp's three products; the first is lax's
    model = serial(layers.Conv2D(256, 3, padding="SAME", impl="auto"), Relu(),
                   layers.Conv2D(256, 3, padding="SAME", impl="auto"), layers.Flatten(), layers.Dense(10))
    opt = make_optimizer("sgd", 0.1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 4, 4, 3)).astype(np.float32), rng.integers(0, 10, 2)
    params, state, opt_state = init_trees(model, x, opt)
    args = (params, state, opt_state, (x, y), jax.random.PRNGKey(1))
    ours = make_train_step(model, opt, donate=False, dtype_policy="bf16")
    text = ours.lower(*args).compile().as_text()
    ynn = [line for line in text.splitlines() if "__ynn_fusion" in line and "ROOT" not in line]
    assert ynn and not any("convolution(" in line for line in ynn)
    assert "convolution(" in text  # the first conv, outside YNNPACK
    assert text.count("conditional(") >= 2  # im2col_vjp's finite-kernel guards (forward, dx)
    default = jax.jit(plain_train_step(model, opt, dtype_policy="bf16"))
    for a, b in zip(jax.tree.leaves(ours(*args)[0]), jax.tree.leaves(default(*args)[0])):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-3)
