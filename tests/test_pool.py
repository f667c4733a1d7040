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
        y = pool.max_pool2d(xin, window, stride=s, padding=padding, dilation=dilation, layout=layout, impl=impl, ties=ties)
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
