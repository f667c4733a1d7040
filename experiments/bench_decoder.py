"""Decoder and N-d ops, every implementation side by side with lax (issue 15's performance part).

    python experiments/bench_decoder.py [--repeats 7] [--target-s 0.3] [--cases ct-k2s2,conv1d] [--out FILE]
    python experiments/bench_decoder.py --quick          (tiny shapes of the six 2-D/1-D/3-D cases: the tests' run)

One table: per case, the forward time and the forward + backward time (``jax.vjp``: the output and
the cotangents of every differentiable input are returned for a fixed output gradient, so XLA can
drop neither) of each implementation, the variants of a case taking turns
(``_timing.side_by_side``, interleaved rounds); the median of ``--repeats`` repeats, the spread
(min-max over the repeats) of fwd+bwd, and the ratio to the case's ``lax`` row. ``diff`` is
max |y - y_lax| / max |y_lax| of the forward (float32), so a row that computes another function
shows it. Cases (float32, channels-last):

* ``ct-k2s2``, ``ct-k4s2p1``: ``ops.conv_transpose`` 2x upsampling 64 -> 32 channels of a batch 8,
  32x32 input (output 64x64), kernel 2 stride 2, and kernel 4 stride 2 padding 1; every
  ``CONV_TRANSPOSE_IMPLS`` entry, ``auto``, and ``jax.lax.conv_transpose(transpose_kernel=True)``
  (the same function written directly with lax);
* ``ct1d-k2s2``, ``ct3d-k2s2``: the same 2x upsampling 64 -> 32 channels in 1-D (batch 8, length
  2048) and 3-D (batch 4, 8^3 -> 16^3);
* ``up-nearest``, ``up-bilinear``: ``ops.upsample`` x2 of (8, 32, 32, 64) against the lax-written
  versions: ``jnp.repeat`` twice (nearest), ``jax.image.resize(method="bilinear")`` (bilinear;
  half-pixel centres, but it renormalises its triangle kernel at the borders: ``diff`` says
  whether it equals PyTorch's ``align_corners=False`` that fcnn follows);
* ``conv3d``: a 16^3 volume, 16 -> 32 channels, 3x3x3 SAME, batch 8; ``conv1d``: length 4096,
  32 -> 64 channels, kernel 5 SAME, batch 8; ``conv3d-c1`` (16^3, 1 -> 16) and ``conv3d-c32``
  (8^3, 32 -> 64); every ``CONV_IMPLS`` entry and ``auto``.

Prints the device, seed, command and the markdown table; ``--out FILE`` also writes it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from _timing import side_by_side  # noqa: E402
from step_ab import add_out, check_out, publish  # noqa: E402


class Case(NamedTuple):
    name: str
    kind: str  # "ct", "up" or "conv"
    x: Tuple[int, ...]
    w: Tuple[int, ...]  # kernel shape (ct, conv); () for up
    opts: tuple  # keyword options as ((key, value), ...)


CASES = [
    Case("ct-k2s2", "ct", (8, 32, 32, 64), (2, 2, 32, 64), (("stride", 2),)),
    Case("ct-k4s2p1", "ct", (8, 32, 32, 64), (4, 4, 32, 64), (("stride", 2), ("padding", 1))),
    Case("ct1d-k2s2", "ct", (8, 2048, 64), (2, 32, 64), (("stride", 2),)),
    Case("ct3d-k2s2", "ct", (4, 8, 8, 8, 64), (2, 2, 2, 32, 64), (("stride", 2),)),
    Case("up-nearest", "up", (8, 32, 32, 64), (), (("method", "nearest"),)),
    Case("up-bilinear", "up", (8, 32, 32, 64), (), (("method", "bilinear"),)),
    Case("conv3d", "conv", (8, 16, 16, 16, 16), (3, 3, 3, 16, 32), (("padding", "SAME"),)),
    Case("conv1d", "conv", (8, 4096, 32), (5, 32, 64), (("padding", "SAME"),)),
    # the 3-D U-Net's first layer and a deeper one: where does col2im's 3-D gain end?
    Case("conv3d-c1", "conv", (8, 16, 16, 16, 1), (3, 3, 3, 1, 16), (("padding", "SAME"),)),
    Case("conv3d-c32", "conv", (8, 8, 8, 8, 32), (3, 3, 3, 32, 64), (("padding", "SAME"),)),
]
QUICK_CASES = [
    Case("ct-k2s2", "ct", (1, 4, 4, 4), (2, 2, 2, 4), (("stride", 2),)),
    Case("ct-k4s2p1", "ct", (1, 4, 4, 4), (4, 4, 2, 4), (("stride", 2), ("padding", 1))),
    Case("up-nearest", "up", (1, 4, 4, 2), (), (("method", "nearest"),)),
    Case("up-bilinear", "up", (1, 4, 4, 2), (), (("method", "bilinear"),)),
    Case("conv3d", "conv", (1, 4, 4, 4, 2), (3, 3, 3, 2, 4), (("padding", "SAME"),)),
    Case("conv1d", "conv", (1, 16, 2), (5, 2, 4), (("padding", "SAME"),)),
]
JAX_CT = "jax lax.conv_transpose"
BASELINE = {"nearest": "jnp.repeat", "bilinear": "jax.image.resize"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--target-s", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and counts (for tests)")
    add_out(p, "also write the table to this markdown file")
    return p.parse_args(argv)


def impls(case: Case):
    """The variant names of a case, ``lax`` (or the lax-written baseline) first."""
    from fcnn import ops
    from fcnn.ops.conv_transpose import CONV_TRANSPOSE_CHOICES

    if case.kind == "ct":
        return list(CONV_TRANSPOSE_CHOICES) + [JAX_CT]
    if case.kind == "up":
        return [BASELINE[dict(case.opts)["method"]], "fcnn"]
    return list(ops.CONV_IMPLS) + ["auto"]


def _jax_conv_transpose(x, w, stride, padding):
    """The transposed conv written directly with ``jax.lax.conv_transpose`` (channels-last, 1-3 D):
    PyTorch's ``padding`` p crops p from each end of lax's VALID output, ``(in-1)*s + k`` when k >= s."""
    from jax import lax

    sp = "DHW"[3 - (x.ndim - 2):]
    z = lax.conv_transpose(x, w, (stride,) * len(sp), "VALID", dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
                           transpose_kernel=True)
    return z[(slice(None), *(slice(padding, n - padding) for n in z.shape[1:-1]))]


def op_fn(case: Case, impl: str):
    """``f(x, w)`` (ct, conv) or ``f(x)`` (up) for one variant."""
    import jax
    import jax.numpy as jnp

    from fcnn import ops

    o = dict(case.opts)
    if case.kind == "ct":
        if impl == JAX_CT:
            return lambda x, w: _jax_conv_transpose(x, w, o["stride"], o.get("padding", 0))
        return lambda x, w: ops.conv_transpose(x, w, impl=impl, **o)
    if case.kind == "conv":
        return lambda x, w: ops.conv(x, w, impl=impl, **o)
    if impl == "jnp.repeat":
        return lambda x: jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if impl == "jax.image.resize":
        return lambda x: jax.image.resize(x, (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3]), "bilinear")
    return lambda x: ops.upsample(x, 2, method=o["method"])


def _inputs(case: Case, seed: int):
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)
    args = [rng.standard_normal(case.x).astype("float32")]
    if case.w:
        args.append((rng.standard_normal(case.w) / np.sqrt(np.prod(case.w[:-1]))).astype("float32"))
    return [jax.device_put(a) for a in args]


def bench_case(case: Case, args):
    """Rows ``[name, impl, fwd ms, fwd+bwd ms, range, fwd/lax, both/lax, diff]`` of one case."""
    import jax
    import numpy as np

    xs = _inputs(case, args.seed)
    names = impls(case)
    fwds = {v: jax.jit(op_fn(case, v)) for v in names}
    ys = {v: np.asarray(fwds[v](*xs)) for v in names}
    g = jax.device_put(np.random.default_rng(args.seed + 1).standard_normal(ys[names[0]].shape).astype("float32"))
    calls = {}
    for v in names:
        f, fwd = op_fn(case, v), fwds[v]
        both = jax.jit(lambda *a, f=f: (lambda y, pull: (y, *pull(a[-1])))(*jax.vjp(f, *a[:-1])))
        calls[(v, "fwd")] = lambda fwd=fwd: fwd(*xs)
        calls[(v, "both")] = lambda both=both: both(*xs, g)
    t = side_by_side(calls, repeats=args.repeats, target_s=args.target_s)
    base = {k: t[(names[0], k)].median_s for k in ("fwd", "both")}
    ref = ys[names[0]]
    rows = []
    for v in names:
        tf, tb = t[(v, "fwd")], t[(v, "both")]
        diff = float(np.max(np.abs(ys[v] - ref)) / max(np.max(np.abs(ref)), 1e-30))
        rows.append([case.name, v, f"{tf.median_s * 1e3:.3f}", f"{tb.median_s * 1e3:.3f}",
                     f"{min(tb.repeats_s) * 1e3:.3f}-{max(tb.repeats_s) * 1e3:.3f}",
                     f"{tf.median_s / base['fwd']:.2f}", f"{tb.median_s / base['both']:.2f}", f"{diff:.1e}"])
    return rows


def _shape_text(case: Case) -> str:
    x = "x".join(map(str, case.x))
    opts = " ".join(f"{k}={v}" for k, v in case.opts)
    return f"{x} w {'x'.join(map(str, case.w))} {opts}" if case.w else f"{x} {opts} x2"


def table(rows, cases) -> str:
    head = ["case", "impl", "fwd ms", "fwd+bwd ms", "fwd+bwd min-max", "fwd / lax", "fwd+bwd / lax",
            "diff vs lax"]
    shapes = [f"`{c.name}`: {_shape_text(c)}" for c in cases]
    return (_lines([head]) + "\n|" + "---|" * len(head) + "\n" + _lines(rows)
            + "\n\nShapes (float32, channels-last): " + "; ".join(shapes) + ".")


def _lines(rows) -> str:
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    check_out(args)
    import jax

    cases = QUICK_CASES if args.quick else CASES
    if args.quick:
        args.repeats, args.target_s = 2, 0.005
    if args.cases:
        wanted = args.cases.split(",")
        unknown = sorted(set(wanted) - {c.name for c in cases})
        if unknown:
            raise SystemExit(f"--cases: unknown {unknown}; known: {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in wanted]
    what = (f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, seed {args.seed}; "
            f"median of {args.repeats} interleaved repeats of {args.target_s} s (lax row = 1.00; for upsample the "
            f"lax-written baseline)")
    rows = []
    for case in cases:
        case_rows = bench_case(case, args)
        print(_lines(case_rows), flush=True)
        rows += case_rows
    return publish("bench_decoder.py", argv, what, table(rows, cases).splitlines(), args.out)


if __name__ == "__main__":
    main()
