"""Issue 17's bad inputs to training: TrainConfig (every field), build_model and load_data, fcnn.step
(the train step, evaluate, predict), fcnn.train.fit (its data, options and run directory), the tasks'
targets (issue 16), fcnn.optim and fcnn.losses. Nothing here trains: every error is raised before a
step runs. The one model is built once (``_tiny``), the run-directory rows write a few bytes into
``tmp_path``. The battery's map and conventions: test_bad_inputs.py.
"""
import functools
import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _bad_inputs import INF, NAN, _case, _file, _foreign_dir, _init, _x, _zeros

import fcnn
from fcnn import layers, losses, optim, step, tasks
from fcnn.combinators import serial
from fcnn.run import TrainConfig, build_model, load_data, write_config
from fcnn.train import fit


@functools.lru_cache(maxsize=None)
def _tiny():
    """One small classifier (n, 6, 6, 1) -> (n, 3) with zero params (no error below depends on their
    values), its optimizer state and data."""
    zeros = fcnn.init.zeros  # fit initialises it for real: no random draws, nothing to compile
    model = serial(layers.Conv2D(2, 3, w_init=zeros), layers.Relu(), layers.Flatten(), layers.Dense(3, w_init=zeros))
    _, params, state = _init(model, (4, 6, 6, 1))
    params, state = _zeros(params), _zeros(state)
    opt = optim.make_optimizer("sgd", 0.1)
    rng = np.random.default_rng(0)
    ds = SimpleNamespace(x_train=rng.standard_normal((8, 6, 6, 1)).astype(np.float32),
                         y_train=(np.arange(8) % 3).astype(np.int32),
                         x_test=rng.standard_normal((4, 6, 6, 1)).astype(np.float32),
                         y_test=(np.arange(4) % 3).astype(np.int32), num_classes=3)
    return SimpleNamespace(model=model, params=params, state=state, opt=opt, opt_state=opt.init(params), ds=ds)


def _config(**kw):
    base = dict(epochs=1, batch_size=4, augment_shift=0, impl="lax", pool_impl="lax", eval_batch_size=4,
                optimizer="sgd", schedule="constant")
    return TrainConfig(**{**base, **kw})


def _fit(config=None, **kw):
    t = _tiny()
    data_over = {k[5:]: kw.pop(k) for k in list(kw) if k.startswith("data_")}
    ds = SimpleNamespace(**{**vars(t.ds), **data_over})
    return fit(t.model, ds, config or _config(), verbose=False, progress=False, **kw)


def _seg_fit(config=None, **kw):
    """fit of a per-pixel model (n, 6, 6, 1) -> (n, 6, 6, 3) on segment targets (n, 6, 6) in [0, 3)."""
    t = _tiny()
    labels = {k: (np.arange(len(getattr(t.ds, k)) * 36) % 3).reshape(-1, 6, 6).astype(np.int32)
              for k in ("y_train", "y_test")}
    data_over = {k[5:]: kw.pop(k) for k in list(kw) if k.startswith("data_")}
    ds = SimpleNamespace(**{**vars(t.ds), **labels, **data_over})
    model = layers.Conv2D(3, 3, padding="SAME", w_init=fcnn.init.zeros)
    return fit(model, ds, config or _config(task="segment"), verbose=False, progress=False, **kw)


def _evaluate(x=None, y=None, batch_size=4, **kw):
    t = _tiny()
    return step.evaluate(t.model, t.params, t.state, t.ds.x_test if x is None else x,
                         t.ds.y_test if y is None else y, batch_size, **kw)


def _predict(x=None, **kw):
    t = _tiny()
    return step.predict(t.model, t.params, t.state, t.ds.x_test if x is None else x, **kw)


def _train_step(key, **kw):
    """Build the jitted step and call it once on a batch: tracing runs the checks, nothing compiles."""
    t = _tiny()
    params, state, opt_state = jax.tree.map(jnp.array, (t.params, t.state, t.opt_state))
    fn = step.make_train_step(t.model, t.opt, **kw)
    return fn(params, state, opt_state, (t.ds.x_train[:4], t.ds.y_train[:4]), key)


