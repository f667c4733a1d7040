"""Scaling benchmark: per-example gradient cost and data-parallel overhead against device count.

    python experiments/scaling.py [--quick] [--out docs/scaling.md] [--platform-tag cpu|gpu]
    PYTHONPATH=. python experiments/scaling.py --out $OUT/scaling_gpu.md       (on a GPU machine)
    python experiments/scaling.py --merge $OUT/scaling_gpu.md --out docs/scaling.md

A. Per-example gradients of LeNet-5 (28x28x1): the batch gradient ``jit(grad(mean loss))``, ``vmap``
   per-example gradients (``parallel.per_example_grads``), a compiled loop (``lax.map`` of the
   single-example gradient) and a Python loop of a jitted single-example gradient, per batch size.
B. Data-parallel train steps: plain ``jit`` on one device (``step.make_train_step``) against the
   ``pmap``, ``jit``-sharding and ``shard_map`` steps of ``fcnn.parallel`` over 1, 2, 4, 8 devices
   at a fixed global batch, images/s. On CPU the devices are virtual
   (``--xla_force_host_platform_device_count=8``, set in a subprocess before JAX starts) and share
   the same cores; on a GPU machine the real local devices are used (one H100: d = 1 only).
C. Communication per step, counted in the traced ``shard_map`` step (every ``psum``) and checked
   against the formula P + 6 * (BatchNorm channels) + 3 (the loss and the metric sums), per model.

Timing (experiments/_timing.py): first call = compile time (reported apart); warm-up; calls per
repeat calibrated to ``--target-s``; the variants of a question take turns repeat by repeat (round
robin, same process, same data); median of ``--repeats``. ``block_until_ready`` ends each repeat;
on CPU every call of part A is blocked (XLA:CPU may overlap independent calls), on a GPU the
stream orders them.

Writes ``--out`` (markdown: a shared introduction plus one ``<!-- scaling:TAG -->`` section per
platform; an existing file keeps its other platforms' sections) and ``--json`` (raw numbers,
default ``scaling_TAG.json`` next to ``--out``). ``--merge FILE`` copies FILE's section(s) into
``--out`` and ``--render JSON`` rebuilds a section from its raw numbers, without running anything.
The markdown (``render_section``, ``INTRO``) and the merge (``merge_into``) are in scaling_report.py.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from fcnn import models, parallel  # noqa: E402
from fcnn.step import make_train_step  # noqa: E402
from fcnn.summary import summary  # noqa: E402
from _timing import carrying, side_by_side  # noqa: E402  (experiments/, sys.path[0])
from scaling_report import INTRO, _SECTION, check_out, merge_into, render_section  # noqa: E402, F401  (INTRO: re-exported)

VIRTUAL_DEVICES = 8
COMM_MODELS = ("lenet5", "small_vgg", "small_resnet")
PMAP_AXIS = "batch"
F32_BYTES = 4
PSUM_PRIMITIVES = ("psum", "psum_invariant", "pmean")  # all-reduce-sum spellings across JAX versions
# Defaults per platform (part A batches, Python-loop cap, repeats and seconds per repeat, part B models
# and global batch); --quick replaces them with tiny sizes.
DEFAULTS = {
    "gpu": dict(batches="16,64,256", loop_max=256, repeats=7, target_s=0.2, dp_models="lenet5,small_resnet",
                global_batch=256),
    # a shared, loaded CPU: many short interleaved repeats so load swings hit every variant alike
    "cpu": dict(batches="16,64,256", loop_max=32, repeats=15, target_s=0.1, dp_models="lenet5", global_batch=64),
    "quick": dict(batches="8", loop_max=4, repeats=2, target_s=0.005, dp_models="lenet5", global_batch=16),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats, d = 2 (for the tests)")
    p.add_argument("--out", default="docs/scaling.md", help="markdown file (its TAG section is replaced)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that is not a scaling report")
    p.add_argument("--json", default=None, help="raw numbers (default: scaling_TAG.json next to --out)")
    p.add_argument("--platform-tag", choices=["cpu", "gpu"], default=None, help="default: JAX's backend")
    p.add_argument("--batches", default=None, help="part A batch sizes, comma-separated")
    p.add_argument("--loop-max", type=int, default=None, help="examples the Python loop runs (time scaled to n)")
    p.add_argument("--dp-models", default=None, help="part B models, comma-separated")
    p.add_argument("--global-batch", type=int, default=None, help="part B global batch")
    p.add_argument("--devices", default=None, help="part B device counts (default 1,2,4,8 up to those available)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default gpu 7, cpu 15)")
    p.add_argument("--target-s", type=float, default=None, help="seconds per repeat per variant")
    p.add_argument("--parts", default="ABC", help="which parts to run, e.g. AC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", default=None, help="only copy this file's platform sections into --out")
    p.add_argument("--render", default=None, help="only re-render a scaling_TAG.json into --out's TAG section")
    p.add_argument("--dp-worker", default=None, help=argparse.SUPPRESS)  # JSON args; part B in this process
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- timing
def time_side_by_side(variants: dict, repeats: int, target_s: float, block_each: bool, warmup: int = 2) -> dict:
    """Time zero-argument calls side by side (``_timing.side_by_side``, one repeat per turn):
    {name: {"compile_s", "ms", "repeats_ms", "calls"}}, "ms" the median per call."""
    t = side_by_side(variants, repeats=repeats, target_s=target_s, warmup=warmup, block_each=block_each)
    return {name: {"compile_s": r.compile_s, "ms": r.median_s * 1e3, "repeats_ms": [v * 1e3 for v in r.repeats_s],
                   "calls": r.calls} for name, r in t.items()}


# ----------------------------------------------------------------------------- part A
def _init(model, in_shape, seed):
    """(params, state) of ``model.init`` in one compiled call (eager init compiles every op apart)."""
    return jax.jit(lambda k: model.init(k, in_shape)[1:])(jax.random.PRNGKey(seed))


def per_example_cost(batches, loop_max: int, repeats: int, target_s: float, block_each: bool, seed: int):
    """Rows per batch size: ms of batch / vmap / lax.map / Python-loop gradients and their ratios."""
    model = models.lenet5()
    params, state = _init(model, (1, 28, 28, 1), seed)
    loss = parallel.model_loss(model)
    fwd_flops = summary(model, (1, 28, 28, 1)).flops  # per example, 2 per multiply-add
    batch_grad = jax.jit(jax.grad(loss))
    vmap_grad = jax.jit(functools.partial(parallel.per_example_grads, loss))
    one_grad = jax.jit(jax.grad(loss))  # its own cache: the loop's compile is its (1, 28, 28, 1) trace

    def one_example(p, s, xy):
        return jax.grad(loss)(p, s, xy[0][None], xy[1][None])

    map_grad = jax.jit(lambda p, s, x, y: jax.lax.map(functools.partial(one_example, p, s), (x, y)))
    noop, z = jax.jit(lambda a: a + 1), jnp.zeros((), jnp.float32)
    dispatch_ms = time_side_by_side({"noop": lambda: noop(z)}, repeats, target_s, block_each)["noop"]["ms"]
    rng = np.random.default_rng(seed)
    rows = []
    for n in batches:
        x = jnp.asarray(rng.standard_normal((n, 28, 28, 1)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
        m = min(n, loop_max)
        xs, ys = [x[i:i + 1] for i in range(m)], [y[i:i + 1] for i in range(m)]  # sliced before timing
        variants = {
            "batch": lambda: batch_grad(params, state, x, y),
            "vmap": lambda: vmap_grad(params, state, x, y),
            "lax.map": lambda: map_grad(params, state, x, y),
            "loop": lambda: [one_grad(params, state, a, b) for a, b in zip(xs, ys)],
        }
        t = time_side_by_side(variants, repeats, target_s, block_each)
        loop_ms = t["loop"]["ms"] * n / m
        # the vmap rows against the loop's own outputs (a report value; tests/test_parallel.py tests it)
        g_vmap, g_loop = vmap_grad(params, state, x, y), variants["loop"]()
        err = max(float(jnp.max(jnp.abs(a[:m] - jnp.stack(b)))) / max(float(jnp.max(jnp.abs(a[:m]))), 1e-30)
                  for a, b in zip(jax.tree.leaves(g_vmap), zip(*[jax.tree.leaves(g) for g in g_loop])))
        ms = {k: v["ms"] for k, v in t.items()}
        rows.append(dict(batch=n, loop_examples=m, batch_ms=ms["batch"], vmap_ms=ms["vmap"], map_ms=ms["lax.map"],
                         loop_ms=loop_ms, vmap_over_batch=ms["vmap"] / ms["batch"], loop_over_vmap=loop_ms / ms["vmap"],
                         map_over_vmap=ms["lax.map"] / ms["vmap"], batch_gflops=3 * fwd_flops * n / ms["batch"] / 1e6,
                         vmap_gflops=3 * fwd_flops * n / ms["vmap"] / 1e6, vmap_vs_loop_rel_err=err,
                         noop_call_ms=dispatch_ms,
                         **{key: {k: v[key] for k, v in t.items()} for key in ("compile_s", "repeats_ms", "calls")}))
        print(f"A n={n}: batch {rows[-1]['batch_ms']:.3f} ms, vmap {rows[-1]['vmap_ms']:.3f} ms "
              f"({rows[-1]['vmap_over_batch']:.1f}x), lax.map {rows[-1]['map_ms']:.3f} ms, loop {loop_ms:.3f} ms "
              f"({rows[-1]['loop_over_vmap']:.1f}x vmap)", flush=True)
    return rows


# ----------------------------------------------------------------------------- part B
def _build(name: str, bn_axis):
    """The model, with every BatchNorm's ``axis_name`` set where the constructor offers it."""
    fn = models.MODELS[name][0]
    if bn_axis is not None and "bn_axis_name" in inspect.signature(fn).parameters:
        return fn(bn_axis_name=bn_axis), True
    return fn(), False


