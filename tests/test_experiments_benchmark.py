"""The benchmark scripts run end to end with tiny arguments and write complete tables.

These are not timed tests: they check that every row the scripts promise is there with
finite positive numbers, and that a framework that is not installed becomes a skipped row.
"""
import json
import math

import pytest


def _positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_forward_macs_match_hand_counts(experiment):
    peers = experiment("bench_peers")
    # LeNet: 28*28*6*25 + 10*10*16*150 + 400*120 + 120*84 + 84*10
    assert peers.forward_macs("lenet") == 117600 + 240000 + 48000 + 10080 + 840
    # VGG: 32*32*64*27 + 32*32*128*576 + 16*16*256*1152 + 8*8*512*2304 + 512*10
    assert peers.forward_macs("vgg") == 1769472 + 75497472 + 75497472 + 75497472 + 5120


@pytest.mark.slow  # a fresh process per framework; bench_ops and step_ab quick tables run by default
def test_benchmark_quick_table(experiment, tmp_path):
    bench = experiment("benchmark")
    fws = ["fcnn", "fcnn_k", "stax", "linen"]
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- benchmark:cpu:start -->\nold\n<!-- benchmark:cpu:end -->\n\ntail\n")
    rows = bench.main(["--quick", "--only", ",".join(fws), "--nets", "lenet:4", "--out", str(tmp_path / "b"),
                       "--docs", str(docs)])
    got = {(r["framework"], r["dtype"]): r for r in rows}
    assert set(got) == {(f, d) for f in fws for d in ("f32", "bf16")}
    for (fw, dtype), r in got.items():
        if fw == "linen" and "skipped" in r:  # flax is an optional peer
            assert "not installed" in r["skipped"]
            continue
        assert "skipped" not in r, r
        for key in ("ms_per_step", "images_per_s", "tflops", "compile_s"):
            assert _positive(r[key]), (fw, dtype, key, r[key])
        assert r["images_per_s"] == pytest.approx(4 / (r["ms_per_step"] / 1e3))
    assert got[("fcnn_k", "f32")]["k"] > 1
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert len(saved["rows"]) == len(rows)
    text = docs.read_text()
    assert "old" not in text and text.endswith("tail\n") and "| fcnn | lenet | 4 | f32 |" in text
    assert "| stax | lenet | 4 | bf16 |" in text


@pytest.mark.slow  # every conv impl timed; step_ab's quick table runs by default
def test_bench_ops_quick_table(experiment, tmp_path):
    ops_bench = experiment("bench_ops")
    from fcnn import ops

    res = ops_bench.main(["--quick", "--out", str(tmp_path)])
    conv = {(r["layer"], r["impl"]) for r in res["conv"]}
    assert {impl for _, impl in conv} == set(ops.CONV_IMPLS)
    for r in res["conv"]:
        assert "error" not in r, r
        assert _positive(r["fwd_ms"]) and _positive(r["bwd_ms"])
        assert r["fwdbwd_ms"] == pytest.approx(r["fwd_ms"] + r["bwd_ms"])
    assert {r["impl"] for r in res["pool"]} == set(ops.POOL_IMPLS) | {"proto"}
    for r in res["pool"]:
        assert "error" not in r, r
        assert _positive(r["fwd_ms"]) and _positive(r["fwdbwd_ms"])
    assert {(r["impl"], r["pool_impl"]) for r in res["step"]} >= {("lax", "lax"), ("custom_vjp", "lax"),
                                                                  ("lax", "custom_vjp")}
    for r in res["step"]:
        assert "error" not in r, r
        assert _positive(r["ms_per_step"])
    assert "Max-pool 2x2/2" in (tmp_path / "ops.md").read_text()


