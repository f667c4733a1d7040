"""Tests for fcnn.ops.conv_nd (``conv``, ``conv1d``, ``conv3d``; conv2d is conv in 2-D): every
implementation against a NumPy loop of the formula in every rank, the hand-derived VJPs against
autodiff of the reference, second-order checks, padding modes against ``np.pad`` + the loop and
central differences, non-finite behaviour per implementation (the table in fcnn/ops/conv.py),
jit/vmap/grad over dtypes and the bad-input errors.

The grid per rank is drawn (seeded) from the axes of GRADCHECK.md: batch 1-2, odd and non-square
sizes, kernels 1-5, strides 1-3 incl. mixed, dilation 1-3, groups 1/2/depthwise, VALID/SAME/int/
per-dimension pads, both layout families, every padding mode. The default run checks the first
``DEFAULT_PER_RANK[rank]`` configurations of each rank; ``pytest -m slow`` checks all of them.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fcnn import ops, shapes
from fcnn.ops import CONV_IMPLS, PADDING_MODES, conv, conv1d, conv3d
from fcnn.ops import auto as _auto

jax.config.update("jax_enable_x64", True)

TOL64 = 1e-10
HAND_VJPS = ("custom_vjp", "col2im", "taps")
_NP_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


# ----------------------------------------------------------------------------- the NumPy oracle
def numpy_conv(x, w, b, *, stride=1, padding="VALID", dilation=1, groups=1, layout=None, padding_mode="zeros"):
    """The formula in NumPy, one output position at a time, any rank (independent of every JAX path)."""
    layout = shapes.normalize_layout(layout, x.ndim)
    r = x.ndim - 2
    if not shapes.is_channels_last(layout):
        x, w = np.moveaxis(x, 1, -1), np.transpose(w, (*range(2, r + 2), 1, 0))
    *kernel, cg, cout = w.shape
    s, d = shapes.normalize_tuple(stride, "s", r), shapes.normalize_tuple(dilation, "d", r)
    pads = shapes.normalize_padding(padding, x.shape[1:-1], kernel, s, d)
    xp = np.pad(x, ((0, 0), *pads, (0, 0)), mode=_NP_MODE[padding_mode])
    out = [(xp.shape[1 + a] - d[a] * (kernel[a] - 1) - 1) // s[a] + 1 for a in range(r)]
    dg = cout // groups
    z = np.zeros((x.shape[0], *out, cout), np.result_type(x, w))
    for p in np.ndindex(*out):
        win = xp[(slice(None),) + tuple(slice(p[a] * s[a], p[a] * s[a] + d[a] * (kernel[a] - 1) + 1, d[a])
                                        for a in range(r))]  # (n, *kernel, cin)
        for k in range(groups):
            z[(slice(None), *p, slice(k * dg, (k + 1) * dg))] = np.tensordot(
                win[..., k * cg:(k + 1) * cg], w[..., k * dg:(k + 1) * dg], axes=r + 1)
    z = z + (0 if b is None else b)
    return z if shapes.is_channels_last(layout) else np.moveaxis(z, -1, 1)


def _rel(a, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(a, np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-300))


# ----------------------------------------------------------------------------- the grid
SIZES = {1: [(7,), (9,), (5,)], 2: [(6, 7), (5, 5), (7, 5)], 3: [(5, 4, 6), (4, 5, 3), (3, 5, 5)]}
KERNELS = {1: [(1,), (2,), (3,), (5,)], 2: [(1, 1), (2, 3), (3, 3), (5, 5)],
           3: [(1, 1, 1), (2, 3, 1), (3, 3, 3), (1, 2, 5)]}


def _pads(rng, r, choice):
    if choice < 2:
        return ("VALID", "SAME")[choice]
    if choice == 2:
        return int(rng.integers(1, 3))
    return tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(r))


def _draw(rng, r, i):
    """Configuration i of rank r (channels: groups 1, 2 or depthwise). Layout family, channels and
    padding form cycle with i, so that any 4 consecutive configurations take each of them."""
    sizes = SIZES[r][rng.integers(3)]
    kernel = KERNELS[r][rng.integers(4)]
    stride = int(rng.integers(1, 4)) if rng.random() < 0.5 else tuple(int(v) for v in rng.integers(1, 4, r))
    dilation = int(rng.integers(1, 4)) if rng.random() < 0.5 else tuple(int(v) for v in rng.integers(1, 4, r))
    groups, cg, dg = [(1, 3, 2), (2, 2, 2), (4, 1, 1), (3, 1, 2)][(i + r) % 4]
    layout = shapes.LAYOUTS_BY_RANK[r][i % 2]
    mode = PADDING_MODES[(i // 2 + r) % 4] if i % 4 in (1, 2) else "zeros"
    cin, cout, n = groups * cg, groups * dg, int(rng.integers(1, 3))
    kw = dict(stride=stride, padding=_pads(rng, r, (i + i // 4) % 4), dilation=dilation, groups=groups, layout=layout,
              padding_mode=mode)
    x_shape = shapes.make_shape(n, sizes, cin, layout)
    w_shape = (*kernel, cg, cout) if shapes.is_channels_last(layout) else (cout, cg, *kernel)
    return dict(x_shape=x_shape, w_shape=w_shape, kw=kw)


def _fits(c):
    try:
        shapes.conv_output_shape(c["x_shape"], c["w_shape"], **{k: v for k, v in c["kw"].items()
                                                                 if k != "padding_mode"})
        sizes = shapes.spatial_dims(c["x_shape"], c["kw"]["layout"])
        r = len(sizes)
        pads = shapes.normalize_padding(c["kw"]["padding"], sizes, shapes.kernel_parts(c["w_shape"], c["kw"]["layout"])[0],
                                        shapes.normalize_tuple(c["kw"]["stride"], "s", r),
                                        shapes.normalize_tuple(c["kw"]["dilation"], "d", r))
        ops.conv_nd.check_padding_mode(c["kw"]["padding_mode"], pads, sizes)
        return True
    except ValueError:
        return False


def _grid(r, count, seed):
    rng, out = np.random.default_rng(seed), []
    while len(out) < count:
        c = _draw(rng, r, len(out))
        if _fits(c):
            out.append(c)
    return out


GRID = {r: _grid(r, 40, 100 + r) for r in (1, 2, 3)}
DEFAULT_PER_RANK = {1: 4, 2: 3, 3: 3}  # the 1-D slice brings the per-dimension tuple pads
CASES = [(r, i) for r in (1, 2, 3) for i in range(len(GRID[r]))]


def _id(case):
    r, i = case
    c = GRID[r][i]
    return f"{r}d-{i}-{c['kw']['layout']}-x{'x'.join(map(str, c['x_shape']))}-{c['kw']['padding_mode']}"


def _check(c, seed):
    """All forwards equal the NumPy loop; the hand-derived VJPs equal autodiff of the reference; the
    autodiff VJPs of im2col and fft too (float64, 1e-10 relative)."""
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=c["x_shape"]), rng.normal(size=c["w_shape"])
    cout = c["w_shape"][-1] if shapes.is_channels_last(c["kw"]["layout"]) else c["w_shape"][0]
    b = rng.normal(size=(cout,))
    ref = numpy_conv(x, w, b, **c["kw"])
    ct = rng.normal(size=ref.shape)

    @jax.jit
    def run(x, w, b, ct):
        out = {}
        for impl in CONV_IMPLS:
            z, pull = jax.vjp(functools.partial(conv, impl=impl, **c["kw"]), x, w, b)
            out[impl] = (z, pull(ct))
        return out

    out = run(x, w, b, ct)
    for impl, (z, grads) in out.items():
        assert z.shape == ref.shape, impl
        assert _rel(z, ref) <= TOL64, impl
        for name, g, g_ref in zip("xwb", grads, out["reference"][1]):
            assert _rel(g, g_ref) <= TOL64, (impl, name)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] < DEFAULT_PER_RANK[c[0]]], ids=_id)
def test_impls_agree_with_numpy_and_reference_vjp(case):
    _check(GRID[case[0]][case[1]], case[1])


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c[1] >= DEFAULT_PER_RANK[c[0]]], ids=_id)
def test_impls_agree_full_grid(case):
    _check(GRID[case[0]][case[1]], case[1])


def test_default_slice_covers_the_axes():
    """Each rank's default slice holds both layout families, a stride > 1, a dilation > 1, a
    grouped conv and a non-zeros padding mode; over the three ranks every padding form appears."""
    forms = set()
    for r in (1, 2, 3):
        cs = GRID[r][:DEFAULT_PER_RANK[r]]
        assert {shapes.is_channels_last(c["kw"]["layout"]) for c in cs} == {True, False}, r
        assert any(max(shapes.normalize_tuple(c["kw"]["stride"], "s", r)) > 1 for c in cs), r
        assert any(max(shapes.normalize_tuple(c["kw"]["dilation"], "d", r)) > 1 for c in cs), r
        assert any(c["kw"]["groups"] > 1 for c in cs), r
        assert any(c["kw"]["padding_mode"] != "zeros" for c in cs), r
        forms |= {p if isinstance(p, str) else type(p).__name__ for p in (c["kw"]["padding"] for c in cs)}
    assert forms == {"VALID", "SAME", "int", "tuple"}


# ----------------------------------------------------------------------------- hand values
def test_hand_computed_1d_and_3d():
    """1-D: x = [1..5], w = [1, 10], stride 2 -> [1 + 20, 3 + 40] (x[4] unused). 3-D: a 2x2x2 ones
    kernel on x[d, h, w] = 100d + 10h + w (3x3x3) sums each 2-cube: 8 * (100 (d+.5) + 10 (h+.5) + (w+.5))."""
    x = jnp.arange(1.0, 6.0).reshape(1, 5, 1)
    w = jnp.array([1.0, 10.0]).reshape(2, 1, 1)
    d, h, v = np.meshgrid(np.arange(3), np.arange(3), np.arange(3), indexing="ij")
    x3 = jnp.asarray((100 * d + 10 * h + v).astype(float))[None, ..., None]
    run = jax.jit(lambda x, x3: {impl: (conv1d(x, w, stride=2, impl=impl)[0, :, 0],
                                        conv3d(x3, jnp.ones((2, 2, 2, 1, 1)), impl=impl)[0, ..., 0])
                                 for impl in CONV_IMPLS})  # one compile for every impl
    for impl, (z1, z) in run(x, x3).items():
        np.testing.assert_allclose(z1, [21.0, 43.0], err_msg=impl)
        want = 8 * (100 * (d[:2, :2, :2] + .5) + 10 * (h[:2, :2, :2] + .5) + (v[:2, :2, :2] + .5))
        np.testing.assert_allclose(z, want, rtol=1e-12, err_msg=impl)


def test_conv_is_conv2d_in_2d():
    rng = np.random.default_rng(5)
    x, w = rng.normal(size=(2, 3, 6, 5)), rng.normal(size=(4, 3, 2, 3))
    kw = dict(stride=(2, 1), padding="SAME", layout="NCHW", padding_mode="circular")
    np.testing.assert_array_equal(ops.conv2d(x, w, **kw), conv(x, w, **kw))
    np.testing.assert_allclose(ops.conv2d(x, w, **kw), numpy_conv(x, w, None, **kw), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- padding modes
PAD_GRAD_DEFAULT = {(1, "reflect"), (2, "replicate"), (3, "circular")}  # each mode and rank once; the rest -m slow
@pytest.mark.parametrize("mode", PADDING_MODES)
def test_padding_mode_values_by_hand(mode):
    """[1, 2, 3] with pads (2, 2) and a [1] kernel returns the padded row itself (PyTorch's semantics)."""
    want = {"zeros": [0, 0, 1, 2, 3, 0, 0], "reflect": [3, 2, 1, 2, 3, 2, 1],
            "replicate": [1, 1, 1, 2, 3, 3, 3], "circular": [2, 3, 1, 2, 3, 1, 2]}[mode]
    x = jnp.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
    run = jax.jit(lambda x: {impl: conv(x, jnp.ones((1, 1, 1)), padding=2, padding_mode=mode, impl=impl)
                             for impl in CONV_IMPLS})  # one compile for every impl
    for impl, z in run(x).items():
        np.testing.assert_allclose(z[0, :, 0], want, atol=1e-12, err_msg=impl)


@pytest.mark.parametrize("r, mode", [pytest.param(r, m, id=f"{r}-{m}", marks=() if (r, m) in PAD_GRAD_DEFAULT else
                                                  pytest.mark.slow)
                                     for m in ("reflect", "replicate", "circular") for r in (1, 2, 3)])
def test_padding_mode_gradient_by_central_differences(r, mode):
    """The VJP of conv with a padding mode equals the full Jacobian built by central differences
    (eps = 1 is exact: the map is linear in x), for lax and the hand-derived custom_vjp."""
    rng = np.random.default_rng(r)
    sizes = (4, 3, 3)[:r]
    x, w = rng.normal(size=(1, *sizes, 2)), rng.normal(size=(*(3, 2, 2)[:r], 2, 3))
    kw = dict(padding=tuple((1, 2) if a == 0 else (2, 1) for a in range(r)), padding_mode=mode)
    f = lambda x: numpy_conv(x, w, None, **kw)  # noqa: E731
    ct = rng.normal(size=f(x).shape)
    jac_t_ct = np.zeros(x.size)
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = 1.0
        e = e.reshape(x.shape)
        jac_t_ct[i] = np.sum((f(x + e) - f(x - e)) / 2 * ct)
    for impl in ("lax", "custom_vjp"):
        _, pull = jax.vjp(lambda x: conv(x, w, impl=impl, **kw), x)
        np.testing.assert_allclose(np.ravel(pull(ct)[0]), jac_t_ct, rtol=1e-10, atol=1e-10, err_msg=impl)


# ----------------------------------------------------------------------------- second order
@pytest.mark.parametrize("impl,x_shape,w_shape,kw", [
    ("custom_vjp", (2, 7, 4), (3, 2, 4), dict(stride=2, padding=((1, 0),), dilation=2, groups=2)),
    ("custom_vjp", (1, 4, 5, 3, 2), (2, 3, 1, 2, 2), dict(stride=(2, 1, 1), padding="SAME", dilation=(1, 2, 1))),
    pytest.param("col2im", (2, 7, 4), (3, 2, 4), dict(stride=2, padding=((1, 0),), dilation=2, groups=2),
                 marks=pytest.mark.slow),
    pytest.param("taps", (1, 4, 5, 3, 2), (2, 3, 1, 2, 2), dict(stride=(2, 1, 1), padding=1),
                 marks=pytest.mark.slow),
], ids=["custom_vjp-1d", "custom_vjp-3d", "col2im-1d", "taps-3d"])
def test_check_grads_order2(impl, x_shape, w_shape, kw):
    rng = np.random.default_rng(7)
    x, w, b = rng.normal(size=x_shape), rng.normal(size=w_shape), rng.normal(size=(w_shape[-1],))
    check_grads(jax.jit(lambda x, w, b: conv(x, w, b, impl=impl, **kw)), (x, w, b), order=2, modes=["rev"])


# ----------------------------------------------------------------------------- dtypes, jit, vmap, grad
DTYPE_TOL = {jnp.float64: 1e-10, jnp.float32: 1e-5, jnp.bfloat16: 3e-2}


@pytest.mark.parametrize("r, dtype", [  # float64 values and gradients: the grid tests; by default each rank
    pytest.param(r, d, id=f"{r}-{d.__name__}",  # and each low-precision dtype once
                 marks=() if (r, d) in ((1, jnp.float32), (3, jnp.bfloat16)) else pytest.mark.slow)
    for d in (jnp.float64, jnp.float32, jnp.bfloat16) for r in (1, 3)])
def test_jit_vmap_grad_dtypes(r, dtype):
    """Under jit, vmap over single examples and grad, every impl matches the float64 NumPy loop
    (values) and lax's float64 gradient, within the dtype's tolerance (GRADCHECK.md)."""
    rng = np.random.default_rng(11 + r)
    x = rng.normal(size=(3, *(6, 5, 4)[:r], 4))
    w, b = rng.normal(size=(*(3, 2, 2)[:r], 2, 4)), rng.normal(size=(4,))
    kw = dict(stride=2, padding="SAME", groups=2, padding_mode="reflect", precision="highest")
    ref = numpy_conv(x, w, b, **{k: v for k, v in kw.items() if k != "precision"})
    ct = rng.normal(size=ref.shape)
    loss = lambda impl, dt: lambda w, x: jnp.sum(conv(x, w, b.astype(dt), impl=impl, **kw) * ct.astype(dt))  # noqa
    g_ref = jax.grad(loss("lax", jnp.float64))(w, x)

    @jax.jit
    def run(x, w):
        out = {}
        for impl in CONV_IMPLS:
            f = functools.partial(conv, b=b.astype(dtype), impl=impl, **kw)
            per_example = jax.vmap(lambda xi: f(xi[None], w)[0])(x)
            out[impl] = (f(x, w), per_example, jax.grad(loss(impl, dtype))(w, x))
        return out

    tol = DTYPE_TOL[dtype]
    for impl, (z, z_vmap, g) in run(x.astype(dtype), w.astype(dtype)).items():
        assert z.dtype == dtype and z_vmap.dtype == dtype and g.dtype == dtype, impl
        assert _rel(z, ref) <= tol and _rel(z_vmap, ref) <= tol, impl
        assert _rel(g, g_ref) <= tol * 3, impl


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bfloat16", "float32"])
def test_taps_forward_is_the_reference_bit_for_bit(dtype):
    """"taps" is the reference forward, materialised (in float32 for a bf16 input, then rounded
    once): its values are the reference's own, bit for bit, in bf16 as in f32. The reference runs
    without the materialisation or the custom VJP, in its own program."""
    rng = np.random.default_rng(5)
    cases = [((4, 9, 9, 1), (5, 5, 1, 6), dict(padding="SAME")),  # LeNet's first layer: one input channel
             ((2, 7, 8, 4), (3, 3, 2, 6), dict(stride=2, dilation=(1, 2), padding="SAME", groups=2))]
    for x_shape, w_shape, kw in cases:
        x, w = (jnp.asarray(rng.normal(size=s), dtype) for s in (x_shape, w_shape))
        taps, ref = (jax.jit(functools.partial(conv, impl=impl, **kw))(x, w) for impl in ("taps", "reference"))
        assert taps.dtype == ref.dtype == dtype
        np.testing.assert_array_equal(np.asarray(taps, np.float32), np.asarray(ref, np.float32))


# ----------------------------------------------------------------------------- non-finite values
def _nonfinite_patterns(x, w, ct, **kw):
    """{impl: (z, dx, dw) as codes: 0 finite, 1 NaN, 2 +inf, 3 -inf} for every implementation."""
    @jax.jit
    def run(x, w):
        out = {}
        for impl in CONV_IMPLS:
            z, pull = jax.vjp(functools.partial(conv, impl=impl, **kw), x, w)
            out[impl] = (z, *pull(ct))
        return out

    return {impl: tuple(_codes(a) for a in v) for impl, v in run(x, w).items()}


def _codes(a):
    a = np.asarray(a, np.float64)
    return np.where(np.isnan(a), 1, np.where(a == np.inf, 2, np.where(a == -np.inf, 3, 0)))


@pytest.mark.parametrize("where, bad", [pytest.param("x", np.nan, id="x-nan"), pytest.param("w", np.inf, id="w-inf"),
                                        pytest.param("x", np.inf, id="x-inf", marks=pytest.mark.slow),
                                        pytest.param("w", np.nan, id="w-nan", marks=pytest.mark.slow)])
def test_nonfinite_table(where, bad):
    """fcnn/ops/conv.py's table, measured: one non-finite input pixel or kernel tap (SAME padding).
    A bad pixel: every impl but fft has lax's pattern, the NumPy loop's; fft is NaN on every output
    of the pixel's example and group. A bad tap: lax, custom_vjp, col2im, reference and taps skip the
    pads (the outputs where the tap meets only padding stay finite), and im2col_vjp, which turns to
    lax's forward and col2im's dx for a non-finite kernel; im2col and fft multiply the zero
    pads (0 * NaN = NaN), like the NumPy loop; custom_vjp's and fft's dx do the same."""
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 8, 8, 4)), rng.normal(size=(3, 3, 2, 4))
    w[0, 0, 0, 0] = 0.0  # 0 * inf = NaN in that output
    if where == "x":
        x[1, 3, 4, 1] = bad  # example 1, channel 1: group 0 (channels 0-1 -> outputs 0-1)
    else:
        w[1, 0, 1, 3] = bad  # input channel 1 of group 1 (x channel 3) -> output channel 3
    ct = rng.normal(size=(2, 8, 8, 4))
    kw = dict(padding="SAME", groups=2)
    got = _nonfinite_patterns(x, w, ct, **kw)
    with np.errstate(invalid="ignore"):
        want_z = _codes(numpy_conv(x, w, None, **kw))
    assert np.count_nonzero(want_z) == (18 if where == "x" else 128)  # 3x3 window x 2 outputs; all of o
    if where == "x":
        np.testing.assert_array_equal(got["lax"][0], want_z)
    lax_z, lax_dx, lax_dw = got["lax"]
    assert (np.count_nonzero(lax_dx), np.count_nonzero(lax_dw)) == ((0, 18) if where == "x" else (112, 0))
    if where == "w":  # lax skips the pads: the bad tap's outputs that read only padding stay finite
        assert np.count_nonzero(lax_z) == 112 and np.count_nonzero(want_z) == 128
    for impl, (z, dx, dw) in got.items():
        # (z, dx) follow lax's pattern, or the NumPy loop's (pads multiplied: 0 * NaN = NaN), or are
        # all NaN on the example's group (fft); the table in fcnn/ops/conv.py
        if where == "x":
            want = lax_z if impl != "fft" else np.pad(np.ones((1, 8, 8, 2), int), ((1, 0), (0, 0), (0, 0), (0, 2)))
        else:
            want = lax_z if impl in ("lax", "custom_vjp", "col2im", "reference", "taps", "im2col_vjp") else want_z
        want_dx = (want_z[0] != 0).astype(int) if where == "w" and impl in ("custom_vjp", "fft") else lax_dx
        if impl == "fft":
            want, want_dx = (want != 0).astype(int), (want_dx != 0).astype(int)  # NaN only
        np.testing.assert_array_equal(z, want, err_msg=impl)
        if where == "w" and impl in ("custom_vjp", "fft"):  # NaN/inf at every x of channel 3 (both examples)
            np.testing.assert_array_equal(dx != 0, np.broadcast_to(np.arange(4) == 3, dx.shape), err_msg=impl)
        else:
            np.testing.assert_array_equal(dx, want_dx, err_msg=impl)
        np.testing.assert_array_equal(dw, lax_dw if impl != "fft" else (lax_dw != 0).astype(int), err_msg=impl)


