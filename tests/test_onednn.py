"""fcnn.ops.onednn: oneDNN's convolutions (impl="onednn") against float64 references, their three
adjoint identities, gradients of gradients, vmap, lax's non-finite pattern, the lax fallback for what
oneDNN does not compute, and the build / availability rules. Skipped where oneDNN is not available
(``pip install "fcnn[onednn]"`` and a C++ compiler); the availability rules run everywhere."""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import ops
from fcnn.ops import onednn

needs_onednn = pytest.mark.skipif(not onednn.available(), reason=f"oneDNN unavailable: {onednn.unavailable_reason()}")

# (x shape NHWC, kernel, cout, stride, padding, dilation): SAME, strided with asymmetric pads, dilated, 1x1
# strided, 5x5 VALID, one input channel, a wide one
GEOMETRIES = [((2, 9, 9, 3), 3, 5, 1, "SAME", 1), ((2, 8, 7, 4), 3, 6, 2, ((1, 0), (2, 1)), 1),
              ((1, 10, 10, 2), 3, 3, 1, ((0, 2), (1, 0)), 2), ((2, 7, 7, 5), 1, 4, 2, "VALID", 1),
              ((2, 12, 12, 6), 5, 16, 1, "VALID", 1), ((3, 8, 8, 1), 5, 6, 1, "SAME", 1),
              ((2, 6, 6, 64), 3, 32, 1, 1, 1)]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _problem(geometry, dtype, seed=0):
    x_shape, k, cout, stride, padding, dilation = geometry
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=x_shape), dtype)
    w = jnp.asarray(rng.normal(size=(k, k, x_shape[-1], cout)), dtype)
    conv = lambda impl: (lambda x, w, *b: ops.conv2d(x, w, *b, stride=stride, padding=padding,  # noqa: E731
                                                     dilation=dilation, impl=impl))
    z = jax.eval_shape(conv("lax"), x, w)
    dz = jnp.asarray(rng.normal(size=z.shape), dtype)
    return x, w, dz, conv


def _bias(w, seed=10):
    return jnp.asarray(np.random.default_rng(seed).normal(size=w.shape[-1:]), w.dtype)


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 3e-6), (jnp.bfloat16, 1.2e-2)])
@pytest.mark.parametrize("bias", [False, True])
def test_forward_and_gradients_match_float64(geometry, dtype, tol, bias):
    """z, dX, dW (and dB with a bias, which oneDNN's forward adds and its kernel-gradient call sums)
    against lax in float64 on the same (rounded) values: float32 to float32 rounding, bfloat16 to its
    output rounding (2^-8 relative; dW and dB are float32 accumulated, then rounded)."""
    x, w, dz, conv = _problem(geometry, dtype)
    args = (x, w, _bias(w)) if bias else (x, w)
    got_z, pull = jax.vjp(conv("onednn"), *args)
    got = (got_z, *pull(dz))
    want_z, want_pull = jax.vjp(conv("lax"), *(jnp.asarray(np.asarray(a, np.float64)) for a in args))
    want = (want_z, *want_pull(jnp.asarray(np.asarray(dz, np.float64))))
    assert len(got) == len(want) == 3 + bias
    for name, a, b in zip(("z", "dx", "dw", "db"), got, want):
        assert a.dtype == dtype, name
        assert _rel(a, b) < tol, (name, _rel(a, b))


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES[:4])
def test_the_three_calls_are_adjoints(geometry):
    """<dZ, forward(x, w)> = <backward_data(dZ, w), x> = <backward_weights(x, dZ), w>: oneDNN's two
    backward kernels checked against its forward, not against another implementation."""
    x, w, dz, conv = _problem(geometry, jnp.float32, seed=1)
    z, pull = jax.vjp(conv("onednn"), x, w)
    dx, dw = pull(dz)
    inner = [float(jnp.vdot(dz, z)), float(jnp.vdot(dx, x)), float(jnp.vdot(dw, w))]
    scale = float(jnp.vdot(jnp.abs(dz), jnp.abs(z)))
    assert abs(inner[0] - inner[1]) < 1e-5 * scale and abs(inner[0] - inner[2]) < 1e-5 * scale, inner


