"""The experiment scripts refuse bad arguments and output paths before any work, naming the flag,
and skip a missing optional peer with a note. Nothing here is timed: every refusal happens before
the first compile or worker process, and the timing functions are replaced by failures to prove it."""
import json
import os

import pytest


def _no_work(monkeypatch, module, *names):
    for name in names:
        monkeypatch.setattr(module, name, lambda *a, **kw: pytest.fail(f"{name} ran before the arguments were checked"))


@pytest.mark.parametrize("script,argv,match", [
    ("benchmark", ["--nets", "foo:2"], r"--nets: 'foo:2' is not net:batch"),
    ("benchmark", ["--nets", "vgg"], r"--nets: 'vgg' is not net:batch"),
    ("benchmark", ["--nets", "vgg:x"], r"--nets: 'vgg:x' is not net:batch"),
    ("benchmark", ["--nets", "vgg:0"], r"--nets: 'vgg:0' is not net:batch"),
    ("benchmark", ["--only", "fcnn,lax", "--dtypes", "f16"], r"--dtypes: unknown \['f16'\]"),
    ("benchmark", ["--repeats", "0"], r"--repeats must be an integer >= 1"),
    ("bench_ops", ["--parts", "pol"], r"--parts: unknown \['pol'\]"),
    ("bench_ops", ["--dtypes", "f16"], r"--dtypes: unknown \['f16'\]"),
    ("bench_ops", ["--layers", "lenet c9"], r"--layers: unknown \['lenet c9'\]"),
    ("bench_ops", ["--impls", "fast"], r"--impls: unknown \['fast'\]"),
    ("unet_vs_lax", ["--variants", "lax,bogus"], r"--variants: unknown \['bogus'\]"),
    ("unet_vs_lax", ["--steps", "0"], r"--steps must be an integer >= 1"),
    ("peer_ab", ["--rounds", "0"], r"--rounds must be an integer >= 1, got 0"),
    ("user_step_ab", ["--steps", "0"], r"--steps must be an integer >= 1, got 0"),
    ("bf16_ceiling", ["--passes", "0"], r"--passes must be an integer >= 1, got 0"),
    ("bench_winograd", ["--repeats", "0"], r"--repeats must be an integer >= 1"),
    ("resnet_ab", ["--part", "layers", "--impls", "lax,fast"], r"--impls: unknown \['fast'\]"),
    ("scaling", ["--parts", "X"], r"--parts must be letters from ABC"),
    ("scaling", ["--parts", ""], r"--parts must be letters from ABC"),
    ("interpretability", ["--index", "-1"], r"--index must be an integer >= 0"),
])
def test_bad_arguments_are_refused_before_any_work(experiment, monkeypatch, tmp_path, script, argv, match):
    mod = experiment(script)
    for name in ("run_workers", "bench_conv", "run", "side_by_side", "per_example_cost", "fit", "_spawn"):
        if hasattr(mod, name):
            _no_work(monkeypatch, mod, name)
    monkeypatch.setattr("subprocess.run", lambda *a, **kw: pytest.fail("spawned before checking"))
    with pytest.raises(SystemExit, match=match):
        mod.main(argv + (["--out", str(tmp_path / "out")] if script in ("benchmark", "bench_ops") else []))


def test_bad_mutants_are_refused_before_the_study(experiment, capsys):
    gs = experiment("gradient_study")
    with pytest.raises(SystemExit):
        gs.parse_args(["--mutants", "bogus"])
    assert "--mutants: unknown ['bogus']" in capsys.readouterr().err


def test_quick_studies_never_write_into_docs(experiment, capsys):
    args = experiment("gradient_study").parse_args(["--quick"])
    assert args.out != "docs" and os.path.isdir(args.out) and args.out in capsys.readouterr().out
    assert experiment("gradient_study").parse_args([]).out == "docs"
    interp = experiment("interpretability")
    args = interp._parse(["--quick"])
    interp._settle(args)
    assert args.out != "docs" and os.path.isdir(args.out) and args.temp_run == args.train_dir


def test_interpretability_refuses_an_index_past_the_test_set_before_training(experiment, monkeypatch, tmp_path):
    interp = experiment("interpretability")
    monkeypatch.setattr(interp, "fit", lambda *a, **kw: pytest.fail("trained before checking --index"))
    with pytest.raises(SystemExit, match=r"--index must be a test image, 0 <= index < \d+, got 99999"):
        interp.main(["--quick", "--index", "99999", "--train-dir", str(tmp_path / "run"), "--out", str(tmp_path)])


@pytest.mark.parametrize("script", ["step_ab", "peer_ab", "user_step_ab", "unet_vs_lax", "bench_winograd",
                                    "channels_ab", "resnet_ab", "bench_decoder", "init_ab", "bf16_ceiling"])
