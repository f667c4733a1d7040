"""fcnn.layers_nd: 1-D/3-D conv and pools, global/adaptive pools in any rank, SpatialDropout, against
NumPy loops, hand-computed windows and counts, and the ops they call through another implementation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fcnn
from fcnn import init as I
from fcnn import ops
from fcnn.types import InputShapeError

KEY = jax.random.PRNGKey(0)
RNG = np.random.default_rng(0)


def _run(layer, x, *, key=None, train=False):
    """init then apply as one compiled program: ``(out_shape, params, y)``."""
    box = {}

    def run(x, key):
        box["out"], params, state = layer.init(KEY, x.shape)
        return params, layer.apply(params, state, x, key=key, train=train)[0]

    params, y = jax.jit(run)(jnp.asarray(x), key)
    return box["out"], params, np.asarray(y)


def _conv1d_loop(x, w, b, stride, pad):
    """NWC x (n, L, cin), WIO w (k, cin, cout): z[n, p, o] = b[o] + sum_t,c xp[n, p*s + t, c] w[t, c, o]."""
    xp = np.pad(x, ((0, 0), pad, (0, 0)))
    k = w.shape[0]
    out = (xp.shape[1] - k) // stride + 1
    z = np.zeros((x.shape[0], out, w.shape[2])) + b
    for p in range(out):
        z[:, p] += np.einsum("ntc,tco->no", xp[:, p * stride:p * stride + k], w)
    return z


def test_conv1d_matches_a_numpy_loop_and_counts_its_params():
    x = RNG.normal(size=(2, 11, 3))
    out, params, y = _run(fcnn.Conv1D(4, 3, stride=2, padding=1), x)
    assert out == (2, 6, 4) == y.shape  # floor((11 + 2 - 3) / 2) + 1 = 6
    assert params["w"].shape == (3, 3, 4) and sum(p.size for p in params.values()) == 3 * 3 * 4 + 4
    w, b = (np.asarray(params[k], np.float64) for k in ("w", "b"))
    np.testing.assert_allclose(y, _conv1d_loop(x, w, b, 2, (1, 1)), rtol=1e-10, atol=1e-12)


def test_conv1d_padding_modes_equal_a_numpy_padded_valid_conv():
    x = RNG.normal(size=(1, 7, 2))
    for mode, np_mode in (("reflect", "reflect"), ("replicate", "edge"), ("circular", "wrap")):
        _, params, y = _run(fcnn.Conv1D(3, 5, padding=2, padding_mode=mode, use_bias=False), x)
        xp = np.pad(x, ((0, 0), (2, 2), (0, 0)), mode=np_mode)
        np.testing.assert_allclose(y, _conv1d_loop(xp, np.asarray(params["w"], np.float64), 0, 1, (0, 0)),
                                   rtol=1e-10, atol=1e-12)


def test_conv3d_channels_first_matches_the_reference_op_and_pytorch_param_count():
    x = RNG.normal(size=(2, 4, 5, 6, 7))  # NCDHW, 4 channels
    layer = fcnn.Conv3D(6, (3, 2, 3), stride=(2, 1, 2), groups=2, layout="NCDHW")
    out, params, y = _run(layer, x)
    assert params["w"].shape == (6, 2, 3, 2, 3)  # OIDHW, PyTorch's Conv3d weight
    assert sum(p.size for p in params.values()) == 3 * 2 * 3 * (4 // 2) * 6 + 6  # 222
    assert out == (2, 6, 2, 5, 3) == y.shape  # D 5 -> 2, H 6 -> 5, W 7 -> floor((7 - 3) / 2) + 1 = 3
    want = ops.conv(x, np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64), stride=(2, 1, 2),
                    groups=2, layout="NCDHW", impl="reference")
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)


def test_conv3d_fans_follow_the_kernel_volume():
    seen = []

    def w_init(key, shape, dtype, fan_in, fan_out):
        seen.append((fan_in, fan_out))
        return jnp.zeros(shape, dtype)

    fcnn.Conv3D(8, 3, groups=2, w_init=w_init).init(KEY, (1, 5, 5, 5, 4))
    assert seen == [(27 * 2, 27 * 4)]  # prod(k)*cin/g, prod(k)*cout/g


def _pool_loop(x, k, s, reduce):
    out = (x.shape[1] - k) // s + 1
    return np.stack([reduce(x[:, p * s:p * s + k], axis=1) for p in range(out)], axis=1)


def test_pools_1d_and_3d_match_numpy():
    x = RNG.normal(size=(2, 9, 3))
    np.testing.assert_allclose(_run(fcnn.MaxPool1D(3, stride=2), x)[2], _pool_loop(x, 3, 2, np.max), rtol=0)
    np.testing.assert_allclose(_run(fcnn.AvgPool1D(2), x)[2], _pool_loop(x, 2, 2, np.mean), rtol=1e-12)
    v = RNG.normal(size=(1, 4, 6, 2, 3))  # NDHWC, 2x2x2 windows tile it
    want = v.reshape(1, 2, 2, 3, 2, 1, 2, 3).max(axis=(2, 4, 6))
    out, _, y = _run(fcnn.MaxPool3D(2), v)
    assert out == (1, 2, 3, 1, 3)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_allclose(_run(fcnn.AvgPool3D(2, layout="NCDHW"), v.transpose(0, 4, 1, 2, 3))[2],
                               v.reshape(1, 2, 2, 3, 2, 1, 2, 3).mean(axis=(2, 4, 6)).transpose(0, 4, 1, 2, 3),
                               rtol=1e-12)


@pytest.mark.parametrize("shape,layout,axes", [((2, 7, 3), "NHWC", (1,)), ((2, 3, 4, 5, 6), "NCHW", (2, 3, 4)),
                                               ((1, 4, 5, 2), "NDHWC", (1, 2))])
def test_global_pools_reduce_every_spatial_axis_in_any_rank(shape, layout, axes):
    x = RNG.normal(size=shape)
    out, _, y = _run(fcnn.GlobalAvgPool(layout=layout), x)
    c = shape[-1] if layout.endswith("C") else shape[1]
    assert out == (shape[0], c)
    np.testing.assert_allclose(y, x.mean(axis=axes), rtol=1e-12)
    np.testing.assert_array_equal(_run(fcnn.GlobalMaxPool(layout=layout), x)[2], x.max(axis=axes))


def test_adaptive_pools_use_pytorchs_windows():
    x = RNG.normal(size=(1, 5, 2))  # in=5, out=3: [0, 2), [1, 4), [3, 5) (shapes.adaptive_pool_windows' example)
    want = np.stack([x[:, 0:2].mean(1), x[:, 1:4].mean(1), x[:, 3:5].mean(1)], axis=1)
    out, _, y = _run(fcnn.AdaptiveAvgPool(3), x)
    assert out == (1, 3, 2)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    img = RNG.normal(size=(1, 2, 4, 6))  # NCHW -> (2, 3): windows 2x2 tile it
    y = _run(fcnn.AdaptiveMaxPool((2, 3), layout="NCHW"), img)[2]
    np.testing.assert_array_equal(y, img.reshape(1, 2, 2, 2, 3, 2).max(axis=(3, 5)))


def test_spatial_dropout_drops_whole_channels_and_rescales():
    x = np.ones((4, 3, 3, 50))
    y = _run(fcnn.SpatialDropout(0.4), x, key=jax.random.PRNGKey(3), train=True)[2]
    per_channel = y.reshape(4, 9, 50)
    assert np.all(per_channel == per_channel[:, :1])  # a channel is kept or dropped at every pixel
    assert set(np.unique(y)) <= {0.0, 1 / 0.6}
    assert 0.25 < np.mean(y == 0) < 0.55  # 200 channels, p = 0.4
    ncw = np.ones((2, 40, 6))
    yc = _run(fcnn.SpatialDropout(0.5, layout="NCW"), ncw, key=jax.random.PRNGKey(1), train=True)[2]
    assert np.all(yc == yc[:, :, :1]) and 0 < np.mean(yc == 0) < 1
    assert set(np.unique(yc)) == {0.0, 2.0}  # kept channels scaled by 1 / (1 - 0.5)
    np.testing.assert_array_equal(_run(fcnn.SpatialDropout(0.4), x)[2], x)  # train=False: identity
    layer = fcnn.SpatialDropout(0.4)
    with pytest.raises(ValueError, match="SpatialDropout with train=True needs a PRNG key"):
        layer.apply({}, {}, jnp.ones((1, 2, 2, 3)), train=True)
    with pytest.raises(TypeError, match="key must be"):
        layer.apply({}, {}, jnp.ones((1, 2, 2, 3)), key=3, train=True)


def test_spatial_dropout_refuses_integer_inputs_as_torch_does():
    """The keep probability cast to int 0 gave x / 0 = inf; torch's dropout2d raises (the reference)."""
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError):
        torch.nn.functional.dropout2d(torch.ones(2, 3, 4, 4, dtype=torch.int32), 0.5, True)
    layer = fcnn.SpatialDropout(0.5)
    layer.init(KEY, (2, 4, 4, 3))
    for train in (True, False):
        with pytest.raises(TypeError, match=r"^SpatialDropout: x must have a floating dtype .*got int32$"):
            layer.apply({}, {}, jnp.ones((2, 4, 4, 3), jnp.int32), key=KEY, train=train)


