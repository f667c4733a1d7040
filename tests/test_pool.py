"""Tests for fcnn/ops/pool.py against independent references: the gradients.

References: plain numpy loops over windows (the backward's gradient routing under each tie policy),
JAX's own autodiff of ``lax.reduce_window``, finite differences (``check_grads``) and hand-computed
tables. Here: max pool's custom_vjp over the grid, its tie policies, its tiled and general paths,
second-order gradients, the named tie / NaN / padding tables and pool.py's non-finite table, dtypes
and jit / vmap / grad. The forward values and the bad arguments are in tests/test_pool_forward.py;
the grid (from /work/shared/GRADCHECK.md) and the numpy loops in tests/_pool_refs.py.
"""
import functools
import itertools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from _pool_refs import (DILATIONS, GRID, GRID_ARGS, LAYOUTS, PADDINGS, STRIDES, TIE_GRID,  # noqa: E402
                        WINDOWS, X_SHAPE, _nchw, _perm, _stride, np_avg_pool, np_max_pool, np_max_pool_grad)

from fcnn.ops import pool, pool_nd  # noqa: E402


def test_default_grid_is_a_pairwise_cover():
    default = [p.values for p in GRID if not p.marks]
    assert len(GRID) == 144 and len(default) == 12
    axes = [WINDOWS, STRIDES, PADDINGS, DILATIONS, LAYOUTS]
    for a, b in itertools.combinations(range(5), 2):
        want = {(str(u), str(v)) for u in axes[a] for v in axes[b]}
        assert {(str(c[a]), str(c[b])) for c in default} == want, (a, b)


# ----------------------------------------------------------------------------- gradients
def _int_cotangent(shape, seed=3):
    """Small integer cotangents: sums of them are exact, so gradients compare with array_equal."""
    return np.random.default_rng(seed).integers(1, 6, size=shape).astype(np.float64)


def _vjps(fns, x, g):
    """Cotangent g pulled back through each fn at x, under one jit (one compile, not many eager ones)."""
    run = jax.jit(lambda x, g: [jax.vjp(fn, x)[1](g)[0] for fn in fns])
    return [np.asarray(v) for v in run(x, g)]


@pytest.mark.parametrize(GRID_ARGS, GRID)
def test_custom_vjp_gradient_exact_on_tie_free_inputs(window, stride, padding, dilation, layout):
    """custom_vjp == jax.grad(lax) (no dilation) or jax.grad(reference) (dilation) == numpy routing."""
    x = _perm(X_SHAPE, seed=4)
    s = _stride(stride, window)
    g = _int_cotangent(np_max_pool(x, window, s, padding, dilation).shape)
    want_np = np_max_pool_grad(x, g, window, s, padding, dilation)
    if layout == "NCHW":
        x, g, want_np = _nchw(x), _nchw(g), _nchw(want_np)
    kw = dict(stride=s, padding=padding, dilation=dilation, layout=layout)
    # JAX's own reduce_window VJP raises NotImplementedError for window dilation: use the reference
    other = dict(impl="lax") if dilation == 1 else dict(impl="reference", ties="split")
    got, want = _vjps([lambda x: pool.max_pool2d(x, window, impl="custom_vjp", **kw),
                       lambda x: pool.max_pool2d(x, window, **other, **kw)], x, g)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, want_np)


def test_lax_vjp_raises_for_window_dilation():
    x = jnp.asarray(_perm((1, 5, 5, 1)))
    with pytest.raises(NotImplementedError):
        jax.grad(lambda x: jnp.sum(pool.max_pool2d(x, 2, stride=1, dilation=2)))(x)


@pytest.mark.parametrize(GRID_ARGS, TIE_GRID)
def test_tie_policies_match_numpy_routing_on_tie_heavy_inputs(window, stride, padding, dilation, layout):
    """Values in {0, 1, 2}: most windows hold tied maxima; all three policies vs numpy routing."""
    x = np.random.default_rng(6).integers(0, 3, size=X_SHAPE).astype(np.float64)
    s = _stride(stride, window)
    g = _int_cotangent(np_max_pool(x, window, s, padding, dilation).shape)
    fns = [lambda x, t=t: pool.max_pool2d(x, window, stride=s, padding=padding, dilation=dilation,
                                          impl="custom_vjp", ties=t) for t in pool.TIE_POLICIES]
    for ties, got in zip(pool.TIE_POLICIES, _vjps(fns, x, g)):
        want = np_max_pool_grad(x, g, window, s, padding, dilation, ties)
        np.testing.assert_allclose(got, want, rtol=1e-14, err_msg=ties)


