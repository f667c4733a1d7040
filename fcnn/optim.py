"""Optimizers and learning-rate schedules, built on optax.

``make_optimizer(name, learning_rate, ...)`` returns an ``optax.GradientTransformation``
(``init(params) -> opt_state``, ``update(grads, opt_state, params) -> (updates, opt_state)``).
Updates are *added* to the params (``optax.apply_updates``). The update rules, with
gradient ``g`` and learning rate ``lr`` (at step t, from the schedule):

    sgd       u = -lr * g
    momentum  m = beta * m + g;            u = -lr * m
    nesterov  m = beta * m + g;            u = -lr * (g + beta * m)
    adagrad   G = G + g^2  (G0 = 0.1);     u = -lr * g / sqrt(G + eps)
    rmsprop   v = rho * v + (1 - rho) g^2; u = -lr * g / sqrt(v + eps)        (rho = 0.9)
    adam      m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
              u = -lr * m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
    adamw     adam, then u -= lr * weight_decay * W   (decoupled weight decay; kernels only)

Schedules (``total_steps`` is required for all but "constant"):

    constant       lr
    cosine         lr * (1 + cos(pi * t / T)) / 2
    warmup_cosine  linear 0 -> lr over the first 5% of T (at least 1 step), then cosine to 0
    step           lr, x0.1 from step floor(T/2), x0.01 from step floor(3T/4)
"""
from __future__ import annotations

from typing import Optional

import optax

from fcnn import _checks
from fcnn.types import kernel_mask

__all__ = ["OPTIMIZERS", "SCHEDULES", "make_optimizer", "make_schedule"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")


def make_schedule(learning_rate: float, schedule: str = "constant", total_steps: Optional[int] = None):
    """A learning rate (float) or an optax schedule ``step -> lr``; see the module docstring."""
    lr = _checks.positive_float(learning_rate, "learning_rate")
    schedule = _checks.choice(schedule, SCHEDULES, "schedule")
    if schedule == "constant":
        return lr
    total = _checks.positive_int(total_steps, "total_steps", hint=f"needed by schedule={schedule!r}")
    if schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total)
    if schedule == "warmup_cosine":
        warmup = max(1, total // 20)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=max(total, warmup + 1))
    drops = {}  # boundary step -> factor; the two coincide for T <= 2 and then multiply
    for boundary in (total // 2, (3 * total) // 4):
        drops[boundary] = drops.get(boundary, 1.0) * 0.1
    return optax.piecewise_constant_schedule(lr, drops)


def make_optimizer(
    name: str,
    learning_rate: float,
    *,
    momentum: float = 0.9,
    schedule: str = "constant",
    total_steps: Optional[int] = None,
    weight_decay: Optional[float] = None,
) -> optax.GradientTransformation:
    """Build one of ``OPTIMIZERS`` with a learning-rate ``schedule``.

    Args:
      name: one of "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw".
      learning_rate: peak learning rate, > 0.
      momentum: beta in [0, 1) for "momentum" and "nesterov" (ignored by the others).
      schedule: one of ``SCHEDULES``.
      total_steps: number of training steps; required unless ``schedule == "constant"``.
      weight_decay: decoupled weight decay for "adamw" (default 1e-4); it must be None or 0
        for every other optimizer (use ``l2=`` in the train step for an L2 penalty).

    Returns:
      An ``optax.GradientTransformation``.
    """
    name = _checks.choice(name, OPTIMIZERS, "optimizer")
    momentum = _checks.float_in_range(momentum, "momentum", 0, 1)
    if weight_decay is not None:
        weight_decay = _checks.non_negative_float(weight_decay, "weight_decay")
        if weight_decay and name != "adamw":
            raise ValueError(
                f"weight_decay applies only to optimizer 'adamw' (decoupled decay), got optimizer {name!r}; "
                "use l2 for an L2 penalty"
            )
    lr = make_schedule(learning_rate, schedule, total_steps)
    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=momentum)
    if name == "nesterov":
        return optax.sgd(lr, momentum=momentum, nesterov=True)
    if name == "adagrad":
        return optax.adagrad(lr)
    if name == "rmsprop":
        return optax.rmsprop(lr)
    if name == "adam":
        return optax.adam(lr)
    wd = 1e-4 if weight_decay is None else weight_decay
    return optax.adamw(lr, weight_decay=wd, mask=kernel_mask)  # decay kernels, not biases / norms