@pytest.mark.parametrize("build,msg", [
    (lambda: fcnn.Conv1D(4, 3, layout="NHWC"), "layout must be one of NWC, NCW"),
    (lambda: fcnn.Conv3D(4, (3, 3)), "kernel must be an int or 3 ints"),
    (lambda: fcnn.Conv1D(4, 3, padding_mode="mirror"), "padding_mode must be one of"),
    (lambda: fcnn.Conv1D(3, 3, groups=2), "groups=2 must divide out_channels=3"),
    (lambda: fcnn.MaxPool1D(2, impl="lax", ties="all"), "ties='all' is not what impl='lax' implements"),
    (lambda: fcnn.AdaptiveAvgPool(0), "output_size must be"),
    (lambda: fcnn.SpatialDropout(1.0), "drop_rate"),
    (lambda: fcnn.GlobalAvgPool(layout="NHW"), "layout must be one of"),
])
def test_bad_arguments_raise_when_built(build, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        build()


def test_bad_shapes_raise_at_init_and_apply_naming_layer_and_shapes():
    with pytest.raises(ValueError, match=r"in_shape must have rank 3 \(batch, width, channels in NWC\)"):
        fcnn.Conv1D(4, 3).init(KEY, (1, 8, 8, 3))
    with pytest.raises(ValueError, match="padding_mode='reflect' needs every pad < the input size"):
        fcnn.Conv1D(4, 5, padding=3, padding_mode="reflect").init(KEY, (1, 3, 2))
    with pytest.raises(ValueError, match="rank 3, 4 or 5"):
        fcnn.GlobalAvgPool().init(KEY, (2, 3))
    layer = fcnn.Conv3D(4, 3)
    _, params, state = layer.init(KEY, (1, 5, 5, 5, 2))
    with pytest.raises(InputShapeError, match=r"Conv3D: apply got inputs of shape \(n, 5, 5, 5, 3\) but init was "
                                              r"given \(n, 5, 5, 5, 2\) \(x must have rank 5 \(NDHWC\) with 2 "
                                              r"channels; depth, height and width may differ\)"):
        layer.apply(params, state, jnp.ones((1, 5, 5, 5, 3)))
    with pytest.raises(InputShapeError, match="Conv3D: apply got inputs of shape .* too small"):
        layer.apply(params, state, jnp.ones((1, 2, 5, 5, 2)))
    with pytest.raises(InputShapeError, match="MaxPool1D: .*x must have rank 3 \\(NWC\\)"):
        fcnn.MaxPool1D(2).apply({}, {}, jnp.ones((1, 4, 4, 2)))


def test_jit_vmap_grad_and_dtypes():
    layer = fcnn.Conv1D(3, 3, padding="SAME")
    x = jnp.asarray(RNG.normal(size=(2, 6, 2)))
    _, params, _ = layer.init(KEY, x.shape)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)

    def loss(p, x):
        return jnp.sum(layer.apply(p, {}, x)[0] ** 2)

    g = jax.jit(jax.grad(loss))(params, x)
    e = np.zeros(params["w"].shape)
    e[1, 0, 2] = 1e-4  # central differences in float64 on one kernel tap
    fd = (loss({**params, "w": params["w"] + e}, x) - loss({**params, "w": params["w"] - e}, x)) / 2e-4
    np.testing.assert_allclose(g["w"][1, 0, 2], fd, rtol=1e-7)
    stacked = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)  # an ensemble of two
    ys = jax.vmap(lambda p: layer.apply(p, {}, x)[0])(stacked)
    np.testing.assert_allclose(ys[1] - 2 * params["b"], 2 * (ys[0] - params["b"]), rtol=1e-10)
    for dtype in (jnp.float32, jnp.bfloat16):
        y = layer.apply(params, {}, x.astype(dtype))[0]
        assert y.dtype == dtype
    up = fcnn.AdaptiveAvgPool(2)
    np.testing.assert_allclose(jax.grad(lambda x: up.apply({}, {}, x)[0].sum())(x)[0, :, 0],
                               [1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3], rtol=1e-12)  # windows [0,3), [3,6)