@pytest.mark.parametrize("ties", pool.TIE_POLICIES)
@pytest.mark.parametrize("shape,window", [((2, 6, 8, 3), (2, 2)), ((2, 6, 7, 3), (3, 2)), ((1, 7, 5, 2), (2, 1))])
def test_tiled_fast_path_equals_general_path(ties, shape, window):
    """Force both backward paths on tie-heavy inputs (some shapes leave uncovered rows/cols)."""
    x = np.random.default_rng(7).integers(0, 3, size=shape).astype(np.float64)
    pads = ((0, 0), (0, 0))

    fns = [lambda x, p=p: pool._max_pool_custom(x, window, window, pads, (1, 1), ties, path=p)
           for p in ("tiled", "general")]
    y_t, y_g = (np.asarray(fn(x)) for fn in fns)
    np.testing.assert_array_equal(y_t, y_g)
    g = _int_cotangent(y_t.shape)
    g_t, g_g = _vjps(fns, x, g)
    np.testing.assert_array_equal(g_t, g_g)
    np.testing.assert_allclose(g_t, np_max_pool_grad(x, g, window, None, "VALID", 1, ties), rtol=1e-14)
    g = np.array(g)  # non-finite cotangents reach the same cells on both paths, compiled
    g[0, 0, 0, 0], g[-1, -1, -1, -1] = np.nan, np.inf
    g_t, g_g = _vjps(fns, x, g)
    np.testing.assert_array_equal(g_t, g_g)


