"""serial / residual / branches against applying the pieces by hand.

Each scenario (init, the combinator's apply and the by-hand apply) runs as one ``jax.jit``: on
CPU these tests spend their time compiling, not running, and one program compiles several times
faster than the same ops dispatched one by one (each eager op is a compile of its own). Inputs
come from NumPy (a jax.random draw of a new shape is a compile of its own).
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import layers as L
from fcnn.combinators import branches, identity, residual, serial
from fcnn.types import layer_info

KEY = jax.random.PRNGKey(0)


def _normal(shape, seed):
    return jnp.asarray(np.random.RandomState(seed).randn(*shape), jnp.float32)


def _traced(fn, *args):
    """``fn(*args)`` compiled, where ``fn`` returns ``(static, arrays)``: ``static`` is kept from the trace."""
    box = {}

    def run(*a):
        box["static"], arrays = fn(*a)
        return arrays

    arrays = jax.jit(run)(*args)
    return box["static"], arrays


def test_serial_equals_applying_layers_by_hand():
    parts = [L.Dense(16), L.Relu(), L.Dropout(0.5), L.Dense(8), L.Dropout(0.25), L.BatchNorm()]
    net = serial(*parts)

    def scenario(x, key):
        out_shape, params, state = net.init(KEY, (5, 12))
        _, p0, _ = parts[0].init(jax.random.split(KEY, 6)[0], (5, 12))  # init: child i got split(key, 6)[i]
        y, new_state = net.apply(params, state, x, key=key, train=True)
        h, states = x, []
        for layer, p, s, k in zip(parts, params, state, jax.random.split(key, 6)):
            h, s = layer.apply(p, s, h, key=k, train=True)
            states.append(s)
        return out_shape, (params, state, p0, y, new_state, h, states)

    x = _normal((5, 12), 1)
    out_shape, (params, state, p0, y, new_state, h, states) = _traced(scenario, x, jax.random.PRNGKey(2))
    assert out_shape == (5, 8) and len(params) == len(state) == 6
    np.testing.assert_array_equal(params[0]["w"], p0["w"])
    np.testing.assert_array_equal(np.asarray(y), np.asarray(h))
    np.testing.assert_array_equal(np.asarray(new_state[5]["mean"]), np.asarray(states[5]["mean"]))
    assert not np.allclose(new_state[5]["mean"], state[5]["mean"])  # the BN state did move

    # eval needs no key: the dropouts are identities and BatchNorm uses its running statistics (NumPy, float64)
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), (params, new_state))
    (d0, _, _, d3, _, bn), (*_, bs) = p64
    hid = np.maximum(np.asarray(x, np.float64) @ d0["w"] + d0["b"], 0) @ d3["w"] + d3["b"]
    want = (hid - bs["mean"]) / np.sqrt(bs["var"] + 1e-5) * bn["scale"] + bn["offset"]
    got = jax.jit(lambda p, s, x: net.apply(p, s, x)[0])(params, new_state, x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_serial_gives_each_dropout_its_own_mask():
    net = serial(L.Dropout(0.5), L.Dropout(0.5))
    _, params, state = net.init(KEY, (1000,))
    x = jnp.ones((1, 1000))

    @jax.jit
    def run(x):
        k0, _ = jax.random.split(jax.random.PRNGKey(3))
        m0 = L.Dropout(0.5).apply({}, {}, x, key=k0, train=True)[0] != 0
        return m0, net.apply(params, state, x, key=jax.random.PRNGKey(3), train=True)[0]

    m0, y = map(np.asarray, run(x))
    # the first dropout used k0; if both reused one key the survivors would be m0 exactly
    kept = y != 0
    assert kept.sum() < m0.sum() * 0.75 and not np.array_equal(kept, m0)
    assert np.all(~kept | m0)  # survivors of both masks are survivors of the first
    np.testing.assert_allclose(y[kept], 4.0)


def test_residual_identity_and_projection_equal_hand_computation():
    x = _normal((2, 6, 6, 4), 4)
    block = serial(L.Conv2D(4, 3, padding="SAME"), L.Relu())
    res = residual(block)
    down = serial(L.Conv2D(8, 3, stride=2, padding="SAME"), L.Relu())
    proj = L.Conv2D(8, 1, stride=2)
    res2 = residual(down, proj)

    def scenario(x):
        out_shape, params, state = res.init(KEY, x.shape)
        y = res.apply(params, state, x)[0]
        by_hand = block.apply(params["block"], state["block"], x)[0] + x
        out_shape2, params2, state2 = res2.init(KEY, x.shape)
        y2 = res2.apply(params2, state2, x)[0]
        by_hand2 = down.apply(params2["block"], state2["block"], x)[0] + proj.apply(params2["shortcut"], {}, x)[0]
        return (out_shape, out_shape2, params["shortcut"]), (y, by_hand, y2, by_hand2)

    (out_shape, out_shape2, shortcut), (y, by_hand, y2, by_hand2) = _traced(scenario, x)
    assert out_shape == x.shape and shortcut == {}
    np.testing.assert_allclose(np.asarray(y), np.asarray(by_hand), rtol=1e-6)
    assert out_shape2 == (2, 3, 3, 8)
    np.testing.assert_allclose(np.asarray(y2), np.asarray(by_hand2), rtol=1e-6)


def _abstract_init(layer, in_shape):
    """``layer.init`` traced, not run (shape errors raise the same; no kernel is drawn)."""
    return jax.eval_shape(lambda k: layer.init(k, in_shape)[1:], KEY)


def test_residual_shape_mismatch_raises_at_init():
    with pytest.raises(ValueError, match="identity shortcut"):
        _abstract_init(residual(L.Conv2D(8, 3, padding="SAME")), (1, 6, 6, 4))
    with pytest.raises(ValueError, match="shortcut's output shape"):
        _abstract_init(residual(L.Conv2D(8, 3, stride=2, padding="SAME"), L.Conv2D(8, 1)), (1, 6, 6, 4))


def test_branches_concat_and_sum_equal_hand_computation():
    x = _normal((2, 5, 5, 3), 5)
    a, b = L.Conv2D(4, 1), L.Conv2D(2, 3, padding="SAME")
    cat = branches(a, b)
    trio = (L.Conv2D(4, 1), L.Conv2D(4, 3, padding="SAME"), L.Conv2D(4, 1))
    s = branches(*trio, merge="sum")

    def scenario(x):
        cat_shape, params, state = cat.init(KEY, x.shape)
        y = cat.apply(params, state, x)[0]
        ya, yb = a.apply(params[0], {}, x)[0], b.apply(params[1], {}, x)[0]
        sum_shape, params, state = s.init(KEY, x.shape)
        ys = s.apply(params, state, x)[0]
        parts = [layer.apply(p, {}, x)[0] for layer, p in zip(trio, params)]
        return (cat_shape, sum_shape), (y, ya, yb, ys, parts)

    (cat_shape, sum_shape), (y, ya, yb, ys, parts) = _traced(scenario, x)
    assert cat_shape == (2, 5, 5, 6)
    np.testing.assert_array_equal(np.asarray(y), np.concatenate([ya, yb], axis=-1))
    assert sum_shape == (2, 5, 5, 4)
    np.testing.assert_allclose(np.asarray(ys), np.asarray(parts[0] + parts[1] + parts[2]), rtol=1e-6)


def test_branches_concat_nchw_uses_axis_1():
    x = _normal((2, 3, 5, 5), 6)
    pool = L.MaxPool2D(3, stride=1, padding="SAME", layout="NCHW")
    cat = branches(L.Conv2D(4, 1, layout="NCHW"), pool, layout="NCHW")

    def scenario(x):
        out_shape, params, state = cat.init(KEY, x.shape)
        return out_shape, (cat.apply(params, state, x)[0], pool.apply({}, {}, x)[0])

    out_shape, (y, pooled) = _traced(scenario, x)
    assert out_shape == y.shape == (2, 7, 5, 5)
    np.testing.assert_array_equal(np.asarray(y[:, 4:]), np.asarray(pooled))


def test_branches_shape_errors_at_init():
    with pytest.raises(ValueError, match="every axis but the channel"):
        _abstract_init(branches(L.Conv2D(4, 1), L.Conv2D(4, 3)), (1, 6, 6, 3))
    with pytest.raises(ValueError, match="same shape"):
        _abstract_init(branches(L.Conv2D(4, 1), L.Conv2D(5, 1), merge="sum"), (1, 6, 6, 3))
    with pytest.raises(ValueError, match="merge"):
        branches(L.Relu(), merge="max")


def test_non_layer_arguments_raise_type_error():
    with pytest.raises(TypeError, match="serial argument 1"):
        serial(L.Relu(), jax.nn.relu)
    with pytest.raises(TypeError, match="residual"):
        residual(L.Relu(), "identity")
    with pytest.raises(ValueError, match="at least one"):
        serial()


# ----------------------------------------------------------------------------- apply-time checks
def _apply_traced(layer, init_shape, x_shape, params=None, **kw):
    """init at ``init_shape`` (or take ``params`` with init's state), then apply to ``x_shape``; both traced."""
    _, p, state = jax.eval_shape(lambda k: layer.init(k, init_shape), KEY)
    return jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, **kw)[0], p if params is None else params, state,
                          jax.ShapeDtypeStruct(x_shape, jnp.float32))


