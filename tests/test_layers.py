"""Layers against independent references (numpy loops/formulas by hand).

Initialisers are tested in test_init.py and activations in test_activations.py; the shape
grid below covers every layer constructor ``fcnn.layers`` exports, activations included.
What runs is compiled by ``_run`` as one ``jax.jit`` (on CPU these tests spend their time
compiling: every eager op, and every ``jax.random`` draw of a new shape, is a compile of its
own); inputs come from NumPy.
"""
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import init as I
from fcnn import layers as L
from fcnn.combinators import serial
from fcnn.types import InputShapeError

KEY = jax.random.PRNGKey(0)


def _run(layer, x, *, key=None, train=False):
    """``layer.init`` then ``layer.apply``, compiled as one program: ``(out_shape, params, y, new_state)``."""
    box = {}

    def run(x, key):
        box["out"], params, state = layer.init(KEY, x.shape)
        y, new_state = layer.apply(params, state, x, key=key, train=train)
        return params, y, new_state

    params, y, new_state = jax.jit(run)(jnp.asarray(x), key)
    return box["out"], params, y, new_state


def _np_conv_nhwc(x, w, b, stride, pads, dilation=1):
    """Direct loops: y[n,i,j,o] = sum_{p,q,c} xpad[n, i*s+p*d, j*s+q*d, c] w[p,q,c,o] + b[o]."""
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw, _, co = w.shape
    oh = (x.shape[1] - (dilation * (kh - 1) + 1)) // stride + 1
    ow = (x.shape[2] - (dilation * (kw - 1) + 1)) // stride + 1
    y = np.zeros((x.shape[0], oh, ow, co))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + dilation * (kh - 1) + 1:dilation,
                      j * stride:j * stride + dilation * (kw - 1) + 1:dilation, :]  # (n, kh, kw, c)
            y[:, i, j, :] = np.einsum("npqc,pqco->no", patch, w)
    return y + b


# ----------------------------------------------------------------------------- initialisers
def test_conv2d_passes_grouped_fans_to_initialiser():
    seen = {}

    def spy(key, shape, dtype, fan_in, fan_out):
        seen["w"] = (shape, fan_in, fan_out)
        return jnp.zeros(shape, dtype)

    L.Conv2D(16, 3, groups=4, w_init=spy).init(KEY, (1, 8, 8, 32))
    assert seen["w"] == ((3, 3, 8, 16), 72, 36)
    # and the default he_normal really uses fan_in = kh*kw*cin/groups
    _, p, _ = jax.jit(L.Conv2D(512, 3, groups=4).init, static_argnums=1)(KEY, (1, 8, 8, 256))
    np.testing.assert_allclose(float(jnp.std(p["w"])), math.sqrt(2 / (9 * 64)), rtol=0.02)


# ----------------------------------------------------------------------------- shape agreement
SHAPE_CASES = [
    (lambda: L.Conv2D(4, 3), (2, 9, 7, 3)),
    (lambda: L.Conv2D(4, (3, 2), stride=2, padding="SAME"), (2, 9, 7, 3)),
    (lambda: L.Conv2D(6, 3, dilation=2, groups=3, padding=1), (2, 9, 9, 3)),
    (lambda: L.Conv2D(4, 3, stride=(2, 1), padding=((1, 0), (2, 1)), layout="NCHW"), (2, 3, 9, 7)),
    (lambda: L.Conv2D(4, 1, use_bias=False), (2, 5, 5, 3)),
    (lambda: L.Dense(5), (3, 7)),
    (lambda: L.Dense(5), (3, 4, 7)),
    (lambda: L.MaxPool2D(2), (2, 9, 7, 3)),
    (lambda: L.MaxPool2D(3, stride=2, padding="SAME"), (2, 9, 7, 3)),
    (lambda: L.MaxPool2D(2, dilation=2, impl="custom_vjp", ties="split"), (2, 9, 7, 3)),
    (lambda: L.MaxPool2D(2, layout="NCHW"), (2, 3, 9, 7)),
    (lambda: L.AvgPool2D(3, stride=1, padding="SAME", count_include_pad=False), (2, 9, 7, 3)),
    (lambda: L.AvgPool2D(2, layout="NCHW"), (2, 3, 9, 7)),
    (lambda: L.GlobalAvgPool2D(), (2, 9, 7, 3)),
    (lambda: L.GlobalMaxPool2D(layout="NCHW"), (2, 3, 9, 7)),
    (lambda: L.Flatten(), (2, 9, 7, 3)),
    (lambda: L.Dropout(0.5), (2, 9, 7, 3)),
    (lambda: L.BatchNorm(), (2, 9, 7, 3)),
    (lambda: L.BatchNorm(layout="NCHW"), (2, 3, 9, 7)),
    (lambda: L.BatchNorm(), (4, 6)),
    (lambda: L.Lambda(lambda x: x[:, ::2].sum(-1)), (2, 9, 7, 3)),
] + [(getattr(L, n), (2, 4, 3)) for n in ("Relu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Gelu", "Elu",
                                          "LeakyRelu", "Silu", "Softplus")]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
