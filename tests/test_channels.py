"""fcnn.channels: per-channel sums and broadcasts, against NumPy sums and broadcasting, in both forms
(the matrix-product form XLA:CPU gets and the plain reduction other backends get)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fcnn import channels


SHAPES_AXES = [((2, 5, 4, 3), -1), ((2, 3, 5, 4), 1), ((3, 4), 0), ((2, 3, 4, 5, 6), 2)]  # last, middle, first axis


@pytest.fixture(params=["matmul", "reduce"])
def form(request, monkeypatch):
    """Run each test with the CPU matrix-product form and with the plain reduction form."""
    monkeypatch.setattr(channels, "uses_matmul", lambda dtype, c, size: request.param == "matmul")
    return request.param


def _np_sum(x, axis):
    axis = axis % x.ndim
    return np.sum(x, axis=tuple(a for a in range(x.ndim) if a != axis))


def _np_bshape(x, axis):
    shape = [1] * x.ndim
    shape[axis % x.ndim] = x.shape[axis]
    return shape


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
def test_sum_mean_add_scale_equal_numpy_in_float64(form, shape, axis):
    rs = np.random.RandomState(0)
    x = rs.randn(*shape)
    v = rs.randn(shape[axis])
    np.testing.assert_allclose(channels.channel_sum(x, axis), _np_sum(x, axis), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(channels.channel_mean(x, axis), _np_sum(x, axis) / (x.size // shape[axis]),
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(channels.add_channels(x, v, axis), x + np.reshape(v, _np_bshape(x, axis)),
                               rtol=1e-15, atol=0)
    np.testing.assert_allclose(channels.scale_channels(x, v, axis), x * np.reshape(v, _np_bshape(x, axis)),
                               rtol=1e-15, atol=0)


@pytest.mark.parametrize("shape, axis", [((2, 3, 5, 4), 1)])  # a middle axis: both matrix products
def test_gradients_against_finite_differences_to_second_order(form, shape, axis):
    """Plain linear JAX operations: forward and reverse mode, second order included."""
    rs = np.random.RandomState(1)
    x, v = rs.randn(*shape), rs.randn(shape[axis])
    check_grads(lambda x: channels.channel_sum(jnp.sin(x), axis), (x,), order=2, modes=("fwd", "rev"))
    check_grads(lambda x, v: jnp.sin(channels.add_channels(x, v, axis)), (x, v), order=2, modes=("fwd", "rev"))
    check_grads(lambda x, v: jnp.sin(channels.scale_channels(x, v, axis)), (x, v), order=2, modes=("fwd", "rev"))


def test_the_bias_gradient_is_the_channel_sum_of_the_output_gradient(form):
    """The adjoint identity <add(0, v), g> = <v, channel_sum(g)>, through jax.grad."""
    rs = np.random.RandomState(2)
    x, v, g = rs.randn(4, 3, 5, 6), rs.randn(6), rs.randn(4, 3, 5, 6)
    dv = jax.grad(lambda v: jnp.sum(channels.add_channels(x, v) * g))(v)
    np.testing.assert_allclose(dv, _np_sum(g, -1), rtol=1e-13)


def _primitives(jaxpr):
    """Every primitive name in a jaxpr, sub-jaxprs (pjit, custom rules) included."""
    names = set()
    for e in jaxpr.eqns:
        names.add(e.primitive.name)
        for p in e.params.values():
            inner = getattr(p, "jaxpr", p)
            if hasattr(inner, "eqns"):
                names |= _primitives(inner)
    return names


def test_the_matrix_product_form_is_chosen_on_cpu_for_floats_8_channels_and_32768_elements():
    assert (channels.MIN_CHANNELS, channels.MIN_SIZE) == (8, 32768)
    assert channels.uses_matmul(jnp.float32, 8, 32768) and channels.uses_matmul(jnp.bfloat16, 512, 10 ** 6)
    assert not channels.uses_matmul(jnp.float32, 7, 10 ** 6) and not channels.uses_matmul(jnp.int32, 64, 10 ** 6)
    assert not channels.uses_matmul(jnp.float32, 64, 32767)


def test_on_cpu_sums_and_bias_gradients_are_matrix_products_not_reductions():
    x = jnp.ones((32, 16, 8, 8), jnp.float32)  # 32768 elements, 8 channels: the matrix-product form
    sum_prims = _primitives(jax.make_jaxpr(channels.channel_sum)(x).jaxpr)
    _, vjp = jax.vjp(lambda v: channels.add_channels(x, v), jnp.ones(8, jnp.float32))
    grad_prims = _primitives(jax.make_jaxpr(vjp)(x).jaxpr)
    for names in (sum_prims, grad_prims):
        assert "dot_general" in names and "reduce_sum" not in names, names


def test_bfloat16_sums_accumulate_in_float32(form):
    """4096 ones in bfloat16 add to 4096 (a bfloat16 accumulator would stop at 256)."""
    x = jnp.ones((4096, 2), jnp.bfloat16)
    s = channels.channel_sum(x)
    assert s.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(s, np.float32), [4096.0, 4096.0])


def test_integer_arrays_use_the_plain_sum():
    x = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    np.testing.assert_array_equal(channels.channel_sum(x), _np_sum(x, -1))
    np.testing.assert_array_equal(channels.add_channels(x, np.arange(4)), x + np.arange(4))


@pytest.mark.parametrize("f", [channels.add_channels, channels.scale_channels])
def test_a_vector_of_the_wrong_length_is_refused(f):
    with pytest.raises(ValueError, match=r"expected a \(3,\) vector for axis -1 of x \(2, 3\), got shape \(4,\)"):
        f(np.zeros((2, 3)), np.zeros(4))
    with pytest.raises(ValueError, match=r"expected a \(2,\) vector for axis 0"):
        f(np.zeros((2, 3)), np.zeros((2, 1)), 0)


def test_batchnorm_over_a_named_axis_equals_the_global_batch_in_both_forms(form):
    """BatchNorm(axis_name) inside vmap over 4 "devices" of 2 examples: outputs, running statistics
    and input gradients equal one BatchNorm over the 8 examples (pmean of channel sums)."""
    from fcnn.norms import BatchNorm

    x = np.random.RandomState(4).randn(8, 3, 3, 8) * 2 + 1
    g = np.random.RandomState(5).randn(8, 3, 3, 8)
    local, glob = BatchNorm(axis_name="d"), BatchNorm()
    _, p, s = glob.init(jax.random.PRNGKey(0), x.shape)

    # each side jitted: one compile instead of one per eager op (the values are the same programs')
    y_ref, s_ref = jax.jit(lambda xs: glob.apply(p, s, xs, train=True))(x)
    dx_ref = jax.jit(jax.grad(lambda xs: jnp.sum(glob.apply(p, s, xs, train=True)[0] * g)))(x)
    shard = lambda a: a.reshape(4, 2, 3, 3, 8)  # noqa: E731
    y, st = jax.jit(jax.vmap(lambda xs: local.apply(p, s, xs, train=True), axis_name="d"))(shard(x))
    dx = jax.jit(jax.vmap(jax.grad(lambda xs, gs: jnp.sum(local.apply(p, s, xs, train=True)[0] * gs)),
                          axis_name="d"))(shard(x), shard(g))
    np.testing.assert_allclose(np.reshape(y, x.shape), y_ref, rtol=1e-10, atol=1e-12)
    for k in ("mean", "var"):
        np.testing.assert_allclose(st[k][0], s_ref[k], rtol=1e-10)
    np.testing.assert_allclose(np.reshape(dx, x.shape), dx_ref, rtol=1e-9, atol=1e-11)