# ----------------------------------------------------------------------------- bad input
X1, W1 = np.zeros((1, 5, 4)), np.zeros((3, 4, 4))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: conv(X1, np.zeros((3, 3, 2, 4))), ValueError, "x and w must have the same rank"),
    (lambda: conv(X1, W1, layout="NCHW"), ValueError, "x must have rank 4 to match layout='NCHW'"),
    (lambda: conv(X1, W1, layout="NXC"), ValueError, "layout must be one of NWC, NCW"),
    (lambda: conv(np.zeros((1, 5)), np.zeros((3, 2))), ValueError, "x must have 1, 2 or 3 spatial dimensions"),
    (lambda: conv(X1, W1, padding_mode="mirror"), ValueError, "padding_mode must be one of zeros, reflect"),
    (lambda: conv(X1, W1, padding=5, padding_mode="reflect"), ValueError,
     r"padding_mode='reflect' needs every pad < the input size"),
    (lambda: conv(X1, W1, padding=((0, 6),), padding_mode="circular"), ValueError,
     r"padding_mode='circular' needs every pad <= the input size"),
    (lambda: conv(X1, W1, stride=(1, 2)), TypeError, "stride must be an int"),
    (lambda: conv(X1, W1, padding=((1, 1), (1, 1))), TypeError, "padding must be"),
    (lambda: conv(X1, W1, impl="fast"), ValueError, "impl must be one of"),
    (lambda: conv(X1, W1, impl="winograd"), ValueError, r"impl='winograd' computes only 2-D .* got kernel \(3,\)"),
    (lambda: conv1d(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 2, 4))), ValueError, r"x must have rank 3 .*conv1d"),
    (lambda: conv3d(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 2, 4))), ValueError, r"x must have rank 5 .*conv3d"),
    (lambda: conv3d(np.zeros((1, 3, 3, 3, 4)), np.zeros((1, 1, 1, 2, 4)), layout="NCHW"), ValueError,
     "layout must be one of NDHWC, NCDHW"),
    (lambda: conv(X1, np.zeros((0, 2, 4))), ValueError, "w must have a kernel of size >= 1"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_reflect_pad_limit_is_pytorchs():
    """pad = size - 1 is the largest reflect pad (PyTorch: pad < size); circular allows pad = size."""
    x = jnp.arange(1.0, 4.0).reshape(1, 3, 1)
    one = jnp.ones((1, 1, 1))
    np.testing.assert_allclose(conv(x, one, padding=2, padding_mode="reflect")[0, :, 0], [3, 2, 1, 2, 3, 2, 1])
    np.testing.assert_allclose(conv(x, one, padding=3, padding_mode="circular")[0, :, 0],
                               [1, 2, 3, 1, 2, 3, 1, 2, 3])
    with pytest.raises(ValueError, match=r"padding_mode='reflect' needs every pad < the input size"):
        conv(x, one, padding=3, padding_mode="reflect")


# ----------------------------------------------------------------------------- empty operands
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_empty_operands_give_the_empty_sum_in_every_impl(rank):
    """A batch of 0, or 0 input or output channels: every output is a sum of no products, so z is the
    bias alone (or empty), dX and dW are zero (or empty) and dB is the cotangent summed over batch and
    space, by hand. In every implementation of the rank and "auto", float32 (oneDNN's dtype: before,
    it failed with an INTERNAL error at run time, col2im's gradients inside lax, auto on a 0 batch)."""
    sp, k, ones = (5,) * rank, (3,) * rank, (1,) * rank
    for x_shape, w_shape in [((0, *sp, 3), (*k, 3, 4)), ((2, *sp, 0), (*k, 0, 4)), ((2, *sp, 3), (*k, 3, 0))]:
        out = (x_shape[0], *sp, w_shape[-1])  # SAME, stride 1
        b = jnp.arange(w_shape[-1], dtype=jnp.float32) + 1
        ct = jnp.asarray(np.random.default_rng(0).normal(size=out), jnp.float32)
        want_db = np.asarray(ct).sum(axis=tuple(range(rank + 1)))
        for impl in ops.conv_impls_for(k, ones, ones) + ("auto",):
            x, w = jnp.ones(x_shape, jnp.float32), jnp.ones(w_shape, jnp.float32)
            z, pull = jax.vjp(functools.partial(conv, padding="SAME", impl=impl), x, w, b)
            dx, dw, db = pull(ct)
            where = f"{impl} x{x_shape} w{w_shape}"
            np.testing.assert_array_equal(np.asarray(z), np.broadcast_to(np.asarray(b), out), err_msg=where)
            assert dx.shape == x_shape and dw.shape == w_shape and not np.any(dx) and not np.any(dw), where
            np.testing.assert_allclose(np.asarray(db), want_db, rtol=1e-5, atol=1e-5, err_msg=where)


def test_an_empty_operand_gets_lax():
    """A 0 batch or channel count: "lax" (conv computes such calls by lax, conv_nd's docstring), where
    the same conv with elements gets another impl on CPU; the CPU cost rule once divided by the 0 batch."""
    full = _auto.select_conv_impl("cpu", (16, 28, 28, 1), (5, 5, 1, 6))
    assert full != "lax"  # "taps" or "onednn", by the CPU
    for x_shape, w_shape in [((0, 28, 28, 1), (5, 5, 1, 6)), ((16, 28, 28, 0), (5, 5, 0, 6)),
                             ((16, 28, 28, 1), (5, 5, 1, 0))]:
        assert _auto.select_conv_impl("cpu", x_shape, w_shape) == "lax"
        assert _auto.select_conv_impl("cpu", x_shape, w_shape, dtype=jnp.bfloat16) == "lax"
