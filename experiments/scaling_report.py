"""The report of experiments/scaling.py: a run's rows as a markdown section, and the merge of
platform sections into one file.

Moved out of scaling.py (which imports ``render_section``, ``merge_into`` and ``_SECTION`` from here
and re-exports them, with ``INTRO``): ``render_section`` turns the rows of parts A, B and C and the
run's ``meta`` into one ``<!-- scaling:TAG -->`` section; ``merge_into`` writes ``INTRO`` and every
platform's section into ``--out``, keeping the sections of the other platforms. Needs no JAX, so
``--merge`` and ``--render`` run from the raw numbers alone.
"""
from __future__ import annotations

import os
import re


def _table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]) + "\n"


def _kb(b):
    return f"{b / 1e3:,.1f}"


def _loop_cell(r):
    scaled = r["loop_examples"] != r["batch"]
    return f"{r['loop_ms']:.2f}" + (f" (x{r['batch'] // r['loop_examples']} of {r['loop_examples']})" if scaled else "")


INTRO = """# Scaling: per-example gradients and data parallelism

Produced by `experiments/scaling.py` (method in its docstring and in the shared PERFORMANCE.md:
compile excluded and reported apart, warm-up, `block_until_ready`, median of repeats, all variants of
a question timed side by side in one process). One section per platform follows; each names the
command, date, device and JAX version that produced it, and its raw numbers are in `scaling_TAG.json`.

**Reading part B.** On one GPU, and on CPU virtual devices
(`--xla_force_host_platform_device_count`, which split the same physical cores), these tables
measure the *overhead* of the data-parallel wrappers (pmap, jit sharding, shard_map) and of
splitting the batch, **not speed-up**: no accelerator is added when d grows. Multi-GPU
scaling has to be reasoned about on paper from part C.

**Reading part C.** A data-parallel step all-reduces the gradient (P float32 parameters), the
BatchNorm statistics when they are global (per channel: batch mean and variance forward, their
cotangents backward, and the running statistics: 6 numbers) and 2 metrics. The counts below are
taken from the traced `shard_map` step (every `psum`) and checked against that formula. A ring
all-reduce sends and receives 2(d-1)/d times the buffer per device, so one step costs about
`alpha * (number of all-reduces after XLA combines them) + ring bytes / link bandwidth`, against a
compute time that shrinks at best like the per-device batch N/d. LeNet-5's 432 KB per device at
d = 8 is microseconds of transfer at NVLink-class bandwidth, so the all-reduces' latency is what
counts; and its per-device step is launch-bound on a GPU (a ~0.6 ms floor whatever the batch,
PERFORMANCE.md), so splitting a batch of 256 over 8 GPUs cannot make a step much faster than one
GPU's. Data parallelism pays off for the larger nets and batches, whose step time is compute.
"""


def _header(tag: str, meta: dict) -> list:
    """The section's opening marker, title and the run's command line and conditions."""
    where = meta["device"] + (f", {meta['cpu_count']} cores" if tag == "cpu" else "")
    return [f"<!-- scaling:{tag} -->", f"## {tag.upper()} run ({where})\n",
            f"Command: `{meta['command']}` (date {meta['date']}, seed {meta['seed']}, backend {meta['backend']}, "
            f"{meta['device_count']} device(s), jax {meta['jax']}, {meta['wall_s']:.0f} s wall, 1-minute load average "
            f"{meta['load_avg'][0]:.1f} at the start and {meta['load_avg'][1]:.1f} at the end on "
            f"{meta['cpu_count']} cores).\n"]


