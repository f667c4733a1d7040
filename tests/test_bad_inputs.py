"""Issue 17's battery of bad inputs: every one refused with the right error type and a message that
names the argument (or the file) and the rule, before any computation; no traceback from the CLI.

One table per area, each row ``pytest.param(<the bad call>, <exception type>, <regex>, id=...)``:

    OPS          fcnn.ops (conv2d, max/avg/global pools) and fcnn.shapes
    LAYERS       fcnn.layers / activations constructors, init with bad shapes, apply with an input
                 that differs from the one init saw, keys, fcnn.combinators, fcnn.models, fcnn.summary
    TRAINING     TrainConfig (every field), fcnn.step, fcnn.train.fit, fcnn.optim, fcnn.losses
    DATA         fcnn.data (load, batching) and damaged IDX / CIFAR-10 files (the error names the file)
    CHECKPOINTS  fcnn.checkpoint.save / restore / latest / load_latest and fcnn.run.read_config
    CLI          every command of ``fcnn``: status 2 (1 for runtime failures), ONE line on stderr that
                 starts with "fcnn" and names the argument or file, no "Traceback"

Regexes match with ``re.search`` (``pytest.raises(match=)``); ``_all(a, b, ...)`` means "a, b, ...
all appear, in any order". Rows the library does not answer as it should yet are
``xfail(strict=True)`` with the reason "issue 17: <what happens now>": when the library is fixed the
row XPASSes, fails, and its marker must be removed.

Nothing here trains: every error is raised before a step runs. The one model is built once
(``_tiny``), the file rows write a few bytes into ``tmp_path``.
"""
import functools
import gzip
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import warnings
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _formats import idx_bytes, write, write_cifar_bin, write_cifar_py, write_mnist

import fcnn
from fcnn import checkpoint, cli, data, layers, losses, models, ops, optim, shapes, step, tasks
from fcnn.combinators import branches, residual, serial
from fcnn.datafiles import (IDX_IMAGES_MAGIC, DataError, MissingDataError, read_cifar_binary,
                            read_cifar_pickle, read_idx)
from fcnn.run import TrainConfig, build_model, load_data, make_run_optimizer, read_config, write_config
from fcnn.summary import summary
from fcnn.train import fit

NAN, INF = float("nan"), float("inf")
KEY = jax.random.PRNGKey(0)
KEY_TYPED = jax.random.wrap_key_data(KEY)


def _all(*parts: str) -> str:
    """A regex that matches when every part (a regex) occurs somewhere, in any order."""
    return "(?s)^" + "".join(f"(?=.*{p})" for p in parts)


def _fails(reason: str):
    """The marker of a row the library does not answer as issue 17 asks yet."""
    return pytest.mark.xfail(strict=True, reason=f"issue 17: {reason}")


def _case(call, exc, pattern, id, xfail=None):
    return pytest.param(call, exc, pattern, id=id, marks=() if xfail is None else _fails(xfail))


# ----------------------------------------------------------------------------- shared objects
def _x(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


_ONE_OF_LAYOUTS = r"layout must be one of \W*NHWC\W+NCHW\b"  # "NHWC, NCHW" or "('NHWC', 'NCHW')"
X = _x(1, 8, 8, 3)  # NHWC
W = _x(3, 3, 3, 4)  # HWIO


def _init(layer, in_shape):
    """``layer.init(KEY, in_shape)`` traced abstractly (``jax.eval_shape``): every shape check runs,
    nothing is computed or compiled. Returns ``(out_shape, params, state)`` of ShapeDtypeStructs."""
    box = {}

    def run(key):
        out, params, state = layer.init(key, in_shape)
        box["out"] = out
        return params, state

    params, state = jax.eval_shape(run, KEY)
    return box["out"], params, state


def _zeros(tree):
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tree)


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


def _apply_other(layer, init_shape, x_shape, **kw):
    """init ``layer`` with ``init_shape``, then apply it to a float32 input of ``x_shape``; both traced
    abstractly (the checks issue 17 asks for run at trace time, so they run here too)."""
    _, p, s = _init(layer, init_shape)
    return jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, **kw), p, s,
                          jax.ShapeDtypeStruct(x_shape, jnp.float32))


