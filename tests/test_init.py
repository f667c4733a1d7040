"""Initialisers against their formulas: fans by hand, standard deviations and bounds measured.

Every draw is jitted: a ``jax.random`` draw of a new shape is a compile of its own, at the
suite's fast-compile XLA options (tests/conftest.py).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import init as I

KEY = jax.random.PRNGKey(0)


def _draw(initialiser, shape, dtype=jnp.float32, fan_in=1, fan_out=1, key=KEY):
    return jax.jit(lambda k: initialiser(k, shape, dtype, fan_in, fan_out))(key)


@pytest.mark.parametrize("name, std_fn", [
    ("he_normal", lambda fi, fo: math.sqrt(2 / fi)),
    ("he_uniform", lambda fi, fo: math.sqrt(2 / fi)),
    ("glorot_normal", lambda fi, fo: math.sqrt(2 / (fi + fo))),
    ("glorot_uniform", lambda fi, fo: math.sqrt(2 / (fi + fo))),
])
def test_scaled_initialiser_std_matches_formula(name, std_fn):
    shape = (3, 3, 64, 256)  # HWIO: fan_in = 576, fan_out = 2304
    fi, fo = I.fans(shape, kind="conv")
    assert (fi, fo) == (576, 2304)
    w = _draw(getattr(I, name)(), shape, jnp.float32, fi, fo)
    assert w.dtype == jnp.float32 and w.shape == shape
    np.testing.assert_allclose(float(jnp.std(w)), std_fn(fi, fo), rtol=0.02)
    assert abs(float(jnp.mean(w))) < 0.01 * std_fn(fi, fo) * 10
    if "uniform" in name:  # bounded by sqrt(3) std
        assert float(jnp.max(jnp.abs(w))) <= math.sqrt(3) * std_fn(fi, fo) + 1e-6


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("shape", [(5, 5, 1, 6), (3, 3, 2, 4, 8), (84, 10), (7,), ()])
def test_draws_are_jax_randoms_own_draws_of_the_shape(shape, partitionable):
    """init draws a flat vector and reshapes it (compiles faster); the values are ``jax.random``'s
    draw of the shape itself, the formula's reference, eagerly and under jit. Bitwise with XLA's
    default options (perf_notes item 49); the suite's LLVM level 0 rounds erf_inv differently in
    the two programs, by 1 ulp, so 2 ulp here; a wrong reshape or key moves values by O(1)."""
    fi = math.prod(shape[:-1]) if len(shape) > 1 else 1
    key = jax.random.fold_in(KEY, len(shape))
    with jax.threefry_partitionable(partitionable):
        cases = [(I.he_normal(), lambda: math.sqrt(2 / fi) * jax.random.normal(key, shape, jnp.float32)),
                 (I.normal(0.3), lambda: 0.3 * jax.random.normal(key, shape, jnp.float32)),
                 (I.glorot_uniform(), lambda: jax.random.uniform(key, shape, jnp.float32, -math.sqrt(6 / (fi + 3)),
                                                                 math.sqrt(6 / (fi + 3))))]
        for initialiser, reference in cases:
            want = np.asarray(reference())
            got = initialiser(key, shape, jnp.float32, fi, 3)
            assert got.shape == shape
            for value in (got, _draw(initialiser, shape, jnp.float32, fi, 3, key)):
                np.testing.assert_allclose(np.asarray(value), want, rtol=2.5e-7, atol=1e-8)


def test_plain_initialisers():
    w = _draw(I.normal(0.05), (200, 500))
    np.testing.assert_allclose(float(jnp.std(w)), 0.05, rtol=0.02)
    u = _draw(I.uniform(0.3), (200, 500))
    assert -0.3 <= float(u.min()) < -0.29 and 0.29 < float(u.max()) <= 0.3
    np.testing.assert_allclose(float(jnp.std(u)), 0.3 / np.sqrt(3), rtol=0.02)  # uniform on [-a, a]: a / sqrt(3)
    np.testing.assert_array_equal(I.zeros(KEY, (3,), jnp.float32, 1, 1), np.zeros(3))
    np.testing.assert_array_equal(I.ones(KEY, (3,), jnp.float64, 1, 1), np.ones(3))


def test_fans_dense_grouped_and_oihw():
    assert I.fans((400, 120)) == (400, 120)
    # grouped conv: 32 input channels in 4 groups -> each kernel sees 3*3*8 inputs; each input
    # feeds the 16/4 = 4 kernels of its group at 9 positions.
    assert I.fans((3, 3, 8, 16), kind="conv", groups=4) == (72, 36)
    assert I.fans((16, 8, 3, 3), kind="conv", layout="NCHW", groups=4) == (72, 36)
    # a 5x1 kernel: fans count kernel positions, not just channels
    assert I.fans((5, 1, 2, 3), kind="conv") == (10, 15)


def test_grouped_conv_fans_by_hand_and_the_difference_from_pytorch():
    """A 3x3 conv from 256 to 512 channels in 4 groups: HWIO kernel (3, 3, 64, 512).

    fcnn: fan_in = 3*3*256/4 = 576 (one output channel sees the 64 channels of its group at 9
    positions), fan_out = 3*3*512/4 = 1152 (one input channel feeds the 128 kernels of its group
    at 9 positions). PyTorch's _calculate_fan_in_and_fan_out on the Conv2d weight (512, 64, 3, 3):
    fan_in = size(1)*9 = 576, fan_out = size(0)*9 = 4608, groups times fcnn's.
    """
    fi, fo = I.fans((3, 3, 64, 512), kind="conv", groups=4)
    assert (fi, fo) == (576, 1152)
    assert I.fans((512, 64, 3, 3), kind="conv", layout="NCHW", groups=4) == (576, 1152)
    torch_fan_in, torch_fan_out = 64 * 3 * 3, 512 * 3 * 3
    assert torch_fan_in == fi and torch_fan_out == 4608 == fo * 4
    w = _draw(I.glorot_normal(), (3, 3, 64, 512), jnp.float32, fi, fo)  # 294,912 draws: std within 0.5%
    std = float(jnp.std(w))
    np.testing.assert_allclose(std, math.sqrt(2 / (576 + 1152)), rtol=0.01)  # 0.0340
    assert abs(std - math.sqrt(2 / (576 + 4608))) > 0.4 * std  # PyTorch's xavier_normal_: 0.0196
    # the recipe init.py gives for PyTorch's numbers: pass fan_out * groups
    w_torch = _draw(lambda k, s, d, fi_, fo_: I.glorot_normal()(k, s, d, fi_, fo_ * 4), (3, 3, 64, 512),
                    jnp.float32, fi, fo)
    np.testing.assert_allclose(float(jnp.std(w_torch)), math.sqrt(2 / (576 + 4608)), rtol=0.01)


def test_scaled_initialisers_use_the_fans_they_are_given():
    """Same key, different fans: the draws differ exactly by the ratio of the formulas."""
    a = _draw(I.glorot_normal(), (50, 40), jnp.float32, 50, 40)
    b = _draw(I.glorot_normal(), (50, 40), jnp.float32, 10, 8)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a) * math.sqrt(90 / 18), rtol=1e-6)
    u = _draw(I.he_uniform(), (4, 6), jnp.float64, 6, 1)  # limit sqrt(6 / 6) = 1
    assert u.dtype == jnp.float64 and float(jnp.max(jnp.abs(u))) <= 1.0


@pytest.mark.parametrize("call, exc, match", [
    (lambda: I.normal(-1.0), ValueError, "stddev"),
    (lambda: I.uniform(0), ValueError, "scale"),
    (lambda: I.normal(True), ValueError, "stddev"),
    (lambda: I.fans((3, 3, 8, 16), kind="depthwise"), ValueError, "kind"),
    (lambda: I.fans((3, 3, 8, 16), kind="conv", layout="HWC"), ValueError, "layout"),
    (lambda: I.fans((3, 3, 8, 16), kind="conv", groups=3), ValueError, "groups"),
    (lambda: I.fans((3, 3, 8, 16), kind="conv", groups=0), ValueError, "groups"),
    (lambda: I.fans((3, 3, 8)), ValueError, "dense weight"),
    (lambda: I.fans((3, 8), kind="conv"), ValueError, "rank 4"),
    (lambda: I.he_normal()(KEY, (3, 3)), ValueError, "fan_in"),
    (lambda: I.glorot_uniform()(KEY, (3, 3), jnp.float32, 3), ValueError, "fan_out"),
    (lambda: I.he_normal()(KEY, (2, 2), jnp.float32, 0, 0), ValueError, r"fan_in >= 1 .*shape \(2, 2\)"),
    (lambda: I.glorot_normal()(KEY, (2, 2), jnp.float32, 0, 0), ValueError, r"fan_in \+ fan_out >= 1"),
    (lambda: I.glorot_normal()(KEY, (2, 2), jnp.float32, -1, 3), ValueError, "fan_in must be a non-negative int, got -1"),
    (lambda: I.he_uniform()(KEY, (2, 2), jnp.float32, 2.5, 1), ValueError, "fan_in must be a non-negative int, got 2.5"),
    (lambda: I.glorot_uniform()(KEY, (2, 2), jnp.float32, 2, True), ValueError, "fan_out must be a non-negative int"),
    (lambda: I.check_initializer(I.he_normal, "w_init"), TypeError, "factory: pass he_normal()"),
    (lambda: I.check_initializer(0.0, "b_init"), TypeError, "b_init must be callable"),
])
def test_bad_arguments_name_the_rule(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_check_initializer_returns_a_callable_unchanged():
    fn = I.he_normal()
    assert I.check_initializer(fn, "w_init") is fn and I.check_initializer(I.zeros, "b_init") is I.zeros


def test_a_kernel_without_weights_needs_no_fans():
    """A layer with no input channels has fan_in 0 and no weights: an empty kernel, not a division by 0."""
    for make in (I.he_normal, I.glorot_uniform):
        w = make()(KEY, (3, 3, 0, 4), jnp.float32, 0, 36)
        assert w.shape == (3, 3, 0, 4) and w.dtype == jnp.float32
