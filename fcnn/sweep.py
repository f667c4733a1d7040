"""Sweeps of ``fcnn.gradcheck`` over the conv/pool configuration grid (GRADCHECK.md), tables, the
mutation-catch matrix and the ``fcnn gradcheck`` command (``fcnn gradcheck --help``: its options, in
``_parser``), which prints one row per (case, check) and exits 1 when any check fails (2 on bad arguments).

Per case, five checks (``CHECKS``): ``forward`` and ``vjp`` agreement with a reference
implementation in the chosen dtype (float32 with ``precision="highest"``) against
``gradcheck.tolerance``; then, always in float64 against 1e-10, ``fd_projection``, ``jacobian``
(skipped on tied inputs, where max pooling has no derivative, and for whole models) and
``second_order``. The quick sweep holds the configurations that expose every mutant in
``fcnn.mutants`` (stride > 1, stride != dilation, asymmetric and top/left padding, groups with
cin/groups > 1, batch 2 with bias, SAME at stride 2 on an even size, overlapping pool windows,
ties; the N-d and decoder ops' cases are ``fcnn.sweep_nd``'s). The full sweep adds the conv grid (``conv_grid``: the one definition of it, which tests/test_conv.py runs
too; about 300 cases) and the pool grid.
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import os
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fcnn import _checks
from fcnn import gradcheck as gc
from fcnn import report
from fcnn import sweep_nd
from fcnn.ops import pool

__all__ = ["Case", "CHECKS", "OPS", "CONV_AXES", "conv_grid", "cases", "computes", "run_case", "run_sweep", "Row",
           "format_markdown", "format_csv", "mutation_matrix", "matrix_markdown", "cli_main"]

CHECKS = ("forward", "vjp", "fd_projection", "jacobian", "second_order")
OPS = ("conv2d", "max_pool2d", "avg_pool2d", "model") + sweep_nd.ND_OPS
DEFAULT_IMPL = {"conv2d": "custom_vjp", "max_pool2d": "custom_vjp", "avg_pool2d": "lax", "model": "custom_vjp",
                **sweep_nd.ND_DEFAULT_IMPL}
FD_TOL = 1e-10  # float64 finite differences of (piecewise) linear ops: exact up to rounding
# A model is nonlinear and has ReLU/max kinks: LeNet's parameter projection with eps 1e-5 crossed a
# kink (3% error, lax and custom_vjp alike); eps 1e-7 (1e-6 for the gradient's differences) did not.
MODEL_FD_TOL = 1e-6


class Case(NamedTuple):
    """One configuration: ``opts`` are the op's keyword arguments (besides impl)."""

    op: str
    name: str
    x_shape: Tuple[int, ...]  # in the case's layout
    opts: Dict  # stride, padding, dilation, groups, layout / window, ...
    inputs: str = "normal"  # "normal", "perm" (tie-free) or "ties"
    w_shape: Optional[Tuple[int, ...]] = None  # conv: HWIO (NHWC) or OIHW (NCHW)
    bias: bool = True


# ----------------------------------------------------------------------------- the grid
def _conv(name, x_shape, w_shape, **opts):
    return Case("conv2d", name, x_shape, opts, "normal", w_shape)


