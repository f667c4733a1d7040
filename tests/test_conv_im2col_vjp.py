"""im2col_vjp (fcnn/ops/conv_nd.py): its pieces are what they say, bit for bit. Its values and
gradients against the NumPy loop and lax are in the grids of tests/test_conv.py and
tests/test_conv_nd.py, its NaN/inf pattern in test_conv_nd.py::test_nonfinite_table, auto's rule in
tests/test_auto.py."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fcnn.ops import conv


def test_16_bit_concatenate_moves_the_bits():
    """im2col's patch matrices join 16-bit floats as their uint16 bits: the result is NumPy's
    concatenate bit for bit, signed zeros, infinities, subnormals and NaN payloads included."""
    from fcnn.ops.conv_vjp import concatenate_bits

    for dtype in (jnp.bfloat16, jnp.float16):
        bits = np.random.default_rng(3).integers(0, 2 ** 16, size=(3, 2, 5, 7), dtype=np.uint16)
        bits[0, 0, 0, :4] = [0x0000, 0x8000, 0x7F81, 0xFFC1]  # +0, -0, NaNs with payloads
        parts = [jax.lax.bitcast_convert_type(jnp.asarray(b), dtype) for b in bits]  # three (2, 5, 7)
        for axis in (0, -1, -2):
            got = jax.jit(functools.partial(concatenate_bits, axis=axis))(parts)
            assert got.dtype == dtype
            want = np.concatenate([np.asarray(jax.lax.bitcast_convert_type(p, jnp.uint16)) for p in parts], axis)
            np.testing.assert_array_equal(np.asarray(jax.lax.bitcast_convert_type(got, jnp.uint16)), want)


def test_all_finite_is_false_for_any_nan_or_inf_in_any_argument():
    """The guards' predicate, over dtypes and positions: one NaN, inf or -inf anywhere in any argument;
    True for all-finite arguments whose plain sum would overflow (each dtype's largest value, thrice)."""
    from fcnn.ops.conv_vjp import all_finite

    fn = jax.jit(all_finite)
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64):
        for bad in (np.nan, np.inf, -np.inf, None):
            for which in (0, 1):
                a = [np.ones((4, 5)), np.full(3, float(jnp.finfo(dtype).max))]
                if bad is not None:
                    a[which][(2, 3) if which == 0 else (1,)] = bad
                assert bool(fn(*(jnp.asarray(v, dtype) for v in a))) == (bad is None), (dtype, bad, which)


def test_im2col_vjp_runs_its_three_products_for_a_finite_kernel():
    """With a finite kernel im2col_vjp's z is im2col's, its dx im2col's convolution of the dilated dZ
    with the rotated kernel and its dw the transposed-patch product, bit for bit (float32). The dx
    of the other branch (col2im's, taken for a non-finite kernel: the table below) differs from it
    in rounding, so a guard that always took that branch fails here."""
    from fcnn.ops.conv_nd import _conv_im2col
    from fcnn.ops.conv_vjp import conv_backward_input, conv_backward_input_col2im, conv_backward_kernel_patches

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 9, 8, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 16, 24)), jnp.float32)
    ct = jnp.asarray(rng.normal(size=(2, 5, 4, 24)), jnp.float32)
    geo = dict(stride=(2, 2), pads=((1, 1), (1, 1)), dilation=(1, 1), groups=1, precision=None)

    @jax.jit
    def run(x, w, ct):
        z, pull = jax.vjp(lambda x, w: conv(x, w, stride=2, padding=1, impl="im2col_vjp"), x, w)
        fast = (_conv_im2col(x, w, *geo.values()), conv_backward_input(ct, w, x.shape[1:-1], conv=_conv_im2col, **geo),
                conv_backward_kernel_patches(x, ct, w.shape[:-2], **geo))
        return (z, *pull(ct)), fast, conv_backward_input_col2im(ct, w, x.shape[1:-1], **geo)

    got, fast, safe_dx = run(x, w, ct)
    for name, g, want in zip(("z", "dx", "dw"), got, fast):
        np.testing.assert_array_equal(g, want, err_msg=name)
    assert not np.array_equal(fast[1], safe_dx)
    np.testing.assert_allclose(fast[1], safe_dx, rtol=1e-4, atol=1e-4)


def test_im2col_vjp_second_order_against_finite_differences():
    """Its backward (the finite-kernel branch of each lax.cond) is differentiable JAX: grad of grad
    agrees with finite differences (float64, jax.test_util.check_grads, reverse mode)."""
    from jax.test_util import check_grads

    rng = np.random.default_rng(8)
    x, w, b = rng.normal(size=(2, 7, 6, 3)), rng.normal(size=(3, 2, 3, 4)), rng.normal(size=(4,))
    f = jax.jit(lambda x, w, b: conv(x, w, b, stride=(2, 1), padding=((1, 1), (0, 1)), impl="im2col_vjp"))
    check_grads(f, (x, w, b), order=2, modes=["rev"])  # float64: tests/conftest.py enables x64