@pytest.mark.parametrize("ties", ["first", "all"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_tiled_16_bit_pool_in_float32_is_bit_for_bit_the_16_bit_one(dtype, ties):
    """A tiled pool of a 16-bit input runs in float32 and casts back; the general path runs in the
    input's dtype. Values, gradients and dtypes agree bit for bit (ties on the rounded inputs, real
    valued cotangents), so the float32 round trip changes speed only."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 6, 8, 3)), dtype)
    x = x.at[0, 0, 1, 0].set(x[0, 0, 0, 0])  # a tie inside one window
    pads = ((0, 0), (0, 0))
    fns = [lambda x, p=p: pool._max_pool_custom(x, (2, 2), (2, 2), pads, (1, 1), ties, path=p)
           for p in ("auto", "general")]
    g = jnp.asarray(rng.normal(size=(2, 3, 4, 3)), dtype)
    (y_a, dx_a), (y_g, dx_g) = (jax.jit(lambda x, g, f=f: (f(x), jax.vjp(f, x)[1](g)[0]))(x, g) for f in fns)
    assert y_a.dtype == dx_a.dtype == dtype
    for a, b in ((y_a, y_g), (dx_a, dx_g)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_tiled_16_bit_pool_goes_through_float32_on_cpu_only(monkeypatch):
    x = jnp.zeros((1, 4, 4, 2), jnp.bfloat16)
    pads = ((0, 0), (0, 0))

    def float32_values():
        jaxpr = jax.make_jaxpr(lambda x: pool._max_pool_custom(x, (2, 2), (2, 2), pads, (1, 1), "first"))(x)
        return sum(v.aval.dtype == jnp.float32 for e in jaxpr.eqns for v in e.outvars)

    assert float32_values() > 0  # this suite runs on the CPU
    monkeypatch.setattr(pool._auto, "normalize_platform", lambda platform=None: "gpu")
    assert float32_values() == 0


def test_auto_path_selection():
    assert pool_nd.tiles((2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1))
    assert not pool_nd.tiles((2, 2), (1, 1), ((0, 0), (0, 0)), (1, 1))
    assert not pool_nd.tiles((2, 2), (2, 2), ((0, 1), (0, 0)), (1, 1))
    assert not pool_nd.tiles((2, 2), (2, 2), ((0, 0), (0, 0)), (2, 1))
    # max_pool2d's "auto" choice traces to exactly the forced paths' programs
    x = jnp.asarray(_perm((1, 4, 6, 2)))

    def grad_jaxpr(fn):
        return str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(fn(x))))(x))

    auto_tiling = grad_jaxpr(lambda x: pool.max_pool2d(x, 2, impl="custom_vjp"))
    pads0 = ((0, 0), (0, 0))
    assert auto_tiling == grad_jaxpr(lambda x: pool._max_pool_custom(x, (2, 2), (2, 2), pads0, (1, 1), "first", "tiled"))
    assert auto_tiling != grad_jaxpr(lambda x: pool._max_pool_custom(x, (2, 2), (2, 2), pads0, (1, 1), "first", "general"))
    auto_overlap = grad_jaxpr(lambda x: pool.max_pool2d(x, 2, stride=1, impl="custom_vjp"))
    assert auto_overlap == grad_jaxpr(lambda x: pool._max_pool_custom(x, (2, 2), (1, 1), pads0, (1, 1), "first", "general"))
    with pytest.raises(ValueError, match="path"):
        pool._max_pool_custom(jnp.zeros((1, 4, 4, 1)), (2, 2), (1, 1), ((0, 0), (0, 0)), (1, 1), "first", path="tiled")


# JAX's own checker (independent of fcnn.gradcheck); a jitted function halves its time here.
# Default: the tiled fast path and the general path with padding and dilation; the rest -m slow.
@pytest.mark.parametrize("window,stride,padding,dilation", [
    ((2, 2), None, "VALID", 1), pytest.param((3, 3), 1, "SAME", 1, marks=pytest.mark.slow),
    ((3, 2), (2, 1), ((0, 1), (1, 0)), 2), pytest.param((2, 2), 1, "VALID", 2, marks=pytest.mark.slow)])
def test_check_grads_second_order_custom_vjp(window, stride, padding, dilation):
    x = _perm((1, 6, 7, 2), seed=8)  # distinct values 1 apart: no max changes within eps
    fn = lambda x: pool.max_pool2d(x, window, stride=stride, padding=padding, dilation=dilation,  # noqa: E731
                                   impl="custom_vjp")
    check_grads(jax.jit(fn), (x,), order=2, modes=["rev"], eps=1e-2)


@pytest.mark.parametrize("impl,count_include_pad", [
    ("lax", True), ("reference", False), pytest.param("lax", False, marks=pytest.mark.slow),
    pytest.param("reference", True, marks=pytest.mark.slow)])
def test_check_grads_avg_pool(impl, count_include_pad):
    x = np.random.default_rng(9).normal(size=(1, 5, 6, 2))
    fn = lambda x: pool.avg_pool2d(x, (3, 2), stride=(2, 1), padding="SAME",  # noqa: E731
                                   count_include_pad=count_include_pad, impl=impl)
    check_grads(jax.jit(fn), (x,), order=2, modes=["rev"])


# ----------------------------------------------------------------------------- named tie / NaN / padding tables
@functools.lru_cache(maxsize=None)
def _compiled_grad_2x2(ties, path, impl):
    """Gradient of one 2x2 window's output w.r.t. its (1, 2, 2, 1) input, shared by the tables;
    compiled for custom_vjp. lax and reference stay eager: the NaN rows below state eager
    behaviour, and jitted, XLA routes reference's NaN gradient differently (zeros, measured)."""
    if impl != "custom_vjp":
        fn = lambda x: pool.max_pool2d(x, 2, impl=impl, ties=ties)  # noqa: E731
        return jax.grad(lambda x: jnp.sum(fn(x)))
    fn = lambda x: pool._max_pool_custom(x, (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1), ties, path=path)  # noqa: E731
    return jax.jit(jax.grad(lambda x: jnp.sum(fn(x))))


def _grad_2x2(x, ties, path="auto", impl="custom_vjp"):
    """Gradient of the single 2x2 window's output w.r.t. the 2x2 input."""
    x = jnp.asarray(x, jnp.float64).reshape(1, 2, 2, 1)
    return np.asarray(_compiled_grad_2x2(ties, path, impl)(x))[0, :, :, 0]


TIE_TABLES = {
    # all zeros, as after ReLU of negative inputs
    "zeros": ([[0.0, 0.0], [0.0, 0.0]],
              {"first": [[1, 0], [0, 0]], "split": [[.25, .25], [.25, .25]], "all": [[1, 1], [1, 1]]}),
    "three_way": ([[1.0, 3.0], [3.0, 3.0]],
                  {"first": [[0, 1], [0, 0]], "split": [[0, 1 / 3], [1 / 3, 1 / 3]], "all": [[0, 1], [1, 1]]}),
}


@pytest.mark.parametrize("path", ["tiled", "general"])
@pytest.mark.parametrize("ties", pool.TIE_POLICIES)
@pytest.mark.parametrize("table", sorted(TIE_TABLES))
def test_tie_tables_by_hand(table, ties, path):
    x, expected = TIE_TABLES[table]
    if table == "zeros":
        x = jax.nn.relu(-1.0 - jnp.arange(4.0)).reshape(2, 2)  # ReLU of negatives: all zero
    np.testing.assert_allclose(_grad_2x2(x, ties, path), expected[ties], rtol=1e-15)


def test_lax_and_reference_follow_their_declared_tie_policy():
    x, expected = TIE_TABLES["three_way"]
    np.testing.assert_array_equal(_grad_2x2(x, "first", impl="lax"), expected["first"])
    np.testing.assert_allclose(_grad_2x2(x, "split", impl="reference"), expected["split"], rtol=1e-15)


@pytest.mark.parametrize("impl,ties", [("lax", "first"), ("custom_vjp", "first"), ("reference", "split")])
def test_overlapping_windows_accumulate(impl, ties):
    # 3x3 input, 2x2 windows, stride 1: the centre (9) is the max of all four windows, so it
    # receives the sum of the four cotangents 1 + 10 + 100 + 1000 (overwriting would give 1000).
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 9.0, 5.0], [6.0, 7.0, 8.0]]).reshape(1, 3, 3, 1)
    g = jnp.array([[1.0, 10.0], [100.0, 1000.0]]).reshape(1, 2, 2, 1)
    fn = lambda x: pool.max_pool2d(x, 2, stride=1, impl=impl, ties=ties)  # noqa: E731
    pull = jax.jit(lambda x, g: jax.vjp(fn, x)[1](g)[0])  # compiled once, used for both inputs
    dx = pull(x, g)[0, :, :, 0]
    np.testing.assert_array_equal(dx, [[0, 0, 0], [0, 1111, 0], [0, 0, 0]])
    # now 50 (middle right) wins the two right windows and 9 the two left ones
    x2 = jnp.array([[1.0, 2.0, 30.0], [4.0, 9.0, 50.0], [6.0, 7.0, 8.0]]).reshape(1, 3, 3, 1)
    dx2 = pull(x2, g)[0, :, :, 0]
    # windows: TL -> 9 (g=1), TR -> 50 (g=10), BL -> 9 (g=100), BR -> 50 (g=1000)
    np.testing.assert_array_equal(dx2, [[0, 0, 0], [0, 101, 1010], [0, 0, 0]])


