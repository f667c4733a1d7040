"""Transposed convolution (fcnn/ops/conv_transpose.py): every impl against the scatter reference, the
adjoint identity against lax's forward convolution, PyTorch's and lax's output sizes, hand values,
hand-derived VJP against autodiff, second order, jit/vmap/grad per dtype, bad input.

The grid per rank (1-3): batch 1-2, odd and non-square sizes, kernels 1-5, strides 1-3 and mixed,
dilation 1-3 and mixed, groups 1/2/depthwise, padding int/per-dim/pairs/SAME/VALID, output_padding,
channels-last and channels-first. ``CONFIGS`` is the whole grid (``-m slow``), ``DEFAULT`` a slice
in which every axis value appears (the default run).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from fcnn import shapes
from fcnn.ops.conv_transpose import (CONV_TRANSPOSE_IMPLS, conv_transpose, conv_transpose1d, conv_transpose2d,
                                     conv_transpose3d)

SIZES = {1: [(7,), (5,), (6,)], 2: [(6, 7), (5, 5), (7, 5)], 3: [(3, 4, 5), (4, 3, 3), (2, 5, 3)]}
KERNELS = {1: [(1,), (2,), (3,), (4,), (5,)], 2: [(1, 1), (2, 3), (3, 3), (5, 5), (4, 2)],
           3: [(1, 1, 1), (2, 3, 1), (3, 3, 3), (5, 2, 2), (2, 4, 3)]}
STRIDES = {1: [1, 2, 3], 2: [1, 2, 3, (1, 2), (3, 2)], 3: [1, 2, 3, (1, 2, 3), (2, 1, 1)]}
DILATIONS = {1: [1, 2, 3], 2: [1, 2, (2, 3)], 3: [1, 2, (1, 3, 2)]}
GROUPS = ["1", "2", "depthwise"]
PADDINGS = {1: [0, 1, ((2, 1),), "SAME", "VALID"], 2: [0, 1, (2, 0), ((1, 0), (0, 2)), "SAME", "VALID"],
            3: [0, 1, (0, 1, 2), ((1, 0), (0, 1), (2, 1)), "SAME", "VALID"]}
OUTPUT_PADDING = ["0", "max"]  # "max": max(stride, dilation) - 1 per dim (ignored with a string padding)


def _configs():
    """Every axis value of each rank, crossed in a cover (config i takes value i*step mod len per axis)."""
    out = []
    for rank in (1, 2, 3):
        axes = [[1, 2], SIZES[rank], KERNELS[rank], STRIDES[rank], DILATIONS[rank], GROUPS, PADDINGS[rank],
                OUTPUT_PADDING, ["last", "first"]]
        steps = [1, 1, 2, 1, 2, 1, 1, 3, 5]
        for i in range(36):
            c = tuple(axis[(i * step + i // len(axis)) % len(axis)] for axis, step in zip(axes, steps))
            if _valid(rank, c):
                out.append((rank,) + c)
    return out


def _valid(rank, c):
    try:
        _shapes_of(rank, c)
        return True
    except ValueError:
        return False


def _shapes_of(rank, c):
    """(x_shape, w_shape, kwargs) of a config; ValueError if it has an empty output."""
    n, size, k, s, d, grp, pad, op, fam = c
    groups, cg, dg = {"1": (1, 2, 3), "2": (2, 2, 1), "depthwise": (3, 1, 2)}[grp]
    layout = shapes.LAYOUTS_BY_RANK[rank][0 if fam == "last" else 1]
    cout = dg * groups
    x_shape = shapes.make_shape(n, size, cout, layout)
    w_shape = (*k, cg, cout) if fam == "last" else (cout, cg, *k)
    st, dl = shapes.normalize_tuple(s, "s", rank), shapes.normalize_tuple(d, "d", rank)
    out_pad = 0 if op == "0" or isinstance(pad, str) else tuple(max(a, b) - 1 for a, b in zip(st, dl))
    kw = dict(stride=s, padding=pad, output_padding=out_pad, dilation=d, groups=groups, layout=layout)
    shapes.conv_transpose_output_shape(x_shape, w_shape, **kw)
    return x_shape, w_shape, kw


CONFIGS = _configs()


def _default(per_rank=3):
    """A greedy slice of the grid: per rank, the configs that add the most unseen axis values."""
    out = []
    for rank in (1, 2, 3):
        seen, cs = set(), [c for c in CONFIGS if c[0] == rank]
        for _ in range(per_rank):
            best = max(cs, key=lambda c: len({(a, repr(v)) for a, v in enumerate(c)} - seen))
            seen |= {(a, repr(v)) for a, v in enumerate(best)}
            out.append(best)
    return out


def _cost(c):
    """Output pixels times kernel taps: what a config's programs cost to compile and run, roughly."""
    return c[1] * int(np.prod(c[2])) * int(np.prod(c[3])) * int(np.prod(shapes.normalize_tuple(c[4], "s", c[0])))


