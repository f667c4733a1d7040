"""Winograd F(2x2,3x3) / F(4x4,3x3) (fcnn/ops/winograd.py).

The transform matrices are derived again here from the Toom-Cook points in exact rational
arithmetic; the forward and the hand-derived VJP are checked in float64 against ``conv2d``'s
``"reference"`` implementation (the formula, tap by tap) and its autodiff over a grid of sizes
(odd, even, non-square), paddings (VALID, SAME, int, asymmetric, larger than the kernel), groups
(1, 2, depthwise) and batches 1-2; second order by ``jax.test_util.check_grads``.
"""
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fcnn import gradcheck as gc
from fcnn import shapes
from fcnn.ops import conv2d
from fcnn.ops import winograd as wg

INF = None  # the point at infinity: the leading coefficient
POINTS = {2: [0, 1, -1, INF], 4: [0, 1, -1, 2, -2, INF]}  # Lavin & Gray 2015, sections 4.1-4.2


def _vandermonde(points, n):
    """Rows ``[p^0, ..., p^(n-1)]`` (evaluation of a degree < n polynomial at p); ``[0, ..., 0, 1]`` at infinity."""
    return [[Fraction(0)] * (n - 1) + [Fraction(1)] if p is INF else [Fraction(p) ** k for k in range(n)]
            for p in points]


def _inverse(a):
    """Exact inverse of a square Fraction matrix (Gauss-Jordan)."""
    n = len(a)
    m = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(a)]
    for col in range(n):
        piv = next(r for r in range(col, n) if m[r][col] != 0)
        m[col], m[piv] = m[piv], m[col]
        m[col] = [v / m[col][col] for v in m[col]]
        for r in range(n):
            if r != col and m[r][col] != 0:
                m[r] = [a_ - m[r][col] * b_ for a_, b_ in zip(m[r], m[col])]
    return [row[n:] for row in m]


def _exact(mat):
    """The module's float64 matrix as Fractions (its entries are k/24 at most), checked to round-trip."""
    out = [[Fraction(v).limit_denominator(48) for v in row] for row in mat]
    np.testing.assert_array_equal(np.array([[float(v) for v in row] for row in out]), mat)
    return out


def _matmul(a, b):
    return [[sum(x * y for x, y in zip(row, col)) for col in zip(*b)] for row in a]


@pytest.mark.parametrize("tile", wg.WINOGRAD_TILES)
def test_matrices_are_toom_cook_for_the_papers_points(tile):
    """Correlation is the transpose of polynomial multiplication: for s = h * g (h of degree < m,
    g of degree < 3, s of degree < a), s = C[(V_m h) * (V_3 g)] with C = V_a^-1 (interpolation),
    so y = M_g^T d = V_m^T [(V_3 g) * (C^T d)]: A^T = V_m^T, G = V_3, B^T = C^T, up to a diagonal
    scaling per point that cancels (D_A D_G D_B = I)."""
    bt, g, at = (_exact(mat) for mat in wg.winograd_matrices(tile))
    a = tile + 2
    pts = POINTS[tile]
    vm, v3, va = _vandermonde(pts, tile), _vandermonde(pts, 3), _vandermonde(pts, a)
    c_t = [list(col) for col in zip(*_inverse(va))]
    d_a, d_g = [], []
    for j in range(a):  # per point: the scale of A^T's column and of G's row
        d_a.append(next(at[i][j] / vm[j][i] for i in range(tile) if vm[j][i] != 0))
        assert [at[i][j] for i in range(tile)] == [d_a[j] * vm[j][i] for i in range(tile)]
        d_g.append(next(g[j][k] / v3[j][k] for k in range(3) if v3[j][k] != 0))
        assert g[j] == [d_g[j] * v for v in v3[j]]
        assert bt[j] == [v / (d_a[j] * d_g[j]) for v in c_t[j]]


@pytest.mark.parametrize("tile", wg.WINOGRAD_TILES)
def test_matrices_compute_the_correlation_exactly(tile):
    """A^T [(G g) * (B^T d)] = (sum_k d[i + k] g[k])_i on every pair of basis vectors (bilinear: all
    inputs), in exact rational arithmetic."""
    bt, g, at = (_exact(mat) for mat in wg.winograd_matrices(tile))
    a = tile + 2
    for s in range(a):
        for k in range(3):
            u = [row[k] for row in g]  # G e_k
            v = [row[s] for row in bt]  # B^T e_s
            y = _matmul(at, [[ui * vi] for ui, vi in zip(u, v)])
            assert [r[0] for r in y] == [Fraction(int(s == i + k)) for i in range(tile)]


