"""Tests for pooling in 1 and 3 spatial dimensions (fcnn/ops/pool.py on fcnn/ops/pool_nd.py's core),
global pools in any rank and adaptive pools, against NumPy loops written from the formulas, JAX's
own autodiff, finite differences (``check_grads``) and hand-computed windows. The 2-D grid is in
tests/_pool_refs.py, checked by tests/test_pool_forward.py (values) and tests/test_pool.py (gradients)."""
import itertools
import math

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from fcnn import shapes  # noqa: E402
from fcnn.ops import pool, pool_nd  # noqa: E402

IMPL_TIES = [("lax", "first"), ("reference", "split"), ("custom_vjp", "first")]


def _perm(shape, seed=0, dtype=np.float64):
    """Tie-free input: a random permutation of 0..size-1 (exact in bfloat16 up to 256)."""
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape).astype(dtype)


def _cf(a):
    return np.moveaxis(a, -1, 1)  # channels-last -> channels-first


def _np_geometry(in_sizes, window, stride, padding, dilation):
    """Pads and output sizes from the formulas, written out independently (channels-last)."""
    if padding == "VALID":
        pads = [(0, 0)] * len(in_sizes)
    elif padding == "SAME":
        pads = []
        for n, k, s, d in zip(in_sizes, window, stride, dilation):
            total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
            pads.append((total // 2, total - total // 2))
    else:
        pads = list(padding)
    out = [(n + sum(p) - d * (k - 1) - 1) // s + 1 for n, p, k, s, d in zip(in_sizes, pads, window, stride, dilation)]
    return pads, out


def _np_windows(x, window, stride, padding, dilation):
    """Yields (out index, channel, real cells [(value, input index)] in row-major window order, size)."""
    in_sizes = x.shape[1:-1]
    pads, out = _np_geometry(in_sizes, window, stride, padding, dilation)
    for b, o in itertools.product(range(x.shape[0]), itertools.product(*map(range, out))):
        for ch in range(x.shape[-1]):
            cells = []
            for t in itertools.product(*map(range, window)):
                i = tuple(oo * s + tt * d - p[0] for oo, s, tt, d, p in zip(o, stride, t, dilation, pads))
                if all(0 <= v < n for v, n in zip(i, in_sizes)):
                    cells.append((x[(b, *i, ch)], (b, *i, ch)))
            yield (b, *o, ch), cells, int(np.prod(window))


def np_max_pool(x, window, stride, padding, dilation):
    pads, out = _np_geometry(x.shape[1:-1], window, stride, padding, dilation)
    y = np.full((x.shape[0], *out, x.shape[-1]), -np.inf)
    for idx, cells, _ in _np_windows(x, window, stride, padding, dilation):
        if cells:
            y[idx] = max(v for v, _ in cells)
    return y


def np_max_pool_grad(x, g, window, stride, padding, dilation, ties="first"):
    dx = np.zeros(x.shape)
    for idx, cells, _ in _np_windows(x, window, stride, padding, dilation):
        if cells:
            top = max(v for v, _ in cells)
            winners = [i for v, i in cells if v == top]
            winners = winners[:1] if ties == "first" else winners
            for i in winners:
                dx[i] += g[idx] / (len(winners) if ties == "split" else 1)
    return dx


def np_avg_pool(x, window, stride, padding, count_include_pad):
    pads, out = _np_geometry(x.shape[1:-1], window, stride, padding, (1,) * len(window))
    y = np.zeros((x.shape[0], *out, x.shape[-1]))
    for idx, cells, full in _np_windows(x, window, stride, padding, (1,) * len(window)):
        y[idx] = sum(v for v, _ in cells) / (full if count_include_pad else max(len(cells), 1))
    return y


# per rank: shapes, windows 1-4, strides 1-3 mixed, dilation, every padding form, both layouts
CASES = {
    1: dict(shape=(2, 11, 2), windows=[(1,), (2,), (3,), (4,)], strides=[(1,), (2,), (3,)],
            paddings=["VALID", "SAME", ((1, 2),)], dilations=[(1,), (2,)]),
    3: dict(shape=(1, 5, 6, 7, 2), windows=[(1, 2, 3), (2, 2, 2), (3, 1, 2), (4, 3, 2)],
            strides=[(1, 1, 1), (2, 1, 3), (3, 2, 1)], paddings=["VALID", "SAME", ((1, 0), (0, 1), (1, 1))],
            dilations=[(1, 1, 1), (2, 1, 2)]),
}


def _grid():
    params = []
    for rank, c in CASES.items():
        combos = itertools.product(enumerate(c["windows"]), enumerate(c["strides"]), enumerate(c["paddings"]),
                                   enumerate(c["dilations"]), enumerate(("last", "first")))
        for (wi, w), (si, s), (pi, p), (di, d), (li, fam) in combos:
            # the default slice: padding (w + s) mod 3, dilation (w + p) mod 2, layout (p + w // 2) mod 2
            default = pi == (wi + si) % 3 and di == (wi + pi) % 2 and li == (pi + wi // 2) % 2
            sizes = c["shape"][1:-1]
            _, out = _np_geometry(sizes, w, s, p, d)
            if min(out) < 1:
                continue
            pid = f"r{rank}-w{w}-s{s}-p{p if isinstance(p, str) else 'expl'}-d{d}-{fam}"
            params.append(pytest.param(rank, w, s, p, d, fam, id=pid,
                                       marks=() if default else (pytest.mark.slow,)))
    return params


GRID = _grid()


def _layout(rank, fam):
    return shapes.LAYOUTS_BY_RANK[rank][0 if fam == "last" else 1]


@pytest.mark.parametrize("rank,window,stride,padding,dilation,fam", GRID)
def test_max_pool_nd_every_impl_matches_numpy(rank, window, stride, padding, dilation, fam):
    """Forward of every impl == NumPy loop; custom_vjp's gradient == NumPy routing == the other impls'
    autodiff (lax without dilation; the reference, tie-free, everywhere)."""
    x = _perm(CASES[rank]["shape"], seed=rank)
    want = np_max_pool(x, window, stride, padding, dilation)
    g = np.random.default_rng(3).integers(1, 6, size=want.shape).astype(np.float64)
    want_dx = np_max_pool_grad(x, g, window, stride, padding, dilation)
    layout = _layout(rank, fam)
    if fam == "first":
        x, want, g, want_dx = _cf(x), _cf(want), _cf(g), _cf(want_dx)
    kw = dict(stride=stride, padding=padding, dilation=dilation, layout=layout)
    impls = [(i, t) for i, t in IMPL_TIES if not (i == "lax" and max(dilation) > 1)]

    @jax.jit
    def run(x, g):
        outs = []
        for impl, ties in impls:
            y, vjp = jax.vjp(lambda v, i=impl, t=ties: pool.max_pool(v, window, impl=i, ties=t, **kw), x)
            outs.append((y, vjp(g)[0]))
        return outs

    assert shapes.pool_output_shape(x.shape, window, stride=stride, padding=padding, dilation=dilation,
                                    layout=layout) == want.shape
    for (impl, _), (y, dx) in zip(impls, run(x, g)):
        np.testing.assert_array_equal(np.asarray(y), want, err_msg=impl)
        np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-12, atol=0, err_msg=impl)


@pytest.mark.parametrize("rank,window,stride,padding,dilation,fam", [p for i, p in enumerate(GRID) if i % 4 == 0])
def test_tie_policies_nd_match_numpy_routing(rank, window, stride, padding, dilation, fam):
    x = np.random.default_rng(6).integers(0, 3, size=CASES[rank]["shape"]).astype(np.float64)
    y = np_max_pool(x, window, stride, padding, dilation)
    g = np.random.default_rng(7).integers(1, 6, size=y.shape).astype(np.float64)
    fns = [lambda v, t=t: pool.max_pool(v, window, stride=stride, padding=padding, dilation=dilation,
                                        impl="custom_vjp", ties=t) for t in pool.TIE_POLICIES]
    got = jax.jit(lambda x, g: [jax.vjp(f, x)[1](g)[0] for f in fns])(x, g)
    for ties, dx in zip(pool.TIE_POLICIES, got):
        np.testing.assert_allclose(np.asarray(dx), np_max_pool_grad(x, g, window, stride, padding, dilation, ties),
                                   rtol=1e-14, err_msg=ties)


@pytest.mark.parametrize("rank,window,stride,padding", [
    (1, (3,), (2,), "SAME"), (3, (2, 3, 2), (1, 2, 1), ((1, 0), (0, 1), (1, 1))),
    pytest.param(1, (4,), (1,), ((1, 2),), marks=pytest.mark.slow),
    pytest.param(3, (2, 2, 2), (2, 2, 2), "VALID", marks=pytest.mark.slow)])
def test_avg_pool_nd_matches_numpy(rank, window, stride, padding):
    x = np.random.default_rng(1).normal(size=CASES[rank]["shape"])
    cases = list(itertools.product(("lax", "reference"), (True, False)))
    run = jax.jit(lambda x: [pool.avg_pool(x, window, stride=stride, padding=padding, count_include_pad=c, impl=i)
                             for i, c in cases])
    for (impl, incl), y in zip(cases, run(x)):
        np.testing.assert_allclose(np.asarray(y), np_avg_pool(x, window, stride, padding, incl), rtol=1e-12,
                                   err_msg=f"{impl} {incl}")


def test_rank_names_are_the_generic_op():
    x1, x3 = _perm((2, 9, 3)), _perm((1, 4, 5, 6, 2))
    np.testing.assert_array_equal(pool.max_pool1d(x1, 2, stride=1), pool.max_pool(x1, 2, stride=1))
    np.testing.assert_array_equal(pool.max_pool1d(_cf(x1), 3, layout="NCW"), _cf(np_max_pool(x1, (3,), (3,), "VALID", (1,))))
    np.testing.assert_array_equal(pool.max_pool3d(x3, 2, impl="custom_vjp"), np_max_pool(x3, (2,) * 3, (2,) * 3, "VALID", (1,) * 3))
    np.testing.assert_allclose(pool.avg_pool1d(x1, 3, padding="SAME", count_include_pad=False),
                               np_avg_pool(x1, (3,), (3,), "SAME", False), rtol=1e-13)
    np.testing.assert_allclose(pool.avg_pool3d(_cf(x3), 2, layout="NCDHW"), _cf(np_avg_pool(x3, (2,) * 3, (2,) * 3, "VALID", True)),
                               rtol=1e-13)


@pytest.mark.parametrize("shape,layout,axes", [  # by default each rank once, both layout families; the rest -m slow
    ((2, 7, 3), "NWC", (1,)), pytest.param((2, 3, 7), "NCW", (2,), marks=pytest.mark.slow),
    pytest.param((1, 3, 4, 5, 2), "NDHWC", (1, 2, 3), marks=pytest.mark.slow), ((1, 2, 3, 4, 5), "NCDHW", (2, 3, 4))])
def test_global_pools_any_rank(shape, layout, axes):
    x = np.random.default_rng(2).normal(size=shape)
    np.testing.assert_allclose(pool.global_avg_pool(x, layout=layout), x.mean(axis=axes), rtol=1e-13)
    np.testing.assert_array_equal(pool.global_max_pool(x, layout=layout), x.max(axis=axes))
    g = jax.grad(lambda v: jnp.sum(pool.global_max_pool(v, layout=layout)))(x)
    # the gradient is 1 at each (example, channel)'s maximum (tie-free normal values) and 0 elsewhere
    want = (x == x.max(axis=axes, keepdims=True)).astype(np.float64)
    assert want.sum() == x.size // int(np.prod([shape[a] for a in axes]))  # one maximum each
    np.testing.assert_array_equal(np.asarray(g), want)


def test_global_avg_pool_refuses_an_input_without_pixels():
    for fn, x in [(pool.global_avg_pool2d, np.zeros((1, 0, 8, 3))), (pool.global_avg_pool, np.zeros((1, 0, 4))),
                  (pool.global_max_pool, np.zeros((1, 2, 0, 3, 1)))]:
        with pytest.raises(ValueError, match="x must have non-empty spatial dimensions"):
            fn(x)


# ----------------------------------------------------------------------------- adaptive
def np_adaptive(x, out_sizes, op):
    """NumPy loop of PyTorch's rule, written from the formula (not shapes.adaptive_pool_windows)."""
    in_sizes = x.shape[1:-1]
    y = np.zeros((x.shape[0], *out_sizes, x.shape[-1]))
    for o in itertools.product(*map(range, out_sizes)):
        sl = tuple(slice(int(np.floor(i * n / m)), int(np.ceil((i + 1) * n / m))) for i, n, m in zip(o, in_sizes, out_sizes))
        win = x[(slice(None),) + sl + (slice(None),)]
        y[(slice(None), *o, slice(None))] = op(win.reshape(x.shape[0], -1, x.shape[-1]), axis=1)
    return y


def test_adaptive_windows_by_hand():
    # in = 5, out = 3: [floor(0), ceil(5/3)) = [0, 2), [floor(5/3), ceil(10/3)) = [1, 4), [floor(10/3), 5) = [3, 5)
    assert shapes.adaptive_pool_windows(5, 3) == [(0, 2), (1, 4), (3, 5)]
    x = np.array([1.0, 5.0, 2.0, 4.0, 3.0]).reshape(1, 5, 1)
    np.testing.assert_allclose(pool.adaptive_avg_pool(x, 3)[0, :, 0], [3.0, 11 / 3, 3.5], rtol=1e-15)
    np.testing.assert_array_equal(pool.adaptive_max_pool(x, 3)[0, :, 0], [5.0, 5.0, 4.0])
    # the 5 wins two overlapping windows: its gradient is the sum of theirs
    dx = jax.grad(lambda v: jnp.sum(pool.adaptive_max_pool(v, 3) * jnp.array([1.0, 10.0, 100.0])[None, :, None]))(x)
    np.testing.assert_array_equal(dx[0, :, 0], [0, 11, 0, 100, 0])


@pytest.mark.parametrize("shape,out,layout", [  # by default each rank once, both layout families; the rest -m slow
    ((2, 7, 3), (3,), "NWC"), pytest.param((2, 3, 4), (6,), "NCW", marks=pytest.mark.slow),
    pytest.param((1, 5, 7, 2), (3, 4), "NHWC", marks=pytest.mark.slow), ((1, 2, 6, 5), (4, 2), "NCHW"),
    ((1, 5, 4, 7, 2), (2, 3, 3), "NDHWC")])
def test_adaptive_pools_match_numpy_loop(shape, out, layout):
    x = _perm(shape, seed=5)
    xc = x if shapes.is_channels_last(layout) else np.moveaxis(x, 1, -1)
    conv = (lambda a: a) if shapes.is_channels_last(layout) else _cf
    np.testing.assert_allclose(pool.adaptive_avg_pool(x, out, layout=layout), conv(np_adaptive(xc, out, np.mean)),
                               rtol=1e-13)
    np.testing.assert_array_equal(pool.adaptive_max_pool(x, out, layout=layout), conv(np_adaptive(xc, out, np.max)))
    check_grads(jax.jit(lambda v: pool.adaptive_avg_pool(v, out, layout=layout)), (x,), order=2, modes=["rev"])
    check_grads(jax.jit(lambda v: pool.adaptive_max_pool(v, out, layout=layout)), (x,), order=2, modes=["rev"],
                eps=1e-2)


def test_adaptive_max_ties_nan_and_minus_inf():
    x = np.array([2.0, 2.0, -np.inf, -np.inf, np.nan, 1.0, np.nan]).reshape(1, 7, 1)
    fn = lambda v: pool.adaptive_max_pool(v, 3)  # windows [0, 3), [2, 5), [4, 7)  # noqa: E731
    y, vjp = jax.vjp(fn, x)
    np.testing.assert_array_equal(y[0, :, 0], [2.0, np.nan, np.nan])
    dx = vjp(jnp.array([1.0, 10.0, 100.0]).reshape(1, 3, 1))[0]
    np.testing.assert_array_equal(dx[0, :, 0], [1, 0, 0, 0, 110, 0, 0])  # first tie; the first NaN
    y2 = pool.adaptive_max_pool(np.full((1, 4, 1), -np.inf), 2)
    assert np.all(y2 == -np.inf)


# ----------------------------------------------------------------------------- gradients, transformations
@pytest.mark.parametrize("shape,window,stride,padding,dilation", [
    ((1, 9, 2), 3, 2, "SAME", 1), ((1, 5, 4, 6, 1), (2, 2, 3), 1, ((1, 0), (0, 1), (1, 1)), (1, 2, 1)),
    pytest.param((1, 6, 4, 4, 1), 2, None, "VALID", 1, marks=pytest.mark.slow)])
def test_check_grads_second_order_custom_vjp_nd(shape, window, stride, padding, dilation):
    x = _perm(shape, seed=8)
    fn = lambda v: pool.max_pool(v, window, stride=stride, padding=padding, dilation=dilation,  # noqa: E731
                                 impl="custom_vjp")
    check_grads(jax.jit(fn), (x,), order=2, modes=["rev"], eps=1e-2)


@pytest.mark.parametrize("shape, dtype", [  # a leading vmap axis; by default each rank and each dtype once
    pytest.param(shape, d, id=f"r{len(shape) - 3}-{jnp.dtype(d).name}",
                 marks=() if (len(shape) - 3, d) in ((1, jnp.float32), (1, jnp.bfloat16), (3, jnp.float64)) else
                 pytest.mark.slow)
    for shape in [(3, 2, 9, 2), (3, 1, 4, 5, 4, 1)] for d in (jnp.float32, jnp.float64, jnp.bfloat16)])
def test_jit_vmap_grad_dtypes_nd(shape, dtype):
    x64 = _perm(shape, seed=11)
    rank = len(shape) - 3
    fn = lambda v: jnp.sum(pool.max_pool(v, 2, stride=1, padding="SAME", impl="custom_vjp") ** 2)  # noqa: E731
    got = jax.jit(jax.vmap(jax.grad(fn)))(jnp.asarray(x64, dtype))
    assert got.dtype == dtype
    w, s = (2,) * rank, (1,) * rank
    want = np.stack([np_max_pool_grad(x, 2 * np_max_pool(x, w, s, "SAME", s), w, s, "SAME", s) for x in x64])
    if dtype == jnp.bfloat16:  # sums of squares past 256 are rounded in bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-2)
    else:
        np.testing.assert_array_equal(np.asarray(got, np.float64), want)
    avg = jax.jit(jax.vmap(lambda v: pool.adaptive_avg_pool(v, 2)))(jnp.asarray(x64, dtype))
    tol = {jnp.bfloat16: 1e-2, jnp.float32: 1e-6, jnp.float64: 1e-14}[dtype]
    np.testing.assert_allclose(np.asarray(avg, np.float64), np.stack([np_adaptive(x, (2,) * rank, np.mean) for x in x64]),
                               rtol=tol)


def test_tiled_fast_path_nd_equals_general_path():
    x = np.random.default_rng(7).integers(0, 3, size=(1, 5, 4, 7, 2)).astype(np.float64)
    w, pads = (2, 2, 3), ((0, 0),) * 3
    fns = [lambda v, p=p: pool._max_pool_custom(v, w, w, pads, (1, 1, 1), "first", path=p) for p in ("tiled", "general")]
    g = np.ones(fns[0](x).shape)
    a, b = jax.jit(lambda x: [jax.vjp(f, x)[1](g)[0] for f in fns])(x)
    np.testing.assert_array_equal(a, b)
    assert pool_nd.tiles(w, w, pads, (1, 1, 1)) and not pool_nd.tiles(w, (1, 2, 3), pads, (1, 1, 1))


BAD = [
    ("layout", lambda: pool.max_pool1d(np.zeros((1, 4, 1)), 2, layout="NHWC")),
    ("x must have rank 3", lambda: pool.max_pool1d(np.zeros((1, 4, 4, 1)), 2)),
    ("x must have rank 5", lambda: pool.avg_pool3d(np.zeros((1, 4, 4, 1)), 2)),
    ("x must have rank 4 to match layout", lambda: pool.max_pool(np.zeros((1, 4, 1)), 2, layout="NHWC")),
    ("window", lambda: pool.max_pool(np.zeros((1, 4, 4, 4, 1)), (2, 2))),
    ("1, 2 or 3 spatial", lambda: pool.max_pool(np.zeros((4, 1)), 2)),
    ("output_size", lambda: pool.adaptive_avg_pool(np.zeros((1, 4, 1)), 0)),
    ("output_size", lambda: pool.adaptive_max_pool(np.zeros((1, 4, 4, 1)), (2, 2, 2))),
    ("x must have a floating dtype", lambda: pool.adaptive_max_pool(np.zeros((1, 4, 1), np.int32), 2)),
    ("non-empty", lambda: pool.adaptive_avg_pool(np.zeros((1, 0, 1)), 2)),
]


@pytest.mark.parametrize("match,call", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_nd(match, call):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("shape,window", [((3, 4, 8), (4,)), ((2, 9, 6), (9,)), ((2, 3, 2, 3), (3, 2)),
                                          ((2, 2, 3, 2, 3), (2, 3, 2))])
def test_first_max_mask_marks_the_first_maximum_or_first_nan_of_each_window(shape, window):
    """Against a loop by hand over each window's cells in row-major order: the first cell equal to
    the window's maximum, or its first NaN when it holds one (the forward max propagates NaN),
    with ties from small integers and a window of -inf. x is (n, *spatial, c) with one window per
    spatial dimension here, viewed free as (n, 1, k1, ..., 1, kd, c)."""
    x = np.random.RandomState(3).randint(0, 3, size=shape).astype(np.float32)
    x[0, ..., 0] = -np.inf  # every cell ties at -inf
    x[1, ..., 1] = 1.0
    x.reshape(shape[0], -1, shape[-1])[1, 1, 1] = np.nan
    x.reshape(shape[0], -1, shape[-1])[1, -1, 1] = np.nan  # the first NaN wins, not the later one
    want = np.zeros(shape, bool)
    for n, c in itertools.product(range(shape[0]), range(shape[-1])):
        cells = [float(v) for v in x[n, ..., c].reshape(-1)]  # row-major window order
        nans = [k for k, v in enumerate(cells) if v != v]
        first = nans[0] if nans else cells.index(max(cells))
        want[(n, *np.unravel_index(first, window), c)] = True
    free = (shape[0], *(v for k in window for v in (1, k)), shape[-1])
    got = np.asarray(pool_nd.first_max_mask(jnp.reshape(jnp.asarray(x), free)))
    np.testing.assert_array_equal(got.reshape(shape), want)


@pytest.mark.parametrize("in_sizes,window", [((7,), (3,)), ((5, 7), (2, 3)), ((4, 5, 3), (2, 2, 3))])
def test_free_view_window_cells_and_their_inverses_by_hand(in_sizes, window):
    """free_view[n, o1, k1, ..., c] = x[n, o1*w1 + k1, ..., c]; window_cells puts a window's cells on
    one axis in row-major window order; free_view_of_cells undoes window_cells; from_free_view
    puts a free view back, zeros in the cells no window covers."""
    n, c = 2, 3
    x = np.arange(n * math.prod(in_sizes) * c, dtype=np.float32).reshape(n, *in_sizes, c)
    out = tuple(s // k for s, k in zip(in_sizes, window))
    xv = pool_nd.free_view(jnp.asarray(x), out, window)
    cells = pool_nd.window_cells(xv)
    assert xv.shape == (n, *(v for o, k in zip(out, window) for v in (o, k)), c)
    assert cells.shape == (n, *out, math.prod(window), c)
    for o in itertools.product(*map(range, out)):
        for t, k in enumerate(itertools.product(*map(range, window))):
            pixel = tuple(oi * wi + ki for oi, wi, ki in zip(o, window, k))
            free_index = tuple(v for oi, ki in zip(o, k) for v in (oi, ki))
            np.testing.assert_array_equal(np.asarray(xv)[(slice(None), *free_index)], x[(slice(None), *pixel)])
            np.testing.assert_array_equal(np.asarray(cells)[(slice(None), *o, t)], x[(slice(None), *pixel)])
    np.testing.assert_array_equal(np.asarray(pool_nd.free_view_of_cells(cells, window)), np.asarray(xv))
    back = np.asarray(pool_nd.from_free_view(xv, x.shape))
    covered = tuple(slice(0, o * k) for o, k in zip(out, window))
    want = np.zeros_like(x)
    want[(slice(None), *covered)] = x[(slice(None), *covered)]
    np.testing.assert_array_equal(back, want)
