"""fcnn.figures: array pictures are exactly one block per element, a blank map is one colour, the
feature-map rows put each channel on its own scale with blank gaps."""
import matplotlib.image
import numpy as np
import pytest

from _patterns import png
from fcnn import figures


def test_save_array_writes_one_block_per_element(tmp_path):
    path = str(tmp_path / "a.png")
    figures.save_array(np.arange(6.0).reshape(2, 3), path, cmap="gray", scale=5)
    img = matplotlib.image.imread(path)[..., 0]
    assert img.shape == (10, 15)
    assert (img[:5, :5] == img[0, 0]).all() and (img[5:, 10:] == img[9, 14]).all()  # one colour per block
    assert np.all(np.diff(img[2, ::5]) > 0) and img[7, 0] > img[2, 10]  # brighter as the values grow
    with pytest.raises(ValueError, match="scale must be a positive int"):
        figures.save_array(np.zeros((2, 2)), path, scale=0)
    with pytest.raises(ValueError, match="2-D picture"):
        figures.save_array(np.zeros((2, 2, 2)), path)


def test_blank_map_png_is_one_colour(tmp_path):
    # the variance check of the picture tests can tell a blank picture: an all-zero map saves as one colour
    path = str(tmp_path / "blank.png")
    figures.save_nonneg(np.zeros((5, 7)), path, 4)
    shape, var = png(path)
    assert shape == (20, 28) and var < 1e-12


def test_channel_strip_scales_each_channel_and_leaves_gaps_blank():
    ramp = np.arange(12.0).reshape(3, 4)
    a = np.stack([ramp, np.full((3, 4), 5.0)], -1)  # (3, 4, 2): a ramp and a constant map
    strip = figures._channel_strip(a, 3)  # three slots, gaps of max(1, 4 // 4) = 1 column
    assert strip.shape == (3, 3 * 4 + 2)
    np.testing.assert_allclose(strip[:, :4], ramp / 11)  # min-max scaled on its own
    assert np.isnan(strip[:, 4]).all() and np.isnan(strip[:, 9]).all()  # the gaps
    np.testing.assert_array_equal(strip[:, 5:9], 0.0)  # a constant map is 0
    assert np.isnan(strip[:, 10:]).all()  # the third slot: the map has no third channel


def test_feature_maps_figure_size(tmp_path):
    path = str(tmp_path / "fm.png")
    maps = [("0.Conv2D", np.random.default_rng(0).standard_normal((6, 6, 3))), ("1.Flatten", np.arange(5.0))]
    figures.feature_maps_figure(maps, path, max_channels=2)
    shape, var = png(path)
    assert shape == (int(1.6 * 2 * 100), 2 * 2 * 100) and var > 1e-3
    with pytest.raises(ValueError, match="max_channels must be a positive int"):
        figures.feature_maps_figure(maps, path, max_channels=0)
