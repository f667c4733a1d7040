"""fcnn.decoder: ConvTranspose1D/2D/3D and Upsample, against the adjoint identity with a Conv layer's
kernel, PyTorch's documented output sizes, NumPy, and hand-computed parameter and FLOP counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fcnn
from fcnn.types import InputShapeError

KEY = jax.random.PRNGKey(0)
RNG = np.random.default_rng(0)


# (layer, in_shape, out_shape): PyTorch's formula (in-1)*s - 2p + d*(k-1) + op + 1, worked by hand
SHAPES = [
    # torch.nn.ConvTranspose2d docs' example: a 12x12 input downsampled by Conv2d(16, 16, 3, stride=2,
    # padding=1) to 6x6 comes back to 12x12 with output_padding=1: (6-1)*2 - 2 + 2 + 1 + 1 = 12
    (fcnn.ConvTranspose2D(16, 3, stride=2, padding=1, output_padding=1), (1, 6, 6, 16), (1, 12, 12, 16)),
    (fcnn.ConvTranspose2D(4, 4, stride=2, padding=1), (2, 5, 3, 2), (2, 10, 6, 4)),  # (5-1)*2 - 2 + 3 + 1 = 10
    (fcnn.ConvTranspose2D(4, 3, stride=(3, 1), dilation=2), (1, 4, 4, 2), (1, 14, 8, 4)),  # 9 + 4 + 1; 3 + 4 + 1
    (fcnn.ConvTranspose2D(3, 3, stride=2, padding="SAME"), (1, 5, 4, 2), (1, 10, 8, 3)),  # lax SAME: in*s
    (fcnn.ConvTranspose1D(5, 5, stride=3, padding=((1, 2),), output_padding=2), (1, 7, 2), (1, 22, 5)),  # 18-3+4+2+1
    (fcnn.ConvTranspose3D(2, 2, stride=2, layout="NCDHW"), (1, 3, 2, 3, 4), (1, 2, 4, 6, 8)),
    (fcnn.Upsample(2), (1, 3, 5, 2), (1, 6, 10, 2)),
    (fcnn.Upsample((2, 1.5), method="bilinear"), (1, 3, 5, 2), (1, 6, 7, 2)),  # floor(5 * 1.5) = 7
    (fcnn.Upsample(3, method="trilinear", layout="NCDHW"), (1, 2, 1, 2, 3), (1, 2, 3, 6, 9)),
]


@pytest.mark.parametrize("layer,in_shape,out_shape", SHAPES)
def test_output_shapes_follow_pytorchs_formula(layer, in_shape, out_shape):
    got, params, state = layer.init(KEY, in_shape)
    assert got == out_shape
    y = jax.jit(lambda x: layer.apply(params, state, x)[0])(jnp.ones(in_shape))
    assert y.shape == out_shape


@pytest.mark.parametrize("rank,kw", [(1, dict(stride=2, padding=1, output_padding=1)),
                                     (2, dict(stride=(2, 3), padding=((1, 0), (0, 2)), dilation=(1, 2), groups=2)),
                                     (3, dict(stride=2, padding=1, output_padding=1))])
def test_adjoint_of_the_conv_layer_with_the_same_kernel(rank, kw):
    """<Conv(x), y> == <x, ConvTranspose(y)> with one kernel array: the layer stores the conv's kernel."""
    conv_layer, ct_layer = {1: (fcnn.Conv1D, fcnn.ConvTranspose1D), 2: (fcnn.Conv2D, fcnn.ConvTranspose2D),
                            3: (fcnn.Conv3D, fcnn.ConvTranspose3D)}[rank]
    op = kw.pop("output_padding", 0)
    sizes = {1: (9,), 2: (7, 8), 3: (5, 4, 5)}[rank]
    conv = conv_layer(6, 3, use_bias=False, **kw)
    x_shape = (2, *sizes, 4)
    z_shape, params, _ = conv.init(KEY, x_shape)
    ct = ct_layer(4, 3, output_padding=op, use_bias=False, **kw)
    out, ct_params, _ = ct.init(KEY, z_shape)
    assert ct_params["w"].shape == params["w"].shape
    x = RNG.normal(size=(2, *out[1:-1], 4))  # output_padding: the rows a strided conv never reads
    y = RNG.normal(size=z_shape)
    p64 = {"w": np.asarray(RNG.normal(size=params["w"].shape))}
    lhs = np.vdot(conv.apply(p64, {}, x)[0], y)
    rhs = np.vdot(x, ct.apply(p64, {}, y)[0])
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_channels_first_kernel_is_pytorchs_weight_layout_and_the_scatter_picture():
    layer = fcnn.ConvTranspose2D(3, (2, 2), stride=2, layout="NCHW")
    out, params, _ = layer.init(KEY, (1, 5, 2, 2))
    assert params["w"].shape == (5, 3, 2, 2) and params["b"].shape == (3,)  # (in, out/groups, kh, kw)
    assert out == (1, 3, 4, 4)
    x = RNG.normal(size=(1, 5, 2, 2))
    w = RNG.normal(size=(5, 3, 2, 2))
    b = RNG.normal(size=3)
    y = np.asarray(layer.apply({"w": w, "b": b}, {}, x)[0])
    # stride 2 = kernel 2: input pixel (i, j) stamps x[:, i, j] . w into output block (2i:2i+2, 2j:2j+2)
    want = np.einsum("cij,cokl->oikjl", x[0], w).reshape(3, 4, 4) + b[:, None, None]
    np.testing.assert_allclose(y[0], want, rtol=1e-12)