def _field(name, value, pattern, xfail=None, exc=ValueError):
    return _case(lambda: _config(**{name: value}), exc, pattern, f"TrainConfig-{name}={value!r}", xfail)


def _wrong_type_field(name, value):
    """A str field given a value of another type: refused naming the field."""
    return _case(lambda: _config(**{name: value}), (TypeError, ValueError), rf"\b{name}\b",
                 f"TrainConfig-{name}={value!r}")


_POS_INT = r"must be a positive int"
TRAINING = [
    # TrainConfig: every field
    *[_field(f, v, rf"{f} {_POS_INT}") for f in ("epochs", "batch_size", "steps_per_call", "keep", "eval_batch_size")
      for v in (0, -1, 1.5, "3", True, None)],
    _field("checkpoint_every", 0, r"checkpoint_every must be a positive int \(steps\) or None, got 0"),
    _field("checkpoint_every", "100", r"checkpoint_every must be a positive int"),
    _field("augment_shift", -1, r"augment_shift must be a non-negative int \(pixels\), got -1"),
    _field("augment_shift", 1.5, r"augment_shift must be a non-negative int"),
    _field("seed", -1, r"seed must be an int in \[0, 4294967296\), got -1"),
    _field("seed", 2 ** 32, r"seed must be an int in \[0, 4294967296\), got 4294967296"),
    _field("seed", "0", r"seed must be an int in \[0, 4294967296\)"),
    _field("l2", -1.0, r"l2 must be a non-negative float, got -1.0"),
    _field("l2", NAN, r"l2 must be a non-negative float, got nan"),
    _field("l2", INF, r"l2 must be a non-negative float, got inf"),
    _field("l2", "abc", r"l2 must be a non-negative float, got 'abc'"),
    _field("label_smoothing", 1.0, r"label_smoothing must be a float in \[0.0, 1.0\)"),
    _field("label_smoothing", -0.1, r"label_smoothing must be a float in"),
    _field("label_smoothing", NAN, r"label_smoothing must be a float in .*got nan"),
    _field("label_smoothing", "0.1", r"label_smoothing must be a float in"),
    _field("dtype_policy", "f16", r"dtype_policy must be one of f32, bf16; got 'f16'"),
    _field("dtype_policy", None, r"dtype_policy must be one of"),
    _field("parallel", "gpu", r"parallel must be one of .*got 'gpu'"),
    _field("devices", 0, r"devices must be a positive int"),
    _field("devices", 2, r"devices=2 needs parallel 'pmap' or 'sharding'"),
    _field("optimizer", "adamx", r"optimizer must be one of .*got 'adamx'"),
    _field("learning_rate", 0.0, r"learning_rate must be a positive float, got 0.0"),
    _field("learning_rate", -1e-3, r"learning_rate must be a positive float"),
    _field("learning_rate", NAN, r"learning_rate must be a positive float, got nan"),
    _field("learning_rate", INF, r"learning_rate must be a positive float, got inf"),
    _field("learning_rate", "fast", r"learning_rate must be a positive float, got 'fast'"),
    _field("momentum", 1.0, r"momentum must be a float in \[0, 1\)"),
    _field("momentum", -0.5, r"momentum must be a float in"),
    _field("momentum", NAN, r"momentum must be a float in .*got nan"),
    _field("momentum", INF, r"momentum must be a float in .*got inf"),
    _field("schedule", "linear", r"schedule must be one of .*got 'linear'"),
    _field("weight_decay", -1e-4, r"weight_decay must be a non-negative float"),
    _field("weight_decay", NAN, r"weight_decay must be a non-negative float, got nan"),
    _field("weight_decay", INF, r"weight_decay must be a non-negative float, got inf"),
    _field("weight_decay", 1e-4, r"weight_decay applies only to optimizer 'adamw'"),
    _wrong_type_field("model", 3),
    _wrong_type_field("dataset", None),
    _wrong_type_field("data_dir", 5),
    _wrong_type_field("impl", 1),
    _wrong_type_field("pool_impl", None),
    _case(lambda: TrainConfig.from_dict({"lr": 0.1}), ValueError, r"config has unknown fields \['lr'\]",
          "TrainConfig-from-dict-unknown"),
    _case(lambda: build_model(_config(model="resnet"), 10), ValueError, r"--model must be one of .*got 'resnet'",
          "build_model-unknown-model"),
    _case(lambda: build_model(_config(impl="fast"), 10), ValueError, r"impl must be one of .*got 'fast'",
          "build_model-unknown-impl"),
    _case(lambda: build_model(_config(pool_impl="fast"), 10), ValueError, r"impl must be one of .*got 'fast'",
          "build_model-unknown-pool-impl"),
    _case(lambda: load_data(_config(dataset="imagenet")), ValueError, r"must be one of digits, .*got 'imagenet'",
          "load_data-unknown-dataset"),
    # the train step
    _case(lambda: step.make_train_step(_tiny().model, _tiny().opt, l2=-1.0), ValueError,
          r"l2 must be a non-negative float", "make_train_step-l2-negative"),
    _case(lambda: step.make_train_step(_tiny().model, _tiny().opt, l2=NAN), ValueError,
          r"l2 must be a non-negative float, got nan", "make_train_step-l2-nan"),
    _case(lambda: step.make_train_step(_tiny().model, _tiny().opt, steps_per_call=0), ValueError,
          r"steps_per_call must be a positive int", "make_train_step-steps-per-call"),
    _case(lambda: step.make_train_step(_tiny().model, _tiny().opt, dtype_policy="fp8"), ValueError,
          r"dtype_policy must be one of f32, bf16; got 'fp8'", "make_train_step-dtype-policy"),
    _case(lambda: step.make_train_step(_tiny().model, _tiny().opt, unroll=0), ValueError,
          r"unroll must be a positive int", "make_train_step-unroll"),
    _case(lambda: step.plain_train_step(_tiny().model, _tiny().opt, axis_name=""), ValueError,
          r"axis_name must be None or a non-empty str", "plain_train_step-axis-name"),
    _case(lambda: _train_step(0), TypeError, r"key must be a PRNG key .*got an array of shape \(\) and dtype int",
          "train-step-key-0"),
    _case(lambda: _train_step(np.zeros(2, np.float32)), TypeError, r"key must be a PRNG key .*float32",
          "train-step-key-float"),
    _case(lambda: _train_step(np.zeros(2, np.uint32), steps_per_call=2), TypeError,
          r"keys must be a PRNG key per step", "train-step-keys-not-stacked"),
    _case(lambda: step.make_train_step("lenet5", _tiny().opt), TypeError, r"model must be a Layer",
          "make_train_step-model-str"),
    _case(lambda: step.make_train_step(_tiny().model, _tiny().opt, loss_fn="xent"), TypeError,
          r"loss_fn must be callable", "make_train_step-loss-fn"),
    _case(lambda: step.make_train_step(_tiny().model, _tiny().opt, augment=3), TypeError, r"augment must be",
          "make_train_step-augment"),
    _case(lambda: step.make_train_step(_tiny().model, _tiny().opt, donate="no"), TypeError, r"donate must be a bool",
          "make_train_step-donate"),
    # evaluate / predict
    _case(lambda: _evaluate(batch_size=0), ValueError, r"batch_size must be a positive int", "evaluate-batch-size"),
    _case(lambda: _evaluate(y=np.arange(3, dtype=np.int32)), ValueError,
          r"x and y must hold the same non-zero number of examples, got 4 and 3", "evaluate-count-mismatch"),
    _case(lambda: _evaluate(x=_x(0, 6, 6, 1), y=np.zeros(0, np.int32)), ValueError,
          r"x and y must hold the same non-zero number", "evaluate-empty"),
    _case(lambda: _evaluate(y=np.array([0, 1, 2, 3], np.int32)), ValueError,
          r"y holds labels outside \[0, 3\) .*: 3 at index 3", "evaluate-label-too-large"),
    _case(lambda: _evaluate(y=np.array([0, -1, 2, 1], np.int32)), ValueError, r"y holds labels outside \[0, 3\)",
          "evaluate-label-negative"),
    _case(lambda: _evaluate(y=np.array([0.0, 1.0, 2.0, 1.0])), ValueError, r"y must be int class labels",
          "evaluate-float-labels"),
    _case(lambda: _evaluate(y=np.eye(5)[:4]), ValueError, r"y must be int class labels \(n,\) or one-hot rows \(n, 3\)",
          "evaluate-one-hot-width"),
    _case(lambda: _evaluate(dtype_policy="f64"), ValueError, r"dtype_policy must be one of", "evaluate-dtype-policy"),
    _case(lambda: _predict(batch_size=0), ValueError, r"batch_size must be a positive int", "predict-batch-size"),
    _case(lambda: _predict(batch_size=True), ValueError,
          r"batch_size must be a positive int", "predict-batch-size-bool"),
    _case(lambda: _predict(dtype_policy="half"), ValueError, r"dtype_policy must be one of", "predict-dtype-policy"),
    _case(lambda: _predict(x=_x(2, 6, 6, 3)), ValueError,
          r"Conv2D: apply got inputs of shape \(n, 6, 6, 3\)|w has 1 input channels per group but x has 3",
          "predict-wrong-channels"),
    _case(lambda: _predict(x=_x(6, 6, 1)), ValueError, r"(Conv2D|x must have).*rank 4", "predict-rank3"),
    # fit: the data, the run directory, the options
    _case(lambda: _fit(data_y_train=np.full(8, 3, np.int32)), ValueError,
          r"y_train holds labels outside \[0, 3\) \(the model has 3 outputs\): 3 at index 0", "fit-labels-too-large"),
    _case(lambda: _fit(data_y_train=-np.ones(8, np.int32)), ValueError, r"y_train holds labels outside \[0, 3\)",
          "fit-labels-negative"),
    _case(lambda: _fit(data_y_test=np.array([0, 1, 2, 9], np.int32)), ValueError,
          r"y_test holds labels outside \[0, 3\).*9 at index 3", "fit-test-labels"),
    _case(lambda: _fit(data_y_train=np.zeros(9, np.int32)), ValueError,
          r"y_train must hold one label per image: the images are 8, the labels 9", "fit-more-labels"),
    _case(lambda: _fit(data_y_train=np.zeros(7, np.int32)), ValueError,
          r"y_train must hold one label per image: the images are 8, the labels 7", "fit-fewer-labels"),
    _case(lambda: _fit(data_y_train=np.zeros(8, np.float32)), ValueError, r"y_train must be int class labels",
          "fit-float-labels"),
    _case(lambda: _fit(_config(augment_shift=6)), ValueError,
          r"augment_shift=6 must be smaller than the images \(6x6\)",
          "fit-augment-shift-too-large"),
    _case(lambda: _fit(_config(batch_size=16)), ValueError,
          r"batch_size must be <= the number of training examples \(8\), got 16", "fit-batch-too-large"),
    _case(lambda: _fit(data_x_train=_x(0, 6, 6, 1), data_y_train=np.zeros(0, np.int32)), ValueError,
          r"x_train must hold at least one example", "fit-empty"),
    _case(lambda: _fit(resume=True), ValueError, r"resume=True needs a run_dir", "fit-resume-without-run-dir"),
    _case(lambda: _fit(resume=True, overwrite=True, run_dir="x"), ValueError,
          r"resume=True and overwrite=True contradict", "fit-resume-and-overwrite"),
    _case(lambda: _fit(max_steps=0), ValueError, r"max_steps must be a positive int, got 0", "fit-max-steps-0"),
    _case(lambda: _fit(max_steps=-1), ValueError,
          r"max_steps must be a positive int, got -1", "fit-max-steps-negative"),
    _case(lambda: _fit(max_steps=2.5), ValueError, r"max_steps must be a positive int", "fit-max-steps-float"),
    _case(lambda: _fit({"epochs": 1}), TypeError, r"config must be a TrainConfig, got dict", "fit-config-dict"),
    _case(lambda: _fit(resume="no"), TypeError, r"resume must be a bool", "fit-resume-str"),
    _case(lambda: fit(_tiny().model, object(), _config(), verbose=False), TypeError,
          r"data must have x_train", "fit-data-object"),
    # tasks: targets checked against the model's outputs before any computation (issue 16)
    _case(lambda: _seg_fit(data_y_train=np.zeros((8, 5, 5), np.int32)), ValueError,
          r"y_train: segment targets must have shape \(n, 6, 6\) \(one label per pixel\)", "fit-segment-target-shape"),
    _case(lambda: _seg_fit(data_y_train=np.full((8, 6, 6), 3, np.int32)), ValueError,
          r"y_train: segment labels must be in \[0, 3\); got 3 at index \(0, 0, 0\)", "fit-segment-label-too-large"),
    _case(lambda: _seg_fit(data_y_test=-np.ones((4, 6, 6), np.int32)), ValueError,
          r"y_test: segment labels must be in \[0, 3\); got -1", "fit-segment-test-label-negative"),
    _case(lambda: _seg_fit(data_y_train=np.zeros((8, 6, 6), np.float32)), TypeError,
          r"y_train: segment targets must be integer class labels, got dtype float32", "fit-segment-float-labels"),
    _case(lambda: _seg_fit(task="denoise"), ValueError, r"task='denoise' differs from config.task='segment'",
          "fit-task-differs"),
    _case(lambda: _seg_fit(config=_config(task="denoise"), data_y_train=np.zeros((8, 6, 6, 1), np.float32)),
          ValueError, r"y_train: denoise targets must have the outputs' shape \(n, 6, 6, 3\)", "fit-denoise-shape"),
    _case(lambda: _evaluate(task="regress"), ValueError, r"y: regress targets must have the outputs' shape \(n, 3\)",
          "evaluate-regress-shape"),
    _case(lambda: tasks.get_task("segment", num_classes=3, metrics=["miou"]), ValueError,
          r"metric must be one of accuracy, pixel_accuracy, mean_iou", "task-unknown-metric"),
    _case(lambda: _config(task="detect"), ValueError, r"task must be one of classify, denoise, reconstruct",
          "config-task-unknown"),
    _case(lambda: _config(task="segment", augment_shift=2), ValueError,
          r"augment_shift=2 applies to task 'classify' only; task 'segment' needs augment_shift=0",
          "config-task-augment-shift"),
    _case(lambda: _config(task="denoise", label_smoothing=0.1), ValueError,
          r"label_smoothing=0.1 applies to task 'classify' only", "config-task-label-smoothing"),
    # optim
    _case(lambda: optim.make_optimizer("adamx", 1e-3), ValueError, r"optimizer must be one of", "make_optimizer-name"),
    _case(lambda: optim.make_optimizer("sgd", 0), ValueError, r"learning_rate must be a positive float, got 0",
          "make_optimizer-lr-0"),
    _case(lambda: optim.make_optimizer("sgd", NAN), ValueError, r"learning_rate must be a positive float, got nan",
          "make_optimizer-lr-nan"),
    _case(lambda: optim.make_optimizer("sgd", -INF), ValueError, r"learning_rate must be a positive float",
          "make_optimizer-lr-minus-inf"),
    _case(lambda: optim.make_optimizer("sgd", None), ValueError, r"learning_rate must be a positive float, got None",
          "make_optimizer-lr-none"),
    _case(lambda: optim.make_optimizer("momentum", 0.1, momentum=1.0), ValueError,
          r"momentum must be a float in \[0, 1\)",
          "make_optimizer-momentum"),
    _case(lambda: optim.make_optimizer("sgd", 0.1, schedule="exp"), ValueError, r"schedule must be one of",
          "make_optimizer-schedule"),
    _case(lambda: optim.make_optimizer("sgd", 0.1, schedule="cosine"), ValueError,
          r"total_steps must be a positive int \(needed by schedule='cosine'\)", "make_optimizer-cosine-no-steps"),
    _case(lambda: optim.make_optimizer("sgd", 0.1, schedule="step", total_steps=0), ValueError,
          r"total_steps must be a positive int", "make_optimizer-total-steps-0"),
    _case(lambda: optim.make_optimizer("adam", 0.1, weight_decay=0.01), ValueError,
          r"weight_decay applies only to optimizer 'adamw'", "make_optimizer-weight-decay-adam"),
    _case(lambda: optim.make_optimizer("adamw", 0.1, weight_decay=NAN), ValueError,
          r"weight_decay must be a non-negative float, got nan", "make_optimizer-weight-decay-nan"),
    # losses
    _case(lambda: losses.softmax_cross_entropy(np.zeros(3), np.zeros(3, np.int32)), ValueError,
          r"logits must have shape \(batch, classes\)", "xent-logits-rank1"),
    _case(lambda: losses.softmax_cross_entropy(np.zeros((2, 3)), np.zeros(2)), TypeError,
          r"labels of shape \(batch,\) must be integers", "xent-float-labels"),
    _case(lambda: losses.softmax_cross_entropy(np.zeros((2, 3)), np.zeros(3, np.int32)), ValueError,
          r"labels must have shape \(batch,\) .* matching logits \(2, 3\)", "xent-label-count"),
    _case(lambda: losses.softmax_cross_entropy(np.zeros((2, 3)), np.zeros((2, 4))), ValueError,
          r"labels must have shape", "xent-onehot-width"),
    _case(lambda: losses.softmax_cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int32), label_smoothing=1.0),
          ValueError, r"label_smoothing must be a float in \[0, 1\)", "xent-label-smoothing"),
    _case(lambda: losses.mse(np.zeros((2, 3)), np.zeros((3, 2))), ValueError,
          r"predictions and targets must have the same shape", "mse-shapes"),
    _case(lambda: losses.l2_penalty({"w": np.ones((2, 2))}, -1.0), ValueError, r"weight must be a non-negative float",
          "l2_penalty-weight"),
    _case(lambda: losses.l2_penalty({"w": np.ones((2, 2))}, 0.1, include_biases=1), TypeError,
          r"include_biases must be a bool", "l2_penalty-include-biases"),
    _case(lambda: losses.accuracy(np.zeros((2, 3)), np.zeros(5, np.int32)), ValueError,
          r"labels must have shape \(batch,\) or \(batch, classes\)", "accuracy-labels"),
    _case(lambda: losses.accuracy(np.zeros(3), np.zeros(3, np.int32)), ValueError, r"logits must have shape",
          "accuracy-logits-rank1"),
]


