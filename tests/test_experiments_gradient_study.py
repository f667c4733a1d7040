"""experiments/gradient_study.py runs end to end with tiny arguments and writes its report."""


def test_fd_step_curve_shows_rounding_and_exactness(experiment):
    rows = {(o, d, e): r for o, d, e, r in experiment("gradient_study").fd_step_curve(0, quick=True)}
    assert rows[("conv2d", "float64", 1.0)] < 1e-12  # linear: eps = 1 is exact up to rounding
    assert rows[("conv2d", "float32", 1e-8)] > 1e-2  # float32 rounding swamps a tiny step
    assert rows[("max_pool2d", "float64", 1.0)] > 1e-3  # eps = 1 crosses kinks of values 1 apart


def test_quick_run_writes_the_report(experiment, tmp_path):
    assert experiment("gradient_study").main(["--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "gradient_study.md").read_text()
    assert "Reproduce: `python experiments/gradient_study.py --quick" in text
    assert "CPU: skipped, run on GPU" in text
    assert "| avg_pool_count_mismatch | avg_pool2d |" in text and "NOT CAUGHT" not in text
    assert (tmp_path / "img" / "gradient_fd_step.png").stat().st_size > 1000
    assert (tmp_path / "img" / "gradient_reduction.png").stat().st_size > 1000
