"""Gradient checks: implementation agreement, finite differences, second order, input generators.

Every check returns a list of ``Result`` records, one per argument leaf (``"x"``, ``"w"``,
``"params/0/w"`` ...), so a sweep can print them as table rows. The checks (GRADCHECK.md):

* ``agreement(f, g, args)``: forward of ``f`` vs ``g`` and the VJP of each for one shared random
  cotangent ``c``, per argument: max abs error, max relative error (``max|a-b| / max|b|``, relative
  to the reference's scale; elementwise ratios are meaningless where sums cancel to ~0) and the
  error in ULPs of the dtype under test at the reference's scale.
* ``fd_projection(f, args, eps)``: ``<t, J^T c>`` (the VJP) against ``<J t, c>`` by central
  differences, one number per argument (what ``jax.test_util.check_grads`` does in rev mode);
  its relative error ``|a-b| / max(|a|, |b|)`` does not loosen with the input size.
* ``full_jacobian(f, args, eps)``: the whole Jacobian, column by column by central differences,
  against the one the VJP gives row by row (PyTorch's slow ``gradcheck``), plus one random
  cotangent's row, since unit cotangents alone pass a VJP that is not linear in them; small inputs only.
* ``second_order(f, args, eps)``: with ``L = <f(args), c>`` and ``g = grad L``, reverse-over-
  reverse ``J_g^T v`` against central differences of the gradient ``J_g v``. For a true gradient
  ``J_g`` is the (symmetric) Hessian, so this fails both when the backward rule is not
  differentiated correctly and when it is not the gradient of anything (a wrong cross term).

Finite differences run in float64 (``jax_enable_x64`` must be on; the ``fcnn gradcheck`` command,
``fcnn.sweep.cli_main``, turns it on; the grid, the tables and the command are ``fcnn.sweep``).
Step sizes: convolution and average pooling are linear in each argument, so ``eps = 1`` is exact
up to rounding; max pooling is piecewise linear, so ``eps = 1e-2`` on tie-free inputs
(``tie_free``: distinct values 1 apart) never crosses a kink. At ties the function
has no derivative; the direction ``t = ones`` keeps every tie (``max(x + s) = max(x) + s``), so
``fd_projection(..., tangent="ones")`` is still exact there and checks that each window passes on
exactly its output gradient.

Tolerances (``tolerance``): float64 1e-10; float32 with ``precision="highest"`` 1e-5 on CPU and
1e-4 on GPU (GPU default precision is TF32, ~1e-3: 1e-2 allowed, and said so); bfloat16 2e-2
(8 significand bits, ``eps = 2^-8 = 3.9e-3``; two implementations that round products or partial
sums at different points differ by a few of those relative to the output's scale).
"""
from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from fcnn import _checks
from fcnn.dtypes import half_float

__all__ = [
    "Result", "Errors", "compare", "ulp_distance", "tolerance", "agreement", "fd_projection",
    "full_jacobian", "second_order", "random_normal", "tie_free", "forced_ties", "nan_table",
    "neginf_table",
]

Eps = Union[float, Sequence[float]]


class Errors(NamedTuple):
    """Distances between two arrays (``a`` under test, ``b`` the reference)."""

    max_abs: float  # max |a - b|
    max_rel: float  # max |a - b| / max |b|  (inf where only one side is NaN)
    max_ulp: float  # max_abs in units in the last place of max |b| in the compared dtype


class Result(NamedTuple):
    """One check of one argument leaf; ``passed`` is ``max_rel <= tol``."""

    check: str  # "forward", "vjp", "fd_projection", "jacobian" or "second_order"
    arg: str  # argument leaf name, "out" for the forward
    max_abs: float
    max_rel: float
    max_ulp: float
    tol: float

    @property
    def passed(self) -> bool:
        return bool(self.max_rel <= self.tol)


# ----------------------------------------------------------------------------- distances
def _ordered_bits(a: np.ndarray) -> np.ndarray:
    """Float bits mapped to integers that increase with the value (-0 and +0 both map to 0)."""
    width = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
    i = a.view(width).astype(np.int64)
    magnitude = i & np.int64((1 << (8 * a.dtype.itemsize - 1)) - 1)
    return np.where(i < 0, -magnitude, magnitude)


