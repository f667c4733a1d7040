"""Model init time in fresh processes: fcnn's flat draws against draws at each weight's shape.

    python experiments/init_ab.py --rounds 5 --nets lenet,vgg,resnet18

Each round runs, for every net, one fresh process per variant in turn; a process imports fcnn,
warms JAX up on a trivial op, then times ``model.init`` (``fcnn.models``, the benchmark's input
shape) to the last array: the eager init a user's script or ``fcnn train`` pays once, mostly XLA
compiles of the random draws, one per weight shape. Variants:

* ``flat``: the library (``fcnn.init`` draws one flat vector per weight and reshapes it);
* ``shaped``: ``fcnn.init._flat`` replaced by the draw at the weight's own shape, as before
  (the same values: jax.random's draws are reshape-invariant, tests/test_init.py).

Prints the median, min and max seconds per net and variant as a markdown table with the command
(and writes it to ``--out``). docs/perf_notes.md item 49.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_ab import add_out, check_out, progress, publish  # noqa: E402

VARIANTS = ("flat", "shaped")
NETS = {"lenet": ("lenet5", (64, 28, 28, 1)), "vgg": ("small_vgg", (16, 32, 32, 3)),
        "resnet18": ("resnet18", (16, 32, 32, 3))}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--nets", default="lenet,vgg,resnet18")
    add_out(p)
    p.add_argument("--worker", nargs=2, metavar=("VARIANT", "NET"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be an integer >= 1, got {args.rounds}")
    unknown = [n for n in args.nets.split(",") if n not in NETS]
    if unknown:
        p.error(f"--nets: unknown {unknown}; choose from {sorted(NETS)}")
    return args


def build(variant: str, net: str):
    """(model, input shape) with ``variant``'s draws in place (``shaped`` patches ``fcnn.init._flat``)."""
    from fcnn import init, models

    if variant == "shaped":
        init._flat = lambda draw, key, shape, dtype, *bounds: draw(key, shape, dtype, *bounds)
    name, shape = NETS[net]
    model = models.resnet18(stem="cifar") if name == "resnet18" else getattr(models, name)()
    return model, shape


def worker(variant: str, net: str) -> float:
    import jax
    import jax.numpy as jnp

    model, shape = build(variant, net)
    jax.block_until_ready(jnp.ones(3) + 1)  # the backend's start-up, outside the timing
    t0 = time.perf_counter()
    jax.block_until_ready(model.init(jax.random.PRNGKey(0), shape)[1:])
    return time.perf_counter() - t0


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps({"init_s": worker(*args.worker)}))
        return None
    check_out(args)
    nets = args.nets.split(",")
    got = {(n, v): [] for n in nets for v in VARIANTS}
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    for _ in range(args.rounds):
        for net in nets:
            for v in VARIANTS:
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", v, net], env=env,
                                     capture_output=True, text=True, check=True).stdout
                got[(net, v)].append(json.loads(out.strip().splitlines()[-1])["init_s"])
        progress(f"round {len(got[(nets[0], VARIANTS[0])])} of {args.rounds} done")
    rows = ["| net | variant | median s | min | max | processes |", "|---|---|---|---|---|---|"]
    for (net, v), ts in got.items():
        rows.append(f"| {net} | {v} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} | {len(ts)} |")
    publish("init_ab.py", argv, f"model.init in fresh processes, {args.rounds} rounds", rows, args.out)
    return rows


if __name__ == "__main__":
    main()
