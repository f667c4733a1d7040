"""Tests for fcnn.ops.conv: the eight implementations against each other, against a NumPy loop
written from the formula, and against hand-computed values; the hand-derived VJP against
``jax.grad`` through lax and second-order finite differences; jit/vmap/grad over dtypes; and
every bad-input error.

The configurations are the conv grid of ``fcnn.sweep`` (``sweep.conv_grid()``, GRADCHECK.md), the
one definition the ``fcnn gradcheck --sweep full`` command runs too. The default run checks
``DEFAULT``, a cover of the grid in which every value of every axis appears; ``pytest -m slow``
runs every configuration.
"""
import functools
import importlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fcnn import shapes, sweep
from fcnn import ops
from fcnn.ops import CONV_IMPLS, conv2d, conv_impls_for
conv_mod = importlib.import_module("fcnn.ops.conv")  # the module (fcnn.ops.conv is the N-d function)

jax.config.update("jax_enable_x64", True)

TOL64 = 1e-10
AXES = sweep.CONV_AXES
STRIDES, PADDINGS, DILATIONS, LAYOUTS = AXES["stride"], AXES["padding"], AXES["dilation"], AXES["layout"]


# ----------------------------------------------------------------------------- the sweep
def _config(case):
    return dict(x_shape=case.x_shape, w_shape=case.w_shape, **case.opts)


def _axis_values(c):
    """The value of every ``CONV_AXES`` axis a configuration takes (as text, for set comparisons)."""
    layout = c["layout"]
    kh, kw, cg, cout = shapes.kernel_dims(c["w_shape"], layout)
    hw = shapes.spatial_dims(c["x_shape"], layout)
    return dict(hw=str(hw), kernel="input" if (kh, kw) == hw else str((kh, kw)), stride=str(c["stride"]),
                padding=str(c["padding"]), dilation=str(c["dilation"]), layout=layout, batch=str(c["x_shape"][0]),
                channels=str((c["groups"], cg * c["groups"], cout)))


def _cover(configs):
    """The first configurations, in grid order, that together take every value of every axis."""
    seen, out = set(), []
    for c in configs:
        new = set(_axis_values(c).items()) - seen
        if new:
            out.append(c)
            seen |= new
    return out


CONFIGS = [_config(case) for case in sweep.conv_grid()]
DEFAULT = _cover(CONFIGS)


def _cfg_id(c):
    pad = c["padding"] if isinstance(c["padding"], str) else "P" + "".join(str(v) for p in c["padding"] for v in p)
    return (f"{c['layout']}-x{'x'.join(map(str, c['x_shape']))}-w{'x'.join(map(str, c['w_shape']))}"
            f"-s{c['stride']}-{pad}-d{c['dilation']}-g{c['groups']}").replace(" ", "")


def _kw(c):
    return dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"],
                layout=c["layout"])


def _numpy_conv(x, w, b, stride, padding, dilation, groups, layout):
    """The formula in NumPy, one output pixel at a time (independent of every JAX path)."""
    if layout == "NCHW":
        x, w = x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0)
    kh, kw, cg, cout = w.shape
    (sh, sw), (dh, dw) = shapes.normalize_pair(stride, "s"), shapes.normalize_pair(dilation, "d")
    pads = shapes.normalize_padding(padding, x.shape[1:3], (kh, kw), (sh, sw), (dh, dw))
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    dg = cout // groups
    z = np.zeros((x.shape[0], oh, ow, cout))
    for p in range(oh):
        for q in range(ow):
            win = xp[:, p * sh:p * sh + dh * (kh - 1) + 1:dh, q * sw:q * sw + dw * (kw - 1) + 1:dw, :]
            for k in range(groups):
                z[:, p, q, k * dg:(k + 1) * dg] = np.einsum(
                    "nijc,ijco->no", win[..., k * cg:(k + 1) * cg], w[..., k * dg:(k + 1) * dg])
    z = z + (0 if b is None else b)
    return z if layout == "NHWC" else z.transpose(0, 3, 1, 2)


def _rel(a, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(a, np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-300))


