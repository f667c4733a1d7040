"""The conv impl "onednn": oneDNN's 2-D convolutions called from XLA programs through ``jax.ffi``.

XLA:CPU's own convolutions are Eigen's: on a CPU with AVX-512 they took 1.18-1.45x PyTorch's time on
the 3x3 stride-1 layers with 64-256 input channels (PyTorch runs oneDNN's kernels), and for bfloat16
they compute in float32 (no AMX); no XLA option reaches oneDNN's convolutions in this jaxlib
(docs/perf_notes.md items 53, 59, 61).
This implementation calls oneDNN (the ``onednn-cpu-gomp`` wheel, GNU OpenMP threads) for the forward
and both gradients, each an XLA custom call to a handler in ``onednn_conv.cc``:

    forward           z  = x * w                (NHWC x, HWIO w)
    backward_data     dX = the adjoint in x of the forward, given dZ and w
    backward_weights  dW = the adjoint in w, given x and dZ (float32: 16-bit products accumulate in f32)

With a bias (a conv layer's), two handlers carry it: ``forward_bias`` adds the (cout,) bias inside
oneDNN's convolution, and ``backward_weights_bias`` returns dB = sum(dZ) over batch and space
(float32) with dW from the same pass over dZ. XLA then has no bias add and no bias-gradient
reduction of its own to run per layer (docs/perf_notes.md item 63).

The gradient of each is a combination of the three (they are adjoints of one bilinear map: for a
cotangent ``g`` of dX, ``d(dZ) = forward(g, w)`` and ``dw = backward_weights(g, dZ)``; for ``G`` of
dW, ``dx = backward_data(dZ, G)`` and ``d(dZ) = forward(x, G)``; with the bias, a cotangent ``(G, g)``
of (dW, dB) gives ``d(dZ) = forward_bias(x, G, g)``), so gradients of gradients work as
for the other custom-VJP implementations (no forward mode). Under ``vmap`` (per-example gradients) each
call is XLA's batched convolution instead (``jax.custom_batching.custom_vmap``).

What it computes: 2-D, groups 1, float32 or bfloat16, any stride, padding ("zeros") and dilation.
Anything else (float64, float16, groups > 1) is computed by lax, forward and both gradients: the
float64 checks of the other implementations are lax's here, and this one is checked in float32 and
bfloat16 against float64 references (tests/test_onednn.py). oneDNN skips the padded taps that
XLA's convolution multiplies (0 * inf = NaN): a kernel with a non-finite value takes lax's forward and
input gradient instead (one ``lax.cond``, ``conv_vjp.if_finite``), so z and dX have lax's NaN/inf
pattern (conv.py's table; without the guard both differ at the borders), in every geometry tested:
strides, asymmetric pads, dilation (which of XLA's formulations of dX gives that pattern inside the
``lax.cond`` depends on the stride: ``_lax_backward_data``). A non-finite output gradient
is outside that table: XLA's own dW multiplies padded taps by it in a plain program and skips them
inside a ``lax.cond``, as oneDNN does.

Threads: oneDNN runs each call on an OpenMP team (the wheel's GNU OpenMP) of every core, except
convolutions below ``SERIAL_BELOW_MFLOP`` (per dtype), which run on one thread (``threads``): inside
XLA's schedule a small call's team start-up and contention cost more than the second core gives
(LeNet-5's b64 bf16 step 2.6-2.8 against 3.0-3.4 ms; docs/perf_notes.md item 64).

Availability: the handlers are compiled on first use with the system C++ compiler (``$CXX`` or
``g++``, with ``-fopenmp`` for the team size) against jaxlib's FFI headers and the oneDNN wheels (``pip install "fcnn[onednn]"``), into
``$FCNN_CACHE_DIR`` (default ``~/.cache/fcnn``), once per source / jax / oneDNN combination; a failed
step makes ``available()`` False with the reason (``unavailable_reason()``), never an error at
import. ``FCNN_ONEDNN=0`` turns it off (``impl="auto"`` then keeps XLA's convolutions). CPU only:
the custom calls are registered for the "cpu" platform.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap

from fcnn import shapes
from fcnn.channels import add_channels
from fcnn.ops.conv_vjp import conv_backward_bias, conv_backward_input, conv_backward_kernel, if_finite, lax_conv

__all__ = ["available", "unavailable_reason", "supports", "refusal", "computes", "kernels", "conv", "threads", "SOURCE",
           "TARGETS", "WHEELS", "SERIAL_BELOW_MFLOP"]

SOURCE = Path(__file__).with_name("onednn_conv.cc")
# the XLA FFI handlers of SOURCE, by role
TARGETS = {"forward": "FcnnOnednnConvForward", "backward_data": "FcnnOnednnConvBackwardData",
           "backward_weights": "FcnnOnednnConvBackwardWeights", "forward_bias": "FcnnOnednnConvForwardBias",
           "backward_weights_bias": "FcnnOnednnConvBackwardWeightsBias"}
# the library and its headers (the "onednn" extra): (distribution, file located in it)
WHEELS = (("onednn-cpu-gomp", "libdnnl.so"), ("onednn-devel-cpu-gomp", "dnnl.hpp"))
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

Geometry = Tuple[tuple, tuple, tuple, tuple]  # stride, pads, dilation, input spatial sizes
# Convolutions below this many MFLOP (2 * multiply-adds of one call) run on one OpenMP thread instead
# of all cores: inside XLA's schedule a second thread's start-up and contention cost a small call more
# than it gives (docs/perf_notes.md item 64). bfloat16 runs ~5-6x float32's rate on AMX (item 62's
# per-layer table), hence its higher bound.
SERIAL_BELOW_MFLOP = {jnp.dtype(jnp.float32): 10.0, jnp.dtype(jnp.bfloat16): 80.0}


def _cache_dir() -> Path:
    return Path(os.environ.get("FCNN_CACHE_DIR") or Path.home() / ".cache" / "fcnn")


def _wheel_file(dist: str, name: str) -> Optional[Path]:
    """The installed file ``name`` of distribution ``dist`` (None if either is missing)."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == name:
            path = Path(f.locate()).resolve()
            return path if path.exists() else None
    return None


