"""Tests for fcnn/ops/pool.py against independent references: the forward values and bad input.

References: plain numpy loops over windows and hand-computed values. Here: max pool over the grid
(every impl), avg pool (both impls, both layouts, with and without the padding counted) and its
borders, the global pools; every bad argument refused naming it. The gradients are in
tests/test_pool.py; the grid (from /work/shared/GRADCHECK.md) and the numpy loops in
tests/_pool_refs.py.
"""
import itertools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from _pool_refs import (GRID, GRID_ARGS, PADDINGS, STRIDES, WINDOWS, X_SHAPE, _nchw, _perm,  # noqa: E402
                        _stride, np_avg_pool, np_max_pool)

from fcnn import shapes  # noqa: E402
from fcnn.ops import pool  # noqa: E402

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


# ----------------------------------------------------------------------------- bad input
X = np.zeros((1, 4, 4, 1))
BAD = [
    ("x", r"x must have rank 4 \(batch, height, width, channels", lambda: pool.max_pool2d(np.zeros((4, 4, 1)), 2)),
    ("x", r"x must have a floating dtype .*got int32", lambda: pool.max_pool2d(np.zeros((1, 4, 4, 1), np.int32), 2)),
    ("window", r"window must be >= 1 in every dimension, got 0", lambda: pool.max_pool2d(X, 0)),
    ("window", r"window must be an int or a pair of ints, got \(2, 2, 2\)", lambda: pool.max_pool2d(X, (2, 2, 2))),
    ("window", r"window is larger than the padded input: .*effective size \(5, 5\)", lambda: pool.max_pool2d(X, 5)),
    ("window", r"window is larger than the padded input: .*effective size \(5, 5\)", lambda: pool.max_pool2d(X, 3, dilation=2)),
    ("stride", r"stride must be >= 1 in every dimension, got 0", lambda: pool.max_pool2d(X, 2, stride=0)),
    ("stride", r"stride must be an int or a pair of ints, got 1\.5", lambda: pool.max_pool2d(X, 2, stride=1.5)),
    ("dilation", r"dilation must be >= 1 in every dimension, got -1", lambda: pool.max_pool2d(X, 2, dilation=-1)),
    ("padding", r"padding must be 'VALID', 'SAME', .*got 'FULL'", lambda: pool.max_pool2d(X, 2, padding="FULL")),
    ("padding", r"padding must be non-negative, got \(\(0, -1\), \(0, 0\)\)", lambda: pool.max_pool2d(X, 2, padding=((0, -1), (0, 0)))),
    ("layout", r"layout must be one of NHWC, NCHW; got 'NWHC'", lambda: pool.max_pool2d(X, 2, layout="NWHC")),
    ("impl", r"impl must be one of lax, reference, custom_vjp, auto; got 'fft'", lambda: pool.max_pool2d(X, 2, impl="fft")),
    ("ties", r"ties must be one of first, split, all; got 'last'", lambda: pool.max_pool2d(X, 2, impl="custom_vjp", ties="last")),
    ("ties", r"ties='split' is not what impl='lax' implements: .*ties='first'", lambda: pool.max_pool2d(X, 2, impl="lax", ties="split")),
    ("ties", r"ties='first' is not what impl='reference' implements: .*ties='split'", lambda: pool.max_pool2d(X, 2, impl="reference", ties="first")),
    ("x", r"x must have rank 4 \(batch, height, width, channels.*got shape \(4, 4\)", lambda: pool.avg_pool2d(np.zeros((4, 4)), 2)),
    ("window", r"window is larger than the padded input", lambda: pool.avg_pool2d(X, 5)),
    ("stride", r"stride must be >= 1 in every dimension, got \(1, 0\)", lambda: pool.avg_pool2d(X, 2, stride=(1, 0))),
    ("padding", r"padding must be 'VALID', 'SAME', .*got 'same-ish'", lambda: pool.avg_pool2d(X, 2, padding="same-ish")),
    ("layout", r"layout must be one of NHWC, NCHW; got 'HWC'", lambda: pool.avg_pool2d(X, 2, layout="HWC")),
    ("impl", r"impl must be one of lax, reference; got 'custom_vjp'", lambda: pool.avg_pool2d(X, 2, impl="custom_vjp")),
    ("count_include_pad", r"count_include_pad must be a bool, got 'yes'", lambda: pool.avg_pool2d(X, 2, count_include_pad="yes")),
    ("x", r"x must have rank 4 .*got shape \(4, 4, 1\)", lambda: pool.global_avg_pool2d(np.zeros((4, 4, 1)))),
    ("layout", r"layout must be one of NHWC, NCHW; got 'CHW'", lambda: pool.global_max_pool2d(X, layout="CHW")),
    ("x", r"x must have a floating dtype .*got int32", lambda: pool.global_max_pool2d(np.zeros((1, 4, 4, 1), np.int32))),
]


@pytest.mark.parametrize("name,rule,call", BAD, ids=[f"{i}-{n}" for i, (n, _, _) in enumerate(BAD)])
def test_bad_input_raises_naming_the_argument(name, rule, call):
    """The message names the argument and states its rule (a bare ``match=name`` let any message with
    an "x" in it pass)."""
    assert name in rule
    with pytest.raises((ValueError, TypeError), match=rule):
        call()


@pytest.mark.parametrize("dtype, value, size", [(jnp.bfloat16, 1.0, 32), (jnp.float16, 100.0, 30)])
def test_16_bit_average_pools_sum_in_float32(dtype, value, size):
    """The mean of a constant window is that constant. In bfloat16 the window sum stopped growing at
    256 (a 32x32 window of ones averaged 0.25); in float16 it overflowed 65504 (inf)."""
    x = jnp.full((1, size, size, 2), value, dtype)
    # the reference's 1024 taps jitted: eagerly each tap's slice compiled on its own (27 s; a summation
    # in the 16-bit dtype still gives 0.25 and inf jitted, checked by patching pool.acc_dtype)
    reference = jax.jit(lambda x: pool.avg_pool(x, size, impl="reference"))(x)
    for y in (pool.avg_pool(x, size), reference, pool.adaptive_avg_pool(x, 1), pool.avg_pool(x, 4)):
        assert y.dtype == dtype
        np.testing.assert_array_equal(np.asarray(y, np.float32), value)
    ramp = jnp.asarray(np.arange(16 * 16).reshape(1, 16, 16, 1) / 256, dtype)  # a 16x16 window, mean by hand
    want = np.asarray(ramp, np.float64).mean()
    assert abs(float(pool.avg_pool(ramp, 16)[0, 0, 0, 0]) - want) <= 2 ** -8 * want  # one rounding at the end