@pytest.mark.parametrize("call, exc, pattern", TRAINING)
def test_training_refuses_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# ----------------------------------------------------------------------------- fit's run directory
def _fit_into(d, setup, **kw):
    run_dir = setup(d)
    return _fit(run_dir=run_dir, **kw)


def _old_run(d):
    """A directory that holds an fcnn run whose checkpoints were deleted."""
    run = d / "run"
    run.mkdir()
    write_config(str(run), _config())
    (run / "metrics.jsonl").write_text("")
    return str(run)


RUN_DIRS = [
    _case(lambda d: _fit_into(d, _file), ValueError,
          r"run_dir '.*f\.txt' is a file, not a directory", "fit-run-dir-file"),
    _case(lambda d: _fit_into(d, _foreign_dir), ValueError,
          r"run_dir '.*proj' is not empty and does not hold an fcnn run \(it holds 'config.json'\)",
          "fit-run-dir-foreign"),
    _case(lambda d: _fit_into(d, _foreign_dir, overwrite=True), ValueError, r"run_dir '.*proj' is not empty",
          "fit-run-dir-foreign-overwrite"),
    _case(lambda d: _fit_into(d, _old_run), ValueError,
          r"run_dir '.*run' holds an fcnn run without checkpoints",
          "fit-run-dir-old-run"),
    _case(lambda d: _fit_into(d, lambda d: str(d / "new"), overwrite="yes"), TypeError, r"overwrite must be a bool",
          "fit-overwrite-str"),
    _case(lambda d: _fit_into(d, lambda d: str(d), resume=True), FileNotFoundError,
          r"run_dir '.*' holds no checkpoint to resume from", "fit-resume-empty-dir"),
    _case(lambda d: _fit_into(d, lambda d: os.path.join(_file(d), "sub")), (OSError, ValueError), r"f\.txt",
          "fit-run-dir-under-a-file"),
]


