"""fcnn.figures: array pictures are exactly one block per element, a blank map is one colour, the
feature-map rows put each channel on its own scale with blank gaps, non-finite values are drawn in
the bad colour (never a colour of the map) with a warning, and ``save=`` paths are checked."""
import os

import matplotlib.colors
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
    strip, bad = figures._channel_strip(a, 3)  # three slots, gaps of max(1, 4 // 4) = 1 column
    assert strip.shape == bad.shape == (3, 3 * 4 + 2) and not bad.any()
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


MAGENTA = np.array(matplotlib.colors.to_rgb("magenta"))


def _is_bad_colour(rgb):
    return np.all(np.abs(rgb - MAGENTA) < 1e-6, axis=-1)


def test_channel_strip_keeps_non_finite_values_visible():
    """Before, a map with one NaN had lo = hi = NaN and was drawn as the constant 0 (a valid colour)."""
    m = np.arange(12.0).reshape(3, 4)
    m[1, 2], m[0, 0] = np.nan, np.inf
    a = np.stack([m, np.full((3, 4), np.nan)], -1)  # a partly and a wholly non-finite map
    strip, bad = figures._channel_strip(a, 2)
    finite = np.isfinite(m)
    lo, hi = m[finite].min(), m[finite].max()  # 1 and 11: scaled over the finite values only
    np.testing.assert_allclose(strip[:, :4][finite], (m[finite] - lo) / (hi - lo))
    assert np.isnan(strip[:, :4][~finite]).all() and np.isnan(strip[:, 5:]).all()
    np.testing.assert_array_equal(bad[:, :4], ~finite)
    assert bad[:, 5:].all() and not bad[:, 4].any()  # the gap is blank, not bad


def test_save_array_draws_non_finite_values_in_the_bad_colour(tmp_path):
    """NaN and inf are magenta; the colour range is the finite values' (before, NaN took the lowest colour)."""
    path = str(tmp_path / "a.png")
    img = np.array([[0.0, 1.0], [np.nan, np.inf]])
    figures.save_array(img, path, cmap="gray", scale=2)
    rgb = matplotlib.image.imread(path)[..., :3]
    np.testing.assert_allclose(rgb[0, 0], 0.0)  # black: the lowest finite value
    np.testing.assert_allclose(rgb[0, 2], 1.0)  # white: the highest
    assert _is_bad_colour(rgb[2:]).all() and not _is_bad_colour(rgb[:2]).any()
    figures.save_nonneg(np.array([[0.0, 2.0, np.nan]]), path, 1)  # the range [0, 2], not [0, nan]
    rgb = matplotlib.image.imread(path)[0, :, :3]
    assert not _is_bad_colour(rgb[:2]).any() and _is_bad_colour(rgb[2]) and rgb[1].sum() > rgb[0].sum()


def test_feature_maps_figure_shows_and_names_non_finite_values(tmp_path):
    path = str(tmp_path / "fm.png")
    conv = np.random.default_rng(0).standard_normal((6, 6, 3))
    conv[2, 3, 1] = np.nan
    with pytest.warns(figures.NonFiniteWarning, match=r"feature map 0\.Conv2D \(channel 1\) holds 1 non-finite"):
        figures.feature_maps_figure([("0.Conv2D", conv)], path, max_channels=3)
    assert _is_bad_colour(matplotlib.image.imread(path)[..., :3]).any()
    with pytest.warns(figures.NonFiniteWarning, match=r"feature map 1\.Flatten holds 2 non-finite"):
        figures.feature_maps_figure([("1.Flatten", np.array([1.0, np.nan, 2.0, np.inf]))], path, max_channels=2)
    assert _is_bad_colour(matplotlib.image.imread(path)[..., :3]).any()


def test_check_save_refuses_existing_files_directories_and_missing_folders(tmp_path):
    mine = tmp_path / "mine.png"
    mine.write_text("mine")
    assert figures.check_save(None, False) is None
    with pytest.raises(ValueError, match=r"save '.*mine\.png' exists; pass overwrite=True to replace it"):
        figures.check_save(str(mine), False)
    assert figures.check_save(str(mine), True) == str(mine)
    with pytest.raises(ValueError, match="is a directory"):
        figures.check_save(str(tmp_path), True)
    with pytest.raises(ValueError, match="does not exist"):
        figures.check_save(str(tmp_path / "no" / "a.png"), True)
    with pytest.raises(TypeError, match="overwrite must be a bool"):
        figures.check_save(None, "yes")
    assert mine.read_text() == "mine"


def test_writers_do_not_create_folders(tmp_path):
    """Before, every writer made the missing folders of its path (os.makedirs) without being asked."""
    with pytest.raises(FileNotFoundError):
        figures.save_array(np.zeros((2, 2)), str(tmp_path / "no" / "a.png"))
    assert not os.path.exists(tmp_path / "no")
