"""Tests for fcnn.ops.conv_vjp: the hand-derived backward pieces by hand in 1-D, and the two input
gradients (transposed conv and col2im) and the kernel gradient against autodiff of lax's convolution
in 1-3 D with stride, dilation, asymmetric padding and groups (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn.ops import conv_vjp

jax.config.update("jax_enable_x64", True)


def test_backward_by_hand_1d():
    """x = [1, 2, 3, 4, 5], w = [1, 10], stride 2, VALID -> z = [21, 43] (x[4] unused).
    With dZ = [1, 1]: dX = [1, 10, 1, 10, 0], dW = [1 + 3, 2 + 4] = [4, 6], db = 2."""
    x = jnp.arange(1.0, 6.0).reshape(1, 5, 1)
    w = jnp.array([1.0, 10.0]).reshape(2, 1, 1)
    geo = dict(stride=(2,), pads=((0, 0),), dilation=(1,), groups=1)
    dz = jnp.ones((1, 2, 1))
    np.testing.assert_allclose(conv_vjp.lax_conv(x, w, (2,), ((0, 0),), (1,), 1, None)[0, :, 0], [21, 43])
    for backward_input in (conv_vjp.conv_backward_input, conv_vjp.conv_backward_input_col2im):
        np.testing.assert_allclose(backward_input(dz, w, (5,), **geo)[0, :, 0], [1, 10, 1, 10, 0])
    np.testing.assert_allclose(conv_vjp.conv_backward_kernel(x, dz, (2,), **geo)[:, 0, 0], [4, 6])
    np.testing.assert_allclose(conv_vjp.conv_backward_bias(dz), [2.0])


@pytest.mark.parametrize("x_shape,w_shape,stride,pads,dilation,groups", [
    ((2, 9, 4), (3, 2, 6), (2,), ((2, 1),), (2,), 2),
    ((1, 6, 7, 3), (2, 3, 3, 4), (3, 2), ((1, 0), (0, 2)), (1, 2), 1),
    ((2, 5, 4, 6, 2), (2, 1, 3, 1, 2), (1, 2, 3), ((0, 1), (1, 1), (2, 0)), (2, 1, 1), 2),
], ids=["1d", "2d", "3d"])
def test_backward_pieces_equal_autodiff_of_lax(x_shape, w_shape, stride, pads, dilation, groups):
    rng = np.random.default_rng(len(x_shape))
    x, w = rng.normal(size=x_shape), rng.normal(size=w_shape)
    f = lambda x, w: conv_vjp.lax_conv(x, w, stride, pads, dilation, groups, None)  # noqa: E731
    z, pull = jax.vjp(f, x, w)
    dz = rng.normal(size=z.shape)
    dx, dw = pull(dz)
    geo = dict(stride=stride, pads=pads, dilation=dilation, groups=groups)
    np.testing.assert_allclose(conv_vjp.conv_backward_input(dz, w, x_shape[1:-1], **geo), dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv_vjp.conv_backward_input_col2im(dz, w, x_shape[1:-1], **geo), dx,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv_vjp.conv_backward_kernel(x, dz, w_shape[:-2], **geo), dw, rtol=1e-12, atol=1e-12)
