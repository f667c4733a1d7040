"""The bf16 vs f32 arithmetic ceiling of XLA:CPU (and PyTorch where installed) on this machine.

    python experiments/bf16_ceiling.py                       # every variant, 2 passes
    python experiments/bf16_ceiling.py --variants default,ynn_conv --passes 3 --out /tmp/ceil.md

Each XLA variant is an ``XLA_FLAGS`` setting, so each runs in a fresh process (flags are read
when the backend starts); the variants take turns ``--passes`` times (A B C A B C ...) so a
shared machine's drifts hit all alike. In each process, for each case, the median and the best
of ``--repeats`` repeats of ``--calls`` calls (``_timing.measure``) in GFLOP/s:

- ``dot``: (N, N) @ (N, N), N = ``--n`` (2048): f32; bf16 operands and bf16 result; bf16
  operands with ``preferred_element_type=float32``; bf16 storage upcast to f32 in the program,
  then an f32 dot (the "bf16 storage, f32 compute" path);
- ``conv``: a 3x3 SAME conv, 16x32x32x64 -> 128 (the VGG-style net's second layer at batch 16),
  forward, and forward + VJP (dx, dw), in the same four dtype forms.

The cases are checked against the f32 result (max relative error printed) so a fast wrong path
cannot hide. ``torch``: the same cases in PyTorch (f32, bf16), when installed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import measure  # noqa: E402
from step_ab import add_out, check_out, publish  # noqa: E402

YNN = "--xla_cpu_experimental_ynn_fusion_type"
VARIANTS = {  # name -> XLA_FLAGS (None: PyTorch)
    "default": "",
    "ynn_conv": f"{YNN}=+individual_convolution",
    "ynn_off": f"{YNN}=",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "torch": None,
}
FORMS = ("f32", "bf16", "bf16_f32acc", "bf16_upcast")
CONV_X, CONV_W = (16, 32, 32, 64), (3, 3, 64, 128)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ",".join(VARIANTS))
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--cases", default="", help="only cases whose name starts with one of these (comma-separated), "
                   "e.g. 'dot,conv fwd '")
    add_out(p)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _conv_flops(fwd_bwd):
    n, h, w, c = CONV_X
    macs = n * h * w * c * CONV_W[0] * CONV_W[1] * CONV_W[3]
    return 2 * macs * (3 if fwd_bwd else 1)


def jax_cases(n):
    """{case: (zero-argument call, flops, f32 reference call)} for XLA."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    k = jax.random.split(jax.random.PRNGKey(0), 4)
    a, b = jax.random.normal(k[0], (n, n)), jax.random.normal(k[1], (n, n))
    x, w = jax.random.normal(k[2], CONV_X), jax.random.normal(k[3], CONV_W) * 0.05
    hb = lambda t: t.astype(jnp.bfloat16)  # noqa: E731
    dots = {
        "f32": (jax.jit(lambda a, b: a @ b), a, b),
        "bf16": (jax.jit(lambda a, b: a @ b), hb(a), hb(b)),
        "bf16_f32acc": (jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)), hb(a), hb(b)),
        "bf16_upcast": (jax.jit(lambda a, b: a.astype(jnp.float32) @ b.astype(jnp.float32)), hb(a), hb(b)),
    }

    def conv(x, w, acc=None):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        preferred_element_type=acc)

    up = lambda f: lambda x, w: f(x.astype(jnp.float32), w.astype(jnp.float32))  # noqa: E731
    conv_fns = {"f32": conv, "bf16": conv, "bf16_f32acc": lambda x, w: conv(x, w, jnp.float32),
                "bf16_upcast": up(conv)}
    cases = {}
    for form, (f, aa, bb) in dots.items():
        cases[f"dot {form}"] = (lambda f=f, aa=aa, bb=bb: f(aa, bb), 2 * n ** 3, (f, aa, bb))
    for form, fn in conv_fns.items():
        xx, ww = (x, w) if form == "f32" else (hb(x), hb(w))
        fwd = jax.jit(fn)
        both = jax.jit(lambda x, w, fn=fn: (lambda y, pull: (y, pull(y)))(*jax.vjp(fn, x, w)))
        cases[f"conv fwd {form}"] = (lambda f=fwd, xx=xx, ww=ww: f(xx, ww), _conv_flops(False), (fwd, xx, ww))
        cases[f"conv fwd+bwd {form}"] = (lambda f=both, xx=xx, ww=ww: f(xx, ww), _conv_flops(True), (both, xx, ww))
    return cases


