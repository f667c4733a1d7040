"""Every deliberately wrong gradient in ``fcnn.mutants`` is caught by the quick sweep, by the checks
we expect, only on the configurations that expose it; the unmutated builders pass.

The default run checks each mutant on the case that exposes it; ``pytest -m slow`` also checks
that it passes where it cannot show, and the command on a mutant of every op.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import mutants, sweep
from fcnn.mutants import MUTANTS
from fcnn.ops import pool

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
    # one input channel per group (depthwise): c*taps + t and t*cin + c are the same row
    "conv_patches_dw_channel_major": ("basic", "depthwise", {"vjp", "fd_projection", "jacobian", "second_order"}),
    # db does not depend on x or w: no cross term for the second order to see
    "conv_bias_first_example": ("basic", "s2_same", {"vjp", "fd_projection", "jacobian"}),
    # a wrong forward with its own exact gradient: finite differences agree with it
    # (depthwise: stride 2 along W = 7, where (W - 1) % 2 == 0 and the stride-1 pad is SAME's)
    "conv_same_pad_ignores_stride": ("s2_same", "depthwise", {"forward", "vjp"}),
    "pool_overwrite": ("overlap3", "tiled2", {"vjp", "fd_projection", "jacobian"}),
    "pool_ties_all_as_first": ("ties_overlap", "overlap3", {"vjp", "fd_projection"}),
    "pool_grad_to_padding": ("pad_tl", "overlap3", {"vjp", "fd_projection", "jacobian"}),
    "avg_pool_count_mismatch": ("pad_excl", "overlap3", {"vjp", "fd_projection", "jacobian"}),
    # fcnn.mutants_nd: three wrong forwards (autodiff backward: only agreement sees them), one wrong backward
    "ct_kernel_not_rotated": ("ct1d_s3_op2", None, {"forward", "vjp"}),
    "ct_output_padding_at_start": ("ct1d_s3_op2", "ct3d_ncdhw_same", {"forward", "vjp"}),  # SAME k2 s2: op 0
    "upsample_whole_pixel_centres": ("bilinear_x23", "nearest2d_x2", {"forward", "vjp"}),
    "conv3d_depth_stride_ignored": ("c3d_s211_same", "c3d_ncdhw_s121", {"vjp", "fd_projection", "jacobian"}),
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
def test_mutant_is_caught_where_it_shows(name):
    m = mutants.get_mutant(name)
    hit, _, checks = EXPECT[name]
    assert _failing(sweep.run_case(_case(m.op, hit), m.fn, impl_name=name)) == checks


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, e in EXPECT.items() if e[1] is not None))
def test_mutant_passes_where_it_cannot_show(name):
    m = mutants.get_mutant(name)
    assert _failing(sweep.run_case(_case(m.op, EXPECT[name][1]), m.fn, impl_name=name)) == set()


@pytest.mark.parametrize("case", ["groups2_d2", pytest.param("s32_d21_asym", marks=pytest.mark.slow)])
def test_unmutated_conv_builder_passes(case):
    rows = sweep.run_case(_case("conv2d", case), mutants._conv_mutant())
    assert {r.status for r in rows} == {"pass"}


@pytest.mark.parametrize("case", [pytest.param("pad_tl", marks=pytest.mark.slow),
                                  pytest.param("dil2_same", marks=pytest.mark.slow), "ties_overlap"])
def test_unmutated_pool_backward_passes(case):
    rows = sweep.run_case(_case("max_pool2d", case), mutants.make_max_pool())
    assert {r.status for r in rows} <= {"pass", "n/a"} and "pass" in {r.status for r in rows}


def test_pool_mutants_are_the_shipped_backward_with_one_flag_off():
    """On the 3x3 input whose centre (9) is the maximum of all four 2x2 windows (stride 1), the
    shipped backward adds the four cotangents there; overwriting keeps one of them; with a
    top/left pad of 1, cropping at 0 shifts the gradient one cell down and right; and a mutant that
    claims "first" but applies "all" sends a tied window's gradient to every maximum."""
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 9.0, 5.0], [6.0, 7.0, 8.0]]).reshape(1, 3, 3, 1)
    g = jnp.array([[1.0, 10.0], [100.0, 1000.0]]).reshape(1, 2, 2, 1)

    def dx(fn, x, g, **kw):
        return np.asarray(jax.vjp(lambda v: fn(v, 2, stride=1, **kw), x)[1](g)[0])[0, :, :, 0]

    shipped = lambda v, *a, **k: pool.max_pool2d(v, *a, impl="custom_vjp", **k)  # noqa: E731
    centre = np.zeros((3, 3))
    centre[1, 1] = 1111.0
    np.testing.assert_array_equal(dx(shipped, x, g), centre)
    np.testing.assert_array_equal(dx(mutants.make_max_pool(), x, g), centre)
    centre[1, 1] = 1.0  # the tap last in row-major window order, (1, 1), writes last: window (0, 0)'s
    np.testing.assert_array_equal(dx(mutants.MUTANTS["pool_overwrite"].fn, x, g), centre)
    # padding ((1, 0), (1, 0)): 3x3 windows of 2x2, the (0, 0) window holds only x[0, 0] = 1
    pads = ((1, 0), (1, 0))
    g9 = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    # windows (row-major) hold the maxima 1, 2, 3, 4, 9, 9, 6, 9, 9: the 9 collects 5 + 6 + 8 + 9
    right = [[1, 2, 3], [4, 28, 0], [7, 0, 0]]
    np.testing.assert_array_equal(dx(shipped, x, g9, padding=pads), right)
    np.testing.assert_array_equal(dx(mutants.make_max_pool(), x, g9, padding=pads), right)
    shifted = [[0, 0, 0], [0, 1, 2], [0, 4, 28]]  # the padded gradient read from (0, 0), not (1, 1)
    np.testing.assert_array_equal(dx(mutants.MUTANTS["pool_grad_to_padding"].fn, x, g9, padding=pads), shifted)
    ties = jnp.ones((1, 2, 2, 1))
    one = jnp.ones((1, 1, 1, 1))
    np.testing.assert_array_equal(dx(shipped, ties, one, ties="first"), [[1, 0], [0, 0]])
    np.testing.assert_array_equal(dx(mutants.MUTANTS["pool_ties_all_as_first"].fn, ties, one, ties="first"),
                                  [[1, 1], [1, 1]])