def _build(out: Path, compiler: str, include: Path, libdir: Path) -> Optional[str]:
    """Compile SOURCE into ``out`` (written under another name, then renamed: a concurrent build or a
    crash never leaves a partial library there). Returns None, or what went wrong."""
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".so.tmp", dir=out.parent)
        os.close(fd)
        cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", str(SOURCE), "-o", tmp,
               f"-I{jax.ffi.include_dir()}", f"-I{include}", f"-L{libdir}", "-ldnnl", f"-Wl,-rpath,{libdir}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()
            return f"compiling {SOURCE.name} failed ({' '.join(cmd)}): {' | '.join(errors[:5])[:800]}"
        os.replace(tmp, out)
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"compiling {SOURCE.name} into {out.parent} failed: {e}"
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


@functools.lru_cache(maxsize=None)
def _load() -> Tuple[Optional[ctypes.CDLL], str]:
    """(the handlers' library, registered with jax.ffi; "") or (None, why not). Once per process."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"oneDNN's wheels are for Linux x86_64, this is {platform.system()} {platform.machine()}"
    found = {dist: _wheel_file(dist, name) for dist, name in WHEELS}
    missing = [dist for dist, path in found.items() if path is None]
    if missing:
        return None, f"the oneDNN wheels are not installed ({', '.join(missing)}): pip install \"fcnn[onednn]\""
    lib, header = found["onednn-cpu-gomp"], found["onednn-devel-cpu-gomp"]
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        return None, "no C++ compiler to build the oneDNN handlers (set $CXX, or install g++)"
    versions = [importlib.metadata.version(dist) for dist in ("jaxlib", *(d for d, _ in WHEELS))]
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, str(lib), *versions]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"libfcnn_onednn-{key}.so"
    if not out.exists():
        error = _build(out, compiler, header.parent, lib.parent)
        if error:
            return None, error
    try:
        handlers = ctypes.CDLL(str(out))
        for target in TARGETS.values():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handlers, target)), platform="cpu")
    except (OSError, AttributeError) as e:
        return None, f"loading {out} failed: {e}"
    handlers.fcnn_onednn_kernels.restype = ctypes.c_char_p
    return handlers, ""


def available() -> bool:
    """Whether impl="onednn" runs oneDNN here (builds the handlers on the first call; see the module
    docstring). False when ``FCNN_ONEDNN=0``."""
    return os.environ.get("FCNN_ONEDNN", "1") != "0" and _load()[0] is not None


def unavailable_reason() -> str:
    """Why ``available()`` is False ("" when it is True)."""
    if os.environ.get("FCNN_ONEDNN", "1") == "0":
        return "turned off by FCNN_ONEDNN=0"
    return _load()[1]


def supports(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> bool:
    """Whether impl="onednn" applies to a convolution of this geometry: 2-D, on the CPU backend, and
    oneDNN available."""
    del stride, dilation  # every stride and dilation
    return len(kernel) == 2 and jax.default_backend() == "cpu" and available()


def refusal(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> str:
    """The error of a convolution ``supports`` rejects: not 2-D, or oneDNN unavailable (with the reason)."""
    if len(kernel) != 2:
        return (f"impl='onednn' computes only 2-D convolutions; got kernel {tuple(kernel)}, stride {tuple(stride)}, "
                f"dilation {tuple(dilation)}")
    if jax.default_backend() != "cpu":
        return f"impl='onednn' runs on the CPU backend only, this one is {jax.default_backend()!r}"
    return f"impl='onednn' needs oneDNN, which is not available here: {unavailable_reason()}"


def computes(dtype, groups: int) -> bool:
    """Whether oneDNN (not lax) computes a convolution of this dtype and group count."""
    return groups == 1 and jnp.dtype(dtype) in DTYPES


def kernels() -> list:
    """The oneDNN kernels picked so far in this process, one "<role and geometry> -> <kernel>" line each
    (e.g. ``brgconv:avx512_core_amx``; a geometry once per thread that ran it, since each thread keeps
    its own primitives); [] when unavailable."""
    handlers = _load()[0]
    return handlers.fcnn_onednn_kernels().decode().splitlines() if handlers is not None else []


# ----------------------------------------------------------------------------- the calls
def threads(x_shape, w_shape, z_shape, dtype) -> int:
    """The OpenMP team size of a convolution's calls: 1 below ``SERIAL_BELOW_MFLOP`` for its dtype,
    else 0 (OpenMP's default: every core). The same for its forward and both gradients."""
    mflop = 2 * math.prod(z_shape) * math.prod(w_shape[:-1]) / 1e6
    return 1 if mflop < SERIAL_BELOW_MFLOP.get(jnp.dtype(dtype), 0.0) else 0


def _call(role: str, out, geo: Geometry, team: int, *args):
    """One oneDNN call: ``out`` a ``jax.ShapeDtypeStruct`` (or a tuple of them), ``team`` its OpenMP
    team size (``threads``), ``args`` its arrays."""
    if _load()[0] is None:  # registers the handlers on first use
        raise RuntimeError(f"impl='onednn' is not available here: {_load()[1]}")
    stride, pads, dilation, _ = geo
    (plh, phh), (plw, phw) = pads
    attrs = dict(sh=stride[0], sw=stride[1], plh=plh, phh=phh, plw=plw, phw=phw, dh=dilation[0], dw=dilation[1],
                 threads=team)
    call = jax.ffi.ffi_call(TARGETS[role], out)  # vmap: _batched_by_lax
    return call(*args, **{k: np.int64(v) for k, v in attrs.items()})


def _lax_forward(x, w, geo, b=None):
    stride, pads, dilation, _ = geo
    z = lax_conv(x, w, stride, pads, dilation, 1, None)
    return z if b is None else add_channels(z, b)


def _lax_backward_data(dz, w, geo):
    """dX as a plain lax program computes it, for the guard (a non-finite kernel) and vmap.

    XLA's NaN/inf pattern for a non-finite kernel depends on where its convolution runs: inside the
    guard's ``lax.cond`` JAX's own transpose skipped the padded taps that it multiplies in a plain
    program at stride 1, while fcnn's ``conv_backward_input`` (the full convolution of the
    stride-dilated dZ) multiplied them there but also multiplied the stride holes, which JAX's
    transpose skips at a stride (jaxlib 0.10.2; tests/test_onednn.py checks seven geometries). So:
    ``conv_backward_input`` at stride 1, JAX's transpose of the lax forward at a stride."""
    stride, pads, dilation, in_sizes = geo
    if all(s == 1 for s in stride):
        return conv_backward_input(dz, w, in_sizes, stride=stride, pads=pads, dilation=dilation, groups=1)
    x = jax.ShapeDtypeStruct((dz.shape[0], *in_sizes, w.shape[2]), dz.dtype)
    return jax.linear_transpose(lambda x: _lax_forward(x, w, geo), x)(dz)[0]


def _lax_backward_weights(x, dz, geo, w_shape, bias=False):
    """dW in float32, and with ``bias`` (dW, dB)."""
    stride, pads, dilation, _ = geo
    dw = conv_backward_kernel(x, dz, w_shape[:2], stride=stride, pads=pads, dilation=dilation,
                              groups=1).astype(jnp.float32)
    return (dw, conv_backward_bias(dz.astype(jnp.float32))) if bias else dw


def _batched_by_lax(call, lax_fn):
    """``call`` (one oneDNN call) with a vmap rule that runs ``lax_fn`` batched instead:
    per-example work (``fcnn.per_example``) is one batched XLA convolution, not one oneDNN call per
    example (LeNet-5's per-example gradients at b64: 20.9 ms with those calls, 13.5 with XLA's)."""
    call = custom_vmap(call)

    @call.def_vmap
    def _rule(axis_size, in_batched, *args):
        del axis_size
        out = jax.vmap(lax_fn, in_axes=tuple(0 if batched else None for batched in in_batched))(*args)
        return out, jax.tree.map(lambda _: True, out)

    return call


@functools.lru_cache(maxsize=None)
def _calls(geo: Geometry, x_shape: tuple, w_shape: tuple, dtype) -> dict:
    """The oneDNN calls of one geometry, by role (``TARGETS``): forward(x, w), backward_data(dz, w),
    backward_weights(x, dz), forward_bias(x, w, b) and backward_weights_bias(x, dz) -> (dW, dB)."""
    stride, pads, dilation, _ = geo
    z_shape = shapes.conv_output_shape(x_shape, w_shape, stride=stride, padding=pads, dilation=dilation)
    dw = jax.ShapeDtypeStruct(w_shape, jnp.float32)
    db = jax.ShapeDtypeStruct(w_shape[-1:], jnp.float32)
    team = threads(x_shape, w_shape, z_shape, dtype)

    def out(shape):
        return lambda *args: jax.ShapeDtypeStruct(shape, args[0].dtype)

    outputs = {"forward": out(z_shape), "backward_data": out(x_shape), "backward_weights": lambda *a: dw,
               "forward_bias": out(z_shape), "backward_weights_bias": lambda *a: (dw, db)}
    by_lax = {"forward": lambda x, w: _lax_forward(x, w, geo),
              "backward_data": lambda dz, w: _lax_backward_data(dz, w, geo),
              "backward_weights": lambda x, dz: _lax_backward_weights(x, dz, geo, w_shape),
              "forward_bias": lambda x, w, b: _lax_forward(x, w, geo, b),
              "backward_weights_bias": lambda x, dz: _lax_backward_weights(x, dz, geo, w_shape, bias=True)}
    return {role: _batched_by_lax(lambda *args, role=role: _call(role, outputs[role](*args), geo, team, *args),
                                  by_lax[role]) for role in TARGETS}


def _adjoint_vjp(primal, nondiff_argnums=(2,)):
    """``primal(*arrays, *static)`` (one of the calls) as a custom VJP whose residuals are its arrays:
    returns it and a decorator that gives it its backward rule ``bwd(*static, arrays, g)``."""
    f = jax.custom_vjp(primal, nondiff_argnums=nondiff_argnums)
    n_arrays = min(nondiff_argnums)

    def rule(bwd):
        f.defvjp(lambda *args: (f(*args), args[:n_arrays]), bwd)
        return bwd

    return f, rule


def _forward_primal(x, w, b, geo):
    """z = x * w (+ b, when ``b`` is not None: the "forward_bias" call)."""
    role, arrays = ("forward", (x, w)) if b is None else ("forward_bias", (x, w, b))
    return if_finite((w,), _calls(geo, x.shape, w.shape, x.dtype)[role],
                     lambda x, w, *b: _lax_forward(x, w, geo, *b), *arrays)


def _backward_data_primal(dz, w, geo):
    return if_finite((w,), _calls(geo, (dz.shape[0], *geo[3], w.shape[2]), w.shape, dz.dtype)["backward_data"],
                     lambda dz, w: _lax_backward_data(dz, w, geo), dz, w)


# unguarded: a non-finite dZ (outside conv.py's table) meets padded taps only in XLA's own dW, which
# multiplies them (0 * NaN) in a plain program and skips them inside a lax.cond, as oneDNN does
def _backward_weights_primal(x, dz, geo, w_shape, bias):
    """dW (float32), or with ``bias`` (dW, dB) from one call ("backward_weights_bias")."""
    return _calls(geo, x.shape, w_shape, x.dtype)["backward_weights_bias" if bias else "backward_weights"](x, dz)


# each call's gradient is made of the others (the adjoints of one bilinear map; module docstring)
_forward, _forward_vjp = _adjoint_vjp(_forward_primal, (3,))
_backward_data, _backward_data_vjp = _adjoint_vjp(_backward_data_primal)
_backward_weights, _backward_weights_vjp = _adjoint_vjp(_backward_weights_primal, (2, 3, 4))


@_forward_vjp
def _forward_bwd(geo, res, dz):
    x, w, b = res
    dz = dz.astype(x.dtype)
    if b is None:
        return _backward_data(dz, w, geo), _backward_weights(x, dz, geo, w.shape, False).astype(w.dtype), None
    dw, db = _backward_weights(x, dz, geo, w.shape, True)
    return _backward_data(dz, w, geo), dw.astype(w.dtype), db.astype(b.dtype)


@_backward_data_vjp
def _backward_data_bwd(geo, res, g):
    dz, w = res
    g = g.astype(dz.dtype)
    return _forward(g, w, None, geo), _backward_weights(g, dz, geo, w.shape, False).astype(w.dtype)


@_backward_weights_vjp
def _backward_weights_bwd(geo, w_shape, bias, res, g):
    x, dz = res
    gw, gb = g if bias else (g, None)
    gw, gb = gw.astype(x.dtype), None if gb is None else gb.astype(x.dtype)
    return _backward_data(dz, gw, geo), _forward(x, gw, gb, geo)


def conv(x, w, b, stride, pads, dilation, groups, precision):
    """The channels-last body, bias included (``b``: (cout,) or None; the signature of conv_nd's
    custom-VJP bodies): oneDNN for 2-D float32/bfloat16 groups-1 convolutions, lax for the rest
    (module docstring). Call ``available()`` first."""
    if x.ndim != 4 or not computes(x.dtype, groups) or x.dtype != w.dtype or (b is not None and b.dtype != x.dtype):
        z = lax_conv(x, w, stride, pads, dilation, groups, precision)
        return z if b is None else add_channels(z, b)
    geo = (tuple(stride), tuple(tuple(p) for p in pads), tuple(dilation), tuple(x.shape[1:3]))
    return _forward(x, w, b, geo)
