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
