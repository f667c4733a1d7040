"""Tests for fcnn/ops/pool.py against independent references.

References: plain numpy loops over windows (forward, and the backward's gradient routing
under each tie policy), JAX's own autodiff of ``lax.reduce_window``, finite differences
(``check_grads``) and hand-computed tables. Grid from /work/shared/GRADCHECK.md.
"""
import functools
import itertools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from fcnn import shapes  # noqa: E402
from fcnn.ops import pool, pool_nd  # noqa: E402

X_SHAPE = (2, 6, 7, 3)  # NHWC
WINDOWS = [(2, 2), (3, 3), (3, 2), (2, 1)]
STRIDES = ["overlap", "window", (2, 1)]
PADDINGS = ["VALID", "SAME", ((0, 1), (1, 0))]
DILATIONS = [1, 2]
LAYOUTS = ["NHWC", "NCHW"]


def _grid_id(w, s, p, d, layout):
    return f"w{w[0]}x{w[1]}-s{s}-p{p if isinstance(p, str) else 'expl'}-d{d}-{layout}"


def _default(wi, si, pi, di, li):
    """The default cover: 12 of the 144 cases in which every pair of values of two axes appears
    (padding index (window + stride) mod 3, dilation (window + padding) mod 2, layout
    (padding + window // 2) mod 2; ``test_default_grid_is_a_pairwise_cover`` checks it)."""
    return pi == (wi + si) % 3 and di == (wi + pi) % 2 and li == (pi + wi // 2) % 2


def _grid():
    """The full GRADCHECK grid (144 cases, marked slow) plus the default cover of 12 of them."""
    cases = []
    for (wi, w), (si, s), (pi, p) in itertools.product(enumerate(WINDOWS), enumerate(STRIDES), enumerate(PADDINGS)):
        for (di, d), (li, layout) in itertools.product(enumerate(DILATIONS), enumerate(LAYOUTS)):
            marks = () if _default(wi, si, pi, di, li) else (pytest.mark.slow,)
            cases.append(pytest.param(w, s, p, d, layout, marks=marks, id=_grid_id(w, s, p, d, layout)))
    return cases


GRID = _grid()
GRID_ARGS = "window,stride,padding,dilation,layout"
# tie-heavy inputs: the default cover, and every third case of the grid under -m slow
TIE_GRID = [p for i, p in enumerate(GRID) if not p.marks or i % 3 == 0]


def test_default_grid_is_a_pairwise_cover():
    default = [p.values for p in GRID if not p.marks]
    assert len(GRID) == 144 and len(default) == 12
    axes = [WINDOWS, STRIDES, PADDINGS, DILATIONS, LAYOUTS]
    for a, b in itertools.combinations(range(5), 2):
        want = {(str(u), str(v)) for u in axes[a] for v in axes[b]}
        assert {(str(c[a]), str(c[b])) for c in default} == want, (a, b)


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
@pytest.mark.parametrize(GRID_ARGS, GRID)
def test_max_pool_forward_matches_numpy_loop(window, stride, padding, dilation, layout):
    x = _perm(X_SHAPE)
    s = _stride(stride, window)
    want = np_max_pool(x, window, s, padding, dilation)
    xin, want = (x, want) if layout == "NHWC" else (_nchw(x), _nchw(want))
    expected_shape = shapes.pool_output_shape(xin.shape, window, stride=s, padding=padding, dilation=dilation, layout=layout)
    assert expected_shape == want.shape

    @jax.jit  # one compile for all implementations
    def run(x):
        return [pool.max_pool2d(x, window, stride=s, padding=padding, dilation=dilation, layout=layout,
                                impl=impl, ties=ties) for impl, ties in IMPL_TIES]

    for (impl, _), y in zip(IMPL_TIES, run(xin)):
        assert y.shape == expected_shape, impl
        np.testing.assert_array_equal(np.asarray(y), want, err_msg=impl)


AVG_GRID = [pytest.param(*c, marks=() if i % 2 == 0 else (pytest.mark.slow,))
            for i, c in enumerate(itertools.product(WINDOWS, STRIDES, PADDINGS))]


@pytest.mark.parametrize("window,stride,padding", AVG_GRID)
def test_avg_pool_forward_matches_numpy_loop(window, stride, padding):
    x = np.random.default_rng(1).normal(size=X_SHAPE)
    s = _stride(stride, window)
    cases = list(itertools.product(("lax", "reference"), ("NHWC", "NCHW"), (True, False)))

    @jax.jit  # one compile for all cases
    def run(x):
        return [pool.avg_pool2d(x if layout == "NHWC" else jnp.transpose(x, (0, 3, 1, 2)), window, stride=s,
                                padding=padding, layout=layout, count_include_pad=incl, impl=impl)
                for impl, layout, incl in cases]

    for (impl, layout, incl), y in zip(cases, run(x)):
        want = np_avg_pool(x, window, s, padding, incl)
        w = want if layout == "NHWC" else _nchw(want)
        xs = X_SHAPE if layout == "NHWC" else _nchw(x).shape
        assert y.shape == shapes.pool_output_shape(xs, window, stride=s, padding=padding, layout=layout)
        np.testing.assert_allclose(np.asarray(y), w, rtol=1e-12, atol=1e-12, err_msg=f"{impl} {layout} {incl}")


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
    g = jax.jit(jax.grad(lambda x: jnp.sum(pool.global_max_pool2d(x))))(x)
    np.testing.assert_array_equal(g[0, :, :, 0], [[0.0, 1.0], [0.0, 0.0]])


# ----------------------------------------------------------------------------- gradients
def _int_cotangent(shape, seed=3):
    """Small integer cotangents: sums of them are exact, so gradients compare with array_equal."""
    return np.random.default_rng(seed).integers(1, 6, size=shape).astype(np.float64)


def _vjps(fns, x, g):
    """Cotangent g pulled back through each fn at x, under one jit (one compile, not many eager ones)."""
    run = jax.jit(lambda x, g: [jax.vjp(fn, x)[1](g)[0] for fn in fns])
    return [np.asarray(v) for v in run(x, g)]


def _vjp(fn, x, g):
    return _vjps([fn], x, g)[0]


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


# ----------------------------------------------------------------------------- bad input
X = np.zeros((1, 4, 4, 1))
BAD = [
    ("x", lambda: pool.max_pool2d(np.zeros((4, 4, 1)), 2)),
    ("x", lambda: pool.max_pool2d(np.zeros((1, 4, 4, 1), np.int32), 2)),
    ("window", lambda: pool.max_pool2d(X, 0)),
    ("window", lambda: pool.max_pool2d(X, (2, 2, 2))),
    ("window", lambda: pool.max_pool2d(X, 5)),  # larger than the (unpadded) input
    ("window", lambda: pool.max_pool2d(X, 3, dilation=2)),  # effective size 5 > 4
    ("stride", lambda: pool.max_pool2d(X, 2, stride=0)),
    ("stride", lambda: pool.max_pool2d(X, 2, stride=1.5)),
    ("dilation", lambda: pool.max_pool2d(X, 2, dilation=-1)),
    ("padding", lambda: pool.max_pool2d(X, 2, padding="FULL")),
    ("padding", lambda: pool.max_pool2d(X, 2, padding=((0, -1), (0, 0)))),
    ("layout", lambda: pool.max_pool2d(X, 2, layout="NWHC")),
    ("impl", lambda: pool.max_pool2d(X, 2, impl="fft")),
    ("ties", lambda: pool.max_pool2d(X, 2, impl="custom_vjp", ties="last")),
    ("ties", lambda: pool.max_pool2d(X, 2, impl="lax", ties="split")),
    ("ties", lambda: pool.max_pool2d(X, 2, impl="reference", ties="first")),
    ("x", lambda: pool.avg_pool2d(np.zeros((4, 4)), 2)),
    ("window", lambda: pool.avg_pool2d(X, 5)),
    ("stride", lambda: pool.avg_pool2d(X, 2, stride=(1, 0))),
    ("padding", lambda: pool.avg_pool2d(X, 2, padding="same-ish")),
    ("layout", lambda: pool.avg_pool2d(X, 2, layout="HWC")),
    ("impl", lambda: pool.avg_pool2d(X, 2, impl="custom_vjp")),
    ("count_include_pad", lambda: pool.avg_pool2d(X, 2, count_include_pad="yes")),
    ("x", lambda: pool.global_avg_pool2d(np.zeros((4, 4, 1)))),
    ("layout", lambda: pool.global_max_pool2d(X, layout="CHW")),
    ("x", lambda: pool.global_max_pool2d(np.zeros((1, 4, 4, 1), np.int32))),
]


@pytest.mark.parametrize("name,call", BAD, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD)])
def test_bad_input_raises_naming_the_argument(name, call):
    with pytest.raises((ValueError, TypeError), match=name):
        call()
