"""How fcnn's steps compile and run on CPU: XLA's options (``compiler_options()``, which
``fcnn.step``'s builders compile with) and glibc's memory settings (``keep_cpu_memory()``, which
``make_train_step`` calls on CPU; ``FCNN_KEEP_CPU_MEMORY=0`` leaves glibc's defaults).

Each option's reason is measured next to it below. Why the memory settings (docs/perf_notes.md
items 59, 65, 66, 67): XLA:CPU allocates a step's temporaries afresh every
call, on one of its worker threads, and frees them afterwards. fcnn's train steps compile with
XLA's per-heap limit (``CPU_HEAP_OPTIONS``), so the temporaries come as blocks of at most
30 MiB, which glibc serves from the worker's arena. An arena grows in heaps of at most 64 MiB
(glibc's ``HEAP_MAX_SIZE`` on 64-bit), and with glibc's defaults a call that frees a whole heap
gives it back (``heap_trim`` in its malloc/arena.c: ``munmap``, or ``madvise(MADV_DONTNEED)`` for
a heap's free top). The next call then touches new zeroed pages: ResNet-18 b16 15,000-20,000 page
faults a step on a 2-core Xeon.

``keep_cpu_memory`` sets three of glibc's ``mallopt`` parameters:

- ``M_TOP_PAD`` = 64 MiB (``ARENA_HEAP_BYTES``): ``heap_trim`` keeps this much free room, so it never
  unmaps a free heap of a thread's arena nor shrinks one;
- ``M_TRIM_THRESHOLD`` = -1, which glibc reads as the largest ``size_t`` (never): the main arena, the
  one ``sbrk`` grows, keeps its free top too. Threads share the main arena once a process has more
  of them than glibc's arena limit (8 per core), as a JAX process on 2 cores does (17 threads after
  ``make_train_step``); with the pad alone it kept 64 MiB and gave back the rest every call
  (tests/test_runtime.py: four 24 MiB blocks a call, 8,192 new pages a call against 0);
- ``M_MMAP_MAX`` = 0: no block is ``mmap``ed, so a block above 32 MiB (the highest mmap threshold
  glibc's dynamic rule reaches, ``MMAP_THRESHOLD_BYTES``) comes from an arena and stays too, where
  glibc's defaults map it afresh every call and unmap it when freed. A thread's arena holds a block
  of up to one 64 MiB heap; a larger one from a worker thread glibc still maps (its fallback when no
  heap can hold it) and unmaps when freed, which is why the steps keep the heap limit. XLA keeps an
  array larger than the limit in a heap of its own: VGG b64, whose activations pass 30 MiB, took
  22,500-26,600 faults a step with session 21's settings (the pad and a 32 MiB mmap threshold, with
  or without the trim setting), 0-310 with these three, and 8-21% less time (f32 304/289 against
  330/322 ms, bf16 77.6/77.1 against 92.7/97.0; docs/perf_notes.md item 67).

Measured in fresh processes: ResNet-18 b16 bf16 0 faults a step against ~19,000, ~101-105 against
114-127 ms; PyTorch's eager step gains as much from the same settings (its ops allocate on the
calling thread). The cost is memory the process keeps: every arena stays at its peak, large blocks
included (``fcnn train``, ResNet-18 b16: peak resident memory +7% over glibc's defaults; small_vgg
b64 +7% over session 21's settings with the trim setting), and a large array freed after the call is kept for
reuse rather than given back (``malloc_trim(0)`` gives free pages back on request). The settings
are the process's; calling again is fine, and where the C library is not glibc, or another allocator
is preloaded, nothing changes.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
from typing import Optional

import jax
import numpy as np

from fcnn import _checks
from fcnn.ops import auto as _auto

__all__ = ["CPU_COMPILER_OPTIONS", "CPU_AMX_COMPILER_OPTIONS", "CPU_HEAP_OPTIONS", "compiler_options",
           "persistent_cache_on", "keep_cpu_memory", "keep_cpu_memory_by_default", "ARENA_HEAP_BYTES",
           "MMAP_THRESHOLD_BYTES", "ENV_VAR"]

ARENA_HEAP_BYTES = 64 * 2 ** 20  # glibc's HEAP_MAX_SIZE on 64-bit (2 * DEFAULT_MMAP_THRESHOLD_MAX)
MMAP_THRESHOLD_BYTES = 32 * 2 ** 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # mallopt's parameter numbers, glibc's <malloc.h>
_NEVER = -1  # mallopt's int value, which glibc converts to size_t: the largest threshold
ENV_VAR = "FCNN_KEEP_CPU_MEMORY"  # "0": make_train_step leaves glibc's defaults; "1" (default): it keeps


# XLA:CPU in this jaxlib routes convolutions to YNNPACK by default; clearing its fusion types sends
# them to XLA's Eigen convolutions, which ran the train step 0.64x (VGG b16) and 0.79x (LeNet b64)
# of the default's time on the 2-core AVX2 machine, interleaved on an idle machine (2026-12-02,
# experiments/user_step_ab.py, docs/perf_notes.md items 28 and 30); results agree to rounding.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
# On a CPU with bfloat16 dot instructions (AMX tiles, or avx512_bf16), YNNPACK keeps the matrix
# products (each one alone) and nothing else: XLA:CPU reaches those instructions only so. A dot of
# bf16 operands into f32 ran 4-5x its f32 dot with AMX, which the "im2col_vjp" convolutions that
# impl="auto" picks there are built for (docs/perf_notes.md items 53, 57), and 360 against 180
# GFLOP/s (YNNPACK off) on an AMD Zen 4 with avx512_bf16, where BatchNorm's channel sums take such
# dots: the ResNet-18 b16 bf16 step 171.8 against 188.6 ms, medians of 11 alternating fresh-process
# pairs (item 68). Float32 steps ran the same either way (AMX Xeon: VGG b16 98.6 vs 98.4 ms, LeNet
# b64 4.5 vs 4.3; Zen 4: ResNet-18 b16 and VGG b16 level over 3 pairs). The name is the first CPU's.
CPU_AMX_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
# XLA:CPU hands each call its temporaries as one block the size of the program's peak (ResNet-18 b16:
# 100-117 MB), and glibc serves a block above 32 MiB (the most its dynamic mmap threshold rises to)
# with fresh zeroed pages every call: 24,400 page faults a ResNet-18 b16 bf16 step. XLA's per-heap
# limit splits the temporaries into heaps of at most this many bytes, under MMAP_THRESHOLD_BYTES,
# which glibc serves from its arenas: in fresh processes the VGG b16 f32 step
# 9,710 -> 0 faults, 68.9 -> 62.6 ms (docs/perf_notes.md item 65); keep_cpu_memory(), which
# make_train_step calls, keeps the arenas' freed heaps too (ResNet-18 b16 0 faults, item 66). An
# array larger than the limit keeps a heap of its own, and XLA logs a warning naming its size; one
# over 32 MiB is mmapped afresh every call under glibc's defaults, kept with keep_cpu_memory() (item 67).
CPU_HEAP_OPTIONS = {"xla_multiheap_size_constraint_per_heap": 30 * 2 ** 20}


def _cpu_options() -> dict:
    """CPU_AMX_COMPILER_OPTIONS on a CPU with bfloat16 dot instructions, CPU_COMPILER_OPTIONS on others."""
    return CPU_AMX_COMPILER_OPTIONS if _auto.cpu_has_bf16_dot() else CPU_COMPILER_OPTIONS


@functools.lru_cache(maxsize=None)
def _options_supported(options: tuple) -> bool:
    """Whether this jaxlib knows these options, ``tuple(dict.items())`` (an unknown option fails the compile)."""
    try:
        jax.jit(lambda v: v + 1, compiler_options=dict(options))(np.zeros((), np.float32))
        return True
    except Exception:  # noqa: BLE001 - jaxlib without the option: compile with its defaults
        return False


def persistent_cache_on() -> bool:
    """Whether JAX's persistent compilation cache is on (``jax_compilation_cache_dir`` set and
    ``jax_enable_compilation_cache``), as configured now."""
    return bool(jax.config.values.get("jax_enable_compilation_cache", True)
                and jax.config.values.get("jax_compilation_cache_dir"))


def compiler_options(heap_limit: bool = True) -> Optional[dict]:
    """The XLA options ``make_train_step`` compiles with: ``CPU_COMPILER_OPTIONS``
    (``CPU_AMX_COMPILER_OPTIONS`` on a CPU with bfloat16 dot instructions: ``avx512_bf16`` or AMX) and, with ``heap_limit``, ``CPU_HEAP_OPTIONS`` on
    CPU, each group where this jaxlib has it; None elsewhere. A step of your own gets the same with
    ``jax.jit(step, compiler_options=fcnn.runtime.compiler_options())`` (``fcnn.step.compiler_options``
    is the same function).

    The heap limit is left out while JAX's persistent compilation cache is on (``persistent_cache_on``,
    read when this is called): XLA:CPU cannot serialize a program whose temporaries come in several
    heaps, so JAX would warn and compile the step again in every process ("Multiple temp buffer
    allocations found"). XLA logs a warning at compile time for every array larger than the heap
    limit, and again for each heap it fills after it (VGG b128 f32: 223 lines). ``make_eval_step`` and
    ``predict``, whose inputs are often whole evaluation sets, and which hold no backward pass's
    stored activations, compile with ``heap_limit=False``; ``make_train_step(heap_limit=False)`` and a
    train step of your own compiled so are silent at any batch size.

    XLA takes compiler options on a top-level jit only: a step from ``make_train_step`` cannot be
    traced inside another ``jax.jit`` / ``make_jaxpr``; wrap ``plain_train_step`` there (as
    ``fcnn.parallel``'s jit, sharding and shard_map steps do, which keep XLA's defaults)."""
    heap_limit = _checks.boolean(heap_limit, "heap_limit") and not persistent_cache_on()
    if jax.default_backend() != "cpu":
        return None
    options = {}
    for group in [_cpu_options()] + ([CPU_HEAP_OPTIONS] if heap_limit else []):
        if _options_supported(tuple(group.items())):
            options.update(group)
    return options or None


@functools.lru_cache(maxsize=None)
def _libc() -> Optional[ctypes.CDLL]:
    """glibc's library, where the C library is glibc; else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _glibc() -> Optional[ctypes.CDLL]:
    """glibc, whose ``mallopt`` tunes the process's ``malloc``; None where the C library is another, or where
    the process's ``malloc`` is not glibc's (a jemalloc or tcmalloc in ``LD_PRELOAD``, which glibc's
    settings do not reach)."""
    libc = _libc()
    address = lambda function: ctypes.cast(function, ctypes.c_void_p).value
    return libc if libc is not None and address(ctypes.CDLL(None).malloc) == address(libc.malloc) else None


def keep_cpu_memory() -> bool:
    """Have glibc keep freed CPU memory for the next call, instead of giving it back and handing out new
    pages (see the module docstring). Any time, from any thread; idempotent.

    Returns:
      True when the three settings are in place; False where the C library is not glibc or the process's
      ``malloc`` is not glibc's (nothing changed).
    """
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1
               for param, value in ((_M_MMAP_MAX, 0), (_M_TOP_PAD, ARENA_HEAP_BYTES), (_M_TRIM_THRESHOLD, _NEVER)))


def keep_cpu_memory_by_default() -> bool:
    """``keep_cpu_memory()`` when JAX's backend is the CPU, unless the environment says
    ``FCNN_KEEP_CPU_MEMORY=0`` (what ``make_train_step`` calls). Returns whether the settings are in place.

    Raises:
      ValueError: ``FCNN_KEEP_CPU_MEMORY`` set to anything but "0" or "1", before any setting.
    """
    if _checks.choice(os.environ.get(ENV_VAR, "1"), ("0", "1"), ENV_VAR) == "0" or jax.default_backend() != "cpu":
        return False
    return keep_cpu_memory()
