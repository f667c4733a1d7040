"""Tests for fcnn/ops/pool.py against independent references.

References: plain numpy loops over windows (forward, and the backward's gradient routing
under each tie policy), JAX's own autodiff of ``lax.reduce_window``, finite differences
(``check_grads``) and hand-computed tables. Grid from /work/shared/GRADCHECK.md.
"""
import itertools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from fcnn import shapes  # noqa: E402
from fcnn.ops import pool  # noqa: E402

X_SHAPE = (2, 6, 7, 3)  # NHWC
WINDOWS = [(2, 2), (3, 3), (3, 2), (2, 1)]
STRIDES = ["overlap", "window", (2, 1)]
PADDINGS = ["VALID", "SAME", ((0, 1), (1, 0))]
DILATIONS = [1, 2]
GRID = list(itertools.product(WINDOWS, STRIDES, PADDINGS, DILATIONS))
GRID_IDS = [f"w{w[0]}x{w[1]}-s{s}-p{p if isinstance(p, str) else 'expl'}-d{d}" for w, s, p, d in GRID]


def _stride(stride, window):
    return {"overlap": 1, "window": None}.get(stride, stride) if isinstance(stride, str) else stride


def _perm(shape, seed=0, dtype=np.float64):
    """Tie-free input: a random permutation of 0..size-1 (exact in bfloat16 up to 256)."""
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape).astype(dtype)


