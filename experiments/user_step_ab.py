"""A user's own ``jax.jit`` train step around ``model.apply`` against fcnn's ``make_train_step``:
interleaved A/B (experiments/_timing.py ``side_by_side``) and the compiled programs' differences.

    python experiments/user_step_ab.py --net lenet --batch 64 --dtype f32
    python experiments/user_step_ab.py --net lenet --batch 64 --dtype bf16 --hlo /tmp/hlo
    python experiments/user_step_ab.py --variants fcnn,user_auto --net vgg --batch 16 --rounds 3 --steps 3

Variants (one model per variant, same init, same data, SGD momentum 0.9):

- ``fcnn``: ``make_train_step(models.X(impl="auto", pool_impl="auto"), opt)`` (donated carry;
  what benchmark.py times as "fcnn");
- ``fcnn_nodonate``: the same with ``donate=False``;
- ``user_default``: the user's step of a JAX tutorial (``jax.value_and_grad`` of a loss around
  ``model.apply``, ``optax`` update, ``jax.jit`` without donation) over ``models.X()`` with its
  default implementations;
- ``user_auto``: the same step over ``models.X(impl="auto", pool_impl="auto")``;
- ``user_auto_donate``: ``user_auto`` with ``donate_argnums=(0, 1, 2)``;
- ``user_plain``: ``jax.jit(plain_train_step(model, opt))``, fcnn's body in the user's jit;
- ``fcnn_ynn_off``, ``user_auto_ynn_off``: ``fcnn`` and ``user_auto`` compiled with the XLA:CPU
  option ``xla_cpu_experimental_ynn_fusion_type=""`` (convolutions by Eigen, not YNNPACK;
  ``jit(...).lower(...).compile(options)``, so both settings are timed in one process).

With ``--dtype bf16`` the fcnn variants use ``dtype_policy="bf16"`` and the user variants cast
inside the loss as a user would (params and x to bfloat16, logits back to float32), plus
``user_bf16_outside``: the params cast to bfloat16 *outside* the differentiated loss (the
gradient is taken with respect to the bf16 copy, then upcast for the f32 update).

``--hlo DIR`` writes each variant's optimized HLO (``jit(f).lower(...).compile().as_text()``)
and prints a census per variant (fusions, converts, convolutions, dots, custom calls, copies,
parameters aliased to outputs). Results print as markdown with the command and date.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import carrying, side_by_side  # noqa: E402
from step_ab import add_out, check_out, publish  # noqa: E402

VARIANTS = ("fcnn", "fcnn_nodonate", "user_default", "user_auto", "user_auto_donate", "user_plain", "fcnn_ynn_off",
            "user_auto_ynn_off")
BF16_VARIANTS = VARIANTS + ("user_bf16_outside",)
MODEL_NAMES = {"lenet": "lenet5", "vgg": "small_vgg", "resnet18": None}  # None: bench_resnet's model
INPUTS = {"lenet": (28, 28, 1), "vgg": (32, 32, 3), "resnet18": (32, 32, 3)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="lenet", choices=sorted(MODEL_NAMES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--variants", default="", help="comma-separated (default: all for the dtype)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=30, help="steps per timed repeat")
    p.add_argument("--hlo", default=None, help="folder for the optimized HLO of each variant (and a census)")
    add_out(p)
    return p.parse_args(argv)


def _user_step(model, tx, dtype, donate, cast_outside=False):
    """The train step a user writes from JAX's and optax's tutorials, over fcnn's ``model.apply``."""
    import jax
    import jax.numpy as jnp
    import optax

    import bench_peers

    half = bench_peers._half if dtype == "bf16" else (lambda t: t)

    def loss_fn(params, state, x, y):
        if not cast_outside:
            params, x = half(params), half(x)
        logits, state = model.apply(params, state, x, train=True)
        logits = logits.astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    def step(params, state, opt_state, batch, key):
        del key
        x, y = batch
        p = half(params) if cast_outside else params
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, state, half(x) if cast_outside else x, y)
        grads = jax.tree.map(lambda g, q: g.astype(q.dtype), grads, params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, {"loss": loss}

    return jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())


