"""Tests for fcnn.shapes: formulas pinned on hand-computed tables, SAME pads against XLA's own
rule (``lax.padtype_to_pads``), output shapes against ``jax.eval_shape`` of lax's convolution
over the grid, counts, receptive fields and every validation error."""
import itertools

import jax
import numpy as np
import pytest
from jax import lax

from fcnn import shapes


# ----------------------------------------------------------------------------- hand tables
@pytest.mark.parametrize("x_shape, w_shape, kw, expected", [
    ((1, 28, 28, 1), (5, 5, 1, 6), dict(padding="SAME"), (1, 28, 28, 6)),  # LeNet C1 with SAME
    ((1, 32, 32, 1), (5, 5, 1, 6), dict(), (1, 28, 28, 6)),  # LeNet C1: 32 - 5 + 1
    ((1, 32, 32, 3), (3, 3, 3, 8), dict(stride=2), (1, 15, 15, 8)),  # floor(29 / 2) + 1
    ((1, 227, 227, 3), (11, 11, 3, 96), dict(stride=4), (1, 55, 55, 96)),  # AlexNet conv1
    ((1, 224, 224, 3), (7, 7, 3, 64), dict(stride=2, padding=3), (1, 112, 112, 64)),  # ResNet stem
    ((1, 7, 7, 1), (3, 3, 1, 1), dict(dilation=2), (1, 3, 3, 1)),  # F_eff = 5
    ((1, 64, 64, 3), (3, 3, 3, 4), dict(stride=2, padding="SAME"), (1, 32, 32, 4)),  # ceil(64 / 2)
    ((1, 5, 5, 1), (3, 3, 1, 1), dict(stride=2, padding="SAME"), (1, 3, 3, 1)),  # ceil(5 / 2)
    ((2, 6, 7, 4), (2, 3, 2, 6), dict(stride=(3, 2), padding=((2, 1), (0, 2)), groups=2), (2, 3, 4, 6)),
    ((2, 4, 6, 7), (6, 2, 2, 3), dict(stride=(3, 2), padding=((2, 1), (0, 2)), groups=2, layout="NCHW"),
     (2, 6, 3, 4)),
    ((1, 5, 5, 3), (5, 5, 1, 3), dict(groups=3), (1, 1, 1, 3)),  # kernel = input, depthwise
])
def test_conv_output_shape_table(x_shape, w_shape, kw, expected):
    assert shapes.conv_output_shape(x_shape, w_shape, **kw) == expected


@pytest.mark.parametrize("f, d, expected", [(1, 1, 1), (3, 1, 3), (3, 2, 5), (5, 3, 13), (2, 4, 5)])
def test_effective_size(f, d, expected):
    assert shapes.effective_size(f, d) == expected


@pytest.mark.parametrize("w1, f, s, d, expected", [
    (5, 2, 1, 1, (0, 1)),  # odd total: the extra pad goes at the END (XLA, TensorFlow)
    (5, 3, 1, 1, (1, 1)),
    (6, 3, 2, 1, (0, 1)),  # out 3: (3-1)*2 + 3 - 6 = 1
    (7, 3, 2, 1, (1, 1)),  # out 4: 6 + 3 - 7 = 2
    (5, 5, 3, 1, (1, 2)),  # out 2: 3 + 5 - 5 = 3
    (8, 1, 2, 1, (0, 0)),  # negative total clamps to 0
    (5, 3, 1, 2, (2, 2)),  # F_eff 5
    (28, 5, 1, 1, (2, 2)),
])
def test_same_padding_table(w1, f, s, d, expected):
    assert shapes.same_padding(w1, f, s, d) == expected


def test_same_padding_matches_xla_rule():
    """Independent reference: lax.padtype_to_pads on the dilated window, over a grid of sizes."""
    for w1, f, s, d in itertools.product(range(1, 12), range(1, 6), range(1, 5), range(1, 4)):
        (xla,) = lax.padtype_to_pads((w1,), (shapes.effective_size(f, d),), (s,), "SAME")
        assert shapes.same_padding(w1, f, s, d) == tuple(xla), (w1, f, s, d)