# (name, x shape NHWC, cout, groups, padding)
CASES = [
    ("odd_same", (1, 5, 5, 3), 4, 1, "SAME"),
    ("even_nonsquare_valid", (2, 6, 8, 2), 3, 1, "VALID"),
    ("nonsquare_int_g2", (2, 7, 4, 4), 6, 2, 1),
    ("depthwise_same", (1, 6, 7, 3), 3, 3, "SAME"),
    ("depthwise_x2_asym", (2, 5, 6, 2), 4, 2, ((2, 0), (0, 3))),
    ("pad3", (1, 4, 5, 2), 2, 1, 3),  # the backward's pads 2 - 3 crop
    ("one_output", (1, 3, 3, 1), 1, 1, "VALID"),
]


def _case(name, x_shape, cout, groups, padding):
    rng = np.random.default_rng(sum(map(ord, name)))
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((3, 3, x_shape[3] // groups, cout))
    pads = shapes.normalize_padding(padding, x_shape[1:3], (3, 3), (1, 1), (1, 1))
    return x, w, pads


def _winograd(pads, groups, tile):
    return lambda x, w: wg.conv2d_winograd(x, w, 1, pads, 1, groups, tile=tile)


def _reference(pads, groups):
    return lambda x, w: conv2d(x, w, padding=pads, groups=groups, impl="reference")


# The default run: F(2,3) on every case but the two whose features other cases repeat (VALID even
# sizes: one_output, nonsquare_int_g2; depthwise SAME: depthwise_x2_asym, odd_same), F(4,3) on the
# cropping pad3; the rest -m slow (F(4,3)'s compiles take ~2x F(2,3)'s).
DEFAULT = {2: ("odd_same", "nonsquare_int_g2", "depthwise_x2_asym", "pad3", "one_output"), 4: ("pad3",)}
GRID = [pytest.param(c, t, id=f"{c[0]}-F{t}", marks=() if c[0] in DEFAULT[t] else pytest.mark.slow)
        for c in CASES for t in wg.WINOGRAD_TILES]


@pytest.mark.parametrize("case, tile", GRID)
def test_forward_and_vjp_match_the_reference_in_float64(case, tile):
    """Forward and the custom VJP (dx, dw for one random cotangent) against the reference and its
    autodiff, jitted together (``gradcheck.agreement``)."""
    x, w, pads = _case(*case)
    groups = case[3]
    f = _winograd(pads, groups, tile)
    assert jax.eval_shape(f, x, w).shape == shapes.conv_output_shape(x.shape, w.shape, padding=pads, groups=groups)
    results = gc.agreement(f, _reference(pads, groups), [x, w], names=["x", "w"], tol=1e-10)
    assert [r.check for r in results] == ["forward", "vjp", "vjp"]
    assert all(r.passed for r in results), results


@pytest.mark.parametrize("tile, case", [pytest.param(2, CASES[4], id="F2_depthwise_asym"),
                                        pytest.param(4, CASES[5], id="F4_pad3", marks=pytest.mark.slow)])
def test_second_order_by_finite_differences(tile, case):
    x, w, pads = _case(*case)
    check_grads(jax.jit(_winograd(pads, case[3], tile)), (x, w), order=2, modes=["rev"])


def test_backward_input_is_a_winograd_convolution_with_the_rotated_kernel():
    """dX of z = conv(x, w) with pads p is conv(dZ, rot180(w) with in/out swapped, pads 2 - p): on one
    channel pair, correlating a unit impulse dZ with the rotated kernel writes w itself into dX."""
    w = np.arange(1.0, 10.0).reshape(3, 3, 1, 1)
    dz = np.zeros((1, 3, 3, 1))
    dz[0, 1, 1, 0] = 1.0  # output pixel (1, 1) of a VALID conv of a 5x5 input reads x[1:4, 1:4]
    dx = jax.jit(lambda dz, w: wg.winograd_backward_input(dz, w, pads=((0, 0), (0, 0)), groups=1))(dz, w)
    want = np.zeros((5, 5))
    want[1:4, 1:4] = w[:, :, 0, 0]
    np.testing.assert_allclose(np.asarray(dx)[0, :, :, 0], want, rtol=0, atol=1e-12)


def _equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs inside its equations (custom_vjp, pjit, cond's branches)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def _dots(fn, *args):
    return [e for e in _equations(jax.make_jaxpr(fn)(*args).jaxpr) if e.primitive.name == "dot_general"]


@pytest.mark.parametrize("groups", [1, 2])
def test_one_batched_matrix_product_over_the_tile_positions(groups):
    """float32 and wider: the channel contraction is one dot_general batched over the a*a transformed tile
    positions; the transforms are elementwise (no other dot)."""
    x, w, pads = _case(*CASES[2])
    w = w if groups == 2 else np.concatenate([w, w], axis=2)
    for tile in wg.WINOGRAD_TILES:
        dots = _dots(_winograd(pads, groups, tile), x, w)
        assert len(dots) == 1 and dots[0].invars[0].aval.shape[0] == (tile + 2) ** 2


def test_bfloat16_products_are_plain_matrix_products_one_per_tile_position():
    """16-bit, groups 1: a*a unbatched products of bfloat16 operands accumulated in float32 (the form
    XLA:CPU runs on AMX), (n * tiles, cin) x (cin, cout); grouped 16-bit convolutions keep the batched one."""
    x, w, pads = _case(*CASES[0])  # 5x5 SAME: 3x3 tiles of F(2, 3)
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    dots = _dots(_winograd(pads, 1, 2), xb, wb)
    assert len(dots) == 16
    for e in dots:
        lhs, rhs = (v.aval for v in e.invars)
        assert (lhs.shape, rhs.shape, lhs.dtype, rhs.dtype) == ((9, 3), (3, 4), jnp.bfloat16, jnp.bfloat16)
        assert e.params["preferred_element_type"] == jnp.float32 and e.params["dimension_numbers"][1] == ((), ())
    (dot,) = _dots(_winograd(pads, 1, 4), xb, wb)  # F(4, 3): float32 products, batched
    assert [v.aval.dtype for v in dot.invars] == [jnp.float32, jnp.float32]
    x, w, pads = _case(*CASES[2])
    assert len(_dots(_winograd(pads, 2, 2), jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16))) == 1


def test_float32_error_against_float64_as_documented():
    """The module docstring's table, on a smaller layer (C_in*9 = 576): F(2,3) as accurate as direct
    summation (<= 1e-6), F(4,3) 10-20x worse but under the 1e-5 float32 tolerance; a wrong transform
    coefficient would give errors of order 1."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 8, 8, 64)), rng.standard_normal((3, 3, 64, 32))
    pads = ((1, 1), (1, 1))
    z64 = conv2d(x, w, padding="SAME", impl="lax")
    x32, w32 = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
    err = {t: gc.compare(jax.jit(_winograd(pads, 1, t))(x32, w32), z64, jnp.float32).max_rel for t in wg.WINOGRAD_TILES}
    assert err[2] <= 1e-6 and 3 * err[2] < err[4] <= 1e-5, err
    assert wg.DEFAULT_TILE == 2


def test_bfloat16_values_and_gradients_are_as_close_to_float64_as_lax_bfloat16():
    """16-bit inputs: transforms in float32, F(2, 3)'s products of bfloat16 operands accumulated in
    float32 (F(4, 3)'s in float32: its own error then is the output's rounding), dW as the patch product. z, dx and dw of bfloat16 inputs, against float64 on the same (rounded) values:
    within 2.5x the error of lax's own bfloat16 convolution and its autodiff (a missing transform or a
    wrong product would be off by order 1)."""
    rng = np.random.default_rng(3)
    x, w, ct = rng.standard_normal((2, 8, 8, 32)), rng.standard_normal((3, 3, 32, 16)) / 10, rng.standard_normal((2, 8, 8, 16))
    xb, wb, cb = (jnp.asarray(a, jnp.bfloat16) for a in (x, w, ct))
    pads = ((1, 1), (1, 1))

    def all3(fn, x, w, ct):
        z, pull = jax.vjp(fn, x, w)
        return (z, *pull(ct))

    lax_conv = lambda x, w: conv2d(x, w, padding=pads, impl="lax")  # noqa: E731
    want = jax.jit(all3, static_argnums=0)(lax_conv, *(jnp.asarray(a, jnp.float64) for a in (xb, wb, cb)))
    got = jax.jit(all3, static_argnums=0)(_winograd(pads, 1, wg.DEFAULT_TILE), xb, wb, cb)
    ref16 = jax.jit(all3, static_argnums=0)(lax_conv, xb, wb, cb)
    for name, g, r, v in zip(("z", "dx", "dw"), got, ref16, want):
        assert g.dtype == jnp.bfloat16, name
        err, lax_err = gc.compare(g, v).max_rel, gc.compare(r, v).max_rel
        assert err <= max(2.5 * lax_err, 4e-3), (name, err, lax_err)
    got4 = jax.jit(all3, static_argnums=0)(_winograd(pads, 1, 4), xb, wb, cb)  # float32 products
    assert gc.compare(got4[0], want[0]).max_rel <= 1.5 * gc.compare(ref16[0], want[0]).max_rel


@pytest.mark.parametrize("w_shape, kw, match", [
    ((5, 5, 2, 3), {}, "3x3 kernel"),
    ((3, 1, 2, 3), {}, "3x3 kernel"),
    ((3, 3, 2, 3), dict(stride=2), "stride 1"),
    ((3, 3, 2, 3), dict(dilation=(1, 2)), "dilation 1"),
    ((3, 3, 2, 3), dict(tile=3), "tile must be one of 2, 4; got 3"),
    ((3, 3, 2, 3), dict(tile=True), "tile must be one of"),
    ((3, 3, 1, 3), {}, "input channels per group"),
    ((3, 3, 2, 3), dict(pads=((0, 0), (-2, 0))), "larger than the padded input"),
])
def test_bad_arguments_are_refused_before_computing(w_shape, kw, match):
    args = dict(stride=1, pads=((0, 0), (0, 0)), dilation=1, groups=1)
    args.update(kw)
    tile = args.pop("tile", wg.DEFAULT_TILE)
    with pytest.raises(ValueError, match=match):
        wg.conv2d_winograd(np.zeros((1, 4, 4, 2)), np.zeros(w_shape), args["stride"], args["pads"], args["dilation"],
                           args["groups"], tile=tile)


def _codes(a):
    a = np.asarray(a, np.float64)
    return np.where(np.isnan(a), 1, np.where(a == np.inf, 2, np.where(a == -np.inf, 3, 0)))


@pytest.mark.parametrize("where, bad", [("x", np.nan), ("x", np.inf), ("w", np.inf), ("w", np.nan), ("ct", -np.inf)])
@pytest.mark.parametrize("dtype, like", [(jnp.float64, "lax"), (jnp.bfloat16, "im2col_vjp")])
def test_nonfinite_values_give_the_pattern_of_lax_or_im2col_vjp(where, bad, dtype, like):
    """Winograd's transforms would spread one non-finite value over its tile (inf - inf = NaN) and
    multiply the zero pads: it computes lax's forward for a non-finite x or w, and col2im's dx for a
    non-finite dZ or w, so z, dx and dw are NaN/inf exactly where lax's are in float64 (fcnn/ops/conv.py's
    table). In bfloat16 XLA:CPU's own dx multiplies dZ's zero padding for a non-finite tap, and its dw
    differs for a non-finite dZ (measured here on CPU): there the pattern is im2col_vjp's, the
    implementation auto already picks for such layers (the same guards and the same dw)."""
    rng = np.random.default_rng(0)
    x, w, ct = rng.normal(size=(2, 8, 8, 4)), rng.normal(size=(3, 3, 2, 4)), rng.normal(size=(2, 8, 8, 4))
    w[0, 0, 0, 0] = 0.0  # 0 * inf = NaN in that output
    {"x": x, "w": w, "ct": ct}[where][(1, 3, 4, 1) if where != "w" else (1, 0, 1, 3)] = bad
    pads = ((1, 1), (1, 1))

    @jax.jit
    def run(x, w, ct):
        out = {}
        for name, fn in ((like, lambda x, w: conv2d(x, w, padding=pads, groups=2, impl=like)),
                         ("winograd", _winograd(pads, 2, 2))):
            z, pull = jax.vjp(fn, x, w)
            out[name] = (z, *pull(ct))
        return out

    codes = {k: [_codes(a) for a in v] for k, v in run(*(jnp.asarray(a, dtype) for a in (x, w, ct))).items()}
    assert any(c.any() for c in codes[like])
    for name, a, b in zip(("z", "dx", "dw"), codes["winograd"], codes[like]):
        np.testing.assert_array_equal(a, b, err_msg=name)