# the string paddings too: the cheapest config with each
DEFAULT = _default() + [min((c for c in CONFIGS if c[0] == r and c[7] == pad), key=_cost)
                        for r, pad in ((2, "SAME"), (3, "VALID"))]


def _cid(c):
    return "-".join(str(v).replace(" ", "") for v in c)


def _rel(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-300))


def _inputs(c, seed=0):
    rank, rest = c[0], c[1:]
    x_shape, w_shape, kw = _shapes_of(rank, rest)
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    cin = shapes.channel_dim(shapes.conv_transpose_output_shape(x_shape, w_shape, **kw), kw["layout"])
    return x, w, rng.standard_normal(cin), kw


def _conv_pads(padding, rank):
    """The forward conv's padding, spelled for lax directly (strings passed through)."""
    if isinstance(padding, str):
        return padding
    if isinstance(padding, int):
        return [(padding, padding)] * rank
    return [tuple(p) if isinstance(p, tuple) else (p, p) for p in padding]


def _adjoint_gap(x, w, kw, out):
    """|<conv(z, w), x> - <z, conv_transpose(x, w)>| / |<conv(z, w), x>| for a random z, conv by lax."""
    layout = kw["layout"]
    rank = shapes.layout_rank(layout)
    z = np.random.default_rng(7).standard_normal(out.shape)
    dn = (layout, shapes.kernel_layout(layout), layout)
    y = lax.conv_general_dilated(z, w, shapes.normalize_tuple(kw["stride"], "s", rank), _conv_pads(kw["padding"], rank),
                                 rhs_dilation=shapes.normalize_tuple(kw["dilation"], "d", rank),
                                 feature_group_count=kw["groups"], dimension_numbers=dn)
    # output_padding >= stride (allowed when dilation > stride) gives the conv extra trailing outputs
    keep = tuple(slice(0, n) for n in shapes.spatial_dims(x.shape, layout))
    y = y[(slice(None), *keep, slice(None))] if shapes.is_channels_last(layout) else y[(slice(None), slice(None), *keep)]
    lhs, rhs = float(jnp.vdot(y, x)), float(jnp.vdot(z, out))
    return abs(lhs - rhs) / abs(lhs)


def _check(c):
    x, w, b, kw = _inputs(c)
    ct = np.random.default_rng(3).standard_normal(shapes.conv_transpose_output_shape(x.shape, w.shape, **kw))

    @jax.jit
    def run(x, w, b, ct):  # one program per config: every impl's output, and two VJPs
        outs = {impl: conv_transpose(x, w, b, impl=impl, **kw) for impl in CONV_TRANSPOSE_IMPLS}
        pulls = {impl: jax.vjp(lambda *a: conv_transpose(*a, impl=impl, **kw), x, w, b)[1](ct)
                 for impl in CONV_TRANSPOSE_IMPLS}
        return outs, pulls, conv_transpose(x, w, impl="reference", **kw)

    outs, pulls, no_bias = run(x, w, b, ct)
    ref = outs["reference"]
    assert ref.shape == ct.shape
    for impl in CONV_TRANSPOSE_IMPLS:
        assert _rel(outs[impl], ref) <= 1e-10, impl
    assert _adjoint_gap(x, w, kw, no_bias) <= 1e-12
    for impl in CONV_TRANSPOSE_IMPLS:  # custom_vjp's hand-derived VJP, and every autodiff one, == autodiff of the spec
        for name, got, want in zip("xwb", pulls[impl], pulls["reference"]):
            assert _rel(got, want) <= 1e-10, (impl, name)


