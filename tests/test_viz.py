"""fcnn.viz: feature maps, filters, confusion matrix, the PNG of every picture (the attribution
maps through viz's re-exports), the `fcnn viz` command and its errors.

The detector and its data set are tests/_patterns.py's, trained once per session (conftest's
``trained_detector``); the maps' own tests are in test_attribution.py."""
import os

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from _patterns import CAM_LAYER, MIN_VAR, SIZE, blank_maps_allowed, png
from fcnn import cli, data, viz
from fcnn.run import TrainConfig, build_model, load_run
from fcnn.train import fit


def test_feature_maps(trained_detector):
    ds, model, params, state = trained_detector
    fm = viz.feature_maps(model, params, state, ds.x_test[0])
    assert [n for n, _ in fm] == ["0.Conv2D", "1.Relu", "2.Conv2D", "3.Relu", "4.Conv2D", "5.MaxPool2D", "6.Flatten"]
    assert fm[0][1].shape == (SIZE, SIZE, 32) and fm[5][1].shape == (1, 1, 4) and fm[6][1].shape == (4,)
    np.testing.assert_array_equal(fm[1][1], np.maximum(fm[0][1], 0))
    logits, _ = model.apply(params, state, jnp.asarray(ds.x_test[:1]))
    np.testing.assert_allclose(fm[-1][1], np.asarray(logits[0]), rtol=1e-6)


def test_confusion_matrix_matches_numpy_count():
    rng = np.random.default_rng(0)
    yt, yp = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    m = viz.confusion_matrix(yt, yp, 5)
    expect = np.array([[np.sum((yt == t) & (yp == p)) for p in range(5)] for t in range(5)])
    np.testing.assert_array_equal(m, expect)
    assert m.sum() == 200
    with pytest.raises(ValueError, match="y_pred"):
        viz.confusion_matrix(yt, yp + 1, 5)


def test_filters_grid():
    w = np.arange(3 * 3 * 1 * 4, dtype=float).reshape(3, 3, 1, 4)
    w[..., 0, 1] = 7.0  # a constant tile shows as 0.5
    g = viz.filters({"w": w}, pad=1)
    assert g.shape == (7, 7)
    np.testing.assert_allclose(g[:3, :3], (w[..., 0, 0] - w[..., 0, 0].min()) / np.ptp(w[..., 0, 0]))
    np.testing.assert_allclose(g[:3, 4:7], 0.5)
    assert np.isnan(g[3]).all() and np.isnan(g[:, 3]).all()
    np.testing.assert_allclose(viz.filters(w.transpose(3, 2, 0, 1), layout="NCHW"), g, equal_nan=True)


def test_filters_keep_non_finite_values_visible(tmp_path):
    """A NaN (or inf) in a kernel stays NaN in its tile, the tile's other weights are scaled over its
    finite values, the PNG draws it magenta, and a warning names the tile. Before, one NaN made the
    whole tile the constant 0.5 ("a constant kernel") and nothing said so."""
    w = np.arange(3 * 3 * 2 * 2, dtype=float).reshape(3, 3, 2, 2)  # tiles (out, in): (0,0) (0,1) (1,0) (1,1)
    w[1, 1, 0, 0], w[0, 2, 1, 1] = np.nan, -np.inf
    path = str(tmp_path / "f.png")
    with pytest.warns(viz.NonFiniteWarning, match=r"tiles \(out 0, in 0\), \(out 1, in 1\) holds 2 non-finite"):
        g = viz.filters(w, save=path, scale=2)
    for (o, i), (r, c) in {(0, 0): (0, 0), (1, 1): (4, 4)}.items():  # 2 x 2 tiles, row-major over (out, in)
        k = w[:, :, i, o]
        finite = np.isfinite(k)
        want = np.where(finite, (k - k[finite].min()) / (k[finite].max() - k[finite].min()), np.nan)
        np.testing.assert_allclose(g[r:r + 3, c:c + 3], want)
    assert np.isfinite(g[:3, 4:]).all() and np.isfinite(g[4:, :3]).all()  # the finite tiles
    rgb = matplotlib.image.imread(path)[..., :3]
    bad = np.all(np.abs(rgb - np.array([1.0, 0.0, 1.0])) < 1e-6, axis=-1)
    expect = np.repeat(np.repeat(np.isnan(g) & _in_tiles(g.shape, 3, 2), 2, 0), 2, 1)  # not the gaps
    np.testing.assert_array_equal(bad, expect)  # magenta exactly at the two non-finite weights


