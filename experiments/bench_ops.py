"""Op-level timings that back ``fcnn.ops.auto``: every conv and max-pool implementation.

    python experiments/bench_ops.py --device cpu --out runs/ops --docs docs/benchmarks.md
    python experiments/bench_ops.py --device gpu --out $OUT/ops

Three questions, one table each:

1. conv: forward, and backward = the VJP (dx, dw) for a fixed output gradient g (the gradient
   of the linear <conv(x, w), g>, which needs no forward: XLA drops it), of every ``ops.conv2d``
   impl on LeNet-sized and VGG-sized layers (batch by device); fwd+bwd = their sum;
2. max-pool 2x2/2: forward and forward+backward of every ``ops.max_pool2d`` impl, plus
   a prototype backward (``proto``) that keeps the (n, oh, kh, ow, kw, c) view with no
   transpose; backward = (fwd+bwd) - fwd;
3. train step: ``make_train_step`` by implementation: on GPU the VGG net b512 with conv and pool
   through ``lax`` and ``custom_vjp`` (the custom-VJP conv must cost <= 1.05x lax), and "auto";
   on CPU LeNet b64 with every conv impl (the choice behind ``impl="auto"`` on CPU).

Each time is the median of ``--repeats`` repeats of N calls sized to ``--target-s`` seconds,
after a compile call and a warm-up, with a block on the device after each repeat. An impl
that fails (memory, unsupported shape) gets its error in the table instead of a time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from _timing import measure  # noqa: E402
from step_ab import check_out_dir  # noqa: E402

# (name, x shape NHWC without batch, kernel, cout, padding)
CONV_LAYERS = [
    ("lenet c1", (28, 28, 1), 5, 6, "SAME"),
    ("lenet c2", (14, 14, 6), 5, 16, "VALID"),
    ("vgg c1", (32, 32, 3), 3, 64, "SAME"),
    ("vgg c2", (32, 32, 64), 3, 128, "SAME"),
    ("vgg c3", (16, 16, 128), 3, 256, "SAME"),
    ("vgg c4", (8, 8, 256), 3, 512, "SAME"),
]
POOL_SHAPES = [("lenet p1", (28, 28, 6)), ("lenet p2", (10, 10, 16)), ("vgg p1", (32, 32, 128)),
               ("vgg p2", (16, 16, 256)), ("vgg p3", (8, 8, 512))]  # vgg p1 at b512: the anchor shape
QUICK_LAYERS = "lenet c2,lenet p1"  # --quick: one conv layer and one pool shape (every impl still runs)
PARTS = ("conv", "pool", "step")
DTYPES = ("f32", "bf16")
OUT_FILES = ("ops.json", "ops.md")  # what a run writes into --out
BATCH = {"cpu": {"lenet": 64, "vgg": 16}, "gpu": {"lenet": 128, "vgg": 512}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--parts", default="conv,pool,step", help="which of conv,pool,step to run")
    p.add_argument("--dtypes", default=None, help="default: f32 on CPU, f32,bf16 on GPU")
    p.add_argument("--impls", default=None, help="conv impls (default: all of ops.CONV_IMPLS)")
    p.add_argument("--layers", default=None, help="comma-separated conv layers / pool shapes by name (default: all)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--target-s", type=float, default=None)
    p.add_argument("--quick", action="store_true", help="tiny shapes and counts (for tests)")
    p.add_argument("--out", default="runs/bench_ops", help="folder for ops.json and ops.md")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's ops.json and ops.md in --out")
    p.add_argument("--docs", default=None)
    return p.parse_args(argv)


def timeit(fn, *args, repeats=5, target_s=0.2):
    """(compile s, median s per call) of a jitted fn on fixed args (``_timing.measure``)."""
    t = measure(lambda: fn(*args), repeats=repeats, target_s=target_s)
    return t.compile_s, t.median_s


def _dt(name):
    import jax.numpy as jnp

    if name not in DTYPES:  # never time float32 under another name
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    return jnp.bfloat16 if name == "bf16" else jnp.float32


def _err(e):
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"


# ----------------------------------------------------------------------------- conv
def bench_conv(args, dtypes, batch):
    import jax
    import jax.numpy as jnp

    from fcnn import ops

    impls = args.impls.split(",") if args.impls else list(ops.CONV_IMPLS)
    rows = []
    for name, xs, f, cout, pad in CONV_LAYERS:
        if args.layers and name not in args.layers.split(","):
            continue
        n = batch[name.split()[0]]
        for dname in dtypes:
            dt = _dt(dname)
            k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
            x = jax.random.normal(k1, (n,) + xs, dt)
            w = (jax.random.normal(k2, (f, f, xs[2], cout)) / (f * f * xs[2]) ** 0.5).astype(dt)
            for impl in impls:
                row = dict(layer=name, x=[n, *xs], w=[f, f, xs[2], cout], padding=pad, dtype=dname, impl=impl)
                fwd = jax.jit(lambda x, w, impl=impl: ops.conv2d(x, w, padding=pad, impl=impl))
                try:
                    g = jax.random.normal(k3, fwd(x, w).shape, dt)
                    both = jax.jit(jax.grad(lambda x, w, g, impl=impl: jnp.vdot(
                        ops.conv2d(x, w, padding=pad, impl=impl).astype(jnp.float32), g.astype(jnp.float32)),
                        argnums=(0, 1)))
                    row["compile_s"], row["fwd_ms"] = timeit(fwd, x, w, repeats=args.repeats, target_s=args.target_s)
                    _, row["bwd_ms"] = timeit(both, x, w, g, repeats=args.repeats, target_s=args.target_s)
                    row["fwd_ms"] *= 1e3
                    row["bwd_ms"] *= 1e3
                    row["fwdbwd_ms"] = row["fwd_ms"] + row["bwd_ms"]
                except Exception as e:  # noqa: BLE001 - recorded in the table
                    row["error"] = _err(e)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


# ----------------------------------------------------------------------------- pool
def proto_max_pool(x):
    """Prototype 2x2/2 max pool whose VJP keeps the (n, oh, 2, ow, 2, c) view (no transpose)."""
    import jax
    from jax import lax
    import jax.numpy as jnp
    import numpy as np

    @jax.custom_vjp
    def pool(x):
        return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def fwd(x):
        y = pool(x)
        return y, (x, y)

    def bwd(res, g):
        x, y = res
        n, h, w, c = x.shape
        oh, ow = y.shape[1:3]
        x6 = x[:, : 2 * oh, : 2 * ow].reshape(n, oh, 2, ow, 2, c)  # free reshape
        m = x6 == y[:, :, None, :, None, :]  # (n, oh, 2, ow, 2, c)
        m00, m01, m10 = m[:, :, 0, :, 0], m[:, :, 0, :, 1], m[:, :, 1, :, 0]
        taken = jnp.stack([jnp.stack([jnp.zeros_like(m00), m00], -2),
                           jnp.stack([m00 | m01, m00 | m01 | m10], -2)], 2)  # earlier taps in row-major order
        dx6 = jnp.where(m & ~taken, g[:, :, None, :, None, :], jnp.zeros((), x.dtype))
        dx = dx6.reshape(n, 2 * oh, 2 * ow, c)
        return (jnp.pad(dx, ((0, 0), (0, h - 2 * oh), (0, w - 2 * ow), (0, 0))),)

    pool.defvjp(fwd, bwd)
    return pool(x)


def bench_pool(args, dtypes, batch, device):
    import jax
    import jax.numpy as jnp

    from fcnn import ops

    impls = list(ops.POOL_IMPLS) + ["proto"]
    rows = []
    for name, xs in POOL_SHAPES:
        if args.layers and name not in args.layers.split(","):
            continue
        n = batch[name.split()[0]]
        for dname in dtypes:
            x = jax.random.normal(jax.random.PRNGKey(0), (n,) + xs, _dt(dname))
            for impl in impls:
                def pool(x, impl=impl):
                    if impl == "proto":
                        return proto_max_pool(x)
                    return ops.max_pool2d(x, 2, impl=impl, ties="split" if impl == "reference" else "first")

                row = dict(shape=name, x=[n, *xs], dtype=dname, impl=impl)
                try:
                    g = jax.random.normal(jax.random.PRNGKey(1), jax.eval_shape(pool, x).shape, x.dtype)
                    both = jax.jit(jax.grad(lambda x, g: jnp.vdot(pool(x).astype(jnp.float32), g.astype(jnp.float32))))
                    _, row["fwd_ms"] = timeit(jax.jit(pool), x, repeats=args.repeats, target_s=args.target_s)
                    _, row["fwdbwd_ms"] = timeit(both, x, g, repeats=args.repeats, target_s=args.target_s)
                    row["fwd_ms"] *= 1e3
                    row["fwdbwd_ms"] *= 1e3
                    row["bwd_ms"] = row["fwdbwd_ms"] - row["fwd_ms"]
                except Exception as e:  # noqa: BLE001
                    row["error"] = _err(e)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


# ----------------------------------------------------------------------------- train step
def bench_step(args, dtypes, device, variants):
    import bench_peers
    import jax

    from fcnn.optim import make_optimizer
    from fcnn.step import make_train_step

    rows = []
    net, n = ("vgg", 512) if device == "gpu" else ("lenet", 64)
    n = 2 if args.quick else n
    spec = bench_peers.NETS[net]
    for dname in dtypes:
        for impl, pool_impl in variants:
            row = dict(net=net, batch=n, dtype=dname, impl=impl, pool_impl=pool_impl)
            try:
                model = bench_peers.fcnn_model(net, impl=impl, pool_impl=pool_impl)
                _, params, state = model.init(jax.random.PRNGKey(0), (n, spec["hw"], spec["hw"], spec["cin"]))
                opt = make_optimizer("momentum", bench_peers.LR, momentum=bench_peers.MOMENTUM)
                step = make_train_step(model, opt, dtype_policy=dname, donate=False)
                batch = bench_peers._jax_data(n, spec)
                key = jax.random.PRNGKey(1)
                row["compile_s"], sec = timeit(step, params, state, opt.init(params), batch, key,
                                               repeats=args.repeats, target_s=args.target_s)
                row["ms_per_step"] = sec * 1e3
            except Exception as e:  # noqa: BLE001
                row["error"] = _err(e)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# ----------------------------------------------------------------------------- tables
def _f(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


def tables(res):
    out = []
    if res.get("conv"):
        out += ["**Conv, per implementation** (ms; bwd = VJP to x and w for a given output gradient; "
                "fwd+bwd = the sum; ratio to lax)", "",
                "| layer | x | w | dtype | impl | fwd ms | bwd ms | fwd+bwd ms | fwd+bwd vs lax |", "|" + "---|" * 9]
        lax = {(r["layer"], r["dtype"]): r.get("fwdbwd_ms") for r in res["conv"] if r["impl"] == "lax"}
        for r in res["conv"]:
            base = lax.get((r["layer"], r["dtype"]))
            ratio = f"{r['fwdbwd_ms'] / base:.2f}x" if base and "fwdbwd_ms" in r else "—"
            tail = (f"{_f(r.get('fwd_ms'))} | {_f(r.get('bwd_ms'))} | {_f(r.get('fwdbwd_ms'))} | {ratio}"
                    if "error" not in r else f"{r['error']} | | | ")
            out.append(f"| {r['layer']} | {'x'.join(map(str, r['x']))} | {'x'.join(map(str, r['w']))} | "
                       f"{r['dtype']} | {r['impl']} | {tail} |")
        out.append("")
    if res.get("pool"):
        out += ["**Max-pool 2x2/2, per implementation** (ms; bwd = fwd+bwd - fwd; speed-up = lax bwd / this bwd)", "",
                "| shape | x | dtype | impl | fwd ms | fwd+bwd ms | bwd ms | bwd speed-up vs lax |", "|" + "---|" * 8]
        lax = {(r["shape"], r["dtype"]): r.get("bwd_ms") for r in res["pool"] if r["impl"] == "lax"}
        for r in res["pool"]:
            base = lax.get((r["shape"], r["dtype"]))
            sp = f"{base / r['bwd_ms']:.2f}x" if base and r.get("bwd_ms", 0) > 0 else "—"
            tail = (f"{_f(r.get('fwd_ms'))} | {_f(r.get('fwdbwd_ms'))} | {_f(r.get('bwd_ms'))} | {sp}"
                    if "error" not in r else f"{r['error']} | | |")
            out.append(f"| {r['shape']} | {'x'.join(map(str, r['x']))} | {r['dtype']} | {r['impl']} | {tail} |")
        out.append("")
    if res.get("step"):
        out += ["**Train step by implementation** (make_train_step; ratio to conv lax + pool lax)", "",
                "| net | batch | dtype | conv impl | pool impl | ms/step | vs lax/lax | compile s |", "|" + "---|" * 8]
        base = {r["dtype"]: r.get("ms_per_step") for r in res["step"] if (r["impl"], r["pool_impl"]) == ("lax", "lax")}
        for r in res["step"]:
            b = base.get(r["dtype"])
            ratio = f"{r['ms_per_step'] / b:.3f}x" if b and "ms_per_step" in r else "—"
            tail = (f"{_f(r.get('ms_per_step'))} | {ratio} | {_f(r.get('compile_s'), '.1f')}" if "error" not in r
                    else f"{r['error']} | | ")
            out.append(f"| {r['net']} | {r['batch']} | {r['dtype']} | {r['impl']} | {r['pool_impl']} | {tail} |")
        out.append("")
    return "\n".join(out)


def check_args(args, dtypes) -> None:
    """Refuse unknown parts, dtypes, impls and layers, bad counts, and an --out that holds an earlier
    run, before anything is timed (SystemExit naming the flag)."""
    from fcnn import ops

    layers = [c[0] for c in CONV_LAYERS] + [p[0] for p in POOL_SHAPES]
    for flag, given, known in (("--parts", args.parts.split(","), PARTS), ("--dtypes", dtypes, DTYPES),
                               ("--impls", args.impls.split(",") if args.impls else [], ops.CONV_IMPLS),
                               ("--layers", args.layers.split(",") if args.layers else [], layers)):
        bad = [v for v in given if v not in known]
        if bad:
            raise SystemExit(f"{flag}: unknown {bad}; known: {', '.join(known)}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be an integer >= 1, got {args.repeats}")
    if not args.target_s > 0:
        raise SystemExit(f"--target-s must be > 0 seconds, got {args.target_s}")
    check_out_dir(args, OUT_FILES)


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if args.target_s is None:
        args.target_s = 0.2 if args.device == "gpu" else 0.5
    dtypes = (args.dtypes or ("f32" if args.device == "cpu" else "f32,bf16")).split(",")
    batch = BATCH[args.device]
    if args.quick:
        batch = {"lenet": 2, "vgg": 1}
        args.repeats, args.target_s = 2, 0.01
        args.layers = args.layers or QUICK_LAYERS
    check_args(args, dtypes)
    parts = args.parts.split(",")
    print(f"device={args.device} backend={jax.default_backend()} jax={jax.__version__} seed=0", flush=True)
    res = {}
    if "conv" in parts:
        res["conv"] = bench_conv(args, dtypes, batch)
    if "pool" in parts:
        res["pool"] = bench_pool(args, dtypes, batch, args.device)
    if "step" in parts:
        from fcnn import ops

        variants = [(i, "lax") for i in ("lax", "custom_vjp")] + [("lax", "custom_vjp")]
        if not args.quick:  # --quick: the three custom-VJP checks only
            variants.append(("auto", "auto"))
        if args.device == "cpu" and not args.quick:  # LeNet: every conv impl with the faster pool
            variants += [(i, "custom_vjp") for i in ops.CONV_IMPLS if i != "lax"]
        res["step"] = bench_step(args, dtypes, args.device, variants)
    date = datetime.date.today().isoformat()
    cmd = "python experiments/bench_ops.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"{args.device.upper()} run of {date} (`{cmd}`) on {jax.devices()[0].device_kind}, jax {jax.__version__}; "
            f"median of {args.repeats} repeats of {args.target_s} s.\n\n" + tables(res))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ops.json"), "w") as f:
        json.dump(dict(res, device=args.device, date=date, command=cmd), f, indent=1)
    with open(os.path.join(args.out, "ops.md"), "w") as f:
        f.write(text)
    if args.docs:
        from benchmark import splice_docs

        splice_docs(args.docs, f"ops-{args.device}", text)
    print(text)
    return res


if __name__ == "__main__":
    main()
