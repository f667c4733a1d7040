"""Winograd F(2x2,3x3) / F(4x4,3x3) against lax and im2col on VGG-style 3x3 SAME layers.

    python experiments/bench_winograd.py [--batch 16] [--repeats 7] [--target-s 0.5] [--out FILE]
    python experiments/bench_winograd.py --error [--out FILE]     (float32 error vs float64 only)
    python experiments/bench_winograd.py --quick                  (tiny shapes: the tests' run)

Two questions, one table each:

1. Time, per layer (batch 16: 32x32 64->128, 16x16 128->256, 8x8 256->512), of the forward and of
   forward + backward (``jax.vjp``: the output and both cotangents are returned, so XLA cannot drop
   the forward) for ``conv2d(impl="lax")``, ``ops.winograd.conv2d_winograd`` with tile 2 and 4,
   and ``conv2d(impl="im2col")``; the variants take turns (``_timing.side_by_side``), median of
   ``--repeats``. "mults" is the multiplications of the channel products relative to direct
   convolution (Winograd: a*a per m*m output tile, over the whole tiles it computes).
2. ``--error``: max |z32 - z64| / max |z64| (``gradcheck.compare``'s max_rel) of float32
   (precision="highest") lax, reference and Winograd against float64 lax, random N(0, 1) input and
   kernel, batch 2 of the same layers (and 16x16 16->64, 64->64).

Prints the device, seed, command and the table(s) in markdown; ``--out FILE`` also writes them.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from _timing import side_by_side  # noqa: E402
from step_ab import add_out, check_out, progress  # noqa: E402

# (name, (h, w, cin), cout); all 3x3, stride 1, SAME
LAYERS = [("32x32 64->128", (32, 32, 64), 128), ("16x16 128->256", (16, 16, 128), 256),
          ("8x8 256->512", (8, 8, 256), 512)]
ERROR_LAYERS = [("16x16 16->64", (16, 16, 16), 64), ("16x16 64->64", (16, 16, 64), 64)] + LAYERS
QUICK_LAYERS = [("6x7 4->8", (6, 7, 4), 8)]
VARIANTS = ("lax", "winograd F(2,3)", "winograd F(4,3)", "im2col")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--target-s", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--error", action="store_true", help="the float32 error table only")
    p.add_argument("--quick", action="store_true", help="tiny shapes and counts (for tests)")
    add_out(p, "also write the tables to this markdown file")
    return p.parse_args(argv)


def conv_fn(variant: str):
    """``f(x, w)`` NHWC/HWIO, 3x3 SAME stride 1, for one variant."""
    from fcnn.ops import conv2d
    from fcnn.ops.winograd import conv2d_winograd

    if variant.startswith("winograd"):
        tile = int(variant.split("(")[1][0])
        return lambda x, w: conv2d_winograd(x, w, 1, ((1, 1), (1, 1)), 1, 1, tile=tile)
    return lambda x, w: conv2d(x, w, padding="SAME", impl=variant)


def multiplications(hwc, cout: int, variant: str) -> float:
    """Channel-product multiplications relative to direct convolution (9 per output and channel pair)."""
    if not variant.startswith("winograd"):
        return 1.0
    m = int(variant.split("(")[1][0])
    h, w, _ = hwc
    tiles = -(-h // m) * -(-w // m)
    return (m + 2) ** 2 * tiles / (9.0 * h * w)


def _inputs(seed: int, batch: int, hwc, cout: int, dtype):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *hwc)).astype(dtype)
    w = rng.standard_normal((3, 3, hwc[2], cout)).astype(dtype)
    g = rng.standard_normal((batch, hwc[0], hwc[1], cout)).astype(dtype)
    return x, w, g


def time_table(args, layers) -> str:
    import jax

    rows = []
    for name, hwc, cout in layers:
        x, w, g = (jax.device_put(a) for a in _inputs(args.seed, args.batch, hwc, cout, "float32"))
        calls = {}
        for v in VARIANTS:
            f = conv_fn(v)
            fwd = jax.jit(f)
            both = jax.jit(lambda x, w, g, f=f: (lambda y, pull: (y, *pull(g)))(*jax.vjp(f, x, w)))
            calls[(v, "fwd")] = lambda fwd=fwd: fwd(x, w)
            calls[(v, "both")] = lambda both=both: both(x, w, g)
        progress(f"{name}: timing {len(calls)} variants")
        t = side_by_side(calls, repeats=args.repeats, target_s=args.target_s, verbose=True)
        base = {k: t[("lax", k)].median_s for k in ("fwd", "both")}
        for v in VARIANTS:
            f_ms, b_ms = t[(v, "fwd")].median_s * 1e3, t[(v, "both")].median_s * 1e3
            rows.append([name, v, f"{f_ms:.2f}", f"{b_ms:.2f}", f"{f_ms / base['fwd'] / 1e3:.2f}",
                         f"{b_ms / base['both'] / 1e3:.2f}", f"{multiplications(hwc, cout, v):.2f}"])
    head = ["layer", "impl", "fwd ms", "fwd+bwd ms", "fwd / lax", "fwd+bwd / lax", "mults / direct"]
    return _table(head, rows)


def error_table(args, layers) -> str:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from fcnn import gradcheck as gc
    from fcnn.ops import conv2d

    rows = []
    for name, hwc, cout in layers:
        x, w, _ = _inputs(args.seed, 2, hwc, cout, "float64")
        z64 = conv2d(x, w, padding="SAME", impl="lax")
        x32, w32 = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
        row = [name, str(9 * hwc[2])]
        for v in ("lax", "reference", "winograd F(2,3)", "winograd F(4,3)"):
            if v == "reference":
                z = conv2d(x32, w32, padding="SAME", impl="reference", precision="highest")
            elif v == "lax":
                z = conv2d(x32, w32, padding="SAME", impl="lax", precision="highest")
            else:
                z = conv_fn(v)(x32, w32)
            row.append(f"{gc.compare(z, z64, jnp.float32).max_rel:.1e}")
        rows.append(row)
    return _table(["layer", "C_in*9", "lax", "reference", "F(2,3)", "F(4,3)"], rows)


def _table(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def main(argv=None):
    args = parse_args(argv)
    for flag, value in (("--batch", args.batch), ("--repeats", args.repeats)):
        if value < 1:
            raise SystemExit(f"{flag} must be an integer >= 1, got {value}")
    if not args.target_s > 0:
        raise SystemExit(f"--target-s must be > 0 seconds, got {args.target_s}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    check_out(args)
    import jax

    if args.quick:
        args.batch, args.repeats, args.target_s = 2, 2, 0.01
    layers = QUICK_LAYERS if args.quick else LAYERS
    cmd = "python experiments/bench_winograd.py " + " ".join(sys.argv[1:] if argv is None else argv)
    head = (f"{datetime.date.today().isoformat()}, `{cmd}`: {jax.devices()[0].device_kind} "
            f"({jax.default_backend()}), jax {jax.__version__}, seed {args.seed}")
    print(head, flush=True)
    if args.error:
        text = (f"{head}; float32 max_rel against float64, batch 2\n\n"
                + error_table(args, QUICK_LAYERS if args.quick else ERROR_LAYERS))
    else:
        text = (f"{head}; batch {args.batch}, median of {args.repeats} repeats of {args.target_s} s\n\n"
                + time_table(args, layers))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    main()