@pytest.mark.parametrize("make, in_shape", SHAPE_CASES)
def test_init_out_shape_equals_apply_shape(make, in_shape, dtype):
    """init's out_shape is exactly the shape apply produces, and apply keeps the input dtype.

    Traced with ``jax.eval_shape`` (no compile per case, keeps the grid fast on CPU); the
    float32 run below executes a few of them for real.
    """
    layer = make()
    box = {}

    def init(key):
        box["out"], params, state = layer.init(key, in_shape)
        return params, state

    params, state = jax.eval_shape(init, KEY)
    out_shape = box["out"]
    assert isinstance(out_shape, tuple) and all(type(d) is int for d in out_shape)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    y, _ = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, key=KEY, train=True), params, state,
                          jax.ShapeDtypeStruct(in_shape, dtype))
    assert y.shape == out_shape and y.dtype == dtype


@pytest.mark.parametrize("index", [1, 3, 6, 9, 12, 17, 20])
def test_init_out_shape_equals_apply_shape_executed(index):
    make, in_shape = SHAPE_CASES[index]
    x = np.random.RandomState(1).randn(*in_shape).astype(np.float32)
    out_shape, params, y, _ = _run(make(), x, key=jax.random.PRNGKey(2), train=True)
    assert y.shape == out_shape and y.dtype == jnp.float32
    chex.assert_tree_all_finite(y)


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("stride, padding, dilation, pads", [
    (1, "VALID", 1, ((0, 0), (0, 0))),
    (2, "SAME", 1, ((1, 1), (1, 1))),  # 7 -> 4: total pad (4-1)*2+3-7 = 2
    (1, 2, 2, ((2, 2), (2, 2))),
])
def test_conv2d_matches_numpy_loops(stride, padding, dilation, pads):
    x = np.random.RandomState(0).randn(2, 7, 7, 3)
    layer = L.Conv2D(4, 3, stride=stride, padding=padding, dilation=dilation, b_init=I.normal(1.0))
    _, p, y, _ = _run(layer, jnp.asarray(x))
    ref = _np_conv_nhwc(x, np.asarray(p["w"], np.float64), np.asarray(p["b"], np.float64), stride, pads, dilation)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_dense_matches_numpy_and_casts_params_to_input_dtype():
    x = np.random.RandomState(1).randn(3, 7)
    _, p, y, _ = _run(L.Dense(5, b_init=I.normal(1.0)), jnp.asarray(x))
    assert p["w"].dtype == jnp.float32 and y.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y), x @ np.asarray(p["w"], np.float64) + np.asarray(p["b"]), rtol=1e-12)
    yb, _ = L.Dense(5).apply(p, {}, jnp.asarray(x, jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32), np.asarray(y), atol=0.1, rtol=0.05)
    _, p2, y2, _ = _run(L.Dense(5, use_bias=False), jnp.asarray(x))
    assert set(p2) == {"w"}
    np.testing.assert_allclose(np.asarray(y2), x @ np.asarray(p2["w"], np.float64), rtol=1e-12)
    x3 = np.random.RandomState(2).randn(3, 4, 7)  # rank 3: the kernel acts on the last axis of every row
    _, p3, y3, _ = _run(L.Dense(5, b_init=I.normal(1.0)), jnp.asarray(x3))
    w3, b3 = np.asarray(p3["w"], np.float64), np.asarray(p3["b"], np.float64)
    np.testing.assert_allclose(np.asarray(y3), np.einsum("abi,io->abo", x3, w3) + b3, rtol=1e-12)