def test_output_size_formula():
    # W2 = floor((W1 - F_eff + P) / S) + 1, written out for a few rows
    assert shapes.output_size(32, 5) == 28
    assert shapes.output_size(32, 5, 1, 4) == 32
    assert shapes.output_size(32, 3, 2) == 15
    assert shapes.output_size(7, 3, 3) == 2
    assert shapes.output_size(7, 3, 1, 0, 3) == 1  # F_eff 7
    assert shapes.output_size(4, 3, 1, 0, 3) == -2  # empty: F_eff 7 > 4


def test_conv_output_shape_matches_lax_eval_shape():
    """Independent reference: the shape lax's own convolution produces (eval_shape, no compile)."""
    paddings = ["VALID", "SAME", ((1, 0), (0, 1)), ((2, 1), (0, 2))]
    grid = itertools.product([(6, 7), (5, 5), (7, 5)], [(1, 1), (2, 3), (3, 3), (5, 5)],
                             [(1, 1), (2, 2), (3, 3), (1, 2), (3, 2)], paddings, [(1, 1), (2, 2), (2, 3)])
    checked = 0  # lax resolves "SAME" and explicit pads itself
    for hw, k, s, pad, d in grid:
        x_shape, w_shape = (2, *hw, 4), (*k, 2, 6)
        pads = shapes.normalize_padding(pad, hw, k, s, d)
        if min(shapes.conv_output_hw(hw, k, s, pads, d)) < 1:
            with pytest.raises(ValueError, match="kernel is larger than the padded input"):
                shapes.conv_output_shape(x_shape, w_shape, stride=s, padding=pad, dilation=d, groups=2)
            continue
        out = jax.eval_shape(
            lambda x, w: lax.conv_general_dilated(x, w, s, pad, rhs_dilation=d, feature_group_count=2,
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC")),
            jax.ShapeDtypeStruct(x_shape, np.float32), jax.ShapeDtypeStruct(w_shape, np.float32))
        assert shapes.conv_output_shape(x_shape, w_shape, stride=s, padding=pad, dilation=d, groups=2) == out.shape
        checked += 1
    assert checked > 300


@pytest.mark.parametrize("padding, expected", [
    ("VALID", ((0, 0), (0, 0))),
    ("valid", ((0, 0), (0, 0))),
    ("same", ((1, 1), (0, 1))),  # 5x4 input, 3x2 window, stride 1
    (2, ((2, 2), (2, 2))),
    ((1, 3), ((1, 1), (3, 3))),
    ([[1, 0], [0, 2]], ((1, 0), (0, 2))),
])
def test_normalize_padding_spellings(padding, expected):
    assert shapes.normalize_padding(padding, (5, 4), (3, 2), (1, 1), (1, 1)) == expected


def test_pool_output_shape():
    assert shapes.pool_output_shape((1, 28, 28, 6), 2) == (1, 14, 14, 6)  # stride defaults to the window
    assert shapes.pool_output_shape((1, 6, 7, 3), 3, stride=1) == (1, 4, 5, 3)
    assert shapes.pool_output_shape((1, 3, 7, 6), (2, 2), stride=2, padding="SAME", layout="NCHW") == (1, 3, 4, 3)


# ----------------------------------------------------------------------------- counts
def test_param_counts():
    assert shapes.conv_param_count(5, 5, 1, 6) == 156  # LeNet C1: 25*6 + 6
    assert shapes.conv_param_count(5, 5, 6, 16) == 2416  # LeNet C3 (full connection table)
    assert shapes.conv_param_count(3, 3, 64, 128, bias=False) == 73728
    assert shapes.conv_param_count(3, 3, 32, 32, groups=32) == 320  # depthwise: 9*32 + 32
    assert shapes.conv_param_count(3, 3, 8, 16, groups=2) == 9 * 4 * 16 + 16
    assert shapes.dense_param_count(400, 120) == 48120
    # parameter sharing: a 5x5x1->6 conv on 32x32 vs a dense layer with the same in/out sizes
    assert shapes.dense_param_count(32 * 32, 28 * 28 * 6) > 3000 * shapes.conv_param_count(5, 5, 1, 6)


def test_flops():
    # LeNet C1 output (1, 28, 28, 6): 4704 outputs, 25 multiply-adds each, + bias
    assert shapes.conv_flops((1, 28, 28, 6), (5, 5, 1, 6)) == 2 * 4704 * 25 + 4704
    assert shapes.conv_flops((1, 6, 28, 28), (6, 1, 5, 5), layout="NCHW", bias=False) == 2 * 4704 * 25
    assert shapes.dense_flops(4, 400, 120) == 2 * 4 * 400 * 120 + 4 * 120
    assert shapes.pool_flops((1, 14, 14, 6), (2, 2)) == 1176 * 3


def test_receptive_field():
    assert shapes.receptive_field([(3, 1, 1)] * 2) == (5, 1)  # two 3x3 convs see 5x5 (VGG)
    assert shapes.receptive_field([(3, 1, 1)] * 3) == (7, 1)
    # LeNet-5: C1 5x5, S2 2/2, C3 5x5, S4 2/2, C5 5x5 -> 32 (the whole input), jump 4
    assert shapes.receptive_field([(5, 1, 1), (2, 2, 1), (5, 1, 1), (2, 2, 1), (5, 1, 1)]) == (32, 4)
    assert shapes.receptive_field([(3, 1, 2), (3, 1, 4)]) == (1 + 4 + 8, 1)  # dilated stack
    assert shapes.receptive_field([(3, 2, 1), (3, 2, 1)]) == (7, 4)
    assert shapes.receptive_field([]) == (1, 1)


# ----------------------------------------------------------------------------- validation
X, W = (1, 5, 5, 4), (3, 3, 2, 4)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(x_shape=(5, 5, 4)), ValueError, "x and w must have the same rank"),
    (dict(x_shape=(5, 5, 4), layout="NHWC"), ValueError, "x must have rank 4 to match layout='NHWC'"),
    (dict(w_shape=(3, 3, 4)), ValueError, "x and w must have the same rank"),
    (dict(w_shape=(3, 3, 4), layout="NHWC"), ValueError, "w must have rank 4"),
    (dict(layout="HWC"), ValueError, "layout must be one of"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(stride=(1, 2, 3)), TypeError, "stride must be an int or a pair"),
    (dict(stride=True), TypeError, "stride must be an int or a pair"),
    (dict(dilation=(1, 0)), ValueError, "dilation must be >= 1"),
    (dict(groups=0), ValueError, "groups must be a positive int"),
    (dict(groups=2.0), ValueError, "groups must be a positive int"),
    (dict(groups=3), ValueError, "groups=3 must divide the input channels"),
    (dict(groups=2, w_shape=(3, 3, 2, 5)), ValueError, "groups=2 must divide the output channels"),
    (dict(groups=1), ValueError, "w has 2 input channels per group"),
    (dict(padding="FULL"), ValueError, "padding must be 'VALID', 'SAME'"),
    (dict(padding=(-1, 0)), ValueError, "padding must be non-negative"),
    (dict(padding=1.5), TypeError, "padding must be"),
    (dict(w_shape=(6, 3, 2, 4)), ValueError, "kernel is larger than the padded input"),
    (dict(dilation=3), ValueError, "kernel is larger than the padded input"),
    (dict(x_shape=(1, -3, 5, 4), padding=5), ValueError, r"x_shape must hold non-negative ints .*\(1, -3, 5, 4\)"),
    (dict(x_shape=(1, 5.0, 5, 4)), ValueError, "x_shape must hold non-negative ints"),
    (dict(x_shape=(1, True, 5, 4)), ValueError, "x_shape must hold non-negative ints"),
    (dict(x_shape="1554"), TypeError, "x_shape must be a tuple of ints"),
    (dict(w_shape=(3, 3, 2, -4)), ValueError, "w_shape must hold non-negative ints"),
])
def test_conv_output_shape_errors(kw, exc, match):
    args = dict(x_shape=X, w_shape=W, groups=2)
    args.update(kw)
    with pytest.raises(exc, match=match):
        shapes.conv_output_shape(args.pop("x_shape"), args.pop("w_shape"), **args)


