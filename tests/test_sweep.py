"""Tests of ``fcnn.sweep``: every implementation passes every check of the quick sweep, the tie
policy each case is checked under, the grid, and the ``fcnn gradcheck`` command (``sweep.cli_main``)
exits 0 on every op's quick sweep and 2 on bad arguments.

A (case, implementation) pair gives the same rows every time (seeded inputs), so ``run_case`` is
memoised for this module: the command's sweep and the per-case tests share one run of each pair.
"""
import os

import jax.numpy as jnp
import pytest

from fcnn import sweep
from fcnn.ops import pool

_RUN_CASE = sweep.run_case
_ROWS = {}


def _memo_run_case(case, impl, *, dtype=jnp.float64, ties="first", platform=None, impl_name=None):
    key = (repr(case), impl, jnp.dtype(dtype).name, ties, platform, impl_name)
    if key not in _ROWS:
        _ROWS[key] = _RUN_CASE(case, impl, dtype=dtype, ties=ties, platform=platform, impl_name=impl_name)
    return _ROWS[key]


@pytest.fixture(autouse=True, scope="module")
def _shared_rows():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep, "run_case", _memo_run_case)
        yield


def _case(op, name):
    return next(c for c in sweep.cases(op) if c.name == name)


# ----------------------------------------------------------------------------- correct implementations pass
# custom_vjp and im2col_vjp in the default run; the other implementations under -m slow: test_conv
# compares every VJP with lax's on its default grid and checks col2im's and taps' second order.
@pytest.mark.parametrize("impl", ["custom_vjp", "im2col_vjp"] + [
    pytest.param(impl, marks=pytest.mark.slow) for impl in ("reference", "im2col", "fft", "col2im", "taps")])
def test_conv_impls_pass_every_check(impl):
    rows = sweep.run_case(sweep.cases("conv2d")[3], impl)  # groups2_d2: groups, dilation, asymmetric pads
    assert [r.status for r in rows] == ["pass"] * 5, rows


def test_conv_float32_highest_agrees_to_1e5():
    rows = sweep.run_case(sweep.cases("conv2d")[2], "im2col", dtype=jnp.float32)
    agree = [r for r in rows if r.check in ("forward", "vjp")]
    assert all(r.status == "pass" and r.tol == 1e-5 and r.dtype == "float32" for r in agree)
    assert max(r.max_rel for r in agree) > 1e-9  # float32 really ran (other summation order than lax)


@pytest.mark.parametrize("ties", ["first", "split", "all"])
def test_custom_vjp_pool_passes_on_ties_for_each_valid_policy(ties):
    case = next(c for c in sweep.cases("max_pool2d") if c.name == "ties_overlap")
    rows = {r.check: r for r in sweep.run_case(case, "custom_vjp", ties=ties)}
    if ties == "all":  # not a valid subgradient: the "ones" projection sees the duplicated mass
        assert rows["fd_projection"].status == "FAIL" and rows["vjp"].status == "pass"
    else:
        assert rows["fd_projection"].status == "pass" and rows["vjp"].status == "pass"
    assert rows["jacobian"].status == "n/a"


# ----------------------------------------------------------------------------- what each case is compared with
@pytest.mark.parametrize("impl,ties,policy", [
    ("lax", "split", "first"), ("reference", "first", "split"), ("custom_vjp", "all", "all"),
    ("auto", "split", "split"), ("im2col", "all", "all"),  # a conv impl inside a model: custom_vjp pools
])
def test_policy_follows_what_the_implementation_implements(impl, ties, policy):
    assert sweep._policy(impl, ties) == policy
    assert sweep._policy(lambda x: x, ties) == ties  # a mutant's function takes any policy


def test_reference_is_another_implementation_with_the_same_tie_policy():
    ties_case, perm_case = _case("max_pool2d", "ties_overlap"), _case("max_pool2d", "overlap3")
    assert sweep._reference_impl(ties_case, "lax", "split") == "custom_vjp"  # lax follows "first"
    assert sweep._reference_impl(ties_case, "reference", "first") == "custom_vjp"  # reference follows "split"
    assert sweep._reference_impl(ties_case, "custom_vjp", "first") == "lax"
    assert sweep._reference_impl(ties_case, "custom_vjp", "split") == "reference"
    assert sweep._reference_impl(perm_case, "lax", "first") == "reference"  # tie-free: any policy
    assert sweep._reference_impl(_case("max_pool2d", "dil2_same"), "reference", "split") == "custom_vjp"
    assert sweep._reference_impl(_case("conv2d", "basic"), "lax", "first") == "reference"
    assert sweep._reference_impl(_case("avg_pool2d", "overlap3"), "lax", "first") == "reference"


# ----------------------------------------------------------------------------- the grid
def test_full_sweep_is_the_quick_sweep_plus_the_grids():
    quick, full = sweep.cases("all"), sweep.cases("all", "full")
    assert full[: len(quick)] == quick
    conv = [c for c in full[len(quick):] if c.op == "conv2d"]
    assert [c.name for c in conv] == [c.name for c in sweep.conv_grid()] and len(conv) >= 300
    assert {c.op for c in full[len(quick):]} == {"conv2d", "max_pool2d", "avg_pool2d"}
    assert len({(c.op, c.name) for c in full}) == len(full)  # names are unique per op
    assert {c.inputs for c in full if c.op == "max_pool2d"} == {"perm", "ties"}