def ulp_distance(a, b, dtype) -> np.ndarray:
    """Elementwise number of representable ``dtype`` values between ``a`` and ``b`` (both cast to it).

    Equal NaN positions count 0, NaN against a number counts inf. Zero means bitwise equal
    (up to the sign of zero): the measure for determinism. Near zero it counts the many tiny
    numbers there, so ``compare`` reports errors in ULPs *of the reference's scale* instead.
    """
    a = np.asarray(jnp.asarray(a, dtype))
    b = np.asarray(jnp.asarray(b, dtype))
    oa, ob = _ordered_bits(a), _ordered_bits(b)
    same_sign = (oa >= 0) == (ob >= 0)
    with np.errstate(over="ignore"):  # opposite signs may overflow int64; those use the float sum
        d = np.where(same_sign, np.abs(np.where(same_sign, oa - ob, 0)).astype(np.float64),
                     np.abs(oa).astype(np.float64) + np.abs(ob).astype(np.float64))
    na, nb = np.isnan(a.astype(np.float64)), np.isnan(b.astype(np.float64))
    return np.where(na & nb, 0.0, np.where(na | nb, np.inf, d))


def _spacing(value: float, dtype) -> float:
    """The gap between ``value`` (rounded to ``dtype``) and the next larger ``dtype`` number; nan
    where ``value`` is past ``dtype``'s largest finite number (no ULP there)."""
    if value > float(jnp.finfo(dtype).max):
        return math.nan
    v = np.asarray(jnp.asarray(value if value > 0 else 1.0, dtype))
    nxt = _ordered_bits(v[None]) + 1
    width = {2: np.int16, 4: np.int32, 8: np.int64}[v.dtype.itemsize]
    return float(nxt.astype(width).view(v.dtype).astype(np.float64)[0] - v.astype(np.float64))


def compare(a, b, dtype=None) -> Errors:
    """``Errors`` of ``a`` against the reference ``b``.

    ``max_ulp`` is ``max_abs`` over the ULP of ``max |b|`` in ``dtype`` (default: ``a``'s dtype):
    "the error is k units in the last place of the output's scale".

    NaN in the same places counts as agreement; NaN in only one counts as an infinite error; equal
    infinities agree.
    """
    dtype = jnp.result_type(a) if dtype is None else dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"compare counts ULPs of a floating dtype, got dtype {jnp.dtype(dtype)}")
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {a64.shape} vs {b64.shape}")
    if a64.size == 0:
        return Errors(0.0, 0.0, 0.0)
    na, nb = np.isnan(a64), np.isnan(b64)
    same = (a64 == b64) | (na & nb)
    with np.errstate(invalid="ignore"):  # inf - inf where both are equal infinities (masked by `same`)
        diff = np.where(same, 0.0, np.abs(a64 - b64))
    diff = np.where(na ^ nb, np.inf, diff)
    max_abs = float(np.max(diff))
    finite_b = np.abs(b64[np.isfinite(b64)])
    scale = float(np.max(finite_b)) if finite_b.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    ulp = _spacing(scale, dtype)  # nan where the scale overflows ``dtype`` (its ULP is not a number)
    return Errors(max_abs, max_rel, max_abs / ulp if math.isfinite(ulp) else (0.0 if max_abs == 0 else np.inf))


def tolerance(dtype, platform: str = "cpu", precision: Optional[str] = "highest") -> float:
    """Relative tolerance for comparing two implementations (see the module docstring)."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64:
        return 1e-10
    if half_float(dtype):
        return 2e-2
    if platform == "cpu":
        return 1e-5
    return 1e-4 if precision == "highest" else 1e-2


# ----------------------------------------------------------------------------- helpers
def _leaves(tree, prefix: str) -> List[Tuple[str, object]]:
    """``(name, leaf)`` pairs; a bare array is named ``prefix``, a pytree leaf ``prefix/path``."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    if len(flat) == 1 and not flat[0][0]:
        return [(prefix, flat[0][1])]
    return [(prefix + "/" + jax.tree_util.keystr(path, simple=True, separator="/"), leaf)
            for path, leaf in flat]


