"""Interleaved A/B of fcnn train steps with per-layer conv implementations, and first-step
compile time over several fresh processes: the two measurements behind docs/perf_notes.md's
CPU items that one side-by-side benchmark run is too noisy to settle.

    python experiments/step_ab.py --net lenet --batch 64 --configs taps,col2im taps,lax reference,lax lax,lax
    python experiments/step_ab.py --compile-processes 5 --frameworks fcnn,linen --net lenet --batch 64

A config names one conv implementation per conv layer ("auto" allowed); max-pool is ``auto``.
Every config is compiled first, then timed in rounds that visit every config in turn (each
round: a short warm-up, then 3 repeats of N steps with a block on the device; the
``side_by_side`` of experiments/_timing.py), so slow drifts of a shared machine hit every
config alike. Reports the median, 25th percentile and
minimum ms per step. ``--compile-processes P`` instead runs benchmark.py's worker P times per
framework (a fresh process each: trace + compile + first step) and reports the median and
range of its "compile s". Results print as a markdown table, with the command, to stdout and
to ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import side_by_side  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="lenet", choices=["lenet", "vgg"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--configs", nargs="*", default=["auto"],
                   help="per conv layer impls, comma-separated, e.g. taps,col2im (or one name for all)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=30, help="steps per timed repeat")
    p.add_argument("--compile-processes", type=int, default=0, help="measure compile time instead, P processes")
    p.add_argument("--frameworks", default="fcnn,linen", help="for --compile-processes (benchmark.py names)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--out", default=None, help="markdown file for the table")
    return p.parse_args(argv)


def step_ab(args):
    import jax
    import numpy as np

    import bench_peers
    from fcnn.optim import make_optimizer
    from fcnn.step import make_train_step

    spec = bench_peers.NETS[args.net]
    batch = bench_peers._jax_data(args.batch, spec)
    calls = {}
    for cfg in args.configs:
        names = cfg.split(",")
        model = bench_peers.fcnn_model(args.net, names[0] if len(names) == 1 else names, "auto", args.device)
        _, params, state = model.init(jax.random.PRNGKey(0), (args.batch, spec["hw"], spec["hw"], spec["cin"]))
        opt = make_optimizer("momentum", bench_peers.LR, momentum=bench_peers.MOMENTUM)
        step = make_train_step(model, opt, dtype_policy=args.dtype, donate=False)
        calls[cfg] = functools.partial(step, params, state, opt.init(params), batch, jax.random.PRNGKey(1))
    timed = side_by_side(calls, repeats=3 * args.rounds, per_turn=3, calls=args.steps, warmup=0,
                         turn_warmup=max(1, args.steps // 6))
    rows = ["| conv impls per layer | median ms/step | p25 | min | repeats |", "|---|---|---|---|---|"]
    for cfg, t in timed.items():
        ms = [r * 1e3 for r in t.repeats_s]
        rows.append(f"| {cfg} | {statistics.median(ms):.3f} | {np.percentile(ms, 25):.3f} | {min(ms):.3f} | "
                    f"{len(ms)} |")
    return f"{args.net} b{args.batch} {args.dtype}, {args.rounds} interleaved rounds of 3 x {args.steps} steps", rows


def compile_times(args):
    import benchmark

    tmp = tempfile.mkdtemp(prefix="fcnn_step_ab_")
    rows = ["| framework | median compile s | min | max | processes |", "|---|---|---|---|---|"]
    for fw in args.frameworks.split(","):
        got = []
        for i in range(args.compile_processes):
            res = os.path.join(tmp, f"{fw}_{i}.json")
            out, err = benchmark._spawn(["--worker", fw, "--net", args.net, "--batch", str(args.batch), "--k", "1",
                                         "--dtypes", args.dtype, "--device", args.device, "--repeats", "1",
                                         "--target-s", "0.01"], args.device, args.timeout, res)
            if out is None or "compile_s" not in out[0]:
                raise RuntimeError(f"{fw}: {err or out[0].get('skipped')}")
            got.append(out[0]["compile_s"])
        rows.append(f"| {fw} | {statistics.median(got):.2f} | {min(got):.2f} | {max(got):.2f} | {len(got)} |")
    return f"{args.net} b{args.batch} {args.dtype}, first call in a fresh process", rows


def publish(script: str, argv, what: str, rows, out=None) -> str:
    """The A/B scripts' report: "date, `command`: what", a blank line, the markdown rows; printed
    and written to ``out`` (the command is the script with ``argv``, or the process's arguments)."""
    cmd = f"python experiments/{script} " + " ".join(sys.argv[1:] if argv is None else argv)
    text = f"{datetime.date.today().isoformat()}, `{cmd}`: {what}\n\n" + "\n".join(rows) + "\n"
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)
    return text


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    what, rows = compile_times(args) if args.compile_processes else step_ab(args)
    publish("step_ab.py", argv, what, rows, args.out)
    return rows


if __name__ == "__main__":
    main()