def _in_tiles(shape, k, cols, pad=1):
    """True at the pixels of the kernel tiles (not the gaps) of a ``filters`` grid."""
    m = np.zeros(shape, bool)
    for r in range(0, shape[0], k + pad):
        for c in range(0, min(shape[1], cols * (k + pad)), k + pad):
            m[r:r + k, c:c + k] = True
    return m


# ----------------------------------------------------------------------------- PNGs
def test_pngs(trained_detector, tmp_path):
    ds, model, params, state = trained_detector
    x, y = ds.x_test[0], int(ds.y_test[0])
    p = str(tmp_path / "{}.png")
    viz.saliency(model, params, state, x, y, save=p.format("sal"))
    viz.smoothgrad(model, params, state, x, y, key=jax.random.PRNGKey(0), n=8, save=p.format("sg"), scale=2)
    viz.grad_cam(model, params, state, x, y, CAM_LAYER, save=p.format("cam"), scale=4)
    viz.occlusion(model, params, state, x, y, patch=4, save=p.format("occ"), scale=3)
    viz.filters(params[0], save=p.format("filters"))
    viz.confusion_matrix(ds.y_test, ds.y_test, 4, save=p.format("conf"))
    viz.feature_maps(model, params, state, x, save=p.format("fm"), max_channels=4)
    for name, size in (("sal", (128, 128)), ("sg", (32, 32)), ("cam", (64, 64)), ("occ", (48, 48)),
                       ("filters", (23 * 8, 23 * 8)), ("conf", (128, 128)), ("fm", (int(1.6 * 7 * 100), 800))):
        shape, var = png(p.format(name))
        assert shape == size, name
        assert var > MIN_VAR, (name, var)
    # the picture is the array: the brightest saliency pixel block is where the map peaks
    img = matplotlib.image.imread(p.format("sal"))[..., :3].sum(-1)
    r, c = np.unravel_index(np.argmax(viz.saliency(model, params, state, x, y)), (SIZE, SIZE))
    assert img[r * 8 + 4, c * 8 + 4] == img.max()


def _small_net():
    from fcnn.combinators import serial
    from fcnn.layers import Conv2D, Dense, Flatten, Relu

    model = serial(Conv2D(2, 3, padding="SAME"), Relu(), Flatten(), Dense(3))
    _, params, state = model.init(jax.random.PRNGKey(0), (1, 6, 6, 1))
    return model, params, state, np.random.default_rng(0).normal(size=(6, 6, 1)).astype(np.float32)


_SAVERS = {  # every public function with save=, on arguments that would fail if anything were computed first
    "filters": lambda **kw: viz.filters(None, **kw),
    "feature_maps": lambda **kw: viz.feature_maps(None, None, None, None, **kw),
    "saliency": lambda **kw: viz.saliency(None, None, None, None, 0, **kw),
    "smoothgrad": lambda **kw: viz.smoothgrad(None, None, None, None, 0, key=jax.random.PRNGKey(0), **kw),
    "grad_cam": lambda **kw: viz.grad_cam(None, None, None, None, 0, 0, **kw),
    "occlusion": lambda **kw: viz.occlusion(None, None, None, None, 0, **kw),
    "curves": lambda **kw: viz.curves("/nonexistent-run", **kw),
    "confusion_matrix": lambda **kw: viz.confusion_matrix(None, None, 3, **kw),
}


@pytest.mark.parametrize("name", sorted(_SAVERS))
def test_save_never_replaces_a_file_or_makes_a_folder_unless_told(tmp_path, name):
    """save= is checked before anything is computed: an existing file is refused (and left byte for
    byte) unless overwrite=True, a missing folder is refused and not made. Before, the file was
    replaced by a PNG and the folders were created (only render / fcnn viz checked)."""
    mine = tmp_path / "mine.png"
    mine.write_text("mine")
    with pytest.raises(ValueError, match=r"save '.*mine\.png' exists; pass overwrite=True to replace it"):
        _SAVERS[name](save=str(mine))
    assert mine.read_text() == "mine"
    with pytest.raises(ValueError, match=r"save '.*' does not exist"):
        _SAVERS[name](save=str(tmp_path / "no" / "x.png"), overwrite=True)
    assert not os.path.exists(tmp_path / "no")
    with pytest.raises(TypeError, match="overwrite must be a bool"):
        _SAVERS[name](save=str(tmp_path / "x.png"), overwrite="yes")


