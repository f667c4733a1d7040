"""Tests for fcnn.per_example: per-example gradients, norms, clipping and DP-SGD."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import parallel, per_example
from fcnn.combinators import serial
from fcnn.layers import BatchNorm, Conv2D, Dense, Flatten, Relu


def _bn_model():
    return serial(Conv2D(3, 3, padding="SAME"), BatchNorm(), Relu(), Flatten(), Dense(4))


def _setup(n=5, dtype=jnp.float64):
    model = _bn_model()
    _, params, state = model.init(jax.random.PRNGKey(0), (1, 6, 6, 2))
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    # non-trivial running statistics, so eval-mode BatchNorm is not the identity
    state = jax.tree.map(lambda a: a, state)
    state[1]["mean"] = jnp.array([0.1, -0.2, 0.3], dtype)
    state[1]["var"] = jnp.array([0.5, 2.0, 1.5], dtype)
    x = jax.random.normal(jax.random.PRNGKey(1), (n, 6, 6, 2), dtype)
    y = jnp.arange(n) % 4
    return model, params, state, x, y


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(tree)])


def test_per_example_grads_equal_python_loop():
    model, params, state, x, y = _setup()
    loss = per_example.model_loss(model)
    g = jax.tree.map(np.asarray, per_example.per_example_grads(loss, params, state, x, y))  # indexed on the host
    grad = jax.jit(jax.grad(loss))  # one example at a time, the loop the vmap replaces
    xs, ys = np.asarray(x), np.asarray(y)
    for i in range(x.shape[0]):
        gi = grad(params, state, xs[i:i + 1], ys[i:i + 1])
        np.testing.assert_allclose(_flat(jax.tree.map(lambda a: a[i], g)), _flat(gi), rtol=1e-12, atol=1e-12)
    # the mean of per-example grads is the batch gradient (eval-mode BN couples no examples)
    np.testing.assert_allclose(_flat(jax.tree.map(lambda a: a.mean(0), g)),
                               _flat(grad(params, state, x, y)), rtol=1e-10, atol=1e-12)


def test_grad_norms_and_clipping():
    model, params, state, x, y = _setup()
    loss = per_example.model_loss(model)
    g = per_example.per_example_grads(loss, params, state, x, y)
    norms = per_example.per_example_grad_norms(g)
    expect = [np.linalg.norm(_flat(jax.tree.map(lambda a: a[i], g))) for i in range(x.shape[0])]
    np.testing.assert_allclose(norms, expect, rtol=1e-12)
    max_norm = float(np.median(expect))
    clipped = per_example.clip_per_example(g, max_norm)
    cn = np.asarray(per_example.per_example_grad_norms(clipped))
    np.testing.assert_allclose(cn, np.minimum(expect, max_norm), rtol=1e-12)
    for i in range(x.shape[0]):  # direction is kept
        a, b = _flat(jax.tree.map(lambda t: t[i], clipped)), _flat(jax.tree.map(lambda t: t[i], g))
        np.testing.assert_allclose(a, b * min(1.0, max_norm / expect[i]), rtol=1e-12, atol=1e-15)
    # a zero gradient stays zero (no 0/0)
    zero = per_example.clip_per_example(jax.tree.map(jnp.zeros_like, g), 1.0)
    assert not np.any(_flat(zero))


def test_dp_sgd_grad_mean_of_clipped_and_noise():
    model, params, state, x, y = _setup()
    loss = per_example.model_loss(model)
    g = per_example.per_example_grads(loss, params, state, x, y)
    clipped = per_example.clip_per_example(g, 0.5)
    no_noise = per_example.dp_sgd_grad(loss, params, state, x, y, max_norm=0.5)
    np.testing.assert_allclose(_flat(no_noise), _flat(jax.tree.map(lambda a: a.mean(0), clipped)), rtol=1e-12)
    k = jax.random.PRNGKey(3)
    noisy = per_example.dp_sgd_grad(loss, params, state, x, y, max_norm=0.5, noise_multiplier=2.0, key=k)
    noise = (_flat(noisy) - _flat(no_noise)) * x.shape[0]  # = N(0, (2 * 0.5)^2) per coordinate
    assert noise.size > 100 and 0.8 < np.std(noise) < 1.2 and abs(np.mean(noise)) < 0.3
    again = per_example.dp_sgd_grad(loss, params, state, x, y, max_norm=0.5, noise_multiplier=2.0, key=k)
    np.testing.assert_array_equal(_flat(noisy), _flat(again))


def test_an_empty_batch_has_empty_norms_and_no_dp_sgd_mean():
    """0 examples: 0 per-example gradients, 0 norms and 0 clipped ones (before, the norms' reshape to
    (0, -1) raised); DP-SGD's mean over them would be 0/0, so it is refused naming x."""
    model, params, state, x, y = _setup()
    loss = per_example.model_loss(model)
    g = per_example.per_example_grads(loss, params, state, x[:0], y[:0])
    assert all(a.shape[0] == 0 for a in jax.tree.leaves(g))
    assert per_example.per_example_grad_norms(g).shape == (0,)
    assert all(a.shape[0] == 0 for a in jax.tree.leaves(per_example.clip_per_example(g, 1.0)))
    with pytest.raises(ValueError, match=r"x must hold at least one example.*\(0, 6, 6, 2\)"):
        per_example.dp_sgd_grad(loss, params, state, x[:0], y[:0], max_norm=1.0)


