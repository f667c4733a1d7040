"""experiments/bench_decoder.py runs with --quick and writes a table with one row per implementation
and case; no timing is asserted, only the table's content (every time positive, lax rows = 1.00, and
every variant computing lax's function: the diff column)."""
import pytest

from fcnn import ops


def _rows(text):
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| case")]


@pytest.mark.slow  # every impl of every decoder op timed; the baselines' math is checked by default
def test_quick_table_has_a_row_per_impl_and_case(experiment, tmp_path):
    bench = experiment("bench_decoder")
    out = tmp_path / "dec.md"
    text = bench.main(["--quick", "--out", str(out)])
    assert out.read_text() == text and "bench_decoder.py --quick" in text
    rows = _rows(text)
    got = {}
    for r in rows:
        got.setdefault(r[0], []).append(r[1])
    ct = list(ops.CONV_TRANSPOSE_IMPLS) + ["auto", "jax lax.conv_transpose"]
    conv = list(ops.CONV_IMPLS) + ["auto"]
    assert got == {"ct-k2s2": ct, "ct-k4s2p1": ct, "up-nearest": ["jnp.repeat", "fcnn"],
                   "up-bilinear": ["jax.image.resize", "fcnn"], "conv3d": conv, "conv1d": conv}
    for r in rows:
        assert float(r[2]) > 0 and float(r[3]) > 0, r
        lo, hi = map(float, r[4].split("-"))
        assert 0 < lo <= float(r[3]) <= hi, r  # the median lies in the min-max range
        assert float(r[7]) < 1e-5, r  # every variant computes lax's (the baseline's) function in float32
    assert all(r[5:7] == ["1.00", "1.00"] for r in rows if r[1] in ("lax", "jnp.repeat", "jax.image.resize"))


def test_cases_option_and_unknown_case(experiment):
    bench = experiment("bench_decoder")
    rows = _rows(bench.main(["--quick", "--cases", "up-nearest"]))
    assert [r[:2] for r in rows] == [["up-nearest", "jnp.repeat"], ["up-nearest", "fcnn"]]
    with pytest.raises(SystemExit, match="unknown"):
        bench.main(["--quick", "--cases", "ct-k3"])


def test_jax_conv_transpose_baseline_crops_pytorch_padding(experiment):
    """The lax-written row computes the same transposed conv as ops.conv_transpose (PyTorch's padding
    crops both ends of lax's VALID output), here in float64 on the k=4 s=2 p=1 case."""
    import numpy as np

    bench = experiment("bench_decoder")
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 5, 3, 4)), rng.standard_normal((4, 4, 3, 4))
    got = bench._jax_conv_transpose(x, w, 2, 1)
    want = ops.conv_transpose(x, w, stride=2, padding=1, impl="reference")
    assert got.shape == (2, 10, 6, 3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)