def test_proto_pool_gradient_is_first_max(experiment):
    """The prototype backward routes each gradient to the first maximum, as lax's VJP does."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    ops_bench = experiment("bench_ops")
    x = jnp.round(jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3)) * 2) / 2  # many ties
    g = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 3, 3))

    def native(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    want = jax.jit(jax.grad(lambda x: jnp.vdot(native(x), g)))(x)  # jit: one compile, not one per op
    got = jax.jit(jax.grad(lambda x: jnp.vdot(ops_bench.proto_max_pool(x), g)))(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(ops_bench.proto_max_pool(x)), np.asarray(native(x)))


@pytest.mark.slow  # an experiment's compiled comparison; test_step checks the step's program and compiler options by default
def test_step_ab_quick_rows_and_per_layer_models(experiment, tmp_path, monkeypatch):
    import jax

    from fcnn import ops

    ab = experiment("step_ab")
    peers = experiment("bench_peers")
    out = tmp_path / "ab.md"
    rows = ab.main(["--net", "lenet", "--batch", "2", "--configs", "taps,col2im", "lax", "--rounds", "1",
                    "--steps", "2", "--out", str(out)])
    body = [r.split("|")[1:-1] for r in rows[2:]]
    assert [c[0].strip() for c in body] == ["taps,col2im", "lax"]
    for c in body:
        med, p25, low, n = float(c[1]), float(c[2]), float(c[3]), int(c[4])
        assert _positive(low) and low <= p25 <= med and n == 3
    assert "step_ab.py --net lenet" in out.read_text()
    used, conv = [], ops.conv  # the per-layer names reach the layers, in order (Conv2D calls ops.conv)

    def spy(*a, impl="lax", **kw):
        used.append(impl)
        return conv(*a, impl=impl, **kw)

    monkeypatch.setattr(ops, "conv", spy)
    model = peers.fcnn_model("lenet", ["taps", "col2im"], "auto")
    _, params, state = model.init(jax.random.PRNGKey(0), (2, 28, 28, 1))
    model.apply(params, state, jax.numpy.zeros((2, 28, 28, 1)), key=None, train=False)
    assert used == ["taps", "col2im"]
    with pytest.raises(ValueError, match="impl: lenet has 2 conv layers"):
        peers.fcnn_model("lenet", ["taps", "col2im", "lax"], "auto")


def test_auto_benchmark_model_chooses_at_the_real_batch(experiment, monkeypatch):
    # the benchmark's "auto" must be what a user of impl="auto" gets: chosen at trace time from the
    # real shapes. auto's CPU rule for kernel-heavy 2-D layers (fcnn/ops/auto.py) takes col2im when
    # 9 * cout >= 8 * n * H * W: the VGG net's 16x16 128->256 layer (2304 against 8 * n * 256) and
    # 8x8 256->512 layer (4608 against 8 * n * 64) are col2im at batch 1 and lax at batch 16; the
    # 3-channel first layer is col2im at any batch. (It once resolved auto at batch 1 for every
    # batch and so timed col2im on both at b16.)
    import jax

    from fcnn.ops import auto
    peers = experiment("bench_peers")
    chosen, select = [], auto.select_conv_impl

    def spy(*a, **kw):
        chosen.append(select(*a, **kw))
        return chosen[-1]

    monkeypatch.setattr(auto, "select_conv_impl", spy)
    model = peers.fcnn_model("vgg", "auto", "auto")
    # with oneDNN available, its kernel-heavy bound (8) moves the same two layers at batch 1
    from fcnn.ops import onednn
    tables = {False: ((16, ["col2im", "lax", "lax", "lax"]), (1, ["col2im", "lax", "col2im", "col2im"])),
              True: ((16, ["onednn"] * 4), (1, ["onednn", "onednn", "col2im", "col2im"]))}
    monkeypatch.setattr(auto, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # f32: oneDNN's rule applies
    for with_onednn, rows in tables.items():
        monkeypatch.setattr(onednn, "available", lambda on=with_onednn: on)
        for n, expected in rows:
            _, params, state = model.init(jax.random.PRNGKey(0), (n, 32, 32, 3))
            chosen.clear()
            jax.eval_shape(lambda p, x: model.apply(p, state, x, key=None, train=False)[0], params,
                           jax.ShapeDtypeStruct((n, 32, 32, 3), jax.numpy.float32))
            assert chosen == expected, (n, with_onednn)


@pytest.mark.parametrize("argv,match", [
    (["--processes", "-1"], r"--processes must be an integer >= 0, got -1"),
    (["--processes", "2", "--process-repeats", "0"], r"--process-repeats must be an integer >= 1, got 0"),
    (["--processes", "2", "--process-target-s", "0"], r"--process-target-s must be > 0 seconds, got 0.0"),
    (["--rounds", "0"], r"--rounds must be an integer >= 1, got 0"),
    (["--net", "resnet18"], r"--net resnet18: only with --processes"),
    (["--processes", "1", "--frameworks", "fcnn,flux"], r"--frameworks: unknown for lenet: \['flux'\]"),
    (["--processes", "1", "--net", "resnet18", "--frameworks", "fcnn,stax"], r"--frameworks: unknown for resnet18: \['stax'\]"),
    (["--compile-rounds", "-1"], r"--compile-rounds must be an integer >= 0, got -1"),
    (["--processes", "2", "--compile-rounds", "1"], r"--processes and --compile-rounds: choose one"),
    (["--tunables", "glibc.malloc.hugetlb=1"], r"--tunables: give one or more GLIBC_TUNABLES values .* with --processes"),
    (["--processes", "1", "--tunables"], r"--tunables: give one or more GLIBC_TUNABLES values"),
])
def test_step_ab_refuses_bad_arguments_before_any_work(experiment, monkeypatch, argv, match):
    ab = experiment("step_ab")
    monkeypatch.setattr(ab, "step_ab", lambda args: pytest.fail("compiled before checking"))
    monkeypatch.setattr(ab, "fresh_processes", lambda args: pytest.fail("spawned before checking"))
    monkeypatch.setattr(ab, "compile_ab", lambda args: pytest.fail("compiled before checking"))
    with pytest.raises(SystemExit, match=match):
        ab.main(argv)


@pytest.mark.slow  # an experiment's compiled comparison (four compiles of a LeNet step)
def test_step_ab_compile_rounds_compile_every_config_every_round(experiment, tmp_path):
    import jax

    ab = experiment("step_ab")
    compiles, listening = [], [True]  # the train step's own program is "one_step" (fcnn/step.py)
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, fun_name="", **kw: compiles.append(fun_name) if listening[0]
        and event == "/jax/core/compile/backend_compile_duration" and fun_name == "jit(one_step)" else None)
    try:
        rows = ab.main(["--compile-rounds", "1", "--net", "lenet", "--batch", "2", "--configs", "taps,col2im", "lax",
                        "--out", str(tmp_path / "c.md")])
    finally:
        listening[0] = False
    # two configs, the dropped warm-up round and one timed round: four compiles of the step, each
    # timed round a real compile (an executable served from memory would not show here)
    assert len(compiles) == 4
    assert rows[0].startswith("| conv impls per layer | trace + lower s | XLA compile s | total s |")
    body = {c[0].strip(): [float(v) for v in c[1:]] for c in (r.split("|")[1:-1] for r in rows[2:])}
    assert set(body) == {"taps,col2im", "lax"}
    for lower, comp, total, low, rounds in body.values():
        assert _positive(lower) and _positive(comp) and rounds == 1
        assert total == pytest.approx(lower + comp, abs=0.0015) and low == total  # one round: its own sum
    assert "--compile-rounds 1" in (tmp_path / "c.md").read_text()


@pytest.mark.slow  # two fresh worker processes
def test_step_ab_fresh_process_rounds_report_compile_step_and_ratio(experiment, tmp_path):
    ab = experiment("step_ab")
    rows = ab.main(["--processes", "1", "--frameworks", "fcnn,fcnn_lax", "--net", "lenet", "--batch", "2",
                    "--process-repeats", "2", "--process-target-s", "0.01", "--out", str(tmp_path / "p.md")])
    assert rows[0].startswith("| framework | median compile s |") and "ms vs fcnn" in rows[0]
    body = {c[0].strip(): c for c in (r.split("|")[1:-1] for r in rows[2:])}
    assert set(body) == {"fcnn", "fcnn_lax"}
    ms = {fw: float(c[6]) for fw, c in body.items()}
    assert all(_positive(float(c[1])) and _positive(float(c[4])) and _positive(m) for c, m in zip(body.values(), ms.values()))
    for c in body.values():  # one round: build + compile is that round's sum
        assert float(c[5]) == pytest.approx(float(c[1]) + float(c[4]), abs=0.011)
    assert body["fcnn"][9].strip() == "1.00x"  # one round: the ratio is that round's ms over fcnn's
    assert float(body["fcnn_lax"][9].strip().rstrip("x")) == pytest.approx(ms["fcnn_lax"] / ms["fcnn"], rel=0.02)


def test_step_ab_tunables_run_each_framework_under_each_glibc_setting(experiment, monkeypatch):
    """--tunables: every round spawns each framework once per value, with GLIBC_TUNABLES set to it
    in the worker's environment ("default": left as it is), and one row per pair."""
    import subprocess

    ab, bench = experiment("step_ab"), experiment("benchmark")
    spawned, envs = [], []

    def fake_run(cmd, env, **kw):  # benchmark._spawn's worker: writes a result like the real one
        fw = cmd[cmd.index("--worker") + 1]
        ms = {"fcnn": 10.0, "torch": 20.0}[fw] / (2 if env.get("GLIBC_TUNABLES") == "glibc.malloc.hugetlb=1" else 1)
        spawned.append(fw)
        envs.append(env.get("GLIBC_TUNABLES"))
        with open(cmd[cmd.index("--result") + 1], "w") as f:
            json.dump([{"compile_s": 1.0, "ms_per_step": ms, "build_s": 2.0}], f)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")  # the caller's own: kept for "default"
    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    rows = ab.main(["--processes", "2", "--frameworks", "fcnn,torch", "--process-repeats", "2",
                    "--tunables", "default", "glibc.malloc.hugetlb=1"])
    assert spawned == ["fcnn", "fcnn", "torch", "torch"] * 2
    assert envs == ["glibc.malloc.arena_max=4", "glibc.malloc.hugetlb=1"] * 4
    assert rows[0].startswith("| framework, GLIBC_TUNABLES |") and "ms vs fcnn, default" in rows[0]
    ratio = {c[0].strip(): c[9].strip() for c in (r.split("|")[1:-1] for r in rows[2:])}
    assert ratio == {"fcnn, default": "1.00x", "fcnn, glibc.malloc.hugetlb=1": "0.50x",
                     "torch, default": "2.00x", "torch, glibc.malloc.hugetlb=1": "1.00x"}


