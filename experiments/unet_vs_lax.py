"""A U-Net train step: fcnn (``models.unet`` + ``step.make_train_step``) against the same net written
directly with lax ops, side by side (issue 15's target: fcnn within 1.1x).

    python experiments/unet_vs_lax.py [--batch 8] [--size 32] [--rounds 15] [--steps 20] [--out FILE]
    python experiments/unet_vs_lax.py --hlo DIR      (also write each step's optimised HLO, for a diff)
    python experiments/unet_vs_lax.py --quick        (tiny shapes: the tests' run)

The net: ``unet(num_classes=2, depth=2, width=16)`` (transposed-conv decoder) on (batch, size, size, 1)
float32 inputs and per-pixel labels in {0, 1}; per-pixel softmax cross-entropy (the "segment" task),
SGD with momentum 0.9, lr 0.01. Variants:

* ``fcnn lax``: ``unet()`` as built by default (conv, pool and transposed conv impl "lax"),
  ``make_train_step(task=segment(2))`` with donation;
* ``fcnn auto``: ``unet(impl="auto", pool_impl="auto")``;
* ``lax``: a hand-written jitted step with donation: ``lax.conv_general_dilated`` (3x3 SAME, 1x1),
  ``lax.reduce_window`` max 2x2/2, ``lax.conv_transpose(transpose_kernel=True)`` 2x2/2, concat,
  ``jax.grad`` of the same loss, the momentum update written out (m = 0.9 m + g, p -= lr m). It
  returns what fcnn's step returns: the loss and the 2x2 confusion counts of the batch.

The lax net takes the fcnn net's parameters (``lax_params``), so both compute the same function
(tests/test_experiments_unet_vs_lax.py checks loss and gradients). Timing: ``_timing.side_by_side``
with a carried (donated) state, ``--rounds`` interleaved repeats of ``--steps`` steps each, after a
warm-up; median, 25th percentile and min ms per step, and the ratio of medians to ``lax``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from _timing import carrying, side_by_side  # noqa: E402
from step_ab import add_out, check_out, publish  # noqa: E402

LR, MOMENTUM, CLASSES, DEPTH = 0.01, 0.9, 2, 2
DN = ("NHWC", "HWIO", "NHWC")
# where each lax layer's parameters sit in unet(depth=2)'s parameter tree (serial/branches indices)
FCNN_PATHS = {
    "e0a": (1, 0), "e0b": (1, 2), "e1a": (1, 4, 1, 1, 0), "e1b": (1, 4, 1, 1, 2),
    "m0": (1, 4, 1, 1, 4, 1, 1, 0), "m1": (1, 4, 1, 1, 4, 1, 1, 2), "up1": (1, 4, 1, 1, 4, 1, 2),
    "d1a": (1, 4, 1, 1, 5), "d1b": (1, 4, 1, 1, 7), "up0": (1, 4, 1, 2), "d0a": (1, 5), "d0b": (1, 7),
    "head": (2,),
}


VARIANTS = ("fcnn lax", "fcnn auto", "lax")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    p.add_argument("--variants", default="fcnn lax,fcnn auto,lax")
    p.add_argument("--hlo", default=None, help="write each variant's optimised HLO text into this folder")
    p.add_argument("--quick", action="store_true", help="tiny shapes and counts (for tests)")
    add_out(p, "also write the table to this markdown file")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the net in lax
def lax_params(fcnn_params):
    """``{name: {"w", "b"}}`` for ``lax_apply`` from ``unet(depth=2)``'s parameters (the same arrays)."""
    out = {}
    for name, path in FCNN_PATHS.items():
        node = fcnn_params
        for i in path:
            node = node[i]
        out[name] = {"w": node["w"], "b": node["b"]}
    return out


def lax_apply(p, x):
    """unet(depth=2) written with lax: (n, h, w, 1) -> (n, h, w, 2) logits."""
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    def conv(name, x, relu=True):
        w = p[name]["w"]
        pad = "SAME" if w.shape[0] > 1 else "VALID"
        z = lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=DN) + p[name]["b"]
        return jnp.maximum(z, 0) if relu else z

    def pool(x):
        return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def up(name, x):
        return lax.conv_transpose(x, p[name]["w"], (2, 2), "VALID", dimension_numbers=DN,
                                  transpose_kernel=True) + p[name]["b"]

    e0 = conv("e0b", conv("e0a", x))
    e1 = conv("e1b", conv("e1a", pool(e0)))
    m = conv("m1", conv("m0", pool(e1)))
    d1 = conv("d1b", conv("d1a", jnp.concatenate([e1, up("up1", m)], axis=-1)))
    d0 = conv("d0b", conv("d0a", jnp.concatenate([e0, up("up0", d1)], axis=-1)))
    return conv("head", d0, relu=False)