@pytest.mark.parametrize("args,match", [(("dense",), "op must be one of conv2d, max_pool2d"),
                                        (("all", "medium"), "sweep must be one of quick, full")])
def test_cases_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        sweep.cases(*args)


def test_tie_policy_table_is_pools():
    assert sweep._policy("lax", "all") == pool.IMPL_TIES["lax"][0] == "first"
    assert sweep._policy("reference", "all") == pool.IMPL_TIES["reference"][0] == "split"


# ----------------------------------------------------------------------------- the command
# The default run takes the command through the average-pool sweep and the model's (the one
# whole-model finite-difference check); the conv and max-pool quick sweeps check under -m slow
# what test_conv's and test_pool(_forward)'s default grids (VJPs against lax, reference and NumPy routing)
# and the per-case tests above check.
# The N-d and decoder ops' command runs are under -m slow too (20-30 s each); tests/test_sweep_nd.py runs
# one case of each by default.
@pytest.mark.parametrize("op", [pytest.param(op, marks=pytest.mark.slow if op in ("conv2d", "max_pool2d")
                                             + sweep.sweep_nd.ND_OPS else ()) for op in sweep.OPS])
def test_quick_sweep_exits_zero_for_every_op(op, tmp_path, capsys):
    md, csv_path = tmp_path / "t.md", tmp_path / "t.csv"
    assert sweep.cli_main(["--op", op, "--md", str(md), "--csv", str(csv_path)]) == 0
    n = len(sweep.cases(op))
    assert len(csv_path.read_text().splitlines()) == 1 + 5 * n
    assert md.read_text().count("| pass |") + md.read_text().count("| n/a |") == 5 * n
    assert f"{5 * n} checks, 0 failed" in capsys.readouterr().out


def test_command_rejects_bad_arguments(capsys):
    assert sweep.cli_main(["--op", "dense"]) == 2  # each call's own message (one read of both let either pass)
    assert "argument --op: invalid choice: 'dense'" in capsys.readouterr().err
    assert sweep.cli_main(["--mutant", "no_such_bug", "--op", "conv2d"]) == 2
    err = capsys.readouterr().err
    assert "mutant must be one of" in err and err.rstrip().endswith("got 'no_such_bug'")


def test_command_never_overwrites_a_table_file_without_overwrite(tmp_path, capsys, monkeypatch):
    """An existing --csv / --md is refused before the sweep runs and kept; --overwrite replaces it.
    Before, the file was replaced (and a bad path was found only after the whole sweep)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    real = sweep.run_sweep
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: pytest.fail("swept before checking the paths"))
    for flag in ("--csv", "--md"):
        assert sweep.cli_main(["--op", "avg_pool2d", flag, str(notes)]) == 2
        assert f"{flag} '{notes}' exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert sweep.cli_main(["--op", "avg_pool2d", "--md", str(tmp_path / "no" / "t.md")]) == 2
    # one new file named twice: the markdown replaced the CSV, exit 0; --matrix never wrote either
    both = str(tmp_path / "t.txt")
    assert sweep.cli_main(["--op", "avg_pool2d", "--csv", both, "--md", both]) == 2
    assert "--csv and --md name one file" in capsys.readouterr().err
    monkeypatch.setattr(sweep, "mutation_matrix", lambda **k: pytest.fail("ran the matrix"))
    assert sweep.cli_main(["--matrix", "--md", both]) == 2
    assert "--matrix prints the mutation-catch matrix only" in capsys.readouterr().err
    assert not os.path.exists(both) and notes.read_text() == "mine"
    monkeypatch.setattr(sweep, "run_sweep", real)
    assert sweep.cli_main(["--op", "avg_pool2d", "--csv", str(notes), "--overwrite"]) == 0
    assert notes.read_text().startswith(",".join(sweep._COLUMNS))


def test_winograd_joins_the_sweep_on_the_cases_its_rule_admits():
    admitted = [c.name for c in sweep.cases("conv2d") if sweep.computes(c, "winograd")]
    assert admitted == ["basic"]
    assert all(sweep.computes(c, "lax") for c in sweep.cases("conv2d"))


@pytest.mark.slow  # five checks compiled for one case (6 s); test_winograd checks the same properties by default
def test_winograd_sweeps_the_cases_its_rule_admits():
    """impl='winograd' (3x3, stride 1, dilation 1 only) joins the gradcheck sweep on the quick conv
    cases it computes, and every check passes there: forward and hand-derived VJP against lax, finite
    differences, the Jacobian and second order."""
    rows = sweep.run_sweep("conv2d", "winograd")
    assert {r.case for r in rows} == {"basic"} and len(rows) == len(sweep.CHECKS)
    assert all(r.status == "pass" for r in rows), [(r.check, r.status) for r in rows]
