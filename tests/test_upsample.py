"""Tests for fcnn/ops/upsample.py: PyTorch's documented example outputs, a NumPy loop that computes
every output cell directly (not separably) from PyTorch's source-index formulas, the adjoint
identity in float64, the custom VJP against autodiff of the reference, check_grads, transformations
and dtypes, bad input."""
import itertools
import math

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from fcnn import shapes  # noqa: E402
import importlib  # noqa: E402

up = importlib.import_module("fcnn.ops.upsample")  # fcnn.ops.upsample names the function

METHOD = {1: "linear", 2: "bilinear", 3: "trilinear"}


def test_pytorch_documented_examples():
    # torch.nn.Upsample docs (docs.pytorch.org/docs/stable/generated/torch.nn.Upsample.html), input
    # torch.arange(1, 5).view(1, 1, 2, 2), scale_factor=2:
    x = jnp.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    nearest = [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    bilinear = [[1.0, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0]]
    corners = [[1.0, 4 / 3, 5 / 3, 2.0], [5 / 3, 2.0, 7 / 3, 8 / 3], [7 / 3, 8 / 3, 3.0, 10 / 3], [3.0, 10 / 3, 11 / 3, 4.0]]
    np.testing.assert_array_equal(up.upsample(x, 2, layout="NCHW")[0, 0], nearest)
    np.testing.assert_allclose(up.upsample(x, 2, method="bilinear", layout="NCHW")[0, 0], bilinear, rtol=1e-15)
    np.testing.assert_allclose(up.upsample(x, 2, method="bilinear", align_corners=True, layout="NCHW")[0, 0],
                               corners, rtol=1e-15)


def _src(j, n_in, n_out, scale, method, align_corners):
    """PyTorch's source index for output j (UpSample.h), one axis; returns [(index, weight)]."""
    if method == "nearest":
        return [(min(math.floor(j / scale), n_in - 1), 1.0)]
    if align_corners:
        s = j * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        s = max((j + 0.5) / scale - 0.5, 0.0)
    i0 = min(int(s), n_in - 1)
    lam = s - i0
    return [(i0, 1 - lam), (min(i0 + 1, n_in - 1), lam)]


def np_upsample(x, scales, method, align_corners):
    """Channels-last NumPy loop: each output cell the sum over the product of per-axis taps."""
    in_sizes = x.shape[1:-1]
    out_sizes = [math.floor(n * s) for n, s in zip(in_sizes, scales)]
    y = np.zeros((x.shape[0], *out_sizes, x.shape[-1]))
    for o in itertools.product(*map(range, out_sizes)):
        taps = [_src(j, n, m, s, method, align_corners) for j, n, m, s in zip(o, in_sizes, out_sizes, scales)]
        for combo in itertools.product(*taps):
            w = np.prod([t[1] for t in combo])
            y[(slice(None), *o, slice(None))] += w * x[(slice(None), *(t[0] for t in combo), slice(None))]
    return y


CASES = [  # rank, x shape (channels-last), scale, method, align_corners, layout family
    (1, (2, 5, 3), 2, "linear", False, "last"), (1, (1, 4, 2), 3, "nearest", False, "first"),
    (1, (2, 5, 1), 1.5, "linear", True, "first"), (1, (1, 7, 2), 0.6, "linear", False, "last"),
    (2, (1, 3, 5, 2), (2, 3), "bilinear", False, "first"), (2, (2, 4, 3, 1), 1.7, "bilinear", True, "last"),
    (2, (1, 3, 4, 2), (2.5, 1), "nearest", False, "last"), (2, (1, 2, 2, 1), 2, "bilinear", False, "last"),
    (3, (1, 2, 3, 4, 2), 2, "trilinear", False, "last"), (3, (1, 3, 2, 2, 1), (1.5, 2, 3), "trilinear", True, "first"),
    (3, (1, 2, 3, 2, 2), (2, 1, 3), "nearest", False, "first"),
    # long axes: in * out > upsample._MATRIX_MAX, so the adjoint takes the segment-sum path
    (1, (1, 200, 2), 2, "linear", False, "last"), (1, (1, 300, 1), 1.5, "nearest", False, "first"),
]
IDS = [f"r{c[0]}-{c[3]}-s{c[2]}-ac{int(c[4])}-{c[5]}" for c in CASES]


def test_long_axes_take_the_segment_sum_adjoint():
    assert all(c[1][1] * math.floor(c[1][1] * c[2]) > up._MATRIX_MAX for c in CASES[-2:])
    assert up._whole_copies(4, 8, 2, "nearest") == 2 and up._whole_copies(4, 10, 2.5, "nearest") is None


@pytest.mark.parametrize("n", [4, 300])  # the matrix path and the segment-sum path (n * 301 > _MATRIX_MAX)
def test_bfloat16_gradient_sums_in_float32_on_both_adjoint_paths(n):
    """Each of n cells has ~300 copies at scale 300.5 (nearest: 300 or 301 by hand), so its gradient
    of a sum is that count. In bfloat16 the segment-sum path added in bf16 and stopped at 256."""
    x = jnp.ones((1, n, 1), jnp.bfloat16)
    g = jax.grad(lambda x: up.upsample(x, 300.5).astype(jnp.float32).sum())(x)
    n_out = math.floor(n * 300.5)  # the copies of each cell, counted from PyTorch's nearest index
    counts = np.bincount([_src(j, n, n_out, 300.5, "nearest", False)[0][0] for j in range(n_out)], minlength=n)
    assert g.dtype == jnp.bfloat16 and set(counts.tolist()) == {300, 301} and counts.sum() == n_out
    # summed in float32, rounded to bfloat16 once (301 is not a bf16 number: 300)
    want = np.asarray(jnp.asarray(counts, jnp.float32).astype(jnp.bfloat16), np.float32)
    np.testing.assert_array_equal(np.asarray(g, np.float32)[0, :, 0], want)


def _layout(rank, fam):
    return shapes.LAYOUTS_BY_RANK[rank][0 if fam == "last" else 1]


def _cf(a):
    return np.moveaxis(a, -1, 1)


@pytest.mark.parametrize("rank,shape,scale,method,align_corners,fam", CASES, ids=IDS)
def test_forward_adjoint_and_vjp(rank, shape, scale, method, align_corners, fam):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    scales = scale if isinstance(scale, tuple) else (scale,) * rank
    want = np_upsample(x, scales, method, align_corners)
    layout = _layout(rank, fam)
    if fam == "first":
        x, want = _cf(x), _cf(want)
    kw = dict(method=method, align_corners=align_corners, layout=layout)
    assert shapes.upsample_output_shape(x.shape, scale, layout=layout) == want.shape
    y = rng.normal(size=want.shape)

    @jax.jit
    def run(x, y):
        fwd, vjp = jax.vjp(lambda v: up.upsample(v, scale, **kw), x)
        plain = jax.vjp(lambda v: up.from_channels_last(up._forward(up.to_channels_last(v, layout),
                                                                      up._plan(x.shape, scale, method, align_corners,
                                                                               layout)[1]), layout), x)[1]
        return fwd, vjp(y)[0], plain(y)[0], up.upsample_adjoint(y, x.shape, scale, **kw)

    fwd, dx, dx_autodiff, adj = run(x, y)
    np.testing.assert_allclose(np.asarray(fwd), want, rtol=1e-13, atol=1e-14)
    # adjoint identity <up(x), y> == <x, up^T(y)>
    lhs, rhs = np.vdot(np.asarray(fwd), y), np.vdot(x, np.asarray(adj))
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_autodiff), rtol=1e-13, atol=1e-14)  # custom VJP == autodiff
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(adj))


