"""Train-step speed of fcnn against its peers, side by side in one run.

    python experiments/benchmark.py --device gpu --out runs/bench --docs docs/benchmarks.md
    python experiments/benchmark.py --device cpu --quick --only fcnn,stax --out /tmp/b

Networks, optimizer and loss as the shared PERFORMANCE.md defines them (experiments/
bench_peers.py builds them). For each framework, net and batch a fresh subprocess times
bf16 then f32 (experiments/_timing.py): the first step (trace + compile + run) is the compile
time; then warm-up; then ``--repeats`` repeats of N steps (N sized to ``--target-s`` seconds),
each ended by a block on the device; the per-step time is the median repeat over N. Reported:
ms/step, images/s, effective TFLOP/s (3 x forward MACs x 2 FLOPs per image), the fraction of a
bf16 matmul peak measured in the same run (GPU), and the peak device memory (GPU; JAX
``memory_stats()['peak_bytes_in_use']``, which includes XLA's conv-autotuning scratch; torch
``max_memory_allocated``). In the fresh process the f32 peak is max(bf16, f32).

A framework that is not installed gives a "skipped" row with the reason.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_peers  # noqa: E402
from _timing import carrying, cpu_description, measure  # noqa: E402
from step_ab import check_out_dir  # noqa: E402

FRAMEWORKS = list(bench_peers.BUILDERS)
DTYPES = ("bf16", "f32")  # bench_peers' dtype policies
OUT_FILES = ("results.json", "table.md", "results.partial.json")  # what a run writes into --out
# (net, batch) per device; --quick shrinks everything.
CONFIGS = {"gpu": [("lenet", 128), ("lenet", 1024), ("vgg", 512)],
           "cpu": [("lenet", 64), ("vgg", 16), ("resnet18", 16)]}
QUICK_CONFIGS = [("lenet", 8), ("vgg", 2)]
K_STEPS = {"lenet": 32, "vgg": 4, "resnet18": 2}  # fcnn_k steps per dispatch (GPU); CPU uses 8 / 2 / 2
K_STEPS_CPU = {"lenet": 8, "vgg": 2, "resnet18": 2}
K_STEPS_QUICK = {"lenet": 2, "vgg": 2, "resnet18": 2}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--only", default="", help="comma-separated frameworks (default: all): " + ",".join(FRAMEWORKS))
    p.add_argument("--nets", default="", help="comma-separated net:batch pairs, e.g. lenet:64,vgg:8")
    p.add_argument("--dtypes", default="bf16,f32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--target-s", type=float, default=None, help="seconds per repeat (default 0.3 GPU, 1.0 CPU)")
    p.add_argument("--quick", action="store_true", help="tiny batches, 2 repeats of a few steps (for tests)")
    p.add_argument("--out", default="runs/benchmark", help="directory for results.json and table.md")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--docs", default=None, help="markdown file whose <!-- benchmark:DEVICE --> section to replace")
    p.add_argument("--timeout", type=float, default=600, help="seconds per worker process")
    p.add_argument("--render", default=None, help="only re-render a results(.partial).json into markdown")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--net", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--matmul", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- timing (worker side)
def time_bench(bench, repeats: int, target_s: float, warmup: int = 3):
    """(compile seconds, median seconds per training step, all per-step repeats) (``_timing.measure``)."""
    t = measure(carrying(bench.step, bench.carry, bench.batch), repeats=repeats, target_s=target_s, warmup=warmup,
                block=bench.block)
    per_step = [r / bench.k for r in t.repeats_s]
    return t.compile_s, statistics.median(per_step), per_step


def _peak_bytes(fw, device):
    if device != "gpu":
        return None
    if fw.startswith("torch"):
        import torch

        return int(torch.cuda.max_memory_allocated())
    import jax

    return int(jax.devices()[0].memory_stats().get("peak_bytes_in_use", 0)) or None


def run_worker(args):
    fw, net, n, device = args.worker, args.net, args.batch, args.device
    rows = []
    for dtype in args.dtypes.split(","):
        row = dict(framework=fw, net=net, batch=n, dtype=dtype, k=args.k)
        try:
            if fw.startswith("torch") and device == "gpu":
                import torch

                torch.cuda.reset_peak_memory_stats()
            if not bench_peers.supports(fw, net):
                raise NotImplementedError(f"{net} is written for {', '.join(bench_peers.RESNET_FRAMEWORKS)} only")
            t0 = time.perf_counter()  # the build: model init, optimizer state, data on the device
            bench = bench_peers.BUILDERS[fw](net, n, dtype, device, args.k)
            build_s = time.perf_counter() - t0
            compile_s, sec, reps = time_bench(bench, args.repeats, args.target_s)
            row.update(build_s=build_s, compile_s=compile_s, ms_per_step=sec * 1e3, repeats_ms=[r * 1e3 for r in reps],
                       peak_bytes=_peak_bytes(fw, device))
            del bench
        except ImportError as e:
            row.update(skipped=f"not installed: {e}")
        except NotImplementedError as e:
            row.update(skipped=f"not written: {e}")
        except Exception as e:  # a peer failing must not stop the table
            row.update(skipped=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(args.result, "w") as f:
        json.dump(rows, f)


# ----------------------------------------------------------------------------- driver
def _env(device):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE)] + [p for p in [env.get("PYTHONPATH")] if p])
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    # GPU: JAX's default preallocation stays on. peak_bytes_in_use counts the allocator's bytes in
    # use either way; turning preallocation off (first GPU run) made every JAX step slower and noisier.
    env.pop("JAX_ENABLE_X64", None)
    return env


def _spawn(cmd_args, device, timeout, result, extra_env=None):
    """Run a worker (this script with ``cmd_args``) in a fresh process, with ``_env(device)`` updated
    by ``extra_env``; returns ``(its result JSON, None)`` or ``(None, why not)``."""
    cmd = [sys.executable, os.path.abspath(__file__)] + cmd_args + ["--result", result]
    try:
        proc = subprocess.run(cmd, env={**_env(device), **(extra_env or {})}, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if proc.returncode != 0 or not os.path.exists(result):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return None, f"worker exit {proc.returncode}: {tail[0][:200]}"
    with open(result) as f:
        return json.load(f), None


def matmul_peak(n):
    """bf16 (n, n) @ (n, n) in TFLOP/s: median of 5 repeats of 20 calls (``--matmul N``, a fresh process)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b)
    t = measure(lambda: f(a, b), repeats=5, calls=20, warmup=0)
    return {"n": n, "tflops": 2 * n ** 3 / t.median_s / 1e12, "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind)}


def measure_matmul_peak(device, n):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--matmul", str(n)], env=_env(device),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def derive(row, peak_tflops):
    if "ms_per_step" not in row:
        return row
    s = row["ms_per_step"] / 1e3
    flops = 6 * bench_peers.forward_macs(row["net"]) * row["batch"]
    row["images_per_s"] = row["batch"] / s
    row["tflops"] = flops / s / 1e12
    row["frac_peak"] = row["tflops"] / peak_tflops if peak_tflops else None
    return row


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def table(rows, device, peak):
    head = "| framework | net | batch | dtype | ms/step | images/s | TFLOP/s | % bf16 peak | compile s | peak MiB |"
    lines = [head, "|" + "---|" * 10]
    skipped = []
    for r in rows:
        label = _label(r)
        if "skipped" in r:
            skipped.append(f"- {label} {r['net']} b{r['batch']} {r['dtype']}: skipped, {r['skipped']}")
            continue
        frac = None if r.get("frac_peak") is None else 100 * r["frac_peak"]
        mib = None if r.get("peak_bytes") is None else r["peak_bytes"] / 2**20
        lines.append(f"| {label} | {r['net']} | {r['batch']} | {r['dtype']} | {r['ms_per_step']:.3f} | "
                     f"{r['images_per_s']:,.0f} | {r['tflops']:.2f} | {_fmt(frac, '.1f')} | {r['compile_s']:.2f} | "
                     f"{_fmt(mib, '.0f')} |")
    lines += [""] + summary(rows) + [""] + skipped
    return "\n".join(lines).rstrip() + "\n"


def _timed_by_config(rows):
    """``{(net, batch, dtype): {framework: row}}`` over the rows that timed a step, keys sorted."""
    out = {}
    for r in rows:
        if "ms_per_step" in r:
            out.setdefault((r["net"], r["batch"], r["dtype"]), {})[r["framework"]] = r
    return dict(sorted(out.items()))


def _label(r):
    """A row's framework as the tables name it (the k of the multi-step variants added)."""
    return bench_peers.LABELS[r["framework"]] + (f" k={r['k']}" if r["framework"] in ("fcnn_k", "fcnn_unroll") else "")


def summary(rows):
    """Per (net, batch, dtype): fcnn's fastest variant (fcnn, fcnn_k or fcnn_unroll; its ms and name,
    the ms the speed-up is computed from) against the fastest peer, and compile time against linen's."""
    out = ["| net | batch | dtype | fcnn ms (1 step) | fcnn's fastest ms (variant) | fastest peer | its ms | speed-up | "
           "compile fcnn / linen |", "|" + "---|" * 9]
    for key, got in _timed_by_config(rows).items():
        peers = {f: r for f, r in got.items() if not f.startswith("fcnn") and f not in KEPT}
        mine = [f for f in ("fcnn", "fcnn_k", "fcnn_unroll") if f in got]
        if not peers or not mine:
            continue
        best = min(peers, key=lambda f: peers[f]["ms_per_step"])
        fastest = got[min(mine, key=lambda f: got[f]["ms_per_step"])]
        comp = (f"{got['fcnn']['compile_s'] / got['linen']['compile_s']:.2f}" if "fcnn" in got and "linen" in got
                else "—")
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {_fmt(got.get('fcnn', {}).get('ms_per_step'), '.3f')} | "
                   f"{fastest['ms_per_step']:.3f} ({_label(fastest)}) | {bench_peers.LABELS[best]} | "
                   f"{peers[best]['ms_per_step']:.3f} | {peers[best]['ms_per_step'] / fastest['ms_per_step']:.2f}x | "
                   f"{comp} |")
    return out + kept_summary(rows)