def test_nan_forward_and_backward():
    x = jnp.array([[1.0, jnp.nan], [3.0, 2.0]]).reshape(1, 2, 2, 1)
    for impl, ties in [("lax", "first"), ("reference", "split"), ("custom_vjp", "first")]:
        assert np.isnan(pool.max_pool2d(x, 2, impl=impl, ties=ties)).all(), impl
    # custom_vjp: the NaN is what the output holds, so it receives the gradient (as PyTorch)
    for ties, want in [("first", [[0, 1], [0, 0]]), ("split", [[0, 1], [0, 0]]), ("all", [[0, 1], [0, 0]])]:
        for path in ("tiled", "general"):
            np.testing.assert_array_equal(_grad_2x2(x, ties, path), want, err_msg=f"{ties} {path}")
    two_nans = jnp.array([[jnp.nan, 1.0], [jnp.nan, 2.0]])
    np.testing.assert_array_equal(_grad_2x2(two_nans, "first"), [[1, 0], [0, 0]])
    np.testing.assert_array_equal(_grad_2x2(two_nans, "split"), [[.5, 0], [.5, 0]])
    # lax (XLA select_and_scatter on jax 0.10.2 CPU): routed to the largest non-NaN value
    np.testing.assert_array_equal(_grad_2x2(x, "first", impl="lax"), [[0, 0], [1, 0]])
    # reference (jnp.max's rule): NaN to every cell of the window
    assert np.isnan(_grad_2x2(x, "split", impl="reference")).all()


