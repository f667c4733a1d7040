"""fcnn.runtime: ``keep_cpu_memory``, by the page faults (``getrusage``'s minor faults, counted by the
kernel) of blocks malloc'ed in the main arena and in a thread's own, and of an XLA:CPU program whose
temporaries come in heap-limited blocks (``compiler_options()``), in fresh processes with glibc's
defaults, with the call, and after ``make_train_step`` (which makes it on CPU); the environment switch
and its check; the heap limit left out under JAX's persistent
compilation cache, which cannot store a program with several heaps."""
import json
import os
import shutil
import statistics
import subprocess
import sys

import jax
import pytest

from fcnn import runtime

_PROBE = r"""
import ctypes, json, resource, sys
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: pages fault in 4 KiB each, huge pages or not
mode, workload = sys.argv[1:3]
kept = None
if mode == "keep":
    from fcnn.runtime import keep_cpu_memory
    kept = [keep_cpu_memory(), keep_cpu_memory()]  # a second call is fine
import jax, jax.numpy as jnp
from fcnn.runtime import compiler_options
if mode == "make_train_step":  # built, never called: building it on CPU is what keeps
    import optax
    from fcnn import layers
    from fcnn.step import make_train_step
    make_train_step(layers.Dense(2), optax.sgd(0.1))
SIZE = 1536 * 4096 * 4  # 24 MiB: under glibc's mmap threshold once the first such block is freed

if workload == "xla":  # four 24 MiB arrays live at once, in heaps of the 30 MiB limit; threads as XLA picks them
    def four_temporaries(x):
        parts = jax.lax.optimization_barrier(tuple(x * float(i + 2) for i in range(4)))
        return sum(jnp.sum(p) for p in parts)
    f = jax.jit(four_temporaries, compiler_options=compiler_options())
    x = jnp.ones((1536, 4096), jnp.float32)
    call = lambda: f(x).block_until_ready()
else:  # blocks from glibc's malloc, in the main arena (main thread) or a thread's own arena: four of 24 MiB,
    libc = ctypes.CDLL(None)  # or two of 48 MiB, over the highest mmap threshold, under one arena heap
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = (2 * SIZE, 2) if workload == "large" else (SIZE, 4)
    def call():
        blocks = [libc.malloc(size) for _ in range(count)]
        for b in blocks:
            ctypes.memset(b, 1, size)
        for b in blocks:
            libc.free(b)
faults = []
def measure():
    for _ in range(40):  # the first calls populate the arenas
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        call()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
if workload in ("thread", "large"):
    import threading
    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()
else:
    measure()
print(json.dumps({"kept": kept, "faults": faults[20:]}))
"""
_PAGES = 1536 * 4096 * 4 // 4096  # one temporary's 4 KiB pages