def test_save_with_overwrite_replaces_the_file(tmp_path):
    model, params, state, x = _small_net()
    mine = tmp_path / "mine.png"
    for draw in (lambda **kw: viz.saliency(model, params, state, x, 1, **kw),
                 lambda **kw: viz.occlusion(model, params, state, x, 1, patch=2, **kw),
                 lambda **kw: viz.feature_maps(model, params, state, x, **kw),
                 lambda **kw: viz.filters(params[0], **kw)):
        mine.write_text("mine")
        draw(save=str(mine), overwrite=True)
        assert mine.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- fcnn viz
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("run"))
    cfg = TrainConfig(model="lenet5", dataset="synthetic", epochs=2, impl="lax", pool_impl="lax", augment_shift=0)
    ds = data.load("synthetic")
    fit(build_model(cfg, ds.num_classes), ds, cfg, run_dir=d, verbose=False, progress=False)
    return d


# synthetic images are 16x16 (8 px per cell: 128); lenet5 conv 1 has 6 kernels of 5x5 (3x2 tiles)
@pytest.mark.parametrize("what,size", [("filters", (88, 136)), ("saliency", (128, 128)), ("smoothgrad", (128, 128)),
                                       ("gradcam", (128, 128)), ("occlusion", (128, 128)), ("confusion", (128, 128)),
                                       ("curves", (350, 900)), ("features", (1920, 1600))])
def test_cli_writes_pngs(run_dir, tmp_path, capsys, what, size):
    out = str(tmp_path / f"{what}.png")
    assert cli.main(["viz", "--run", run_dir, "--what", what, "--index", "1", "--out", out]) == 0
    shape, var = png(out)
    assert shape == size
    assert var > MIN_VAR, var
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out and "warning" not in captured.err
    if what == "gradcam":
        assert "layer 4.Relu" in captured.out  # the default: lenet5's last unpooled feature map


def test_cli_layer_by_name(run_dir, tmp_path):
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    assert cli.main(["viz", "--run", run_dir, "--what", "filters", "--layer", "3.Conv2D", "--out", a]) == 0
    assert cli.main(["viz", "--run", run_dir, "--what", "filters", "--layer", "3", "--out", b]) == 0
    assert png(a)[0] == (472, 472)  # 16x6 kernels of 5x5: 10 x 10 tiles of 6 px less the last gap, x 8
    np.testing.assert_array_equal(matplotlib.image.imread(a), matplotlib.image.imread(b))


