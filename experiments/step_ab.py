"""Interleaved A/B of fcnn train steps with per-layer conv implementations, and first-step
compile time and step time over rounds of fresh processes: the measurements behind
docs/perf_notes.md's CPU items that one side-by-side benchmark run is too noisy to settle.

    python experiments/step_ab.py --net lenet --batch 64 --configs taps,col2im taps,lax reference,lax lax,lax
    python experiments/step_ab.py --processes 5 --frameworks fcnn,linen --net lenet --batch 64
    python experiments/step_ab.py --processes 5 --frameworks fcnn,torch --net vgg --batch 16 --process-repeats 5
    python experiments/step_ab.py --compile-rounds 6 --net lenet --batch 64 --configs taps,col2im lax,col2im lax

A config names one conv implementation per conv layer ("auto" allowed); max-pool is ``auto``.
Every config is compiled first, then timed in rounds that visit every config in turn (each
round: a short warm-up, then 3 repeats of N steps with a block on the device; the
``side_by_side`` of experiments/_timing.py), so slow drifts of a shared machine hit every
config alike. Reports the median, 25th percentile and
minimum ms per step. ``--processes P`` (also spelled ``--compile-processes``) instead runs P
rounds of benchmark.py's worker, every framework once per round in turn, each a fresh process
(its "compile s": trace + compile + first step; its ms/step: the median of
``--process-repeats`` repeats of ``--process-target-s`` seconds), and reports the median and
range of both, and the median over rounds of each round's ms/step ratio to the first
framework's. Frameworks that cannot share a process (PyTorch and XLA:CPU, experiments/peer_ab.py)
are compared this way; ``--tunables V1 V2 ...`` runs each framework once per glibc ``GLIBC_TUNABLES``
value in every round ("default": the caller's environment), one row per pair (the allocator
settings of docs/perf_notes.md item 59). ``--compile-rounds R`` times, in one process, what each config's first
step costs before it runs: rounds that visit every config in turn, each clearing JAX's caches,
building the step anew and timing its trace + lowering (``.lower``) and XLA's compile
(``.compile``); the first round is dropped and the medians of the rest reported: tighter than
fresh processes for an A/B of implementations (docs/perf_notes.md item 54). Results print as a
markdown table, with the command, to stdout and to ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import cpu_description, progress, side_by_side  # noqa: E402, F401  (progress: re-exported)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="lenet", choices=["lenet", "vgg", "resnet18"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--configs", nargs="*", default=["auto"],
                   help="per conv layer impls, comma-separated, e.g. taps,col2im (or one name for all)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=30, help="steps per timed repeat")
    p.add_argument("--processes", "--compile-processes", type=int, default=0,
                   help="fresh-process rounds instead (compile time, and step time with --process-repeats)")
    p.add_argument("--compile-rounds", type=int, default=0,
                   help="time each config's trace + lower and XLA compile instead, in this many rounds")
    p.add_argument("--frameworks", default="fcnn,linen", help="for --processes (benchmark.py names)")
    p.add_argument("--process-repeats", type=int, default=1, help="for --processes: timed repeats per process")
    p.add_argument("--process-target-s", type=float, default=0.5, help="for --processes: seconds per repeat")
    p.add_argument("--tunables", nargs="*", default=None,
                   help="for --processes: run every framework once per GLIBC_TUNABLES value in each round "
                        "(\"default\": unset), e.g. default glibc.malloc.hugetlb=1")
    p.add_argument("--timeout", type=float, default=600)
    add_out(p)
    return p.parse_args(argv)


def check_args(args) -> None:
    """Refuse bad arguments before any compile or worker process (SystemExit naming the flag)."""
    import bench_peers

    for flag, value, low in (("--rounds", args.rounds, 1), ("--steps", args.steps, 1), ("--processes", args.processes, 0),
                             ("--compile-rounds", args.compile_rounds, 0),
                             ("--process-repeats", args.process_repeats, 1), ("--batch", args.batch, 1)):
        if value < low:
            raise SystemExit(f"{flag} must be an integer >= {low}, got {value}")
    for flag, value in (("--process-target-s", args.process_target_s), ("--timeout", args.timeout)):
        if not value > 0:
            raise SystemExit(f"{flag} must be > 0 seconds, got {value}")
    if args.tunables is not None and not (args.processes and args.tunables):
        raise SystemExit("--tunables: give one or more GLIBC_TUNABLES values (\"default\": unset), with --processes")
    if args.processes and args.compile_rounds:
        raise SystemExit("--processes and --compile-rounds: choose one (fresh processes, or compiles in this one)")
    if not args.processes:
        if args.net == "resnet18":
            raise SystemExit("--net resnet18: only with --processes (the per-layer configs are for lenet and vgg)")
        return
    frameworks = args.frameworks.split(",")
    known = bench_peers.RESNET_FRAMEWORKS if args.net == "resnet18" else list(bench_peers.BUILDERS)
    bad = [fw for fw in frameworks if fw not in known]
    if bad:
        raise SystemExit(f"--frameworks: unknown for {args.net}: {bad}; known: {', '.join(known)}")


def _steps(args):
    """Per config: ``(make, step_args)``; ``make()`` builds its ``make_train_step`` step (donate=False)
    over the benchmark net with those per-layer implementations."""
    import jax

    import bench_peers
    from fcnn.optim import make_optimizer
    from fcnn.step import make_train_step

    spec = bench_peers.NETS[args.net]
    batch = bench_peers._jax_data(args.batch, spec)
    out = {}
    for cfg in args.configs:
        names = cfg.split(",")
        model = bench_peers.fcnn_model(args.net, names[0] if len(names) == 1 else names, "auto")
        _, params, state = model.init(jax.random.PRNGKey(0), (args.batch, spec["hw"], spec["hw"], spec["cin"]))
        opt = make_optimizer("momentum", bench_peers.LR, momentum=bench_peers.MOMENTUM)
        make = functools.partial(make_train_step, model, opt, dtype_policy=args.dtype, donate=False)
        out[cfg] = (make, (params, state, opt.init(params), batch, jax.random.PRNGKey(1)))
    return out


def compile_ab(args):
    """Trace + lower and XLA compile of each config's step, in interleaved rounds in this process."""
    import jax

    built = _steps(args)
    got = {cfg: [] for cfg in built}
    for r in range(args.compile_rounds + 1):  # round 0 pays JAX's and XLA's first-use costs: dropped
        for cfg, (make, step_args) in built.items():
            jax.clear_caches()
            step = make()
            t0 = time.perf_counter()
            lowered = step.lower(*step_args)
            t1 = time.perf_counter()
            lowered.compile()
            if r:
                got[cfg].append((t1 - t0, time.perf_counter() - t1))
        progress(f"compile round {r} of {args.compile_rounds} done" + (" (dropped: first use)" if not r else ""))
    rows = ["| conv impls per layer | trace + lower s | XLA compile s | total s | min total s | rounds |",
            "|---|---|---|---|---|---|"]
    for cfg, t in got.items():
        total = [a + b for a, b in t]
        rows.append(f"| {cfg} | {statistics.median(a for a, _ in t):.3f} | {statistics.median(b for _, b in t):.3f} | "
                    f"{statistics.median(total):.3f} | {min(total):.3f} | {len(t)} |")
    return (f"{args.net} b{args.batch} {args.dtype}, the step's trace + lower and XLA compile, {args.compile_rounds} "
            f"interleaved rounds in one process (caches cleared each time; medians)"), rows


