"""Per-channel sums on XLA:CPU: a reduction over the leading axes against ``fcnn.channels``'
matrix products, and the max-pool backward's "first" tie weights, interleaved in one process
(docs/perf_notes.md, items 31, 32 and 35).

    python experiments/channels_ab.py
    python experiments/channels_ab.py --parts sum,batchnorm --shapes 16x32x32x64,16x4x4x512 --out /tmp/t.md

Parts, each timed per shape with ``_timing.side_by_side`` (variants in turns, compiled with
``fcnn.step.compiler_options()``, what ``make_train_step`` uses):

- ``sum``: ``jnp.sum(x, axis=(0, 1, 2))`` against ``channels.channel_sum(x)`` (ones @ x);
- ``batchnorm``: BatchNorm in training mode then ReLU, forward and backward (gradient with respect
  to x, scale and offset), written with ``jnp.mean`` and broadcasting (fcnn's BatchNorm before
  item 31, kept here as the "before") against ``fcnn.norms.BatchNorm``;
- ``pool``: the gradient of a max-pool of a ReLU, as in the networks (``impl="custom_vjp"``, window
  2, ties "first"), with the tiled backward as it was until item 35 (``is_max``'s mask, then its
  first True per window by an unrolled running OR at >= 8 channels, an int32 cumsum below: item
  32) against today's (``pool_nd.first_max_mask``: one argmax, on the windows' free view).

Checks that each pair agrees (to float32 rounding) before timing it. Prints, and with ``--out``
writes, one markdown table with the command and the date.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import side_by_side  # noqa: E402
from step_ab import add_out, check_out, publish  # noqa: E402

DEFAULT_SHAPES = "16x32x32x64,16x16x16x128,16x8x8x256,16x4x4x512,64x28x28x6,64x10x10x16"
QUICK_SHAPES = "2x4x4x8"
PARTS = ("sum", "batchnorm", "pool")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="NHWC shapes, comma-separated, e.g. 16x32x32x64")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--target-s", type=float, default=0.2)
    p.add_argument("--quick", action="store_true", help="one tiny shape, 2 repeats (for tests)")
    add_out(p)
    return p.parse_args(argv)


def parse_shapes(text):
    """``"16x32x32x64,2x4x4x8"`` -> [(16, 32, 32, 64), (2, 4, 4, 8)]: NHWC, four positive ints each."""
    shapes = []
    for item in text.split(","):
        dims = item.split("x")
        if len(dims) != 4 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise SystemExit(f"--shapes: {item!r} is not an NHWC shape of four positive ints like 16x32x32x64")
        shapes.append(tuple(int(d) for d in dims))
    return shapes


def _bn_before(p, x):
    """BatchNorm (train) + ReLU with jnp.mean and broadcasting: the form before fcnn.channels."""
    import jax
    import jax.numpy as jnp

    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    y = (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["offset"]
    return jax.nn.relu(y)


def _mask_scan_tiled(x, y, g, window, ties):
    """The tiled max-pool backward before item 35, for ties "first" (the "before" of ``pool``): the
    windows transposed next to each other, ``is_max``'s mask, its first True by a scan, and the
    transpose back."""
    import jax.numpy as jnp

    from fcnn.channels import MIN_CHANNELS
    from fcnn.ops import pool_nd

    xv = pool_nd.free_view(x, y.shape[1:-1], window)
    m = pool_nd.is_max(pool_nd.window_cells(xv), y[..., None, :])
    if m.shape[-1] < MIN_CHANNELS or m.shape[-2] > 16:
        first = m & (jnp.cumsum(m.astype(jnp.int32), axis=-2) == 1)
    else:
        seen, kept = m[..., 0, :], [m[..., 0, :]]
        for i in range(1, m.shape[-2]):
            kept.append(m[..., i, :] & ~seen)
            seen = seen | m[..., i, :]
        first = jnp.stack(kept, axis=-2)
    return pool_nd.from_free_view(pool_nd.free_view_of_cells(first.astype(x.dtype) * g[..., None, :], window), x.shape)


def _variants(part, shape):
    """{name: f(*args)} and the args, for one part at one shape."""
    import jax
    import jax.numpy as jnp

    from fcnn import channels
    from fcnn.norms import BatchNorm
    from fcnn.ops import max_pool2d, pool_nd

    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    if part == "sum":
        return {"jnp.sum": lambda x: jnp.sum(x, axis=(0, 1, 2)), "channel_sum": channels.channel_sum}, (x,)
    if part == "batchnorm":
        bn = BatchNorm()
        _, p, s = bn.init(jax.random.PRNGKey(1), shape)
        p = {"scale": p["scale"] * 1.5, "offset": p["offset"] + 0.1}
        g = jax.random.normal(jax.random.PRNGKey(2), shape)

        def grad_of(f):
            return lambda p, x: jax.grad(lambda p, x: jnp.sum(f(p, x) * g), (0, 1))(p, x)

        return {"jnp.mean": grad_of(_bn_before),
                "fcnn.channels": grad_of(lambda p, x: jax.nn.relu(bn.apply(p, s, x, train=True)[0]))}, (p, x)
    if part == "pool":
        def pool_grad(tiled_backward):
            def f(x):
                saved = pool_nd.max_pool_bwd_tiled
                pool_nd.max_pool_bwd_tiled = tiled_backward  # read at trace time, inside this call
                try:
                    return jax.vjp(lambda x: max_pool2d(jax.nn.relu(x), 2, impl="custom_vjp", ties="first"), x)[1](
                        jnp.ones((shape[0], shape[1] // 2, shape[2] // 2, shape[3]), x.dtype))[0]
                finally:
                    pool_nd.max_pool_bwd_tiled = saved
            return f

        return {"mask + scan": pool_grad(_mask_scan_tiled), "argmax": pool_grad(pool_nd.max_pool_bwd_tiled)}, (x,)
    raise AssertionError(part)  # main checked the parts


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    check_out(args)
    import jax
    import numpy as np

    from fcnn.step import compiler_options

    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--parts: unknown part {unknown[0]!r} ({', '.join(PARTS)})")
    shapes = parse_shapes(QUICK_SHAPES if args.quick else args.shapes)
    repeats, target = (2, 0.01) if args.quick else (args.repeats, args.target_s)
    rows = ["| part | shape | before | ms | after | ms | after / before |", "|---|---|---|---|---|---|---|"]
    results = {}
    for part in parts:
        for shape in shapes:
            fs, call_args = _variants(part, shape)
            compiled = {name: jax.jit(f).lower(*call_args).compile(compiler_options()) for name, f in fs.items()}
            outs = [jax.tree.leaves(c(*call_args)) for c in compiled.values()]
            for a, b in zip(*outs):  # the two forms compute the same values
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-3)
            t = side_by_side({n: (lambda c=c: c(*call_args)) for n, c in compiled.items()},
                             repeats=repeats, target_s=target, verbose=True)
            (b_name, before), (a_name, after) = t.items()
            results[(part, shape)] = (before.median_s, after.median_s)
            rows.append(f"| {part} | {'x'.join(map(str, shape))} | {b_name} | {before.median_s * 1e3:.3f} | "
                        f"{a_name} | {after.median_s * 1e3:.3f} | {after.median_s / before.median_s:.2f}x |")
    what = f"median ms of {repeats} interleaved repeats, {jax.default_backend()}"
    publish("channels_ab.py", argv, what, rows, args.out)
    return results


if __name__ == "__main__":
    main()