def test_params_flops_and_summary_dash():
    net = fcnn.serial(fcnn.Conv2D(8, 3, stride=2, padding=1), fcnn.ConvTranspose2D(4, 3, stride=2, padding=1,
                                                                                   output_padding=1),
                      fcnn.Upsample(2, method="bilinear"))
    s = fcnn.summary(net, (2, 8, 8, 3))
    assert [r.out_shape for r in s.rows] == [(2, 4, 4, 8), (2, 8, 8, 4), (2, 16, 16, 4)]
    assert [r.params for r in s.rows] == [3 * 3 * 3 * 8 + 8, 3 * 3 * 4 * 8 + 4, 0]
    # transposed conv: the MACs of the conv it transposes (its output (2,4,4,8) from 3x3x4) + one bias add each
    ct = 2 * (2 * 4 * 4 * 8) * (9 * 4) + 2 * 8 * 8 * 4
    # bilinear 8x8 -> 16x16: pass H (16x8) then W (16x16), 3 FLOPs per element, n*c = 8
    up = 3 * 8 * (16 * 8 + 16 * 16)
    assert [r.flops for r in s.rows][1:] == [ct, up]
    assert (s.rows[0].rf, s.rows[0].jump) == (3, 2) and s.rows[1].rf is None and s.rf is None
    assert "-" in str(s).splitlines()[3]


def test_upsample_nearest_repeats_and_linear_matches_the_op():
    x = RNG.normal(size=(2, 3, 4, 2))
    layer = fcnn.Upsample(2)
    _, p, _ = layer.init(KEY, x.shape)
    np.testing.assert_array_equal(layer.apply(p, {}, x)[0], np.repeat(np.repeat(x, 2, 1), 2, 2))
    lin = fcnn.Upsample(2, method="linear", align_corners=True, layout="NCW")
    row = np.array([[[0.0, 3.0, 6.0]]])  # align_corners: 3 -> 6 cells at 0, 2/5, ..., 2 in input units
    np.testing.assert_allclose(lin.apply({}, {}, row)[0][0, 0], [0, 1.2, 2.4, 3.6, 4.8, 6], rtol=1e-12)