def test_tables_name_the_cpu_they_ran_on(experiment, monkeypatch, tmp_path):
    timing = experiment("_timing")
    amd = "".join(f"processor\t: {i}\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n\n"
                  for i in range(2))
    intel = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
             "flags\t\t: avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile\n\n")
    assert timing.cpu_description(amd) == "AMD EPYC 7B13, 2 cores (avx2)"
    assert timing.cpu_description(intel) == "Intel(R) Xeon(R) Processor, 1 core (avx2 avx512f avx512_bf16 amx_bf16)"
    assert timing.cpu_description("processor\t: 0\n").endswith(", 1 core")  # no model name, no known flags
    ab = experiment("step_ab")
    monkeypatch.setattr(ab, "cpu_description", lambda: "AMD EPYC 7B13, 2 cores (avx2)")
    text = ab.publish("step_ab.py", ["--net", "lenet"], "what", ["| a |"], str(tmp_path / "t.md"))
    assert text.splitlines()[0].endswith("`python experiments/step_ab.py --net lenet`, on AMD EPYC 7B13, 2 cores (avx2): what")
    assert (tmp_path / "t.md").read_text() == text


def test_timing_calibrates_and_takes_turns(experiment, monkeypatch):
    """_timing on a fake clock: each call costs a known time, so every number it reports is exact."""
    timing = experiment("_timing")
    clock, log = [0.0], []

    def fake(name, cost):
        def call():
            clock[0] += cost
            log.append(name)
            return name
        return call

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    blocked = []
    t = timing.measure(fake("a", 1e-3), repeats=3, target_s=0.1, block=blocked.append)
    # calibration: 1, 4, 16, 64 calls; 64 ms >= 100/4 ms -> 64 * 100 / 64 = 100 calls per repeat
    assert t.calls == 100 and t.compile_s == pytest.approx(1e-3)
    assert t.repeats_s == pytest.approx([1e-3] * 3) and t.median_s == pytest.approx(1e-3) == t.best_s
    assert len(log) == 1 + 1 + (1 + 4 + 16 + 64) + 3 * 100  # compile, warm-up, calibration, repeats
    assert len(blocked) == 1 + 1 + 4 + 3  # one block per compile, warm-up call, probe and repeat

    log.clear()
    got = timing.side_by_side({"a": fake("a", 1e-3), "b": fake("b", 3e-3)}, repeats=4, per_turn=2, calls=2,
                              warmup=0, turn_warmup=1, block=lambda out: None)
    assert log == ["a", "b"] + (["a"] * 5 + ["b"] * 5) * 2  # compiles, then turns: 1 warm-up + 2 repeats of 2
    assert got["b"].repeats_s == pytest.approx([3e-3] * 4) and got["a"].calls == 2
    step = timing.carrying(lambda c, d: c + d, 0, 5)
    assert [step(), step(), step()] == [5, 10, 15]
    with pytest.raises(ValueError, match="exactly one of target_s"):
        timing.measure(fake("a", 1e-3), repeats=1)


