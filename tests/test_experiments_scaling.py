"""experiments/scaling.py runs end to end with --quick and its report holds the right numbers."""
import json
import statistics

import pytest

from fcnn import models
from fcnn.summary import summary

LENET_PARAMS = 61_706  # 150+6 + 2400+16 + 48000+120 + 10080+84 + 840+10, counted by hand


@pytest.fixture(scope="module")
def quick_run(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    assert experiment("scaling").main(["--quick", "--out", str(out / "scaling.md")]) == 0
    with open(out / "scaling_cpu.json") as f:
        raw = json.load(f)
    return (out / "scaling.md").read_text(), raw


@pytest.mark.slow  # the --quick run times every part (16 s); the communication count runs by default, below
def test_quick_run_writes_every_table(quick_run):
    text, raw = quick_run
    assert "| lenet5 | 61,706 | 246.8 | 0 | 13 | 61,709 | 61,709 (match) | 246.8 | 370.3 | 432.0 |" in text
    assert "Command: `python experiments/scaling.py --quick --out " in text
    assert text.count("<!-- scaling:cpu -->") == 1 and "<!-- /scaling:cpu -->" in text
    assert "| batch | batch grad ms | vmap ms | lax.map ms | Python loop ms | vmap / batch |" in text
    assert "| 8 | " in text and "(x2 of 4)" in text  # loop over 4 of the 8 examples, scaled
    assert "overhead, not speed-up" in text
    # part B: plain jit plus the three wrappers over the 2 virtual devices of the subprocess
    assert {(r["variant"], r["devices"]) for r in raw["data_parallel"]} == {
        ("jit", 1), ("pmap", 2), ("sharding", 2), ("shard_map", 2)}
    assert all(r["ms"] > 0 and r["images_per_s"] == pytest.approx(16e3 / r["ms"]) for r in raw["data_parallel"])
    a = raw["per_example"][0]
    assert a["vmap_vs_loop_rel_err"] < 1e-5  # the benchmarked vmap gradients are the loop's
    assert a["loop_ms"] == pytest.approx(statistics.median(a["repeats_ms"]["loop"]) * 8 / 4)  # scaled to n


def test_communication_volume_matches_hand_count(experiment):
    """Counted from the traced shard_map step (shapes only, nothing compiled), as the report's part C."""
    mod = experiment("scaling")
    assert summary(models.lenet5(), (1, 28, 28, 1)).params == LENET_PARAMS
    comm = {name: mod.comm_volume(name) for name in ("lenet5", "small_resnet")}
    lenet = comm["lenet5"]
    assert lenet["params"] == LENET_PARAMS and lenet["bn_channels"] == 0
    assert lenet["counted_elements"] == LENET_PARAMS + 3  # gradient + loss + accuracy's sums (correct, count)
    assert lenet["grad_bytes"] == LENET_PARAMS * 4
    # ring all-reduce over 8 devices: 2 (8-1)/8 = 1.75 x the buffer per device
    assert lenet["ring_bytes"]["8"] == (LENET_PARAMS + 3) * 4 * 1.75
    assert mod.ring_bytes(LENET_PARAMS, 8) == 431_942
    # small_resnet: widths 16, 32, 64; BatchNorms after stem (16), 2 per block (16+16, 32+32, 64+64) and the
    # two projection shortcuts (32, 64) -> 336 channels, 6 all-reduced numbers each
    res = comm["small_resnet"]
    assert res["bn_channels"] == 336
    assert res["counted_elements"] == res["formula_elements"] == res["params"] + 6 * 336 + 3


def test_merge_keeps_other_platform_sections(experiment, tmp_path):
    mod = experiment("scaling")
    doc = tmp_path / "scaling.md"
    mod.merge_into(str(doc), {"cpu": "<!-- scaling:cpu -->\ncpu v1\n<!-- /scaling:cpu -->\n"})
    assert doc.read_text().count("## GPU run: not yet measured") == 1  # said, and only once, until a GPU section
    mod.merge_into(str(doc), {"cpu": "<!-- scaling:cpu -->\ncpu v1\n<!-- /scaling:cpu -->\n"})
    assert doc.read_text().count("## GPU run: not yet measured") == 1
    gpu = tmp_path / "gpu.md"
    mod.merge_into(str(gpu), {"gpu": "<!-- scaling:gpu -->\ngpu numbers\n<!-- /scaling:gpu -->\n"})
    assert mod.main(["--merge", str(gpu), "--out", str(doc)]) == 0
    mod.merge_into(str(doc), {"cpu": "<!-- scaling:cpu -->\ncpu v2\n<!-- /scaling:cpu -->\n"})
    text = doc.read_text()
    assert text.startswith("# Scaling") and text.count("# Scaling") == 1
    assert "cpu v1" not in text and text.index("cpu v2") < text.index("gpu numbers")
    assert "not yet measured" not in text
