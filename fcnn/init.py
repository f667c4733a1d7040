"""Weight initialisers.

Every initialiser has one signature::

    init(key, shape, dtype, fan_in, fan_out) -> array of ``shape`` and ``dtype``

``fan_in`` is the number of inputs that feed one output unit and ``fan_out`` the
number of outputs one input unit feeds (``fans`` computes both for dense and conv
kernels, groups included). The scaled initialisers keep the variance of the signal
(He) or the average of forward and backward variances (Glorot) constant across
layers:

    he_normal       N(0, 2 / fan_in)                     (ReLU nets; He et al. 2015)
    he_uniform      U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))
    glorot_normal   N(0, 2 / (fan_in + fan_out))          (tanh/sigmoid; Glorot & Bengio 2010)
    glorot_uniform  U(-sqrt(6 / (fan_in + fan_out)), +...)
    normal(s)       N(0, s^2);  uniform(s)  U(-s, s);  zeros;  ones

The normal variants are plain (not truncated) normals, so their standard deviation
is exactly the formula. ``normal``/``uniform``/``he_*``/``glorot_*`` are factories
(``he_normal()``); ``zeros`` and ``ones`` are initialisers themselves.

Fans of a grouped convolution, fcnn against PyTorch. fcnn counts connections: for a kernel
``(kh, kw, cin/groups, cout)`` one output unit sees ``fan_in = kh*kw*cin/groups`` inputs and
one input unit feeds ``fan_out = kh*kw*cout/groups`` outputs (only the ``cout/groups``
kernels of its own group). PyTorch computes both from the weight's shape alone:
``torch.nn.init._calculate_fan_in_and_fan_out`` (torch/nn/init.py, used by ``xavier_*``
and by ``kaiming_*`` with ``mode="fan_out"``) returns ``weight.size(1) * r`` and
``weight.size(0) * r`` with ``r`` the product of the kernel dims, and a ``Conv2d`` weight is
``(out_channels, in_channels/groups, kh, kw)`` (the ``torch.nn.Conv2d`` docs), so its
``fan_in = kh*kw*cin/groups`` (the same) but ``fan_out = kh*kw*cout`` (not divided by
groups). JAX's ``jax.nn.initializers.variance_scaling`` (``_compute_fans``, HWIO kernel)
also gives ``kh*kw*cout``. With ``groups=1`` all agree; with ``groups > 1`` fcnn's
``glorot_*`` variance ``2/(fan_in + fan_out)`` is larger than ``xavier_*``'s: a 3x3 conv
from 32 to 16 channels in 4 groups has fans (72, 36) here and (72, 144) in PyTorch, std
``sqrt(2/108) = 0.136`` against ``sqrt(2/216) = 0.096``. The He initialisers use only
``fan_in`` and agree. To reproduce PyTorch, scale the fan_out the layer passes:
``lambda k, s, d, fi, fo: glorot_normal()(k, s, d, fi, fo * groups)``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Tuple

import jax
import jax.numpy as jnp

from fcnn import _checks, shapes

Initializer = Callable[..., jax.Array]  # (key, shape, dtype, fan_in, fan_out) -> array

__all__ = ["fans", "normal", "uniform", "he_normal", "he_uniform", "glorot_normal",
           "glorot_uniform", "zeros", "ones", "check_initializer"]


def fans(shape: Sequence[int], *, kind: str = "dense", layout: str = "NHWC", groups: int = 1) -> Tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight.

    Args:
      shape: a dense weight ``(n_in, n_out)``, or a conv kernel ``(kh, kw, cin/groups, cout)``
        (HWIO, layout "NHWC") or ``(cout, cin/groups, kh, kw)`` (OIHW, layout "NCHW"); 1-D/3-D
        kernels likewise (WIO/DHWIO channels-last, OIW/OIDHW channels-first; kh*kw below is prod(kernel)).
      kind: "dense" or "conv".
      groups: conv groups. Each output channel sees ``kh*kw*cin/groups`` inputs and each input
        channel feeds the ``cout/groups`` kernels of its group at ``kh*kw`` positions.
    Returns:
      dense: ``(n_in, n_out)``; conv: ``(kh*kw*cin/groups, kh*kw*cout/groups)``. PyTorch's
      fan_out for a grouped conv is ``kh*kw*cout``, ``groups`` times this one (module docstring).
    """
    kind = _checks.choice(kind, ("dense", "conv"), "kind")
    if kind == "dense":
        if len(shape) != 2:
            raise ValueError(f"shape of a dense weight must be (n_in, n_out), got {tuple(shape)}")
        return int(shape[0]), int(shape[1])
    if len(shape) not in (3, 4, 5):
        raise ValueError(f"shape of a conv kernel must have rank 4 (2-D), 3 (1-D) or 5 (3-D), got {tuple(shape)}")
    groups = _checks.positive_int(groups, "groups")
    # 1-D/3-D kernels take their rank's layout name (NWC/NCW, NDHWC/NCDHW); any channels-last name works
    layout = shapes.LAYOUTS_BY_RANK[len(shape) - 2][0 if shapes.is_channels_last(
        _checks.choice(layout, shapes.ALL_LAYOUTS, "layout")) else 1]
    window, ci, co = shapes.kernel_parts(shape, layout)
    if co % groups:
        raise ValueError(f"groups={groups} must divide the output channels ({co})")
    return math.prod(window) * ci, math.prod(window) * (co // groups)


def _flat(draw, key, shape, dtype, *bounds):
    """``draw(key, shape, dtype, *bounds)`` drawn as one flat vector, then reshaped: the same values.

    ``jax.random``'s draws are reshape-invariant (counters run over the row-major flat index, with
    ``jax_threefry_partitionable`` on or off; tests/test_init.py checks it), but XLA:CPU compiles a
    draw of a rank-4 shape far more slowly than a 1-D one: a weight's normal draw took 0.46-1.33 s to
    compile at its shape against 0.34-0.40 s flat, and ``model.init`` in a fresh process 3.5 s instead
    of 6.4 (LeNet-5) and 7.1 s instead of 12.0 (ResNet-18), medians of five (experiments/init_ab.py,
    docs/perf_notes.md item 49). Every size still compiles once per process.
    """
    return jnp.reshape(draw(key, (math.prod(shape),), dtype, *bounds), shape)


def _normal(std: float):
    def init(key, shape, dtype=jnp.float32, fan_in=None, fan_out=None):
        return std * _flat(jax.random.normal, key, shape, dtype)
    return init


def _uniform(limit: float):
    def init(key, shape, dtype=jnp.float32, fan_in=None, fan_out=None):
        return _flat(jax.random.uniform, key, shape, dtype, -limit, limit)
    return init


def normal(stddev: float = 0.05) -> Initializer:
    """N(0, stddev^2), independent of the fans."""
    return _normal(_checks.positive_float(stddev, "stddev"))


def uniform(scale: float = 0.05) -> Initializer:
    """U(-scale, scale), independent of the fans."""
    return _uniform(_checks.positive_float(scale, "scale"))


def _scaled(kind: str, numerator: float, use_fan_out: bool) -> Initializer:
    def init(key, shape, dtype=jnp.float32, fan_in=None, fan_out=None):
        if fan_in is None or (use_fan_out and fan_out is None):
            raise ValueError("fan_in (and fan_out for Glorot) must be given to a scaled initialiser")
        fan_in = _checks.non_negative_int(fan_in, "fan_in")
        denom = fan_in + _checks.non_negative_int(fan_out, "fan_out") if use_fan_out else fan_in
        if math.prod(shape) == 0:  # no weights (a layer without input or output channels): nothing to scale
            return jnp.zeros(shape, dtype)
        if denom == 0:
            raise ValueError(f"a scaled initialiser needs fan_in{' + fan_out' if use_fan_out else ''} >= 1 for "
                             f"a kernel of shape {tuple(shape)}, got fan_in={fan_in}, fan_out={fan_out}")
        if kind == "normal":
            return _normal(math.sqrt(numerator / denom))(key, shape, dtype)
        return _uniform(math.sqrt(3.0 * numerator / denom))(key, shape, dtype)
    return init


def he_normal() -> Initializer:
    """N(0, 2/fan_in)."""
    return _scaled("normal", 2.0, False)


def he_uniform() -> Initializer:
    """U(-sqrt(6/fan_in), sqrt(6/fan_in)) (variance 2/fan_in)."""
    return _scaled("uniform", 2.0, False)


def glorot_normal() -> Initializer:
    """N(0, 2/(fan_in + fan_out))."""
    return _scaled("normal", 2.0, True)


def glorot_uniform() -> Initializer:
    """U(-sqrt(6/(fan_in+fan_out)), +sqrt(6/(fan_in+fan_out))) (variance 2/(fan_in+fan_out))."""
    return _scaled("uniform", 2.0, True)


def zeros(key, shape, dtype=jnp.float32, fan_in=None, fan_out=None):
    """All zeros (the default bias)."""
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype=jnp.float32, fan_in=None, fan_out=None):
    """All ones."""
    return jnp.ones(shape, dtype)


def check_initializer(fn, name: str):
    """Raise TypeError naming ``name`` unless ``fn`` is callable (catches ``w_init=he_normal``)."""
    if fn in (normal, uniform, he_normal, he_uniform, glorot_normal, glorot_uniform):
        raise TypeError(f"{name} must be an initialiser; {fn.__name__} is a factory: pass {fn.__name__}()")
    if not callable(fn):
        raise TypeError(f"{name} must be callable (key, shape, dtype, fan_in, fan_out) -> array, got {fn!r}")
    return fn