@pytest.mark.parametrize("c", DEFAULT, ids=_cid)
def test_impls_adjoint_and_vjp(c):
    _check(c)


@pytest.mark.slow
@pytest.mark.parametrize("c", CONFIGS, ids=_cid)
def test_impls_adjoint_and_vjp_full_grid(c):
    _check(c)


def test_grid_covers_every_axis_value():
    for rank in (1, 2, 3):
        for default in (False, True):
            cs = [c[1:] for c in (DEFAULT if default else CONFIGS) if c[0] == rank]
            axes = [[1, 2], SIZES[rank], KERNELS[rank], STRIDES[rank], DILATIONS[rank], GROUPS, PADDINGS[rank],
                    OUTPUT_PADDING, ["last", "first"]]
            for a, values in enumerate(axes):
                seen = {repr(c[a]) for c in cs}
                missing = [v for v in values if repr(v) not in seen and (default is False or a in (0, 5, 7, 8))]
                assert not missing, (rank, default, a, missing)
    assert len(DEFAULT) <= 12


# PyTorch's own numbers, (x shape NC..., weight shape, kwargs) -> output shape. Sources: the
# ConvTranspose2d/3d docs examples (https://pytorch.org/docs/stable/generated/torch.nn.ConvTranspose2d.html:
# Conv2d(16, 16, 3, stride=2, padding=1) takes 12x12 to 6x6 and ConvTranspose2d(16, 16, 3, stride=2,
# padding=1) with output_size=12x12, i.e. output_padding=1, gives torch.Size([1, 16, 12, 12]);
# torch.ao.nn.quantized.dynamic ConvTranspose3d docs: the same in 3-D, [1, 16, 6, 6, 6] -> [1, 16, 12, 12, 12])
# and R torch's tests of libtorch (https://rdrr.io/cran/torch/src/tests/testthat/test-nn-conv.R:
# nn_conv_transpose1d(32, 16, 2) on (10, 32, 2) -> (10, 16, 3); nn_conv_transpose2d(16, 33, 3, stride = 2) on
# (20, 16, 10, 10) -> (20, 33, 21, 21); kernel (3, 5), stride (2, 1), padding (4, 2) -> (20, 33, 13, 10)).
PYTORCH_SHAPES = [
    ((1, 16, 6, 6), (16, 16, 3, 3), dict(stride=2, padding=1, output_padding=1), (1, 16, 12, 12)),
    ((1, 16, 6, 6, 6), (16, 16, 3, 3, 3), dict(stride=2, padding=1, output_padding=1), (1, 16, 12, 12, 12)),
    ((10, 32, 2), (32, 16, 2), dict(), (10, 16, 3)),
    ((20, 16, 10, 10), (16, 33, 3, 3), dict(stride=2), (20, 33, 21, 21)),
    ((20, 16, 10, 10), (16, 33, 3, 5), dict(stride=(2, 1), padding=(4, 2)), (20, 33, 13, 10)),
]


@pytest.mark.parametrize("x_shape, w_shape, kw, want", PYTORCH_SHAPES)
def test_output_shapes_match_pytorch(x_shape, w_shape, kw, want):
    layout = shapes.LAYOUTS_BY_RANK[len(x_shape) - 2][1]
    assert shapes.conv_transpose_output_shape(x_shape, w_shape, layout=layout, **kw) == want
    if np.prod(want) < 20000:  # the op itself, small ones
        out = conv_transpose(np.zeros(x_shape), np.zeros(w_shape), layout=layout, **kw)
        assert out.shape == want