# ============================================================================= ops and shapes
OPS = [
    # conv2d: every argument
    _case(lambda: ops.conv2d(X, W, stride=0), ValueError, r"stride must be >= 1", "conv-stride-0"),
    _case(lambda: ops.conv2d(X, W, stride=(1, 2, 3)), TypeError,
          r"stride must be an int or a pair", "conv-stride-triple"),
    _case(lambda: ops.conv2d(X, W, stride="2"), TypeError, r"stride must be an int or a pair", "conv-stride-str"),
    _case(lambda: ops.conv2d(X, W, stride=True), TypeError, r"stride must be an int or a pair", "conv-stride-bool"),
    _case(lambda: ops.conv2d(X, W, stride=1.5), TypeError, r"stride must be an int or a pair", "conv-stride-float"),
    _case(lambda: ops.conv2d(X, W, padding="FULL"), ValueError,
          r"padding must be 'VALID', 'SAME'", "conv-padding-full"),
    _case(lambda: ops.conv2d(X, W, padding=-1), ValueError, r"padding must be non-negative", "conv-padding-negative"),
    _case(lambda: ops.conv2d(X, W, padding=1.5), TypeError, r"padding must be 'VALID', 'SAME'", "conv-padding-float"),
    _case(lambda: ops.conv2d(X, W, padding=((1, 1), (1,))), TypeError, r"padding must be", "conv-padding-ragged"),
    _case(lambda: ops.conv2d(X, W, padding=((1, -1), (0, 0))), ValueError, r"padding must be non-negative",
          "conv-padding-explicit-negative"),
    _case(lambda: ops.conv2d(X, W, dilation=0), ValueError, r"dilation must be >= 1", "conv-dilation-0"),
    _case(lambda: ops.conv2d(X, W, dilation=(1, None)), TypeError, r"dilation must be an int or a pair",
          "conv-dilation-none"),
    _case(lambda: ops.conv2d(X, W, groups=0), ValueError, r"groups must be a positive int", "conv-groups-0"),
    _case(lambda: ops.conv2d(X, W, groups=1.0), ValueError, r"groups must be a positive int", "conv-groups-float"),
    _case(lambda: ops.conv2d(X, _x(3, 3, 1, 4), groups=2), ValueError, r"groups=2 must divide the input channels \(3\)",
          "conv-groups-not-dividing-cin"),
    _case(lambda: ops.conv2d(_x(1, 8, 8, 4), _x(3, 3, 2, 3), groups=2), ValueError,
          r"groups=2 must divide the output channels of w \(3\)", "conv-groups-not-dividing-cout"),
    _case(lambda: ops.conv2d(X, W, layout="NWHC"), ValueError, _ONE_OF_LAYOUTS, "conv-layout"),
    _case(lambda: ops.conv2d(X, W, impl="fast"), ValueError, r"impl must be one of \W*lax\b.*got 'fast'", "conv-impl"),
    _case(lambda: ops.conv2d(X, W, impl=None), ValueError, r"impl must be one of", "conv-impl-none"),
    _case(lambda: ops.conv2d(X, W, precision="bogus"), ValueError, r"precision must be None, a lax.Precision",
          "conv-precision"),
    _case(lambda: ops.conv2d(X, _x(3, 3, 2, 4)), ValueError, r"w has 2 input channels per group but x has 3 channels",
          "conv-kernel-channels"),
    _case(lambda: ops.conv2d(X, W, layout="NCHW"), ValueError, r"w has .* input channels per group but x has",
          "conv-nchw-with-nhwc-arrays"),
    _case(lambda: ops.conv2d(X, _x(9, 9, 3, 4)), ValueError, r"the kernel is larger than the padded input",
          "conv-kernel-too-large"),
    _case(lambda: ops.conv2d(X, W, dilation=4), ValueError, r"the kernel is larger .*effective size \(9, 9\)",
          "conv-dilated-kernel-too-large"),
    _case(lambda: ops.conv2d(_x(8, 8, 3), W), ValueError, r"x must have rank 4", "conv-x-rank3"),
    _case(lambda: ops.conv2d(_x(1, 1, 8, 8, 3), W), ValueError, r"x must have rank 4", "conv-x-rank5"),
    _case(lambda: ops.conv2d(X, _x(3, 3, 3)), ValueError, r"w must have rank 4", "conv-w-rank3"),
    _case(lambda: ops.conv2d(X, None), ValueError, r"w must have rank 4", "conv-w-none"),
    _case(lambda: ops.conv2d(X, W, _x(3)), ValueError, r"b must have shape \(cout,\) = \(4,\)", "conv-bias-shape"),
    _case(lambda: ops.conv2d(X, W, _x(1, 4)), ValueError, r"b must have shape \(cout,\)", "conv-bias-rank2"),
    _case(lambda: ops.conv2d(_x(1, 8, 8, 3, dtype=np.int32), _x(3, 3, 3, 4, dtype=np.int32)), TypeError,
          r"x and w must have a floating dtype", "conv-int-inputs"),
    _case(lambda: ops.conv2d(_x(1, 8, 8, 3, dtype=bool), _x(3, 3, 3, 4, dtype=bool)), TypeError,
          r"x and w must have a floating dtype", "conv-bool-inputs"),
    _case(lambda: ops.conv2d(X, _x(0, 3, 3, 4)), ValueError, _all(r"\bw\b", r"kernel|window|size"),
          "conv-kernel-height-0"),
    # max_pool2d
    _case(lambda: ops.max_pool2d(X, 0), ValueError, r"window must be >= 1", "maxpool-window-0"),
    _case(lambda: ops.max_pool2d(X, None), TypeError, r"window must be an int or a pair", "maxpool-window-none"),
    _case(lambda: ops.max_pool2d(X, (2, 2, 2)), TypeError, r"window must be an int or a pair", "maxpool-window-triple"),
    _case(lambda: ops.max_pool2d(X, 2.0), TypeError, r"window must be an int or a pair", "maxpool-window-float"),
    _case(lambda: ops.max_pool2d(X, 2, stride=0), ValueError, r"stride must be >= 1", "maxpool-stride-0"),
    _case(lambda: ops.max_pool2d(X, 2, padding="FULL"), ValueError, r"padding must be 'VALID', 'SAME'",
          "maxpool-padding"),
    _case(lambda: ops.max_pool2d(X, 2, padding=-1), ValueError, r"padding must be non-negative", "maxpool-padding-neg"),
    _case(lambda: ops.max_pool2d(X, 2, dilation=0), ValueError, r"dilation must be >= 1", "maxpool-dilation-0"),
    _case(lambda: ops.max_pool2d(X, 2, layout="HWNC"), ValueError, r"layout must be one of", "maxpool-layout"),
    _case(lambda: ops.max_pool2d(X, 2, impl="fft"), ValueError,
          r"impl must be one of \W*lax\W+reference\W+custom_vjp\b", "maxpool-impl"),
    _case(lambda: ops.max_pool2d(X, 2, ties="last"), ValueError, r"ties must be one of \W*first\W+split\W+all\b",
          "maxpool-ties"),
    _case(lambda: ops.max_pool2d(X, 2, impl="lax", ties="split"), ValueError,
          r"ties='split' is not what impl='lax' implements", "maxpool-lax-split"),
    _case(lambda: ops.max_pool2d(X, 2, impl="reference", ties="first"), ValueError,
          r"ties='first' is not what impl='reference' implements", "maxpool-reference-first"),
    _case(lambda: ops.max_pool2d(X, 9), ValueError, r"the window is larger than the padded input", "maxpool-too-large"),
    _case(lambda: ops.max_pool2d(X, 3, dilation=4), ValueError, r"the window is larger than the padded input",
          "maxpool-dilated-too-large"),
    _case(lambda: ops.max_pool2d(_x(8, 8, 3), 2), ValueError, r"x must have rank 4", "maxpool-rank3"),
    _case(lambda: ops.max_pool2d(_x(1, 8, 8, 3, dtype=np.int32), 2), TypeError, r"x must have a floating dtype",
          "maxpool-int"),
    _case(lambda: ops.max_pool2d(_x(1, 8, 8, 3, dtype=np.uint8), 2, impl="custom_vjp", ties="all"), TypeError,
          r"x must have a floating dtype", "maxpool-uint8-custom"),
    # avg_pool2d
    _case(lambda: ops.avg_pool2d(X, 0), ValueError, r"window must be >= 1", "avgpool-window-0"),
    _case(lambda: ops.avg_pool2d(X, 2, stride=(0, 1)), ValueError, r"stride must be >= 1", "avgpool-stride-0"),
    _case(lambda: ops.avg_pool2d(X, 2, impl="custom_vjp"), ValueError, r"impl must be one of \W*lax\W+reference\b",
          "avgpool-impl"),
    _case(lambda: ops.avg_pool2d(X, 2, count_include_pad=1), TypeError, r"count_include_pad must be a bool",
          "avgpool-count-include-pad"),
    _case(lambda: ops.avg_pool2d(X, 2, padding="same-ish"), ValueError, r"padding must be", "avgpool-padding"),
    _case(lambda: ops.avg_pool2d(X, 2, layout=None), ValueError, r"layout must be one of", "avgpool-layout"),
    _case(lambda: ops.avg_pool2d(X, 10), ValueError,
          r"the window is larger than the padded input", "avgpool-too-large"),
    _case(lambda: ops.avg_pool2d(_x(4, 4), 2), ValueError, r"x must have rank 4", "avgpool-rank2"),
    _case(lambda: ops.avg_pool2d(_x(1, 8, 8, 3, dtype=np.int64), 2), TypeError, r"x must have a floating dtype",
          "avgpool-int"),
    # global pools
    _case(lambda: ops.global_avg_pool2d(X, layout="CHWN"), ValueError, r"layout must be one of", "gavg-layout"),
    _case(lambda: ops.global_avg_pool2d(_x(8, 8, 3)), ValueError, r"x must have rank 4", "gavg-rank3"),
    _case(lambda: ops.global_avg_pool2d(_x(1, 8, 8, 3, dtype=np.int32)), TypeError, r"x must have a floating dtype",
          "gavg-int"),
    _case(lambda: ops.global_max_pool2d(X, layout=1), ValueError, r"layout must be one of", "gmax-layout"),
    _case(lambda: ops.global_max_pool2d(_x(2, 3)), ValueError, r"x must have rank 4", "gmax-rank2"),
    _case(lambda: ops.global_max_pool2d(_x(1, 8, 8, 3, dtype=np.int32)), TypeError, r"x must have a floating dtype",
          "gmax-int"),
    _case(lambda: ops.global_max_pool2d(_x(1, 0, 8, 3)), ValueError, r"x must have non-empty spatial dimensions",
          "gmax-empty"),
    _case(lambda: ops.global_avg_pool2d(_x(1, 0, 8, 3)), ValueError, r"x must have non-empty spatial dimensions",
          "gavg-empty"),
    # shapes: formulas and normalisers
    _case(lambda: shapes.conv_output_shape((1, 8, 8, 3), (3, 3, 3, 4), layout="nhwc"), ValueError,
          _ONE_OF_LAYOUTS + r"\W+got 'nhwc'", "shapes-conv-layout"),
    _case(lambda: shapes.conv_output_shape((1, 8, 8), (3, 3, 3, 4)), ValueError,
          r"x and w must have the same rank .* x \(1, 8, 8\) and w \(3, 3, 3, 4\)", "shapes-conv-x-rank"),
    _case(lambda: shapes.conv_output_shape((1, 8, 8), (3, 3, 3, 4), layout="NHWC"), ValueError,
          r"x must have rank 4 to match layout='NHWC'", "shapes-conv-x-rank-layout"),
    _case(lambda: shapes.conv_output_shape((1, 8, 8, 3), (3, 3, 3)), ValueError, r"x and w must have the same rank",
          "shapes-conv-w-rank"),
    _case(lambda: shapes.conv_output_shape((1, 8, 8, 3), (3, 3, 1, 4), groups=2), ValueError,
          r"groups=2 must divide the input channels", "shapes-conv-groups"),
    _case(lambda: shapes.conv_output_shape((1, 8, 8, 3), (3, 3, 3, 4), groups=-1), ValueError,
          r"groups must be a positive int", "shapes-conv-groups-negative"),
    _case(lambda: shapes.conv_output_shape((1, 4, 4, 3), (5, 5, 3, 4)), ValueError,
          r"the kernel is larger than the padded input: input \(4, 4\)", "shapes-conv-too-large"),
    _case(lambda: shapes.pool_output_shape((1, 8, 8, 3), 2, stride=0), ValueError, r"stride must be >= 1",
          "shapes-pool-stride"),
    _case(lambda: shapes.pool_output_shape((1, 8, 8, 3), 2, padding="valid-ish"), ValueError, r"padding must be",
          "shapes-pool-padding"),
    _case(lambda: shapes.pool_output_shape((1, 3, 3, 3), 4), ValueError, r"the window is larger",
          "shapes-pool-too-large"),
    _case(lambda: shapes.normalize_pair("2", "kernel"), TypeError, r"kernel must be an int or a pair of ints, got '2'",
          "shapes-pair-str"),
    _case(lambda: shapes.normalize_pair((1, 0), "stride"), ValueError, r"stride must be >= 1 in every dimension",
          "shapes-pair-zero"),
    _case(lambda: shapes.normalize_padding("full", (8, 8), (3, 3), (1, 1), (1, 1)), ValueError,
          r"padding must be 'VALID', 'SAME'", "shapes-padding-str"),
    _case(lambda: shapes.normalize_padding([[1, 2, 3], [1, 2]], (8, 8), (3, 3), (1, 1), (1, 1)), TypeError,
          r"padding must be", "shapes-padding-nested"),
    _case(lambda: shapes.normalize_layout("NCWH"), ValueError, _ONE_OF_LAYOUTS, "shapes-layout"),
    _case(lambda: shapes.check_rank4((1, 2, 3), "in_shape"), ValueError,
          r"in_shape must have rank 4 .*got shape \(1, 2, 3\)", "shapes-rank4"),
]