def _stepper(step, carry, batch, key):
    """A zero-argument call of a train step that carries (params, state, opt_state) from call to call."""
    return carrying(lambda c: step(*c, batch, key)[:3], carry)


def dp_throughput(model_names, global_batch: int, device_counts, repeats: int, target_s: float, seed: int):
    """Rows per (model, variant, d): ms per step and images/s, all variants of a model side by side."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    opt = optax.sgd(0.01, momentum=0.9)
    key = jax.random.PRNGKey(seed + 1)
    rng = np.random.default_rng(seed)
    rows = []
    for name in model_names:
        in_shape = models.input_shape(name, global_batch)
        x = rng.standard_normal(in_shape).astype(np.float32)
        y = rng.integers(0, 10, global_batch).astype(np.int32)
        plain, _ = _build(name, None)
        params, state = _init(plain, models.input_shape(name), seed)
        opt_state = opt.init(params)
        dev0 = jax.devices()[0]
        variants = {("jit", 1): _stepper(make_train_step(plain, opt, donate=False),
                                         jax.device_put((params, state, opt_state), dev0),
                                         jax.device_put((x, y), dev0), key)}
        for d in device_counts:
            devs = jax.devices()[:d]
            pmodel, bn_p = _build(name, PMAP_AXIS)
            sharded_in = jax.pmap(lambda a: a, devices=devs)  # device-resident (d, n/d, ...) shards
            variants[("pmap", d)] = _stepper(
                parallel.make_pmap_train_step(pmodel, opt, axis_name=PMAP_AXIS, devices=devs),
                tuple(parallel.replicate(t, d) for t in (params, state, opt_state)),
                tuple(sharded_in(a) for a in parallel.shard_batch((x, y), d)), key)
            mesh = parallel.make_mesh(d, devs)
            rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(parallel.DATA_AXIS))
            variants[("sharding", d)] = _stepper(parallel.make_sharded_train_step(plain, opt, mesh),
                                                 jax.device_put((params, state, opt_state), rep),
                                                 jax.device_put((x, y), data), key)
            smodel, bn_s = _build(name, parallel.DATA_AXIS)
            variants[("shard_map", d)] = _stepper(parallel.make_shard_map_train_step(smodel, opt, mesh),
                                                  jax.device_put((params, state, opt_state), rep),
                                                  jax.device_put((x, y), data), key)
        t = time_side_by_side(variants, repeats, target_s, block_each=False)
        base = t[("jit", 1)]["ms"]
        for (variant, d), r in t.items():
            rows.append(dict(model=name, variant=variant, devices=d, global_batch=global_batch, ms=r["ms"],
                             images_per_s=global_batch / r["ms"] * 1e3, over_jit=r["ms"] / base,
                             compile_s=r["compile_s"], repeats_ms=r["repeats_ms"], calls=r["calls"]))
            print(f"B {name} {variant} d={d}: {r['ms']:.3f} ms/step, {rows[-1]['images_per_s']:.0f} img/s, "
                  f"{rows[-1]['over_jit']:.2f}x jit", flush=True)
    return rows


def _dp_in_subprocess(cfg: dict) -> list:
    """Part B in a fresh process with VIRTUAL_DEVICES CPU devices (the flag must precede JAX's start)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={VIRTUAL_DEVICES}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_ENABLE_X64", None)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "dp.json")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--dp-worker", json.dumps(cfg),
                               "--json", result], env=env, text=True, stdout=sys.stdout, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise RuntimeError(f"part B worker failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        with open(result) as f:
            return json.load(f)


# ----------------------------------------------------------------------------- part C
def _psums(jaxpr, found):
    """Append the element count of every operand of every ``psum`` in ``jaxpr`` and its sub-jaxprs."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in PSUM_PRIMITIVES:
            found.extend(int(v.aval.size) for v in eqn.invars)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "jaxpr") and hasattr(sub, "consts"):
                    _psums(sub.jaxpr, found)
                elif hasattr(sub, "eqns"):
                    _psums(sub, found)
    return found


def ring_bytes(elements: int, d: int, itemsize: int = F32_BYTES) -> float:
    """Bytes each device sends (and receives) in a ring all-reduce of ``elements``: 2 (d-1)/d x size."""
    return elements * itemsize * 2 * (d - 1) / d


def comm_volume(name: str, seed: int = 0) -> dict:
    """Counted all-reduce elements of one ``shard_map`` train step of ``name`` and the formula's."""
    model, bn_global = _build(name, parallel.DATA_AXIS)
    opt = optax.sgd(0.01, momentum=0.9)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    # shapes only: nothing is initialised or compiled
    params, state = jax.eval_shape(lambda k: model.init(k, models.input_shape(name))[1:], key)
    step = parallel.make_shard_map_train_step(model, opt, parallel.make_mesh(1))
    batch = (jax.ShapeDtypeStruct(models.input_shape(name, 2), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32))
    jaxpr = jax.make_jaxpr(step)(params, state, jax.eval_shape(opt.init, params), batch, key)
    found = _psums(jaxpr.jaxpr, [])
    n_params = sum(int(np.size(a)) for a in jax.tree.leaves(params))
    bn_channels = sum(int(np.size(a)) for path, a in jax.tree_util.tree_flatten_with_path(state)[0]
                      if getattr(path[-1], "key", None) == "mean")
    # per BatchNorm channel: batch mean + variance forward, their cotangents backward, running stats;
    # then the loss (mean) and classification's metric sums (correct, count), psum-ed by the step
    formula = n_params + (6 * bn_channels if bn_global else 0) + 3
    return dict(model=name, params=n_params, bn_channels=bn_channels, bn_global=bn_global, psum_ops=len(found),
                counted_elements=sum(found), formula_elements=formula, grad_bytes=n_params * F32_BYTES,
                ring_bytes={str(d): ring_bytes(sum(found), d) for d in (2, 4, 8)})


# ----------------------------------------------------------------------------- main
def _ints(text):
    return [int(v) for v in text.split(",") if v]


def main(argv=None):
    args = parse_args(argv)
    if args.dp_worker:  # part B inside the virtual-device subprocess
        cfg = json.loads(args.dp_worker)
        rows = dp_throughput(cfg["models"], cfg["global_batch"], cfg["devices"], cfg["repeats"], cfg["target_s"],
                             cfg["seed"])
        with open(args.json, "w") as f:
            json.dump(rows, f)
        return 0
    if not args.parts or set(args.parts) - set("ABC"):
        raise SystemExit(f"error: --parts must be letters from ABC (e.g. AC), got {args.parts!r}")
    check_out(args.out, args.overwrite)
    if args.render:
        with open(args.render) as f:
            raw = json.load(f)
        tag = raw["meta"]["tag"]
        merge_into(args.out, {tag: render_section(tag, raw["meta"], raw["per_example"], raw["data_parallel"],
                                                  raw["communication"])})
        print(f"rendered {args.render} into {args.out}")
        return 0
    if args.merge:
        with open(args.merge) as f:
            sections = {m.group(1): m.group(0) for m in _SECTION.finditer(f.read())}
        if not sections:
            raise SystemExit(f"error: {args.merge} has no <!-- scaling:TAG --> section")
        merge_into(args.out, sections)
        print(f"merged {', '.join(sections)} into {args.out}")
        return 0
    backend = jax.default_backend()
    actual = "cpu" if backend == "cpu" else "gpu"
    tag = args.platform_tag or actual
    if tag != actual:
        raise SystemExit(f"error: --platform-tag {tag} but JAX's backend is {backend!r}")
    d = DEFAULTS["quick" if args.quick else tag]
    batches = _ints(args.batches or d["batches"])
    loop_max = args.loop_max or d["loop_max"]
    repeats = args.repeats or d["repeats"]
    target_s = args.target_s or d["target_s"]
    dp_models = (args.dp_models or d["dp_models"]).split(",")
    global_batch = args.global_batch or d["global_batch"]
    virtual = tag == "cpu" and jax.device_count() < VIRTUAL_DEVICES
    available = VIRTUAL_DEVICES if virtual else jax.device_count()
    counts = _ints(args.devices) if args.devices else [c for c in ((2,) if args.quick else (1, 2, 4, 8))
                                                          if c <= available]
    if max(counts) > available or any(global_batch % c for c in counts):
        raise SystemExit(f"error: device counts {counts} must be <= {available} and divide --global-batch "
                         f"{global_batch}")
    device = jax.devices()[0]
    print(f"seed {args.seed}; device {device.device_kind} ({backend}, {jax.device_count()} device(s)); "
          f"jax {jax.__version__}", flush=True)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    a_rows = b_rows = c_rows = []
    if "A" in args.parts:
        a_rows = per_example_cost(batches, loop_max, repeats, target_s, tag == "cpu", args.seed)
    if "B" in args.parts:
        cfg = dict(models=dp_models, global_batch=global_batch, devices=counts, repeats=repeats, target_s=target_s,
                   seed=args.seed)
        b_rows = (_dp_in_subprocess(cfg) if virtual else
                  dp_throughput(dp_models, global_batch, counts, repeats, target_s, args.seed))
    if "C" in args.parts:
        c_rows = [comm_volume(name, args.seed) for name in COMM_MODELS]
        for r in c_rows:
            print(f"C {r['model']}: P={r['params']:,}, {r['psum_ops']} psums, {r['counted_elements']:,} elements "
                  f"(formula {r['formula_elements']:,})", flush=True)
    command = " ".join(["python experiments/scaling.py"] + (sys.argv[1:] if argv is None else list(argv)))
    meta = dict(command=command, date=str(datetime.date.today()), seed=args.seed, backend=backend,
                device=device.device_kind, device_count=jax.device_count(), cpu_count=os.cpu_count(),
                jax=jax.__version__, wall_s=time.perf_counter() - t0, load_avg=[load0, os.getloadavg()[0]],
                virtual_devices=VIRTUAL_DEVICES if virtual else None, tag=tag)
    merge_into(args.out, {tag: render_section(tag, meta, a_rows, b_rows, c_rows)})
    json_path = args.json or os.path.join(os.path.dirname(os.path.abspath(args.out)), f"scaling_{tag}.json")
    with open(json_path, "w") as f:
        json.dump(dict(meta=meta, per_example=a_rows, data_parallel=b_rows, communication=c_rows), f, indent=1)
    print(f"wrote {args.out} and {json_path} in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