@pytest.mark.slow  # shape-only inits of three frameworks' ResNet-18; test_models checks fcnn's counts by default
def test_resnet18_macs_and_parameters_match_hand_counts_and_peers(experiment):
    """ResNet-18 (CIFAR stem): forward MACs against a hand count per stage, and every framework's
    network against the 11,173,962 parameters of the CIFAR ResNet-18 (pytorch-cifar's count)."""
    import jax
    import numpy as np

    peers = experiment("bench_peers")
    resnet = experiment("bench_resnet")
    stage1 = 4 * 32 * 32 * 64 * 576  # four 3x3 64->64 convs at 32x32
    later = 8 * 8 * 256 * 1152 + 3 * 8 * 8 * 256 * 2304 + 8 * 8 * 256 * 128  # stage 3 (1/4 the pixels, 4x the MACs per pixel)
    assert later == 16 * 16 * 128 * 576 + 3 * 16 * 16 * 128 * 1152 + 16 * 16 * 128 * 64  # stage 2 costs the same
    assert peers.forward_macs("resnet18") == 32 * 32 * 64 * 27 + stage1 + 3 * later + 512 * 10 == 555_422_720
    _, params, state = resnet.fcnn_model("lax").init(jax.random.PRNGKey(0), (1, 32, 32, 3))
    assert sum(np.size(a) for a in jax.tree.leaves(params)) == 11_173_962
    torch = pytest.importorskip("torch")
    assert sum(p.numel() for p in resnet.torch_model().parameters()) == 11_173_962
    del torch