@pytest.mark.parametrize("call, exc, pattern", OPS)
def test_ops_and_shapes_refuse_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# ============================================================================= layers, models, summary
LAYERS = [
    # constructors
    _case(lambda: layers.Conv2D(0, 3), ValueError, r"out_channels must be a positive int, got 0", "Conv2D-out-0"),
    _case(lambda: layers.Conv2D(4.0, 3), ValueError, r"out_channels must be a positive int", "Conv2D-out-float"),
    _case(lambda: layers.Conv2D(4, 0), ValueError, r"kernel must be >= 1", "Conv2D-kernel-0"),
    _case(lambda: layers.Conv2D(4, "3x3"), TypeError, r"kernel must be an int or a pair", "Conv2D-kernel-str"),
    _case(lambda: layers.Conv2D(4, 3, stride=0), ValueError, r"stride must be >= 1", "Conv2D-stride-0"),
    _case(lambda: layers.Conv2D(4, 3, padding="FULL"), ValueError, r"padding must be 'VALID', 'SAME'",
          "Conv2D-padding"),
    _case(lambda: layers.Conv2D(4, 3, padding=-2), ValueError, r"padding must be non-negative", "Conv2D-padding-neg"),
    _case(lambda: layers.Conv2D(4, 3, dilation=0), ValueError, r"dilation must be >= 1", "Conv2D-dilation-0"),
    _case(lambda: layers.Conv2D(4, 3, groups=3), ValueError, r"groups=3 must divide out_channels=4",
          "Conv2D-groups-cout"),
    _case(lambda: layers.Conv2D(4, 3, groups=0), ValueError, r"groups must be a positive int", "Conv2D-groups-0"),
    _case(lambda: layers.Conv2D(4, 3, layout="NWHC"), ValueError, r"layout must be one of", "Conv2D-layout"),
    _case(lambda: layers.Conv2D(4, 3, impl="fast"), ValueError, r"impl must be one of .*got 'fast'", "Conv2D-impl"),
    _case(lambda: layers.Conv2D(4, 3, use_bias=1), TypeError, r"use_bias must be a bool", "Conv2D-use-bias"),
    _case(lambda: layers.Conv2D(4, 3, w_init="he"), TypeError, r"w_init", "Conv2D-w-init"),
    _case(lambda: layers.Conv2D(4, 3, b_init=0.0), TypeError, r"b_init", "Conv2D-b-init"),
    _case(lambda: layers.Conv2D(4, 3, param_dtype=jnp.int32), TypeError, r"param_dtype must be a floating dtype",
          "Conv2D-param-dtype"),
    _case(lambda: layers.Conv2D(4, 3, precision="bogus"), ValueError, r"precision must be None, a lax.Precision",
          "Conv2D-precision"),
    _case(lambda: layers.Dense(0), ValueError, r"out_features must be a positive int, got 0", "Dense-0"),
    _case(lambda: layers.Dense(2.5), ValueError, r"out_features must be a positive int", "Dense-float"),
    _case(lambda: layers.Dense(True), ValueError, r"out_features must be a positive int", "Dense-bool"),
    _case(lambda: layers.Dense(4, use_bias="yes"), TypeError, r"use_bias must be a bool", "Dense-use-bias"),
    _case(lambda: layers.Dense(4, param_dtype="int8"), TypeError, r"param_dtype must be a floating dtype",
          "Dense-param-dtype"),
    _case(lambda: layers.Dense(4, w_init=None), TypeError, r"w_init", "Dense-w-init"),
    _case(lambda: layers.MaxPool2D(0), ValueError, r"window must be >= 1", "MaxPool2D-window-0"),
    _case(lambda: layers.MaxPool2D(2, stride=-1), ValueError, r"stride must be >= 1", "MaxPool2D-stride"),
    _case(lambda: layers.MaxPool2D(2, padding="FULL"), ValueError, r"padding must be", "MaxPool2D-padding"),
    _case(lambda: layers.MaxPool2D(2, dilation=0), ValueError, r"dilation must be >= 1", "MaxPool2D-dilation"),
    _case(lambda: layers.MaxPool2D(2, layout="X"), ValueError, r"layout must be one of", "MaxPool2D-layout"),
    _case(lambda: layers.MaxPool2D(2, impl="fft"), ValueError, r"impl must be one of", "MaxPool2D-impl"),
    _case(lambda: layers.MaxPool2D(2, ties="random"), ValueError, r"ties must be one of \W*first\W+split\W+all\b",
          "MaxPool2D-ties"),
    _case(lambda: layers.MaxPool2D(2, impl="lax", ties="all"), ValueError,
          r"ties='all' is not what impl='lax' implements", "MaxPool2D-lax-all"),
    _case(lambda: layers.AvgPool2D(0), ValueError, r"window must be >= 1", "AvgPool2D-window"),
    _case(lambda: layers.AvgPool2D(2, count_include_pad="no"), TypeError, r"count_include_pad must be a bool",
          "AvgPool2D-count-include-pad"),
    _case(lambda: layers.AvgPool2D(2, impl="custom_vjp"), ValueError, r"impl must be one of \W*lax\W+reference\b",
          "AvgPool2D-impl"),
    _case(lambda: layers.GlobalAvgPool2D(layout="X"), ValueError, r"layout must be one of", "GlobalAvgPool2D-layout"),
    _case(lambda: layers.GlobalMaxPool2D(layout="nchw"), ValueError, r"layout must be one of",
          "GlobalMaxPool2D-layout"),
    _case(lambda: layers.Flatten(layout=3), ValueError, r"layout must be one of", "Flatten-layout"),
    _case(lambda: layers.Dropout(1.0), ValueError, r"drop_rate must be a float in \[0, 1\), got 1.0", "Dropout-1"),
    _case(lambda: layers.Dropout(-0.1), ValueError, r"drop_rate must be a float in \[0, 1\)", "Dropout-negative"),
    _case(lambda: layers.Dropout(NAN), ValueError, r"drop_rate must be a float in \[0, 1\), got nan", "Dropout-nan"),
    _case(lambda: layers.Dropout("0.5"), ValueError, r"drop_rate must be a float in \[0, 1\)", "Dropout-str"),
    _case(lambda: layers.BatchNorm(momentum=1.5), ValueError, r"momentum must be a float in \[0, 1\]",
          "BatchNorm-momentum"),
    _case(lambda: layers.BatchNorm(momentum=NAN), ValueError, r"momentum must be a float in \[0, 1\]",
          "BatchNorm-momentum-nan"),
    _case(lambda: layers.BatchNorm(epsilon=0), ValueError, r"epsilon must be a positive float", "BatchNorm-epsilon-0"),
    _case(lambda: layers.BatchNorm(epsilon=INF), ValueError, r"epsilon must be a positive float, got inf",
          "BatchNorm-epsilon-inf"),
    _case(lambda: layers.BatchNorm(axis_name=3), TypeError, r"axis_name must be None, a str", "BatchNorm-axis-name"),
    _case(lambda: layers.BatchNorm(layout="NC"), ValueError, r"layout must be one of", "BatchNorm-layout"),
    _case(lambda: layers.BatchNorm(param_dtype=jnp.int32), TypeError, r"param_dtype must be a floating dtype",
          "BatchNorm-param-dtype"),
    _case(lambda: layers.Activation(3), TypeError, r"fn must be callable, got 3", "Activation-not-callable"),
    _case(lambda: layers.Lambda("relu"), TypeError, r"fn must be callable", "Lambda-not-callable"),
    _case(lambda: layers.Softmax(axis=1.5), TypeError, r"axis must be an int", "Softmax-axis"),
    _case(lambda: layers.LogSoftmax(axis="last"), TypeError, r"axis must be an int", "LogSoftmax-axis"),
    _case(lambda: layers.Gelu(approximate=1), TypeError, r"approximate must be a bool", "Gelu-approximate"),
    _case(lambda: layers.Elu(alpha="1"), TypeError, r"alpha must be a number", "Elu-alpha-str"),
    _case(lambda: layers.LeakyRelu(negative_slope=None), TypeError, r"negative_slope must be a number",
          "LeakyRelu-slope-none"),
    _case(lambda: layers.Elu(alpha=NAN), ValueError, r"alpha must be a finite", "Elu-alpha-nan"),
    _case(lambda: layers.LeakyRelu(negative_slope=INF), ValueError, r"negative_slope must be a finite",
          "LeakyRelu-slope-inf"),
    # init with bad shapes
    _case(lambda: _init(layers.Conv2D(4, 3), (1, 8, 8)), ValueError, r"in_shape must have rank 4",
          "Conv2D-init-rank3"),
    _case(lambda: _init(layers.Conv2D(4, 3), (1, 8, 8, 0)), ValueError, r"in_shape must be a tuple of positive ints",
          "Conv2D-init-zero-channels"),
    _case(lambda: _init(layers.Conv2D(4, 3), (1, 8.0, 8, 3)), ValueError,
          r"in_shape must be a tuple of positive ints", "Conv2D-init-float-dim"),
    _case(lambda: _init(layers.Conv2D(4, 3), "1,8,8,3"), ValueError, r"in_shape must be a tuple of positive ints",
          "Conv2D-init-str"),
    _case(lambda: _init(layers.Conv2D(4, 5), (1, 3, 3, 1)), ValueError, r"the kernel is larger than the padded",
          "Conv2D-init-too-small"),
    _case(lambda: _init(layers.Conv2D(4, 3, groups=2), (1, 8, 8, 3)), ValueError,
          r"groups=2 must divide the input channels \(3\)", "Conv2D-init-groups"),
    _case(lambda: _init(layers.Dense(4), (16,)), ValueError, r"in_shape of Dense must be \(batch, \.\.\., features\)",
          "Dense-init-rank1"),
    _case(lambda: _init(layers.Dense(4), (2, -16)), ValueError, r"in_shape must be a tuple of positive ints",
          "Dense-init-negative"),
    _case(lambda: _init(layers.MaxPool2D(3), (1, 2, 2, 1)), ValueError, r"the window is larger than the padded",
          "MaxPool2D-init-too-small"),
    _case(lambda: _init(layers.AvgPool2D(2), (4, 4)), ValueError, r"in_shape must have rank 4", "AvgPool2D-init-rank"),
    _case(lambda: _init(layers.GlobalMaxPool2D(), (4, 4, 4)), ValueError, r"in_shape must have rank 4",
          "GlobalMaxPool2D-init-rank"),
    _case(lambda: _init(layers.BatchNorm(), (2, 3, 4, 5, 6, 7)), ValueError,
          r"in_shape of BatchNorm must be \(n, c\) or rank 3-5",
          "BatchNorm-init-rank3"),
    _case(lambda: _init(layers.Flatten(), (5,)), ValueError, r"in_shape of Flatten must have a batch dim",
          "Flatten-init-rank1"),
    _case(lambda: _init(layers.Dropout(0.5), (0, 3)), ValueError, r"in_shape must be a tuple of positive ints",
          "Dropout-init-zero"),
    _case(lambda: _init(layers.Relu(), None), ValueError, r"in_shape must be a tuple of positive ints",
          "Relu-init-none"),
    _case(lambda: layers.Conv2D(4, 3).init(0, (1, 8, 8, 3)), TypeError, r"\bkey\b.*PRNG key", "Conv2D-init-key-0"),
    # apply with an input that differs from what init saw: name the layer and both shapes
    _case(lambda: _apply_other(layers.Dense(4), (2, 16), (2, 20)), ValueError, _all("Dense", r"\b16\b", r"\b20\b"),
          "Dense-apply-20-features-not-16"),
    _case(lambda: _apply_other(models.lenet5(), (1, 28, 28, 1), (1, 32, 32, 1)), ValueError,
          _all(r"Dense|Conv2D", r"\b400\b|28, 28", r"\b576\b|32, 32"), "lenet5-apply-32x32"),
    _case(lambda: _apply_other(layers.BatchNorm(), (2, 5, 5, 4), (2, 5, 5, 6), train=True), ValueError,
          _all("BatchNorm", r"\b4\)", r"5, 5, 6\)"), "BatchNorm-apply-6-channels-not-4-train"),
    _case(lambda: _apply_other(layers.BatchNorm(), (2, 5, 5, 4), (2, 5, 5, 6)), ValueError,
          _all("BatchNorm", r"\b4\)", r"5, 5, 6\)"), "BatchNorm-apply-6-channels-not-4-eval"),
    _case(lambda: _apply_other(layers.Conv2D(4, 3), (1, 8, 8, 3), (1, 8, 8, 5)), ValueError,
          _all("Conv2D", r"\b3\)", r"8, 8, 5\)"), "Conv2D-apply-5-channels-not-3"),
    _case(lambda: _apply_other(serial(layers.Flatten(), layers.Dense(3)), (2, 4, 4, 1), (2, 5, 5, 1)), ValueError,
          _all(r"Flatten|Dense", r"4, 4, 1\)|\b16\b", r"5, 5, 1\)|\b25\b"), "Flatten-Dense-apply-5x5-not-4x4"),
    _case(lambda: _apply_other(layers.Conv2D(4, 3), (1, 8, 8, 3), (8, 8, 3)), ValueError,
          r"(Conv2D|x must have).*rank 4",
          "Conv2D-apply-rank3"),
    # keys where a PRNG key is needed
    _case(lambda: _apply_other(layers.Dropout(0.5), (2, 3), (2, 3), key=None, train=True), ValueError,
          _all("Dropout", r"\bkey\b", "PRNG key"), "Dropout-train-key-none"),
    _case(lambda: _apply_other(layers.Dropout(0.5), (2, 3), (2, 3), key=0, train=True), TypeError,
          r"(Dropout|key must be).*PRNG key", "Dropout-train-key-0"),
    _case(lambda: _apply_other(layers.Dropout(0.5), (2, 3), (2, 3), key=np.ones(2), train=True), TypeError,
          r"(Dropout|key must be).*PRNG key", "Dropout-train-key-float-array"),
    _case(lambda: _apply_other(serial(layers.Dense(3), layers.Dropout(0.5)), (2, 4), (2, 4), key=0, train=True),
          TypeError, r"(serial|Dropout|key must be).*PRNG key", "serial-train-key-0"),
    _case(lambda: _apply_other(serial(layers.Dense(3), layers.Dropout(0.5)), (2, 4), (2, 4), key=None, train=True),
          ValueError, _all("Dropout", r"\bkey\b", "PRNG key"), "serial-train-key-none"),
    # combinators
    _case(lambda: serial(), ValueError, r"serial needs at least one layer", "serial-empty"),
    _case(lambda: serial(layers.Dense(2), "relu"), TypeError, r"serial argument 1 must be a Layer", "serial-not-layer"),
    _case(lambda: serial(layers.Dense(2), jax.nn.relu), TypeError, r"serial argument 1 must be a Layer",
          "serial-function"),
    _case(lambda: residual("block"), TypeError, r"residual argument 0 must be a Layer", "residual-not-layer"),
    _case(lambda: _init(residual(layers.Dense(3)), (2, 4)), ValueError,
          r"residual: the block's output shape \(2, 3\) must equal the input shape", "residual-shape"),
    _case(lambda: _init(residual(layers.Conv2D(4, 3), layers.Conv2D(4, 1)), (1, 8, 8, 4)), ValueError,
          r"must equal the shortcut's output shape", "residual-shortcut-shape"),
    _case(lambda: branches(), ValueError, r"branches needs at least one layer", "branches-empty"),
    _case(lambda: branches(layers.Dense(2), merge="avg"), ValueError, r"merge must be one of concat, sum",
          "branches-merge"),
    _case(lambda: branches(layers.Dense(2), layout="HW"), ValueError, r"layout must be one of", "branches-layout"),
    _case(lambda: _init(branches(layers.Dense(2), layers.Dense(3), merge="sum"), (2, 4)), ValueError,
          r"branches\(merge='sum'\): every branch must produce the same shape", "branches-sum-shapes"),
    _case(lambda: _init(branches(layers.Conv2D(2, 3), layers.Conv2D(2, 1)), (1, 8, 8, 1)), ValueError,
          r"branches\(merge='concat'\): branch outputs must agree", "branches-concat-shapes"),
    # models
    _case(lambda: models.get_model("resnet50"), ValueError, r"name must be one of .*got 'resnet50'", "get_model-name"),
    _case(lambda: models.get_model(None), ValueError, r"name must be one of", "get_model-none"),
    _case(lambda: models.get_model("lenet5", impl="fast"), ValueError, r"impl must be one of", "get_model-impl"),
    _case(lambda: models.get_model("lenet5", pool_impl="fft"), ValueError, r"impl must be one of",
          "get_model-pool-impl"),
    _case(lambda: models.get_model("lenet5", pool_impl="lax", ties="split"), ValueError,
          r"ties='split' is not what impl='lax' implements", "get_model-ties"),
    _case(lambda: models.get_model("lenet5", bogus=1), TypeError, r"unexpected keyword argument 'bogus'",
          "get_model-unknown-option"),
    _case(lambda: models.get_model("small_resnet", widths=()), ValueError, r"widths must be a non-empty sequence",
          "small_resnet-widths"),
    _case(lambda: models.get_model("small_resnet", blocks_per_stage=0), ValueError,
          r"blocks_per_stage must be a positive int", "small_resnet-blocks"),
    _case(lambda: models.get_model("small_resnet", momentum=2.0), ValueError, r"momentum must be a float in \[0, 1\]",
          "small_resnet-momentum"),
    _case(lambda: models.input_shape("vgg"), ValueError, r"name must be one of", "input_shape-name"),
    _case(lambda: models.get_model("lenet5", num_classes=0), ValueError, r"num_classes must be a positive int",
          "get_model-num-classes-0"),
    # summary
    _case(lambda: summary("lenet5", (1, 28, 28, 1)), TypeError, r"model must be a Layer, got str", "summary-model-str"),
    _case(lambda: summary(models.lenet5(), (1, -28, 28, 1)), ValueError, r"in_shape must be a tuple of positive ints",
          "summary-negative"),
    _case(lambda: summary(models.lenet5(), (28, 28, 1)), ValueError, r"in_shape must have rank 4", "summary-rank3"),
    _case(lambda: summary(models.lenet5(), (1, 4, 4, 1)), ValueError, r"the kernel is larger than the padded input",
          "summary-too-small"),
]