def lax_loss(p, x, y):
    import jax
    import jax.numpy as jnp

    logits = lax_apply(p, x)
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], axis=-1)
    return -jnp.mean(picked), logits


def make_lax_step():
    """``step(params, momentum, x, y) -> (params, momentum, loss, confusion)``, jitted with donation."""
    import jax
    import jax.numpy as jnp

    def step(params, mom, x, y):
        (loss, logits), grads = jax.value_and_grad(lax_loss, has_aux=True)(params, x, y)
        mom = jax.tree.map(lambda m, g: MOMENTUM * m + g, mom, grads)
        params = jax.tree.map(lambda q, m: q - LR * m, params, mom)
        pred = jnp.argmax(logits, axis=-1)
        conf = jnp.einsum("pi,pj->ij", jax.nn.one_hot(y.reshape(-1), CLASSES),
                          jax.nn.one_hot(pred.reshape(-1), CLASSES))
        return params, mom, loss, conf

    return jax.jit(step, donate_argnums=(0, 1))


# ----------------------------------------------------------------------------- variants
def _data(args):
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.size, args.size, 1)).astype("float32")
    y = rng.integers(0, CLASSES, (args.batch, args.size, args.size)).astype("int32")
    return jax.device_put(x), jax.device_put(y)


def build(variant: str, args, x, y):
    """``(call, step, example args)`` of one variant: ``call()`` runs one donated step on carried state."""
    import jax

    from fcnn import tasks
    from fcnn.models import unet
    from fcnn.optim import make_optimizer
    from fcnn.step import make_train_step

    impl = "auto" if variant == "fcnn auto" else "lax"
    model = unet(CLASSES, depth=DEPTH, width=args.width, impl=impl, pool_impl=impl)
    _, params, state = model.init(jax.random.PRNGKey(0), x.shape)
    if variant == "lax":
        step = make_lax_step()
        lp = lax_params(params)
        carry = (lp, jax.tree.map(jax.numpy.zeros_like, lp))
        return carrying(lambda c: step(*c, x, y)[:2], carry), step, (*carry, x, y)
    opt = make_optimizer("momentum", LR, momentum=MOMENTUM)
    step = make_train_step(model, opt, task=tasks.segment(CLASSES), donate=True)
    key = jax.random.PRNGKey(1)
    carry = (params, state, opt.init(params))
    return carrying(lambda c: step(*c, (x, y), key)[:3], carry), step, (*carry, (x, y), key)


def run(args):
    x, y = _data(args)
    variants = args.variants.split(",")
    built = {v: build(v, args, x, y) for v in variants}
    if args.hlo:
        os.makedirs(args.hlo, exist_ok=True)
        for v, (_, step, ex) in built.items():
            with open(os.path.join(args.hlo, v.replace(" ", "_") + ".hlo.txt"), "w") as f:
                f.write(step.lower(*ex).compile().as_text())
    timed = side_by_side({v: b[0] for v, b in built.items()}, repeats=args.rounds, calls=args.steps, warmup=2,
                         turn_warmup=max(1, args.steps // 5), verbose=True)
    return timed


def table(timed) -> str:
    import numpy as np

    base = statistics.median(timed["lax"].repeats_s) if "lax" in timed else None
    rows = ["| step | median ms/step | p25 | min | max | median / lax | compile s |", "|---|---|---|---|---|---|---|"]
    for v, t in timed.items():
        ms = [r * 1e3 for r in t.repeats_s]
        ratio = f"{statistics.median(t.repeats_s) / base:.3f}x" if base else "—"
        rows.append(f"| {v} | {statistics.median(ms):.3f} | {np.percentile(ms, 25):.3f} | {min(ms):.3f} | "
                    f"{max(ms):.3f} | {ratio} | {t.compile_s:.1f} |")
    return "\n".join(rows) + "\n"


def check_args(args) -> None:
    """Refuse bad arguments before any compile (SystemExit naming the flag)."""
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad:
        raise SystemExit(f"--variants: unknown {bad}; known: {', '.join(VARIANTS)}")
    for flag, value in (("--batch", args.batch), ("--size", args.size), ("--width", args.width),
                        ("--rounds", args.rounds), ("--steps", args.steps)):
        if value < 1:
            raise SystemExit(f"{flag} must be an integer >= 1, got {value}")


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    check_out(args)
    import jax

    if args.quick:
        args.batch, args.size, args.width, args.rounds, args.steps = 2, 8, 4, 2, 2
    what = (f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; unet depth {DEPTH} "
            f"width {args.width}, batch {args.batch}, {args.size}x{args.size}x1 float32, SGD momentum {MOMENTUM}; "
            f"{args.rounds} interleaved repeats of {args.steps} donated steps")
    return publish("unet_vs_lax.py", argv, what, table(run(args)).splitlines(), args.out)


if __name__ == "__main__":
    main()