def step_ab(args):
    import numpy as np

    calls = {cfg: functools.partial(make(), *step_args) for cfg, (make, step_args) in _steps(args).items()}
    timed = side_by_side(calls, repeats=3 * args.rounds, per_turn=3, calls=args.steps, warmup=0,
                         turn_warmup=max(1, args.steps // 6), verbose=True)
    rows = ["| conv impls per layer | median ms/step | p25 | min | repeats |", "|---|---|---|---|---|"]
    for cfg, t in timed.items():
        ms = [r * 1e3 for r in t.repeats_s]
        rows.append(f"| {cfg} | {statistics.median(ms):.3f} | {np.percentile(ms, 25):.3f} | {min(ms):.3f} | "
                    f"{len(ms)} |")
    return f"{args.net} b{args.batch} {args.dtype}, {args.rounds} interleaved rounds of 3 x {args.steps} steps", rows


def _variants(args):
    """``--processes``' rows: ``(label, framework, extra environment)`` per framework, and per
    ``--tunables`` value when given (label "framework, GLIBC_TUNABLES value")."""
    frameworks = args.frameworks.split(",")
    if args.tunables is None:
        return [(fw, fw, {}) for fw in frameworks]
    return [(f"{fw}, {t}", fw, {} if t == "default" else {"GLIBC_TUNABLES": t})
            for fw in frameworks for t in args.tunables]


def fresh_processes(args):
    import benchmark

    variants = _variants(args)
    got = {label: [] for label, _, _ in variants}  # (compile s, ms/step, build s) per round
    skipped = {}  # label -> why (a peer that is not installed: a note under the table, not a crash)
    target = str(args.process_target_s if args.process_repeats > 1 else 0.01)  # one repeat: compile time only
    with tempfile.TemporaryDirectory(prefix="fcnn_step_ab_") as tmp:
        for i in range(args.processes):  # a round runs every variant once, in turn
            for j, (label, fw, env) in enumerate(variants):
                if label in skipped:
                    continue
                res = os.path.join(tmp, f"{j}_{i}.json")
                out, err = benchmark._spawn(["--worker", fw, "--net", args.net, "--batch", str(args.batch), "--k",
                                             "1", "--dtypes", args.dtype, "--device", args.device, "--repeats",
                                             str(args.process_repeats), "--target-s", target],
                                            args.device, args.timeout, res, extra_env=env)
                if out is not None and str(out[0].get("skipped", "")).startswith("not installed"):
                    skipped[label] = out[0]["skipped"]
                    progress(f"{label}: skipped, {skipped[label]}")
                    continue
                if out is None or "compile_s" not in out[0]:
                    raise RuntimeError(f"{label}: {err or out[0]}")
                got[label].append((out[0]["compile_s"], out[0]["ms_per_step"], out[0]["build_s"]))
            progress(f"round {i + 1} of {args.processes} done")
    variants = [v for v in variants if v[0] not in skipped]
    if not variants:
        raise SystemExit(f"--frameworks: every one was skipped: {skipped}")
    what, rows = _process_rows(args, variants, got)
    return what, rows + ([""] + [f"- {label}: skipped, {why}" for label, why in skipped.items()] if skipped else [])


def _process_rows(args, variants, got):
    """``fresh_processes``' table rows over the variants that ran."""
    timed = args.process_repeats > 1
    first = variants[0][0]
    head = (f"| {'framework' if args.tunables is None else 'framework, GLIBC_TUNABLES'} | median compile s | min | max "
            "| median build s | build + compile s |"
            + (f" median ms/step | min | max | ms vs {first} |" if timed else "") + " processes |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, _, _ in variants:
        comp, ms, build = ([r[i] for r in got[label]] for i in range(3))
        row = (f"| {label} | {statistics.median(comp):.2f} | {min(comp):.2f} | {max(comp):.2f} | "
               f"{statistics.median(build):.2f} | {statistics.median(c + b for c, b in zip(comp, build)):.2f} |")
        if timed:
            ratio = statistics.median(m / r0[1] for m, r0 in zip(ms, got[first]))
            row += f" {statistics.median(ms):.2f} | {min(ms):.2f} | {max(ms):.2f} | {ratio:.2f}x |"
        rows.append(row + f" {len(comp)} |")
    steps = f", ms/step the median of {args.process_repeats} repeats of {args.process_target_s} s" if timed else ""
    what = f"{args.net} b{args.batch} {args.dtype}, {args.processes} rounds of fresh processes"
    return what + f" (compile s: the first call{steps}; build s: model init, optimizer state and data)", rows


def add_out(p, help: str = "markdown file for the table") -> None:
    """The A/B scripts' ``--out FILE`` and ``--overwrite`` (``check_out`` refuses an existing FILE without it)."""
    p.add_argument("--out", default=None, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def check_out(args) -> None:
    """Refuse ``args.out`` before any measurement (SystemExit naming --out): a directory, a missing or
    unwritable folder, or an existing file without ``--overwrite`` (``fcnn._checks.new_file``; it imports
    JAX, so call this after the script has chosen its platform)."""
    if args.out is None:
        return
    from fcnn._checks import new_file

    try:
        new_file(args.out, "--out", overwrite=args.overwrite, flag="--overwrite")
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def check_out_dir(args, names) -> None:
    """Refuse ``args.out`` as a results folder before any measurement: not a folder, or one that holds
    any of ``names`` (the files the script writes there) without ``--overwrite``."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise SystemExit(f"error: --out {args.out!r} is not a folder")
    held = [n for n in names if os.path.lexists(os.path.join(args.out, n))]
    if held and not args.overwrite:
        raise SystemExit(f"error: --out {args.out!r} already holds {', '.join(held)}; pass --overwrite to replace them")


def publish(script: str, argv, what: str, rows, out=None) -> str:
    """The A/B scripts' report: "date, `command`, on CPU: what", a blank line, the markdown rows;
    printed and written to ``out`` (the command is the script with ``argv``, or the process's
    arguments; the CPU is ``_timing.cpu_description()``, the host's for a GPU run too)."""
    cmd = f"python experiments/{script} " + " ".join(sys.argv[1:] if argv is None else argv)
    text = f"{datetime.date.today().isoformat()}, `{cmd}`, on {cpu_description()}: {what}\n\n" + "\n".join(rows) + "\n"
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)
    return text


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    check_out(args)
    what, rows = (fresh_processes if args.processes else compile_ab if args.compile_rounds else step_ab)(args)
    publish("step_ab.py", argv, what, rows, args.out)
    return rows


if __name__ == "__main__":
    main()
