"""Issue 17's bad inputs to the layers: fcnn.layers / activations constructors, init with bad shapes,
apply with an input that differs from the one init saw (the error names the layer and both shapes),
keys where a PRNG key is needed, fcnn.combinators, fcnn.models and fcnn.summary. Inits and applies
are traced abstractly (``_init``, ``_apply_other``): every check runs, nothing is computed or
compiled. The battery's map and conventions: test_bad_inputs.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _bad_inputs import INF, NAN, _all, _case, _init

from fcnn import layers, models
from fcnn.combinators import branches, residual, serial
from fcnn.summary import summary


def _apply_other(layer, init_shape, x_shape, **kw):
    """init ``layer`` with ``init_shape``, then apply it to a float32 input of ``x_shape``; both traced
    abstractly (the checks issue 17 asks for run at trace time, so they run here too)."""
    _, p, s = _init(layer, init_shape)
    return jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, **kw), p, s,
                          jax.ShapeDtypeStruct(x_shape, jnp.float32))


def _apply_int(layer, shape, **kw):
    """init ``layer`` with ``shape``, then apply it to an int32 input of that shape (traced abstractly)."""
    _, p, s = _init(layer, shape)
    return jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, **kw), p, s, jax.ShapeDtypeStruct(shape, jnp.int32))


def _apply_short(model, other):
    """``model.apply`` given the params and state of ``other`` (fewer layers), traced abstractly."""
    _, p, s = _init(other, (2, 3))
    return jax.eval_shape(lambda p, s, x: model.apply(p, s, x), p, s, jax.ShapeDtypeStruct((2, 3), jnp.float32))


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
    _case(lambda: layers.Dense(4, param_dtype=None), TypeError, r"param_dtype must be a floating dtype .*got None",
          "Dense-param-dtype-none"),
    _case(lambda: layers.BatchNorm(param_dtype=None), TypeError, r"param_dtype must be a floating dtype .*got None",
          "BatchNorm-param-dtype-none"),
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
    _case(lambda: _apply_int(layers.Dense(4), (2, 16)), TypeError, r"^Dense: x must have a floating dtype",
          "Dense-apply-int32"),
    _case(lambda: _apply_int(layers.BatchNorm(), (2, 5, 5, 4)), TypeError, r"^BatchNorm: x must have a floating dtype",
          "BatchNorm-apply-int32"),
    _case(lambda: _apply_int(layers.Dropout(0.5), (2, 3), key=jax.random.PRNGKey(0), train=True), TypeError,
          r"^Dropout: x must have a floating dtype", "Dropout-apply-int32"),
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
    _case(lambda: serial(layers.Relu()).init(jax.random.PRNGKey(0), None), ValueError,
          r"in_shape must be a tuple of positive ints", "serial-init-none"),
    _case(lambda: _apply_short(serial(layers.Dense(3), layers.Dense(3)), serial(layers.Dense(3))), ValueError,
          r"serial of 2 layers: params must have one entry per layer \(2", "serial-apply-short-params"),
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
    _case(lambda: models.lenet5(0), ValueError, r"^num_classes must be a positive int", "lenet5-num-classes-0"),
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