def _impls(c):
    """CONV_IMPLS, and winograd where its rule admits the configuration (3x3, stride 1, dilation 1)."""
    kernel = shapes.kernel_parts(c["w_shape"], c["layout"])[0]
    return conv_impls_for(kernel, shapes.normalize_pair(c["stride"], "stride"),
                          shapes.normalize_pair(c["dilation"], "dilation"))


def _check_config(c, seed, vjp_impls=("lax", "custom_vjp", "col2im", "taps", "im2col_vjp", "winograd")):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=c["x_shape"])
    w = rng.normal(size=c["w_shape"])
    cout = w.shape[-1] if c["layout"] == "NHWC" else w.shape[0]
    b = rng.normal(size=(cout,))
    expected_shape = shapes.conv_output_shape(c["x_shape"], c["w_shape"], **_kw(c))
    ct = rng.normal(size=expected_shape)  # cotangent for the VJPs

    @jax.jit
    def run(x, w, b, ct):
        outs, vjps = {}, {}
        for impl in _impls(c):
            f = functools.partial(conv2d, impl=impl, **_kw(c))
            if impl in vjp_impls:
                z, pull = jax.vjp(f, x, w, b)
                outs[impl], vjps[impl] = z, pull(ct)
            else:
                outs[impl] = f(x, w, b)
        return outs, vjps

    outs, vjps = run(x, w, b, ct)
    ref = _numpy_conv(x, w, b, **_kw(c))
    assert ref.shape == expected_shape
    for impl in _impls(c):
        assert outs[impl].shape == expected_shape, impl
        assert _rel(outs[impl], ref) <= TOL64, impl
        for name, g, g_ref in zip("xwb", vjps.get(impl, ()), vjps["lax"]):
            assert g.shape == g_ref.shape
            assert _rel(g, g_ref) <= TOL64, (impl, name)


def _grouped(c):
    """A grouped conv with several input channels per group (the hardest channel bookkeeping)."""
    return c["groups"] > 1 and shapes.kernel_dims(c["w_shape"], c["layout"])[2] > 1


@pytest.mark.parametrize("c", DEFAULT, ids=_cfg_id)
def test_impls_agree_forward_and_vjp(c):
    """Every forward equals the NumPy formula, and the hand-derived VJPs (custom_vjp, col2im,
    taps, im2col_vjp) equal lax's autodiff VJP, to 1e-10 relative in float64; shapes equal the formula. The
    autodiff VJPs of reference, im2col and fft are compared too on the default grouped
    configurations (on every configuration in the slow sweep)."""
    _check_config(c, CONFIGS.index(c), **(dict(vjp_impls=CONV_IMPLS) if _grouped(c) else {}))


@pytest.mark.slow
@pytest.mark.parametrize("idx", range(len(CONFIGS)), ids=lambda i: _cfg_id(CONFIGS[i]))
def test_impls_agree_forward_and_vjp_full_sweep(idx):
    _check_config(CONFIGS[idx], idx, vjp_impls=CONV_IMPLS)


WINOGRAD = [c for c in CONFIGS if "winograd" in _impls(c)]  # the grid's 3x3 stride-1 dilation-1 configs


def test_winograd_is_in_the_grid_where_its_rule_admits():
    assert {c["layout"] for c in WINOGRAD} == set(LAYOUTS) and {c["groups"] for c in WINOGRAD} >= {1, 2, 3}


@pytest.mark.parametrize("c", WINOGRAD[:2], ids=_cfg_id)
def test_winograd_agrees_on_default_configs(c):
    """Winograd's forward equals the NumPy formula and its hand-derived VJP lax's, to 1e-10 in
    float64, beside every other impl (the rest of its grid configurations run in the slow sweep)."""
    _check_config(c, CONFIGS.index(c))