@pytest.mark.parametrize("call, exc, pattern", LAYERS)
def test_layers_models_and_summary_refuse_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# ============================================================================= training
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
    _field("seed", -1, r"seed must be a non-negative int, got -1"),
    _field("seed", "0", r"seed must be a non-negative int"),
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


def _fit_into(d, setup, **kw):
    run_dir = setup(d)
    return _fit(run_dir=run_dir, **kw)


def _file(d, name="f.txt", text="mine"):
    p = d / name
    p.write_text(text)
    return str(p)


def _foreign_dir(d):
    (d / "proj").mkdir()
    (d / "proj" / "config.json").write_text('{"mine": 1}')
    return str(d / "proj")


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
          r"run_dir '.*run' holds an fcnn run \(its checkpoints are gone\)",
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


# ============================================================================= data and data files
def _loaded(name, setup, **kw):
    """``data.load(name, data_dir=...)`` after ``setup(d)`` wrote the files (returns the data dir)."""
    return lambda d: data.load(name, data_dir=setup(d), **kw)


def _mnist(n_train=7, n_test=5, edit=None):
    """Standard IDX files of a small dataset in d/mnist, then ``edit(dir)`` damages one."""
    def setup(d):
        where = str(d / "mnist")
        write_mnist(where, n_train=n_train, n_test=n_test, gz=(False, False, False, False))
        if edit is not None:
            edit(where)
        return where
    return setup


def _put(name, payload):
    return lambda where: write(os.path.join(where, name), payload)


def _remove(name):
    return lambda where: os.remove(os.path.join(where, name))


def _idx(d, payload, name="train-images-idx3-ubyte", magic=IDX_IMAGES_MAGIC):
    """``read_idx`` of a file holding exactly ``payload`` (not gzipped here, whatever its name)."""
    path = str(d / name)
    with open(path, "wb") as f:
        f.write(payload)
    return read_idx(path, magic=magic)


_IMG = np.zeros((2, 3, 3), np.uint8)
_HEAD = struct.pack(">IIII", 0x00000803, 2, 3, 3)


def _cifar_py(edit=None):
    def setup(d):
        where = str(d / "cifar-10-batches-py")
        write_cifar_py(where)
        if edit is not None:
            edit(where)
        return str(d)
    return setup


def _cifar_bin(edit=None):
    def setup(d):
        where = str(d / "cifar-10-batches-bin")
        write_cifar_bin(where)
        if edit is not None:
            edit(where)
        return str(d)
    return setup


def _pickled(obj):
    return pickle.dumps(obj, protocol=2)


def _batch(over=None, n=3):
    obj = {b"batch_label": b"b", b"labels": [0] * n, b"data": np.zeros((n, 3072), np.uint8), b"filenames": [b"f"] * n}
    obj.update(over or {})
    return obj


def _cifar_file(d, payload, name="data_batch_1", reader=read_cifar_pickle, **kw):
    path = str(d / name)
    with open(path, "wb") as f:
        f.write(payload)
    return reader(path, **kw)


def _gen(fn, *args, **kw):
    """The first item of a generator (batching functions check their arguments when iterated)."""
    return next(iter(fn(*args, **kw)))


_XS, _YS = _x(10, 4, 4, 1), np.zeros(10, np.int32)

