"""fcnn.runtime.keep_cpu_memory: per-call page faults of a large XLA:CPU result, counted by the
kernel (``getrusage``'s minor faults), in fresh processes with and without it; its refusals."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from fcnn import runtime

_PROBE = r"""
import json, resource, sys
if sys.argv[1] == "keep":
    from fcnn.runtime import keep_cpu_memory
    kept = keep_cpu_memory()
    kept_again = keep_cpu_memory()  # a second call is fine (the worker of a benchmark calls it per dtype)
else:
    kept = kept_again = None
import jax, jax.numpy as jnp
x = jnp.ones((96, 1024, 256), jnp.float32)  # 96 MiB: over glibc's 64 MiB per-thread heaps
f = jax.jit(lambda x: x * 2.0)  # a fresh 96 MiB result every call, freed when dropped
for _ in range(5):  # the arena settles on the result's block
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    y = f(x).block_until_ready()
    del y
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print(json.dumps({"kept": kept, "kept_again": kept_again, "faults": faults,
                  "async": __import__("fcnn.runtime").runtime.async_dispatch()}))
"""
_PAGES = 96 * 1024 * 256 * 4 // 4096  # the result's 4 KiB pages


def _probe(mode):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("GLIBC_TUNABLES", None)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _thp_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(runtime._glibc() is None, reason="mallopt is glibc's")
def test_kept_memory_takes_no_new_pages_per_call():
    kept = _probe("keep")
    assert kept["kept"] is True and kept["kept_again"] is True and kept["async"] is False
    assert kept["faults"] < 0.1 * _PAGES  # the result's block is reused (default: every page new, every call)
    if not _thp_always():  # with huge pages always on, new blocks fault in 2 MiB pages: too few to compare
        default = _probe("default")
        assert default["async"] is True
        assert default["faults"] > 0.5 * _PAGES  # glibc's defaults: the block's pages are new every call


def test_too_late_once_the_backend_started_with_async_dispatch(monkeypatch):
    jnp.zeros(1).block_until_ready()  # this process's backend is up
    monkeypatch.setattr(runtime, "_glibc", lambda: object())  # glibc, whose mallopt is never reached
    monkeypatch.setattr(runtime, "async_dispatch", lambda: True)  # as JAX starts (an in-process fcnn train may have kept)
    with pytest.raises(RuntimeError, match=r"keep_cpu_memory\(\) must run before JAX's first computation"):
        runtime.keep_cpu_memory()


def test_not_glibc_changes_nothing(monkeypatch):
    before = runtime.async_dispatch()
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    assert runtime.keep_cpu_memory() is False
    assert runtime.async_dispatch() is before


@pytest.mark.parametrize("bad,match", [(0, "threshold_bytes must be a positive int"),
                                       (2.5, "threshold_bytes must be a positive int"),
                                       (2 ** 31, r"threshold_bytes must be at most 2\*\*31 - 1")])
def test_bad_threshold_refused_before_any_setting(monkeypatch, bad, match):
    monkeypatch.setattr(runtime, "_glibc", lambda: pytest.fail("mallopt reached"))
    with pytest.raises(ValueError, match=match):
        runtime.keep_cpu_memory(bad)