def test_padding_fits_after_padding():
    """A kernel larger than the input is fine once padding makes room (6x6 kernel, 5x5 input, pad 1)."""
    assert shapes.conv_output_shape((1, 5, 5, 1), (6, 6, 1, 1), padding=1) == (1, 2, 2, 1)


def test_pool_output_shape_errors():
    with pytest.raises(ValueError, match="window is larger than the padded input"):
        shapes.pool_output_shape((1, 3, 3, 1), 4)
    with pytest.raises(ValueError, match="window must be >= 1"):
        shapes.pool_output_shape((1, 3, 3, 1), 0)


def test_tap_pad_config_places_each_pixel_where_the_tap_read_it():
    # tap at offset (1, 0) with stride (2, 1) over a 5x4 grid, 2x3 outputs: reads rows 1, 3 and
    # columns 0, 1, 2, so the pad config is (lo, hi, interior) = (1, 1, 1) and (0, 1, 0) by hand
    cfg = shapes.tap_pad_config((1, 0), (2, 1), (2, 3), (5, 4))
    assert cfg == ((0, 0, 0), (1, 1, 1), (0, 1, 0), (0, 0, 0))
    vals = jax.numpy.arange(1.0, 7.0).reshape(1, 2, 3, 1)
    placed = np.asarray(lax.pad(vals, jax.numpy.zeros(()), cfg))[0, :, :, 0]
    want = np.zeros((5, 4))
    want[1, :3], want[3, :3] = [1, 2, 3], [4, 5, 6]
    np.testing.assert_array_equal(placed, want)


