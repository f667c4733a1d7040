"""Tests of the checking toolkit itself (``fcnn.gradcheck``): distances and tolerances, each check
reports an injected error at its size and passes the exact rule, and the input generators. The
sweeps over the conv/pool grid and the ``fcnn gradcheck`` command are tests/test_sweep.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import gradcheck as gc
from fcnn.ops import conv2d, max_pool2d

X_SHAPE, W_SHAPE = (2, 5, 6, 3), (3, 2, 3, 4)
GEOM = dict(stride=(2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2))


def _args(dtype=jnp.float64):
    return (gc.random_normal(1, X_SHAPE, dtype), gc.random_normal(2, W_SHAPE, dtype), gc.random_normal(3, (4,), dtype))


def _lax_conv(x, w, b):
    return conv2d(x, w, b, impl="lax", **GEOM)


def _conv_with_injected(delta, u):
    """lax conv whose VJP for x is off by the constant ``delta * u``."""

    @jax.custom_vjp
    def f(x, w, b):
        return _lax_conv(x, w, b)

    def fwd(x, w, b):
        y, pull = jax.vjp(_lax_conv, x, w, b)
        return y, (x, w, b)

    def bwd(res, c):
        dx, dw, db = jax.vjp(_lax_conv, *res)[1](c)
        return dx + delta * u, dw, db

    f.defvjp(fwd, bwd)
    return f


# ----------------------------------------------------------------------------- distances
def test_compare_reports_abs_rel_and_ulps_at_the_reference_scale():
    b = np.array([2.0, -1.0, 0.5], np.float32)
    a = b.copy()
    a[1] = np.nextafter(np.nextafter(np.float32(-1.0), np.float32(0)), np.float32(0))  # 2 ulps of 1.0 toward 0
    e = gc.compare(a, b)
    assert e.max_abs == pytest.approx(2 * 2.0**-24)  # ulp(1) below 1 is 2^-24
    assert e.max_rel == pytest.approx(2 * 2.0**-24 / 2.0)
    assert e.max_ulp == pytest.approx(0.5)  # 2^-23 in units of ulp(2.0) = 2^-22
    assert gc.compare(b, b) == (0.0, 0.0, 0.0)


def test_compare_nan_and_inf_rules():
    assert gc.compare(np.array([np.nan, np.inf, 1.0]), np.array([np.nan, np.inf, 1.0])).max_abs == 0.0
    assert gc.compare(np.array([np.nan, 1.0]), np.array([1.0, 1.0])).max_rel == np.inf
    assert gc.compare(np.array([1.0, np.nan]), np.array([1.0, 2.0])).max_abs == np.inf  # NaN on the tested side
    assert gc.compare(np.array([np.inf, 1.0]), np.array([-np.inf, 1.0])).max_abs == np.inf  # opposite infinities
    assert gc.compare(np.array([np.inf, 1.0]), np.array([2.0, 1.0])).max_rel == np.inf
    with pytest.raises(ValueError, match="shapes differ"):
        gc.compare(np.zeros(3), np.zeros(4))


def test_ulp_distance_counts_representable_numbers():
    one = np.float32(1.0)
    up3 = np.nextafter(np.nextafter(np.nextafter(one, np.float32(2)), np.float32(2)), np.float32(2))
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    d = gc.ulp_distance(np.array([up3, -0.0, tiny, 1.0]), np.array([one, 0.0, -tiny, 1.0]), jnp.float32)
    np.testing.assert_array_equal(d, [3, 0, 2, 0])
    assert gc.ulp_distance(1.0, np.nextafter(1.0, 2.0), jnp.float64) == 1


def test_tolerances_are_dtype_and_platform_aware():
    assert gc.tolerance(jnp.float64) == 1e-10
    assert gc.tolerance(jnp.float32, "cpu") == 1e-5
    assert gc.tolerance(jnp.float32, "gpu", "highest") == 1e-4
    assert gc.tolerance(jnp.float32, "gpu", None) == 1e-2
    assert gc.tolerance(jnp.bfloat16) == 2e-2


# ----------------------------------------------------------------------------- injected errors
@pytest.mark.parametrize("delta", [1e-3, 1e-7])
def test_agreement_reports_an_injected_vjp_error_at_its_size(delta):
    args = _args()
    u = gc.random_normal(9, X_SHAPE, jnp.float64)
    res = {r.arg: r for r in gc.agreement(_conv_with_injected(delta, u), _lax_conv, args, names="xwb")}
    assert res["out"].max_abs == 0.0
    assert res["x"].max_abs == pytest.approx(delta * float(jnp.max(jnp.abs(u))), rel=1e-6)
    assert res["w"].max_abs == 0.0 and res["b"].max_abs == 0.0
    assert res["x"].passed is False  # both deltas are far above 1e-10 relative


def test_fd_projection_reports_an_injected_error_at_its_size():
    delta, u = 1e-4, gc.random_normal(9, X_SHAPE, jnp.float64)
    f = _conv_with_injected(delta, u)
    ones = {r.arg: r for r in gc.fd_projection(f, _args(), names="xwb", tangent="ones")}
    assert ones["x"].max_abs == pytest.approx(delta * float(jnp.sum(u)), rel=1e-6)  # <1, delta u>
    # with random tangents the error is delta * |<t, u>|, t the draws after the cotangent's
    rng = np.random.default_rng(0)
    rng.standard_normal(jax.eval_shape(_lax_conv, *_args()).shape)
    t = rng.standard_normal(X_SHAPE)
    rand = {r.arg: r for r in gc.fd_projection(f, _args(), names="xwb")}
    assert rand["x"].max_abs == pytest.approx(delta * abs(float(np.vdot(t, u))), rel=1e-6)
    assert rand["w"].passed and rand["b"].passed and not rand["x"].passed


def test_full_jacobian_reports_an_injected_error_at_its_size():
    delta, u = 1e-5, gc.random_normal(9, X_SHAPE, jnp.float64)
    res = {r.arg: r for r in gc.full_jacobian(_conv_with_injected(delta, u), _args(), names="xwb")}
    # every row of J^T is off by delta * u
    assert res["x"].max_abs == pytest.approx(delta * float(jnp.max(jnp.abs(u))), rel=1e-6)
    assert res["w"].max_rel < 1e-13 and res["b"].max_rel < 1e-13


def test_full_jacobian_fails_a_vjp_right_on_unit_cotangents_only():
    """A VJP of |c| instead of c gives every row of J exactly (unit cotangents are >= 0) and is
    still wrong: the random cotangent's row catches it (the unit rows alone passed it)."""
    @jax.custom_vjp
    def f(x, w, b):
        return _lax_conv(x, w, b)

    f.defvjp(lambda x, w, b: (_lax_conv(x, w, b), (x, w, b)), lambda res, c: jax.vjp(_lax_conv, *res)[1](jnp.abs(c)))
    res = {r.arg: r for r in gc.full_jacobian(f, _args(), names="xwb")}
    assert not res["x"].passed and not res["w"].passed and not res["b"].passed
    assert all(r.passed for r in gc.full_jacobian(_lax_conv, _args(), names="xwb"))


