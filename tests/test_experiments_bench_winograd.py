"""experiments/bench_winograd.py runs with --quick: the float32 error table (default) and the timing
table (-m slow: it compiles eight programs); no timing is asserted, only the table's content."""
import pytest


def _rows(text):
    return [line.split(" | ") for line in text.splitlines() if line.startswith("| 6x7")]


@pytest.mark.slow  # the float32-error table over the VGG layers; tests/test_winograd.py checks the documented bounds by default
def test_quick_error_table(experiment, tmp_path):
    out = tmp_path / "err.md"
    text = experiment("bench_winograd").main(["--quick", "--error", "--out", str(out)])
    assert out.read_text() == text and "--quick --error" in text
    assert "| layer | C_in*9 | lax | reference | F(2,3) | F(4,3) |" in text
    (row,) = _rows(text)
    assert row[1] == "36"  # 4 input channels x 9 taps
    errors = [float(v.strip(" |")) for v in row[2:]]
    assert all(0 <= e < 1e-5 for e in errors) and errors[2] < 1e-6  # float32 against float64


def test_multiplication_counts(experiment):
    """6x7 outputs, F(2,3): 3x4 tiles of 16 products = 192 against 9*42 = 378 direct; F(4,3): 2x2 tiles
    of 36 = 144."""
    bench = experiment("bench_winograd")
    assert bench.multiplications((6, 7, 4), 8, "winograd F(2,3)") == pytest.approx(192 / 378)
    assert bench.multiplications((6, 7, 4), 8, "winograd F(4,3)") == pytest.approx(144 / 378)
    assert bench.multiplications((32, 32, 64), 128, "winograd F(4,3)") == pytest.approx(36 / 16 / 9)
    assert bench.multiplications((6, 7, 4), 8, "lax") == 1.0


@pytest.mark.slow
def test_quick_timing_table(experiment):
    text = experiment("bench_winograd").main(["--quick"])
    rows = _rows(text)
    assert [r[1] for r in rows] == ["lax", "winograd F(2,3)", "winograd F(4,3)", "im2col"]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)
    assert rows[0][4:6] == ["1.00", "1.00"] and rows[1][6].startswith("0.51")