def test_sweep_covers_the_grid():
    assert len(CONFIGS) >= 300
    seen = lambda key: {str(c[key]) for c in CONFIGS}  # noqa: E731
    assert seen("stride") == {str(s) for s in STRIDES}
    assert seen("padding") == {str(p) for p in PADDINGS}
    assert seen("dilation") == {str(d) for d in DILATIONS}
    assert seen("layout") == set(LAYOUTS)
    assert {c["groups"] for c in CONFIGS} >= {1, 2, 3}
    assert any(c["groups"] > 1 and c["groups"] == shapes.channel_dim(c["x_shape"], c["layout"]) for c in CONFIGS)
    kernels = {shapes.kernel_dims(c["w_shape"], c["layout"])[:2] for c in CONFIGS}
    assert kernels >= {(1, 1), (2, 3), (3, 3), (5, 5), (6, 7), (7, 5)}
    assert {c["x_shape"][0] for c in CONFIGS} == {1, 2}


def _text(v):
    """A point of the product of ``CONV_AXES`` as ``_axis_values`` writes it."""
    kernel = "input" if v["kernel"] in ("input", v["hw"]) else str(v["kernel"])
    return {k: kernel if k == "kernel" else v[k] if k == "layout" else str(v[k]) for k in v}


def _fits(v):
    """Whether the kernel of a product point fits its padded input."""
    hw, k = v["hw"], v["hw"] if v["kernel"] == "input" else v["kernel"]
    s, d = shapes.normalize_pair(v["stride"], "stride"), shapes.normalize_pair(v["dilation"], "dilation")
    return min(shapes.conv_output_hw(hw, k, s, shapes.normalize_padding(v["padding"], hw, k, s, d), d)) >= 1


def test_default_takes_every_axis_value_and_the_grid_every_pair():
    """DEFAULT (the default run) takes every value of every axis; the grid takes every pair of
    values of two axes that occur together in a configuration that fits (of the full product)."""
    product = [dict(zip(AXES, vals)) for vals in itertools.product(*AXES.values())]
    every_value = {(k, t) for v in product for k, t in _text(v).items()}
    assert set().union(*(_axis_values(c).items() for c in DEFAULT)) == every_value
    assert len(DEFAULT) <= 16  # one compile per configuration: the default run stays small

    def pairs(texts):
        return {p for t in texts for p in itertools.combinations(sorted(t.items()), 2)}

    assert pairs(_axis_values(c) for c in CONFIGS) == pairs(_text(v) for v in product if _fits(v))


# ----------------------------------------------------------------------------- hand-computed values
def test_hand_computed_values():
    """3x3 input 1..9, 2x2 kernel [[1, 0], [0, -1]]: z[p, q] = x[p, q] - x[p+1, q+1] = -4 everywhere;
    stride 2 with SAME (pads (0, 1)) keeps (0, 0) = -4, (0, 1) = 3 - 0, (1, 0) = 7 - 0, (1, 1) = 9."""
    x = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    w = jnp.array([[1.0, 0.0], [0.0, -1.0]]).reshape(2, 2, 1, 1)

    @jax.jit  # one compile for every implementation (eager, each op compiled on its own, took 5x longer)
    def run(x, w):
        return {impl: (conv2d(x, w, impl=impl), conv2d(x, w, jnp.array([0.5]), stride=2, padding="SAME", impl=impl),
                       conv2d(x, w, dilation=2, impl=impl)) for impl in CONV_IMPLS}

    for impl, (valid, same_s2, dilated) in run(x, w).items():
        np.testing.assert_allclose(valid[0, :, :, 0], [[-4, -4], [-4, -4]], atol=1e-12, err_msg=impl)
        np.testing.assert_allclose(same_s2[0, :, :, 0], [[-3.5, 3.5], [7.5, 9.5]], atol=1e-12, err_msg=impl)
        # dilation 2 on a 3x3 input: one output, x[0, 0] - x[2, 2] = 1 - 9
        np.testing.assert_allclose(dilated[0, :, :, 0], [[-8]], atol=1e-12, err_msg=impl)