def _part_a(tag: str, a_rows) -> list:
    """Part A: the per-example gradient table and what it says against the targets."""
    out = ["### A. Per-example gradients, LeNet-5 (28x28x1, float32)\n"]
    out.append(_table(
        ["batch", "batch grad ms", "vmap ms", "lax.map ms", "Python loop ms", "vmap / batch", "loop / vmap",
         "lax.map / vmap", "GFLOP/s batch", "GFLOP/s vmap", "vmap vs loop rel err"],
        [(r["batch"], f"{r['batch_ms']:.3f}", f"{r['vmap_ms']:.3f}", f"{r['map_ms']:.3f}", _loop_cell(r),
          f"{r['vmap_over_batch']:.1f}x", f"{r['loop_over_vmap']:.1f}x", f"{r['map_over_vmap']:.1f}x",
          f"{r['batch_gflops']:.1f}", f"{r['vmap_gflops']:.1f}", f"{r['vmap_vs_loop_rel_err']:.1e}")
         for r in a_rows]))
    comp = a_rows[0]["compile_s"]
    big = max(a_rows, key=lambda r: r["batch"])
    verdicts = ["met" if big["vmap_over_batch"] <= 8 else "not met", "met" if big["loop_over_vmap"] >= 10 else "not met"]
    out.append(
        f"ms per call, median. \"Python loop\" calls a jitted single-example gradient once per example "
        f"(inputs sliced beforehand, outputs not stacked); where marked it ran on the first m examples and "
        f"its time is scaled by n/m. \"lax.map\" is the same loop compiled into one call. GFLOP/s count "
        f"3 x forward FLOPs per example. Compile s at batch {a_rows[0]['batch']}: "
        + ", ".join(f"{k} {v:.2f}" for k, v in comp.items())
        + ". Rel err: max |vmap - loop| / max |loop| over each leaf, for the examples the loop ran.\n\n"
        f"Targets (issue 6, for the GPU): vmap <= 8x the batch gradient and >= 10x faster than a loop at "
        f"batch 256. Here at batch {big['batch']}: {big['vmap_over_batch']:.1f}x and {big['loop_over_vmap']:.1f}x"
        f" -> {verdicts[0]} and {verdicts[1]}"
        + ("" if tag == "gpu" else " (the targets are stated for the GPU; CPU numbers are for comparison)")
        + f".\n\nPer example at batch {big['batch']}: batch gradient {big['batch_ms'] / big['batch']:.4f} ms, vmap "
        f"{big['vmap_ms'] / big['batch']:.4f} ms, Python loop {big['loop_ms'] / big['batch']:.4f} ms; one call of "
        f"a trivial jitted function (`a + 1` on a scalar) costs {big['noop_call_ms']:.4f} ms here. A loop pays "
        "one call per example. "
        + ("Here one example's gradient takes far longer than a call (XLA:CPU's few-channel convolutions are "
           "slow, PERFORMANCE.md), so the loop loses little, and vmap's batched per-example weight gradients "
           "need not beat it; on a GPU one example's gradient is a handful of tiny kernels, the call cost "
           "dominates the loop, and the issue's >= 10x target applies there.\n"
           if tag == "cpu" and big["loop_ms"] / big["batch"] > 10 * big["noop_call_ms"] else
           "Each loop iteration is a dispatch plus the launches of a handful of tiny kernels; vmap pays "
           "those once for the whole batch.\n"))
    return out


def _part_b(meta: dict, b_rows) -> list:
    """Part B: one table per model of the data-parallel steps against device count."""
    out = ["### B. Data-parallel train step against device count (overhead, not speed-up)\n"]
    for name in dict.fromkeys(r["model"] for r in b_rows):
        rs = [r for r in b_rows if r["model"] == name]
        out.append(f"{name}, global batch {rs[0]['global_batch']}, SGD momentum 0.9, float32:\n")
        out.append(_table(["variant", "devices", "ms/step", "repeats min-max", "images/s", "vs jit (time)",
                           "compile s"],
                          [(r["variant"], r["devices"], f"{r['ms']:.3f}",
                            f"{min(r['repeats_ms']):.2f}-{max(r['repeats_ms']):.2f}", f"{r['images_per_s']:,.0f}",
                            f"{r['over_jit']:.2f}x", f"{r['compile_s']:.2f}") for r in rs]))
        spans = []
        for d in sorted({r["devices"] for r in rs if r["variant"] != "jit"}):
            ratios = [r["over_jit"] for r in rs if r["variant"] != "jit" and r["devices"] == d]
            spans.append(f"d = {d}: {min(ratios):.2f}x-{max(ratios):.2f}x")
        out.append("Step time of the three wrappers relative to plain jit, " + "; ".join(spans) + ".\n")
    virt = meta.get("virtual_devices")
    out.append(
        "\"jit\" is `step.make_train_step` on one device; the others are `parallel.make_pmap_train_step`, "
        "`make_sharded_train_step` and `make_shard_map_train_step` over the first d devices, with a "
        "device-resident batch (no host transfer inside the timing) and no buffer donation in any "
        "variant; \"compile s\" is the first call (trace, compile and one run). "
        + (f"The {virt} devices are virtual CPU devices sharing this machine's {meta['cpu_count']} cores (and "
           "whatever else runs on it). Each device's program can run on its own thread, so up to the core "
           "count a split batch may occupy cores that one device's small-convolution program leaves idle; "
           "past it, more devices only add per-device programs and all-reduces. Neither is the speed-up of d "
           "real accelerators. " if virt else
           f"With {meta['device_count']} device(s) only d <= {meta['device_count']} exists: the rows show what "
           "each wrapper costs over plain jit. ")
        + "This is overhead, not speed-up.\n")
    return out


