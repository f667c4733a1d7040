"""Test-session configuration shared by every test module.

float64 is enabled for the whole session (as JAX's own test suite does with
JAX_ENABLE_X64): gradient checks need it, and enabling it in one module at import
time would silently change every other module's defaults depending on collection
order. Library code is therefore explicit about float32 where it means float32.

XLA's compilation cache is on for the session, in a new temporary directory (removed at exit),
and the processes the tests start inherit it: a program XLA has compiled once (the same model's
step built again by another test, a run reloaded by ``fcnn viz``, LeNet's initialisers in each
benchmark worker) is then loaded, not compiled again. Keyed by the program itself, so it cannot
change a result. ``FCNN_TEST_XLA_CACHE=0`` turns it off; a ``JAX_COMPILATION_CACHE_DIR`` set
outside is used as it is.

XLA:CPU compiles the tests' programs with LLVM optimisation level 0 and without its MLIR fusion
emitters (``--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false``, appended to
``XLA_FLAGS`` and inherited by child processes; ``FCNN_TEST_XLA_OPT=1`` keeps XLA's defaults):
most of the suite's time is compiling programs that then run once (a profile of two conv modules:
41 of 74 s in XLA's backend compile, ~0.1 s per program), and both flags change how fast the machine
code is, not what it computes (the whole suite passes either way; no test times compiled code).
Measured on the 2-core machine with ``-n 2``: level 0, 2026-12-02, 4m34s -> 3m38s wall; the
emitters off too, 2026-12-03 (a slower day), 6m13s -> 3m42s (user time 11m28s -> 6m37s).

Session fixtures: ``experiment`` loads a script of experiments/ as a module (the one loader the
tests of experiments/ share); ``trained_detector`` is tests/_patterns.py's detector trained once
for test_attribution.py and test_viz.py, shared by the xdist workers through a file.
"""
import atexit
import importlib
import os
import pickle
import shutil
import sys
import tempfile

try:
    import fcntl  # POSIX: the workers' lock on the shared trained detector
except ImportError:  # pragma: no cover - Windows
    fcntl = None

os.environ.setdefault("MPLBACKEND", "Agg")  # pictures are written to files, never shown
if os.environ.get("FCNN_TEST_XLA_OPT") != "1":
    for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
        if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):  # a value set outside is kept
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
if os.environ.get("FCNN_TEST_XLA_CACHE", "1") != "0" and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _XLA_CACHE = tempfile.mkdtemp(prefix="fcnn-tests-xla-cache-")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE  # read by JAX here and in every child process
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # small programs too

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # in case JAX was imported before this file
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")))

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def load_experiment(name: str):
    """experiments/NAME.py as a module, imported the way ``python experiments/NAME.py`` finds its
    neighbours (``bench_peers``, ``_timing``): with experiments/ first on ``sys.path``. Imported once
    per session, like any module; the scripts keep no state between calls of their ``main``."""
    if EXPERIMENTS not in sys.path:
        sys.path.insert(0, EXPERIMENTS)
    mod = importlib.import_module(name)
    where = os.path.dirname(os.path.abspath(mod.__file__))
    if where != EXPERIMENTS:
        raise ImportError(f"{name!r} was imported from {where}, not from {EXPERIMENTS}: a name clash")
    return mod


@pytest.fixture(scope="session")
def experiment():
    """``experiment("scaling")`` -> the module of experiments/scaling.py (see ``load_experiment``)."""
    return load_experiment


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory):
    """``(ds, model, params, state)``: the localisation detector of tests/_patterns.py, trained once
    per run. Under pytest-xdist its two modules may land on different workers: the first worker
    to need it trains it and saves params and state (pickled, exact) in the run's shared temporary
    directory, under a file lock; the other waits, then loads them and rebuilds the (seeded) data
    and model. Without ``fcntl`` (Windows) each worker trains its own."""
    from _patterns import detector_net, pattern_data, train_detector

    if not os.environ.get("PYTEST_XDIST_WORKER") or fcntl is None:
        return train_detector()
    shared = tmp_path_factory.getbasetemp().parent  # one per run, above every worker's own
    with open(shared / "trained_detector.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        saved = shared / "trained_detector.pkl"
        if saved.exists():
            with open(saved, "rb") as f:
                params, state = jax.tree.map(jax.numpy.asarray, pickle.load(f))
            return pattern_data(), detector_net(), params, state
        ds, model, params, state = train_detector()
        partial = saved.with_suffix(".tmp")
        with open(partial, "wb") as f:
            pickle.dump(jax.device_get((params, state)), f)
        os.replace(partial, saved)
        return ds, model, params, state