def test_groups_keep_channels_apart():
    """Depthwise: output channel k sees only input channel k (a ones kernel sums each channel)."""
    x = jnp.stack([jnp.ones((4, 4)), 10 * jnp.ones((4, 4))], axis=-1)[None]  # (1, 4, 4, 2)
    w = jnp.ones((3, 3, 1, 2))
    zs = jax.jit(lambda x, w: {impl: conv2d(x, w, groups=2, impl=impl) for impl in CONV_IMPLS})(x, w)
    for impl, z in zs.items():  # every one of the 2x2 outputs
        np.testing.assert_allclose(z, np.broadcast_to([9.0, 90.0], (1, 2, 2, 2)), atol=1e-12, err_msg=impl)


def test_fusion_barrier_is_an_exact_identity_that_survives_xla():
    # taps and col2im materialise through it; a barrier that changed a value, a sign of zero or a
    # NaN, or that XLA simplified away, would silently undo what it is there for
    b = conv_mod._fusion_barrier
    x = jnp.array([[np.nan, -0.0, 1.5, -np.inf, np.inf, -2.0]])
    got = np.asarray(b(x))
    np.testing.assert_array_equal(got, np.asarray(x))
    np.testing.assert_array_equal(np.signbit(got), np.signbit(np.asarray(x)))
    y = jnp.linspace(-1.0, 1.0, 24).reshape(2, 3, 4)
    f = lambda y, g: jnp.sum(jnp.sin(g(y)) ** 3)  # noqa: E731
    hessians = jax.jit(lambda y: (jax.hessian(f)(y, b), jax.hessian(f)(y, lambda v: v)))(y)
    np.testing.assert_allclose(*hessians, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(jax.vmap(b)(y), y)
    hlo = jax.jit(lambda v: b(jnp.sin(v)) * 2.0).lower(y).compile().as_text()
    assert "reduce-window" in hlo  # still there after XLA's optimisations
    # nor evaluated at compile time when its input is a constant (a broadcast, like the cotangent of
    # jnp.sum(conv(...)), or a literal): XLA's constant folder took seconds on large ones
    for make in (lambda: jnp.full((2, 3, 4), 0.5), lambda: jnp.asarray(np.asarray(y))):
        hlo = jax.jit(lambda make=make: b(make())).lower().compile().as_text()
        assert "reduce-window" in hlo


def test_custom_vjp_backward_by_hand():
    """1-D view: x = [1, 2, 3, 4, 5], w = [1, 10], stride 2, VALID -> z = [21, 43] (x[4] unused).
    With dZ = [1, 1]: dX = [1, 10, 1, 10, 0], dW = [1 + 3, 2 + 4] = [4, 6], db = 2."""
    x = jnp.arange(1.0, 6.0).reshape(1, 1, 5, 1)
    w = jnp.array([1.0, 10.0]).reshape(1, 2, 1, 1)
    geo = dict(stride=(1, 2), pads=((0, 0), (0, 0)), dilation=(1, 1), groups=1)
    dz = jnp.ones((1, 1, 2, 1))
    np.testing.assert_allclose(conv2d(x, w, stride=(1, 2))[0, 0, :, 0], [21.0, 43.0])
    np.testing.assert_allclose(conv_mod.conv2d_backward_input(dz, w, (1, 5), **geo)[0, 0, :, 0], [1, 10, 1, 10, 0])
    np.testing.assert_allclose(conv_mod.conv2d_backward_input_col2im(dz, w, (1, 5), **geo)[0, 0, :, 0],
                               [1, 10, 1, 10, 0])
    np.testing.assert_allclose(conv_mod.conv2d_backward_kernel(x, dz, (1, 2), **geo)[0, :, 0, 0], [4, 6])
    np.testing.assert_allclose(conv_mod.conv2d_backward_bias(dz), [2.0])


def test_wrong_backward_is_caught():
    """The VJP comparison is sensitive: an unflipped kernel in dX makes custom_vjp disagree with lax."""

    def unflipped(dz, w, in_hw, *, stride, pads, dilation, groups, precision=None):
        return conv_mod.conv2d_backward_input(dz, w[::-1, ::-1], in_hw, stride=stride, pads=pads,
                                              dilation=dilation, groups=groups, precision=precision)

    bad = conv_mod.make_custom_vjp_conv2d(backward_input=unflipped)
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(1, 5, 5, 2)), rng.normal(size=(3, 2, 2, 3))
    geo = ((2, 1), ((1, 0), (0, 1)), (1, 1), 1, None)
    g_bad = jax.grad(lambda x: jnp.sum(jnp.sin(bad(x, w, None, *geo))))(x)
    g_ok = jax.grad(lambda x: jnp.sum(jnp.sin(conv2d(x, w, stride=(2, 1), padding=((1, 0), (0, 1))))))(x)
    assert _rel(g_bad, g_ok) > 1e-2


