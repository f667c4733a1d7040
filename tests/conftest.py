"""Test-session configuration shared by every test module.

float64 is enabled for the whole session (as JAX's own test suite does with
JAX_ENABLE_X64): gradient checks need it, and enabling it in one module at import
time would silently change every other module's defaults depending on collection
order. Library code is therefore explicit about float32 where it means float32.
"""
import os

os.environ.setdefault("MPLBACKEND", "Agg")  # pictures are written to files, never shown

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
