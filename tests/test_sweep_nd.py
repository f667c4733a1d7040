"""fcnn.sweep_nd: the N-d and decoder ops of the gradcheck sweep. Its two independent references
against hand-computed values, one quick case of each op through every check (the whole quick sweep
of each op runs under -m slow in tests/test_sweep.py), and bad implementation names."""
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import ops, sweep, sweep_nd


def _case(op, name):
    return next(c for c in sweep.cases(op) if c.name == name)


def test_adaptive_windows_reference_by_hand():
    x = np.arange(2 * 5 * 7, dtype=np.float64).reshape(1, 2, 5, 7)  # NCHW, 5x7 -> 3x4
    y = np.asarray(sweep_nd.adaptive_pool_windows_reference(x, (3, 4), kind="avg", layout="NCHW"))
    rows, cols = [(0, 2), (1, 4), (3, 5)], [(0, 2), (1, 4), (3, 6), (5, 7)]  # floor(i*in/out), ceil((i+1)*in/out)
    want = np.array([[x[0, :, a:b, c:d].mean(axis=(1, 2)) for c, d in cols] for a, b in rows])  # (3, 4, 2)
    np.testing.assert_allclose(y[0], want.transpose(2, 0, 1), rtol=1e-12)
    m = np.asarray(sweep_nd.adaptive_pool_windows_reference(x, (3, 4), kind="max", layout="NCHW"))
    np.testing.assert_array_equal(m[0, 0], [[x[0, 0, b - 1, d - 1] for c, d in cols] for a, b in rows])


def test_jax_image_reference_is_pytorchs_upsampling_at_integer_scales():
    x = np.arange(6, dtype=np.float64).reshape(1, 2, 3, 1)
    np.testing.assert_array_equal(sweep_nd.upsample_jax_image(x, 2)[0, :, :, 0],
                                  np.repeat(np.repeat(x[0, :, :, 0], 2, 0), 2, 1))
    row = np.array([[[0.0], [4.0]]])  # 2 -> 4 half-pixel: src = (j + 0.5)/2 - 0.5 clamped: 0, .25, .75, 1
    np.testing.assert_allclose(np.asarray(sweep_nd.upsample_jax_image(row, 2, method="linear"))[0, :, 0],
                               [0, 1, 3, 4], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(ops.upsample(row, 2, method="linear"))[0, :, 0], [0, 1, 3, 4], rtol=1e-12)
    with pytest.raises(ValueError, match="align_corners"):
        sweep_nd.upsample_jax_image(row, 2, method="linear", align_corners=True)


@pytest.mark.parametrize("op,name", [("conv", "c3d_s211_same"), ("conv_transpose", "ct1d_s3_op2"),
                                     ("upsample", "bilinear_x23"), ("adaptive_pool", "max2d_5x7to3x4")])
def test_one_quick_case_of_each_op_passes_every_check(op, name):
    rows = sweep.run_case(_case(op, name), sweep.DEFAULT_IMPL[op])
    assert [r.check for r in rows] == list(sweep.CHECKS)
    assert all(r.status == "pass" for r in rows), [(r.check, r.max_rel) for r in rows if r.status != "pass"]
    assert rows[0].impl == sweep.DEFAULT_IMPL[op] and rows[2].dtype == "float64"


def test_reference_pairs_and_arguments():
    assert sweep._reference_impl(_case("upsample", "nearest2d_x2"), "custom_vjp", "first") == "jax_image"
    assert sweep._reference_impl(_case("adaptive_pool", "avg1d_7to3"), "windows", "first") == "gather"
    assert sweep._reference_impl(_case("conv_transpose", "ct2d_s2_p1_op1"), "lax", "first") == "reference"
    args, names = sweep_nd.arguments(_case("conv_transpose", "ct2d_g2_asym_d2"), jnp.float64)
    assert names == ["x", "w", "b"] and args[2].shape == (2,)  # bias per output channel: cin/g (1) x groups (2)
    assert len(sweep.cases("all")) == len(sweep._QUICK) and {"conv", "upsample"} <= set(sweep.OPS)


def test_unknown_implementation_is_refused(capsys):
    assert sweep.cli_main(["--op", "upsample", "--impl", "lax"]) == 2
    assert "impl must be one of custom_vjp, jax_image" in capsys.readouterr().err