def _names(args, names) -> List[str]:
    """One name per argument (a short list would silently leave arguments unchecked)."""
    if names is None:
        return [f"arg{i}" for i in range(len(args))]
    if len(names) != len(args) or not all(isinstance(n, str) for n in names):  # "xwb": x, w, b
        raise ValueError(f"names must hold one str per argument ({len(args)}), got {names!r}")
    return list(names)


def _like(rng: np.random.Generator, tree, kind: str = "normal"):
    """A tree of standard-normal (or all-ones) host arrays shaped like ``tree`` (arrays or shape structs).

    NumPy's generator, not ``jax.random``: threefry inside every jitted check costs seconds of
    compile time on CPU.
    """
    _checks.choice(kind, ("normal", "ones"), "tangent")
    return jax.tree_util.tree_map(
        lambda a: (np.ones if kind == "ones" else lambda s: rng.standard_normal(s))(jnp.shape(a))
        .astype(jnp.result_type(a)), tree)


def _vdot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _axpy(alpha, x, y):
    return jax.tree_util.tree_map(lambda u, v: v + alpha * u, x, y)


def _require_x64() -> None:
    if not jax.config.jax_enable_x64:
        raise ValueError("finite-difference checks run in float64: enable it with "
                         "jax.config.update('jax_enable_x64', True)")


def _to_f64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _cotangent(rng: np.random.Generator, f, args):
    """Standard-normal host cotangent shaped like ``f(*args)``."""
    return _like(rng, jax.eval_shape(f, *args))


def _finite(c, y):
    """The cotangent, zero where the output is not finite (a window made only of padding)."""
    return jnp.where(jnp.isfinite(y), c, 0)


def _eps_list(eps: Eps, n: int) -> List[float]:
    """One positive finite step per argument: ``eps`` itself, or its ``n`` entries (a short list would
    silently leave arguments unchecked)."""
    if np.isscalar(eps):
        return [_checks.positive_float(eps, "eps")] * n
    if len(eps) != n:
        raise ValueError(f"eps must be one step or one per argument ({n}), got {len(eps)}: {list(eps)!r}")
    return [_checks.positive_float(e, "eps") for e in eps]


def _central(f, args, i, direction, eps):
    """``(f(.., a_i + eps t, ..) - f(.., a_i - eps t, ..)) / (2 eps)``, zero where f is not finite."""
    plus = f(*args[:i], _axpy(eps, direction, args[i]), *args[i + 1:])
    minus = f(*args[:i], _axpy(-eps, direction, args[i]), *args[i + 1:])
    return jax.tree_util.tree_map(lambda p, m: jnp.where(jnp.isfinite(p) & jnp.isfinite(m), (p - m) / (2 * eps), 0),
                                  plus, minus)


# ----------------------------------------------------------------------------- checks
def agreement(f: Callable, g: Callable, args: Sequence, *, names: Optional[Sequence[str]] = None, seed: int = 0,
              tol: float = 1e-10, dtype=None) -> List[Result]:
    """Forward and VJP of ``f`` (under test) against ``g`` (reference) at ``args``, per argument leaf.

    Args:
      f, g: functions of the same positional arguments returning one array.
      args: the arguments (arrays or pytrees of arrays), in the dtype under test.
      names: one name per argument (default ``arg0, arg1, ...``).
      seed: seed of the shared random cotangent (NumPy).
      tol: relative tolerance recorded in each ``Result``.
      dtype: dtype the ULPs are counted in (default: the output's).
    Returns:
      ``[Result("forward", "out", ...)] + [Result("vjp", name, ...) per leaf]``.
    """
    args = tuple(args)
    c0 = _cotangent(np.random.default_rng(seed), g, args)

    @jax.jit
    def run(args, c):
        yf, pull_f = jax.vjp(f, *args)
        yg, pull_g = jax.vjp(g, *args)
        got_f, got_g = (getattr(y, "shape", type(y).__name__) for y in (yf, yg))  # at trace time, before a pull
        if not hasattr(yf, "shape") or got_f != got_g:
            raise ValueError(f"f and g must return one array of the same shape: f gives {got_f}, g gives {got_g}")
        c = _finite(c, yg)
        return yf, yg, pull_f(c), pull_g(c)

    yf, yg, cts_f, cts_g = run(args, c0)
    dtype = jnp.result_type(yf) if dtype is None else dtype
    out = [Result("forward", "out", *compare(yf, yg, dtype), tol)]
    for name, a, ga, gb in zip(_names(args, names), args, cts_f, cts_g):
        for (leaf_name, la), (_, lb) in zip(_leaves(ga, name), _leaves(gb, name)):
            out.append(Result("vjp", leaf_name, *compare(la, lb, dtype), tol))
    return out