@pytest.mark.parametrize("ties", pool.TIE_POLICIES)
def test_all_padding_window_outputs_minus_inf_and_routes_nothing(ties):
    # 2x2 input; 2 rows of top padding; 2x2 windows, stride 2: window 0 is only padding.
    x = jnp.array([[5.0, 6.0], [7.0, 8.0]]).reshape(1, 2, 2, 1)
    fn = lambda x: pool.max_pool2d(x, 2, padding=((2, 0), (0, 0)), impl="custom_vjp", ties=ties)  # noqa: E731
    y, vjp = jax.vjp(fn, x)
    np.testing.assert_array_equal(y[0, :, 0, 0], [-np.inf, 8.0])
    dx0 = vjp(jnp.array([1.0, 0.0]).reshape(1, 2, 1, 1))[0]  # only the all-padding window's cotangent
    np.testing.assert_array_equal(dx0, np.zeros((1, 2, 2, 1)))  # its output is constant: no gradient
    dx1 = vjp(jnp.array([0.0, 1.0]).reshape(1, 2, 1, 1))[0]
    np.testing.assert_array_equal(dx1[0, :, :, 0], [[0, 0], [0, 1]])


@pytest.mark.parametrize("ties,want", [("first", [1, 0]), ("split", [.5, .5]), ("all", [1, 1])])
def test_real_minus_inf_beats_padding_for_the_gradient(ties, want):
    # row of padding above a real row of -inf: max is -inf, padding comes first in window order,
    # but padding never receives gradient, so the real -inf cells do.
    x = jnp.array([-jnp.inf, -jnp.inf]).reshape(1, 1, 2, 1)
    fn = lambda x: pool.max_pool2d(x, 2, padding=((1, 0), (0, 0)), impl="custom_vjp", ties=ties)  # noqa: E731
    y, vjp = jax.vjp(fn, x)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == -np.inf
    np.testing.assert_array_equal(vjp(jnp.ones_like(y))[0][0, 0, :, 0], want)


NONFINITE_IMPLS = [("lax", "first"), ("reference", "split"), ("custom_vjp", "first")]


def _window_grads(x, **kw):
    """Forward and gradient (eager and jitted) of each impl on an NCHW input: pool.py's table."""
    out = {}
    for impl, ties in NONFINITE_IMPLS:
        fn = lambda v, i=impl, t=ties: pool.max_pool2d(v, 2, layout="NCHW", impl=i, ties=t, **kw)  # noqa: E731
        grad = jax.grad(lambda v, f=fn: jnp.sum(f(v)))
        out[impl] = (np.asarray(fn(x)), np.asarray(grad(x))[0, 0], np.asarray(jax.jit(grad)(x))[0, 0])
    return out


def test_nonfinite_table():
    """The rows of pool.py's non-finite table, forward and gradient per impl, eager and jitted."""
    inf, nan = np.inf, np.nan
    # issue 17: -inf cells next to low-side padding (window 2, stride 1, padding 1, NCHW 1x1x3x3)
    x = jnp.array([[-inf, -inf, 1], [-inf, 2, 0], [.5, -inf, -inf]]).reshape(1, 1, 3, 3)
    got = _window_grads(x, stride=1, padding=1)
    for impl, (y, eager, jitted) in got.items():
        np.testing.assert_array_equal(y, got["lax"][0], err_msg=impl)  # same forward
        np.testing.assert_array_equal(eager, jitted, err_msg=impl)
    assert got["custom_vjp"][1][0, 0] == 3 and got["lax"][1][0, 0] == 0  # PyTorch: 3; lax loses it
    assert got["reference"][1][0, 0] == 0.75  # split with the padding, whose share is lost
    np.testing.assert_array_equal(got["custom_vjp"][1] - got["lax"][1], [[3, 0, 0], [0, 0, 0], [0, 0, 0]])
    # real -inf cells with padding after them only (high side): every impl reaches the first real one
    row = jnp.array([-inf, -inf]).reshape(1, 1, 1, 2)
    for pads, want_lax in [(((1, 0), (0, 0)), [0, 0]), (((0, 1), (0, 0)), [1, 0])]:
        got = _window_grads(row, padding=pads)
        np.testing.assert_array_equal(got["lax"][1][0], want_lax)
        np.testing.assert_array_equal(got["custom_vjp"][1][0], [1, 0])
        np.testing.assert_array_equal(got["reference"][1][0], [.25, .25])
    # NaN: forward NaN everywhere; lax follows XLA's >= scan, custom_vjp the first NaN (PyTorch: the last)
    for cells, lax_to, custom_to in [([1, nan, 3, 2], 2, 1), ([nan, 5, nan, 2], 3, 0)]:
        got = _window_grads(jnp.array(cells, jnp.float64).reshape(1, 1, 2, 2))
        for impl, (y, eager, jitted) in got.items():
            assert np.isnan(y).all(), impl
        assert np.argmax(got["lax"][1].ravel()) == lax_to and got["lax"][1].sum() == 1
        assert np.argmax(got["custom_vjp"][1].ravel()) == custom_to and got["custom_vjp"][1].sum() == 1
        assert np.isnan(got["reference"][1]).all() and (got["reference"][2] == 0).all()  # eager NaN, jitted 0
    # ties at +inf: first for lax and custom_vjp, split for reference
    got = _window_grads(jnp.array([[1, inf], [inf, 2]]).reshape(1, 1, 2, 2))
    np.testing.assert_array_equal(got["lax"][1], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(got["custom_vjp"][1], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(got["reference"][1], [[0, .5], [.5, 0]])


# ----------------------------------------------------------------------------- transformations and dtypes
@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.float64, marks=pytest.mark.slow),
                                   jnp.bfloat16])  # float64 values and gradients: the grid tests