@pytest.mark.parametrize("name", [pytest.param("conv_groups_interleaved", marks=pytest.mark.slow),
                                  pytest.param("pool_ties_all_as_first", marks=pytest.mark.slow),
                                  "avg_pool_count_mismatch"])
def test_command_exits_nonzero_for_a_mutant(name, capsys):
    assert sweep.cli_main(["--mutant", name]) == 1
    out = capsys.readouterr().out
    assert f"| {name} |" in out and "| FAIL |" in out


def test_same_pad_ignoring_stride_shifts_only_misaligned_sizes():
    """Kernel [1, 0, 0] picks each window's first cell, so the output shows where the windows start.
    SAME, stride 2: H = 6 pads (0, 1) (total (3-1)*2 + 3 - 6 = 1) and reads rows 0, 2, 4 -> 1, 3, 5;
    the stride-1 rule pads (1, 1) and reads padding, 2, 4 -> 0, 2, 4. H = 7: both pad (1, 1)."""
    m = mutants.get_mutant("conv_same_pad_ignores_stride").fn
    w = jnp.array([1.0, 0.0, 0.0]).reshape(3, 1, 1, 1)
    x6 = jnp.arange(1.0, 7.0).reshape(1, 6, 1, 1)
    np.testing.assert_array_equal(np.ravel(m(x6, w, stride=(2, 1), padding="SAME")), [0, 2, 4])
    np.testing.assert_array_equal(np.ravel(mutants.conv_ops.conv2d(x6, w, stride=(2, 1), padding="SAME")), [1, 3, 5])
    x7 = jnp.arange(1.0, 8.0).reshape(1, 7, 1, 1)
    np.testing.assert_array_equal(np.ravel(m(x7, w, stride=(2, 1), padding="SAME")), [0, 2, 4, 6])
    np.testing.assert_array_equal(np.ravel(m(x6, w, padding="SAME")), [0, 1, 2, 3, 4, 5])  # stride 1: SAME itself


def test_get_mutant_names_the_choices():
    with pytest.raises(ValueError, match="conv_kernel_not_rotated"):
        mutants.get_mutant("nope")


@pytest.mark.slow
def test_quick_sweep_catches_every_mutant():
    matrix = sweep.mutation_matrix()
    assert [e["name"] for e in matrix if not e["caught_by"]] == []
    rows = {e["name"]: e for e in matrix}
    assert rows["conv_groups_interleaved"]["caught_by"] == ["groups2_d2"]  # the one case with cin/groups > 1
    assert rows["conv_same_pad_ignores_stride"]["fd_projection"].startswith("0/")
