"""The two dtype rules every module shares: what a sum accumulates in, and which inputs are 16-bit.

fcnn computes bfloat16 and float16 inputs in their own dtype but sums and accumulates them in
float32 (conv products, bias and BatchNorm statistics, average pools' window sums, upsample's
gradient sums, losses), as XLA does for ``lax.conv``; float32 and float64 stay as they are. One
exception: where max-pool windows overlap, a cell adds its windows' gradients in the input's
dtype in every implementation (as XLA's select-and-scatter, "lax"'s gradient, does).
"""
from __future__ import annotations

import jax.numpy as jnp

__all__ = ["acc_dtype", "half_float"]


def acc_dtype(dtype):
    """The dtype in which fcnn accumulates values of the floating ``dtype``: float32 for the 16-bit
    floats (bfloat16, float16), else ``dtype`` itself (float32, float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def half_float(dtype) -> bool:
    """Whether ``dtype`` is a 16-bit float (bfloat16, float16): the inputs ``acc_dtype`` widens."""
    dtype = jnp.dtype(dtype)
    return bool(jnp.issubdtype(dtype, jnp.floating)) and dtype.itemsize == 2