def _summary_paths(model, in_shape):
    """Every row of ``fcnn summary`` as its full dotted path ("1.1.block.0.Dense")."""
    from fcnn.summary import summary

    stack, paths = [], []
    for row in summary(model, in_shape).rows:
        stack[row.depth:] = [row.name.rsplit(".", 1)[0] if "." in row.name else row.name]
        paths.append(".".join(stack[:-1] + [row.name]))
    return paths


def test_a_nested_child_error_names_its_position_as_summary_numbers_it():
    inner = L.Dense(4)
    model = serial(L.Dense(4), serial(L.Relu(), residual(serial(inner, L.Dense(4)))))
    _, params, _ = jax.eval_shape(lambda k: model.init(k, (2, 6)), KEY)
    bad = jax.tree_util.tree_map(lambda a: a, params)
    bad[1][1]["block"][0]["w"] = jax.ShapeDtypeStruct((5, 4), jnp.float32)  # as if init had seen 5 features there
    with pytest.raises(ValueError) as err:
        _apply_traced(model, (2, 6), (2, 6), params=bad)
    msg = str(err.value)
    assert msg.startswith("Dense: apply got inputs of shape (n, 4) but init was given (n, 5)")
    assert "(layer 1.1.block.0 in `fcnn summary`)" in msg
    assert "1.1.block.0.Dense" in _summary_paths(model, (2, 6))