def _explicit_geometry(x_shape, window, stride, padding, dilation):
    """Independent geometry for the numpy references (NHWC), written out from the formulas."""
    kh, kw = window
    sh, sw = window if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    h, w = x_shape[1:3]
    if padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif padding == "SAME":
        pads = []
        for n_in, k, s, d in ((h, kh, sh, dh), (w, kw, sw, dw)):
            total = max((-(-n_in // s) - 1) * s + d * (k - 1) + 1 - n_in, 0)
            pads.append((total // 2, total - total // 2))
        pads = tuple(pads)
    else:
        pads = padding
    oh = (h + sum(pads[0]) - dh * (kh - 1) - 1) // sh + 1
    ow = (w + sum(pads[1]) - dw * (kw - 1) - 1) // sw + 1
    return (sh, sw), (dh, dw), pads, (oh, ow)


def _np_windows(x, window, stride, padding, dilation):
    """Yields (b, i, j, ch, cells) where cells lists (value, row, col) of real cells in window order."""
    (sh, sw), (dh, dw), pads, (oh, ow) = _explicit_geometry(x.shape, window, stride, padding, dilation)
    n, h, w, c = x.shape
    for b, i, j, ch in itertools.product(range(n), range(oh), range(ow), range(c)):
        cells = []
        for a, e in itertools.product(range(window[0]), range(window[1])):
            r, q = i * sh + a * dh - pads[0][0], j * sw + e * dw - pads[1][0]
            if 0 <= r < h and 0 <= q < w:
                cells.append((x[b, r, q, ch], r, q))
        yield b, i, j, ch, cells, window[0] * window[1]


def np_max_pool(x, window, stride, padding, dilation):
    """Numpy loop: max of real cells, -inf if none (NHWC)."""
    _, _, _, (oh, ow) = _explicit_geometry(x.shape, window, stride, padding, dilation)
    y = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf)
    for b, i, j, ch, cells, _ in _np_windows(x, window, stride, padding, dilation):
        if cells:
            y[b, i, j, ch] = max(v for v, _, _ in cells)
    return y


def np_max_pool_grad(x, g, window, stride, padding, dilation, ties="first"):
    """Numpy hand routing of the max-pool gradient to the real maxima under a tie policy."""
    dx = np.zeros(x.shape)
    for b, i, j, ch, cells, _ in _np_windows(x, window, stride, padding, dilation):
        if not cells:
            continue
        top = max(v for v, _, _ in cells)
        winners = [(r, q) for v, r, q in cells if v == top]
        if ties == "first":
            winners = winners[:1]
        share = g[b, i, j, ch] / (len(winners) if ties == "split" else 1)
        for r, q in winners:
            dx[b, r, q, ch] += share
    return dx


def np_avg_pool(x, window, stride, padding, count_include_pad):
    _, _, _, (oh, ow) = _explicit_geometry(x.shape, window, stride, padding, 1)
    y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for b, i, j, ch, cells, full in _np_windows(x, window, stride, padding, 1):
        y[b, i, j, ch] = sum(v for v, _, _ in cells) / (full if count_include_pad else max(len(cells), 1))
    return y


def _nchw(a):
    return np.transpose(a, (0, 3, 1, 2))


IMPL_TIES = [("lax", "first"), ("reference", "split"), ("custom_vjp", "first")]


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("window,stride,padding,dilation", GRID, ids=GRID_IDS)
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_max_pool_forward_matches_numpy_loop(window, stride, padding, dilation, layout):
    x = _perm(X_SHAPE)
    s = _stride(stride, window)
    want = np_max_pool(x, window, s, padding, dilation)
    xin, want = (x, want) if layout == "NHWC" else (_nchw(x), _nchw(want))
    expected_shape = shapes.pool_output_shape(xin.shape, window, stride=s, padding=padding, dilation=dilation, layout=layout)
    assert expected_shape == want.shape
    for impl, ties in IMPL_TIES:
        y = jax.jit(lambda x: pool.max_pool2d(x, window, stride=s, padding=padding, dilation=dilation,  # noqa: B023
                                              layout=layout, impl=impl, ties=ties))(xin)
        assert y.shape == expected_shape, impl
        np.testing.assert_array_equal(np.asarray(y), want, err_msg=impl)


@pytest.mark.parametrize("window,stride,padding", list(itertools.product(WINDOWS, STRIDES, PADDINGS)))
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_forward_matches_numpy_loop(window, stride, padding, count_include_pad):
    x = np.random.default_rng(1).normal(size=X_SHAPE)
    s = _stride(stride, window)
    want = np_avg_pool(x, window, s, padding, count_include_pad)
    for impl in ("lax", "reference"):
        for layout, xin, w in (("NHWC", x, want), ("NCHW", _nchw(x), _nchw(want))):
            y = pool.avg_pool2d(xin, window, stride=s, padding=padding, layout=layout,
                                count_include_pad=count_include_pad, impl=impl)
            assert y.shape == shapes.pool_output_shape(xin.shape, window, stride=s, padding=padding, layout=layout)
            np.testing.assert_allclose(np.asarray(y), w, rtol=1e-12, atol=1e-12, err_msg=f"{impl} {layout}")


def test_avg_pool_border_values_by_hand():
    # x = [[0,1,2],[3,4,5],[6,7,8]], 3x3 window, stride 1, SAME padding (1 on every side).
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    incl = pool.avg_pool2d(x, 3, stride=1, padding="SAME")[0, :, :, 0]
    excl = pool.avg_pool2d(x, 3, stride=1, padding="SAME", count_include_pad=False)[0, :, :, 0]
    # window sums: corner (0,0) 0+1+3+4 = 8, edge (0,1) 0+1+2+3+4+5 = 15, (1,0) 0+1+3+4+6+7 = 21, ...
    sums = np.array([[8, 15, 12], [21, 36, 27], [20, 33, 24]])
    real = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]])  # real cells per window
    np.testing.assert_allclose(incl, sums / 9, rtol=1e-14)
    np.testing.assert_allclose(excl, sums / real, rtol=1e-14)


def test_avg_pool_window_of_only_padding_is_zero_not_nan():
    x = jnp.ones((1, 2, 2, 1))
    y = pool.avg_pool2d(x, 2, padding=((2, 0), (0, 0)), count_include_pad=False)  # rows 0-1 padding
    np.testing.assert_array_equal(np.asarray(y)[0, :, 0, 0], [0.0, 1.0])


def test_global_pools_match_numpy():
    x = np.random.default_rng(2).normal(size=X_SHAPE)
    np.testing.assert_allclose(pool.global_avg_pool2d(x), x.mean(axis=(1, 2)), rtol=1e-13)
    np.testing.assert_array_equal(pool.global_max_pool2d(x), x.max(axis=(1, 2)))
    np.testing.assert_allclose(pool.global_avg_pool2d(_nchw(x), layout="NCHW"), x.mean(axis=(1, 2)), rtol=1e-13)
    np.testing.assert_array_equal(pool.global_max_pool2d(_nchw(x), layout="NCHW"), x.max(axis=(1, 2)))


def test_global_max_pool_gradient_goes_to_first_tied_maximum():
    x = jnp.array([[0.0, 2.0], [2.0, 1.0]]).reshape(1, 2, 2, 1)
    g = jax.grad(lambda x: jnp.sum(pool.global_max_pool2d(x)))(x)
    np.testing.assert_array_equal(g[0, :, :, 0], [[0.0, 1.0], [0.0, 0.0]])


# ----------------------------------------------------------------------------- gradients
def _int_cotangent(shape, seed=3):
    """Small integer cotangents: sums of them are exact, so gradients compare with array_equal."""
    return np.random.default_rng(seed).integers(1, 6, size=shape).astype(np.float64)


def _vjp(fn, x, g):
    """Cotangent g pulled back through fn at x, under jit (one compile instead of many eager ones)."""
    return np.asarray(jax.jit(lambda x, g: jax.vjp(fn, x)[1](g)[0])(x, g))


@pytest.mark.parametrize("window,stride,padding,dilation", GRID, ids=GRID_IDS)
def test_custom_vjp_gradient_exact_on_tie_free_inputs(window, stride, padding, dilation):
    """custom_vjp == jax.grad(lax) (no dilation) or jax.grad(reference) (dilation) == numpy routing."""
    x = _perm(X_SHAPE, seed=4)
    s = _stride(stride, window)
    kw = dict(stride=s, padding=padding, dilation=dilation)
    g = _int_cotangent(np_max_pool(x, window, s, padding, dilation).shape)
    got = _vjp(lambda x: pool.max_pool2d(x, window, impl="custom_vjp", **kw), x, g)
    if dilation == 1:
        want = _vjp(lambda x: pool.max_pool2d(x, window, impl="lax", **kw), x, g)
    else:  # JAX's own reduce_window VJP raises NotImplementedError for window dilation
        want = _vjp(lambda x: pool.max_pool2d(x, window, impl="reference", ties="split", **kw), x, g)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, np_max_pool_grad(x, g, window, s, padding, dilation))