def fd_projection(f: Callable, args: Sequence, *, eps: Eps = 1.0, names: Optional[Sequence[str]] = None,
                  seed: int = 0, tangent: str = "normal", tol: float = 1e-10) -> List[Result]:
    """``<t, J^T c>`` from the VJP against ``<J t, c>`` by central differences, in float64.

    Args:
      f: the function under test (its VJP is what is checked).
      args: arguments (cast to float64).
      eps: one step size, or one per argument.
      tangent: "normal" (random ``t``) or "ones" (valid at max-pool ties, see the module docstring).
    Returns:
      one ``Result("fd_projection", name, ...)`` per argument: ``max_abs = |<t, J^T c> - <J t, c>|``,
      ``max_rel = max_abs / max(|<t, J^T c>|, |<J t, c>|)``, ``max_ulp`` in float64 ULPs of the larger number.
    """
    _require_x64()
    args = _to_f64(tuple(args))
    rng = np.random.default_rng(seed)
    c0 = _cotangent(rng, f, args)
    tangents = tuple(_like(rng, a, tangent) for a in args)
    epss = _eps_list(eps, len(args))

    @jax.jit
    def run(args, c, tangents):
        y, pull = jax.vjp(f, *args)
        c = _finite(c, y)
        cts = pull(c)
        return [(_vdot(t, ct), _vdot(_central(f, args, i, t, e), c))
                for i, (t, ct, e) in enumerate(zip(tangents, cts, epss))]

    out = []
    for name, (lhs, rhs) in zip(_names(args, names), run(args, c0, tangents)):
        lhs, rhs = float(lhs), float(rhs)
        if not (math.isfinite(lhs) and math.isfinite(rhs)):  # a NaN / inf VJP (or f): never a pass
            out.append(Result("fd_projection", name, math.inf, math.inf, math.inf, tol))
            continue
        err = abs(lhs - rhs)
        scale = max(abs(lhs), abs(rhs))
        rel = err / scale if scale > 0 else 0.0
        out.append(Result("fd_projection", name, err, rel, err / _spacing(scale, jnp.float64), tol))
    return out


def full_jacobian(f: Callable, args: Sequence, *, eps: Eps = 1.0, names: Optional[Sequence[str]] = None,
                  tol: float = 1e-10) -> List[Result]:
    """The Jacobian of each (array) argument by central differences, column by column, vs the VJP's.

    The VJP's rows come from the unit cotangents, plus one random cotangent ``c`` (normal, seeded)
    compared with ``c^T J``: a VJP right on every unit cotangent yet not linear in it (merging
    overlapping windows with ``max`` instead of ``+``, or ``|c|``) passes the rows alone.
    Costs one batched forward of ``2 * size`` inputs and one batched VJP of ``out.size + 1``
    cotangents per argument: keep inputs to a few hundred elements.
    Returns:
      one ``Result("jacobian", name, ...)`` per argument, errors over the whole (out + 1, in)
      matrix relative to its largest entry.
    """
    _require_x64()
    args = _to_f64(tuple(args))
    epss = _eps_list(eps, len(args))

    @jax.jit
    def run(args):
        y, pull = jax.vjp(f, *args)
        c = jax.random.normal(jax.random.PRNGKey(0), (1, y.size), y.dtype)  # the random cotangent
        basis = jnp.concatenate([jnp.eye(y.size, dtype=y.dtype), c]).reshape((y.size + 1, *y.shape))
        rows = jax.vmap(pull)(basis)  # per argument: (out + 1, *arg.shape) = J, then c^T J
        pairs = []
        for i, (a, e) in enumerate(zip(args, epss)):
            cols = jnp.eye(a.size, dtype=a.dtype).reshape((a.size, *a.shape))  # (in, *a.shape)
            col_fd = jax.vmap(lambda t, i=i, e=e: _central(f, args, i, t, e))(cols)  # (in, *y.shape)
            j_fd = jnp.reshape(col_fd, (a.size, y.size)).T  # (out, in)
            pairs.append((jnp.reshape(rows[i], (y.size + 1, a.size)), jnp.concatenate([j_fd, c @ j_fd])))
        return pairs

    return [Result("jacobian", name, *compare(j_ad, j_fd, jnp.float64), tol)
            for name, (j_ad, j_fd) in zip(_names(args, names), run(args))]


