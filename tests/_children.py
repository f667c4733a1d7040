"""Helpers of the tests that run JAX in a subprocess with virtual CPU devices (XLA_FLAGS must ask for
them before JAX initialises): its environment, and the JSON line it prints."""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(n: int, **extra) -> dict:
    """The environment of a CPU subprocess with ``n`` virtual devices and this checkout on its path.

    The device count is appended to XLA_FLAGS, keeping the flags already there (conftest's fast-compile
    flags; replacing them made these subprocesses compile at XLA's defaults: this module took 34 s
    instead of 29 s in one process)."""
    env = os.environ
    return dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
                XLA_FLAGS=(env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip(), **extra)


def child_result(stdout):
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