def test_cli_relays_a_blank_grad_cam(run_dir, tmp_path, capsys):
    # At lenet5's 2x2 pooled map (5.MaxPool2D) the dense head reads the four cells by position, so
    # the spatially averaged channel weights often cancel and the CAM is zero: the CLI must say so.
    config, ds, model, params, state, _ = load_run(run_dir)
    blank = None
    with blank_maps_allowed():
        for i in range(16):
            if not viz.grad_cam(model, params, state, ds.x_test[i], int(ds.y_test[i]), 5).any():
                blank = i
                break
    assert blank is not None
    out = str(tmp_path / "blank.png")
    assert cli.main(["viz", "--run", run_dir, "--what", "gradcam", "--layer", "5.MaxPool2D", "--index", str(blank),
                     "--out", out]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fcnn viz: warning: Grad-CAM of class")
    assert "zero everywhere" in err[0]
    assert png(out)[1] < 1e-12


@pytest.mark.parametrize("args,message", [
    (["--what", "saliency"], "no such run directory"),
    (["--what", "gradcam", "--layer", "conv9"], "--layer 'conv9': no top-level layer has that name; "
                                                "this model's layers are 0.Conv2D, 1.Relu, 2.MaxPool2D"),
    (["--what", "gradcam", "--layer", "42"], "--layer 42 is out of range: the model has 12 top-level layers"),
    (["--what", "gradcam", "--layer", "Relu"], "--layer 'Relu' is ambiguous: 1.Relu, 4.Relu, 8.Relu, 10.Relu"),
    (["--what", "gradcam", "--layer", "Flatten"], "Grad-CAM needs a rank-4"),
    (["--what", "filters", "--layer", "1.Relu"], "--layer 1.Relu is not a top-level Conv2D of this model"),
    (["--what", "saliency", "--index", "100000"], "--index 100000 is out of range"),
    (["--what", "nonsense"], "argument --what: invalid choice"),
])
def test_cli_errors_are_one_line(run_dir, tmp_path, capsys, args, message):
    out = str(tmp_path / "x.png")
    run = str(tmp_path / "nope") if message == "no such run directory" else run_dir
    assert cli.main(["viz", "--run", run, *args, "--out", out]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("fcnn: error: " if "invalid choice" not in message else "fcnn viz: error: "), err
    assert message in err, err
    assert not os.path.exists(out)


def test_cli_never_overwrites_a_file_without_overwrite(run_dir, tmp_path, capsys, monkeypatch):
    """An existing --out (a user's notes, the run's own config.json) is refused before the run is
    loaded and left byte for byte; --overwrite replaces it; a folder or a missing folder is refused.
    Before, both files were silently replaced by PNGs (the run could no longer be evaluated)."""
    import fcnn.viz

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    config_json = os.path.join(run_dir, "config.json")
    before = open(config_json, "rb").read()
    monkeypatch.setattr(fcnn.viz, "load_run", lambda run: pytest.fail("loaded the run before checking --out"))
    for out in (str(notes), config_json):
        assert cli.main(["viz", "--run", run_dir, "--what", "filters", "--out", out]) == 2
        assert f"--out '{out}' exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert notes.read_text() == "mine" and open(config_json, "rb").read() == before
    assert cli.main(["viz", "--run", run_dir, "--what", "curves", "--out", str(tmp_path)]) == 2
    assert "is a directory; give the path of a file" in capsys.readouterr().err
    assert cli.main(["viz", "--run", run_dir, "--what", "curves", "--out", str(tmp_path / "no" / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli.main(["viz", "--run", run_dir, "--what", "filters", "--out", str(notes), "--overwrite"]) == 0
    assert png(str(notes))[0] == (88, 136)  # now the picture


def test_prediction_panels_of_dense_tasks(tmp_path):
    """input / prediction / target: the prediction is the model's own output (segment: its arg-max
    class per pixel), the target the test target; classify runs are refused by name."""
    pytest.importorskip("matplotlib")
    from fcnn import figures
    from fcnn.layers import Conv2D

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 1)).astype(np.float32)
    model = Conv2D(3, 3, padding="SAME")
    _, params, state = model.init(jax.random.PRNGKey(0), (1, 8, 8, 1))
    logits = np.asarray(model.apply(params, state, x[None])[0][0])
    target = (np.arange(64) % 3).reshape(8, 8)
    panels = viz.prediction_panels("segment", model, params, state, x, target)
    assert [t for t, _ in panels] == ["input", "prediction", "target"]
    np.testing.assert_array_equal(panels[1][1], logits.argmax(-1))
    np.testing.assert_array_equal(panels[0][1], x[..., 0])
    np.testing.assert_array_equal(panels[2][1], target)
    one = Conv2D(1, 3, padding="SAME")
    _, p1, s1 = one.init(jax.random.PRNGKey(1), (1, 8, 8, 1))
    den = viz.prediction_panels("denoise", one, p1, s1, x, x)
    np.testing.assert_allclose(den[1][1], np.asarray(one.apply(p1, s1, x[None])[0][0, ..., 0]), rtol=1e-6)
    path = str(tmp_path / "pred.png")
    figures.side_by_side_figure(den, path, cmaps=("gray",) * 3)
    assert open(path, "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="this run's task is 'classify'"):
        viz.prediction_panels("classify", one, p1, s1, x, 3)


def test_class_maps_keep_one_colour_per_class(tmp_path, monkeypatch):
    """A prediction with classes 0-1 and a target with 0-10 get the same colour scale (0, 10) when
    ranges pin it: the colour a class gets does not depend on which classes a panel happens to hold."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes
    from fcnn import figures

    seen, imshow = [], matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow",
                        lambda ax, img, **kw: seen.append(imshow(ax, img, **kw).norm) or seen[-1])
    small, full = np.eye(4, dtype=int), np.arange(16).reshape(4, 4) % 11
    figures.side_by_side_figure([("prediction", small), ("target", full)], str(tmp_path / "p.png"),
                                cmaps=("tab20",) * 2, ranges=((0, 10), (0, 10)))
    assert [(n.vmin, n.vmax) for n in seen] == [(0, 10), (0, 10)] and seen[0](1) == seen[1](1)
    seen.clear()
    figures.side_by_side_figure([("prediction", small), ("target", full)], str(tmp_path / "q.png"), cmaps=("tab20",) * 2)
    assert seen[0](1) != seen[1](1)  # unpinned: class 1 is the top colour of one panel, a low one of the other
