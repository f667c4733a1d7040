"""Normalisation layers against NumPy formulas and hand-made tensors (float64: tests enable x64).

References: the definitions in Ioffe & Szegedy 2015 (batch), Ba et al. 2016 (layer), Wu & He 2018
(group; their Fig. 2 draws which axes each norm averages over), Ulyanov et al. 2016 (instance);
PyTorch's documented running-statistics rule for the unbiased running variance.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import layers, norms
from fcnn.norms import BatchNorm, GroupNorm, InstanceNorm, LayerNorm
from fcnn.types import InputShapeError

KEY = jax.random.PRNGKey(0)
EPS = 1e-5


def _apply(layer, x, params=None, state=None, train=False):
    _, p, s = layer.init(KEY, x.shape)
    y, new = layer.apply(p if params is None else params, s if state is None else state, jnp.asarray(x),
                         train=train)
    return np.asarray(y), new


def _np_group_norm(x, groups, eps=EPS):
    """Channels-last x (n, *sp, c): statistics per example and group of c/groups channels (biased var)."""
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(n, -1, groups, c // groups)  # (n, positions, g, c/g)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    return ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)


def _to_first(a):
    return np.moveaxis(a, -1, 1)


# ----------------------------------------------------------------------------- hand-made tensors
def test_group_norm_on_a_hand_made_tensor():
    """(1, 2, 4) NWC, 4 channels in 2 groups: group 0 = channels 0-1 holds {1, 3, 5, 7} (mean 4,
    var (9+1+1+9)/4 = 5), group 1 = channels 2-3 holds {10, 10, 10, 14} (mean 11, var (1+1+1+9)/4 = 3)."""
    x = np.array([[[1.0, 3.0, 10.0, 10.0],
                   [5.0, 7.0, 10.0, 14.0]]])
    want = np.array([[[-3 / np.sqrt(5 + EPS), -1 / np.sqrt(5 + EPS), -1 / np.sqrt(3 + EPS), -1 / np.sqrt(3 + EPS)],
                      [1 / np.sqrt(5 + EPS), 3 / np.sqrt(5 + EPS), -1 / np.sqrt(3 + EPS), 3 / np.sqrt(3 + EPS)]]])
    y, _ = _apply(GroupNorm(2, layout="NWC"), x)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    y_first, _ = _apply(GroupNorm(2, layout="NCW"), _to_first(x))
    np.testing.assert_allclose(y_first, _to_first(want), rtol=1e-12)


def test_instance_norm_on_a_hand_made_tensor():
    """(1, 2, 2, 2) NHWC: channel 0 holds {0, 2, 4, 6} (mean 3, var 5), channel 1 {1, 1, 1, 5} (mean 2, var 3);
    a second example shifted by 100 gives the same output (its own statistics)."""
    x0 = np.array([[[0.0, 1.0], [2.0, 1.0]], [[4.0, 1.0], [6.0, 5.0]]])  # (h, w, c)
    x = np.stack([x0, x0 + 100.0])
    s5, s3 = np.sqrt(5 + EPS), np.sqrt(3 + EPS)
    want0 = np.array([[[-3 / s5, -1 / s3], [-1 / s5, -1 / s3]], [[1 / s5, -1 / s3], [3 / s5, 3 / s3]]])
    y, _ = _apply(InstanceNorm(), x)
    np.testing.assert_allclose(y, np.stack([want0, want0]), rtol=1e-10, atol=1e-12)


def test_layer_norm_on_a_hand_made_tensor_and_features():
    """One example (1, 2, 2) NWC holding {1, 2, 3, 6}: mean 3, var (4+1+0+9)/4 = 3.5; (n, features) rows alone."""
    x = np.array([[[1.0, 2.0], [3.0, 6.0]]])
    y, _ = _apply(LayerNorm(layout="NWC"), x)
    np.testing.assert_allclose(y, (x - 3.0) / np.sqrt(3.5 + EPS), rtol=1e-12)
    f = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 4.0]])  # row 1: mean 1, var 3
    y, _ = _apply(LayerNorm(), f)
    np.testing.assert_allclose(y[1], (f[1] - 1.0) / np.sqrt(3.0 + EPS), rtol=1e-12)
    np.testing.assert_allclose(y[0], (f[0] - 3.0) / np.sqrt(3.5 + EPS), rtol=1e-12)


# ----------------------------------------------------------------------------- NumPy formulas, ranks, layouts
def _make(name, groups, layout, **kw):
    if name == "GroupNorm":
        return GroupNorm(groups, layout=layout, **kw)
    return getattr(norms, name)(layout=layout, **kw)


LAST = {1: "NWC", 2: "NHWC", 3: "NDHWC"}
FIRST = {1: "NCW", 2: "NCHW", 3: "NCDHW"}


@pytest.mark.parametrize("spatial", [(7,), (4, 5), (3, 2, 4)])
@pytest.mark.parametrize("name, groups", [("LayerNorm", 1), ("GroupNorm", 3), ("InstanceNorm", 6)])
def test_per_example_norms_match_numpy_in_both_layouts(name, groups, spatial):
    """Every rank 1-3; channels-first on the transposed input gives the transposed output."""
    rs = np.random.RandomState(len(spatial) * 10 + groups)
    x = rs.randn(2, *spatial, 6) * 3 + 2  # channels-last
    scale, offset = rs.randn(6), rs.randn(6)
    want = _np_group_norm(x, groups) * scale + offset
    params = {"scale": jnp.asarray(scale), "offset": jnp.asarray(offset)}
    y, state = _apply(_make(name, groups, LAST[len(spatial)]), x, params)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)
    assert state == {}
    y_first, _ = _apply(_make(name, groups, FIRST[len(spatial)]), _to_first(x), params)
    np.testing.assert_allclose(y_first, _to_first(want), rtol=1e-10, atol=1e-12)


def test_group_norm_on_features_and_without_affine():
    x = np.random.RandomState(3).randn(3, 8) * 2 - 1
    layer = GroupNorm(4, affine=False)
    _, params, state = layer.init(KEY, x.shape)
    assert params == {} and state == {}
    y, _ = layer.apply(params, state, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), _np_group_norm(x, 4), rtol=1e-10, atol=1e-12)


def test_layouts_name_only_the_channel_axis():
    """layout="NHWC" (the default) serves a rank-3 and a rank-5 input as channels-last."""
    x = np.random.RandomState(4).randn(2, 3, 4, 2, 6)
    y, _ = _apply(GroupNorm(2), x)
    np.testing.assert_allclose(y, _np_group_norm(x, 2), rtol=1e-10, atol=1e-12)
    y, _ = _apply(LayerNorm(layout="NCHW"), _to_first(x[:, 0, 0]))
    np.testing.assert_allclose(y, _to_first(_np_group_norm(x[:, 0, 0], 1)), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- BatchNorm
def _np_batch_norm(x, eps=EPS):
    axes = tuple(range(x.ndim - 1))
    return (x - x.mean(axes)) / np.sqrt(x.var(axes) + eps)


def test_batchnorm_train_normalises_and_updates_running_stats():
    rs = np.random.RandomState(7)
    x = rs.randn(8, 5, 5, 3) * np.array([1.0, 3.0, 0.5]) + np.array([2.0, -1.0, 10.0])
    y, new = _apply(BatchNorm(momentum=0.8, param_dtype=jnp.float64), x, train=True)
    np.testing.assert_allclose(y, _np_batch_norm(x), rtol=1e-10, atol=1e-12)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    # running = 0.8 * old + 0.2 * batch, old mean 0 / var 1
    np.testing.assert_allclose(np.asarray(new["mean"]), 0.2 * mean, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(new["var"]), 0.8 + 0.2 * var, rtol=1e-10)


def test_batchnorm_refuses_an_empty_batch_in_training_and_takes_it_in_eval():
    """With no values per channel the batch mean is 0/0: training refuses it (before, the running
    statistics became NaN and stayed so); eval normalises nothing and keeps the state."""
    bn = BatchNorm(momentum=0.8, param_dtype=jnp.float64)
    _, p, s = bn.init(KEY, (4, 5, 5, 3))
    with pytest.raises(ValueError, match=re.escape("x of shape (0, 5, 5, 3) has no values per channel")):
        bn.apply(p, s, jnp.zeros((0, 5, 5, 3)), train=True)
    y, kept = bn.apply(p, s, jnp.zeros((0, 5, 5, 3)), train=False)
    assert y.shape == (0, 5, 5, 3)
    np.testing.assert_array_equal(np.asarray(kept["mean"]), np.zeros(3))
    np.testing.assert_array_equal(np.asarray(kept["var"]), np.ones(3))


def test_batchnorm_unbiased_running_variance_by_hand():
    """One channel holding 1, 2, 3, 6 (m = 4): biased var 14/4 = 3.5, unbiased 14/3.
    PyTorch (momentum p = 0.1 <=> fcnn 0.9) keeps 0.9 * 1 + 0.1 * 14/3 = 1.3666...; the batch itself
    is normalised by the biased 3.5 either way."""
    x = np.array([[[1.0], [2.0]], [[3.0], [6.0]]])  # (n=2, w=2, c=1) NWC
    y_u, s_u = _apply(BatchNorm(unbiased_running_var=True, param_dtype=jnp.float64), x, train=True)
    y_b, s_b = _apply(BatchNorm(param_dtype=jnp.float64), x, train=True)
    np.testing.assert_allclose(np.asarray(s_u["var"]), [0.9 + 0.1 * 14 / 3], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(s_b["var"]), [0.9 + 0.1 * 3.5], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(s_u["mean"]), [0.1 * 3.0], rtol=1e-12)
    np.testing.assert_allclose(y_u, (x - 3.0) / np.sqrt(3.5 + EPS), rtol=1e-12)
    np.testing.assert_array_equal(y_u, y_b)


def test_batchnorm_unbiased_counts_the_global_batch_under_axis_name():
    x = np.random.RandomState(9).randn(8, 3, 2) * 2 + 1  # (n, w, c); 4 "devices" x 2 examples
    layer = BatchNorm(axis_name="devices", unbiased_running_var=True, momentum=0.0, param_dtype=jnp.float64)
    _, params, state = layer.init(KEY, (2, 3, 2))
    _, s = jax.vmap(lambda xs: layer.apply(params, state, xs, train=True), axis_name="devices")(
        jnp.asarray(x.reshape(4, 2, 3, 2)))
    np.testing.assert_allclose(np.asarray(s["var"][0]), x.reshape(-1, 2).var(0, ddof=1), rtol=1e-10)


@pytest.mark.parametrize("spatial", [(), (7,), (3, 2, 4)])
def test_batchnorm_every_rank_and_both_layouts(spatial):
    x = np.random.RandomState(len(spatial)).randn(4, *spatial, 3) * 2 + 5
    y, s = _apply(BatchNorm(), x, train=True)
    np.testing.assert_allclose(y, _np_batch_norm(x), rtol=1e-10, atol=1e-12)
    if spatial:
        y_first, s_first = _apply(BatchNorm(layout=FIRST[len(spatial)]), _to_first(x), train=True)
        np.testing.assert_allclose(y_first, _to_first(y), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(s_first["var"]), np.asarray(s["var"]), rtol=1e-12)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_batchnorm_eval_uses_running_stats(layout):
    x = np.random.RandomState(8).randn(4, 3, 3, 2) * 5 + 7  # batch stats far from the running ones
    params = {"scale": jnp.array([2.0, 0.5]), "offset": jnp.array([1.0, -1.0])}
    state = {"mean": jnp.array([1.0, 2.0]), "var": jnp.array([4.0, 9.0])}
    xin = x if layout == "NHWC" else _to_first(x)
    y, same = BatchNorm(epsilon=1e-3, layout=layout).apply(params, state, jnp.asarray(xin), train=False)
    ref = (x - [1.0, 2.0]) / np.sqrt(np.array([4.0, 9.0]) + 1e-3) * [2.0, 0.5] + [1.0, -1.0]
    np.testing.assert_allclose(np.asarray(y), ref if layout == "NHWC" else _to_first(ref), rtol=1e-12)
    assert same is state


def test_batchnorm_axis_name_equals_global_batch():
    x = jnp.asarray(np.random.RandomState(9).randn(8, 4, 4, 3) * 2 + 1)
    layer = BatchNorm(axis_name="devices")
    _, params, state = layer.init(KEY, (2, 4, 4, 3))
    y_global, s_global = BatchNorm().apply(params, state, x, train=True)
    # 4 "devices" of 2 examples each; vmap binds the axis name like pmap does
    y_sh, s_sh = jax.vmap(lambda xs: layer.apply(params, state, xs, train=True), axis_name="devices")(
        x.reshape(4, 2, 4, 4, 3))
    np.testing.assert_allclose(np.asarray(y_sh).reshape(x.shape), np.asarray(y_global), rtol=1e-10, atol=1e-12)
    for k in ("mean", "var"):
        np.testing.assert_allclose(np.asarray(s_sh[k][0]), np.asarray(s_global[k]), rtol=1e-10)


def test_batchnorm_bfloat16_input_and_no_affine():
    x = jnp.asarray(np.random.RandomState(10).randn(16, 4) * 3 + 5, jnp.bfloat16)
    _, params, state = BatchNorm().init(KEY, x.shape)
    y, s = BatchNorm().apply(params, state, x, train=True)
    assert y.dtype == jnp.bfloat16 and s["mean"].dtype == jnp.float32
    # float64 reference on the same (rounded) input: the output is within one bfloat16 rounding of it
    # (2^-8 relative; a mean of ~0 alone let a wrong scale through), the running statistics float32's
    x64 = np.asarray(x, np.float64)
    ref = _np_batch_norm(x64)
    assert np.all(np.abs(np.asarray(y, np.float64) - ref) <= 2.0 ** -8 * np.abs(ref))
    np.testing.assert_allclose(np.asarray(s["mean"]), 0.1 * x64.mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s["var"]), 0.9 + 0.1 * x64.var(0), rtol=1e-6)
    _, params, _ = BatchNorm(affine=False).init(KEY, x.shape)
    assert params == {}


def _textbook_batch_norm(x, scale, offset, ca, eps=EPS):
    """Ioffe & Szegedy's train-mode forward with ``jnp.mean`` / ``jnp.var`` over every axis but ``ca``,
    left to JAX's autodiff: the reference for BatchNorm's hand-written derivative."""
    axes = tuple(a for a in range(x.ndim) if a != ca)
    shape = [1] * x.ndim
    shape[ca] = x.shape[ca]
    xhat = (x - jnp.mean(x, axes, keepdims=True)) / jnp.sqrt(jnp.var(x, axes, keepdims=True) + eps)
    return xhat * jnp.reshape(scale, shape) + jnp.reshape(offset, shape), jnp.var(x, axes)


def _bn_case(shape, seed):
    rs = np.random.RandomState(seed)
    c = shape[-1]
    x = jnp.asarray(rs.randn(*shape) * np.linspace(0.5, 3, c) + np.linspace(-2, 4, c))
    v, w = (jnp.asarray(rs.randn(*shape)) for _ in range(2))  # a tangent and the loss's weights
    params = {"scale": jnp.asarray(rs.randn(c)), "offset": jnp.asarray(rs.randn(c))}
    return x, v, w, params


# (8, 16, 16, 16): 32768 values, so the channel sums run as matrix products on CPU (fcnn.channels)
@pytest.mark.parametrize("layout,shape", [("NHWC", (4, 5, 5, 3)), ("NCHW", (4, 5, 5, 3)), ("NHWC", (6, 3)),
                                          ("NHWC", (8, 16, 16, 16))])
def test_batchnorm_derivatives_equal_autodiff_of_the_textbook_formula(layout, shape):
    """Train-mode BatchNorm has a hand-written derivative (``norms._batch_norm_train``): its gradient,
    forward-mode derivative, second derivative (forward over reverse) and the running variance's
    derivative equal those of the plain formula differentiated by JAX."""
    x, v, w, params = _bn_case(shape, len(shape) + shape[-1])
    first = layout == "NCHW"
    if first:
        x, v, w = (_to_first(a) for a in (x, v, w))
    ca = 1 if first else x.ndim - 1
    layer = BatchNorm(layout=layout, momentum=0.25, param_dtype=jnp.float64)
    _, _, state = layer.init(KEY, x.shape)
    ours = lambda p, x: layer.apply(p, state, x, train=True)[0]  # noqa: E731
    ref = lambda p, x: _textbook_batch_norm(x, p["scale"], p["offset"], ca)[0]  # noqa: E731

    def loss(f):
        return lambda p, x: jnp.sum(jnp.sin(f(p, x)) * w)

    @jax.jit  # one program for every derivative of both forms
    def derivatives(params, x, v):
        out = {}
        for name, f, var in (("ours", ours, lambda x: layer.apply(params, state, x, train=True)[1]["var"]),
                             ("ref", ref, lambda x: 0.75 * _textbook_batch_norm(x, params["scale"], params["offset"],
                                                                                ca)[1])):
            out[name] = {"gradient": jax.grad(loss(f), (0, 1))(params, x),
                         "jvp": jax.jvp(lambda x: f(params, x), (x,), (v,)),
                         "Hessian-vector product": jax.jvp(lambda x: jax.grad(loss(f), 1)(params, x), (x,), (v,))[1],
                         "running variance": jax.jvp(var, (x,), (v,))[1]}  # momentum 0.25: 0.75 of the batch's
        return out

    got = derivatives(params, x, v)
    for what, r in got["ref"].items():
        for u, t in zip(jax.tree.leaves(got["ours"][what]), jax.tree.leaves(r)):
            np.testing.assert_allclose(np.asarray(u), np.asarray(t), rtol=1e-9, atol=1e-11, err_msg=what)


def test_batchnorm_gradient_under_axis_name_equals_the_global_batch_textbook():
    """Under ``axis_name`` the hand-written derivative averages its channel means over the axis
    (pmean): the gradient of a loss over 4 "devices" of 2 examples (vmap binds the axis as pmap
    does) equals autodiff of the textbook formula over all 8."""
    x, _, w, params = _bn_case((8, 3, 3, 4), 11)
    layer = BatchNorm(axis_name="d", param_dtype=jnp.float64)
    _, _, state = layer.init(KEY, (2, 3, 3, 4))

    def ours(p, x):
        y = jax.vmap(lambda xs: layer.apply(p, state, xs, train=True)[0], axis_name="d")(x.reshape(4, 2, 3, 3, 4))
        return jnp.sum(jnp.sin(y.reshape(x.shape)) * w)

    def ref(p, x):
        return jnp.sum(jnp.sin(_textbook_batch_norm(x, p["scale"], p["offset"], 3)[0]) * w)

    both = jax.jit(lambda p, x: (jax.grad(ours, (0, 1))(p, x), jax.grad(ref, (0, 1))(p, x)))
    for u, r in zip(*map(jax.tree.leaves, both(params, x))):
        np.testing.assert_allclose(np.asarray(u), np.asarray(r), rtol=1e-9, atol=1e-11)


def test_batchnorm_is_still_importable_from_layers():
    assert layers.BatchNorm is BatchNorm


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, exc, match", [
    (lambda: GroupNorm(0), ValueError, "num_groups must be a positive int"),
    (lambda: GroupNorm(2, epsilon=0), ValueError, "epsilon must be a positive float"),
    (lambda: LayerNorm(layout="NWHC"), ValueError, "layout must be one of"),
    (lambda: InstanceNorm(affine=1), TypeError, "affine must be a bool"),
    (lambda: BatchNorm(unbiased_running_var="yes"), TypeError, "unbiased_running_var must be a bool"),
    (lambda: LayerNorm(param_dtype=jnp.int32), TypeError, "param_dtype"),
    (lambda: BatchNorm(param_dtype=None), TypeError, r"^param_dtype must be a floating dtype .*got None$"),
    (lambda: GroupNorm(2, param_dtype=None), TypeError, r"^param_dtype must be a floating dtype .*got None$"),
])
def test_bad_arguments_raise_at_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("layer, in_shape, match", [
    (GroupNorm(4), (2, 5, 6), re.escape("num_groups=4 must divide the channels (6) of in_shape (2, 5, 6)")),
    (InstanceNorm(), (2, 6), "in_shape of InstanceNorm must be rank 3-5"),
    (LayerNorm(), (2, 3, 4, 5, 6, 7), r"in_shape of LayerNorm must be \(n, c\) or rank 3-5"),
    (BatchNorm(), (5,), "in_shape of BatchNorm"),
    (BatchNorm(unbiased_running_var=True), (1, 3), "at least 2 values per channel"),
])
def test_bad_in_shape_raises_at_init(layer, in_shape, match):
    with pytest.raises(ValueError, match=match):
        layer.init(KEY, in_shape)


@pytest.mark.parametrize("layer, init_shape, x_shape, texts", [
    (GroupNorm(2), (2, 5, 5, 4), (2, 5, 5, 6), ["GroupNorm", "(n, 5, 5, 6)", "(n, 5, 5, 4)", "4 channels"]),
    (GroupNorm(2, affine=False), (2, 5, 4), (2, 5, 3), ["GroupNorm", "(n, 5, 3)", "num_groups=2 must divide"]),
    (LayerNorm(layout="NCW"), (2, 4, 5), (2, 6, 5), ["LayerNorm", "(n, 6, 5)", "(n, 4, 5)", "on axis 1"]),
    (InstanceNorm(), (2, 5, 4), (2, 4), ["InstanceNorm", "(2, 4)", "rank 3 or 4 or 5"]),
    (BatchNorm(), (4, 6), (4, 5, 6, 7, 8, 6), ["BatchNorm", "(4, 5, 6, 7, 8, 6)", "(n, 6)"]),
])
def test_apply_refuses_an_input_init_did_not_see(layer, init_shape, x_shape, texts):
    _, params, state = layer.init(KEY, init_shape)
    with pytest.raises(InputShapeError) as err:
        jax.eval_shape(lambda x: layer.apply(params, state, x), jax.ShapeDtypeStruct(x_shape, jnp.float32))
    for text in texts:
        assert text in str(err.value)


@pytest.mark.parametrize("make, torch_make", [
    (lambda: BatchNorm(), lambda t: t.nn.BatchNorm2d(3)),
    (lambda: LayerNorm(), lambda t: t.nn.GroupNorm(1, 3)),
    (lambda: GroupNorm(3), lambda t: t.nn.GroupNorm(3, 3)),
    (lambda: InstanceNorm(), lambda t: t.nn.InstanceNorm2d(3)),
])
@pytest.mark.parametrize("train", [False, True])
def test_integer_inputs_are_refused_as_torch_refuses_them(make, torch_make, train):
    """The normalised values were cast back to x's int dtype (all 0, or -1/0/1); torch 2.13 raises for
    each of these norms on an int32 input (the reference), so do they, naming x."""
    torch = pytest.importorskip("torch")
    module = torch_make(torch).train(train)
    with pytest.raises((RuntimeError, NotImplementedError)):
        module(torch.arange(2 * 3 * 4 * 4, dtype=torch.int32).reshape(2, 3, 4, 4))
    layer = make()
    _, params, state = layer.init(KEY, (2, 4, 4, 3))
    with pytest.raises(TypeError, match=r"^(BatchNorm|LayerNorm|GroupNorm|InstanceNorm): x must have a floating "
                                        r"dtype \(float32, float64, bfloat16, \.\.\.\), got int32$"):
        layer.apply(params, state, jnp.arange(96, dtype=jnp.int32).reshape(2, 4, 4, 3), train=train)


def test_unbiased_running_var_refuses_one_value_per_channel_at_apply_as_torch_does():
    """init refuses (1, 3) already; an apply with train=True on such a batch set the running variance
    from m / max(m - 1, 1) = 1 silently. torch 2.13 raises "Expected more than 1 value per channel when
    training" (the reference); fcnn raises init's error. Eval, and the biased running variance, take it."""
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        torch.nn.BatchNorm1d(3).train()(torch.ones(1, 3))
    layer = BatchNorm(unbiased_running_var=True)
    with pytest.raises(ValueError, match=re.escape("at least 2 values per channel, in_shape (1, 3) has 1")):
        layer.init(KEY, (1, 3))
    _, params, state = layer.init(KEY, (4, 3))
    for x_shape in ((1, 3), (1, 1, 1, 3)):
        with pytest.raises(ValueError, match=re.escape(f"unbiased_running_var needs at least 2 values per channel, "
                                                       f"x of shape {x_shape} has 1")):
            layer.apply(params, state, jnp.ones(x_shape), train=True)
    assert layer.apply(params, state, jnp.ones((1, 3)))[1] is state  # eval: the running statistics
    plain = BatchNorm()
    _, p, s = plain.init(KEY, (4, 3))
    assert plain.apply(p, s, jnp.ones((1, 3)), train=True)[0].shape == (1, 3)