@pytest.mark.parametrize("build,msg", [
    (lambda: fcnn.ConvTranspose2D(4, 3, stride=2, output_padding=2), "output_padding must be smaller than max"),
    (lambda: fcnn.ConvTranspose2D(4, 3, padding="SAME", output_padding=1), "output_padding must be 0"),
    (lambda: fcnn.ConvTranspose1D(4, 3, impl="fft"), "impl must be one of"),
    (lambda: fcnn.ConvTranspose3D(4, 3, layout="NHWC"), "layout must be one of NDHWC, NCDHW"),
    (lambda: fcnn.Upsample(0), "scale"),
    (lambda: fcnn.Upsample(2, method="cubic"), "method must be one of"),
])
def test_bad_arguments_raise_when_built(build, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        build()


def test_bad_shapes_raise_at_init_and_apply():
    with pytest.raises(ValueError, match="method='bilinear' is for 2-D inputs"):
        fcnn.Upsample(2, method="bilinear").init(KEY, (1, 5, 3))
    with pytest.raises(ValueError, match="crops more than"):
        fcnn.ConvTranspose1D(2, 1, padding=1).init(KEY, (1, 1, 3))
    layer = fcnn.ConvTranspose2D(4, 2, stride=2)
    _, params, state = layer.init(KEY, (1, 3, 3, 6))
    with pytest.raises(InputShapeError, match=r"ConvTranspose2D: apply got inputs of shape \(n, 3, 3, 5\) but init "
                                              r"was given \(n, 3, 3, 6\) \(x must have rank 4 \(NHWC\) with 6"):
        layer.apply(params, state, jnp.ones((1, 3, 3, 5)))
    with pytest.raises(InputShapeError, match="Upsample: apply got inputs of shape"):
        fcnn.Upsample(2).apply({}, {}, jnp.ones((2, 3)))


def test_grad_jit_vmap_and_dtypes():
    layer = fcnn.ConvTranspose1D(2, 3, stride=2, padding=1, output_padding=1)
    x = jnp.asarray(RNG.normal(size=(2, 4, 3)))
    _, params, _ = layer.init(KEY, x.shape)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)

    def loss(p):
        return jnp.sum(jnp.sin(layer.apply(p, {}, x)[0]))

    g = jax.jit(jax.grad(loss))(params)
    e = np.zeros(params["w"].shape)
    e[2, 1, 0] = 1e-5
    fd = (loss({**params, "w": params["w"] + e}) - loss({**params, "w": params["w"] - e})) / 2e-5
    np.testing.assert_allclose(g["w"][2, 1, 0], fd, rtol=1e-6)
    ys = jax.vmap(lambda x: layer.apply(params, {}, x[None])[0][0])(x)
    np.testing.assert_allclose(ys, layer.apply(params, {}, x)[0], rtol=1e-12)
    up = fcnn.Upsample(2, method="linear")
    for dtype in (jnp.float32, jnp.bfloat16):
        assert layer.apply(params, {}, x.astype(dtype))[0].dtype == dtype
        assert up.apply({}, {}, x.astype(dtype))[0].dtype == dtype


def test_readme_decoder_example_runs():
    """The README's "A decoder" block, run as it is: shapes by hand, a finite loss, a gradient for every param."""
    import os
    import re

    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    code = re.search(r"### A decoder\n.*?```python\n(.*?)```", readme, flags=re.S).group(1)
    assert len(code.strip().splitlines()) <= 13
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["out_shape"] == (8, 28, 28, 1)
    assert ns["autoencoder"].apply(ns["params"], ns["state"], ns["x"])[0].shape == (8, 28, 28, 1)
    assert np.isfinite(float(ns["loss"](ns["params"])))
    g, p = jax.tree.leaves(ns["grads"]), jax.tree.leaves(ns["params"])
    assert [a.shape for a in g] == [a.shape for a in p] and all(np.any(a != 0) for a in g)