def test_pools_match_numpy():
    x = np.random.RandomState(2).randn(2, 6, 4, 3)
    _, _, ym, _ = _run(L.MaxPool2D(2), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(ym), x.reshape(2, 3, 2, 2, 2, 3).max(axis=(2, 4)))
    _, _, ya, _ = _run(L.AvgPool2D(2), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ya), x.reshape(2, 3, 2, 2, 2, 3).mean(axis=(2, 4)), rtol=1e-12)
    _, _, yg, _ = _run(L.GlobalMaxPool2D(), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(yg), x.max(axis=(1, 2)))
    xc = np.transpose(x, (0, 3, 1, 2))
    _, _, ygc, _ = _run(L.GlobalAvgPool2D(layout="NCHW"), jnp.asarray(xc))
    np.testing.assert_allclose(np.asarray(ygc), x.mean(axis=(1, 2)), rtol=1e-12)
    _, _, yf, _ = _run(L.Flatten(), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(yf), x.reshape(2, 72))


# ----------------------------------------------------------------------------- Dropout
def test_dropout_eval_is_identity_and_train_scales_kept_values():
    x = jnp.asarray(np.random.RandomState(4).rand(200, 500) + 1.0)  # strictly positive
    layer = L.Dropout(0.3)
    _, _, y, _ = _run(layer, x)  # train=False
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    _, _, y, _ = _run(layer, x, key=jax.random.PRNGKey(5), train=True)
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.7) < 0.005  # 100k Bernoulli(0.7): std 0.0014
    np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.7, rtol=1e-12)
    _, _, y2, _ = _run(layer, x, key=jax.random.PRNGKey(6), train=True)
    assert (np.asarray(y2) != 0).tolist() != kept.tolist()


def test_dropout_needs_key_in_train():
    with pytest.raises(ValueError, match="key"):
        _run(L.Dropout(0.5), jnp.ones((2, 3)), train=True)


FLOATING = r"x must have a floating dtype \(float32, float64, bfloat16, \.\.\.\), got int32"


@pytest.mark.parametrize("name, make, torch_call, train", [
    ("Dense", lambda: L.Dense(2), lambda t, x: t.nn.Linear(3, 2)(x), False),
    ("Dropout", lambda: L.Dropout(0.5), lambda t, x: t.nn.functional.dropout(x, 0.5, True), True),
])
def test_integer_inputs_are_refused_as_torch_refuses_them(name, make, torch_call, train):
    """Dense cast its He weights to x's int dtype (Dense(2) on ones((1, 3), int32) gave [[0 0]]) and
    Dropout its keep probability (0.5 -> 0, x / 0 = inf); torch 2.13 raises for both (the reference)."""
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError):
        torch_call(torch, torch.ones(1, 3, dtype=torch.int32))
    layer = make()
    _, params, state = layer.init(KEY, (1, 3))
    for mode in {train, False}:  # Dropout in eval too: one rule, whatever the mode
        with pytest.raises(TypeError, match=rf"^{name}: {FLOATING}$"):
            layer.apply(params, state, jnp.ones((1, 3), jnp.int32), key=KEY, train=mode)


def test_param_dtype_none_is_refused_naming_it():
    """jnp.dtype(None) is float64 (float32 with x64 off, with a warning): a default nobody asked for."""
    for make in (lambda: L.Dense(2, param_dtype=None), lambda: L.Conv2D(2, 3, param_dtype=None)):
        with pytest.raises(TypeError, match=r"^param_dtype must be a floating dtype \(float32, .*got None$"):
            make()