def _run_json(script, *argv, **env_extra):
    """The last stdout line of ``python -c script *argv`` as JSON, in a fresh CPU process with glibc's and
    JAX's defaults (no allocator tunables nor preloaded allocator, no fcnn switch, not this suite's
    compilation cache, which would drop the heap limit) and ``env_extra`` on top."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("MALLOC_")
           and name not in ("GLIBC_TUNABLES", "LD_PRELOAD", runtime.ENV_VAR, "JAX_COMPILATION_CACHE_DIR")}
    env.update(JAX_PLATFORMS="cpu", **env_extra)
    out = subprocess.run([sys.executable, "-c", script, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe(mode, workload, **env_extra):
    got = _run_json(_PROBE, mode, workload, **env_extra)
    return got["kept"], statistics.median(got["faults"])


# the probes run in fresh processes without LD_PRELOAD: this process may have another malloc preloaded
_GLIBC_ONLY = pytest.mark.skipif(runtime._libc() is None, reason="mallopt is glibc's")


@_GLIBC_ONLY
@pytest.mark.parametrize("arena", ["main", "thread", "large"])
def test_kept_memory_takes_no_new_pages_per_call(arena):
    """Blocks malloc'ed, written and freed each call: four of 24 MiB from the main thread (the main arena,
    which ``sbrk`` grows and trims) or from a worker thread of a process with few threads (an arena of
    its own, two 64 MiB heaps), and two of 48 MiB from a worker thread, over the highest mmap threshold
    (glibc's defaults mmap each, and unmap it when freed). With the defaults the next call takes new
    pages; kept memory takes none, whether ``keep_cpu_memory()`` or building a ``make_train_step`` step
    set it, and the step's switch turned off leaves the defaults."""
    _, default = _probe("default", arena)  # all four back from the main arena's top, the second heap from a
    assert default > _PAGES  # thread's arena, both large blocks: 4, 2 and 4 blocks' pages on the 2-core Xeon
    kept, faults = _probe("keep", arena)
    assert kept == [True, True] and faults < 0.01 * _PAGES
    if arena == "main":  # a worker thread may share an arena once make_train_step has started JAX's threads
        _, after_step = _probe("make_train_step", arena)
        assert after_step < 0.01 * _PAGES
        _, turned_off = _probe("make_train_step", arena, **{runtime.ENV_VAR: "0"})
        assert turned_off > _PAGES


@_GLIBC_ONLY
def test_kept_memory_serves_an_xla_programs_temporaries_again():
    """XLA:CPU's temporaries, four 24 MiB arrays in heaps under the limit (``compiler_options()``), on
    whichever worker threads XLA picks: after ``keep_cpu_memory()`` a call takes no new pages. (With
    glibc's defaults they took two arrays' pages a call on the 2-core Xeon and none on CI's machine:
    which arenas XLA's threads free whole heaps in depends on the machine, so the contrast is the test
    above.)"""
    kept, faults = _probe("keep", "xla")
    assert kept == [True, True] and faults < 0.01 * _PAGES


def test_make_train_step_keeps_on_cpu_unless_turned_off(monkeypatch):
    import optax

    from fcnn import layers
    from fcnn.step import make_train_step

    if jax.default_backend() != "cpu":
        pytest.skip("make_train_step keeps CPU memory on CPU only")
    calls = []
    monkeypatch.setattr(runtime, "keep_cpu_memory", lambda: calls.append("keep") or True)
    monkeypatch.delenv(runtime.ENV_VAR, raising=False)
    make_train_step(layers.Dense(2), optax.sgd(0.1))
    monkeypatch.setenv(runtime.ENV_VAR, "1")
    make_train_step(layers.Dense(2), optax.sgd(0.1))
    assert calls == ["keep", "keep"]
    monkeypatch.setenv(runtime.ENV_VAR, "0")
    make_train_step(layers.Dense(2), optax.sgd(0.1))
    assert calls == ["keep", "keep"]
    monkeypatch.setenv(runtime.ENV_VAR, "1")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # a GPU or TPU run leaves the host's allocator alone
    make_train_step(layers.Dense(2), optax.sgd(0.1))
    assert calls == ["keep", "keep"]


@pytest.mark.parametrize("bad", ["", "yes", "true", "2"])
def test_a_bad_switch_is_refused_naming_it_before_any_setting(monkeypatch, bad):
    import optax

    from fcnn import layers
    from fcnn.step import make_train_step

    monkeypatch.setattr(runtime, "keep_cpu_memory", lambda: pytest.fail("mallopt reached"))
    monkeypatch.setenv(runtime.ENV_VAR, bad)
    with pytest.raises(ValueError, match=r"FCNN_KEEP_CPU_MEMORY must be one of 0, 1; got"):
        runtime.keep_cpu_memory_by_default()
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match=r"FCNN_KEEP_CPU_MEMORY must be one of 0, 1"):
            make_train_step(layers.Dense(2), optax.sgd(0.1))


def test_not_glibc_changes_nothing(monkeypatch):
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    assert runtime.keep_cpu_memory() is False
    monkeypatch.delenv(runtime.ENV_VAR, raising=False)
    assert runtime.keep_cpu_memory_by_default() is False


