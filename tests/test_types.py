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
    gc.collect()  # layers of earlier tests held only by reference cycles (a saved traceback) go first
    n = len(types._INFO)
    layer = describe(_identity_layer(), LayerInfo("Tmp", "lambda"))
    assert len(types._INFO) == n + 1
    del layer
    gc.collect()
    assert len(types._INFO) == n


# ----------------------------------------------------------------------------- apply-time checks
def test_shape_text_writes_the_batch_as_n():
    assert types.shape_text((32, 28, 28, 1)) == "(n, 28, 28, 1)" and types.shape_text((4, 16)) == "(n, 16)"
    assert types.shape_text((8, 8, 3), batch=False) == "(8, 8, 3)" and types.shape_text((16,)) == "(16,)"


def test_init_text_prefers_the_recorded_shape_when_it_agrees_with_the_params():
    seen = {"in": (1, 28, 28, 1)}
    assert types.init_text(seen, lambda s: s[-1] == 1, "(n, h, w, 1)") == "(n, 28, 28, 1)"
    assert types.init_text(seen, lambda s: s[-1] == 3, "(n, h, w, 3)") == "(n, h, w, 3)"  # params from elsewhere
    assert types.init_text({}, lambda s: True, "(n, 16)") == "(n, 16)"  # init never ran on this layer


def test_input_shape_error_is_a_value_error_and_gathers_position_notes_and_context():
    def fail():
        raise types.input_mismatch("Dense", (4, 20), "(n, 16)", "the last dim must match")

    with pytest.raises(ValueError) as err:
        with types.init_context("serial", (1, 8), (4, 9)):
            with types.at_position("1"):
                with types.at_position("block", note="a hint"):
                    fail()
    assert isinstance(err.value, types.InputShapeError)
    assert str(err.value) == ("Dense: apply got inputs of shape (n, 20) but init was given (n, 16) (the last dim "
                              "must match) (layer 1.block in `fcnn summary`); a hint; serial: init was last given "
                              "inputs of shape (n, 8), apply got (n, 9)")
    with pytest.raises(ValueError, match="boom"):  # other errors pass through untouched
        with types.at_position("0"):
            raise ValueError("boom")


def test_check_key_accepts_one_prng_key_and_names_key_and_the_rule_otherwise():
    raw, typed = jax.random.PRNGKey(0), jax.random.key(0)
    for key in (raw, typed, np.asarray(raw)):
        assert types.check_key(key, "Dropout") is key
    assert types.check_key(None, "serial", optional=True) is None
    with pytest.raises(ValueError, match=r"^Dropout needs a PRNG key: pass key= a PRNG key \(jax.random.PRNGKey"
                                         r"\(seed\): uint32 of shape \(2,\); or jax.random.key\(seed\): a typed key "
                                         r"of shape \(\)\), got None$"):
        types.check_key(None, "Dropout")
    bad = [(0, "0 (int)"), (1.5, "1.5 (float)"), ("key", "'key' (str)"), (np.zeros(2, np.int32), "dtype int32"),
           (np.zeros((4, 2), np.uint32), "shape (4, 2)"), (jax.random.split(typed, 3), "shape (3,)")]
    for key, got in bad:
        with pytest.raises(TypeError, match=r"^Dropout needs a PRNG key: key must be a PRNG key") as err:
            types.check_key(key, "Dropout")
        assert got in str(err.value)
        with pytest.raises(TypeError, match=r"^serial: key must be a PRNG key .* or None, got"):
            types.check_key(key, "serial", optional=True)
    # under jit the key is a tracer: the check reads only its dtype and shape
    assert jax.jit(lambda k: types.check_key(k, "Dropout"))(raw).shape == (2,)


def test_check_key_with_steps_wants_a_stack_of_keys():
    raw, typed = jax.random.split(jax.random.PRNGKey(0), 3), jax.random.split(jax.random.key(0), 3)
    assert types.check_key(raw, "scan", steps=3) is raw and types.check_key(typed, "scan", steps=3) is typed
    for key in (raw[0], typed[0], raw[:2], jax.random.split(jax.random.PRNGKey(0), 4)):
        with pytest.raises(TypeError, match=r"^scan needs a PRNG key per step: keys must be a PRNG key per step, "
                                            r"stacked \(jax.random.PRNGKey per step: uint32 of shape \(3, 2\); or "
                                            r"typed keys of shape \(3,\)\), got an array of shape"):
            types.check_key(key, "scan", steps=3)
    with pytest.raises(ValueError, match=r"^scan needs a PRNG key per step: pass keys= .*got None$"):
        types.check_key(None, "scan", steps=3)


def test_check_layer_names_the_argument():
    layer = types.Layer(lambda k, s: (s, {}, {}), lambda p, s, x, **kw: (x, s))
    assert types.check_layer(layer) is layer
    for bad in ("lenet5", (layer.init, layer.apply), None):
        with pytest.raises(TypeError, match=rf"^net must be a Layer, got {type(bad).__name__}$"):
            types.check_layer(bad, "net")
