"""serial / residual / branches against applying the pieces by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import layers as L
from fcnn.combinators import branches, residual, serial

KEY = jax.random.PRNGKey(0)


def test_serial_equals_applying_layers_by_hand():
    parts = [L.Dense(16), L.Relu(), L.Dropout(0.5), L.Dense(8), L.Dropout(0.25), L.BatchNorm()]
    net = serial(*parts)
    out_shape, params, state = net.init(KEY, (5, 12))
    assert out_shape == (5, 8) and len(params) == len(state) == 6
    # init: child i got split(key, 6)[i]
    init_keys = jax.random.split(KEY, 6)
    _, p0, _ = parts[0].init(init_keys[0], (5, 12))
    np.testing.assert_array_equal(params[0]["w"], p0["w"])

    x = jax.random.normal(jax.random.PRNGKey(1), (5, 12))
    key = jax.random.PRNGKey(2)
    y, new_state = net.apply(params, state, x, key=key, train=True)
    h, keys = x, jax.random.split(key, 6)
    states = []
    for layer, p, s, k in zip(parts, params, state, keys):
        h, s = layer.apply(p, s, h, key=k, train=True)
        states.append(s)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(h))
    np.testing.assert_array_equal(np.asarray(new_state[5]["mean"]), np.asarray(states[5]["mean"]))
    assert not np.allclose(new_state[5]["mean"], state[5]["mean"])  # the BN state did move

    # eval needs no key and is deterministic
    y1, _ = net.apply(params, state, x)
    y2, _ = net.apply(params, state, x)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))


def test_serial_gives_each_dropout_its_own_mask():
    net = serial(L.Dropout(0.5), L.Dropout(0.5))
    _, params, state = net.init(KEY, (1000,))
    x = jnp.ones((1, 1000))
    k0, k1 = jax.random.split(jax.random.PRNGKey(3))
    m0 = np.asarray(L.Dropout(0.5).apply({}, {}, x, key=k0, train=True)[0]) != 0
    y, _ = net.apply(params, state, x, key=jax.random.PRNGKey(3), train=True)
    # the first dropout used k0; if both reused one key the survivors would be m0 exactly
    kept = np.asarray(y) != 0
    assert kept.sum() < m0.sum() * 0.75 and not np.array_equal(kept, m0)
    assert np.all(~kept | m0)  # survivors of both masks are survivors of the first
    np.testing.assert_allclose(np.asarray(y)[kept], 4.0)


def test_residual_identity_and_projection_equal_hand_computation():
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 6, 4))
    block = serial(L.Conv2D(4, 3, padding="SAME"), L.Relu())
    res = residual(block)
    out_shape, params, state = res.init(KEY, x.shape)
    assert out_shape == x.shape and params["shortcut"] == {}
    y, _ = res.apply(params, state, x)
    by_hand = block.apply(params["block"], state["block"], x)[0] + x
    np.testing.assert_allclose(np.asarray(y), np.asarray(by_hand), rtol=1e-6)

    down = serial(L.Conv2D(8, 3, stride=2, padding="SAME"), L.Relu())
    proj = L.Conv2D(8, 1, stride=2)
    res2 = residual(down, proj)
    out_shape, params, state = res2.init(KEY, x.shape)
    assert out_shape == (2, 3, 3, 8)
    y, _ = res2.apply(params, state, x)
    by_hand = down.apply(params["block"], state["block"], x)[0] + proj.apply(params["shortcut"], {}, x)[0]
    np.testing.assert_allclose(np.asarray(y), np.asarray(by_hand), rtol=1e-6)


def test_residual_shape_mismatch_raises_at_init():
    with pytest.raises(ValueError, match="identity shortcut"):
        residual(L.Conv2D(8, 3, padding="SAME")).init(KEY, (1, 6, 6, 4))
    with pytest.raises(ValueError, match="shortcut's output shape"):
        residual(L.Conv2D(8, 3, stride=2, padding="SAME"), L.Conv2D(8, 1)).init(KEY, (1, 6, 6, 4))


def test_branches_concat_and_sum_equal_hand_computation():
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 5, 5, 3))
    a, b = L.Conv2D(4, 1), L.Conv2D(2, 3, padding="SAME")
    cat = branches(a, b)
    out_shape, params, state = cat.init(KEY, x.shape)
    assert out_shape == (2, 5, 5, 6)
    y, _ = cat.apply(params, state, x)
    ya, yb = a.apply(params[0], {}, x)[0], b.apply(params[1], {}, x)[0]
    np.testing.assert_array_equal(np.asarray(y), np.concatenate([ya, yb], axis=-1))

    trio = (L.Conv2D(4, 1), L.Conv2D(4, 3, padding="SAME"), L.Conv2D(4, 1))
    s = branches(*trio, merge="sum")
    out_shape, params, state = s.init(KEY, x.shape)
    assert out_shape == (2, 5, 5, 4)
    y, _ = s.apply(params, state, x)
    parts = [layer.apply(p, {}, x)[0] for layer, p in zip(trio, params)]
    np.testing.assert_allclose(np.asarray(y), np.asarray(parts[0] + parts[1] + parts[2]), rtol=1e-6)


def test_branches_concat_nchw_uses_axis_1():
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 3, 5, 5))
    cat = branches(L.Conv2D(4, 1, layout="NCHW"), L.MaxPool2D(3, stride=1, padding="SAME", layout="NCHW"),
                   layout="NCHW")
    out_shape, params, state = cat.init(KEY, x.shape)
    y, _ = cat.apply(params, state, x)
    assert out_shape == y.shape == (2, 7, 5, 5)
    np.testing.assert_array_equal(np.asarray(y[:, 4:]), np.asarray(
        L.MaxPool2D(3, stride=1, padding="SAME", layout="NCHW").apply({}, {}, x)[0]))


def test_branches_shape_errors_at_init():
    with pytest.raises(ValueError, match="every axis but the channel"):
        branches(L.Conv2D(4, 1), L.Conv2D(4, 3)).init(KEY, (1, 6, 6, 3))
    with pytest.raises(ValueError, match="same shape"):
        branches(L.Conv2D(4, 1), L.Conv2D(5, 1), merge="sum").init(KEY, (1, 6, 6, 3))
    with pytest.raises(ValueError, match="merge"):
        branches(L.Relu(), merge="max")


def test_non_layer_arguments_raise_type_error():
    with pytest.raises(TypeError, match="serial argument 1"):
        serial(L.Relu(), jax.nn.relu)
    with pytest.raises(TypeError, match="residual"):
        residual(L.Relu(), "identity")
    with pytest.raises(ValueError, match="at least one"):
        serial()
