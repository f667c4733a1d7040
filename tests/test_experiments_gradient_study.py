"""experiments/gradient_study.py runs end to end with tiny arguments and writes its report."""
import re

import pytest

pytestmark = pytest.mark.slow  # the whole --quick study (mutation matrix, FD curves): 20 s; fcnn gradcheck's own tests run by default


@pytest.fixture(scope="module")
def quick_report(experiment, tmp_path_factory):
    """One ``--quick`` run for the whole module: (output folder, text of gradient_study.md)."""
    out = tmp_path_factory.mktemp("gradient_study")
    assert experiment("gradient_study").main(["--quick", "--out", str(out)]) == 0
    return out, (out / "gradient_study.md").read_text()


def test_fd_step_curve_shows_rounding_and_exactness(quick_report):
    # part 1's table: fd_step_curve(0, quick=True) as the run wrote it (relative errors to 3 digits)
    _, text = quick_report
    rows = {(o, d, float(e)): float(r) for o, d, e, r in
            re.findall(r"^\| (conv2d|max_pool2d) \| (float32|float64) \| (\S+) \| (\S+) \|$", text, re.M)}
    assert len(rows) == 2 * 2 * 3  # two ops, two dtypes, eps = 1, 1e-4, 1e-8
    assert rows[("conv2d", "float64", 1.0)] < 1e-12  # linear: eps = 1 is exact up to rounding
    assert rows[("conv2d", "float32", 1e-8)] > 1e-2  # float32 rounding swamps a tiny step
    assert rows[("max_pool2d", "float64", 1.0)] > 1e-3  # eps = 1 crosses kinks of values 1 apart


def test_quick_run_writes_the_report(quick_report):
    out, text = quick_report
    assert "Reproduce: `python experiments/gradient_study.py --quick" in text
    assert "CPU: skipped, run on GPU" in text
    assert "| avg_pool_count_mismatch | avg_pool2d |" in text and "NOT CAUGHT" not in text
    assert (out / "img" / "gradient_fd_step.png").stat().st_size > 1000
    assert (out / "img" / "gradient_reduction.png").stat().st_size > 1000