@pytest.mark.parametrize("call, exc, pattern", RUN_DIRS)
def test_fit_refuses_bad_run_directories(call, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern):
        call(tmp_path)


@pytest.mark.parametrize("kw, exc, pattern", [
    (dict(data_x_test=np.zeros((0, 6, 6, 1), np.float32), data_y_test=np.zeros(0, np.int32)), ValueError,
     r"x_test must come with y_test and hold at least one example, got x_test of 0"),
    (dict(data_y_test=None), ValueError, r"x_test must come with y_test .* y_test None"),
    (dict(data_x_train=np.zeros((16, 6, 6, 1), np.uint8)), TypeError,
     r"x_train must hold floating-point inputs \(float32, ...\), got uint8"),
    # before: an integer test set reached the model's conv, whose error named no argument
    (dict(data_x_test=np.zeros((8, 6, 6, 1), np.uint8)), TypeError,
     r"x_test must hold floating-point inputs \(float32, ...\), got uint8"),
], ids=["empty-test-set", "x-test-without-y-test", "uint8-x-train", "uint8-x-test"])
def test_fit_refuses_before_it_makes_the_run_directory(kw, exc, pattern, tmp_path):
    """Each of these failed only after the run directory was made (an empty test set after a whole
    epoch), leaving a directory that then blocked the same command; now nothing is written."""
    run = tmp_path / "run"
    with pytest.raises(exc, match=pattern):
        _fit(run_dir=str(run), **kw)
    assert not run.exists()