# BatchNorm's values: tests/test_norms.py (it lives in fcnn.norms; fcnn.layers re-exports it)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("make, exc, match", [
    (lambda: L.Conv2D(0, 3), ValueError, "out_channels"),
    (lambda: L.Conv2D(4, (3, 0)), ValueError, "kernel"),
    (lambda: L.Conv2D(4, 3, stride=0), ValueError, "stride"),
    (lambda: L.Conv2D(4, 3, padding="FULL"), ValueError, "padding"),
    (lambda: L.Conv2D(6, 3, groups=4), ValueError, "groups"),
    (lambda: L.Conv2D(4, 3, layout="NWHC"), ValueError, "layout"),
    (lambda: L.Conv2D(4, 3, impl="cudnn"), ValueError, "impl"),
    (lambda: L.Conv2D(4, 3, w_init=I.he_normal), TypeError, "w_init"),
    (lambda: L.Conv2D(4, 3, b_init=0.0), TypeError, "b_init"),
    (lambda: L.Conv2D(4, 3, use_bias=1), TypeError, "use_bias"),
    (lambda: L.Dense(-1), ValueError, "out_features"),
    (lambda: L.Dense(3, param_dtype=jnp.int32), TypeError, "param_dtype"),
    (lambda: L.MaxPool2D(0), ValueError, "window"),
    (lambda: L.MaxPool2D(2, ties="random"), ValueError, "ties"),
    (lambda: L.MaxPool2D(2, impl="lax", ties="split"), ValueError, "ties"),
    (lambda: L.AvgPool2D(2, impl="custom"), ValueError, "impl"),
    (lambda: L.AvgPool2D(2, count_include_pad="yes"), TypeError, "count_include_pad"),
    (lambda: L.Dropout(1.0), ValueError, "drop_rate"),
    (lambda: L.Dropout(-0.1), ValueError, "drop_rate"),
    (lambda: L.BatchNorm(momentum=1.5), ValueError, "momentum"),
    (lambda: L.BatchNorm(epsilon=0), ValueError, "epsilon"),
])
def test_bad_arguments_raise_at_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("layer, in_shape, match", [
    (L.Conv2D(4, 3), (2, 8, 8), "rank 4"),
    (L.Conv2D(4, 3, groups=2), (2, 8, 8, 3), "groups"),
    (L.Conv2D(4, 5), (2, 3, 3, 1), "larger than the padded input"),
    (L.MaxPool2D(4), (2, 3, 3, 1), "larger than the padded input"),
    (L.Dense(3), (5,), "in_shape"),
    (L.BatchNorm(), (2, 3, 4, 5, 6, 7), "in_shape"),
    (L.Flatten(), (2, 0, 3), "in_shape"),
])
def test_bad_in_shape_raises_at_init(layer, in_shape, match):
    with pytest.raises(ValueError, match=match):
        layer.init(KEY, in_shape)


# ----------------------------------------------------------------------------- apply-time input checks
def _apply_traced(layer, init_shape, x_shape, **kw):
    """init at ``init_shape``, then apply to a float32 input of ``x_shape``, both traced (``jax.eval_shape``):
    the checks run at trace time, so nothing is compiled or computed."""
    _, params, state = jax.eval_shape(lambda k: layer.init(k, init_shape), KEY)
    return jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, **kw)[0], params, state,
                          jax.ShapeDtypeStruct(x_shape, jnp.float32))