KEPT = ("torch_keep",)  # PyTorch with the glibc settings fcnn's step makes: never the "fastest peer"
# (fcnn row, PyTorch row, heading): pairs timed with the same glibc allocator settings, one table each
LIKE_FOR_LIKE = (("fcnn", "torch_keep", "Both keeping freed memory (fcnn's default, PyTorch after "
                  "`fcnn.runtime.keep_cpu_memory()`; docs/perf_notes.md items 66, 67)"),
                 ("fcnn_glibc", "torch", "Both with glibc's allocator defaults (fcnn with `FCNN_KEEP_CPU_MEMORY=0`)"))


def kept_summary(rows):
    """Per (net, batch, dtype) with both of a ``LIKE_FOR_LIKE`` pair: fcnn against PyTorch, each process
    with the same glibc allocator settings (the summary above takes each framework's defaults)."""
    out = []
    for mine, theirs, heading in LIKE_FOR_LIKE:
        lines = []
        for key, got in _timed_by_config(rows).items():
            if mine in got and theirs in got:
                fcnn_ms, torch_ms = got[mine]["ms_per_step"], got[theirs]["ms_per_step"]
                lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {fcnn_ms:.3f} | {torch_ms:.3f} | {torch_ms / fcnn_ms:.2f}x |")
        if lines:
            out += ["", f"{heading}:", "", "| net | batch | dtype | fcnn ms | torch eager ms | speed-up |",
                    "|" + "---|" * 6] + lines
    return out