@needs_onednn
def test_bf16_bias_is_added_before_the_one_rounding():
    """In bfloat16 the bias goes into oneDNN's f32 sum, which is rounded once: z equals the float64
    convolution plus b rounded to bf16 on >= 99% of the elements (the rest: f32 accumulation near a
    rounding boundary), where adding b to the rounded convolution (XLA's two ops) matches < 90%
    (about 3/4 here)."""
    rng = np.random.default_rng(12)
    x = jnp.asarray(rng.normal(size=(4, 8, 8, 32)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(3, 3, 32, 16)) * 0.2, jnp.bfloat16)
    b = jnp.asarray(rng.normal(size=(16,)) * 3, jnp.bfloat16)
    got = np.asarray(ops.conv2d(x, w, b, padding="SAME", impl="onednn"), np.float32)
    conv64 = np.asarray(ops.conv2d(*(jnp.asarray(np.asarray(a, np.float64)) for a in (x, w)), padding="SAME"))
    to_bf16 = lambda a: np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16), np.float32)  # noqa: E731
    assert np.mean(got == to_bf16(conv64 + np.asarray(b, np.float64))) >= 0.99
    assert np.mean(got == to_bf16(to_bf16(conv64) + np.asarray(b, np.float32))) < 0.9


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES[:4])
def test_with_a_bias_the_calls_are_adjoints_and_db_sums_dz(geometry):
    """z = F(x, w) + b: <dZ, z> = <dX, x> + <dB, b> = <dW, w> + <dB, b>, and dB (from oneDNN's
    kernel-gradient call) is dZ summed over batch and space (numpy, float64)."""
    x, w, dz, conv = _problem(geometry, jnp.float32, seed=1)
    b = _bias(w)
    z, pull = jax.vjp(conv("onednn"), x, w, b)
    dx, dw, db = pull(dz)
    np.testing.assert_allclose(np.asarray(db), np.asarray(dz, np.float64).sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    bias_part = float(jnp.vdot(db, b))
    inner = [float(jnp.vdot(dz, z)), float(jnp.vdot(dx, x)) + bias_part, float(jnp.vdot(dw, w)) + bias_part]
    scale = float(jnp.vdot(jnp.abs(dz), jnp.abs(z)))
    assert abs(inner[0] - inner[1]) < 1e-5 * scale and abs(inner[0] - inner[2]) < 1e-5 * scale, inner


@needs_onednn
@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[1], GEOMETRIES[2]])
@pytest.mark.parametrize("bias", [False, True])
def test_gradients_of_gradients_match_lax(geometry, bias):
    """A Hessian-vector product through the gradients (the VJPs of the backward calls are the calls
    again; with a bias, the (dW, dB) call's is the biased forward), against lax's autodiff in float64."""
    x, w, _, conv = _problem(geometry, jnp.float32, seed=2)
    rng = np.random.default_rng(3)
    params = (w, _bias(w)) if bias else (w,)
    v = tuple(jnp.asarray(rng.normal(size=p.shape), jnp.float32) for p in params)

    def hvp(impl, x, params, v):
        grads = lambda x: jax.grad(lambda p: jnp.sum(jnp.sin(conv(impl)(x, *p))))(params)  # noqa: E731
        return jax.grad(lambda x: sum(jnp.vdot(g, u) for g, u in zip(grads(x), v)))(x)

    f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), t)  # noqa: E731
    want = hvp("lax", f64(x), f64(params), f64(v))
    assert _rel(jax.jit(hvp, static_argnums=0)("onednn", x, params, v), want) < 1e-5