def torch_cases(n):
    import torch

    torch.manual_seed(0)
    a, b = torch.randn(n, n), torch.randn(n, n)
    x = torch.randn(CONV_X[0], CONV_X[3], CONV_X[1], CONV_X[2]).to(memory_format=torch.channels_last)
    w = (torch.randn(CONV_W[3], CONV_W[2], CONV_W[0], CONV_W[1]) * 0.05).to(memory_format=torch.channels_last)
    conv = torch.nn.functional.conv2d
    cases = {}
    for form, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        aa, bb, xx, ww = a.to(dt), b.to(dt), x.to(dt), w.to(dt)
        cases[f"dot {form}"] = (lambda aa=aa, bb=bb: aa @ bb, 2 * n ** 3, None)
        cases[f"conv fwd {form}"] = (lambda xx=xx, ww=ww: conv(xx, ww, padding=1), _conv_flops(False), None)

        def both(xx=xx, ww=ww):
            xg, wg = xx.detach().requires_grad_(), ww.detach().requires_grad_()
            y = conv(xg, wg, padding=1)
            y.backward(y.detach())
            return xg.grad

        cases[f"conv fwd+bwd {form}"] = (both, _conv_flops(True), None)
    return cases


def _rel_err(ref, got):
    """Largest max-abs error of any output, relative to that output's max magnitude."""
    import jax
    import numpy as np

    pairs = zip(jax.tree.leaves(ref), jax.tree.leaves(got))
    return max(float(np.max(np.abs(np.float32(r) - np.float32(g))) / np.max(np.abs(np.float32(r)))) for r, g in pairs)


def run_worker(args):
    import jax

    is_torch = args.worker == "torch"
    cases = torch_cases(args.n) if is_torch else jax_cases(args.n)
    block = (lambda out: out) if is_torch else jax.block_until_ready
    refs, out = {}, {}
    prefixes = tuple(c for c in args.cases.split(",") if c) or ("",)
    for name, (call, flops, ref) in cases.items():
        if not name.startswith(prefixes):
            continue
        t = measure(call, repeats=args.repeats, calls=args.calls, warmup=1, block=block)
        row = {"median_gflops": flops / t.median_s / 1e9, "best_gflops": flops / t.best_s / 1e9}
        if ref is not None:
            f, aa, bb = ref
            got = f(aa, bb)
            if name.endswith("f32"):
                refs[name.rsplit(" ", 1)[0]] = got
            elif name.rsplit(" ", 1)[0] in refs:
                row["rel_err"] = _rel_err(refs[name.rsplit(" ", 1)[0]], got)
        out[name] = row
    print(json.dumps(out))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        return run_worker(args)
    names = [v for v in args.variants.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise SystemExit(f"--variants: unknown {bad}; known: {list(VARIANTS)}")
    for flag, value in (("--n", args.n), ("--passes", args.passes), ("--repeats", args.repeats),
                        ("--calls", args.calls)):
        if value < 1:
            raise SystemExit(f"{flag} must be an integer >= 1, got {value}")
    check_out(args)
    got = {v: [] for v in names}
    for _ in range(args.passes):
        for v in names:
            env = dict(os.environ, JAX_PLATFORMS="cpu")
            if VARIANTS[v] is not None:
                env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + VARIANTS[v]).strip()
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", v, "--n", str(args.n),
                                   "--repeats", str(args.repeats), "--calls", str(args.calls), "--cases", args.cases],
                                  env=env, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                got[v].append({"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]})
                continue
            got[v].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(v, json.dumps(got[v][-1]), flush=True)  # a killed run keeps what it measured
    rows = ["| variant | XLA_FLAGS | case | median GFLOP/s | best GFLOP/s | max rel. error vs f32 |", "|" + "---|" * 6]
    for v in names:
        runs = [r for r in got[v] if "error" not in r]
        if not runs:
            rows.append(f"| {v} | `{VARIANTS[v]}` | failed: {got[v][0]['error']} | | | |")
            continue
        for case in runs[0]:
            med = statistics.median(r[case]["median_gflops"] for r in runs)
            best = max(r[case]["best_gflops"] for r in runs)
            err = runs[0][case].get("rel_err")
            flags = "(PyTorch)" if VARIANTS[v] is None else f"`{VARIANTS[v]}`" if VARIANTS[v] else "(none)"
            rows.append(f"| {v} | {flags} | {case} | {med:.1f} | {best:.1f} | "
                        f"{'—' if err is None else format(err, '.1e')} |")
    what = (f"{args.passes} passes, "
            f"dot N={args.n}, conv {CONV_X} * {CONV_W} SAME")
    publish("bf16_ceiling.py", argv, what, rows, args.out)
    return got


if __name__ == "__main__":
    main()
