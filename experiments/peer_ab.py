"""fcnn against its peers *interleaved in one process*: the comparison a shared machine allows.

    python experiments/peer_ab.py --net lenet --batch 64 --frameworks fcnn,fcnn_ynn_off,linen,haiku
    python experiments/peer_ab.py --net resnet18 --batch 16 --dtype f32 --rounds 3 --steps 2

benchmark.py runs each framework in a fresh process, one after another, so on a machine that
other jobs load unevenly its ratios carry the load of the moment (the 2026-12-02 run saw a
framework's step vary 3-10x between moments). Here every framework's step (bench_peers'
builders, the same networks, data and optimizer) is built in one process and timed in turns
(experiments/_timing.py ``side_by_side``: each round, every framework runs a warm-up and 3
repeats of ``--steps`` steps), so a load change hits all of them alike. JAX frameworks only:
PyTorch in the same process as XLA:CPU ran LeNet b4 20x slower than alone (two runtimes' thread
pools on 2 cores), so PyTorch is compared through benchmark.py's own process. Prints the median,
25th percentile and minimum ms per step and each framework's median relative to the first.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_peers  # noqa: E402
from _timing import carrying, side_by_side  # noqa: E402
from step_ab import add_out, check_out, progress, publish  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="lenet", choices=sorted(bench_peers.NETS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--frameworks", default="fcnn,fcnn_ynn_off,linen", help="bench_peers.BUILDERS names, comma-separated")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    add_out(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    names = [f for f in args.frameworks.split(",") if f]
    bad = [f for f in names if f not in bench_peers.BUILDERS or not bench_peers.supports(f, args.net)
           or f.startswith("torch")]
    if bad:
        raise SystemExit(f"--frameworks: unknown, PyTorch, or not written for {args.net}: {bad}")
    for flag, value in (("--batch", args.batch), ("--rounds", args.rounds), ("--steps", args.steps)):
        if value < 1:
            raise SystemExit(f"{flag} must be an integer >= 1, got {value}")
    check_out(args)
    calls, skipped = {}, []
    for fw in names:
        try:
            b = bench_peers.BUILDERS[fw](args.net, args.batch, args.dtype, "cpu", 1)
        except ImportError as e:
            skipped.append(f"- {fw}: not installed ({e})")
            continue
        progress(f"{fw}: built")
        step = carrying(b.step, b.carry, b.batch)
        calls[fw] = lambda step=step, block=b.block: block(step())  # every step waits for its result
    what = f"{args.net} b{args.batch} {args.dtype}, {args.rounds} interleaved rounds of 3 x {args.steps} steps, one process"
    if not calls:  # every framework asked for is missing: the notes, not a crash
        publish("peer_ab.py", argv, what, ["no framework ran"] + [""] + skipped, args.out)
        return {}
    timed = side_by_side(calls, repeats=3 * args.rounds, per_turn=3, calls=args.steps, warmup=2, turn_warmup=1,
                         block=lambda out: None, verbose=True)
    base = statistics.median(next(iter(timed.values())).repeats_s)
    rows = [f"| framework | median ms/step | p25 | min | median vs {next(iter(timed))} |", "|---|---|---|---|---|"]
    for fw, t in timed.items():
        ms = sorted(r * 1e3 for r in t.repeats_s)
        rows.append(f"| {bench_peers.LABELS[fw]} | {statistics.median(ms):.2f} | {ms[len(ms) // 4]:.2f} | {ms[0]:.2f} | "
                    f"{t.median_s / base:.2f}x |")
    publish("peer_ab.py", argv, what, rows + [""] + skipped, args.out)
    return timed


if __name__ == "__main__":
    main()