_QUICK = [
    _conv("basic", (2, 5, 5, 3), (3, 3, 3, 2)),
    _conv("s2_same", (1, 6, 7, 2), (3, 3, 2, 3), stride=2, padding="SAME"),
    _conv("s32_d21_asym", (1, 7, 5, 2), (2, 3, 2, 2), stride=(3, 2), dilation=(2, 1), padding=((1, 0), (0, 1))),
    _conv("groups2_d2", (1, 5, 5, 4), (3, 3, 2, 6), groups=2, dilation=2, padding=((2, 1), (0, 2))),
    _conv("depthwise", (2, 6, 7, 3), (2, 3, 1, 3), groups=3, stride=(1, 2), padding="SAME"),
    _conv("nchw_d2", (2, 3, 6, 7), (2, 3, 2, 3), dilation=2, padding="SAME", layout="NCHW"),
    Case("max_pool2d", "overlap3", (2, 6, 7, 3), dict(window=3, stride=1), "perm"),
    Case("max_pool2d", "tiled2", (2, 6, 7, 3), dict(window=2), "perm"),
    Case("max_pool2d", "pad_tl", (2, 6, 7, 3), dict(window=(3, 2), stride=(2, 1), padding=((0, 1), (1, 0))), "perm"),
    Case("max_pool2d", "dil2_same", (2, 6, 7, 3), dict(window=2, stride=1, dilation=2, padding="SAME"), "perm"),
    Case("max_pool2d", "nchw", (2, 3, 6, 7), dict(window=(2, 1), stride=(2, 1), padding="SAME", layout="NCHW"), "perm"),
    Case("max_pool2d", "ties_overlap", (2, 6, 7, 3), dict(window=2, stride=1), "ties"),
    Case("max_pool2d", "ties_tiled", (2, 6, 7, 3), dict(window=2), "ties"),
    Case("avg_pool2d", "overlap3", (2, 6, 7, 3), dict(window=3, stride=1)),
    Case("avg_pool2d", "pad_excl", (2, 6, 7, 3), dict(window=3, stride=2, padding=((0, 1), (1, 0)),
                                                      count_include_pad=False)),
    Case("avg_pool2d", "same_nchw", (2, 3, 6, 7), dict(window=2, padding="SAME", layout="NCHW")),
    Case("model", "lenet5", (2, 28, 28, 1), dict(model="lenet5")),
] + [Case(*c) for c in sweep_nd.QUICK_ND]


# The conv grid (GRADCHECK.md), its one definition: the full sweep runs it and tests/test_conv.py
# checks every implementation on it. "input" is a kernel as large as the input; the channel
# triples (groups, cin, cout) hold one input channel, cin/groups > 1, fewer outputs than inputs,
# channel multipliers and depthwise convs.
CONV_AXES = {
    "hw": [(6, 7), (5, 5), (7, 5)],
    "kernel": [(1, 1), (2, 3), (3, 3), (5, 5), "input"],
    "stride": [1, 2, 3, (1, 2), (3, 2)],
    "padding": ["VALID", "SAME", ((1, 0), (0, 1)), ((2, 1), (0, 2))],
    "dilation": [(1, 1), (2, 2), (2, 3)],
    "channels": [(1, 1, 1), (1, 1, 2), (1, 2, 1), (1, 2, 3), (2, 2, 2), (2, 2, 4), (2, 4, 2), (2, 4, 6),
                 (3, 3, 3), (3, 3, 6)],
    "layout": ["NHWC", "NCHW"],
    "batch": [1, 2],
}
# candidate i takes value (i * step + i // div) mod len of each axis, in CONV_AXES order: with 400
# candidates every pair of values that fit together appears in some case (tests/test_conv.py)
_CONV_STEPS = [(1, 3), (3, 5), (7, 5), (3, 4), (2, 3), (7, 10), (1, 2), (0, 3)]
CONV_CANDIDATES = 400


