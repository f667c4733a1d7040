"""Process settings for fast CPU training steps: ``keep_cpu_memory()`` (opt-in; ``fcnn train`` calls it).

Why (docs/perf_notes.md item 59): XLA:CPU allocates a step's temporaries as one block per call and
frees it afterwards, on one of its worker threads. glibc's per-thread arenas grow in heaps of at
most 64 MiB, so a larger block is ``mmap``ed fresh on every call, and blocks above glibc's dynamic
mmap threshold (at most 32 MiB) are too: the kernel hands them out as new zeroed pages, 20,000
page faults per VGG b16 bf16 step on a 2-core Xeon. ``keep_cpu_memory`` runs JAX's CPU
computations on the calling thread (``jax_cpu_enable_async_dispatch=False``), whose allocations come
from glibc's main arena (no heap limit), and raises that arena's mmap and trim thresholds
(``mallopt``) so freed blocks are kept for the next call. Measured in fresh processes: the VGG and
ResNet-18 b16 steps 11-22% faster, LeNet-5 unchanged; the process keeps its peak memory.

Without it, fcnn's train steps already split the block (``fcnn.step.CPU_HEAP_OPTIONS``, item 65): XLA
gives the temporaries in heaps of at most 30 MiB, under glibc's ceiling, which the arenas serve and
mostly reuse. A net whose temporaries fit one 64 MiB arena heap (VGG b16) then takes no fresh pages;
a larger one (ResNet-18 b16, ~100 MB) still does wherever glibc gives a freed heap back, which only
this call prevents.

Both settings are the process's, which is why this is a call and not an import side effect:
JAX reads the dispatch flag when its CPU client starts, so call it before the first JAX computation;
``mallopt`` exists only in glibc (elsewhere nothing changes and the call returns False).
"""
from __future__ import annotations

import ctypes
import functools
import platform
from typing import Optional

import jax

from fcnn import _checks

__all__ = ["keep_cpu_memory", "async_dispatch", "KEEP_BYTES"]

KEEP_BYTES = 1 << 30  # blocks up to 1 GiB are kept; larger ones are still mmapped and returned
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, glibc's <malloc.h>
_ASYNC_FLAG = "jax_cpu_enable_async_dispatch"


@functools.lru_cache(maxsize=None)
def _glibc() -> Optional[ctypes.CDLL]:
    """The process's own symbols, glibc's ``mallopt`` among them, when the C library is glibc, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


def async_dispatch() -> bool:
    """JAX's ``jax_cpu_enable_async_dispatch`` as it stands (True: JAX's default)."""
    return bool(jax.config.values[_ASYNC_FLAG])


def _backend_started() -> bool:
    from jax._src import xla_bridge  # no public spelling: whether a client (and its dispatch mode) exists

    return xla_bridge.backends_are_initialized()


def keep_cpu_memory(threshold_bytes: int = KEEP_BYTES) -> bool:
    """Keep XLA:CPU's per-call temporaries in memory instead of new pages each call (see the module
    docstring). Call it first thing in a script, before any JAX computation; calling it again is fine.

    Args:
      threshold_bytes: blocks up to this size are kept (glibc's ``M_MMAP_THRESHOLD`` and
        ``M_TRIM_THRESHOLD``); at most ``2**31 - 1`` (``mallopt`` takes a C int).
    Returns:
      True when both settings are in place; False where the C library is not glibc (nothing changed).
    Raises:
      RuntimeError: JAX's backends already started with asynchronous CPU dispatch (too late to change).
    """
    threshold_bytes = _checks.positive_int(threshold_bytes, "threshold_bytes")
    if threshold_bytes > 2 ** 31 - 1:
        raise ValueError(f"threshold_bytes must be at most 2**31 - 1 (mallopt takes a C int), got {threshold_bytes}")
    libc = _glibc()
    if libc is None:
        return False
    if async_dispatch():
        if _backend_started():
            raise RuntimeError("keep_cpu_memory() must run before JAX's first computation: JAX's CPU client "
                               f"read {_ASYNC_FLAG}=True when it started; call it first thing in the script")
        jax.config.update(_ASYNC_FLAG, False)
    return all(libc.mallopt(param, threshold_bytes) == 1 for param in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