# ----------------------------------------------------------------------------- second order
# JAX's own checker (independent of fcnn.gradcheck): each hand-derived backward once in the
# default run on a stride, dilation and asymmetric-padding geometry; the rest under -m slow.
SECOND_ORDER = [
    ("custom_vjp", (2, 5, 6, 3), (3, 2, 3, 4), dict(stride=(2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2))),
    ("col2im", (2, 5, 6, 3), (3, 2, 3, 4), dict(stride=(2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2))),
    ("taps", (2, 5, 6, 3), (3, 2, 3, 4), dict(stride=(2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2))),
    ("custom_vjp", (1, 5, 4, 2), (2, 3, 2, 2), dict(stride=2, padding="SAME")),
    ("custom_vjp", (1, 5, 4, 2), (2, 3, 2, 2), dict(dilation=(2, 1), padding=((2, 1), (0, 2)))),
    ("custom_vjp", (1, 5, 4, 2), (2, 3, 1, 2), dict(stride=(1, 2), groups=2, padding=((1, 0), (0, 1)), layout="NCHW")),
]


@pytest.mark.parametrize("impl,x_shape,w_shape,kw", [
    pytest.param(*p, marks=() if i < 3 else (pytest.mark.slow,), id=f"{p[0]}-{i}") for i, p in enumerate(SECOND_ORDER)])
def test_custom_vjp_check_grads_order2(impl, x_shape, w_shape, kw):
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=x_shape), rng.normal(size=w_shape)  # NHWC / HWIO
    if kw.get("layout") == "NCHW":
        x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    b = rng.normal(size=(w_shape[-1],))
    check_grads(lambda x, w, b: conv2d(x, w, b, impl=impl, **kw), (x, w, b), order=2, modes=["rev"])


# ----------------------------------------------------------------------------- dtypes, jit, vmap, grad
DTYPE_TOL = {jnp.float64: 1e-10, jnp.float32: 1e-5, jnp.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [pytest.param(jnp.float64, marks=pytest.mark.slow), jnp.float32, jnp.bfloat16],
                         ids=lambda d: d.__name__)  # float64 values and gradients: every other test
def test_jit_vmap_grad_dtypes(dtype):
    """Under jit, vmap over single examples (batch dim 1) and grad, every impl matches the float64
    NumPy formula (values) and lax's float64 gradient, within the dtype's tolerance."""
    rng = np.random.default_rng(3)
    x, w, b = rng.normal(size=(3, 5, 6, 4)), rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(4,))
    kw = dict(stride=(2, 1), padding="SAME", dilation=(1, 2), groups=2, precision="highest")
    ref = _numpy_conv(x, w, b, **{k: v for k, v in kw.items() if k != "precision"}, layout="NHWC")
    ct = rng.normal(size=ref.shape)
    loss = lambda impl: lambda w, x: jnp.sum(conv2d(x, w, b.astype(dtype), impl=impl, **kw) * ct.astype(dtype))  # noqa
    g_ref = jax.grad(loss("lax"))(w, x)
    xd, wd = x.astype(dtype), w.astype(dtype)

    @jax.jit
    def run(x, w):
        out = {}
        for impl in CONV_IMPLS:
            f = functools.partial(conv2d, b=b.astype(dtype), impl=impl, **kw)
            per_example = jax.vmap(lambda xi: f(xi[None], w)[0])(x)  # x: (n, h, w, c) -> xi (h, w, c)
            out[impl] = (f(x, w), per_example, jax.grad(loss(impl))(w, x))
        return out

    tol = DTYPE_TOL[dtype]
    for impl, (z, z_vmap, g) in run(xd, wd).items():
        assert z.dtype == dtype and z_vmap.dtype == dtype and g.dtype == dtype, impl
        assert _rel(z, ref) <= tol, impl
        assert _rel(z_vmap, ref) <= tol, impl
        assert _rel(g, g_ref) <= tol * 3, impl


