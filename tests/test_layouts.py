"""fcnn.layouts: layout names per rank, kernel layouts, rank checks and per-dimension validation."""
import pytest

from fcnn import layouts, shapes


@pytest.mark.parametrize("layout, kernel, rank, last", [
    ("NWC", "WIO", 1, True), ("NCW", "OIW", 1, False),
    ("NHWC", "HWIO", 2, True), ("NCHW", "OIHW", 2, False),
    ("NDHWC", "DHWIO", 3, True), ("NCDHW", "OIDHW", 3, False),
])
def test_kernel_layout_rank_and_channel_side(layout, kernel, rank, last):
    """The table of lax's dimension-number strings (and PyTorch's OI... kernels for channels-first)."""
    assert layouts.kernel_layout(layout) == kernel
    assert layouts.layout_rank(layout) == rank
    assert layouts.is_channels_last(layout) is last


def test_spatial_channel_and_kernel_parts_by_hand():
    assert layouts.spatial_dims((2, 5, 6, 7, 3), "NDHWC") == (5, 6, 7)
    assert layouts.spatial_dims((2, 3, 5, 6, 7), "NCDHW") == (5, 6, 7)
    assert layouts.channel_dim((2, 9, 4), "NWC") == 4 and layouts.channel_dim((2, 4, 9), "NCW") == 4
    assert layouts.make_shape(2, (5, 6, 7), 3, "NCDHW") == (2, 3, 5, 6, 7)
    assert layouts.kernel_parts((3, 4, 5, 2, 8), "NDHWC") == ((3, 4, 5), 2, 8)
    assert layouts.kernel_parts((8, 2, 3, 4, 5), "NCDHW") == ((3, 4, 5), 2, 8)


@pytest.mark.parametrize("ndim, expected", [(3, "NWC"), (4, "NHWC"), (5, "NDHWC")])
def test_default_layout_is_channels_last_of_the_rank(ndim, expected):
    assert layouts.normalize_layout(None, ndim) == expected


@pytest.mark.parametrize("layout, ndim, match", [
    ("NHWC", 3, r"x must have rank 4 to match layout='NHWC', got rank 3; for rank 3 use layout NWC or NCW"),
    ("NWHC", 4, r"layout must be one of NHWC, NCHW"),
    (None, 6, r"1, 2 or 3 spatial dimensions .* got rank 6"),
    ("NCDHW", 4, r"x must have rank 5"),
])
def test_normalize_layout_errors_name_the_rule(layout, ndim, match):
    with pytest.raises(ValueError, match=match):
        layouts.normalize_layout(layout, ndim)


def test_normalize_tuple_by_rank():
    assert layouts.normalize_tuple(2, "stride", 3) == (2, 2, 2)
    assert layouts.normalize_tuple((1, 2, 3), "stride", 3) == (1, 2, 3)
    with pytest.raises(TypeError, match=r"stride must be an int or 3 ints"):
        layouts.normalize_tuple((1, 2), "stride", 3)
    with pytest.raises(ValueError, match=r"dilation must be >= 1 in every dimension"):
        layouts.normalize_tuple((1, 0, 1), "dilation", 3)
    with pytest.raises(TypeError, match=r"window must be an int or a sequence of one int, got 1.5"):
        layouts.normalize_tuple(1.5, "window", 1)


def test_shapes_reexports_the_layout_names():
    """Callers keep reaching these through fcnn.shapes: the same objects, not copies."""
    for name in ("normalize_layout", "kernel_layout", "normalize_tuple", "spatial_dims", "LAYOUTS_BY_RANK"):
        assert getattr(shapes, name) is getattr(layouts, name)
