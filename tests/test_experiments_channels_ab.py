"""experiments/channels_ab.py: each "before" form computes what the library's form computes (the
script asserts it before timing), and --quick writes the table with its command; no timing is asserted."""


def test_quick_run_checks_every_pair_and_writes_the_table(experiment, tmp_path):
    ab = experiment("channels_ab")
    out = tmp_path / "t.md"
    results = ab.main(["--quick", "--out", str(out)])
    assert sorted(part for part, _ in results) == ["batchnorm", "pool", "sum"]
    text = out.read_text()
    assert "`python experiments/channels_ab.py --quick --out " in text
    assert text.count("| 2x4x4x8 |") == 3


def test_bad_parts_and_shapes_are_refused_before_any_timing(experiment):
    import pytest

    ab = experiment("channels_ab")
    with pytest.raises(SystemExit, match=r"--parts: unknown part 'nope' \(sum, batchnorm, pool\)"):
        ab.main(["--parts", "sum,nope", "--shapes", "2x4x4x8"])
    for bad in ("16x32", "2x4x4x0", "2x4xax8"):
        with pytest.raises(SystemExit, match=rf"--shapes: '{bad}' is not an NHWC shape of four positive ints"):
            ab.main(["--shapes", bad])