def test_dtypes_forward_and_gradient(dtype):
    x64 = _perm(X_SHAPE, seed=11)  # integers < 256: exact in bfloat16
    x = jnp.asarray(x64, dtype)
    want_y = np_max_pool(x64, (3, 3), 1, "SAME", 1)
    g = _int_cotangent(want_y.shape)
    want_g = np_max_pool_grad(x64, g, (3, 3), 1, "SAME", 1)
    for impl, ties in [("lax", "first"), ("reference", "split"), ("custom_vjp", "first")]:
        fn = lambda x: pool.max_pool2d(x, 3, stride=1, padding="SAME", impl=impl, ties=ties)  # noqa: E731
        y, dx = jax.jit(lambda x, g: (fn(x), jax.vjp(fn, x)[1](g)[0]))(x, jnp.asarray(g, dtype))  # noqa: B023
        assert y.dtype == dtype
        np.testing.assert_array_equal(np.asarray(y, np.float64), want_y, err_msg=impl)
        assert dx.dtype == dtype
        np.testing.assert_array_equal(np.asarray(dx, np.float64), want_g, err_msg=impl)
    ya = pool.avg_pool2d(x, 2, stride=1, padding="SAME", count_include_pad=False)
    assert ya.dtype == dtype
    tol = {jnp.bfloat16: 1e-2, jnp.float32: 1e-6, jnp.float64: 1e-13}[dtype]
    np.testing.assert_allclose(np.asarray(ya, np.float64), np_avg_pool(x64, (2, 2), 1, "SAME", False), rtol=tol)


def test_jit_vmap_grad_compose():
    xs = jnp.asarray(_perm((4, 2, 5, 6, 2), seed=12))  # a leading vmap axis over NHWC batches
    fn = lambda x: jnp.sum(pool.max_pool2d(x, 2, stride=1, padding="SAME", impl="custom_vjp") ** 2)  # noqa: E731
    batched = jax.jit(jax.vmap(jax.grad(fn)))(xs)
    grad_one = jax.jit(jax.grad(fn))  # one compile for the loop
    looped = np.stack([np.asarray(grad_one(x)) for x in xs])
    np.testing.assert_array_equal(batched, looped)
    want = np.stack([np_max_pool_grad(np.asarray(x), 2 * np_max_pool(np.asarray(x), (2, 2), 1, "SAME", 1),
                                      (2, 2), 1, "SAME", 1) for x in xs])
    np.testing.assert_array_equal(batched, want)
    avg = jax.jit(jax.vmap(lambda x: pool.avg_pool2d(x, 2, count_include_pad=False)))(xs)
    np.testing.assert_allclose(avg, np.stack([np_avg_pool(np.asarray(x), (2, 2), None, "VALID", False) for x in xs]))