def splice_docs(path, device, text):
    start, end = f"<!-- benchmark:{device}:start -->", f"<!-- benchmark:{device}:end -->"
    doc = open(path).read() if os.path.exists(path) else ""
    block = f"{start}\n{text}{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def _nets(text):
    """``--nets``' "net:batch" pairs as [(net, batch)], or SystemExit naming --nets and the rule."""
    configs = []
    for item in text.split(","):
        net, _, batch = item.partition(":")
        if net not in bench_peers.NETS or not batch.isdigit() or int(batch) < 1:
            raise SystemExit(f"--nets: {item!r} is not net:batch with net one of {', '.join(bench_peers.NETS)} and "
                             "batch a positive integer (e.g. lenet:64,vgg:8)")
        configs.append((net, int(batch)))
    return configs


def check_args(args):
    """Refuse bad arguments, and an --out that holds an earlier run, before any worker; returns the
    frameworks and the (net, batch) configs to run (``--quick`` applied)."""
    fws = [f for f in args.only.split(",") if f] or FRAMEWORKS
    bad = [f for f in fws if f not in FRAMEWORKS]
    if bad:
        raise SystemExit(f"--only: unknown frameworks {bad}; known: {FRAMEWORKS}")
    bad = [d for d in args.dtypes.split(",") if d not in DTYPES]
    if bad or not args.dtypes:
        raise SystemExit(f"--dtypes: unknown {bad or [args.dtypes]}; known: {', '.join(DTYPES)}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be an integer >= 1, got {args.repeats}")
    for flag, value in (("--target-s", args.target_s), ("--timeout", args.timeout)):
        if not value > 0:
            raise SystemExit(f"{flag} must be > 0 seconds, got {value}")
    configs = CONFIGS[args.device]
    if args.quick:
        configs, args.repeats, args.target_s = QUICK_CONFIGS, 2, 0.02
    if args.nets:
        configs = _nets(args.nets)
    check_out_dir(args, OUT_FILES)
    return fws, configs


