"""experiments/interpretability.py --quick trains, draws the gallery and writes its page; each picture is
what the `fcnn viz` command recorded under it draws."""
import os
import re
import shlex

import matplotlib.image
import numpy as np
import pytest

from fcnn import cli

pytestmark = pytest.mark.slow  # the --quick gallery trains and draws every picture: 12 s; fcnn viz's own tests run by default

NAMES = ("filters", "filters2", "features", "saliency", "smoothgrad", "gradcam", "occlusion", "curves", "confusion",
         "overview")


def _pixels(path):
    return matplotlib.image.imread(path)[..., :3]


@pytest.fixture(scope="module")
def quick(experiment, tmp_path_factory):
    d = tmp_path_factory.mktemp("interp")
    run, out = str(d / "run"), str(d / "docs")
    assert experiment("interpretability").main(["--quick", "--train-dir", run, "--out", out]) == 0
    return run, out


def test_quick_run_writes_a_non_blank_gallery_and_its_page(quick):
    run, out = quick
    text = open(os.path.join(out, "interpretability.md")).read()
    assert f"Made by `python experiments/interpretability.py --quick --train-dir {run} --out {out}`" in text
    for name in NAMES:
        path = os.path.join(out, "img", f"interp_{name}.png")
        img = _pixels(path)
        assert img.reshape(-1, 3).var(axis=0).max() > 1e-3, name  # not one colour
        assert f"](img/interp_{name}.png)" in text, name
    # array pictures: 8 px per element (28x28 digits, 6 kernels of 5x5 in a 2x3 grid), 32 per confusion cell
    for name, size in (("saliency", (224, 224)), ("gradcam", (224, 224)), ("occlusion", (224, 224)),
                       ("filters", (88, 136)), ("confusion", (320, 320))):
        assert _pixels(os.path.join(out, "img", f"interp_{name}.png")).shape[:2] == size, name
    assert "| trained |" in text and "| untrained |" in text


def test_recorded_command_draws_the_same_picture(quick, tmp_path):
    run, out = quick
    text = open(os.path.join(out, "interpretability.md")).read()
    for name in ("saliency", "gradcam"):
        line = re.search(rf"^fcnn viz (.*--out \S*interp_{name}\.png.*)$", text, re.M).group(1)
        argv = shlex.split(line)
        mine = str(tmp_path / f"{name}.png")
        argv[argv.index("--out") + 1] = mine
        assert cli.main(["viz", *argv]) == 0
        np.testing.assert_array_equal(_pixels(mine), _pixels(os.path.join(out, "img", f"interp_{name}.png")))


def test_refuses_to_train_over_an_existing_run(experiment, quick):
    run, out = quick
    with pytest.raises(SystemExit, match="already holds a trained run: draw it with --run"):
        experiment("interpretability").main(["--quick", "--train-dir", run, "--out", out])