def build(name, args):
    """``(jitted step, params, state, opt_state)`` of one variant."""
    import jax

    import bench_peers
    from fcnn import models
    from fcnn.step import make_train_step, plain_train_step

    import bench_resnet

    auto = dict(impl="auto", pool_impl="auto")
    if MODEL_NAMES[args.net] is None:
        model = bench_resnet.fcnn_model("lax" if name == "user_default" else "auto")
    else:
        model = models.get_model(MODEL_NAMES[args.net], **({} if name == "user_default" else auto))
    _, params, state = model.init(jax.random.PRNGKey(0), (args.batch,) + INPUTS[args.net])
    tx = bench_peers._sgd()
    if name in ("fcnn", "fcnn_nodonate", "fcnn_ynn_off"):
        step = make_train_step(model, tx, dtype_policy=args.dtype, donate=name == "fcnn")
    elif name == "user_plain":
        step = jax.jit(plain_train_step(model, tx, dtype_policy=args.dtype))
    else:
        step = _user_step(model, tx, args.dtype, donate=name == "user_auto_donate",
                          cast_outside=name == "user_bf16_outside")
    return step, params, state, tx.init(params)


def census(hlo: str) -> dict:
    """Counts of the instructions that tell two compiled train steps apart."""
    entry = hlo[hlo.rfind("ENTRY"):]
    ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", hlo))
    return {"fusions": len(re.findall(r"= \S+ fusion\(", entry)), "convert": ops["convert"],
            "convolution": ops["convolution"], "dot": ops["dot"], "custom-call": ops["custom-call"],
            "copy": ops["copy"], "reduce-window": ops["reduce-window"], "while": ops["while"],
            "aliased": hlo.split("\n", 1)[0].count("alias)")}


def main(argv=None):
    args = parse_args(argv)
    for flag, value in (("--batch", args.batch), ("--rounds", args.rounds), ("--steps", args.steps)):
        if value < 1:
            raise SystemExit(f"{flag} must be an integer >= 1, got {value}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    check_out(args)
    import jax

    import bench_peers

    allowed = BF16_VARIANTS if args.dtype == "bf16" else VARIANTS
    names = [v for v in args.variants.split(",") if v] or list(allowed)
    bad = [v for v in names if v not in allowed]
    if bad:
        raise SystemExit(f"--variants: unknown for {args.dtype}: {bad}; known: {list(allowed)}")
    spec = bench_peers.NETS[args.net]
    batch = bench_peers._jax_data(args.batch, spec)
    key = jax.random.PRNGKey(1)
    calls, hlo_rows = {}, []
    for name in names:
        step, params, state, opt_state = build(name, args)
        options = bench_peers.YNN_OFF if name.endswith("_ynn_off") else None
        if args.hlo or options is not None:
            compiled = step.lower(params, state, opt_state, batch, key).compile(options)
            step = compiled if options is not None else step
        if args.hlo:
            os.makedirs(args.hlo, exist_ok=True)
            text = compiled.as_text()
            with open(os.path.join(args.hlo, f"{args.net}_{args.dtype}_{name}.txt"), "w") as f:
                f.write(text)
            hlo_rows.append((name, census(text)))
        calls[name] = carrying(lambda c, b, k, s=step: s(*c, b, k)[:3], (params, state, opt_state), batch, key)
    timed = side_by_side(calls, repeats=3 * args.rounds, per_turn=3, calls=args.steps, warmup=2,
                         turn_warmup=max(1, args.steps // 6), verbose=True)
    base = statistics.median(timed[names[0]].repeats_s)
    rows = [f"| variant | median ms/step | p25 | p75 | min | vs {names[0]} | compile s |", "|" + "---|" * 7]
    for name, t in timed.items():
        ms = sorted(r * 1e3 for r in t.repeats_s)
        q = lambda f: ms[min(len(ms) - 1, int(f * len(ms)))]  # noqa: E731
        rows.append(f"| {name} | {statistics.median(ms):.3f} | {q(0.25):.3f} | {q(0.75):.3f} | {ms[0]:.3f} | "
                    f"{t.median_s / base:.2f}x | {t.compile_s:.2f} |")
    if hlo_rows:
        keys = list(hlo_rows[0][1])
        rows += ["", "| variant | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
        rows += [f"| {n} | " + " | ".join(str(c[k]) for k in keys) + " |" for n, c in hlo_rows]
    what = f"{args.net} b{args.batch} {args.dtype}, {args.rounds} interleaved rounds of 3 x {args.steps} steps"
    publish("user_step_ab.py", argv, what, rows, args.out)
    return timed


if __name__ == "__main__":
    main()