# (layer, init's in_shape, apply's input shape, texts the message must hold: the layer and both shapes)
MISMATCHES = [
    (lambda: L.Dense(4), (2, 16), (2, 20), ["Dense: apply got inputs of shape (n, 20) but init was given (n, 16)",
                                            "20 features, the kernel has 16 rows"]),
    (lambda: L.Dense(4), (2, 3, 16), (2, 3, 20), ["Dense", "(n, 3, 20)", "(n, 3, 16)"]),
    (lambda: L.Dense(4), (2, 16), (16,), ["Dense", "shape (16,)", "(n, 16)", "x must have rank >= 2"]),
    (lambda: L.Conv2D(4, 3), (1, 8, 8, 3), (1, 8, 8, 5), ["Conv2D", "(n, 8, 8, 5)", "(n, 8, 8, 3)", "3 channels"]),
    (lambda: L.Conv2D(4, 3, groups=2, layout="NCHW"), (1, 6, 8, 8), (1, 4, 8, 8),
     ["Conv2D", "(n, 4, 8, 8)", "(n, 6, 8, 8)", "3 input channels x groups=2"]),
    (lambda: L.Conv2D(4, 3), (1, 8, 8, 3), (8, 8, 3), ["Conv2D", "shape (8, 8, 3)", "(n, 8, 8, 3)",
                                                        "x must have rank 4"]),
    (lambda: L.Conv2D(4, 5), (1, 8, 8, 3), (1, 3, 3, 3), ["Conv2D", "(n, 3, 3, 3)", "larger than the padded input"]),
    (lambda: L.BatchNorm(), (2, 5, 5, 4), (2, 5, 5, 6), ["BatchNorm", "(n, 5, 5, 6)", "(n, 5, 5, 4)", "4 channels"]),
    (lambda: L.BatchNorm(layout="NCHW"), (2, 4, 5, 5), (2, 6, 5, 5), ["BatchNorm", "(n, 6, 5, 5)", "(n, 4, 5, 5)"]),
    (lambda: L.BatchNorm(), (4, 6), (4, 5, 7), ["BatchNorm", "(n, 5, 7)", "(n, 6)", "6 channels on the last axis"]),
    (lambda: L.MaxPool2D(2), (1, 8, 8, 3), (8, 8, 3), ["MaxPool2D", "(8, 8, 3)", "(n, 8, 8, 3)", "rank 4"]),
    (lambda: L.MaxPool2D(4), (1, 8, 8, 3), (1, 3, 3, 3), ["MaxPool2D", "(n, 3, 3, 3)", "window is larger"]),
    (lambda: L.AvgPool2D(2, layout="NCHW"), (1, 3, 8, 8), (3, 8, 8), ["AvgPool2D", "(3, 8, 8)", "(n, 3, 8, 8)"]),
    (lambda: L.GlobalAvgPool2D(), (1, 8, 8, 3), (8, 3), ["GlobalAvgPool2D", "(8, 3)", "(n, 8, 8, 3)"]),
    (lambda: L.Flatten(), (2, 8), (8,), ["Flatten", "(8,)", "x must have rank >= 2"]),
]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("make, init_shape, x_shape, texts", MISMATCHES)
def test_apply_refuses_an_input_init_did_not_see_naming_the_layer_and_both_shapes(make, init_shape, x_shape, texts,
                                                                                  train):
    with pytest.raises(ValueError) as err:
        _apply_traced(make(), init_shape, x_shape, train=train)
    assert isinstance(err.value, InputShapeError) and "apply got inputs of shape" in str(err.value)
    for text in texts:
        assert text in str(err.value)


def test_apply_names_the_params_view_of_init_shape_when_init_never_ran_on_this_layer():
    """Params made elsewhere (a checkpoint, another instance): the message says what they imply."""
    dense, conv = L.Dense(4), L.Conv2D(4, 3, layout="NCHW")
    with pytest.raises(InputShapeError, match=re.escape("got inputs of shape (n, 20) but init was given (n, 16)")):
        dense.apply({"w": np.zeros((16, 4)), "b": np.zeros(4)}, {}, np.zeros((2, 20)))
    with pytest.raises(InputShapeError, match=re.escape("(n, 5, 8, 8) but init was given (n, 3, h, w)")):
        jax.eval_shape(lambda x: conv.apply({"w": np.zeros((4, 3, 3, 3)), "b": np.zeros(4)}, {}, x),
                       jax.ShapeDtypeStruct((2, 5, 8, 8), jnp.float32))
    with pytest.raises(InputShapeError, match=re.escape("(n, 3, 6) but init was given (n, 4) or (n, ..., 4)")):
        L.BatchNorm().apply({"scale": np.ones(4), "offset": np.zeros(4)}, {"mean": np.zeros(4), "var": np.ones(4)},
                            np.zeros((2, 3, 6)))


