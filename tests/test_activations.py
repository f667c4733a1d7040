"""Activation layers and ``Lambda`` against NumPy formulas written out by hand."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import activations as A
from fcnn.types import layer_info

KEY = jax.random.PRNGKey(0)


def _run(layer, x):
    """``(out_shape, params, y)`` of a parameter-free layer (init has no randomness to compile)."""
    out_shape, params, state = layer.init(KEY, x.shape)
    y, new_state = layer.apply(params, state, x)
    assert new_state == state == {}
    return out_shape, params, y


ACTIVATIONS = [
    ("Relu", {}, lambda x: np.maximum(x, 0)),
    ("Sigmoid", {}, lambda x: 1 / (1 + np.exp(-x))),
    ("Tanh", {}, np.tanh),
    ("Softmax", {}, lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
    ("Softmax", {"axis": 1}, lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
    ("LogSoftmax", {}, lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))),
    ("Gelu", {}, lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))),
    ("Gelu", {"approximate": True},
     lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    ("Elu", {"alpha": 0.5}, lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    ("LeakyRelu", {"negative_slope": 0.2}, lambda x: np.where(x >= 0, x, 0.2 * x)),
    ("Silu", {}, lambda x: x / (1 + np.exp(-x))),
    ("Softplus", {}, lambda x: np.log1p(np.exp(x))),
]


@pytest.mark.parametrize("name, kw, ref", ACTIVATIONS)
def test_activations_match_numpy(name, kw, ref):
    x = np.random.RandomState(3).randn(3, 4, 5) * 2
    out_shape, params, y = _run(getattr(A, name)(**kw), jnp.asarray(x))
    assert params == {} and out_shape == x.shape and y.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y), ref(x), rtol=1e-10, atol=1e-12)


def test_relu_edge_points_by_hand():
    """fcnn's relu (a select) at the points where a max and a select could differ: values as
    max(x, 0) with NaN kept, derivative 1 for x > 0 and 0 for x <= 0 (0 at x = 0, like jax.nn.relu)."""
    x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0, np.inf, -np.inf, np.nan])
    y = np.asarray(A.relu(x))
    np.testing.assert_array_equal(y[:7], [0.0, 0.0, 0.0, 1e-30, 3.0, np.inf, 0.0])
    assert np.isnan(y[7])
    g = np.asarray(jax.vmap(jax.grad(A.relu))(x))
    np.testing.assert_array_equal(g[:7], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(jax.grad(lambda v: jnp.sum(A.relu(v)))(x[:7])), g[:7])
    layer = A.Relu()
    np.testing.assert_array_equal(np.asarray(layer.apply({}, {}, x[:7])[0]), y[:7])


def test_generic_activation_and_lambda():
    _, _, y = _run(A.Activation(lambda x: x ** 3), jnp.arange(4.0))
    np.testing.assert_array_equal(np.asarray(y), [0, 1, 8, 27])
    out_shape, _, y = _run(A.Lambda(lambda x: jnp.concatenate([x, -x], -1)), jnp.ones((2, 3)))
    assert out_shape == (2, 6) and float(y.sum()) == 0.0


def test_summary_metadata_counts_one_flop_per_output():
    info = layer_info(A.Softmax(axis=1))
    assert (info.name, info.kind, info.flops((2, 3, 4), (2, 3, 4))) == ("Softmax", "activation", 24)
    info = layer_info(A.Lambda(lambda x: x[:, :2], name="crop"))
    assert (info.name, info.kind, info.flops((5, 7), (5, 2))) == ("crop", "lambda", 10)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: A.Softmax(axis=1.0), TypeError, "axis"),
    (lambda: A.LogSoftmax(axis=True), TypeError, "axis"),
    (lambda: A.Activation("relu"), TypeError, "fn"),
    (lambda: A.Lambda(None), TypeError, "fn"),
    (lambda: A.Gelu(approximate=1), TypeError, "approximate"),
    (lambda: A.Elu(alpha="1"), TypeError, "alpha"),
    (lambda: A.LeakyRelu(negative_slope=None), TypeError, "negative_slope"),
    (lambda: A.Elu(alpha=float("nan")), ValueError, r"alpha must be a finite float, got nan"),
    (lambda: A.LeakyRelu(negative_slope=float("-inf")), ValueError, r"negative_slope must be a finite float, got -inf"),
])
def test_bad_arguments_raise_at_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("in_shape", [(2, 0, 3), (2.0, 3), "23", (2, True)])
def test_bad_in_shape_raises_at_init(in_shape):
    with pytest.raises(ValueError, match="in_shape must be a tuple of positive ints"):
        A.Relu().init(KEY, in_shape)
    with pytest.raises(ValueError, match="in_shape"):
        A.Lambda(lambda x: x).init(KEY, in_shape)


@pytest.mark.parametrize("layer, match", [
    (A.Activation(lambda x: x[:, :2]), r"^Activation: fn must keep the shape of its input .* maps \(1, 4\) to \(1, 2\); "
                                       r"use Lambda"),
    (A.Softmax(axis=5), r"^Softmax: its function fails on an input of shape \(1, 4\): .*axis 5 is out of bounds"),
    (A.LogSoftmax(axis=-3), r"^LogSoftmax: its function fails .*axis -3 is out of bounds"),
    (A.Lambda(lambda x: x @ jnp.ones((3, 2))), r"^Lambda: its function fails on an input of shape \(1, 4\)"),
    (A.Lambda(lambda x: (x, x)), r"^Lambda: its function must return one array, got tuple"),
])
def test_a_function_that_cannot_take_the_input_fails_at_init_naming_the_layer(layer, match):
    """Before: a shape-changing Activation reported its input shape as its output (summary lied, the next
    layer took the blame) and Softmax(axis=5) failed only inside apply."""
    with pytest.raises(ValueError, match=match):
        layer.init(KEY, (1, 4))