def test_bad_arguments_name_the_argument():
    model, params, state, x, y = _setup()
    loss = per_example.model_loss(model)
    g = per_example.per_example_grads(loss, params, state, x, y)
    with pytest.raises(ValueError, match=r"^max_norm must be a positive float, got 0\.0$"):
        per_example.clip_per_example(g, 0.0)
    with pytest.raises(ValueError, match=r"^key is required when noise_multiplier > 0$"):
        per_example.dp_sgd_grad(loss, params, state, x, y, max_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"^noise_multiplier must be a non-negative float, got -1\.0$"):
        per_example.dp_sgd_grad(loss, params, state, x, y, max_norm=1.0, noise_multiplier=-1.0)
    with pytest.raises(ValueError, match=r"^x and y must share a leading example axis, got x \(5, 6, 6, 2\) and y \(3,\)$"):
        per_example.per_example_grads(loss, params, state, x, y[:3])


def test_parallel_still_exports_the_per_example_names():
    """``fcnn.parallel.per_example_grads`` etc. were public before fcnn.per_example; they stay."""
    for name in per_example.__all__:
        assert getattr(parallel, name) is getattr(per_example, name)


def test_float16_norms_and_clipping_accumulate_in_float32():
    """A float16 gradient of 300 twenties has norm 20 sqrt(300) = 346.41; its square, 120000, is past
    float16's 65504, so the norm was inf and the clipped gradient all zeros. torch 2.13's
    clip_grad_norm_ gives a norm of 346.5 (float16) and 0.0577 per element (clipped norm 0.9995)."""
    g = {"w": jnp.full((1, 300), 20.0, jnp.float16)}
    norms = per_example.per_example_grad_norms(g)
    assert norms.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(norms), [20 * np.sqrt(300)], rtol=1e-6)  # NumPy float64
    clipped = per_example.clip_per_example(g, 1.0)["w"]
    assert clipped.dtype == jnp.float16
    want = np.float16(1 / np.sqrt(300))  # 20 / (20 sqrt(300)), rounded once to float16: 0.0577
    np.testing.assert_array_equal(np.asarray(clipped), np.full((1, 300), want, np.float16))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(clipped, np.float64)), 1.0, rtol=1e-3)


def _linear_loss(params, state, x, y):  # gradient w.r.t. w of one example: that example's x
    return jnp.sum(params["w"].astype(jnp.float32) * x)


def test_float16_dp_sgd_clips_and_sums_in_float32():
    w = {"w": jnp.zeros((300,), jnp.float16)}
    x = np.full((2, 300), 20.0, np.float32)  # each example: norm 346 > 1, clipped to 1/sqrt(300) each
    got = per_example.dp_sgd_grad(_linear_loss, w, {}, x, np.zeros(2, np.int32), max_norm=1.0)["w"]
    assert got.dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(got), np.full(300, np.float16(1 / np.sqrt(300))))
    # 400 examples of gradient 200 (norm 200 < max_norm, not clipped): the sum 80000 is past float16's
    # 65504, so it was inf; the mean is 200 by hand
    x = np.full((400, 1), 200.0, np.float32)
    got = per_example.dp_sgd_grad(_linear_loss, {"w": jnp.zeros((1,), jnp.float16)}, {}, x,
                                  np.zeros(400, np.int32), max_norm=1000.0)["w"]
    assert got.dtype == jnp.float16 and float(got[0]) == 200.0


def test_float16_clipping_matches_torch():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1, 300, dtype=torch.float16))
    p.grad = torch.full((1, 300), 20.0, dtype=torch.float16)
    total = float(torch.nn.utils.clip_grad_norm_([p], 1.0))
    g = {"w": jnp.full((1, 300), 20.0, jnp.float16)}
    norm = float(per_example.per_example_grad_norms(g)[0])
    np.testing.assert_allclose(norm, total, rtol=1e-3)  # torch's norm is rounded to float16: 346.5
    np.testing.assert_allclose(np.asarray(per_example.clip_per_example(g, 1.0)["w"], np.float32),
                               p.grad.float().numpy(), rtol=1e-3)