def test_the_checks_add_nothing_to_the_compiled_program():
    """They read only static shapes: Dense's jaxpr is the matmul and the bias add, nothing else."""
    layer = L.Dense(4)
    jaxpr = jax.make_jaxpr(lambda p, x: layer.apply(p, {}, x)[0])({"w": np.zeros((16, 4), np.float32),
                                                                    "b": np.zeros(4, np.float32)},
                                                                   np.zeros((3, 16), np.float32))
    assert [e.primitive.name for e in jaxpr.eqns] == ["dot_general", "broadcast_in_dim", "add"]


def test_a_correct_input_of_another_batch_size_runs_under_jit():
    """init at batch 2, apply at batch 5 and (a conv stack takes any image) 10x10 instead of 8x8, jitted;
    eval mode treats rows independently, so the first two rows of batch 5 are the batch-2 result."""
    net = serial(L.Conv2D(3, 3, padding="SAME"), L.BatchNorm(), L.Relu(), L.MaxPool2D(2), L.GlobalMaxPool2D(),
                 L.Dropout(0.5), L.Dense(4))
    _, params, state = jax.eval_shape(lambda k: net.init(k, (2, 8, 8, 2)), KEY)
    rs = np.random.RandomState(11)
    params, state = jax.tree_util.tree_map(lambda a: rs.rand(*a.shape).astype(np.float32) + 0.5, (params, state))
    run = jax.jit(lambda x, key: (net.apply(params, state, x)[0], net.apply(params, state, x, key=key, train=True)[0]))
    x = rs.randn(5, 10, 10, 2).astype(np.float32)
    y5, t5 = run(x, jax.random.PRNGKey(1))
    y2, _ = run(x[:2], jax.random.PRNGKey(1))
    assert y5.shape == t5.shape == (5, 4)
    np.testing.assert_allclose(np.asarray(y5[:2]), np.asarray(y2), rtol=1e-5)
    chex.assert_tree_all_finite((y5, t5))


# ----------------------------------------------------------------------------- keys
@pytest.mark.parametrize("key, exc, got", [
    (None, ValueError, "got None"),
    (0, TypeError, "got 0 (int)"),
    (np.ones(2, np.float32), TypeError, "shape (2,) and dtype float32"),
    (np.zeros((3, 2), np.uint32), TypeError, "shape (3, 2) and dtype uint32"),  # a batch of keys, not one
    (np.zeros(3, np.uint32), TypeError, "shape (3,) and dtype uint32"),
])
def test_dropout_in_train_mode_refuses_anything_but_a_prng_key(key, exc, got):
    with pytest.raises(exc) as err:
        _apply_traced(L.Dropout(0.5), (2, 3), (2, 3), key=key, train=True)
    msg = str(err.value)
    assert msg.startswith("Dropout with train=True needs a PRNG key") and "key" in msg and got in msg
    assert "jax.random.PRNGKey" in msg and "jax.random.key" in msg


def test_dropout_takes_raw_typed_and_numpy_keys_and_needs_none_in_eval():
    """The three spellings of seed 0 are one key: the same mask, each kept value x / (1 - p)."""
    x = np.arange(1.0, 65.0).reshape(4, 16)
    ys = [_run(L.Dropout(0.5), x, key=key, train=True)[2]
          for key in (jax.random.PRNGKey(0), jax.random.key(0), np.asarray(jax.random.PRNGKey(0)))]
    kept = np.asarray(ys[0]) != 0
    assert 0 < kept.sum() < x.size
    np.testing.assert_array_equal(np.asarray(ys[0]), np.where(kept, 2 * x, 0.0))
    for y in ys[1:]:
        np.testing.assert_array_equal(np.asarray(y), np.asarray(ys[0]))
    np.testing.assert_array_equal(np.asarray(_run(L.Dropout(0.5), x, key=None)[2]), x)  # eval: no key needed


@pytest.mark.parametrize("make", [lambda: L.Conv2D(4, 3), lambda: L.Dense(4)])
def test_init_refuses_a_key_that_is_not_a_prng_key(make):
    with pytest.raises(TypeError, match=r"\.init needs a PRNG key: key must be a PRNG key .*got 0 \(int\)"):
        make().init(0, (1, 8, 8, 3))