def conv_grid() -> List[Case]:
    """The deterministic cover of ``CONV_AXES``; candidates whose kernel does not fit are skipped.

    Each case is named ``conv{i}`` after its candidate and carries the axis values in its opts
    (stride, padding, dilation, groups, layout) and shapes (hw, kernel, channels, batch).
    """
    from fcnn import shapes

    out = []
    for i in range(CONV_CANDIDATES):
        v = {k: vals[(i * step + i // div) % len(vals)]
             for (k, vals), (step, div) in zip(CONV_AXES.items(), _CONV_STEPS)}
        (h, w), (g, ci, co), layout = v["hw"], v["channels"], v["layout"]
        kh, kw = (h, w) if v["kernel"] == "input" else v["kernel"]
        x_shape = shapes.make_shape(v["batch"], (h, w), ci, layout)
        w_shape = (kh, kw, ci // g, co) if layout == "NHWC" else (co, ci // g, kh, kw)
        opts = dict(stride=v["stride"], padding=v["padding"], dilation=v["dilation"], groups=g, layout=layout)
        try:
            shapes.conv_output_shape(x_shape, w_shape, **opts)
        except ValueError:
            continue
        out.append(Case("conv2d", f"conv{i}", x_shape, opts, "normal", w_shape))
    return out


def _full_pool() -> List[Case]:
    out = []
    for i, window in enumerate([2, 3, (3, 2), (2, 1)]):
        for j, (stride, pad) in enumerate([(1, "VALID"), (None, "SAME"), ((2, 1), ((0, 1), (1, 0)))]):
            for dil in (1, 2):
                layout = "NCHW" if (i + j + dil) % 2 else "NHWC"
                x_shape = (2, 6, 7, 3) if layout == "NHWC" else (2, 3, 6, 7)
                opts = dict(window=window, stride=stride, padding=pad, dilation=dil, layout=layout)
                for inputs in ("perm", "ties") if dil == 1 else ("perm",):
                    out.append(Case("max_pool2d", f"w{i}s{j}d{dil}{inputs}", x_shape, opts, inputs))
                if dil == 1:
                    out.append(Case("avg_pool2d", f"w{i}s{j}", x_shape, dict(window=window, stride=stride, padding=pad,
                                                                          layout=layout, count_include_pad=j % 2 == 0)))
    return out


def cases(op: str, sweep: str = "quick") -> List[Case]:
    """The cases of ``op`` ("all" for every op) in the "quick" or "full" sweep."""
    _checks.choice(sweep, ("quick", "full"), "sweep")
    _checks.choice(op, OPS + ("all",), "op")
    grid = _QUICK + (conv_grid() + _full_pool() if sweep == "full" else [])
    return [c for c in grid if op in ("all", c.op)]


def describe(case: Case) -> str:
    """Short text of a case's configuration for tables."""
    opts = ", ".join(f"{k}={v}" for k, v in case.opts.items())
    w = f" w{case.w_shape}" if case.w_shape else ""
    return f"x{case.x_shape}{w} {opts} [{case.inputs}]"


# ----------------------------------------------------------------------------- running a case
@functools.lru_cache(maxsize=None)
def _init(name: str, x_shape: Tuple[int, ...]):
    """``(params, state)`` of model ``name``, the same for every impl. Key 0 of the "rbg" PRNG:
    threefry's sampler compiles for seconds per parameter shape with float64 on (LeNet-5's init:
    7-10 s, against 2-4 s)."""
    from fcnn import models

    _, params, state = models.get_model(name).init(jax.random.key(0, impl="rbg"), x_shape)
    return params, state


def _arguments(case: Case, dtype):
    """Positional arguments and their names."""
    if case.op in sweep_nd.ND_OPS:
        return sweep_nd.arguments(case, dtype)
    if case.op == "conv2d":
        cout = case.w_shape[3] if case.opts.get("layout", "NHWC") == "NHWC" else case.w_shape[0]
        args = [gc.random_normal(1, case.x_shape, dtype), gc.random_normal(2, case.w_shape, dtype)]
        return (args + [gc.random_normal(3, (cout,), dtype)], ["x", "w", "b"]) if case.bias else (args, ["x", "w"])
    if case.op == "model":
        params, _ = _init(case.opts["model"], case.x_shape)
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
        return [params, gc.random_normal(1, case.x_shape, dtype)], ["params", "x"]
    make = {"normal": gc.random_normal, "perm": gc.tie_free, "ties": gc.forced_ties}[case.inputs]
    return [make(1, case.x_shape, dtype)], ["x"]


def _function(case: Case, impl, ties: str) -> Callable:
    """``f(*args)`` of the case for ``impl``: an impl name or a mutant's function."""
    from fcnn import ops

    if case.op in sweep_nd.ND_OPS:
        return sweep_nd.function(case, impl)
    if case.op == "conv2d":
        fn = impl if callable(impl) else (lambda *a, **k: ops.conv2d(*a, impl=impl, **k))
        return lambda *a: fn(*a, precision="highest", **case.opts)
    if case.op == "max_pool2d":
        if callable(impl):
            return lambda x: impl(x, ties=ties, **case.opts)
        return lambda x: ops.max_pool2d(x, impl=impl, ties=_policy(impl, ties), **case.opts)
    if case.op == "avg_pool2d":
        fn = impl if callable(impl) else (lambda x, **k: ops.avg_pool2d(x, impl=impl, **k))
        return lambda x: fn(x, **case.opts)
    from fcnn import models

    pool_impl = _pool_impl(impl)
    model = models.get_model(case.opts["model"], impl=impl, pool_impl=pool_impl,
                             ties=pool.tie_policy(pool_impl, ties))
    _, state = _init(case.opts["model"], case.x_shape)
    return lambda params, x: model.apply(params, state, x)[0]


def _pool_impl(impl) -> str:
    """The max-pool implementation paired with a conv/model ``impl`` name (pool has lax and reference too)."""
    return impl if impl in ("lax", "reference") else "custom_vjp"


def _policy(impl, ties: str) -> str:
    """The tie policy ``impl`` (a name, or a mutant's function, which takes any) is checked under."""
    return pool.tie_policy(_pool_impl(impl), ties) if isinstance(impl, str) else ties


def _reference_impl(case: Case, impl, ties: str) -> str:
    """The implementation the case is compared with: another impl with the same tie policy."""
    if case.op in sweep_nd.ND_OPS:
        return sweep_nd.reference_impl(case, impl)
    if case.op == "conv2d" or case.op == "model":
        return "reference" if impl == "lax" else "lax"
    if case.op == "avg_pool2d":
        return "lax" if impl == "reference" else "reference"
    policy = _policy(impl, ties)
    if case.inputs != "ties":  # tie-free: every policy is the same gradient
        options = ["reference", "custom_vjp"] if case.opts.get("dilation", 1) != 1 else ["lax", "reference"]
    else:
        options = {"first": ["lax", "custom_vjp"], "split": ["reference", "custom_vjp"], "all": ["custom_vjp"]}[policy]
    return next((o for o in options if o != impl), "custom_vjp")


class Row(NamedTuple):
    """One (case, check) line of a sweep table: the worst argument of that check."""

    op: str
    impl: str
    dtype: str
    case: str
    config: str
    check: str
    arg: str
    max_abs: float
    max_rel: float
    max_ulp: float
    tol: float
    status: str  # "pass", "FAIL" or "n/a"


def run_case(case: Case, impl, *, dtype=jnp.float64, ties: str = "first", platform: Optional[str] = None,
             impl_name: Optional[str] = None) -> List[Row]:
    """All five checks of one case; ``impl`` is an implementation name or a mutant's function."""
    platform = jax.default_backend() if platform is None else platform
    name = impl_name or (impl if isinstance(impl, str) else getattr(impl, "__name__", "fn"))
    args, names = _arguments(case, dtype)
    f = _function(case, impl, ties)
    ref_impl = _reference_impl(case, impl, ties)
    g = _function(case, ref_impl, _policy(impl, ties))
    results = gc.agreement(f, g, args, names=names, tol=gc.tolerance(dtype, platform, "highest"))
    is_model, ties_in = case.op == "model", case.inputs == "ties"
    eps = 1e-7 if is_model else (1e-2 if case.op == "max_pool2d" else sweep_nd.fd_eps(case))
    tol = MODEL_FD_TOL if is_model else FD_TOL
    tangent = "ones" if ties_in else "normal"
    results += gc.fd_projection(f, args, eps=eps, names=names, tangent=tangent, tol=tol)
    if not (is_model or ties_in):
        results += gc.full_jacobian(f, args, eps=eps, names=names, tol=tol)
    results += gc.second_order(f, args, eps=1e-6 if is_model else eps, names=names, tangent=tangent, tol=tol)
    rows = []
    for check in CHECKS:
        rs = [r for r in results if r.check == check]
        dt = jnp.dtype(dtype).name if check in ("forward", "vjp") else "float64"
        if not rs:
            rows.append(Row(case.op, name, dt, case.name, describe(case), check, "-", np.nan, np.nan, np.nan, np.nan,
                            "n/a"))
            continue
        worst = max(rs, key=lambda r: (not r.passed, r.max_rel))
        rows.append(Row(case.op, name, dt, case.name, describe(case), check, worst.arg, worst.max_abs,
                        worst.max_rel, worst.max_ulp, worst.tol, "pass" if all(r.passed for r in rs) else "FAIL"))
    return rows


def computes(case: Case, impl: str) -> bool:
    """Whether implementation ``impl`` computes ``case`` (``ops.conv_impls_for`` for conv2d cases)."""
    from fcnn import ops, shapes

    if case.op != "conv2d" or impl not in ops.RESTRICTED_IMPLS:
        return True
    layout = case.opts.get("layout", "NHWC")
    kernel = shapes.kernel_parts(case.w_shape, layout)[0]
    return impl in ops.conv_impls_for(kernel, shapes.normalize_pair(case.opts.get("stride", 1), "stride"),
                                      shapes.normalize_pair(case.opts.get("dilation", 1), "dilation"))


def run_sweep(op: str, impl=None, *, sweep: str = "quick", dtype=jnp.float64, ties: str = "first",
              impl_name: Optional[str] = None, progress: Optional[Callable[[str], None]] = None) -> List[Row]:
    """``run_case`` over ``cases(op, sweep)``; ``impl=None`` takes each op's ``DEFAULT_IMPL``."""
    rows = []
    for case in cases(op, sweep):
        if isinstance(impl, str) and not computes(case, impl):
            continue  # a restricted implementation (winograd) runs on the cases its rule admits
        rows += run_case(case, DEFAULT_IMPL[case.op] if impl is None else impl, dtype=dtype, ties=ties,
                         impl_name=impl_name)
        if progress is not None:
            progress(f"{case.op}/{case.name}: {'FAIL' if any(r.status == 'FAIL' for r in rows[-5:]) else 'ok'}")
    return rows


# ----------------------------------------------------------------------------- tables
_COLUMNS = Row._fields


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-" if np.isnan(v) else f"{v:.2e}"
    return str(v)


def format_markdown(rows: Sequence[Row]) -> str:
    """A markdown table, one line per row."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "/") for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def format_csv(rows: Sequence[Row]) -> str:
    """CSV with a header line; floats in full precision."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_COLUMNS)
    writer.writerows([[repr(v) if isinstance(v, float) else v for v in r] for r in rows])
    return buf.getvalue()


# ----------------------------------------------------------------------------- mutation matrix
def mutation_matrix(names: Optional[Sequence[str]] = None, *, sweep: str = "quick") -> List[Dict]:
    """For each mutant, how many quick-sweep cases of its op each check fails.

    Returns:
      one dict per mutant: ``name``, ``op``, ``bug``, ``shows_on``, ``cases`` (how many ran),
      per check ``"k/n"`` (k failing of n run) and ``caught_by`` (cases where anything failed).
    """
    from fcnn import mutants

    out = []
    for name in names or list(mutants.MUTANTS):
        m = mutants.get_mutant(name)
        rows = run_sweep(m.op, m.fn, sweep=sweep, impl_name=name)
        entry = dict(name=name, op=m.op, bug=m.bug, shows_on=m.shows_on, cases=len(cases(m.op, sweep)))
        for check in CHECKS:
            ran = [r for r in rows if r.check == check and r.status != "n/a"]
            entry[check] = f"{sum(r.status == 'FAIL' for r in ran)}/{len(ran)}"
        entry["caught_by"] = sorted({r.case for r in rows if r.status == "FAIL"})
        out.append(entry)
    return out


def matrix_markdown(matrix: Sequence[Dict]) -> str:
    """The mutation matrix as markdown: cells are failing/run cases per check."""
    head = ["mutant", "op", "bug", "shows on", *CHECKS, "caught in cases"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in matrix:
        lines.append("| " + " | ".join([e["name"], e["op"], e["bug"], e["shows_on"], *(e[c] for c in CHECKS),
                                        ", ".join(e["caught_by"]) or "**NOT CAUGHT**"]) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command
class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"fcnn gradcheck: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fcnn gradcheck", description="Gradient checks over the conv/pool/decoder grid (GRADCHECK.md).")
    p.add_argument("--op", default="all", choices=OPS + ("all",))
    p.add_argument("--impl", default=None, help="implementation under test (default: custom_vjp, avg: lax)")
    p.add_argument("--dtype", default="float64", choices=("float32", "float64", "bfloat16"),
                   help="dtype of the agreement checks (finite differences always run in float64)")
    p.add_argument("--sweep", default="quick", choices=("quick", "full"))
    p.add_argument("--ties", default="first", choices=pool.TIE_POLICIES, help="max-pool tie policy")
    p.add_argument("--csv", default=None, help="also write the table as CSV here (refused if it exists, unless "
                                                "--overwrite)")
    p.add_argument("--md", default=None, help="also write the table as markdown here (the same rule)")
    p.add_argument("--overwrite", action="store_true", help="replace the files --csv / --md if they exist")
    p.add_argument("--matrix", action="store_true", help="print the mutation-catch matrix instead")
    p.add_argument("--mutant", default=None, help=argparse.SUPPRESS)  # test a fcnn.mutants entry
    return p


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a sweep and print its table; 0 if every check passed, 1 if any failed, 2 on bad arguments."""
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    jax.config.update("jax_enable_x64", True)
    from fcnn import mutants

    start, bar = time.perf_counter(), None
    try:
        if args.matrix and (args.csv or args.md):
            raise ValueError("--matrix prints the mutation-catch matrix only; --csv and --md write a sweep's table")
        if args.csv and args.md and os.path.realpath(args.csv) == os.path.realpath(args.md):
            raise ValueError(f"--csv and --md name one file ({args.csv!r}): give two paths")
        for flag, path in (("--csv", args.csv), ("--md", args.md)):  # before the sweep, not after it
            if path:
                _checks.new_file(path, flag, overwrite=args.overwrite, flag="--overwrite")
        if args.matrix:
            matrix = mutation_matrix(sweep=args.sweep)
            print(matrix_markdown(matrix), end="")
            return 0 if all(e["caught_by"] for e in matrix) else 1
        impl, name, op = args.impl, args.impl, args.op
        if args.mutant is not None:
            m = mutants.get_mutant(args.mutant)
            impl, name, op = m.fn, m.name, m.op
        if report.progress_default():
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cases(op, args.sweep)), desc="fcnn gradcheck", unit="case", leave=False)
        rows = run_sweep(op, impl, sweep=args.sweep, dtype=jnp.dtype(args.dtype), ties=args.ties, impl_name=name,
                         progress=None if bar is None else lambda line: bar.update(1))
    except (ValueError, TypeError) as e:
        print(f"fcnn gradcheck: error: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    table = format_markdown(rows)
    print(table, end="")
    for path, text in ((args.csv, format_csv(rows)), (args.md, table)):
        if path:
            with open(path, "w") as fh:
                fh.write(text)
    failed = sum(r.status == "FAIL" for r in rows)
    print(f"{len(rows)} checks, {failed} failed, {time.perf_counter() - start:.1f} s on {jax.default_backend()}")
    return 1 if failed else 0