@pytest.mark.parametrize("rank,shape,scale,method,align_corners,fam", [CASES[0], CASES[5], CASES[9]],
                         ids=[IDS[0], IDS[5], IDS[9]])
def test_check_grads_second_order(rank, shape, scale, method, align_corners, fam):
    x = np.random.default_rng(1).normal(size=shape)
    fn = jax.jit(lambda v: up.upsample(v, scale, method=method, align_corners=align_corners))
    check_grads(fn, (x,), order=2, modes=["rev"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_jit_vmap_grad_dtypes(dtype):
    """vmap of grad of sum(up(x)^2) under jit is 2 U^T U x, U the NumPy loop's matrix (its columns are
    the loop's outputs for the unit inputs), on the inputs rounded to the dtype."""
    xs = np.asarray(jnp.asarray(np.random.default_rng(2).normal(size=(3, 1, 4, 3, 2)), dtype), np.float64)
    fn = lambda v: jnp.sum(up.upsample(v, 2, method="bilinear") ** 2)  # noqa: E731
    got = jax.jit(jax.vmap(jax.grad(fn)))(jnp.asarray(xs, dtype))
    assert got.dtype == dtype
    u = np.stack([np_upsample(e.reshape(1, 4, 3, 1), (2, 2), "bilinear", False).ravel() for e in np.eye(12)], 1)
    per_channel = np.moveaxis(xs, -1, 1).reshape(3, 2, 12)  # (vmap, channel, 4 * 3)
    want = np.moveaxis((2 * per_channel @ u.T @ u).reshape(3, 2, 1, 4, 3), 1, -1)
    tol = {jnp.bfloat16: 5e-2, jnp.float32: 1e-5, jnp.float64: 1e-13}[dtype]
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


X2 = np.zeros((1, 4, 4, 1))
BAD = [  # (exception, regex, call)
    (ValueError, "scale must be a positive float, got 0", lambda: up.upsample(X2, 0)),
    (ValueError, "scale must be a positive float, got -2", lambda: up.upsample(X2, -2)),
    (ValueError, "scale must be a positive float, got inf", lambda: up.upsample(X2, float("inf"))),
    (ValueError, r"scale must be a number or 2 numbers .*got \(2, 2, 2\)", lambda: up.upsample(X2, (2, 2, 2))),
    (ValueError, "scale=0.1 gives an empty output", lambda: up.upsample(X2, 0.1)),
    (ValueError, "method must be one of .* got 'bicubic'", lambda: up.upsample(X2, 2, method="bicubic")),
    (ValueError, "method='trilinear' is for 3-D", lambda: up.upsample(X2, 2, method="trilinear")),
    (ValueError, "method='linear' is for 1-D", lambda: up.upsample(X2, 2, method="linear")),
    (ValueError, "layout must be one of NHWC, NCHW; got 'HWNC'", lambda: up.upsample(X2, 2, layout="HWNC")),
    (ValueError, "x must have rank 3 to match", lambda: up.upsample(X2, 2, layout="NWC")),
    (TypeError, "align_corners must be a bool, got 1", lambda: up.upsample(X2, 2, method="bilinear", align_corners=1)),
    (ValueError, "align_corners=True needs", lambda: up.upsample(X2, 2, align_corners=True)),
    (TypeError, "x must have a floating dtype", lambda: up.upsample(X2.astype(np.int32), 2)),
    (ValueError, "y must have upsample's output shape", lambda: up.upsample_adjoint(np.zeros((1, 4, 4, 1)), X2.shape, 2)),
]


@pytest.mark.parametrize("exc,match,call", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input(exc, match, call):
    with pytest.raises(exc, match=match):
        call()
