"""fcnn.dtypes: the 16-bit float rule and the accumulation dtype, against the dtypes' own widths."""
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from fcnn.dtypes import acc_dtype, half_float


@pytest.mark.parametrize("dtype,half", [
    (jnp.bfloat16, True), (jnp.float16, True), ("bfloat16", True),
    (jnp.float32, False), (np.float64, False),
    (jnp.int16, False), (jnp.uint16, False),  # 16 bits, not floats: concatenate_bits moves them as they are
    (ml_dtypes.float8_e4m3fn, False), (jnp.int8, False), (jnp.bool_, False),
])
def test_half_float_is_exactly_the_16_bit_floats(dtype, half):
    assert half_float(dtype) is half


@pytest.mark.parametrize("dtype,acc", [
    (jnp.bfloat16, np.float32), (jnp.float16, np.float32), (jnp.float32, np.float32), (np.float64, np.float64),
])
def test_acc_dtype_widens_16_bit_floats_only(dtype, acc):
    assert acc_dtype(dtype) == np.dtype(acc)


def test_a_bfloat16_loss_is_reduced_in_float32():
    """losses' upcast, through half_float: the bfloat16 logits' loss is the float32 loss of the
    same (exactly representable) values, in float32."""
    from fcnn.losses import softmax_cross_entropy

    logits = jnp.asarray([[1.0, 2.0, 0.5]], jnp.bfloat16)
    loss16 = softmax_cross_entropy(logits, jnp.asarray([1]))
    loss32 = softmax_cross_entropy(logits.astype(jnp.float32), jnp.asarray([1]))
    assert loss16.dtype == jnp.float32 and float(loss16) == float(loss32)