def _part_c(c_rows) -> list:
    """Part C: the counted and the formula's all-reduced elements per model."""
    return ["### C. Communication per data-parallel step (float32)\n", _table(
        ["model", "params P", "gradient KB (P x 4)", "BN channels", "psum ops (traced)", "all-reduced elements",
         "formula P + 6 BN + 3", "ring KB/device d=2", "d=4", "d=8"],
        [(r["model"], f"{r['params']:,}", _kb(r["grad_bytes"]), r["bn_channels"], r["psum_ops"],
          f"{r['counted_elements']:,}", f"{r['formula_elements']:,}"
          + (" (match)" if r["formula_elements"] == r["counted_elements"] else " (DIFFERS)"),
          *(_kb(r["ring_bytes"][str(d)]) for d in (2, 4, 8))) for r in c_rows]),
        "The + 3: the loss and the task's metric sums (classification: correct, count), all-reduced "
        "with the gradients (counted here from the traced step). "
        "Ring KB/device: what each device sends (and receives) per step, all-reduced elements x 4 bytes "
        "x 2(d-1)/d. The psum count is before XLA combines all-reduces. Below about a megabyte per device "
        "(lenet5, small_resnet) count the all-reduces' latency rather than the bytes. Under "
        "`make_sharded_train_step` XLA inserts the equivalent all-reduces itself.\n"]


def render_section(tag: str, meta: dict, a_rows, b_rows, c_rows) -> str:
    """One platform's ``<!-- scaling:TAG -->`` section from the rows of parts A, B and C (a part
    without rows is left out)."""
    out = _header(tag, meta)
    if a_rows:
        out += _part_a(tag, a_rows)
    if b_rows:
        out += _part_b(meta, b_rows)
    if c_rows:
        out += _part_c(c_rows)
    out.append(f"<!-- /scaling:{tag} -->\n")
    return "\n".join(out)


_SECTION = re.compile(r"<!-- scaling:(\w+) -->.*?<!-- /scaling:\1 -->\n?", re.S)


NO_GPU = """## GPU run: not yet measured

The issue's per-example targets (vmap <= 8x the batch gradient and >= 10x faster than a Python
loop for LeNet-5 at batch 256) are stated for a GPU. No accelerator has run this script yet, so
there is no GPU section and those two targets are **unverified**. To add it:
`PYTHONPATH=. python experiments/scaling.py --out $OUT/scaling_gpu.md` on the GPU machine
(experiments/gpu_session.sh leaves it out: its budget goes to the step benchmarks), then `python
experiments/scaling.py --merge <fetched>/scaling_gpu.md --out docs/scaling.md` here (and copy
`scaling_gpu.json` next to it); the merge replaces this paragraph with the GPU section.
"""


def check_out(path: str, overwrite: bool = False) -> None:
    """Refuse ``--out`` before any work (SystemExit naming it): a folder, or an existing file that is not
    a scaling report (no ``<!-- scaling:TAG -->`` section: merging would replace its content) unless
    ``overwrite``."""
    if os.path.isdir(path):
        raise SystemExit(f"error: --out {path!r} is a directory; give the markdown file")
    if os.path.exists(path) and not overwrite:
        with open(path) as f:
            if not _SECTION.search(f.read()):
                raise SystemExit(f"error: --out {path!r} exists and holds no <!-- scaling:TAG --> section; "
                                 "pass --overwrite to replace it")


def merge_into(path: str, sections: dict) -> None:
    """Write ``path`` as INTRO + its old platform sections, with ``sections`` ({tag: text}) replacing
    theirs; while no GPU section exists, ``NO_GPU`` says so at the end."""
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = {m.group(1): m.group(0) for m in _SECTION.finditer(f.read())}
    old.update(sections)
    order = sorted(old, key=lambda t: (t != "cpu", t))  # CPU first, GPU appended after it
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(INTRO + "\n" + "\n".join(old[t].rstrip("\n") + "\n" for t in order)
                + ("" if "gpu" in old else "\n" + NO_GPU))
