"""fcnn.runtime: ``keep_cpu_memory``, by the page faults of an XLA:CPU program whose temporaries come
in heap-limited blocks (``compiler_options()``), counted by the kernel (``getrusage``'s minor faults)
in fresh processes with glibc's defaults, with the call, and after ``make_train_step`` (which makes
it on CPU); the environment switch and its check; the heap limit left out under JAX's persistent
compilation cache, which cannot store a program with several heaps."""
import json
import os
import statistics
import subprocess
import sys

import jax
import pytest

from fcnn import runtime

_PROBE = r"""
import json, resource, sys
mode = sys.argv[1]
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

def four_temporaries(x):  # four 24 MiB arrays live at once: four heaps of the 30 MiB limit, two 64 MiB arena heaps
    parts = jax.lax.optimization_barrier(tuple(x * float(i + 2) for i in range(4)))
    return sum(jnp.sum(p) for p in parts)

f = jax.jit(four_temporaries, compiler_options=compiler_options())
x = jnp.ones((1536, 4096), jnp.float32)
faults = []
for _ in range(40):  # the first calls populate each worker thread's arena
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults[20:]}))
"""
_PAGES = 1536 * 4096 * 4 // 4096  # one temporary's 4 KiB pages


def _run_json(script, *argv, **env_extra):
    """The last stdout line of ``python -c script *argv`` as JSON, in a fresh CPU process with glibc's and
    JAX's defaults (no allocator tunables, no fcnn switch, not this suite's compilation cache, which would
    drop the heap limit) and ``env_extra`` on top."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_",
                           runtime.ENV_VAR, "JAX_COMPILATION_CACHE_DIR")}
    env.update(JAX_PLATFORMS="cpu", **env_extra)
    out = subprocess.run([sys.executable, "-c", script, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe(mode, **env_extra):
    got = _run_json(_PROBE, mode, **env_extra)
    return got["kept"], statistics.median(got["faults"])


def _thp_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(runtime._glibc() is None, reason="mallopt is glibc's")
def test_kept_memory_takes_no_new_pages_per_call():
    kept, faults = _probe("keep")
    assert kept == [True, True]
    assert faults < 0.01 * _PAGES  # the arenas' heaps are reused (glibc's defaults: two arrays' pages new every call)
    _, after_step = _probe("make_train_step")
    assert after_step < 0.01 * _PAGES
    if not _thp_always():  # with huge pages always on, new heaps fault in 2 MiB pages: too few to compare
        _, default = _probe("default")
        assert default > 0.5 * _PAGES  # glibc gives a freed arena heap back, and the next call touches new pages
        _, turned_off = _probe("make_train_step", **{runtime.ENV_VAR: "0"})
        assert turned_off > 0.5 * _PAGES


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


def test_the_heap_limit_is_under_the_kept_threshold():
    """The train steps' heaps (fcnn.step.CPU_HEAP_OPTIONS) must come from the arenas: a block over the mmap
    threshold keep_cpu_memory sets is mmapped and given back every call."""
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