def test_benchmark_skips_frameworks_without_a_resnet(experiment, tmp_path):
    bench = experiment("benchmark")
    rows = bench.main(["--quick", "--only", "stax", "--nets", "resnet18:2", "--dtypes", "f32",
                       "--out", str(tmp_path / "b")])
    peers = experiment("bench_peers")
    assert "stax" not in peers.RESNET_FRAMEWORKS and {"fcnn", "linen", "torch"} <= set(peers.RESNET_FRAMEWORKS)
    assert [r["skipped"] for r in rows] == [f"not written: resnet18 is written for {', '.join(peers.RESNET_FRAMEWORKS)} "
                                            "only"]


@pytest.mark.slow  # an experiment's compiled comparison; test_step checks the step's program and compiler options by default
def test_user_step_compiles_to_make_train_steps_program(experiment):
    """user_step_ab's claim, checked on the compiled programs: over the same (auto) layers a
    user's own jitted step has make_train_step's convolutions and dots; the models' defaults
    (impl="lax") compile a different program (XLA's conv for every layer)."""
    import jax

    ab = experiment("user_step_ab")
    peers = experiment("bench_peers")
    args = ab.parse_args(["--net", "lenet", "--batch", "2"])
    batch = peers._jax_data(2, peers.NETS["lenet"])
    got = {}
    for name in ("fcnn", "user_auto", "user_default"):
        step, params, state, opt_state = ab.build(name, args)
        got[name] = ab.census(step.lower(params, state, opt_state, batch, jax.random.PRNGKey(1)).compile().as_text())
    for key in ("convolution", "dot"):
        assert got["fcnn"][key] == got["user_auto"][key], (key, got)
    assert got["fcnn"]["aliased"] == 20 and got["user_auto"]["aliased"] == 0  # donated carry vs none
    assert got["user_default"]["convolution"] > got["fcnn"]["convolution"]  # taps/col2im are not XLA convs


