"""The one way the benchmark scripts in experiments/ time a call.

    from _timing import carrying, measure, side_by_side
    t = measure(lambda: fn(x, w), repeats=5, target_s=0.5)        # Timing of one call
    ts = side_by_side({"a": call_a, "b": call_b}, repeats=15, target_s=0.1)   # {name: Timing}

The method (the shared PERFORMANCE.md): a variant's first call is its compile time (trace,
compile and one run, blocked on); then ``warmup`` untimed calls; then the calls per repeat are
calibrated to ``target_s`` seconds (4x more calls until a batch takes a quarter of ``target_s``,
then scaled to it; at most ``MAX_PROBE`` calls are probed) unless ``calls`` fixes them; then
``repeats`` timed repeats of that many calls, each ended by a block on the device. Several
variants take turns, ``per_turn`` repeats each (after ``turn_warmup`` untimed calls), so the slow
drifts of a shared machine hit all of them alike. A call takes no argument and returns what to
block on (``carrying`` makes one from a step that threads a carry); ``block_each`` blocks on every
call, not only the last of a repeat (XLA:CPU may overlap independent calls).

Scripts import this as ``_timing``: run as ``python experiments/X.py`` the script's folder is
``sys.path[0]``, and the tests' loader (tests/conftest.py) puts the folder there too. JAX is
imported only when a call is first blocked on, so a script may still choose the platform first.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional

MAX_PROBE = 4096  # calibration stops growing the batch of calls here


class Timing(NamedTuple):
    """What ``measure`` found for one variant (seconds per call)."""

    compile_s: float  # the first call: trace + compile + one run, blocked on
    repeats_s: List[float]  # seconds per call of each timed repeat, in order
    calls: int  # calls per repeat

    @property
    def median_s(self) -> float:
        return statistics.median(self.repeats_s)

    @property
    def best_s(self) -> float:
        return min(self.repeats_s)


def _jax_block(out):
    import jax

    return jax.block_until_ready(out)


def carrying(step: Callable, carry, *args) -> Callable:
    """A zero-argument call ``carry = step(carry, *args)`` that keeps the new carry for the next call."""
    box = [carry]

    def call():
        box[0] = step(box[0], *args)
        return box[0]

    return call


def progress(message: str) -> None:
    """One line of progress on stderr (the tables go to stdout): the one way the long scripts say where they are."""
    print(message, file=sys.stderr, flush=True)


def _run(call, n: int, block, block_each: bool) -> float:
    """Seconds for ``n`` calls, ended by a block on the last output."""
    t0 = time.perf_counter()
    for _ in range(n):
        out = call()
        if block_each:
            block(out)
    block(out)
    return time.perf_counter() - t0


def _calibrate(call, target_s: float, block, block_each: bool) -> int:
    """Calls per repeat so that one repeat takes about ``target_s`` seconds."""
    n = 1
    while True:
        dt = _run(call, n, block, block_each)
        if dt >= target_s / 4 or n >= MAX_PROBE:
            return max(1, int(round(n * target_s / max(dt, 1e-9))))
        n *= 4


def side_by_side(variants: Dict[object, Callable], *, repeats: int, target_s: Optional[float] = None,
                 calls: Optional[int] = None, warmup: int = 1, per_turn: int = 1, turn_warmup: int = 0,
                 block: Optional[Callable] = None, block_each: bool = False,
                 verbose: bool = False) -> Dict[object, Timing]:
    """Time zero-argument calls side by side: ``{name: Timing}`` in the order of ``variants``.

    Each variant in turn is compiled (first call), warmed up and calibrated; then the timed repeats
    go round: every variant runs ``turn_warmup`` untimed calls and ``per_turn`` repeats, until each
    has ``repeats``. Give ``target_s`` (calibrated calls) or ``calls`` (fixed). ``block(out)``
    waits for the device (default ``jax.block_until_ready``). ``verbose``: a ``progress`` line per
    variant compiled and per round of turns.
    """
    if (target_s is None) == (calls is None):
        raise ValueError("give exactly one of target_s (calibrated calls per repeat) and calls (fixed)")
    if repeats < 1 or per_turn < 1:
        raise ValueError(f"repeats and per_turn must be >= 1, got {repeats} and {per_turn}")
    if calls is not None and calls < 1:
        raise ValueError(f"calls (per repeat) must be >= 1, got {calls}")
    block = block or _jax_block
    compile_s, n = {}, {}
    for name, call in variants.items():
        t0 = time.perf_counter()
        block(call())
        compile_s[name] = time.perf_counter() - t0
        for _ in range(warmup):
            block(call())
        n[name] = calls if calls is not None else _calibrate(call, target_s, block, block_each)
        if verbose:
            progress(f"{name}: compiled in {compile_s[name]:.1f} s, {n[name]} calls per repeat")
    times = {name: [] for name in variants}
    for done in range(0, repeats, per_turn):
        for name, call in variants.items():
            if turn_warmup:
                _run(call, turn_warmup, block, False)
            for _ in range(min(per_turn, repeats - done)):
                times[name].append(_run(call, n[name], block, block_each) / n[name])
        if verbose:
            progress(f"round {done // per_turn + 1} of {-(-repeats // per_turn)} done")
    return {name: Timing(compile_s[name], times[name], n[name]) for name in variants}


def measure(call: Callable, *, repeats: int, target_s: Optional[float] = None, calls: Optional[int] = None,
            warmup: int = 1, block: Optional[Callable] = None, block_each: bool = False) -> Timing:
    """``side_by_side`` of one call."""
    return side_by_side({0: call}, repeats=repeats, target_s=target_s, calls=calls, warmup=warmup, block=block,
                        block_each=block_each)[0]


# the instruction sets that decide which CPU kernels run (docs/benchmarks.md: the same 2-core
# sessions ran on an AVX2-only AMD EPYC and on an Intel Xeon with AVX-512 and AMX)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_description(cpuinfo: Optional[str] = None) -> str:
    """The CPU a timing ran on, for the tables' headers: "model, N cores (flags)".

    ``cpuinfo``: the text of /proc/cpuinfo (None: read it; where there is none, the platform's
    processor name). Flags are those of ``CPU_FLAGS`` the CPU has (read by ``fcnn.ops.auto``, which
    chooses by them; imported here, after a script has chosen its platform).
    """
    from fcnn.ops.auto import parse_cpu_flags

    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    fields = [line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line]
    first = {}
    for key, value in fields:
        first.setdefault(key.strip(), value.strip())
    cores = sum(key.strip() == "processor" for key, _ in fields)
    has = parse_cpu_flags(cpuinfo)
    flags = " ".join(f for f in CPU_FLAGS if f in has)
    name = f"{first.get('model name', platform.machine())}, {cores} core{'' if cores == 1 else 's'}"
    return name + (f" ({flags})" if flags else "")