def run_workers(args, fws, configs, ksteps, peak):
    """Every framework on every (net, batch), each in a fresh worker process; the rows, in run order."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="fcnn_bench_") as tmp:
        for net, n in configs:
            for fw in fws:
                k = ksteps[net] if fw in ("fcnn_k", "fcnn_unroll") else 1
                t0 = time.perf_counter()
                res = os.path.join(tmp, f"w_{fw}_{net}_{n}.json")
                got, err = _spawn(["--worker", fw, "--net", net, "--batch", str(n), "--k", str(k), "--dtypes",
                                   args.dtypes, "--device", args.device, "--repeats", str(args.repeats),
                                   "--target-s", str(args.target_s)], args.device, args.timeout, res)
                if got is None:
                    got = [dict(framework=fw, net=net, batch=n, dtype=d, k=k, skipped=err)
                           for d in args.dtypes.split(",")]
                for r in got:
                    rows.append(derive(r, peak.get("tflops")))
                    print(f"{fw:14s} {net:6s} b{n:<5d} {r['dtype']:5s} "
                          + (f"{r['ms_per_step']:9.3f} ms/step  compile {r['compile_s']:.2f} s" if "ms_per_step" in r
                             else r["skipped"]) + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
                with open(os.path.join(args.out, "results.partial.json"), "w") as f:  # survives a killed run
                    json.dump({"device": args.device, "matmul_peak": peak, "rows": rows}, f)
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.target_s is None:
        args.target_s = 0.3 if args.device == "gpu" else 1.0
    if args.worker:
        return run_worker(args)
    if args.matmul:
        print(json.dumps(matmul_peak(args.matmul)))
        return None
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        rows = [derive(r, saved["matmul_peak"].get("tflops")) for r in saved["rows"]]
        text = table(rows, saved["device"], saved["matmul_peak"])
        if args.docs:
            splice_docs(args.docs, saved["device"], text)
        print(text)
        return rows
    fws, configs = check_args(args)
    ksteps = K_STEPS_QUICK if args.quick else K_STEPS if args.device == "gpu" else K_STEPS_CPU
    os.makedirs(args.out, exist_ok=True)
    print(f"device={args.device} python={platform.python_version()} host={platform.node()} seed=0", flush=True)
    peak = measure_matmul_peak(args.device, 8192) if args.device == "gpu" else {}
    print("bf16 matmul peak:", peak, flush=True)
    rows = run_workers(args, fws, configs, ksteps, peak)
    order = {f: i for i, f in enumerate(FRAMEWORKS)}
    rows.sort(key=lambda r: (r["net"], r["batch"], r["dtype"] != "f32", order[r["framework"]]))
    date = datetime.date.today().isoformat()
    cmd = "python experiments/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    head = (f"{args.device.upper()} run of {date} (`{cmd}`), peak bf16 matmul "
            f"{_fmt(peak.get('tflops'), '.0f')} TFLOP/s on {peak.get('device', 'cpu')}; host CPU {cpu_description()}; "
            f"median of {args.repeats} repeats of {args.target_s} s each.\n\n")
    text = head + table(rows, args.device, peak)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"device": args.device, "date": date, "command": cmd, "matmul_peak": peak, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    if args.docs:
        splice_docs(args.docs, args.device, text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
