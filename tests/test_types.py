"""The layer contract's helpers: the in_shape rule, numel, the kernel rule and the metadata table."""
import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import types
from fcnn.types import Layer, LayerInfo, check_shape, describe, is_kernel, kernel_mask, layer_info, numel


def _identity_layer():
    return Layer(lambda k, s: (s, {}, {}), lambda p, s, x, *, key=None, train=False: (x, s))


def test_layer_is_an_init_apply_pair():
    init, apply = _identity_layer()
    layer = Layer(init, apply)
    assert layer.init is init and layer.apply is apply and tuple(layer) == (init, apply)
    assert Layer._fields == ("init", "apply")


def test_check_shape_returns_python_ints():
    got = check_shape([np.int64(2), 3, np.int32(4)])
    assert got == (2, 3, 4) and all(type(d) is int for d in got)
    assert check_shape(()) == ()


@pytest.mark.parametrize("bad", [(2, 0), (2, -1), (2.0, 3), (2, True), "23", 5, None])
def test_check_shape_refuses_and_names_the_argument(bad):
    with pytest.raises(ValueError, match=r"x_shape must be a tuple of positive ints \(batch included\)"):
        check_shape(bad, "x_shape")


def test_numel_by_hand():
    assert numel((2, 3, 4)) == 24 and numel(()) == 1 and numel([7]) == 7 and numel((5, 0)) == 0
    assert type(numel(np.array([2, 3]))) is int


def test_kernel_rule_marks_ndim_two_and_more():
    params = ({"w": jnp.zeros((5, 5, 1, 6)), "b": jnp.zeros(6)}, {},
              {"scale": np.ones(3), "offset": np.zeros(3)}, [np.zeros((400, 120)), np.float32(1.0)])
    expected = ({"w": True, "b": False}, {}, {"scale": False, "offset": False}, [True, False])
    assert kernel_mask(params) == expected
    assert is_kernel(np.zeros((1, 1))) and not is_kernel(np.zeros(7)) and not is_kernel(3.0)


def test_l2_penalty_sums_exactly_the_leaves_kernel_mask_marks():
    """One rule for "kernel": the L2 penalty and AdamW's decay mask (test_optim) both use it."""
    from fcnn import losses

    params = {"conv": {"w": np.full((2, 2, 1, 3), 2.0), "b": np.full(3, 5.0)}, "bn": {"scale": np.ones(3)}}
    marked = [leaf for leaf, m in zip(jax.tree.leaves(params), jax.tree.leaves(kernel_mask(params))) if m]
    assert float(losses.l2_penalty(params, 1.0)) == sum(float(np.sum(leaf ** 2)) for leaf in marked) == 48.0


def test_describe_and_layer_info_of_a_hand_built_layer():
    raw = _identity_layer()
    assert layer_info(raw) == LayerInfo("?", "unknown")
    named = describe(raw, LayerInfo("Mine", "lambda", detail="d", flops=lambda i, o: 7))
    assert named is raw and layer_info(raw).name == "Mine" and layer_info(raw).flops((1,), (1,)) == 7
    assert layer_info(_identity_layer()).name == "?"  # the entry belongs to that one layer


def test_metadata_goes_away_with_its_layer():
    n = len(types._INFO)
    layer = describe(_identity_layer(), LayerInfo("Tmp", "lambda"))
    assert len(types._INFO) == n + 1
    del layer
    gc.collect()
    assert len(types._INFO) == n