def test_summary_rows_hand_computed():
    net = fcnn.serial(fcnn.Conv1D(8, 5, stride=2), fcnn.MaxPool1D(2), fcnn.AdaptiveAvgPool(3),
                      fcnn.GlobalAvgPool())
    s = fcnn.summary(net, (2, 33, 4))  # 33 -> 15 -> 7 -> 3 -> (2, 3)
    assert [r.out_shape for r in s.rows] == [(2, 15, 8), (2, 7, 8), (2, 3, 8), (2, 8)]
    assert [r.params for r in s.rows] == [5 * 4 * 8 + 8, 0, 0, 0]
    conv = 2 * 15 * 8 * (2 * 5 * 4) + 2 * 15 * 8  # 2 FLOPs per MAC, prod(k)*cin per output, + bias
    # adaptive 7 -> 3: windows [0,3), [2,5), [4,7): 9 cells, 3 outputs -> 6 adds per channel
    assert [r.flops for r in s.rows] == [conv, 2 * 7 * 8 * 1, 2 * 8 * 6, 2 * 3 * 8]
    assert [(r.rf, r.jump) for r in s.rows][:2] == [(5, 2), (7, 4)]
    assert s.rows[2].rf is None and s.rf is None  # 7 % 3 != 0: irregular windows, "-"
    assert str(s).splitlines()[-1].endswith("-")
    s3 = fcnn.summary(fcnn.Conv3D(2, (1, 3, 5), stride=(1, 2, 3)), (1, 3, 9, 9, 1))
    assert (s3.rf, s3.jump) == (3, 2)  # along H, the second spatial axis in 3-D


def test_rank_generic_cores_serve_the_2d_layers():
    assert fcnn.Conv2D(4, 3, padding="SAME", padding_mode="circular").init(KEY, (1, 5, 5, 2))[0] == (1, 5, 5, 4)
    x = RNG.normal(size=(1, 4, 4, 1))
    y = _run(fcnn.Conv2D(1, 3, padding=1, padding_mode="replicate", use_bias=False, w_init=I.ones), x)[2]
    xp = np.pad(x[0, :, :, 0], 1, mode="edge")
    want = np.array([[xp[i:i + 3, j:j + 3].sum() for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(y[0, :, :, 0], want, rtol=1e-12)
    assert math.prod(fcnn.MaxPool2D(2).init(KEY, (1, 4, 6, 3))[0]) == 2 * 3 * 3