def test_residual_refuses_paths_that_disagree_for_this_input_instead_of_broadcasting():
    # init at 1x1: the global-average block (n, 1, 1, 3) equals the identity; at 2x2 y + x would broadcast
    squeeze = residual(serial(L.GlobalAvgPool2D(), L.Lambda(lambda x: x[:, None, None, :])))
    with pytest.raises(ValueError, match=re.escape("residual: apply got inputs of shape (n, 2, 2, 3), for which the "
                                                   "block gives (n, 1, 1, 3) but the identity shortcut gives "
                                                   "(n, 2, 2, 3)")):
        _apply_traced(squeeze, (1, 1, 1, 3), (1, 2, 2, 3))
    # at 8x8 a 2x2 pool and a 1x1 stride-2 conv agree (4x4); at 9x9 they give 4x4 and 5x5
    down = residual(L.MaxPool2D(2), L.Conv2D(3, 1, stride=2))
    assert _apply_traced(down, (1, 8, 8, 3), (4, 8, 8, 3)).shape == (4, 4, 4, 3)
    with pytest.raises(ValueError, match=re.escape("block gives (n, 4, 4, 3) but the shortcut gives (n, 5, 5, 3)")):
        _apply_traced(down, (1, 8, 8, 3), (1, 9, 9, 3))


def test_branches_refuse_outputs_that_disagree_for_this_input():
    two = branches(L.MaxPool2D(2), L.Conv2D(2, 1, stride=2))
    assert _apply_traced(two, (1, 8, 8, 3), (2, 8, 8, 3)).shape == (2, 4, 4, 5)
    with pytest.raises(ValueError, match=r"branches\(merge='concat'\): branch outputs must agree .* for apply's "
                                         r"inputs of shape \(n, 9, 9, 3\)"):
        _apply_traced(two, (1, 8, 8, 3), (1, 9, 9, 3))
    summed = branches(L.Relu(), L.Conv2D(3, 1), merge="sum")
    with pytest.raises(ValueError, match=r"Conv2D: apply got .* \(layer 1 in `fcnn summary`\)"):
        _apply_traced(summed, (1, 4, 4, 3), (1, 4, 4, 2))


@pytest.mark.parametrize("make", [lambda: serial(L.Dropout(0.5)), lambda: residual(L.Dropout(0.5)),
                                  lambda: branches(L.Dropout(0.5))])
def test_combinators_refuse_a_key_that_is_not_a_prng_key(make):
    layer = make()
    name = layer_info(layer).name
    with pytest.raises(TypeError, match=rf"^{name}: key must be a PRNG key .* or None, got 0 \(int\)"):
        _apply_traced(layer, (2, 3), (2, 3), key=0, train=True)
    with pytest.raises(TypeError, match=rf"^{name}.init needs a PRNG key: key must be a PRNG key .*got 0 \(int\)"):
        layer.init(0, (2, 3))
    with pytest.raises(ValueError, match="Dropout with train=True needs a PRNG key"):  # None is passed on
        _apply_traced(layer, (2, 3), (2, 3), train=True)