def test_second_order_catches_a_wrong_cross_term():
    """f(x, w) = x*w elementwise with dx = c*w + delta*c*w[::-1]: the 'gradient' has an
    asymmetric Jacobian, off by delta * v_w reversed in J_g^T v."""
    delta = 1e-3

    @jax.custom_vjp
    def f(x, w):
        return x * w

    f.defvjp(lambda x, w: (x * w, (x, w)), lambda res, c: (c * res[1] + delta * c * res[1][::-1], c * res[0]))
    args = (gc.random_normal(1, (7,), jnp.float64), gc.random_normal(2, (7,), jnp.float64))
    res = {r.arg: r for r in gc.second_order(f, args, names="xw")}
    # by hand, with c, v_x, v_w the draws (in that order): J_g^T v = (c v_w, A^T v_x), J_g v = (A v_w, c v_x),
    # A = diag(c) + delta * c_i [j = n-1-i]: off by delta * c v_w[::-1] in x and delta * (c v_x)[::-1] in w
    rng = np.random.default_rng(0)
    c, v_x, v_w = (rng.standard_normal(7) for _ in range(3))
    assert res["x"].max_abs == pytest.approx(delta * np.max(np.abs(c * v_w[::-1])), rel=1e-9)
    assert res["w"].max_abs == pytest.approx(delta * np.max(np.abs(c * v_x)), rel=1e-9)
    assert not res["x"].passed and not res["w"].passed
    exact = {r.arg: r for r in gc.second_order(lambda x, w: x * w, args, names="xw")}
    assert exact["x"].passed and exact["w"].passed and exact["x"].max_abs < 1e-14