DATA = [
    # load and the in-memory datasets
    _case(lambda d: data.load("imagenet"), ValueError, r"name must be one of digits, mnist, .*got 'imagenet'",
          "load-unknown"),
    _case(lambda d: data.load(3), ValueError, r"name must be one of", "load-int"),
    _case(lambda d: data.load("mnist", data_dir=str(d)), MissingDataError,
          r"dataset file not found; looked for: .*train-images-idx3-ubyte", "load-mnist-empty-dir"),
    _case(lambda d: data.load("fashion-mnist", data_dir=str(d / "nope")), MissingDataError,
          r"looked for: .*nope.*train-images-idx3-ubyte", "load-fashion-missing-dir"),
    _case(lambda d: data.load("cifar10", data_dir=str(d)), MissingDataError, r"CIFAR-10 not found under .*data_batch",
          "load-cifar-empty-dir"),
    _case(lambda d: data.load("mnist", data_dir=_file(d)), MissingDataError, r"f\.txt.*train-images",
          "load-mnist-data-dir-is-file"),
    _case(lambda d: data.load("mnist", data_dir=5), (TypeError, ValueError), r"data_dir", "load-data-dir-int"),
    _case(lambda d: data.load("synthetic", normalize="no"), TypeError,
          r"normalize must be a bool", "load-normalize-str"),
    _case(lambda d: data.synthetic(num_classes=1), ValueError, r"num_classes must be in \[2, ", "synthetic-classes"),
    _case(lambda d: data.synthetic(size=0), ValueError, r"size must be a positive int", "synthetic-size"),
    _case(lambda d: data.synthetic(num_train=-5), ValueError, r"num_train must be a positive int", "synthetic-count"),
    _case(lambda d: data.synthetic(patch=0), ValueError, r"patch must be a positive int", "synthetic-patch"),
    _case(lambda d: data.synthetic(noise=NAN), ValueError, r"noise must be a", "synthetic-noise-nan"),
    # batching
    _case(lambda d: data.epoch_permutation(0, 0, 0), ValueError, r"n must be a positive int, got 0", "permutation-n-0"),
    _case(lambda d: data.epoch_permutation(0, 0, 2.5), ValueError, r"n must be a positive int", "permutation-n-float"),
    _case(lambda d: data.epoch_permutation(-1, 0, 5), ValueError, r"seed must be in \[0, 2\*\*32\), got -1",
          "permutation-seed"),
    _case(lambda d: data.epoch_permutation(0, 2**32, 5), ValueError, r"epoch must be in \[0, 2\*\*32\)",
          "permutation-epoch"),
    _case(lambda d: data.steps_per_epoch(10, 0), ValueError, r"batch_size must be a positive int, got 0",
          "steps_per_epoch-batch-0"),
    _case(lambda d: data.steps_per_epoch(10, 2.0), ValueError, r"batch_size must be a positive int",
          "steps_per_epoch-batch-float"),
    _case(lambda d: data.steps_per_epoch(-5, 2), ValueError, r"\bn must be a non-negative int", "steps_per_epoch-n"),
    _case(lambda d: _gen(data.batches, _XS, _YS[:9], 2, seed=0, epoch=0), ValueError,
          r"x and y must hold the same number of examples, got 10 and 9", "batches-count-mismatch"),
    _case(lambda d: _gen(data.batches, _XS, _YS, 11, seed=0, epoch=0), ValueError,
          r"batch_size must be <= the number of examples \(10\), got 11", "batches-too-large"),
    _case(lambda d: _gen(data.batches, _XS, _YS, 0, seed=0, epoch=0), ValueError, r"batch_size must be a positive int",
          "batches-batch-0"),
    _case(lambda d: _gen(data.epoch_chunks, _XS, _YS, 2, seed=0, epoch=0, steps_per_call=0), ValueError,
          r"steps_per_call must be a positive int", "epoch_chunks-steps-per-call"),
    _case(lambda d: _gen(data.eval_batches, _XS, _YS, 0), ValueError, r"batch_size must be a positive int",
          "eval_batches-batch-0"),
    _case(lambda d: _gen(data.eval_batches, _XS, _YS[:3], 4), ValueError, r"x and y must hold the same number",
          "eval_batches-count-mismatch"),
    _case(lambda d: data.random_crop(KEY, _XS, -1), ValueError, r"padding must be a non-negative int, got -1",
          "random_crop-padding"),
    _case(lambda d: data.augment(KEY, _XS, crop_padding=1.5), ValueError, r"padding must be a non-negative int",
          "augment-crop-padding"),
    # IDX files: each error names the file and the rule
    _case(lambda d: _idx(d, b"\x00\x00"), DataError, r"train-images-idx3-ubyte: 2 bytes is too short for an IDX header",
          "idx-too-short"),
    _case(lambda d: _idx(d, b""), DataError, r"train-images-idx3-ubyte: 0 bytes is too short", "idx-empty"),
    _case(lambda d: _idx(d, idx_bytes(_IMG, magic=0x12345678)), DataError,
          r"train-images-idx3-ubyte: bad IDX magic number 0x12345678, expected 0x00000803", "idx-bad-magic"),
    _case(lambda d: _idx(d, idx_bytes(np.zeros(4, np.uint8))), DataError,
          r"train-images-idx3-ubyte: bad IDX magic number 0x00000801, expected 0x00000803", "idx-labels-as-images"),
    _case(lambda d: _idx(d, idx_bytes(np.zeros(4, np.uint8), code=0x07, magic=0x0701), magic=None), DataError,
          r"train-images-idx3-ubyte: bad IDX magic number 0x00000701 .*dtype code", "idx-unknown-dtype"),
    _case(lambda d: _idx(d, struct.pack(">I", 0x0800), magic=None), DataError,
          r"train-images-idx3-ubyte: bad IDX magic number 0x00000800 .*ndim >= 1", "idx-ndim-0"),
    _case(lambda d: _idx(d, _HEAD[:10]), DataError, r"train-images-idx3-ubyte: truncated IDX header",
          "idx-truncated-header"),
    _case(lambda d: _idx(d, _HEAD + bytes(17)), DataError,
          r"train-images-idx3-ubyte: header says shape \(2, 3, 3\) .*\(truncated\)", "idx-truncated-data"),
    _case(lambda d: _idx(d, _HEAD + bytes(19)), DataError, r"train-images-idx3-ubyte: .*\(trailing bytes\)",
          "idx-trailing-bytes"),
    _case(lambda d: _idx(d, b"not gzip at all", name="train-images-idx3-ubyte.gz"), DataError,
          r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip stream", "idx-corrupt-gzip"),
    _case(lambda d: _idx(d, gzip.compress(idx_bytes(_IMG))[:-12], name="train-images-idx3-ubyte.gz"), DataError,
          r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip stream", "idx-truncated-gzip"),
    _case(lambda d: read_idx(str(d / "absent-idx3-ubyte")), MissingDataError, r"absent-idx3-ubyte: file not found",
          "idx-missing"),
    _case(_loaded("mnist", _mnist(edit=_put("train-labels-idx1-ubyte", idx_bytes(np.zeros(6, np.uint8))))), DataError,
          r"train-images-idx3-ubyte holds 7 images but .*train-labels-idx1-ubyte holds 6 labels",
          "mnist-label-count"),
    _case(_loaded("mnist", _mnist(edit=_put("t10k-labels-idx1-ubyte", idx_bytes(np.array([0, 1, 10, 2, 3]))))),
          DataError, r"t10k-labels-idx1-ubyte: label 10 at index 2 is out of range \[0, 10\)", "mnist-label-range"),
    _case(_loaded("mnist", _mnist(edit=_put("t10k-images-idx3-ubyte", idx_bytes(np.zeros((5, 20, 20)))))), DataError,
          r"t10k-images-idx3-ubyte: test images are 20x20 but the train images are 28x28", "mnist-test-size"),
    _case(_loaded("mnist", _mnist(edit=_put("train-images-idx3-ubyte", idx_bytes(np.zeros((7, 28, 28)), code=0x0B,
                                                                                 fmt=">i2")))), DataError,
          r"train-images-idx3-ubyte: bad IDX magic number 0x00000b03, expected 0x00000803", "mnist-int16-images"),
    _case(_loaded("mnist", _mnist(edit=_put("train-images-idx3-ubyte", idx_bytes(np.zeros((7, 28, 28)))[:-1]))),
          DataError, r"train-images-idx3-ubyte: header says .*\(truncated\)", "mnist-truncated-images"),
    _case(_loaded("mnist", _mnist(edit=_remove("t10k-labels-idx1-ubyte"))), MissingDataError,
          r"dataset file not found; looked for: .*t10k-labels-idx1-ubyte", "mnist-missing-test-labels"),
    _case(_loaded("mnist", _mnist(), strict=True), DataError,
          r"train-images-idx3-ubyte: expected the official 60000 train images, the file holds 7", "mnist-strict"),
    # CIFAR-10 files
    _case(lambda d: _cifar_file(d, _pickled(os.system)), DataError,
          r"data_batch_1: pickle refers to (posix|nt|os)\.system.*refusing to load it", "cifar-malicious-pickle"),
    _case(lambda d: _cifar_file(d, _pickled(_batch())[:100]), DataError,
          r"data_batch_1: corrupt or truncated pickle", "cifar-truncated-pickle"),
    _case(lambda d: _cifar_file(d, _pickled([1, 2, 3])), DataError, r"data_batch_1: expected a pickled dict",
          "cifar-pickle-list"),
    _case(lambda d: _cifar_file(d, _pickled({b"data": np.zeros((3, 3072), np.uint8)})), DataError,
          r"data_batch_1: pickled dict lacks b'data' or b'labels'", "cifar-no-labels"),
    _case(lambda d: _cifar_file(d, _pickled(_batch({b"data": np.zeros((3, 1024), np.uint8)}))), DataError,
          r"data_batch_1: b'data' must be a uint8 array of shape \(n, 3072\), got uint8 \(3, 1024\)",
          "cifar-data-shape"),
    _case(lambda d: _cifar_file(d, _pickled(_batch({b"data": np.zeros((3, 3072), np.float32)}))), DataError,
          r"data_batch_1: b'data' must be a uint8 array", "cifar-data-dtype"),
    _case(lambda d: _cifar_file(d, _pickled(_batch({b"labels": [0, 1]}))), DataError,
          r"data_batch_1: 3 images but labels have shape \(2,\)", "cifar-label-count"),
    _case(lambda d: _cifar_file(d, _pickled(_batch({b"labels": ["a", "b", "c"]}))), DataError,
          r"data_batch_1: b'labels' must be a list of ints", "cifar-label-strings"),
    _case(lambda d: _cifar_file(d, _pickled(_batch({b"labels": [0, 11, 2]}))), DataError,
          r"data_batch_1: label 11 at index 1 is out of range \[0, 10\)", "cifar-label-range"),
    _case(lambda d: _cifar_file(d, _pickled(_batch()), records=10000), DataError,
          r"data_batch_1: expected 10000 records, the file holds 3", "cifar-pickle-records"),
    _case(lambda d: read_cifar_pickle(str(d / "data_batch_9")), MissingDataError, r"data_batch_9: file not found",
          "cifar-pickle-missing"),
    _case(lambda d: _cifar_file(d, bytes(3073 * 2 + 5), "data_batch_1.bin", read_cifar_binary), DataError,
          r"data_batch_1\.bin: length 6151 bytes is not a positive multiple of the 3073-byte", "cifar-bin-length"),
    _case(lambda d: _cifar_file(d, b"", "test_batch.bin", read_cifar_binary), DataError,
          r"test_batch\.bin: length 0 bytes is not a positive multiple", "cifar-bin-empty"),
    _case(lambda d: _cifar_file(d, bytes([12]) + bytes(3072), "data_batch_2.bin", read_cifar_binary), DataError,
          r"data_batch_2\.bin: label 12 at index 0 is out of range", "cifar-bin-label"),
    _case(lambda d: _cifar_file(d, bytes(3073), "data_batch_3.bin", read_cifar_binary, records=2), DataError,
          r"data_batch_3\.bin: expected 2 records, the file holds 1", "cifar-bin-records"),
    _case(_loaded("cifar10", _cifar_bin(edit=_put("test_batch.bin", bytes(100)))), DataError,
          r"test_batch\.bin: length 100 bytes", "load-cifar-bin-damaged"),
    _case(_loaded("cifar10", _cifar_py(edit=_put("data_batch_4", _pickled(_batch({b"labels": [0, 0, 99]}))))),
          DataError, r"data_batch_4: label 99 at index 2", "load-cifar-py-damaged"),
    _case(_loaded("cifar10", _cifar_py(), strict=True), DataError, r"data_batch_1: expected 10000 records",
          "load-cifar-strict"),
    _case(_loaded("cifar10", _cifar_py(edit=_remove("data_batch_3"))), MissingDataError, r"data_batch_3\b",
          "load-cifar-py-one-batch-missing"),
]


@pytest.mark.parametrize("call, exc, pattern", DATA)
def test_data_and_data_files_refuse_bad_input(call, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern):
        call(tmp_path)


# ============================================================================= checkpoints and run files
_TREE = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def _saved(d, tree=None, step_=1, **kw):
    return checkpoint.save(str(d / "run"), step_, _TREE if tree is None else tree, **kw)


def _damaged(d, edit):
    """A saved checkpoint, its bytes passed through ``edit``; returns its path."""
    path = _saved(d)
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(edit(raw))
    return path


def _flip_data_byte(raw: bytes) -> bytes:
    i = raw.index(np.ones((2, 3), np.float32).tobytes())  # leaf "b" comes first: w's bytes are unique
    return raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:]


def _npz(d, name="ckpt_00000001.npz", **arrays):
    (d / "run").mkdir(exist_ok=True)
    path = str(d / "run" / name)
    np.savez(path, **arrays)
    return path


def _manifest(**over):
    m = {"format": "fcnn-checkpoint", "format_version": 1, "step": 1, "leaves": [], "sha256": "", "metadata": {}}
    m.update(over)
    return np.frombuffer(json.dumps(m).encode(), np.uint8)


def _run_dir(d, config_text):
    (d / "run").mkdir()
    (d / "run" / "config.json").write_text(config_text)
    return str(d / "run")


_GOOD_CONFIG = json.dumps(dict(TrainConfig().to_dict(), fcnn_version=fcnn.__version__), indent=1)

CHECKPOINTS = [
    _case(lambda d: _saved(d, step_=-1), ValueError, r"step must be a non-negative int, got -1", "save-step-negative"),
    _case(lambda d: _saved(d, step_=1.5), ValueError, r"step must be a non-negative int", "save-step-float"),
    _case(lambda d: _saved(d, step_=True), ValueError, r"step must be a non-negative int", "save-step-bool"),
    _case(lambda d: _saved(d, keep=0), ValueError, r"keep must be a positive int, got 0", "save-keep-0"),
    _case(lambda d: _saved(d, keep=None), ValueError, r"keep must be a positive int", "save-keep-none"),
    _case(lambda d: _saved(d, metadata=[1, 2]), TypeError, r"metadata must be a dict or None, got list",
          "save-metadata-list"),
    _case(lambda d: _saved(d, metadata={"f": object()}), TypeError, r"metadata must be JSON-serialisable",
          "save-metadata-object"),
    _case(lambda d: _saved(d, tree={"w": object()}), TypeError, r"checkpoint leaves must be arrays or numbers",
          "save-object-leaf"),
    _case(lambda d: checkpoint.save(_file(d), 1, _TREE), (OSError, ValueError), r"f\.txt", "save-run-dir-is-file"),
    _case(lambda d: checkpoint.restore(str(d / "ckpt_00000001.npz")), FileNotFoundError,
          r"ckpt_00000001\.npz: checkpoint not found", "restore-missing"),
    _case(lambda d: checkpoint.restore(_file(d, "ckpt_00000001.npz", "garbage")), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: corrupt or truncated checkpoint", "restore-garbage"),
    _case(lambda d: checkpoint.restore(_damaged(d, lambda raw: raw[: len(raw) // 2])), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: corrupt or truncated checkpoint", "restore-truncated"),
    _case(lambda d: checkpoint.restore(_damaged(d, _flip_data_byte)), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: (checksum mismatch|corrupt)", "restore-flipped-byte"),
    _case(lambda d: checkpoint.restore(_npz(d, leaf_00000=np.ones(3))), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: (corrupt|not an fcnn checkpoint)", "restore-no-manifest"),
    _case(lambda d: checkpoint.restore(_npz(d, __manifest__=_manifest(format="orbax"))), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: not an fcnn checkpoint \(format 'orbax'\)", "restore-foreign-format"),
    _case(lambda d: checkpoint.restore(_npz(d, __manifest__=_manifest(format_version=2))), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: checkpoint format_version 2 is not supported", "restore-format-version"),
    _case(lambda d: checkpoint.restore(_saved(d), like={"w": np.ones((3, 3), np.float32), "b": _TREE["b"]}),
          checkpoint.CheckpointError, r"ckpt_00000001\.npz is from a different model: leaf 'w' has shape \(2, 3\), "
                                      r"expected \(3, 3\)", "restore-template-shape"),
    _case(lambda d: checkpoint.restore(_saved(d), like={"w": np.ones((2, 3)), "b": np.zeros(3, np.float32)}),
          checkpoint.CheckpointError, r"different model: leaf 'w' has dtype float32, expected float64",
          "restore-template-dtype"),
    _case(lambda d: checkpoint.restore(_saved(d), like={"w": np.ones((2, 3), np.float32)}), checkpoint.CheckpointError,
          r"different model: it holds 2 leaves, the template has 1", "restore-template-leaves"),
    _case(lambda d: checkpoint.restore(_saved(d), like={"v": _TREE["w"], "b": _TREE["b"]}), checkpoint.CheckpointError,
          r"different model: leaf 'w' is where the template has 'v'", "restore-template-names"),
    _case(lambda d: checkpoint.restore(_saved(d, tree={"key": np.zeros(2, np.uint32)}), like={"key": KEY_TYPED}),
          checkpoint.CheckpointError, r"leaf 'key' is not a typed PRNG key in the checkpoint but is in the template",
          "restore-template-key"),
    _case(lambda d: checkpoint.restore(_saved(d), like=[1, 2], subtrees=True), TypeError,
          r"like must be a dict of top-level entries with subtrees=True", "restore-subtrees-list"),
    _case(lambda d: checkpoint.load_latest(os.path.dirname(_damaged(d, lambda raw: raw[:50]))),
          checkpoint.CheckpointError, r"every checkpoint is corrupt: .*ckpt_00000001\.npz", "load_latest-all-corrupt"),
    _case(lambda d: checkpoint.latest(os.path.dirname(_damaged(d, lambda raw: b"x" + raw))), checkpoint.CheckpointError,
          r"every checkpoint is corrupt", "latest-all-corrupt"),
    _case(lambda d: checkpoint.load_latest(os.path.dirname(_saved(d)), like={"w": np.ones(6, np.float32),
                                                                           "b": np.zeros(3, np.float32)}),
          checkpoint.CheckpointError, r"ckpt_00000001\.npz is from a different model: leaf 'w'",
          "load_latest-template"),
    # the run's config.json
    _case(lambda d: read_config(str(d / "nope")), FileNotFoundError, r"run directory '.*nope' has no config\.json",
          "read_config-missing"),
    _case(lambda d: read_config(_run_dir(d, _GOOD_CONFIG[: len(_GOOD_CONFIG) // 2])), ValueError,
          r"config\.json is not valid JSON", "read_config-cut-in-half"),
    _case(lambda d: read_config(_run_dir(d, "[1, 2]")), ValueError,
          r"config\.json must hold a JSON object of TrainConfig fields, got list", "read_config-list"),
    _case(lambda d: read_config(_run_dir(d, _GOOD_CONFIG.replace('"epochs": 25', '"epochs": 0'))), ValueError,
          _all(r"config\.json", r"epochs must be a positive int"), "read_config-bad-field"),
    _case(lambda d: read_config(_run_dir(d, '{"epochs": 2, "lr": 0.1}')), ValueError,
          _all(r"config\.json", r"unknown fields \['lr'\]"), "read_config-unknown-field"),
]


@pytest.mark.parametrize("call, exc, pattern", CHECKPOINTS)
def test_checkpoints_and_run_files_refuse_bad_input(call, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern):
        call(tmp_path)


# ============================================================================= the fcnn command
_FAKE_RUN_CONFIG = dict(model="example_net", dataset="synthetic", impl="lax", pool_impl="lax", augment_shift=0,
                        epochs=5, batch_size=32, eval_batch_size=64, optimizer="sgd", schedule="constant")


def _save_fake_checkpoint(where, metadata=True):
    """The checkpoint ``fit`` would save at the end of epoch 1 of the fake run, with zero params;
    ``metadata=False``: with the config only (no epoch_sums, epoch, ...)."""
    config = TrainConfig(**_FAKE_RUN_CONFIG)
    _, params, state = _init(build_model(config, 4), (1, 16, 16, 1))
    params, state = _zeros(params), _zeros(state)
    opt_state = _zeros(jax.eval_shape(make_run_optimizer(config, 16).init, params))
    meta = {"config": config.to_dict()}
    if metadata:
        meta.update(fcnn_version=fcnn.__version__, epoch_sums=[20.0, 8.0, 16], epoch=1, step_in_epoch=0)
    checkpoint.save(where, 16, {"params": params, "state": state, "opt_state": opt_state, "key": np.asarray(KEY)},
                    metadata=meta)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A run directory as ``fcnn train`` leaves it (config.json, a checkpoint at step 16, one epoch
    record), made without training or computing: example_net (5 top-level layers) on the 16x16
    synthetic set (4 classes, 256 test images), 5 epochs of 16 steps, zero params."""
    d = str(tmp_path_factory.mktemp("fake_run"))
    write_config(d, TrainConfig(**_FAKE_RUN_CONFIG))
    _save_fake_checkpoint(d)
    record = {"epoch": 1, "step": 16, "train_loss": 1.3, "train_accuracy": 0.4, "test_loss": 1.2, "test_accuracy": 0.5}
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.write(json.dumps(record) + "\n")
    return d


def _copy_run(d, run, edit=None):
    """A copy of the fake run in d/copy, then ``edit(copy)``."""
    import shutil

    dst = str(d / "copy")
    shutil.copytree(run, dst)
    if edit is not None:
        edit(dst)
    return dst


def _edit_config(**fields):
    def edit(where):
        path = os.path.join(where, "config.json")
        cfg = json.load(open(path))
        cfg.update(fields)
        json.dump(cfg, open(path, "w"))
    return edit


def _truncate(name, keep=None):
    def edit(where):
        path = os.path.join(where, name)
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[: len(raw) // 2 if keep is None else keep])
    return edit


def _other_model_checkpoint(where):
    """Replace the checkpoint with one of another model's params (a copy from another run, say)."""
    _delete_checkpoints(where)
    checkpoint.save(where, 16, {"params": ({"w": np.zeros((3, 3, 1, 8), np.float32)},), "state": ((),),
                                "opt_state": (), "key": np.asarray(KEY)})


def _delete_checkpoints(where):
    for name in os.listdir(where):
        if name.startswith("ckpt_"):
            os.remove(os.path.join(where, name))


_SHORT = ["--epochs", "1", "--max-steps", "1", "--no-progress"]


def _train(*extra):
    return lambda d, run: ["train", *_SHORT, *extra, "--out", str(d / "out")]


def _cli(argv_fn, status, pattern, id, xfail=None):
    return pytest.param(argv_fn, status, pattern, id=id, marks=() if xfail is None else _fails(xfail))


CLI = [
    # fcnn train: arguments refused by the parser and by TrainConfig, before any data is loaded
    _cli(_train("--epochs", "0"), 2, r"argument --epochs: must be a positive int, got '0'", "train-epochs-0"),
    _cli(_train("--epochs", "abc"), 2, r"argument --epochs: must be a positive int, got 'abc'", "train-epochs-str"),
    _cli(_train("--batch-size", "-1"), 2, r"argument --batch-size: must be a positive int", "train-batch-size"),
    _cli(_train("--batch-size", "2.5"), 2, r"argument --batch-size", "train-batch-size-float"),
    _cli(_train("--lr", "0"), 2, r"(--lr|learning_rate) must be a positive float, got 0", "train-lr-0"),
    _cli(_train("--lr", "nan"), 2, r"(--lr|learning_rate) must be a positive float, got nan", "train-lr-nan"),
    _cli(_train("--lr", "inf"), 2, r"(--lr|learning_rate) must be a positive float, got inf", "train-lr-inf"),
    _cli(_train("--lr", "fast"), 2, r"argument --lr: invalid float value: 'fast'", "train-lr-str"),
    _cli(_train("--momentum", "1.5"), 2, r"momentum must be a float in \[0, 1\)", "train-momentum"),
    _cli(_train("--l2", "-1"), 2, r"l2 must be a non-negative float", "train-l2-negative"),
    _cli(_train("--l2", "nan"), 2, r"l2 must be a non-negative float, got nan", "train-l2-nan"),
    _cli(_train("--l2", "abc"), 2, r"argument --l2: invalid float value", "train-l2-str"),
    _cli(_train("--weight-decay", "0.1"), 2, r"weight_decay applies only to optimizer 'adamw'",
         "train-weight-decay-adam"),
    _cli(_train("--weight-decay", "inf", "--optimizer", "adamw"), 2, r"weight_decay must be a non-negative float",
         "train-weight-decay-inf"),
    _cli(_train("--label-smoothing", "1"), 2, r"label_smoothing must be a float in \[0.0, 1.0\)",
         "train-label-smoothing"),
    _cli(_train("--augment-shift", "-1"), 2, r"augment_shift must be a non-negative int \(pixels\), got -1",
         "train-augment-shift-negative"),
    _cli(_train("--seed", "-3"), 2, r"seed must be a non-negative int, got -3", "train-seed"),
    _cli(_train("--seed", "1e3"), 2, r"argument --seed: invalid int value", "train-seed-float"),
    _cli(_train("--keep", "0"), 2, r"argument --keep: must be a positive int", "train-keep"),
    _cli(_train("--checkpoint-every", "0"), 2, r"argument --checkpoint-every: must be a positive int",
         "train-checkpoint-every"),
    _cli(_train("--steps-per-call", "0"), 2, r"argument --steps-per-call: must be a positive int",
         "train-steps-per-call"),
    _cli(_train("--dtype-policy", "f16"), 2, r"dtype_policy must be one of f32, bf16; got 'f16'", "train-dtype-policy"),
    _cli(_train("--precision", "f16"), 2, r"precision must be one of f32, bf16", "train-precision-deprecated"),
    _cli(_train("--optimizer", "adamx"), 2, r"optimizer must be one of .*got 'adamx'", "train-optimizer"),
    _cli(_train("--schedule", "linear"), 2, r"schedule must be one of .*got 'linear'", "train-schedule"),
    _cli(_train("--parallel", "gpu"), 2, r"parallel must be one of .*got 'gpu'", "train-parallel"),
    _cli(_train("--devices", "2"), 2,
         r"devices=2 needs parallel 'pmap' or 'sharding'", "train-devices-without-parallel"),
    _cli(_train("--parallel", "pmap", "--devices", "4096"), 2, r"devices=4096 exceeds the \d+ available",
         "train-devices-too-many"),
    _cli(_train("--model", "resnet"), 2, r"--model must be one of .*got 'resnet'", "train-model"),
    _cli(_train("--no-such-flag"), 2, r"unrecognized arguments: --no-such-flag", "train-unknown-flag"),
    _cli(lambda d, run: ["train", *_SHORT, "--resume", str(d / "nope")], 2, r"nope.*has no config\.json",
         "train-resume-missing"),
    _cli(lambda d, run: ["train", "--resume", run, "--out", str(d / "o")], 2,
         r"--out cannot be combined with --resume", "train-resume-with-out"),
    _cli(lambda d, run: ["train", "--resume", run, "--seed", "3"], 2,
         r"only --epochs, --parallel, --devices may be given with it, got --seed", "train-resume-with-seed"),
    _cli(lambda d, run: ["train", "--resume", run, "--lr", "0.1"], 2,
         r"only --epochs, --parallel, --devices may be given with it, got --lr\b", "train-resume-with-lr"),
    _cli(lambda d, run: ["train", "--resume", _copy_run(d, run), "--epochs", "2", "--no-progress"], 2,
         r"epochs=2 is fewer than the run's 5: a resumed run may be extended, never shortened",
         "train-resume-shrinks-epochs"),
    _cli(lambda d, run: ["train", "--resume", _copy_run(d, run, lambda w: _save_fake_checkpoint(w, metadata=False)),
                         "--epochs", "6", "--no-progress"], 2, _all(r"ckpt_00000016\.npz", "epoch_sums"),
         "train-resume-checkpoint-without-fit-metadata"),
    _cli(lambda d, run: ["train", "--resume", _copy_run(d, run, _truncate("config.json")), "--epochs", "2"], 2,
         r"copy/config\.json is not valid JSON", "train-resume-config-cut"),
    # --out that would destroy something
    _cli(lambda d, run: ["train", *_SHORT, "--out", _file(d)], 2, r"run_dir '.*f\.txt' is a file, not a directory",
         "train-out-is-a-file"),
    _cli(lambda d, run: ["train", *_SHORT, "--dataset", "synthetic", "--model", "example_net", "--optimizer", "sgd",
                         "--out", _foreign_dir(d), "--overwrite"], 2,
         r"run_dir '.*proj' is not empty and does not hold an fcnn run", "train-out-foreign-overwrite"),
    _cli(lambda d, run: ["train", *_SHORT, "--out", run], 2,
         r"holds an fcnn run \(it already holds checkpoints\): resume it", "train-out-holds-a-run"),
    _cli(lambda d, run: ["train", *_SHORT, "--out", _copy_run(d, run, _delete_checkpoints)], 2,
         r"holds an fcnn run \(its checkpoints are gone\)", "train-out-run-without-checkpoints"),
    # bad data: refused after loading, before training
    _cli(_train("--dataset", "imagenet"), 2, r"(--dataset|dataset).*'imagenet'", "train-dataset-unknown"),
    _cli(lambda d, run: ["train", *_SHORT, "--dataset", "mnist", "--data-dir", str(d / "none"), "--out",
                         str(d / "out")], 2, r"dataset file not found; looked for: .*none.*train-images",
         "train-mnist-missing"),
    _cli(lambda d, run: ["train", *_SHORT, "--dataset", "mnist", "--out", str(d / "out"), "--data-dir",
                         _mnist(edit=_put("t10k-labels-idx1-ubyte", idx_bytes(np.full(5, 10))))(d)], 2,
         r"t10k-labels-idx1-ubyte: label 10 at index 0 is out of range", "train-mnist-damaged"),
    _cli(lambda d, run: ["train", *_SHORT, "--dataset", "cifar10", "--out", str(d / "out"), "--data-dir",
                         _cifar_bin(edit=_put("data_batch_5.bin", bytes(3000)))(d)], 2,
         r"data_batch_5\.bin: length 3000 bytes", "train-cifar-damaged"),
    _cli(_train("--dataset", "synthetic", "--augment-shift", "16"), 2,
         r"augment_shift=16 must be smaller than the images \(16x16\)", "train-augment-shift-too-large"),
    _cli(_train("--dataset", "synthetic", "--batch-size", "4096"), 2,
         r"batch_size must be <= the number of training examples \(512\), got 4096", "train-batch-larger-than-data"),
    _cli(_train("--dataset", "synthetic", "--impl", "fast"), 2, r"impl must be one of .*got 'fast'", "train-impl"),
    _cli(_train("--dataset", "synthetic", "--pool-impl", "fft"), 2, r"impl must be one of .*got 'fft'",
         "train-pool-impl"),
    _cli(lambda d, run: ["train", *_SHORT, "--dataset", "synthetic", "--model", "example_net", "--optimizer",
                         "sgd", "--out", os.path.join(_file(d), "sub")], 2,
         r"run_dir '.*f\.txt/sub' cannot be created: '.*f\.txt' is not a directory", "train-out-under-a-file"),
    # fcnn eval
    _cli(lambda d, run: ["eval"], 2, r"the following arguments are required: --run", "eval-no-run"),
    _cli(lambda d, run: ["eval", "--run", str(d / "nope")], 2, r"run directory '.*nope' has no config\.json",
         "eval-missing"),
    _cli(lambda d, run: ["eval", "--run", _file(d)], 2, r"f\.txt.*has no config\.json", "eval-run-is-a-file"),
    _cli(lambda d, run: ["eval", "--run", _copy_run(d, run, _truncate("config.json"))], 2,
         r"copy/config\.json is not valid JSON", "eval-config-cut-in-half"),
    _cli(lambda d, run: ["eval", "--run", _run_dir(d, "[1]")], 2, r"config\.json must hold a JSON object",
         "eval-config-list"),
    _cli(lambda d, run: ["eval", "--run", _copy_run(d, run, _delete_checkpoints)], 2,
         r"run_dir '.*copy' holds no checkpoint", "eval-no-checkpoint"),
    _cli(lambda d, run: ["eval", "--run", _copy_run(d, run, _truncate("ckpt_00000016.npz"))], 2,
         r"every checkpoint is corrupt: .*ckpt_00000016\.npz", "eval-checkpoint-corrupt"),
    _cli(lambda d, run: ["eval", "--run", _copy_run(d, run, _other_model_checkpoint)], 2,
         r"ckpt_00000016\.npz is from a different model", "eval-checkpoint-of-another-model"),
    _cli(lambda d, run: ["eval", "--run", _copy_run(d, run, _edit_config(epochs=0))], 2,
         _all(r"config\.json", r"epochs must be a positive int"), "eval-config-bad-field"),
    # fcnn summary
    _cli(lambda d, run: ["summary", "--model", "resnet"], 2, r"--model must be one of .*got 'resnet'", "summary-model"),
    _cli(lambda d, run: ["summary", "--in-shape", "1,28,28"], 2, r"argument --in-shape: must be 4 positive ints",
         "summary-in-shape-rank3"),
    _cli(lambda d, run: ["summary", "--in-shape", "a,b,c,d"], 2, r"argument --in-shape: must be comma-separated ints",
         "summary-in-shape-str"),
    _cli(lambda d, run: ["summary", "--in-shape", "1,0,28,1"], 2, r"argument --in-shape: must be 4 positive ints",
         "summary-in-shape-zero"),
    _cli(lambda d, run: ["summary", "--in-shape", "1,4,4,1"], 2, r"kernel is larger than the padded input",
         "summary-in-shape-too-small-rule"),
    _cli(lambda d, run: ["summary", "--in-shape", "1,4,4,1"], 2, _all(r"(--in-shape|in_shape|Conv2D)",
         r"kernel is larger"),
         "summary-in-shape-too-small-names-layer"),
    _cli(lambda d, run: ["summary", "--num-classes", "0"], 2, r"argument --num-classes: must be a positive int",
         "summary-num-classes"),
    _cli(lambda d, run: ["summary", "--bogus"], 2, r"unrecognized arguments: --bogus", "summary-unknown-flag"),
    _cli(lambda d, run: ["frobnicate"], 2, r"invalid choice: 'frobnicate'", "unknown-command"),
    _cli(lambda d, run: [], 2, r"the following arguments are required", "no-command"),
    # fcnn gradcheck
    _cli(lambda d, run: ["gradcheck", "--op", "conv3d"], 2, r"argument --op: invalid choice: 'conv3d'",
         "gradcheck-op"),
    _cli(lambda d, run: ["gradcheck", "--dtype", "float16"], 2, r"argument --dtype: invalid choice: 'float16'",
         "gradcheck-dtype"),
    _cli(lambda d, run: ["gradcheck", "--sweep", "huge"], 2, r"argument --sweep: invalid choice", "gradcheck-sweep"),
    _cli(lambda d, run: ["gradcheck", "--ties", "last"], 2, r"argument --ties: invalid choice: 'last'",
         "gradcheck-ties"),
    _cli(lambda d, run: ["gradcheck", "--mutant", "nope"], 2, r"mutant must be one of", "gradcheck-mutant"),
    _cli(lambda d, run: ["gradcheck", "--impl", "fast", "--op", "conv2d"], 2, r"impl must be one of .*'fast'",
         "gradcheck-impl"),
    _cli(lambda d, run: ["gradcheck", "--frobnicate"], 2, r"unrecognized arguments: --frobnicate",
         "gradcheck-unknown-flag"),
    # fcnn viz
    _cli(lambda d, run: ["viz", "--what", "saliency", "--out", str(d / "x.png")], 2,
         r"the following arguments are required: --run", "viz-no-run"),
    _cli(lambda d, run: ["viz", "--run", run, "--out", str(d / "x.png")], 2,
         r"the following arguments are required: --what", "viz-no-what"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "nonsense", "--out", str(d / "x.png")], 2,
         r"argument --what: invalid choice: 'nonsense'", "viz-what"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "saliency", "--index", "one", "--out", str(d / "x.png")], 2,
         r"argument --index: invalid int value: 'one'", "viz-index-str"),
    _cli(lambda d, run: ["viz", "--run", str(d / "nope"), "--what", "saliency", "--out", str(d / "x.png")], 2,
         r"--run '.*nope': no such run directory", "viz-run-missing"),
    _cli(lambda d, run: ["viz", "--run", _copy_run(d, run, lambda w: os.remove(os.path.join(w, "metrics.jsonl"))),
                         "--what", "curves", "--out", str(d / "x.png")], 2, r"run_dir '.*copy' has no metrics\.jsonl",
         "viz-curves-no-metrics"),
    _cli(lambda d, run: ["viz", "--run", _copy_run(d, run, _truncate("metrics.jsonl", 10)), "--what", "curves",
                         "--out", str(d / "x.png")], 2, r"metrics\.jsonl holds no complete epoch record",
         "viz-curves-torn-metrics"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "saliency", "--index", "100000", "--out", str(d / "x.png")], 2,
         r"--index 100000 is out of range: the test set has 256 images", "viz-index-too-large"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "saliency", "--index", "-1", "--out", str(d / "x.png")], 2,
         r"--index -1 is out of range", "viz-index-negative"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "gradcam", "--layer", "42", "--out", str(d / "x.png")], 2,
         r"--layer 42 is out of range: the model has 5 top-level layers", "viz-layer-out-of-range"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "gradcam", "--layer", "conv9", "--out", str(d / "x.png")], 2,
         r"--layer 'conv9': no top-level layer has that name", "viz-layer-unknown"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "filters", "--layer", "1.Relu", "--out", str(d / "x.png")], 2,
         r"--layer 1\.Relu is not a top-level Conv2D", "viz-filters-not-conv"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "curves", "--out", os.path.join(_file(d), "x.png")], 1,
         r"f\.txt", "viz-out-under-a-file"),
    _cli(lambda d, run: ["viz", "--run", _copy_run(d, run, _truncate("ckpt_00000016.npz")), "--what", "saliency",
                         "--out", str(d / "x.png")], 2, r"every checkpoint is corrupt: .*ckpt_00000016\.npz",
         "viz-checkpoint-corrupt"),
]


@pytest.mark.parametrize("argv_fn, status, pattern", CLI)
def test_cli_answers_bad_input_with_one_line(argv_fn, status, pattern, tmp_path, fake_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run directory (runs/...) would land here, never in the project
    monkeypatch.delenv("FCNN_DEBUG", raising=False)
    argv = argv_fn(tmp_path, fake_run)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as shown:  # what `python -m fcnn.cli` would print of them
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        status_got = cli.main(argv)
    err = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in shown)
    err += capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fcnn"), err
    assert re.search(pattern, lines[0]), lines[0]
    assert status_got == status, (status_got, lines[0])
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out"), "a run directory was written"
    assert not os.path.exists(tmp_path / "runs")


def test_cli_in_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    env = dict(os.environ, CI="1", JAX_PLATFORMS="cpu")
    env.pop("FCNN_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "fcnn.cli", "train", "--lr", "inf", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fcnn"), p.stderr
    assert re.search(r"(--lr|learning_rate) must be a positive float, got inf", lines[0])
    assert not (tmp_path / "out").exists()


def test_the_battery_has_at_least_150_cases():
    sizes = {"ops": len(OPS), "layers": len(LAYERS), "training": len(TRAINING) + len(RUN_DIRS), "data": len(DATA),
             "checkpoints": len(CHECKPOINTS), "cli": len(CLI) + 1}
    assert sum(sizes.values()) >= 150, sizes
    assert min(sizes.values()) >= 10, sizes
