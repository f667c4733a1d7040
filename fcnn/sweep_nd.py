"""The N-d and decoder ops of the gradcheck sweep (``fcnn.sweep``): their quick cases, arguments,
functions and the implementation each is compared with.

    op              implementations (--impl)              compared with
    conv            ops.conv's (1-D and 3-D cases; 2-D   "reference" for lax, else "lax"
                    is "conv2d")
    conv_transpose  ops.conv_transpose's                  "reference" for lax, else "lax"
    upsample        "custom_vjp" (ops.upsample: its       "jax_image": ``jax.image.resize`` (integer
                    hand-written adjoint as the VJP)      scales, align_corners=False; same centres)
    adaptive_pool   "gather" (ops.adaptive_avg/max_pool)  "windows": PyTorch's windows reduced one
                                                          axis at a time (a box's mean or max is the
                                                          iterated one), autodiff

Every op here is linear in its inputs (adaptive max: piecewise, checked on tie-free inputs with
eps 1e-2), so the float64 finite differences are exact up to rounding. The quick cases hold what
exposes the decoder mutants of ``fcnn.mutants``: output_padding with stride 3, a random (asymmetric)
transposed kernel, upsampling in every rank, a 3-D conv with a depth stride unlike the others.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from fcnn import _checks, shapes
from fcnn import gradcheck as gc

__all__ = ["ND_OPS", "ND_DEFAULT_IMPL", "ND_IMPLS", "QUICK_ND", "arguments", "function", "reference_impl",
           "adaptive_pool_windows_reference", "upsample_jax_image"]

ND_OPS = ("conv", "conv_transpose", "upsample", "adaptive_pool")
ND_DEFAULT_IMPL = {"conv": "custom_vjp", "conv_transpose": "custom_vjp", "upsample": "custom_vjp",
                   "adaptive_pool": "gather"}
ND_IMPLS = {"upsample": ("custom_vjp", "jax_image"), "adaptive_pool": ("gather", "windows")}

# (op, name, x_shape, opts, inputs, w_shape): sweep.Case's fields; kernels in the layout's kernel layout
QUICK_ND: List[Tuple] = [
    ("conv", "c1d_s2_d2_g2_asym", (2, 9, 4), dict(stride=2, dilation=2, groups=2, padding=((1, 2),)), "normal",
     (3, 2, 4)),
    ("conv", "c1d_ncw_reflect", (1, 3, 8), dict(padding=2, padding_mode="reflect", layout="NCW"), "normal", (4, 3, 3)),
    ("conv", "c3d_s211_same", (2, 5, 4, 4, 2), dict(stride=(2, 1, 1), padding="SAME"), "normal", (2, 2, 3, 2, 3)),
    ("conv", "c3d_ncdhw_s121", (1, 2, 4, 5, 3), dict(stride=(1, 2, 1), dilation=(1, 1, 2), padding=1, layout="NCDHW"),
     "normal", (3, 2, 2, 2, 2)),
    ("conv_transpose", "ct1d_s3_op2", (2, 5, 2), dict(stride=3, padding=1, output_padding=2), "normal", (4, 3, 2)),
    ("conv_transpose", "ct2d_s2_p1_op1", (2, 4, 5, 3), dict(stride=2, padding=1, output_padding=1), "normal",
     (3, 3, 2, 3)),
    ("conv_transpose", "ct2d_g2_asym_d2", (1, 4, 3, 4), dict(stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2),
                                                             groups=2), "normal", (2, 3, 1, 4)),
    ("conv_transpose", "ct3d_ncdhw_same", (1, 2, 3, 2, 3), dict(stride=(2, 1, 2), padding="SAME", layout="NCDHW"),
     "normal", (2, 1, 2, 2, 3)),
    ("upsample", "nearest2d_x2", (2, 3, 4, 2), dict(scale=2, method="nearest"), "normal", None),
    ("upsample", "bilinear_x23", (1, 3, 4, 2), dict(scale=(2, 3), method="bilinear"), "normal", None),
    ("upsample", "linear1d_ncw_x3", (2, 2, 5), dict(scale=3, method="linear", layout="NCW"), "normal", None),
    ("upsample", "trilinear_x2", (1, 2, 3, 2, 1), dict(scale=2, method="trilinear"), "normal", None),
    ("adaptive_pool", "avg1d_7to3", (2, 7, 3), dict(kind="avg", output_size=3), "normal", None),
    ("adaptive_pool", "avg2d_nchw", (1, 2, 5, 7), dict(kind="avg", output_size=(3, 4), layout="NCHW"), "normal", None),
    ("adaptive_pool", "max2d_5x7to3x4", (2, 5, 7, 2), dict(kind="max", output_size=(3, 4)), "perm", None),
    ("adaptive_pool", "max3d_grow", (1, 3, 2, 4, 2), dict(kind="max", output_size=(4, 2, 3)), "perm", None),
]


def _layout(case) -> str:
    return shapes.normalize_layout(case.opts.get("layout"), len(case.x_shape))


def arguments(case, dtype) -> Tuple[list, List[str]]:
    """Positional arguments of the case and their names (conv: x, w, b; transposed conv: b has the
    kernel's input channels x groups; the rest: x alone)."""
    if case.op in ("conv", "conv_transpose"):
        _, ci, co = shapes.kernel_parts(case.w_shape, _layout(case))
        n_bias = co if case.op == "conv" else ci * case.opts.get("groups", 1)
        args = [gc.random_normal(1, case.x_shape, dtype), gc.random_normal(2, case.w_shape, dtype)]
        return (args + [gc.random_normal(3, (n_bias,), dtype)], ["x", "w", "b"]) if case.bias else (args, ["x", "w"])
    make = {"normal": gc.random_normal, "perm": gc.tie_free, "ties": gc.forced_ties}[case.inputs]
    return [make(1, case.x_shape, dtype)], ["x"]


def upsample_jax_image(x, scale, *, method="nearest", align_corners=False, layout=None):
    """``jax.image.resize`` to ``upsample``'s output shape: the same function at integer scales with
    half-pixel centres (jax: ``(j + 0.5) * in/out - 0.5``, edge weights renormalised = PyTorch's clamp)."""
    if align_corners:
        raise ValueError("the jax_image reference has no align_corners=True")
    out = shapes.upsample_output_shape(jnp.shape(x), scale, layout=layout)
    return jax.image.resize(x, out, method="nearest" if method == "nearest" else "linear", antialias=False)


def adaptive_pool_windows_reference(x, output_size, *, kind="avg", layout=None):
    """PyTorch's adaptive windows (``shapes.adaptive_pool_windows``), reduced one spatial axis at a time:
    ``reduce`` over a product of windows is ``reduce`` per axis in turn (mean or max)."""
    layout = shapes.normalize_layout(layout, jnp.ndim(x))
    axes = range(1, jnp.ndim(x) - 1) if shapes.is_channels_last(layout) else range(2, jnp.ndim(x))
    sizes = shapes.normalize_tuple(output_size, "output_size", len(axes))
    reduce = jnp.mean if kind == "avg" else jnp.max
    for axis, n_out in zip(axes, sizes):
        windows = shapes.adaptive_pool_windows(jnp.shape(x)[axis], n_out)
        x = jnp.stack([reduce(lax.slice_in_dim(x, s, e, axis=axis), axis=axis) for s, e in windows], axis=axis)
    return x


def function(case, impl) -> Callable:
    """``f(*args)`` of the case for ``impl``: an implementation name or a mutant's function."""
    from fcnn import ops

    opts = dict(case.opts)
    if case.op in ("conv", "conv_transpose"):
        op = ops.conv if case.op == "conv" else ops.conv_transpose
        fn = impl if callable(impl) else (lambda *a, **k: op(*a, impl=impl, **k))
        return lambda *a: fn(*a, precision="highest", **opts)
    if case.op == "upsample":
        if not callable(impl):
            impl = {"custom_vjp": ops.upsample, "jax_image": upsample_jax_image}[
                _checks.choice(impl, ND_IMPLS["upsample"], "impl")]
        scale = opts.pop("scale")
        return lambda x: impl(x, scale, **opts)
    kind, size = opts.pop("kind"), opts.pop("output_size")
    if callable(impl):
        return lambda x: impl(x, size, kind=kind, **opts)
    if _checks.choice(impl, ND_IMPLS["adaptive_pool"], "impl") == "windows":
        return lambda x: adaptive_pool_windows_reference(x, size, kind=kind, **opts)
    op = ops.adaptive_avg_pool if kind == "avg" else ops.adaptive_max_pool
    return lambda x: op(x, size, **opts)


def reference_impl(case, impl) -> str:
    """The implementation the case is compared with."""
    if case.op in ND_IMPLS:
        first, second = ND_IMPLS[case.op]
        return first if impl == second else second
    return "reference" if impl == "lax" else "lax"


def fd_eps(case) -> float:
    """Central-difference step: 1 for the linear ops (exact), 1e-2 for adaptive max on tie-free inputs."""
    return 1e-2 if case.opts.get("kind") == "max" else 1.0