def test_lax_vjp_raises_for_window_dilation():
    x = jnp.asarray(_perm((1, 5, 5, 1)))
    with pytest.raises(NotImplementedError):
        jax.grad(lambda x: jnp.sum(pool.max_pool2d(x, 2, stride=1, dilation=2)))(x)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("window,stride,padding,dilation",
                         [((3, 2), 1, "SAME", 1), ((2, 2), (2, 1), ((0, 1), (1, 0)), 2), ((2, 2), None, "VALID", 1)])
def test_custom_vjp_gradient_nchw(layout, window, stride, padding, dilation):
    x = _perm(X_SHAPE, seed=5)
    g = _int_cotangent(np_max_pool(x, window, stride, padding, dilation).shape)
    want = np_max_pool_grad(x, g, window, stride, padding, dilation)
    xin, gin, want = (x, g, want) if layout == "NHWC" else (_nchw(x), _nchw(g), _nchw(want))
    got = _vjp(lambda x: pool.max_pool2d(x, window, stride=stride, padding=padding, dilation=dilation,
                                         layout=layout, impl="custom_vjp"), xin, gin)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("ties", pool.TIE_POLICIES)
@pytest.mark.parametrize("window,stride,padding,dilation", GRID[::5], ids=GRID_IDS[::5])
def test_tie_policies_match_numpy_routing_on_tie_heavy_inputs(ties, window, stride, padding, dilation):
    """Values in {0, 1, 2}: most windows hold tied maxima."""
    x = np.random.default_rng(6).integers(0, 3, size=X_SHAPE).astype(np.float64)
    s = _stride(stride, window)
    g = _int_cotangent(np_max_pool(x, window, s, padding, dilation).shape)
    got = _vjp(lambda x: pool.max_pool2d(x, window, stride=s, padding=padding, dilation=dilation,
                                         impl="custom_vjp", ties=ties), x, g)
    np.testing.assert_allclose(got, np_max_pool_grad(x, g, window, s, padding, dilation, ties), rtol=1e-14)