# lax.conv_transpose(transpose_kernel=True) in jax 0.10.2, measured: input length 7, (k, s, d) -> (SAME, VALID)
LAX_SIZES = [((1, 1, 1), 7, 7), ((1, 2, 1), 14, 14), ((1, 3, 2), 21, 21), ((2, 1, 1), 7, 8), ((2, 2, 2), 14, 15),
             ((2, 3, 1), 21, 21), ((3, 2, 1), 14, 15), ((3, 3, 2), 21, 23), ((4, 3, 1), 21, 22), ((5, 2, 2), 14, 21),
             ((5, 3, 2), 21, 27), ((4, 1, 2), 7, 13)]


@pytest.mark.parametrize("ksd, same, valid", LAX_SIZES)
def test_same_valid_sizes_and_values_match_lax_conv_transpose(ksd, same, valid):
    k, s, d = ksd
    rng = np.random.default_rng(k * 10 + s)
    x, w = rng.standard_normal((2, 7, 3)), rng.standard_normal((k, 2, 3))
    for pad, size in (("SAME", same), ("VALID", valid)):
        assert shapes.conv_transpose_output_shape(x.shape, w.shape, stride=s, padding=pad, dilation=d) == (2, size, 2)
        want = lax.conv_transpose(x, w, (s,), pad, rhs_dilation=(d,), dimension_numbers=("NWC", "WIO", "NWC"),
                                  transpose_kernel=True)
        assert _rel(conv_transpose(x, w, stride=s, padding=pad, dilation=d), want) <= 1e-12


