"""Every deliberately wrong gradient in ``fcnn.mutants`` is caught by the quick sweep, by the checks
we expect, only on the configurations that expose it; the unmutated builders pass."""
import pytest

from fcnn import mutants, sweep
from fcnn.mutants import MUTANTS

# mutant -> (a quick case that exposes it, a quick case that cannot, checks failing on the first)
EXPECT = {
    "conv_kernel_not_rotated": ("basic", None, {"vjp", "fd_projection", "jacobian", "second_order"}),
    "conv_padding_off_by_one": ("basic", None, {"vjp", "fd_projection", "jacobian", "second_order"}),
    "conv_pads_lo_hi_swapped": ("s2_same", "basic", {"vjp", "fd_projection", "jacobian", "second_order"}),
    # dX and dW swapped together are the exact gradient of another conv: symmetric, so the
    # second-order check cannot see it
    "conv_stride_dilation_swapped": ("s32_d21_asym", "basic", {"vjp", "fd_projection", "jacobian"}),
    "conv_dw_stride_ignored": ("s2_same", "basic", {"vjp", "fd_projection", "jacobian", "second_order"}),
    "conv_channels_not_swapped": ("basic", "depthwise", {"vjp", "fd_projection", "jacobian", "second_order"}),
    "conv_groups_interleaved": ("groups2_d2", "depthwise", {"vjp", "fd_projection", "jacobian", "second_order"}),
    # db does not depend on x or w: no cross term for the second order to see
    "conv_bias_first_example": ("basic", "s2_same", {"vjp", "fd_projection", "jacobian"}),
    # a wrong forward with its own exact gradient: finite differences agree with it
    "conv_same_pad_at_start": ("s2_same", "nchw_d2", {"forward", "vjp"}),
    "pool_overwrite": ("overlap3", "tiled2", {"vjp", "fd_projection", "jacobian"}),
    "pool_ties_all_as_first": ("ties_overlap", "overlap3", {"vjp", "fd_projection"}),
    "pool_grad_to_padding": ("pad_tl", "overlap3", {"vjp", "fd_projection", "jacobian"}),
    "avg_pool_count_mismatch": ("pad_excl", "overlap3", {"vjp", "fd_projection", "jacobian"}),
}


def _case(op, name):
    return next(c for c in sweep.cases(op) if c.name == name)


def _failing(rows):
    return {r.check for r in rows if r.status == "FAIL"}


def test_every_mutant_has_an_expectation():
    assert set(EXPECT) == set(MUTANTS) and len(MUTANTS) >= 8
    for name, (hit, miss, _) in EXPECT.items():
        op = MUTANTS[name].op
        assert _case(op, hit) and (miss is None or _case(op, miss))  # both are quick-sweep cases


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_mutant_is_caught_where_it_shows_and_only_there(name):
    m = mutants.get_mutant(name)
    hit, miss, checks = EXPECT[name]
    assert _failing(sweep.run_case(_case(m.op, hit), m.fn, impl_name=name)) == checks
    if miss is not None:
        assert _failing(sweep.run_case(_case(m.op, miss), m.fn, impl_name=name)) == set()


@pytest.mark.parametrize("case", ["groups2_d2", "s32_d21_asym"])
def test_unmutated_conv_builder_passes(case):
    rows = sweep.run_case(_case("conv2d", case), mutants._conv_mutant())
    assert {r.status for r in rows} == {"pass"}


@pytest.mark.parametrize("case", ["pad_tl", "dil2_same", "ties_overlap"])
def test_unmutated_pool_backward_passes(case):
    rows = sweep.run_case(_case("max_pool2d", case), mutants.make_max_pool())
    assert {r.status for r in rows} <= {"pass", "n/a"} and "pass" in {r.status for r in rows}


@pytest.mark.parametrize("name", ["conv_groups_interleaved", "pool_ties_all_as_first", "avg_pool_count_mismatch"])
def test_command_exits_nonzero_for_a_mutant(name, capsys):
    assert sweep.cli_main(["--mutant", name]) == 1
    out = capsys.readouterr().out
    assert f"| {name} |" in out and "| FAIL |" in out


def test_get_mutant_names_the_choices():
    with pytest.raises(ValueError, match="conv_kernel_not_rotated"):
        mutants.get_mutant("nope")


@pytest.mark.slow
def test_quick_sweep_catches_every_mutant():
    matrix = sweep.mutation_matrix()
    assert [e["name"] for e in matrix if not e["caught_by"]] == []
    rows = {e["name"]: e for e in matrix}
    assert rows["conv_groups_interleaved"]["caught_by"] == ["groups2_d2"]  # the one case with cin/groups > 1
    assert rows["conv_same_pad_at_start"]["fd_projection"].startswith("0/")