@pytest.mark.parametrize("ties", pool.TIE_POLICIES)
@pytest.mark.parametrize("shape,window", [((2, 6, 8, 3), (2, 2)), ((2, 6, 7, 3), (3, 2)), ((1, 7, 5, 2), (2, 1))])
def test_tiled_fast_path_equals_general_path(ties, shape, window):
    """Force both backward paths on tie-heavy inputs (some shapes leave uncovered rows/cols)."""
    x = np.random.default_rng(7).integers(0, 3, size=shape).astype(np.float64)
    pads = ((0, 0), (0, 0))

    def run(path):
        fn = lambda x: pool._max_pool_custom(x, window, window, pads, (1, 1), ties, path=path)  # noqa: E731
        y, vjp = jax.vjp(fn, jnp.asarray(x))
        return np.asarray(y), np.asarray(vjp(_int_cotangent(y.shape))[0])

    (y_t, g_t), (y_g, g_g) = run("tiled"), run("general")
    np.testing.assert_array_equal(y_t, y_g)
    np.testing.assert_array_equal(g_t, g_g)
    g = _int_cotangent(y_t.shape)
    np.testing.assert_allclose(g_t, np_max_pool_grad(x, g, window, None, "VALID", 1, ties), rtol=1e-14)


def test_auto_path_selection():
    assert pool._tiles((2, 6, 8, 3), (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1))
    assert not pool._tiles((2, 6, 8, 3), (2, 2), (1, 1), ((0, 0), (0, 0)), (1, 1))
    assert not pool._tiles((2, 6, 8, 3), (2, 2), (2, 2), ((0, 1), (0, 0)), (1, 1))
    assert not pool._tiles((2, 6, 8, 3), (2, 2), (2, 2), ((0, 0), (0, 0)), (2, 1))
    with pytest.raises(ValueError, match="path"):
        pool._max_pool_custom(jnp.zeros((1, 4, 4, 1)), (2, 2), (1, 1), ((0, 0), (0, 0)), (1, 1), "first", path="tiled")


@pytest.mark.parametrize("window,stride,padding,dilation",
                         [((2, 2), None, "VALID", 1), ((3, 3), 1, "SAME", 1), ((3, 2), (2, 1), ((0, 1), (1, 0)), 2)])
def test_check_grads_second_order_custom_vjp(window, stride, padding, dilation):
    x = _perm((1, 6, 7, 2), seed=8)  # distinct values 1 apart: no max changes within eps
    fn = lambda x: pool.max_pool2d(x, window, stride=stride, padding=padding, dilation=dilation,  # noqa: E731
                                   impl="custom_vjp")
    check_grads(fn, (x,), order=2, modes=["rev"], eps=1e-2)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("impl", ["lax", "reference"])
def test_check_grads_avg_pool(impl, count_include_pad):
    x = np.random.default_rng(9).normal(size=(1, 5, 6, 2))
    fn = lambda x: pool.avg_pool2d(x, (3, 2), stride=(2, 1), padding="SAME",  # noqa: E731
                                   count_include_pad=count_include_pad, impl=impl)
    check_grads(fn, (x,), order=2, modes=["rev"])
