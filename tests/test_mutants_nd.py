"""fcnn.mutants_nd: each decoder/N-d mutant's bug shown on a hand-computed case next to the shipped op
(that the quick sweep catches each is tests/test_mutants.py's job)."""
import jax
import jax.numpy as jnp
import numpy as np

from fcnn import mutants, mutants_nd, ops


def test_unrotated_transposed_kernel_stamps_it_backwards():
    x, w = jnp.ones((1, 1, 1)), jnp.array([1.0, 2.0, 3.0]).reshape(3, 1, 1)  # one pixel, WIO kernel [1, 2, 3]
    np.testing.assert_array_equal(np.ravel(ops.conv_transpose(x, w)), [1, 2, 3])  # full[t] += x * w[t]
    np.testing.assert_array_equal(np.ravel(mutants_nd.ct_kernel_not_rotated(x, w)), [3, 2, 1])


def test_output_padding_at_the_start_shifts_the_output():
    x, w = jnp.ones((1, 2, 1)), jnp.ones((1, 1, 1))  # stride 2, k 1: full = [1, 0, 1]; op 1 -> length 4
    right = ops.conv_transpose(x, w, jnp.array([0.5]), stride=2, output_padding=1)
    np.testing.assert_array_equal(np.ravel(right), [1.5, 0.5, 1.5, 0.5])
    wrong = mutants_nd.ct_output_padding_at_start(x, w, jnp.array([0.5]), stride=2, output_padding=1)
    np.testing.assert_array_equal(np.ravel(wrong), [0.5, 1.5, 0.5, 1.5])


def test_whole_pixel_centres_shift_linear_upsampling():
    row = jnp.array([0.0, 4.0]).reshape(1, 2, 1)  # PyTorch: src = max((j + .5)/2 - .5, 0) = 0, .25, .75, 1.25->1
    np.testing.assert_allclose(np.ravel(ops.upsample(row, 2, method="linear")), [0, 1, 3, 4])
    np.testing.assert_allclose(np.ravel(mutants_nd.upsample_whole_pixel_centres(row, 2, method="linear")),
                               [0, 2, 4, 4])  # src = j/2 = 0, .5, 1, 1.5 (clamped to 1)
    np.testing.assert_array_equal(mutants_nd.upsample_whole_pixel_centres(row, 2), ops.upsample(row, 2))  # nearest


def test_depth_stride_ignored_only_in_the_backward():
    x, w = jnp.arange(1.0, 4.0).reshape(1, 3, 1, 1, 1), jnp.ones((1, 1, 1, 1, 1))
    m = mutants_nd.conv3d_depth_stride_ignored
    np.testing.assert_array_equal(m(x, w, stride=(2, 1, 1)), ops.conv(x, w, stride=(2, 1, 1)))  # z = x[0], x[2]
    dx = jax.grad(lambda x: m(x, w, stride=(2, 1, 1)).sum())(x)
    right = jax.grad(lambda x: ops.conv(x, w, stride=(2, 1, 1)).sum())(x)
    np.testing.assert_array_equal(np.ravel(right), [1, 0, 1])
    np.testing.assert_array_equal(np.ravel(dx), [1, 1, 0])  # dZ not spread by the depth stride
    x2 = jnp.arange(1.0, 5.0).reshape(1, 1, 2, 2, 1)  # stride in H only: the mutant is right
    np.testing.assert_array_equal(jax.grad(lambda x: m(x, w, stride=(1, 2, 1)).sum())(x2),
                                  jax.grad(lambda x: ops.conv(x, w, stride=(1, 2, 1)).sum())(x2))


def test_registered_beside_the_2d_mutants():
    rows = {name: op for name, op, *_ in mutants_nd.ROWS}  # the four bugs shown above: an empty table fails
    assert rows == {"ct_kernel_not_rotated": "conv_transpose", "ct_output_padding_at_start": "conv_transpose",
                    "upsample_whole_pixel_centres": "upsample", "conv3d_depth_stride_ignored": "conv"}
    for name, op in rows.items():
        assert mutants.get_mutant(name).op == op