def test_checks_need_float64():
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="float64"):
            gc.fd_projection(lambda x: x, (np.ones(3, np.float32),))


# ----------------------------------------------------------------------------- inputs
def test_input_generators():
    x = np.asarray(gc.tie_free(3, (2, 6, 7, 3)))
    np.testing.assert_array_equal(np.diff(np.sort(x.ravel())), 1.0)
    t = np.asarray(gc.forced_ties(3, (2, 6, 7, 3)))
    assert set(np.unique(t)) <= {0.0, 1.0} and (t == 0).mean() > 0.5
    windows = t[:, :6, :6].reshape(2, 3, 2, 3, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    assert (windows.max(1) == 0).any() and ((windows == windows.max(1, keepdims=True)).sum(1) > 1).mean() > 0.5
    # nan_table: one NaN, in the top-left 2x2 window beside that window's largest number 5; the top-right
    # window holds two tied 3s
    nt = np.asarray(gc.nan_table())[0, :, :, 0]
    assert np.argwhere(np.isnan(nt)).tolist() == [[0, 1]] and np.nanmax(nt[:2, :2]) == 5
    assert np.sort(nt[:2, 2:].ravel()).tolist() == [0, 1, 3, 3]
    # neginf_table: pooled with window 2, one window all -inf, one mixed (the top-right: max 2), two finite
    nit = np.asarray(gc.neginf_table())[0, :, :, 0]
    windows = nit.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(4, 4)
    assert np.isneginf(windows).sum(1).tolist() == [4, 1, 0, 0]
    np.testing.assert_array_equal(np.asarray(max_pool2d(gc.neginf_table(), 2))[0, :, :, 0], windows.max(1).reshape(2, 2))


def test_a_nan_vjp_never_passes_and_every_argument_is_checked():
    """Before: fd_projection passed a VJP that returned NaN (max(nan, x) is nan, so its relative error
    became 0), and a short eps / names list silently dropped the arguments past its end."""
    @jax.custom_vjp
    def double(x):
        return 2 * x

    double.defvjp(lambda x: (2 * x, None), lambda _, c: (c * jnp.nan,))
    x = jnp.arange(4.0, dtype=jnp.float64)
    (res,) = gc.fd_projection(double, [x])
    assert not res.passed and res.max_rel == np.inf
    (ok,) = gc.fd_projection(lambda x: 2 * x, [x])
    assert ok.passed  # the same function with autodiff's VJP
    mul, xw = (lambda x, w: x * w), [x, x + 1]
    for call, match in [(lambda: gc.fd_projection(mul, xw, eps=[1.0]), r"eps must be one step or one per argument \(2\)"),
                        (lambda: gc.fd_projection(mul, xw, names=["x"]), r"names must hold one str per argument \(2\)"),
                        (lambda: gc.full_jacobian(mul, xw, eps=[1.0, 1.0, 1.0]), "eps must be one step or one per"),
                        (lambda: gc.second_order(mul, xw, names="x"), "names must hold one str per argument"),
                        (lambda: gc.agreement(mul, mul, xw, names=["x"]), "names must hold one str per argument"),
                        (lambda: gc.fd_projection(mul, xw, eps=0.0), "eps must be a positive float, got 0.0"),
                        (lambda: gc.agreement(lambda x: x, lambda x: x[:2], [x]),
                         r"f and g must return one array of the same shape: .*\(4,\).*\(2,\)"),
                        (lambda: gc.compare(np.array([True]), np.array([False])), "floating dtype, got dtype bool")]:
        with pytest.raises((ValueError, TypeError), match=match):
            call()
    assert [r.arg for r in gc.fd_projection(mul, xw, names="xw")] == ["x", "w"]  # a str of one-letter names


def test_ulps_past_the_dtypes_largest_number_are_infinite_not_nan():
    """A float32 reference of scale 1e39 has no float32 ULP: an error there is infinitely many ULPs (was nan)."""
    errs = gc.compare(np.float32([3e38]), np.float64([1e39]), jnp.float32)
    assert errs.max_ulp == np.inf and errs.max_rel == pytest.approx(0.7)
    assert gc.compare(np.float64([1e39]), np.float64([1e39]), jnp.float32).max_ulp == 0.0
