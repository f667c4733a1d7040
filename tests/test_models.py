"""Reference models: shapes, parameter counts, option propagation, registry."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import models
from fcnn.summary import count_params

KEY = jax.random.PRNGKey(0)


def abstract_init(model, in_shape):
    """``model.init`` traced, not run: (out_shape, params, state) of ShapeDtypeStructs (fast on CPU)."""
    box = {}

    def init(key):
        box["out"], params, state = model.init(key, in_shape)
        return params, state

    params, state = jax.eval_shape(init, KEY)
    return box["out"], params, state


@pytest.fixture(scope="module")
def lenet_small():
    """LeNet-5 params for a 12x12 input (it takes any size; flatten is then 1x1x16), float64."""
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 12, 12, 1), jnp.float64)
    _, params, state = jax.jit(models.lenet5().init, static_argnums=1)(KEY, x.shape)
    return x, jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params), state


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_init_shape_equals_apply_shape(name):
    model = models.get_model(name, num_classes=7)
    in_shape = models.input_shape(name, batch=2)
    out_shape, params, state = abstract_init(model, in_shape)
    # the exact shape and dtype apply produces, traced without running (values: the other tests)
    y = jax.eval_shape(model.apply, params, state, jax.ShapeDtypeStruct(in_shape, jnp.float32))[0]
    assert out_shape == y.shape == (2, 7) and y.dtype == jnp.float32


def test_lenet5_parameters_by_hand():
    _, params, _ = abstract_init(models.lenet5(), (1, 28, 28, 1))
    shapes = [{k: v.shape for k, v in p.items()} for p in params if p]
    assert shapes == [
        {"w": (5, 5, 1, 6), "b": (6,)}, {"w": (5, 5, 6, 16), "b": (16,)},
        {"w": (400, 120), "b": (120,)}, {"w": (120, 84), "b": (84,)}, {"w": (84, 10), "b": (10,)},
    ]
    assert count_params(params) == 156 + 2416 + 48120 + 10164 + 850 == 61706
    assert all(v.dtype == jnp.float32 for p in params for v in p.values())


def test_example_net_and_vgg_shapes_by_hand():
    out, params, _ = abstract_init(models.example_net(), (3, 64, 64, 3))
    assert out == (3, 10) and params[4]["w"].shape == (31 * 31 * 32, 10)
    _, params, _ = abstract_init(models.small_vgg(), (1, 32, 32, 3))
    convs = [p["w"].shape for p in params if p and len(p["w"].shape) == 4]
    assert convs == [(3, 3, 3, 64), (3, 3, 64, 128), (3, 3, 128, 256), (3, 3, 256, 512)]
    assert params[-1]["w"].shape == (512, 10)


def test_small_resnet_batchnorm_state_and_projection():
    _, p_full, _ = abstract_init(models.small_resnet(), (1, 32, 32, 3))
    # stage 2's first block: residual with a 1x1 stride-2 projection (+ BN) from 16 to 32 channels
    assert p_full[4][0]["shortcut"][0]["w"].shape == (1, 1, 16, 32)
    assert p_full[3][0]["shortcut"] == {}  # stage 1 keeps the shape: identity
    model = models.small_resnet(widths=(4, 8))  # same structure, small enough to run fast
    out, params, state = jax.jit(model.init, static_argnums=1)(KEY, (4, 8, 8, 3))
    assert out == (4, 10) and params[4][0]["shortcut"][0]["w"].shape == (1, 1, 4, 8)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3), jnp.float32) * 3 + 1
    apply = jax.jit(model.apply, static_argnames="train")
    _, new_state = apply(params, state, x, train=True)
    # stem BN: running mean = 0.9 * 0 + 0.1 * batch mean of the stem conv's output
    conv_out = jax.lax.conv_general_dilated(x, params[0]["w"], (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.asarray(new_state[1]["mean"]), 0.1 * np.asarray(conv_out).mean((0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    y_eval1, same = apply(params, state, x, train=False)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), same, state))


@pytest.mark.parametrize("impl", ["reference", "custom_vjp"])
def test_conv_impl_propagates_and_agrees_with_lax_inside_a_model(impl, lenet_small):
    x, params, state = lenet_small

    def loss(p, model):
        return jnp.sum(model.apply(p, state, x)[0] ** 2)

    lax_model, other = models.lenet5(impl="lax"), models.lenet5(impl=impl)
    np.testing.assert_allclose(np.asarray(other.apply(params, state, x)[0]),
                               np.asarray(lax_model.apply(params, state, x)[0]), rtol=1e-9, atol=1e-10)
    g_lax, g_other = jax.grad(loss)(params, lax_model), jax.grad(loss)(params, other)
    for a, b in zip(jax.tree_util.tree_leaves(g_lax), jax.tree_util.tree_leaves(g_other)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-8, atol=1e-9)


def test_pool_impl_and_ties_propagate(lenet_small):
    with pytest.raises(ValueError, match="ties"):  # "reference" max-pool only implements "split"
        models.lenet5(pool_impl="reference", ties="first")
    models.lenet5(pool_impl="reference")  # ties=None: the impl's own policy ("split")
    _, params, state = lenet_small
    x = jnp.ones((1, 12, 12, 1))  # constant input: every interior pooling window is a tie

    def input_grad(model):
        return jax.grad(lambda x: jnp.sum(model.apply(params, state, x)[0]))(x)

    g_first = input_grad(models.lenet5(pool_impl="custom_vjp", ties="first"))
    g_lax = input_grad(models.lenet5())
    g_all = input_grad(models.lenet5(pool_impl="custom_vjp", ties="all"))
    np.testing.assert_allclose(np.asarray(g_first), np.asarray(g_lax), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(g_all), np.asarray(g_first))


def test_registry():
    assert set(models.MODELS) == {"lenet5", "example_net", "small_vgg", "small_resnet"}
    assert models.input_shape("lenet5") == (1, 28, 28, 1)
    assert models.input_shape("small_vgg", batch=8) == (8, 32, 32, 3)
    with pytest.raises(ValueError, match="name must be one of"):
        models.get_model("resnet50")
    with pytest.raises(TypeError):
        models.get_model("lenet5", dropout=0.5)
    with pytest.raises(ValueError, match="widths"):
        models.small_resnet(widths=())