_INTERPOSED_MALLOC = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
static void *(*next_malloc)(size_t);
void *malloc(size_t size) {  /* what a preloaded allocator does: the process's malloc is this one */
    if (!next_malloc) next_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    return next_malloc(size);
}
"""


@_GLIBC_ONLY
def test_a_preloaded_malloc_is_left_alone(tmp_path):
    """With another ``malloc`` in ``LD_PRELOAD`` (a jemalloc or tcmalloc, here a library of our own that
    defines one), glibc's settings would not reach the process's allocations: keep_cpu_memory() changes
    nothing and says so, and make_train_step builds as usual."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the preloaded malloc")
    (tmp_path / "interposed.c").write_text(_INTERPOSED_MALLOC)
    library = tmp_path / "interposed.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(library), str(tmp_path / "interposed.c"), "-ldl"], check=True)
    script = ("import json, optax; from fcnn import layers, runtime; from fcnn.step import make_train_step\n"
              "make_train_step(layers.Dense(2), optax.sgd(0.1))\n"
              "print(json.dumps([runtime.keep_cpu_memory(), runtime.keep_cpu_memory_by_default()]))")
    assert _run_json(script, LD_PRELOAD=str(library)) == [False, False]
    assert _run_json(script) == [True, True]


def test_the_heap_limit_is_under_glibcs_highest_mmap_threshold():
    """The train steps' heaps (fcnn.step.CPU_HEAP_OPTIONS) come from the arenas under glibc's defaults too
    (``FCNN_KEEP_CPU_MEMORY=0``): a block over the highest threshold glibc's dynamic rule reaches is
    mmapped and given back every call."""
    limit = runtime.CPU_HEAP_OPTIONS["xla_multiheap_size_constraint_per_heap"]
    assert limit < runtime.MMAP_THRESHOLD_BYTES


_CACHE_PROBE = r"""
import json, os, sys, warnings
import jax, numpy as np, optax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
from fcnn import layers, runtime
from fcnn.combinators import serial
from fcnn.activations import Relu
from fcnn.step import make_train_step, plain_train_step
runtime.CPU_HEAP_OPTIONS = {"xla_multiheap_size_constraint_per_heap": 256 * 1024}  # several heaps for this step
model = serial(layers.Conv2D(8, 3, padding="SAME"), Relu(), layers.Flatten(), layers.Dense(10))
x, y = np.ones((16, 16, 16, 1), np.float32), np.zeros(16, np.int32)
_, params, state = model.init(jax.random.PRNGKey(0), x.shape)
opt = optax.sgd(0.1)
args = (params, state, opt.init(params), (x, y), jax.random.PRNGKey(1))
out = {"options": runtime.compiler_options()}

def cache_warnings(step):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jax.block_until_ready(step(*args))
    return [str(w.message)[:200] for w in caught if "persistent compilation cache" in str(w.message)]

out["ours"] = cache_warnings(make_train_step(model, opt, donate=False))
out["stored"] = sorted(n for n in os.listdir(sys.argv[1]) if n.startswith("jit_one_step"))
forced = {**runtime.compiler_options(), **runtime.CPU_HEAP_OPTIONS}
out["forced"] = cache_warnings(jax.jit(plain_train_step(model, opt), compiler_options=forced))
print(json.dumps(out))
"""


def test_under_the_persistent_cache_the_train_step_goes_without_the_heap_limit_and_is_stored(tmp_path):
    """With JAX's persistent compilation cache on, compiler_options() leaves the heap limit out and the
    train step is stored; the same step with the limit forced cannot be (XLA:CPU serializes one block of
    temporaries only), which is why. The limit is patched to 256 KiB, so this small step needs several."""
    if jax.default_backend() != "cpu":
        pytest.skip("the heap limit is for XLA:CPU")
    got = _run_json(_CACHE_PROBE, str(tmp_path))
    assert "xla_multiheap_size_constraint_per_heap" not in (got["options"] or {})
    assert got["ours"] == [] and len(got["stored"]) == 1
    assert any("Multiple temp buffer allocations" in w for w in got["forced"])