def test_a_classify_run_of_a_per_pixel_model_is_refused_before_the_run_directory(tmp_path):
    """A model with (n, h, w, k) outputs under task classify failed at its first step; now the target
    check names the rule before anything is written."""
    t = _tiny()
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"y_train: task classify needs a model whose outputs are \(n, classes\); "
                                         r"this one gives \('n', 6, 6, 3\)"):
        fit(layers.Conv2D(3, 3, padding="SAME"), t.ds, _config(), run_dir=str(run), verbose=False, progress=False)
    assert not run.exists()


def test_tensorboard_without_tensorboardx_is_refused_before_the_run_directory(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboardx(name, *a, **k):
        if name.startswith("tensorboardX"):
            raise ImportError("No module named 'tensorboardX'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    run = tmp_path / "run"
    with pytest.raises(ImportError, match=r"tensorboard=True needs tensorboardX: pip install 'fcnn\[tensorboard\]'"):
        _fit(run_dir=str(run), tensorboard=True)
    assert not run.exists()


def test_resume_from_a_missing_directory_makes_none(tmp_path):
    """resume=True into a mistyped path created it (and its parents) before failing."""
    run = tmp_path / "typo" / "sub"
    with pytest.raises(FileNotFoundError, match=r"run_dir '.*typo/sub' does not exist: nothing to resume"):
        _fit(run_dir=str(run), resume=True)
    assert not (tmp_path / "typo").exists()


def test_a_source_test_data_must_be_a_pair():
    t = _tiny()
    x, y = np.asarray(t.ds.x_train)[:16], np.asarray(t.ds.y_train)[:16]

    def source(seed, epoch, start):
        for _ in range(start, 1):
            yield x, y

    with pytest.raises(TypeError, match="test_data must be an \\(x_test, y_test\\) pair, got tuple of 3"):
        fit(t.model, source, _config(), steps_per_epoch=1, test_data=(x, y, y), verbose=False, progress=False)
    x = (x * 0).astype(np.uint8)  # a source of integer pixels: refused as x_train is (a user's Layer trained on them)
    with pytest.raises(TypeError, match=r"the batch source's x must hold floating-point inputs .* got uint8"):
        fit(t.model, source, _config(batch_size=len(x)), steps_per_epoch=1, verbose=False, progress=False)


def test_a_config_json_that_is_not_utf8_is_named(tmp_path):
    from fcnn.run import read_config

    (tmp_path / "config.json").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        read_config(str(tmp_path))