def test_an_existing_out_file_needs_overwrite_and_its_folder_must_exist(experiment, monkeypatch, tmp_path, script):
    mod = experiment(script)
    for name in ("side_by_side", "run", "step_ab", "fresh_processes", "compile_ab", "bench_case", "time_table",
                 "step_part"):
        if hasattr(mod, name):
            _no_work(monkeypatch, mod, name)
    monkeypatch.setattr("subprocess.run", lambda *a, **kw: pytest.fail("spawned before checking"))
    mine = tmp_path / "notes.md"
    mine.write_text("my notes\n")
    with pytest.raises(SystemExit, match=r"--out .*notes.md' exists; pass --overwrite to replace it"):
        mod.main(["--out", str(mine)])
    with pytest.raises(SystemExit, match=r"--out .*missing.*does not exist"):
        mod.main(["--out", str(tmp_path / "missing" / "t.md")])
    assert mine.read_text() == "my notes\n"


@pytest.mark.parametrize("script,files", [("benchmark", ("table.md",)), ("bench_ops", ("ops.md",))])
def test_a_results_folder_of_an_earlier_run_needs_overwrite(experiment, monkeypatch, tmp_path, script, files):
    mod = experiment(script)
    _no_work(monkeypatch, mod, "run_workers" if script == "benchmark" else "bench_conv")
    for name in files:
        (tmp_path / name).write_text("earlier\n")
    with pytest.raises(SystemExit, match=rf"--out .* already holds {files[0]}; pass --overwrite"):
        mod.main(["--quick", "--out", str(tmp_path)])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"--out .*file' is not a folder"):
        mod.main(["--quick", "--out", str(tmp_path / "file")])


def test_scaling_refuses_to_merge_over_a_file_that_is_not_its_report(experiment, tmp_path):
    mod = experiment("scaling")
    notes, sec = tmp_path / "n.md", tmp_path / "sec.md"
    notes.write_text("my notes\n")
    sec.write_text("<!-- scaling:gpu -->\ngpu numbers\n<!-- /scaling:gpu -->\n")
    with pytest.raises(SystemExit, match=r"holds no <!-- scaling:TAG --> section; pass --overwrite"):
        mod.main(["--merge", str(sec), "--out", str(notes)])
    assert notes.read_text() == "my notes\n"
    assert mod.main(["--merge", str(sec), "--out", str(notes), "--overwrite"]) == 0
    assert "gpu numbers" in notes.read_text()
    assert mod.main(["--merge", str(sec), "--out", str(notes)]) == 0  # its own report now: merged without asking


def test_side_by_side_refuses_zero_calls_before_compiling(experiment):
    timing = experiment("_timing")
    with pytest.raises(ValueError, match=r"calls \(per repeat\) must be >= 1, got 0"):
        timing.side_by_side({"a": lambda: pytest.fail("compiled")}, repeats=1, calls=0)


def test_step_ab_skips_a_missing_peer_with_a_note(experiment, monkeypatch, tmp_path):
    import subprocess

    ab, bench = experiment("step_ab"), experiment("benchmark")

    def fake_run(cmd, env, **kw):  # benchmark._spawn's worker: linen not installed, fcnn timed
        fw = cmd[cmd.index("--worker") + 1]
        row = ({"skipped": "not installed: No module named 'flax'"} if fw == "linen"
               else {"compile_s": 1.0, "ms_per_step": 2.0, "build_s": 0.5})
        with open(cmd[cmd.index("--result") + 1], "w") as f:
            json.dump([row], f)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    out = tmp_path / "p.md"
    rows = ab.main(["--processes", "2", "--frameworks", "fcnn,linen", "--out", str(out)])
    assert [r.split("|")[1].strip() for r in rows[2:3]] == ["fcnn"]
    assert rows[-1] == "- linen: skipped, not installed: No module named 'flax'"
    assert "linen: skipped, not installed" in out.read_text()


def test_peer_ab_skips_a_missing_peer_with_a_note(experiment, monkeypatch, tmp_path):
    ab = experiment("peer_ab")

    def missing(*a):
        raise ImportError("No module named 'flax'")

    monkeypatch.setitem(ab.bench_peers.BUILDERS, "linen", missing)
    _no_work(monkeypatch, ab, "side_by_side")
    assert ab.main(["--frameworks", "linen", "--out", str(tmp_path / "p.md")]) == {}
    assert "- linen: not installed (No module named 'flax')" in (tmp_path / "p.md").read_text()


def test_taps_mask_ab_has_a_help(experiment, capsys):
    with pytest.raises(SystemExit) as e:
        experiment("taps_mask_ab").parse_args(["--help"])
    assert e.value.code == 0 and "--repeats" in capsys.readouterr().out