def second_order(f: Callable, args: Sequence, *, eps: Eps = 1.0, names: Optional[Sequence[str]] = None,
                 seed: int = 0, tangent: str = "normal", tol: float = 1e-10) -> List[Result]:
    """Reverse-over-reverse ``J_g^T v`` vs central differences of the gradient ``J_g v``, float64.

    ``g = grad_args <f(args), c>`` for a fixed random ``c``; ``v`` perturbs all arguments at once
    (``eps`` per argument scales its part of ``v``), so cross terms between arguments count.
    Returns:
      one ``Result("second_order", name, ...)`` per argument leaf of ``J_g^T v``.
    """
    _require_x64()
    args = _to_f64(tuple(args))
    n = len(args)
    rng = np.random.default_rng(seed)
    c0 = _cotangent(rng, f, args)
    v0 = tuple(jax.tree_util.tree_map(lambda u, e=e: e * u, _like(rng, a, tangent))
               for a, e in zip(args, _eps_list(eps, n)))

    @jax.jit
    def run(args, c, v):
        c = _finite(c, f(*args))
        grad = jax.grad(lambda *a: jnp.vdot(jnp.where(c != 0, f(*a), 0), c), argnums=tuple(range(n)))
        _, pull = jax.vjp(grad, *args)
        hv_ad = pull(v)  # J_g^T v
        plus = grad(*(_axpy(1.0, vi, a) for vi, a in zip(v, args)))
        minus = grad(*(_axpy(-1.0, vi, a) for vi, a in zip(v, args)))
        return hv_ad, jax.tree_util.tree_map(lambda p, m: (p - m) / 2, plus, minus)  # J_g v (v holds eps)

    hv_ad, hv_fd = run(args, c0, v0)
    out = []
    for name, ad, fd in zip(_names(args, names), hv_ad, hv_fd):
        for (leaf, la), (_, lb) in zip(_leaves(ad, name), _leaves(fd, name)):
            out.append(Result("second_order", leaf, *compare(la, lb, jnp.float64), tol))
    return out


# ----------------------------------------------------------------------------- inputs
def random_normal(seed: int, shape, dtype=jnp.float32):
    """Standard-normal array (NumPy generator ``seed``)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def tie_free(seed: int, shape, dtype=jnp.float32):
    """A random permutation of ``-(size//2), ..., size - size//2 - 1``: distinct values 1 apart.

    Exact in bfloat16 up to 256 distinct values (its integers are exact to 256).
    """
    size = int(np.prod(shape))
    perm = np.random.default_rng(seed).permutation(size) - size // 2
    return jnp.asarray(np.reshape(perm, shape), dtype)


def forced_ties(seed: int, shape, dtype=jnp.float32, levels: int = 3):
    """``relu`` of random integers in ``[-1, levels - 1)``: many ties and all-zero windows, like
    post-ReLU activations."""
    v = np.random.default_rng(seed).integers(-1, levels - 1, size=shape)
    return jnp.asarray(np.maximum(v, 0), dtype)


def nan_table(dtype=jnp.float32):
    """(1, 4, 4, 1) with one NaN in the top-left 2x2 window (next to its largest number, 5) and
    a window of two tied 3s; pool with window 2, stride 2."""
    x = np.array([[1, np.nan, 0, 3], [5, 2, 3, 1], [0, 1, 2, 2], [1, 0, 2, 2]], np.float64)
    return jnp.asarray(x[None, :, :, None], dtype)


def neginf_table(dtype=jnp.float32):
    """(1, 4, 4, 1) with ``-inf`` cells: one window all ``-inf``, one mixed; pool with window 2."""
    x = np.array([[-np.inf, -np.inf, 1, -np.inf], [-np.inf, -np.inf, 0, 2], [4, 1, 0, 0], [3, 2, 0, 0]], np.float64)
    return jnp.asarray(x[None, :, :, None], dtype)

