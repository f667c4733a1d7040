"""Test-session configuration shared by every test module.

float64 is enabled for the whole session (as JAX's own test suite does with
JAX_ENABLE_X64): gradient checks need it, and enabling it in one module at import
time would silently change every other module's defaults depending on collection
order. Library code is therefore explicit about float32 where it means float32.

``experiment`` (a fixture) loads a script of experiments/ as a module, the one loader the
tests of experiments/ share.
"""
import importlib
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # pictures are written to files, never shown

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

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