def test_docstring_table_same_as_pytorch_padding():
    """SAME == PyTorch padding (F_eff - s)/2 when that is even; == output_padding s - F_eff when F_eff < s."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 5, 2))
    for k, s, pt_pad, pt_op in ((4, 2, 1, 0), (5, 1, 2, 0), (1, 3, 0, 2), (2, 3, 0, 1)):
        w = rng.standard_normal((k, 3, 2))
        same = conv_transpose(x, w, stride=s, padding="SAME")
        assert _rel(conv_transpose(x, w, stride=s, padding=pt_pad, output_padding=pt_op), same) == 0.0
    # k=3, s=2 (F_eff - s = 1, odd): SAME is pads (0, 1); PyTorch's padding=1, output_padding=1 is one pixel later
    w = rng.standard_normal((3, 3, 2))
    same = conv_transpose(x, w, stride=2, padding="SAME")
    assert _rel(conv_transpose(x, w, stride=2, padding=((0, 1),)), same) == 0.0
    torch_like = conv_transpose(x, w, stride=2, padding=1, output_padding=1)
    assert same.shape == torch_like.shape and _rel(torch_like[:, :-1], same[:, 1:]) == 0.0


def test_hand_values_scatter():
    """y = [1, 2], w = [1, 10, 100], stride 2: full = [1, 10, 100 + 2, 20, 200] (each input stamps the kernel)."""
    y, w = np.array([1.0, 2.0]).reshape(1, 2, 1), np.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)
    kws = [{}, dict(padding=1), dict(padding=1, output_padding=1), dict(padding=((2, 0),)),
           dict(dilation=2, padding=1, output_padding=1)]
    run = jax.jit(lambda y, w: {impl: [conv_transpose(y, w, stride=2, impl=impl, **kw) for kw in kws]
                                for impl in CONV_TRANSPOSE_IMPLS})  # one compile for every impl
    for impl, outs in run(y, w).items():
        got = [np.asarray(o).ravel().tolist() for o in outs]
        assert got[0] == [1, 10, 102, 20, 200]
        assert got[1] == [10, 102, 20]
        assert got[2] == [10, 102, 20, 200]  # output_padding extends the END
        assert got[3] == [102, 20, 200]
        assert got[4] == [0, 12, 0, 120, 0, 200]  # dilation 2, padding 1, output_padding 1: taps at 0, 2, 4
    # groups: channel 0 of x feeds output channel 0 only, channel 1 output channel 1 (w (1, 1, 2), groups 2)
    out = conv_transpose(np.array([[[1.0, 0.0]]]), np.array([[[3.0, 5.0]]]), groups=2)
    assert np.asarray(out).ravel().tolist() == [3.0, 0.0]


def test_pytorch_weight_layout_channels_first():
    """NCHW with w (in_channels, out_channels/groups, kh, kw) = the NHWC op with w moved to HWIO."""
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 4, 5, 3)), rng.standard_normal((4, 3, 2, 3))  # in 4, out 3
    out = conv_transpose(x, w, stride=2, padding=1, output_padding=1, layout="NCHW")
    assert out.shape == (2, 3, 9, 6)  # H: 4*2 - 2 + 2 + 1, W: 2*2 - 2 + 3 + 1
    last = conv_transpose(np.moveaxis(x, 1, -1), np.transpose(w, (2, 3, 1, 0)), stride=2, padding=1, output_padding=1)
    assert _rel(np.moveaxis(np.asarray(last), -1, 1), out) <= 1e-14


SECOND_ORDER = [((1, 5, 4), (3, 3, 4), dict(stride=2, padding=1, output_padding=1, groups=2)),
                ((1, 3, 4, 2), (2, 3, 2, 2), dict(stride=(2, 1), dilation=(1, 2), padding="SAME")),
                ((1, 2, 3, 2, 2), (2, 2, 1, 1, 2), dict(stride=2, padding="VALID"))]


@pytest.mark.parametrize("x_shape, w_shape, kw", SECOND_ORDER)
def test_custom_vjp_check_grads_order2(x_shape, w_shape, kw):
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[-2] * kw.get("groups", 1))
    f = jax.jit(lambda x, w, b: conv_transpose(x, w, b, impl="custom_vjp", **kw))
    check_grads(f, (x, w, b), order=2, modes=["rev"])


DTYPE_TOL = {jnp.float64: 1e-10, jnp.float32: 1e-5, jnp.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [pytest.param(jnp.float64, marks=pytest.mark.slow), jnp.float32, jnp.bfloat16],
                         ids=lambda d: jnp.dtype(d).name)  # float64 values and gradients: the grid tests
def test_jit_vmap_grad_dtypes(dtype):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((3, 2, 4, 5, 4)), dtype)  # vmapped axis of 3 over (2, 4, 5, 4) NHWC
    w = jnp.asarray(rng.standard_normal((3, 2, 2, 4)), dtype)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2, precision="highest")
    acc = jnp.promote_types(dtype, jnp.float32)  # the loss sums bfloat16 outputs in float32
    ref = jax.vmap(lambda a: conv_transpose(a.astype(jnp.float64), w.astype(jnp.float64), impl="reference", **kw))(x)
    loss_ref = jax.grad(lambda w_: jnp.sum(conv_transpose(x[0].astype(jnp.float64), w_, impl="reference", **kw) ** 2))
    g_ref = loss_ref(w.astype(jnp.float64))

    @jax.jit
    def run(x, w):  # one compile for every impl
        return {impl: (jax.vmap(lambda a: conv_transpose(a, w, impl=impl, **kw))(x),
                       jax.grad(lambda w_: jnp.sum(conv_transpose(x[0], w_, impl=impl, **kw).astype(acc) ** 2))(w))
                for impl in CONV_TRANSPOSE_IMPLS}

    for impl, (out, g) in run(x, w).items():
        assert out.dtype == dtype and _rel(out, ref) <= DTYPE_TOL[dtype], impl
        assert g.dtype == dtype and _rel(g, g_ref) <= 3 * DTYPE_TOL[dtype], impl


def test_ranked_names_and_flops():
    """The ranked names by hand: every input stamps the kernel times itself at stride * its index."""
    # 1-D, two channels: [1, 2, 3, 4] through taps [1, 10, 100] plus ones through [1000] * 3, stride 2
    x = np.stack([np.arange(1.0, 5.0), np.ones(4)], -1)[None]
    w = np.stack([[1.0, 10.0, 100.0], [1000.0] * 3], -1)[:, None, :]  # (3, 1, 2): WIO
    np.testing.assert_array_equal(np.asarray(conv_transpose1d(x, w, stride=2)).ravel(),
                                  [1001, 1010, 2102, 1020, 2203, 1030, 2304, 1040, 1400])
    # 2-D, kernel = stride: the output is the Kronecker product of x and the kernel
    x2, k2 = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 10.0], [100.0, 1000.0]])
    np.testing.assert_array_equal(np.asarray(conv_transpose2d(x2[None, :, :, None], k2[:, :, None, None], stride=2))
                                  [0, :, :, 0], np.kron(x2, k2))
    # 3-D channels-first, a (1, 1, 2) kernel [1, 10] at stride 1: each row [a, b] -> [a, 10a + b, 10b]
    x3 = np.arange(1.0, 9.0).reshape(1, 1, 2, 2, 2)
    a, b = x3[..., 0], x3[..., 1]
    np.testing.assert_array_equal(conv_transpose3d(x3, np.array([1.0, 10.0]).reshape(1, 1, 1, 1, 2), layout="NCDHW"),
                                  np.stack([a, 10 * a + b, 10 * b], -1))
    with pytest.raises(ValueError, match="x must have rank 4 .* conv_transpose2d"):
        conv_transpose2d(x, w)
    # FLOPs: 4 inputs x 3 taps x 1 output channel x 2 input channels x 2 + 9 bias adds
    assert shapes.conv_transpose_flops((1, 4, 2), (1, 9, 1), (3, 1, 2), "NWC") == 4 * 3 * 2 * 2 + 9
    # receptive field: k=3, s=2 -> 2 inputs; k=3, s=2, d=2 -> all 3 taps land on one parity -> 3; k=5, s=3 -> 2
    assert [shapes.conv_transpose_receptive_field(*a) for a in ((3, 1, 1), (3, 2, 1), (3, 2, 2), (5, 3, 1))] == [3, 2, 3, 2]
    assert set(CONV_TRANSPOSE_IMPLS) == {"lax", "reference", "conv_vjp", "custom_vjp"}


X, W = np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 2, 4))  # NHWC x with 4 channels = the conv's output channels
BAD = [
    (dict(x=np.zeros((1, 5, 4))), ValueError, "x and w must have the same rank"),
    (dict(w=np.zeros((3, 3, 2, 6))), ValueError, "x must have as many channels as w has output channels"),
    (dict(stride=2, output_padding=2), ValueError, "output_padding must be smaller than max\\(stride, dilation\\)"),
    (dict(output_padding=1), ValueError, "output_padding must be smaller"),
    (dict(output_padding=-1), ValueError, "output_padding must be >= 0"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(padding="FULL"), ValueError, "padding must be 'VALID', 'SAME', an int.* got 'FULL'"),
    (dict(padding="SAME", stride=2, output_padding=1), ValueError, "output_padding must be 0 with padding='SAME'"),
    (dict(padding=4), ValueError, "crops more than the transposed convolution produces"),
    (dict(layout="NCW"), ValueError, r"x must have rank 3 to match layout='NCW', got rank 4"),
    (dict(layout="NHWD"), ValueError, "layout must be one of"),
    (dict(impl="fft"), ValueError, "impl must be one of lax, reference, conv_vjp, custom_vjp"),
    (dict(groups=3), ValueError, "groups=3 must divide"),
    (dict(b=np.zeros(4)), ValueError, "b must have shape \\(cin,\\) = \\(2,\\)"),
    (dict(x=np.zeros((1, 5, 5, 4), np.int32), w=np.zeros((3, 3, 2, 4), np.int32)), TypeError, "floating dtype"),
    (dict(precision="best"), ValueError, "precision must be"),
]


@pytest.mark.parametrize("kw, exc, match", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input(kw, exc, match):
    args, kw = dict(x=X, w=W, b=None), dict(kw)
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    with pytest.raises(exc, match=match):
        conv_transpose(args["x"], args["w"], args["b"], **kw)


def test_grid_size():
    assert len(CONFIGS) >= 90 and {c[0] for c in DEFAULT} == {1, 2, 3}