def test_params_or_state_of_another_length_are_refused_instead_of_running_fewer_layers():
    """zip ran min(len(layers), len(params)) layers: a 2-layer serial's params given to a 5-layer one ran 2
    layers and returned their output, silently."""
    two, five = serial(L.Dense(3), L.Dense(3)), serial(*[L.Dense(3) for _ in range(5)])
    _, p2, s2 = two.init(KEY, (1, 3))
    _, p5, s5 = five.init(KEY, (1, 3))
    x = jnp.ones((1, 3))
    with pytest.raises(ValueError, match=r"^serial of 5 layers: params must have one entry per layer \(5, as init "
                                         r"returns\), got 2 entries$"):
        five.apply(p2, s5, x)
    with pytest.raises(ValueError, match=r"^serial of 5 layers: state must have one entry per layer \(5,.*got 2 "):
        five.apply(p5, s2, x)
    with pytest.raises(ValueError, match=r"^serial of 2 layers: params .*\(2,.*got 5 entries$"):
        two.apply(p5, s2, x)  # longer: the extra entries were ignored
    with pytest.raises(ValueError, match=r"^serial of 2 layers: params .*got a dict$"):
        two.apply({"w": 1}, s2, x)
    pair = branches(L.Dense(3), L.Dense(3))
    _, pb, sb = branches(L.Dense(3)).init(KEY, (1, 3))
    with pytest.raises(ValueError, match=r"^branches of 2 layers: params must have one entry per layer \(2, as "
                                         r"init returns\), got 1 entry$"):
        pair.apply(pb, sb, x)
    block = residual(L.Dense(3))
    _, pr, sr = block.init(KEY, (1, 3))
    with pytest.raises(ValueError, match=r"^residual: params must be a dict with the keys 'block' and 'shortcut' "
                                         r"\(as init returns\), got keys \['block'\]$"):
        block.apply({"block": pr["block"]}, sr, x)
    with pytest.raises(ValueError, match=r"^residual: state must be a dict .*got a tuple$"):
        block.apply(pr, (), x)
    y, _ = five.apply(list(p5), list(s5), x)  # lists of the right length (a loaded checkpoint) still run
    by_hand = x
    for layer, p in zip(layer_info(five).children, p5):
        by_hand = layer.apply(p, {}, by_hand)[0]
    np.testing.assert_allclose(np.asarray(y), np.asarray(by_hand), rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: serial(L.Relu()), lambda: residual(L.Relu()), lambda: branches(L.Relu()),
                                  identity])
@pytest.mark.parametrize("in_shape", [None, (2, 0), (2, -1), (2.0, 3), "ab", 5])
def test_combinators_check_in_shape_at_init(make, in_shape):
    """None gave "'NoneType' object is not iterable"; identity returned (2, 0), (2.0, 3), ('a', 'b') as shapes.
    The rule is types.check_shape's, as for every layer."""
    with pytest.raises(ValueError, match=r"^in_shape must be a tuple of positive ints \(batch included\), got "):
        make().init(KEY, in_shape)


def test_skip_concat_equals_concatenating_by_hand_in_any_rank():
    """skip_concat(block)(x) == concat(x, block(x)) along the channel axis; channels-first ranks 3 and 5 too."""
    from fcnn.combinators import skip_concat
    from fcnn.layers_nd import Conv1D, Conv3D

    key = jax.random.PRNGKey(1)
    for block, shape, layout, axis in ((Conv1D(2, 3, padding="SAME"), (2, 5, 3), "NHWC", -1),
                                       (Conv1D(2, 3, padding="SAME", layout="NCW"), (2, 3, 5), "NCW", 1),
                                       (Conv3D(2, 1, layout="NCDHW"), (1, 3, 2, 2, 2), "NCHW", 1)):
        layer = skip_concat(block, layout=layout)
        x = jnp.asarray(np.random.default_rng(0).normal(size=shape))
        out, params, state = layer.init(key, shape)
        y = layer.apply(params, state, x)[0]
        by_hand = jnp.concatenate([x, block.apply(params[1], state[1], x)[0]], axis=axis)
        assert out == y.shape == by_hand.shape and params[0] == {}
        np.testing.assert_array_equal(y, by_hand)
    assert identity().apply({}, {}, x)[0] is x and layer_info(identity()).flops((1, 2), (1, 2)) == 0
    with pytest.raises(TypeError, match="skip_concat argument 0 must be a Layer"):
        skip_concat(lambda x: x)