# ----------------------------------------------------------------------------- bad input
X = np.zeros((1, 5, 5, 4))
W = np.zeros((3, 3, 2, 4))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(x=np.zeros((5, 5, 4))), ValueError, "x must have rank 4"),
    (dict(w=np.zeros((3, 3, 4))), ValueError, "w must have rank 4"),
    (dict(w=np.zeros((3, 3, 3, 4))), ValueError, "w has 3 input channels"),
    (dict(groups=3), ValueError, "groups=3 must divide the input channels"),
    (dict(groups=2, w=np.zeros((3, 3, 2, 3))), ValueError, "groups=2 must divide the output channels"),
    (dict(groups=0), ValueError, "groups must be a positive int"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(stride=(1, -2)), ValueError, "stride must be >= 1"),
    (dict(stride=1.5), TypeError, "stride must be an int"),
    (dict(dilation=0), ValueError, "dilation must be >= 1"),
    (dict(padding="FULL"), ValueError, "padding must be 'VALID', 'SAME'"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(padding=((1, 2, 3), (0, 0))), TypeError, "padding must be"),
    (dict(layout="NWHC"), ValueError, "layout must be one of"),
    (dict(impl="fast"), ValueError, "impl must be one of"),
    (dict(impl="winograd", stride=2), ValueError, r"impl='winograd' computes only .* 3x3 kernel, stride 1 .*stride \(2, 2\)"),
    (dict(impl="winograd", w=np.zeros((5, 5, 2, 4)), padding=2), ValueError, r"impl='winograd' .* got kernel \(5, 5\)"),
    (dict(precision="bogus"), ValueError, "precision must be"),
    (dict(b=np.zeros((3,))), ValueError, r"b must have shape \(cout,\) = \(4,\)"),
    (dict(w=np.zeros((7, 3, 2, 4))), ValueError, "kernel is larger than the padded input"),
    (dict(w=np.zeros((3, 3, 2, 4)), dilation=3), ValueError, "kernel is larger than the padded input"),
    (dict(x=np.zeros((1, 5, 5, 4), np.int32), w=np.zeros((3, 3, 2, 4), np.int32)), TypeError, "floating dtype"),
])
@pytest.mark.parametrize("impl", CONV_IMPLS)
def test_bad_input(kwargs, exc, match, impl):
    args = dict(x=X, w=W, b=None, groups=2, impl=impl)
    args.update(kwargs)
    x, w, b = args.pop("x"), args.pop("w"), args.pop("b")
    with pytest.raises(exc, match=match):
        conv2d(x, w, b, **args)


def test_auto_conv_sees_the_padding_that_makes_room():
    """A 3x3 kernel on a 2x2 input fits once SAME pads it: impl="auto" must take it as lax does (the
    selector's shape check once ran without the padding and refused it)."""
    x, w = np.ones((1, 2, 2, 4), np.float32), np.ones((3, 3, 4, 8), np.float32)
    want = np.asarray(ops.conv2d(x, w, padding="SAME", impl="lax"))
    np.testing.assert_allclose(np.asarray(ops.conv2d(x, w, padding="SAME")), want, rtol=1e-6)
    np.testing.assert_array_equal(want[0, :, :, 0], [[16, 16], [16, 16]])  # every output sees all 4 pixels x 4 channels
    np.testing.assert_allclose(np.asarray(ops.conv(x, w, padding=1, padding_mode="reflect", impl="auto")),
                               np.asarray(ops.conv(x, w, padding=1, padding_mode="reflect", impl="lax")), rtol=1e-6)