@pytest.mark.slow  # an experiment's compiled comparison; test_step checks the step's program and compiler options by default
def test_ynn_off_option_keeps_the_conv_results(experiment):
    """bench_peers.YNN_OFF (Eigen convolutions instead of YNNPACK's) changes speed, not results:
    the conv and its VJP agree with the default compile to float32 rounding."""
    import jax
    import numpy as np
    from jax import lax

    peers = experiment("bench_peers")
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 32)) * 0.1

    def f(x, w):
        y, pull = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                                dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)
        return y, pull(y)

    lowered = jax.jit(f).lower(x, w)
    off = lowered.compile(peers.YNN_OFF)
    assert "__ynn_fusion" not in off.as_text()
    for want, got in zip(jax.tree.leaves(lowered.compile()(x, w)), jax.tree.leaves(off(x, w))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5 * np.abs(want).max())


def test_like_for_like_rows_are_compared_with_each_other_only(experiment):
    """The summary's fastest peer is never PyTorch with kept memory (fcnn's default row against
    PyTorch's default), and each like-for-like pair gets its own table: PyTorch's ms over fcnn's."""
    bench = experiment("benchmark")
    rows = [dict(framework=fw, net="vgg", batch=16, dtype="f32", ms_per_step=ms, compile_s=1.0)
            for fw, ms in (("fcnn", 90.0), ("torch", 80.0), ("fcnn_glibc", 100.0), ("torch_keep", 72.0),
                           ("linen", 200.0))]
    lines = bench.summary(rows)
    assert "| vgg | 16 | f32 | 90.000 | 90.000 (fcnn) | torch eager (channels_last) | 80.000 | 0.89x |" in lines[2]
    kept, glibc = (lines.index(h + ":") for _, _, h in bench.LIKE_FOR_LIKE)
    assert lines[kept + 4] == "| vgg | 16 | f32 | 90.000 | 72.000 | 0.80x |"
    assert lines[glibc + 4] == "| vgg | 16 | f32 | 100.000 | 80.000 | 0.80x |"
    only_default = bench.summary([r for r in rows if r["framework"] not in ("torch_keep", "fcnn_glibc")])
    assert not any(h + ":" in only_default for _, _, h in bench.LIKE_FOR_LIKE)


def test_kept_memory_builders_call_keep_first(experiment, monkeypatch):
    peers = experiment("bench_peers")
    import fcnn.runtime

    calls = []
    monkeypatch.setattr(fcnn.runtime, "keep_cpu_memory", lambda: calls.append("keep"))
    builder = peers._kept_memory(lambda *a, **kw: calls.append(("build", a, kw)) or "bench")
    assert builder("vgg", 16, "f32", "cpu", 1) == "bench"
    assert calls == ["keep", ("build", ("vgg", 16, "f32", "cpu", 1), {})]
    assert {"fcnn_glibc", "torch_keep"} <= set(peers.BUILDERS) and {"fcnn_glibc", "torch_keep"} <= set(peers.RESNET_FRAMEWORKS)


def test_the_glibc_builder_turns_fcnns_keeping_off_in_its_worker(experiment, monkeypatch):
    peers = experiment("bench_peers")
    monkeypatch.delenv("FCNN_KEEP_CPU_MEMORY", raising=False)
    monkeypatch.setattr(peers, "build_fcnn", lambda *a: __import__("os").environ["FCNN_KEEP_CPU_MEMORY"])
    assert peers.build_fcnn_glibc("vgg", 16, "f32", "cpu") == "0"


def test_summary_shows_the_fcnn_variant_its_speed_up_is_computed_from(experiment):
    """The speed-up is the fastest peer's ms over fcnn's fastest variant's: the row shows that variant's
    ms and name (here fcnn_unroll, neither the 1-step fcnn nor fcnn_k)."""
    bench = experiment("benchmark")
    rows = [dict(framework=fw, net="lenet", batch=64, dtype="f32", ms_per_step=ms, compile_s=1.0, k=k)
            for fw, ms, k in (("fcnn", 4.0, 1), ("fcnn_k", 3.0, 8), ("fcnn_unroll", 2.0, 8), ("linen", 5.0, 1))]
    lines = bench.summary(rows)
    assert "fcnn's fastest ms (variant)" in lines[0]
    assert lines[2] == ("| lenet | 64 | f32 | 4.000 | 2.000 (fcnn (k steps, unrolled) k=8) | flax linen | 5.000 | "
                        "2.50x | 1.00 |")