# ----------------------------------------------------------------------------- 1-D and 3-D (hand tables)
@pytest.mark.parametrize("x_shape, w_shape, kw, expected", [
    ((1, 100, 1), (5, 1, 8), dict(), (1, 96, 8)),  # 100 - 5 + 1
    ((2, 4096, 16), (9, 16, 32), dict(stride=4, padding=4), (2, 1024, 32)),  # floor((4096 + 8 - 9) / 4) + 1
    ((1, 7, 3), (3, 3, 6), dict(dilation=3), (1, 1, 6)),  # F_eff = 7
    ((1, 10, 4), (4, 2, 6), dict(stride=3, padding="SAME", groups=2), (1, 4, 6)),  # ceil(10 / 3)
    ((1, 3, 9), (6, 1, 2), dict(padding=((2, 0),), groups=3, layout="NCW"), (1, 6, 10)),  # 9 + 2 - 2 + 1
    ((1, 16, 16, 16, 1), (3, 3, 3, 1, 8), dict(padding=1), (1, 16, 16, 16, 8)),
    ((2, 9, 8, 7, 4), (3, 2, 1, 4, 5), dict(stride=(2, 3, 1)), (2, 4, 3, 7, 5)),  # 7//2+1, 7//3+1, 7
    ((1, 5, 6, 7, 2), (3, 3, 3, 2, 2), dict(stride=2, padding="SAME"), (1, 3, 3, 4, 2)),  # ceil(5/2), ceil(6/2), ceil(7/2)
    ((1, 4, 5, 6, 7), (8, 2, 3, 3, 3), dict(dilation=(1, 2, 1), padding=((0, 1), (2, 2), (1, 0)), groups=2,
                                            layout="NCDHW"), (1, 8, 4, 6, 6)),  # 5+1-3+1, 6+4-5+1, 7+1-3+1
])
def test_conv_output_shape_1d_3d_table(x_shape, w_shape, kw, expected):
    assert shapes.conv_output_shape(x_shape, w_shape, **kw) == expected