@needs_onednn
def test_jit_layout_and_bias():
    """In a jitted function, channels-first, with a bias: oneDNN's forward call that carries the bias
    ("F", where "f" is the forward without one) is in the kernels list."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 4, 7, 7)), jnp.float32)  # NCHW
    w = jnp.asarray(rng.normal(size=(5, 4, 3, 3)), jnp.float32)  # OIHW
    b = jnp.asarray(rng.normal(size=(5,)), jnp.float32)
    f = lambda impl: jax.jit(lambda x: ops.conv2d(x, w, b, padding="SAME", layout="NCHW", impl=impl))  # noqa: E731
    assert _rel(f("onednn")(x), f("lax")(x)) < 3e-6
    assert any(line.startswith("F,2,4,7,7,5,") for line in onednn.kernels())


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
def test_under_vmap_the_calls_are_xla_batched_convolutions(bias):
    """vmap (per-example gradients: one example per call) runs each call as XLA's batched convolution
    (custom_vmap): per-example dW (and dB) of a vmapped grad equals lax's bit for bit, and no oneDNN
    call is made."""
    rng = np.random.default_rng(7)
    xs = jnp.asarray(rng.normal(size=(5, 1, 6, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    params = (w, _bias(w)) if bias else (w,)
    before = set(onednn.kernels())

    def per_example(impl):
        loss = lambda p, x: jnp.sum(jnp.sin(ops.conv2d(x, *p, padding=1, impl=impl)))  # noqa: E731
        return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, xs)

    for a, b in zip(per_example("onednn"), per_example("lax")):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert set(onednn.kernels()) == before


@needs_onednn
@pytest.mark.parametrize("where", ["x", "w at a border tap"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("bias", [False, True])
def test_nonfinite_values_give_lax_pattern(where, bad, bias):
    """A NaN or inf pixel or kernel tap (fcnn/ops/conv.py's table, a finite output gradient): z, dX and
    dW have lax's NaN/inf pattern (a non-finite kernel takes lax's forward and dX: oneDNN's dX would
    skip the padded taps that lax's multiplies)."""
    rng = np.random.default_rng(5)
    x, w, dz = rng.normal(size=(2, 6, 6, 2)), rng.normal(size=(3, 3, 2, 3)), rng.normal(size=(2, 6, 6, 3))
    {"x": x, "w at a border tap": w}[where][(0, 0, 1, 0) if where != "x" else (1, 2, 3, 0)] = bad
    args = [jnp.asarray(a, jnp.float32) for a in (x, w, dz)]
    conv = lambda impl: (lambda x, w, *b: ops.conv2d(x, w, *b, padding="SAME", impl=impl))  # noqa: E731
    _assert_same_nonfinite_pattern(conv, args, [_bias(args[1])] if bias else [])


def _codes(a):
    """0 finite, 1 NaN, 2 +inf, 3 -inf per element (NaN and -inf kept apart: 2 + sign made both 1)."""
    a = np.asarray(a, np.float64)
    return np.where(np.isnan(a), 1, np.where(a == np.inf, 2, np.where(a == -np.inf, 3, 0)))


def _assert_same_nonfinite_pattern(conv, args, bias):
    x, w, dz = args
    got, want = ([_codes(a) for a in (lambda z, pull: (z, *pull(dz)))(*jax.vjp(
        lambda x, w: conv(impl)(x, w, *bias), x, w))] for impl in ("onednn", "lax"))
    assert any(np.count_nonzero(c) for c in want)
    for name, a, b in zip(("z", "dx", "dw"), got, want):
        np.testing.assert_array_equal(a, b, err_msg=name)


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("where", ["kernel corner", "kernel centre", "input"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_nonfinite_values_give_lax_pattern_in_every_geometry(geometry, where, bad):
    """A kernel tap (corner or centre) or an input pixel with an inf or NaN, in every geometry (strides,
    asymmetric pads, dilation, 1x1 and 5x5 kernels), float32 and bfloat16, with a bias: z, dX and dW
    have lax's NaN/inf pattern. Which zeros XLA multiplies for a non-finite kernel depends on the
    geometry (its padding at stride 1; neither padding nor stride holes in JAX's strided transpose:
    docs/perf_notes.md item 63), so the guard hands the whole forward and dX to lax rather than
    imitating one rule."""
    for dtype in (jnp.float32, jnp.bfloat16):
        x, w, dz, conv = _problem(geometry, dtype, seed=8)
        k = w.shape[0]
        if where == "input":
            x = x.at[0, 0, 0, 0].set(bad)  # read by every geometry (a stride may skip others)
        else:
            w = w.at[(0, 0, 0, 0) if where == "kernel corner" else (k // 2, k // 2, 0, w.shape[-1] - 1)].set(bad)
        _assert_same_nonfinite_pattern(conv, (x, w, dz), [_bias(w)])


def test_small_convolutions_run_on_one_thread():
    """The team-size rule: 1 (one OpenMP thread) below SERIAL_BELOW_MFLOP of its dtype, 0 (every core)
    at or above it; float64 and float16 (lax's) have no bound. LeNet-5's 6->16 5x5 layer at b64 is 30.7
    MFLOP: one thread in bf16, every core in f32 (docs/perf_notes.md item 64)."""
    x, w, z = (64, 14, 14, 6), (5, 5, 6, 16), (64, 10, 10, 16)
    assert onednn.threads(x, w, z, jnp.bfloat16) == 1 and onednn.threads(x, w, z, jnp.float32) == 0
    bound = onednn.SERIAL_BELOW_MFLOP[jnp.dtype(jnp.float32)]
    cout = bound * 1e6 / (2 * 25 * 6)  # output channels of a 1x1 output whose MFLOP are the bound
    assert onednn.threads(x, w, (1, 1, 1, math.ceil(cout)), jnp.float32) == 0  # at or above: every core
    assert onednn.threads(x, w, (1, 1, 1, math.floor(cout)), jnp.float32) == 1
    assert onednn.threads(x, w, z, jnp.float64) == 0


@needs_onednn
@pytest.mark.parametrize("team", [1, 0])
def test_both_team_sizes_compute_the_convolution(monkeypatch, team):
    """The same small convolution (z, dX, dW, dB against float64 lax, bf16) on one thread and on every
    core (the bounds forced), and the cached primitives keyed by the team size ("|t1" / "|t0")."""
    monkeypatch.setitem(onednn.SERIAL_BELOW_MFLOP, jnp.dtype(jnp.bfloat16), 1e12 if team == 1 else 0.0)
    onednn._calls.cache_clear()
    x, w, dz, conv = _problem(GEOMETRIES[1], jnp.bfloat16, seed=11)
    b = _bias(w)
    got_z, pull = jax.vjp(conv("onednn"), x, w, b)
    want_z, want_pull = jax.vjp(conv("lax"), *(jnp.asarray(np.asarray(a, np.float64)) for a in (x, w, b)))
    for name, a, ref in zip(("z", "dx", "dw", "db"), (got_z, *pull(dz)),
                            (want_z, *want_pull(jnp.asarray(np.asarray(dz, np.float64))))):
        assert _rel(a, ref) < 1.2e-2, (name, _rel(a, ref))
    key = "F," + ",".join(str(d) for d in (x.shape[0], x.shape[3], *x.shape[1:3]))
    assert any(line.startswith(key) and f"|t{team} " in line for line in onednn.kernels())
    onednn._calls.cache_clear()


@needs_onednn
def test_what_onednn_does_not_compute_is_lax():
    """float64, float16 and grouped convolutions are lax's, bit for bit (forward and gradients)."""
    rng = np.random.default_rng(6)
    for dtype, groups in ((jnp.float64, 1), (jnp.float16, 1), (jnp.float32, 2)):
        x = jnp.asarray(rng.normal(size=(2, 6, 6, 4)), dtype)
        w = jnp.asarray(rng.normal(size=(3, 3, 4 // groups, 6)), dtype)
        f = lambda impl: jax.value_and_grad(  # noqa: E731
            lambda x, w: jnp.sum(ops.conv2d(x, w, padding=1, groups=groups, impl=impl).astype(jnp.float32)),
            argnums=(0, 1))(x, w)
        for a, b in zip(jax.tree.leaves(f("onednn")), jax.tree.leaves(f("lax"))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not onednn.computes(jnp.float64, 1) and not onednn.computes(jnp.float32, 2)
    assert onednn.computes(jnp.bfloat16, 1) and onednn.computes("float32", 1)


@needs_onednn
def test_kernels_name_what_onednn_ran():
    """One line per cached primitive, keyed by role: f/d/w without a bias, F/W (forward, kernel and
    bias gradients) with one; backward data is the same call either way."""
    x, w, dz, conv = _problem(((1, 5, 6, 3), 3, 7, 1, "SAME", 1), jnp.float32)  # a geometry no other test runs
    key = ",1,3,5,6,7,"  # n, cin, h, w, cout

    def roles():
        return {line[0] for line in onednn.kernels() if line[1:].startswith(key) and " -> " in line}

    assert roles() == set()
    jax.vjp(conv("onednn"), x, w)[1](dz)
    assert roles() == {"f", "d", "w"}
    jax.vjp(conv("onednn"), x, w, _bias(w))[1](dz)
    assert roles() == {"f", "d", "w", "F", "W"}


def test_restricted_to_2d_and_refused_by_name_where_unavailable(monkeypatch):
    """1-D and 3-D convolutions are refused; where oneDNN is unavailable impl="onednn" says why, and
    conv_impls_for leaves it out."""
    x1, w1 = jnp.ones((1, 8, 2)), jnp.ones((3, 2, 2))
    with pytest.raises(ValueError, match=r"impl='onednn' computes only 2-D convolutions; got kernel \(3,\)"):
        ops.conv1d(x1, w1, impl="onednn")
    monkeypatch.setenv("FCNN_ONEDNN", "0")
    assert not onednn.available() and onednn.unavailable_reason() == "turned off by FCNN_ONEDNN=0"
    assert "onednn" not in ops.conv_impls_for((3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"impl='onednn' needs oneDNN, which is not available here: turned off by FCNN_ONEDNN=0"):
        ops.conv2d(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2)), impl="onednn")


def test_missing_wheels_are_named_with_the_install_line(monkeypatch):
    monkeypatch.setattr(onednn, "_wheel_file", lambda dist, name: None)
    handlers, why = onednn._load.__wrapped__()
    assert handlers is None
    assert why == ('the oneDNN wheels are not installed (onednn-cpu-gomp, onednn-devel-cpu-gomp): '
                   'pip install "fcnn[onednn]"')


def test_a_failed_build_is_named_and_leaves_nothing(monkeypatch, tmp_path):
    if any(onednn._wheel_file(d, n) is None for d, n in onednn.WHEELS):
        pytest.skip("the oneDNN wheels are not installed")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv("FCNN_CACHE_DIR", str(tmp_path / "cache"))
    handlers, why = onednn._load.__wrapped__()
    assert handlers is None and why.startswith("compiling onednn_conv.cc into ") and "no-such-c++" in why
    assert list((tmp_path / "cache").iterdir()) == []


@needs_onednn
def test_a_fresh_cache_builds_the_handlers_once(tmp_path):
    """A new FCNN_CACHE_DIR gets one library, built under a temporary name and renamed (no partial file
    left); a second process loads it without building."""
    env = dict(os.environ, FCNN_CACHE_DIR=str(tmp_path))
    probe = "from fcnn.ops import onednn; print(onednn.available(), onednn.unavailable_reason())"
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=600)
        assert out.stdout.strip() == "True", out.stderr[-2000:]
        assert [p.name for p in tmp_path.iterdir() if p.suffix == ".so"] == [p.name for p in tmp_path.iterdir()]
        assert len(list(tmp_path.iterdir())) == 1


def test_an_unusable_cache_dir_makes_it_unavailable_not_an_error(monkeypatch, tmp_path):
    if any(onednn._wheel_file(d, n) is None for d, n in onednn.WHEELS):
        pytest.skip("the oneDNN wheels are not installed")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FCNN_CACHE_DIR", str(blocker / "cache"))  # under a regular file: cannot be made
    handlers, why = onednn._load.__wrapped__()
    assert handlers is None and why.startswith(f"compiling onednn_conv.cc into {blocker / 'cache'} failed: ")


def test_another_backend_is_refused_by_name(monkeypatch):
    """The handlers are registered for the CPU only: on another default backend impl="onednn" does not
    apply and its error says so (conv_impls_for leaves it out)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not onednn.supports((3, 3), (1, 1), (1, 1))
    assert onednn.refusal((3, 3), (1, 1), (1, 1)) == "impl='onednn' runs on the CPU backend only, this one is 'gpu'"
    assert "onednn" not in ops.conv_impls_for((3, 3), (1, 1), (1, 1))


@needs_onednn
def test_calls_from_many_threads_at_once_agree_with_lax():
    """oneDNN's primitives may not move between threads nor run on two at once (its scratchpad-mode
    documentation); XLA runs the handlers on any worker thread, two layers of one geometry at once, so
    each thread keeps its own primitives. One program with two same-geometry convs (forward and both
    gradients, on every core: above SERIAL_BELOW_MFLOP), run from four Python threads at once, 15 times
    each: every result equals the first run's bit for bit and lax's to float32 rounding, and every
    thread finishes (a shared backward primitive once waited forever in its own barrier)."""
    import threading

    rng = np.random.default_rng(12)
    x = jnp.asarray(rng.normal(size=(4, 16, 16, 32)), jnp.float32)
    w1, w2 = (jnp.asarray(rng.normal(size=(3, 3, 32, 32)) * 0.1, jnp.float32) for _ in range(2))
    assert onednn.threads(x.shape, w1.shape, x.shape[:3] + (32,), jnp.float32) == 0  # every core

    def grads(impl):
        loss = lambda x, w1, w2: jnp.sum(jnp.sin(ops.conv2d(x, w1, padding=1, impl=impl))  # noqa: E731
                                         + jnp.cos(ops.conv2d(x, w2, padding=1, impl=impl)))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

    step = grads("onednn")
    first = [np.asarray(g) for g in step(x, w1, w2)]
    for a, ref in zip(first, grads("lax")(x, w1, w2)):
        assert _rel(a, ref) < 1e-5
    results, errors = [], []

    def run():
        try:
            for _ in range(15):
                results.append([np.asarray(g) for g in step(x, w1, w2)])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=run, daemon=True) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in workers) and not errors, errors
    assert len(results) == 60
    for got in results:
        for a, b in zip(got, first):
            np.testing.assert_array_equal(a, b)
