"""The optimizer factory against hand-written update formulas.

Updates are compiled as one ``jax.jit`` each: an optax update is a few dozen small ops, and on
CPU each eager op is a compile of its own.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fcnn.optim import OPTIMIZERS, make_optimizer, make_schedule

P = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.2])}
G1 = {"w": jnp.array([[0.3, -0.1], [2.0, -4.0]]), "b": jnp.array([1.0, 0.5])}
G2 = {"w": jnp.array([[-0.2, 0.4], [1.0, 1.0]]), "b": jnp.array([-1.0, 0.25])}


def _two_updates(opt):
    @jax.jit
    def run(p, g1, g2):
        s = opt.init(p)
        u1, s = opt.update(g1, s, p)
        p1 = optax.apply_updates(p, u1)
        u2, s = opt.update(g2, s, p1)
        return u1, u2

    return run(P, G1, G2)


def _close(a, b):
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7)


def _map(f, *trees):
    return {k: f(*(t[k] for t in trees)) for k in trees[0]}


def test_sgd_is_minus_lr_times_grad():
    u1, u2 = _two_updates(make_optimizer("sgd", 0.1))
    _close(u1, _map(lambda g: -0.1 * g, G1))
    _close(u2, _map(lambda g: -0.1 * g, G2))


def test_momentum_and_nesterov_by_hand():
    beta, lr = 0.9, 0.1
    u1, u2 = _two_updates(make_optimizer("momentum", lr, momentum=beta))
    _close(u1, _map(lambda g: -lr * g, G1))
    _close(u2, _map(lambda g1, g2: -lr * (beta * g1 + g2), G1, G2))
    u1, u2 = _two_updates(make_optimizer("nesterov", lr, momentum=beta))
    _close(u1, _map(lambda g: -lr * (g + beta * g), G1))
    m2 = _map(lambda g1, g2: beta * g1 + g2, G1, G2)
    _close(u2, _map(lambda g, m: -lr * (g + beta * m), G2, m2))


def test_adam_first_step_is_lr_times_sign_and_second_by_hand():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    u1, u2 = _two_updates(make_optimizer("adam", lr))
    _close(u1, _map(lambda g: -lr * g / (jnp.abs(g) + eps), G1))
    m = _map(lambda g1, g2: (b1 * (1 - b1) * g1 + (1 - b1) * g2) / (1 - b1**2), G1, G2)
    v = _map(lambda g1, g2: (b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2) / (1 - b2**2), G1, G2)
    _close(u2, _map(lambda m, v: -lr * m / (jnp.sqrt(v) + eps), m, v))


def test_adagrad_and_rmsprop_two_steps_by_hand():
    """The second step checks the accumulators (a first step alone passes with G or v never updated)."""
    u1, u2 = _two_updates(make_optimizer("adagrad", 0.1))  # G0 = 0.1, G = G + g^2, eps 1e-7
    _close(u1, _map(lambda g: -0.1 * g / jnp.sqrt(0.1 + g**2 + 1e-7), G1))
    _close(u2, _map(lambda g1, g2: -0.1 * g2 / jnp.sqrt(0.1 + g1**2 + g2**2 + 1e-7), G1, G2))
    u1, u2 = _two_updates(make_optimizer("rmsprop", 0.1))  # v = 0.9 v + 0.1 g^2 from 0, eps 1e-8
    _close(u1, _map(lambda g: -0.1 * g / jnp.sqrt(0.1 * g**2 + 1e-8), G1))
    _close(u2, _map(lambda g1, g2: -0.1 * g2 / jnp.sqrt(0.9 * 0.1 * g1**2 + 0.1 * g2**2 + 1e-8), G1, G2))


def test_adamw_decays_kernels_not_biases():
    lr, wd = 0.01, 0.5
    u1, _ = _two_updates(make_optimizer("adamw", lr, weight_decay=wd))
    adam = _map(lambda g: -lr * g / (jnp.abs(g) + 1e-8), G1)
    _close(u1, {"w": adam["w"] - lr * wd * P["w"], "b": adam["b"]})


def test_schedules_by_hand():
    assert make_schedule(0.1) == 0.1
    cos = make_schedule(0.1, "cosine", total_steps=100)
    assert float(cos(0)) == pytest.approx(0.1)
    assert float(cos(50)) == pytest.approx(0.05)
    assert float(cos(100)) == pytest.approx(0.0, abs=1e-9)
    wc = make_schedule(0.1, "warmup_cosine", total_steps=100)  # warmup 5 steps
    assert float(wc(0)) == pytest.approx(0.0)
    assert float(wc(2)) == pytest.approx(0.04)  # linear warmup: 2/5 of the way
    assert float(wc(5)) == pytest.approx(0.1)
    # then cosine over the 95 remaining steps, to 0 at T: half way (step 52.5) is lr / 2
    assert float(wc(52.5)) == pytest.approx(0.05) and float(wc(100)) == pytest.approx(0.0, abs=1e-9)
    step = make_schedule(0.1, "step", total_steps=100)
    assert [float(step(t)) for t in (49, 50, 74, 75)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    # tiny T, by the same rule (x0.1 from floor(T/2), x0.01 from floor(3T/4)): where the two
    # boundaries coincide both drops apply (one was lost before: T=1 gave 0.01, T=2 0.01 at step 1)
    for total, want in [(1, [0.001]), (2, [0.1, 0.001]), (3, [0.1, 0.01, 0.001]), (4, [0.1, 0.1, 0.01, 0.001])]:
        tiny = make_schedule(0.1, "step", total_steps=total)
        assert [float(tiny(t)) for t in range(total)] == pytest.approx(want), total


def test_schedule_drives_the_update():
    opt = make_optimizer("sgd", 0.1, schedule="step", total_steps=3)  # x0.1 from step floor(3/2) = 1
    u1, u2 = _two_updates(opt)
    _close(u1, _map(lambda g: -0.1 * g, G1))
    _close(u2, _map(lambda g: -0.01 * g, G2))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_descends_a_quadratic(name):
    opt = make_optimizer(name, 0.05)

    @jax.jit
    def step(p, s):
        u, s = opt.update({"w": 2 * p["w"]}, s, p)
        return optax.apply_updates(p, u), s

    p = {"w": jnp.array([[3.0, -2.0]])}
    s = opt.init(p)
    for _ in range(20):
        p, s = step(p, s)
    assert float(jnp.sum(p["w"] ** 2)) < 0.9 * 13.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="adamx", learning_rate=0.1), "optimizer must be one of"),
        (dict(name="sgd", learning_rate=0.0), "learning_rate must be a positive"),
        (dict(name="sgd", learning_rate=0.1, schedule="linear"), "schedule must be one of"),
        (dict(name="sgd", learning_rate=0.1, schedule="cosine"), "total_steps must be a positive int"),
        (dict(name="momentum", learning_rate=0.1, momentum=1.0), r"momentum must be a float in \[0, 1\)"),
        (dict(name="adam", learning_rate=0.1, weight_decay=0.1), "weight_decay applies only"),
    ],
)
def test_bad_arguments_name_the_rule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(**kwargs)