def test_nd_flops_and_param_counts_by_hand():
    # 1-D: out (2, 96, 8), kernel 5 x 1 in: 2 * 1536 * 5 = 15360 + 1536 bias = 16896
    assert shapes.conv_flops((2, 96, 8), (5, 1, 8), "NWC") == 2 * 2 * 96 * 8 * 5 + 2 * 96 * 8 == 16896
    # 3-D: out (1, 16, 16, 16, 8) = 32768 outputs, kernel 27 x 2 in (groups 2 of 4 channels): 2*27*2 = 108 each
    assert shapes.conv_flops((1, 16, 16, 16, 8), (3, 3, 3, 2, 8), "NDHWC", bias=False) == 32768 * 108 == 3538944
    # channels-first OIDHW kernel: the same count
    assert shapes.conv_flops((1, 8, 16, 16, 16), (8, 2, 3, 3, 3), "NCDHW", bias=False) == 3538944
    # params: 3x3x3 kernel, 4 -> 8 channels, groups 2: 27 * 2 * 8 + 8 = 440; 1-D kernel 5, 1 -> 8: 48
    assert shapes.conv_param_count(3 * 3, 3, 4, 8, groups=2) == 440
    assert shapes.conv_param_count(5, 1, 1, 8) == 48


def test_zero_sized_kernel_is_refused():
    with pytest.raises(ValueError, match=r"w must have a kernel of size >= 1 .*\(0, 3\)"):
        shapes.conv_output_shape((1, 8, 8, 3), (0, 3, 3, 4))
    with pytest.raises(ValueError, match=r"w must have a kernel of size >= 1"):
        shapes.conv_output_shape((1, 3, 5, 5, 5), (4, 3, 3, 0, 3), layout="NCDHW")


def test_every_shape_formula_checks_the_input_shape_itself():
    """Before: a negative size gave a shape ((1, -3, 5, 1) padded by 5 -> (1, 7, 15, 1)), a float size a
    float shape, a huge scale a bare OverflowError, an unknown upsample method the linear count, and a
    groups that does not divide cin a rounded-down parameter count."""
    for call in (lambda: shapes.pool_output_shape((1, -3, 5, 1), 2, padding=5),
                 lambda: shapes.adaptive_pool_output_shape((1, 5.0, 5, 1), 2),
                 lambda: shapes.upsample_output_shape((1, 5, 5, -1), 2),
                 lambda: shapes.conv_transpose_output_shape((1, 5, 5.0, 4), (2, 2, 3, 4), stride=2)):
        with pytest.raises(ValueError, match="x_shape must hold non-negative ints"):
            call()
    with pytest.raises(ValueError, match=r"scale=1e\+308 is too large"):
        shapes.upsample_output_shape((1, 5, 5, 1), 1e308)
    with pytest.raises(ValueError, match="method must be one of nearest, linear, bilinear, trilinear; got 'bogus'"):
        shapes.upsample_flops((1, 5, 5, 1), 2, method="bogus")
    with pytest.raises(ValueError, match="groups=3 must divide the input channels"):
        shapes.conv_param_count(3, 3, 4, 6, groups=3)
    assert shapes.conv_param_count(3, 3, 4, 6, groups=2) == 3 * 3 * 2 * 6 + 6  # still the formula by hand
    assert shapes.pool_output_shape([2, np.int64(6), 6, 3], 2) == (2, 3, 3, 3)  # lists and NumPy ints are shapes
