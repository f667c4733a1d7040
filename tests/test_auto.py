"""fcnn.ops.auto: the measured implementation table picks what the benchmarks say, and only
implementations that compute the same function (and gradient) as the default."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _pool_refs import np_max_pool, np_max_pool_grad

from fcnn import ops, shapes
from fcnn.ops import auto, onednn

LENET_C1 = ((64, 28, 28, 1), (5, 5, 1, 6))
LENET_C2 = ((64, 14, 14, 6), (5, 5, 6, 16))
VGG_C1 = ((16, 32, 32, 3), (3, 3, 3, 64))
VGG_C2 = ((16, 32, 32, 64), (3, 3, 64, 128))
VGG_C4 = ((16, 8, 8, 256), (3, 3, 256, 512))


@pytest.fixture(autouse=True)
def _xla_table(monkeypatch):
    """The tables below are XLA's: oneDNN's rule is test_cpu_with_onednn_picks_it_except_for_kernel_heavy_convs's."""
    monkeypatch.setenv("FCNN_ONEDNN", "0")


@pytest.mark.parametrize("platform", ["gpu", "cuda", "rocm", "GPU"])
def test_gpu_conv_is_lax_everywhere(platform):
    # GPU table: cuDNN through lax was fastest on every measured layer (docs/benchmarks.md).
    for x, w in (LENET_C1, LENET_C2, VGG_C1, VGG_C2, VGG_C4):
        assert auto.select_conv_impl(platform, x, w) == "lax"


def test_cpu_conv_table():
    # CPU: "taps" for one input channel, "col2im" for 2-8 (LeNet step 6.33 -> 4.89 ms median,
    # experiments/step_ab.py), lax for wide layers (no gain from col2im in the VGG step).
    assert auto.select_conv_impl("cpu", *LENET_C1) == "taps"
    assert auto.select_conv_impl("cpu", *LENET_C2) == "col2im"
    assert auto.select_conv_impl("cpu", *VGG_C1) == "col2im"
    assert auto.select_conv_impl("cpu", (16, 32, 32, 9), (3, 3, 9, 64)) == "lax"  # just above the bound
    assert auto.select_conv_impl("cpu", *VGG_C2) == "lax"
    assert auto.select_conv_impl("cpu", *VGG_C4) == "lax"  # kernel/positions 9*512/(16*64) = 4.5 < 8


def test_cpu_with_amx_picks_im2col_vjp_or_winograd_for_wide_bfloat16_convs(monkeypatch):
    # AMX, bfloat16, 2-D, groups 1, input and output channels >= 64 (1x1), 128 (stride 1), 256
    # (strided) (perf_notes item 57, resnet_ab.py's bf16 layer tables)
    sel = auto.select_conv_impl
    bf16 = jnp.bfloat16
    monkeypatch.setattr(auto, "cpu_has_amx_bf16", lambda: True)
    assert sel("cpu", *VGG_C4, dtype=bf16) == "im2col_vjp"
    assert sel("cpu", *VGG_C4, dtype="bfloat16") == "im2col_vjp"
    assert sel("cpu", (16, 4, 4, 512), (3, 3, 512, 512), dtype=bf16) == "im2col_vjp"  # before col2im's rule
    assert sel("cpu", (16, 16, 16, 128), (3, 3, 128, 256), dtype=bf16) == "im2col_vjp"  # VGG's third
    assert sel("cpu", (16, 16, 16, 128), (3, 3, 128, 128), dtype=bf16) == "im2col_vjp"  # ResNet-18's stage 2
    # under those bounds, 3x3 stride 1 with channel counts >= 64 and >= 128: winograd (perf_notes item 58)
    assert sel("cpu", (16, 32, 32, 64), (3, 3, 64, 128), dtype=bf16) == "winograd"  # VGG's second: 64 < 128
    assert sel("cpu", (16, 16, 16, 128), (3, 3, 128, 127), dtype=bf16) == "winograd"  # just under im2col_vjp's
    assert sel("cpu", (16, 32, 32, 64), (3, 3, 64, 64), dtype=bf16) == "lax"  # ResNet-18's stage 1: 64 < 128
    assert sel("cpu", (16, 32, 32, 127), (3, 3, 127, 64), dtype=bf16) == "lax"  # the larger just under 128
    assert sel("cpu", (16, 32, 32, 63), (3, 3, 63, 128), dtype=bf16) == "lax"  # the smaller just under 64
    assert sel("cpu", (16, 32, 32, 64), (3, 3, 64, 128), dilation=2, dtype=bf16) == "lax"  # not Winograd's conv
    assert sel("cpu", (16, 32, 32, 64), (5, 5, 64, 128), dtype=bf16) == "lax"
    assert sel("cpu", (16, 64, 32, 32), (128, 64, 3, 3), layout="NCHW", dtype=bf16) == "winograd"
    assert sel("cpu", (16, 8, 8, 256), (3, 3, 256, 512), stride=2, dtype=bf16) == "im2col_vjp"  # strided: 256
    assert sel("cpu", (16, 16, 16, 128), (3, 3, 128, 256), stride=2, dtype=bf16) == "col2im"  # strided, 128
    assert sel("cpu", (16, 32, 32, 64), (1, 1, 64, 128), stride=2, dtype=bf16) == "im2col_vjp"  # 1x1: 64
    assert sel("cpu", (16, 32, 32, 63), (1, 1, 63, 128), stride=2, dtype=bf16) == "lax"  # just under
    assert sel("cpu", (16, 256, 8, 8), (512, 256, 3, 3), layout="NCHW", dtype=bf16) == "im2col_vjp"  # VGG_C4, NCHW
    assert sel("cpu", *VGG_C4) == "lax"  # float32 (None): the f32 table
    assert sel("cpu", *VGG_C4, dtype=jnp.float32) == "lax"
    assert sel("cpu", *VGG_C4, dtype=jnp.float16) == "lax"  # AMX-FP16 is another instruction set
    assert sel("cpu", (16, 8, 8, 512), (3, 3, 256, 512), groups=2, dtype=bf16) == "lax"  # grouped
    assert sel("cpu", (8, 8, 8, 8, 256), (3, 3, 3, 256, 256), dtype=bf16) == "lax"  # 3-D: not measured
    assert sel("cpu", (8, 64, 256), (3, 256, 256), dtype=bf16) == "lax"  # 1-D
    assert sel("gpu", *VGG_C4, dtype=bf16) == "lax"
    monkeypatch.setattr(auto, "cpu_has_amx_bf16", lambda: False)
    assert sel("cpu", *VGG_C4, dtype=bf16) == "lax"


def test_cpu_with_onednn_picks_it_except_for_kernel_heavy_convs(monkeypatch):
    """Where oneDNN is available, on the CPUs it was measured on (float32: avx512f, bfloat16:
    avx512_bf16), every 2-D groups-1 float32/bfloat16 CPU conv goes to it, before the taps, col2im and
    AMX rules, except kernel-heavy ones: prod(k) * cout >= 8 * n * prod(spatial), or >= 4 times at a
    stride (float32; bfloat16 only with AMX), and bfloat16 ones with one input channel (taps;
    perf_notes items 62 and 68)."""
    sel = auto.select_conv_impl
    bf16 = jnp.bfloat16
    monkeypatch.setattr(onednn, "available", lambda: True)
    amx_xeon = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})  # the flags lscpu listed there
    monkeypatch.setattr(auto, "cpu_flags", lambda: amx_xeon)
    for dtype in (None, jnp.float32, bf16, "bfloat16"):
        for x, w in (LENET_C2, VGG_C1, VGG_C2, VGG_C4):  # VGG_C4: 4.5 < 8 at stride 1
            assert sel("cpu", x, w, dtype=dtype) == "onednn"
        one_channel = "taps" if dtype in (bf16, "bfloat16") else "onednn"
        assert sel("cpu", *LENET_C1, dtype=dtype) == one_channel
        assert sel("cpu", (16, 64, 32, 32), (128, 64, 3, 3), layout="NCHW", dtype=dtype) == "onednn"
        assert sel("cpu", (16, 32, 32, 64), (1, 1, 64, 128), stride=2, dtype=dtype) == "onednn"
        assert sel("cpu", (16, 32, 32, 64), (3, 3, 64, 128), stride=2, dilation=2, dtype=dtype) == "onednn"
    assert sel("cpu", (16, 4, 4, 512), (3, 3, 512, 512)) == "col2im"  # 18 >= 8: the rules above
    assert sel("cpu", (16, 4, 4, 512), (3, 3, 512, 512), dtype=bf16) == "im2col_vjp"
    assert sel("cpu", (16, 8, 8, 256), (3, 3, 256, 512), stride=2) == "col2im"  # strided, 4.5 >= 4
    assert sel("cpu", (16, 8, 8, 256), (3, 3, 256, 455), stride=2) == "onednn"  # strided, 3.99 < 4
    assert sel("cpu", (16, 4, 4, 512), (3, 3, 512, 227)) == "onednn"  # 7.98 < 8
    assert sel("cpu", (16, 4, 4, 512), (3, 3, 512, 228)) == "col2im"  # 8.02
    assert sel("cpu", *VGG_C4, dtype=jnp.float64) == "lax"  # oneDNN computes float32 and bfloat16 only
    assert sel("cpu", *VGG_C4, dtype=jnp.float16) == "lax"
    assert sel("cpu", (16, 8, 8, 512), (3, 3, 256, 512), groups=2) == "lax"  # grouped
    assert sel("cpu", (8, 8, 8, 8, 16), (3, 3, 3, 16, 16)) == "col2im"  # 3-D: XLA's table
    assert sel("cpu", (8, 64, 256), (3, 256, 256)) == "lax"  # 1-D
    assert sel("gpu", *VGG_C4) == "lax"
    # AVX-512 with avx512_bf16 and no AMX (Zen 4, item 68): the same, except that kernel-heavy bfloat16
    # layers stay on oneDNN too (XLA's bf16 convolutions there were 1.1-1.7x slower)
    monkeypatch.setattr(auto, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    for x, w in (LENET_C2, VGG_C1, VGG_C2, VGG_C4):
        assert sel("cpu", x, w) == "onednn" and sel("cpu", x, w, dtype=bf16) == "onednn"
    assert sel("cpu", *LENET_C1, dtype=bf16) == "taps"
    assert sel("cpu", (16, 4, 4, 512), (3, 3, 512, 512)) == "col2im"  # float32: the bound holds
    assert sel("cpu", (16, 4, 4, 512), (3, 3, 512, 512), dtype=bf16) == "onednn"
    assert sel("cpu", (16, 8, 8, 256), (3, 3, 256, 512), stride=2) == "col2im"
    assert sel("cpu", (16, 8, 8, 256), (3, 3, 256, 512), stride=2, dtype=bf16) == "onednn"
    assert sel("cpu", *VGG_C4, dtype=jnp.float16) == "lax"
    # AVX-512 without avx512_bf16 (e.g. Skylake-SP): float32 only, not measured for bf16
    monkeypatch.setattr(auto, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert sel("cpu", *VGG_C2) == "onednn" and sel("cpu", *VGG_C2, dtype=bf16) == "lax"
    monkeypatch.setattr(auto, "cpu_flags", lambda: frozenset({"avx2"}))
    assert [sel("cpu", x, w) for x, w in (LENET_C1, LENET_C2, VGG_C2)] == ["taps", "col2im", "lax"]
    assert sel("cpu", *VGG_C2, dtype=bf16) == "lax"
    monkeypatch.setattr(auto, "cpu_flags", lambda: amx_xeon)
    monkeypatch.setattr(onednn, "available", lambda: False)
    assert sel("cpu", *VGG_C2) == "lax"


def test_bf16_dot_instructions_are_avx512_bf16_or_amx(monkeypatch):
    for flags, want in (({"avx2", "avx512f"}, False), ({"avx2", "avx512f", "avx512_bf16"}, True),
                        ({"avx2", "amx_bf16"}, True), (set(), False)):
        monkeypatch.setattr(auto, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert auto.cpu_has_bf16_dot() is want


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    """Linux's cpuinfo "flags" line, as a set; an unreadable file gives none (no CPU-specific choice)."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n"
                    "\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert auto.cpu_flags(str(info)) == {"fpu", "avx2", "amx_bf16", "amx_tile"}  # the first CPU's
    assert auto.cpu_flags(str(tmp_path / "missing")) == frozenset()
    no_flags = tmp_path / "cpuinfo_without_flags"
    no_flags.write_text("processor\t: 0\n")
    assert auto.cpu_flags(str(no_flags)) == frozenset()


def test_cpu_conv_table_strided_and_kernel_heavy_2d():
    # col2im where lax's dX is at its worst (perf_notes item 43, ResNet-18 b16 step 0.984x): a
    # stride > 1 with a kernel larger than 1x1, or prod(k) * cout >= 8 * n * prod(spatial)
    sel = auto.select_conv_impl
    assert sel("cpu", (16, 32, 32, 64), (3, 3, 64, 128), stride=2) == "col2im"
    assert sel("cpu", (16, 32, 32, 64), (3, 3, 64, 128), stride=(1, 2)) == "col2im"
    assert sel("cpu", (16, 32, 32, 64), (1, 1, 64, 128), stride=2) == "lax"  # the 1x1 shortcut: slower
    assert sel("cpu", (16, 4, 4, 512), (3, 3, 512, 512)) == "col2im"  # 4608 >= 8 * 256
    assert sel("cpu", (64, 4, 4, 512), (3, 3, 512, 512)) == "lax"  # 4608 < 8 * 1024
    assert sel("cpu", (16, 8, 8, 256), (3, 3, 256, 256)) == "lax"  # 2304 < 8 * 1024
    assert sel("cpu", (2, 4, 4, 16), (2, 2, 16, 64)) == "col2im"  # 4 * 64 == 8 * (2 * 16): the bound itself
    assert sel("cpu", (2, 4, 4, 16), (2, 2, 16, 63)) == "lax"  # 252, just under it
    assert sel("cpu", (16, 512, 4, 4), (512, 512, 3, 3), layout="NCHW") == "col2im"
    assert sel("cpu", (16, 64, 32, 32), (128, 64, 3, 3), stride=2, layout="NCHW") == "col2im"
    assert sel("cpu", (16, 4, 4, 512), (3, 3, 256, 512), groups=2) == "lax"  # grouped: not measured
    assert sel("cpu", (8, 8, 8, 8, 64), (3, 3, 3, 64, 64), stride=2) == "lax"  # 3-D: not measured
    for platform in ("gpu", "tpu"):
        assert sel(platform, (16, 4, 4, 512), (3, 3, 512, 512)) == "lax"
        assert sel(platform, (16, 32, 32, 64), (3, 3, 64, 128), stride=2) == "lax"


def test_auto_strided_and_kernel_heavy_convs_agree_with_lax():
    # a small kernel-heavy layer (9 * 32 >= 8 * 2 * 4 * 4), unstrided and strided, through
    # conv2d(impl="auto"), which passes its stride to the table: values and both gradients equal
    # lax's in float64 (one compiled program for all four)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 4, 4, 16)), rng.standard_normal((3, 3, 16, 32))
    for stride in (1, 2):
        assert auto.select_conv_impl("cpu", x.shape, w.shape, stride=stride) == "col2im"

    def vg(x, w, impl):
        return [jax.value_and_grad(lambda x, w, s=s: jnp.sum(jnp.sin(ops.conv2d(
            x, w, stride=s, padding="SAME", impl=impl))), argnums=(0, 1))(x, w) for s in (1, 2)]

    got, want = jax.jit(lambda x, w: (vg(x, w, "auto"), vg(x, w, "lax")))(x, w)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-10)


def test_cpu_conv_table_1d_3d():
    # experiments/bench_decoder.py: 1-D lax (nothing faster beyond the noise); 3-D taps for one input
    # channel (0.10x lax fwd+bwd), col2im for 16 and 32 (0.62-0.73x), lax above (not measured)
    sel = auto.select_conv_impl
    assert sel("cpu", (8, 4096, 32), (5, 32, 64)) == "lax"
    assert sel("cpu", (8, 4096, 1), (5, 1, 64)) == "lax"
    assert sel("cpu", (8, 16, 16, 16, 1), (3, 3, 3, 1, 16)) == "taps"
    assert sel("cpu", (8, 16, 16, 16, 16), (3, 3, 3, 16, 32)) == "col2im"
    assert sel("cpu", (8, 8, 8, 8, 32), (3, 3, 3, 32, 64)) == "col2im"
    assert sel("cpu", (8, 32, 8, 8, 8), (64, 32, 3, 3, 3), layout="NCDHW") == "col2im"
    assert sel("cpu", (8, 8, 8, 8, 33), (3, 3, 3, 33, 64)) == "lax"
    assert sel("cpu", (8, 8, 8, 8, 32), (3, 3, 3, 16, 64), groups=2) == "lax"
    assert sel("gpu", (8, 16, 16, 16, 16), (3, 3, 3, 16, 32)) == "lax"


@pytest.mark.parametrize("x_shape,w_shape", [((2, 5, 4, 6, 1), (3, 3, 3, 1, 4)), ((2, 5, 4, 6, 3), (3, 2, 3, 3, 4))])
def test_selected_3d_conv_impl_agrees_with_lax(x_shape, w_shape):
    impl = auto.select_conv_impl("cpu", x_shape, w_shape)
    assert impl in ("taps", "col2im")
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    vg = lambda impl: jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(ops.conv3d(  # noqa: E731
        x, w, padding=1, impl=impl))), argnums=(0, 1)))(x, w)  # jitted: one compile, not one per eager op
    for a, b in zip(jax.tree.leaves(vg(impl)), jax.tree.leaves(vg("lax"))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-10)


def test_cpu_conv_layouts_and_groups():
    # NCHW kernels are OIHW: the same channels give the same choice
    assert auto.select_conv_impl("cpu", (64, 1, 28, 28), (6, 1, 5, 5), layout="NCHW") == "taps"
    assert auto.select_conv_impl("cpu", (16, 64, 32, 32), (128, 64, 3, 3), layout="NCHW") == "lax"
    # depthwise (one channel per group) was not measured: the default
    assert auto.select_conv_impl("cpu", (1, 8, 8, 64), (3, 3, 1, 64), groups=64) == "lax"


def test_unmeasured_platform_gets_defaults():
    assert auto.select_conv_impl("tpu", *LENET_C1) == "lax"


def test_pool_table():
    for p in ("cpu", "gpu", "tpu"):
        assert auto.select_pool_impl(p, (512, 32, 32, 128), 2) == "custom_vjp"  # tiled windows
        assert auto.select_pool_impl(p, (64, 28, 28, 6), (2, 2), stride=2) == "custom_vjp"
        # overlapping windows / a low-side pad: lax's gradient differs on NaN / -inf windows
        assert auto.select_pool_impl(p, (8, 32, 32, 16), 3, stride=2) == "custom_vjp"
        assert auto.select_pool_impl(p, (8, 31, 31, 16), 2, padding=1) == "custom_vjp"
    # only custom_vjp implements these
    assert auto.select_pool_impl("gpu", (8, 32, 32, 16), 3, stride=2, ties="split") == "custom_vjp"
    assert auto.select_pool_impl("cpu", (8, 32, 32, 16), 2, dilation=2) == "custom_vjp"


def test_platform_default_and_errors():
    assert auto.normalize_platform(None) == auto.normalize_platform(jax.default_backend())
    with pytest.raises(TypeError, match="platform"):
        auto.select_conv_impl(3, *LENET_C1)
    with pytest.raises(ValueError, match="layout"):
        auto.select_conv_impl("cpu", *LENET_C1, layout="NWHC")
    for platform in ("cpu", "gpu"):  # a bad dtype is refused everywhere, not only where it would decide
        with pytest.raises(TypeError, match=r"dtype must be None or a dtype .* got 'bfloat17'"):
            auto.select_conv_impl(platform, *LENET_C1, dtype="bfloat17")
    # the stride now counts in the CPU table, so a bad one is refused on every platform and path
    for platform, shapes_ in (("cpu", LENET_C1), ("cpu", VGG_C4), ("gpu", VGG_C4)):
        with pytest.raises(TypeError, match="stride must be an int or a pair"):
            auto.select_conv_impl(platform, *shapes_, stride=(2, 2, 2))
        with pytest.raises(ValueError, match="stride"):
            auto.select_conv_impl(platform, *shapes_, stride=0)
        # dilation decides Winograd on a CPU with AMX; a bad one is refused wherever auto runs
        with pytest.raises(TypeError, match="dilation must be an int or a pair"):
            auto.select_conv_impl(platform, *shapes_, dilation=(1, 1, 1))
        with pytest.raises(ValueError, match="dilation must be >= 1"):
            auto.select_conv_impl(platform, *shapes_, dilation=0, dtype=jnp.bfloat16)


@pytest.mark.parametrize("call, match", [
    (lambda: auto.select_conv_impl("cpu", *LENET_C2, groups=0), "groups must be a positive int"),
    (lambda: auto.select_conv_impl("cpu", (16, 14, 14, 6), (5, 5, 7, 16)), "w has 7 input channels per group"),
    (lambda: auto.select_conv_transpose_impl("cpu", *LENET_C2, stride=2, groups=0), "groups must be a positive int"),
    (lambda: auto.select_pool_impl("cpu", (8, 32, 32, 16), 2, ties="bogus"), "ties must be one of first, split, all")])
def test_selectors_refuse_what_the_ops_refuse(call, match):  # as the ops do (their docstrings: "validated")
    with pytest.raises(ValueError, match=match):
        call()


@functools.lru_cache(maxsize=None)
def _conv_value_and_grad(x_shape, w_shape, padding, impl):
    """sum(sin(conv)) and its gradient at fixed random x, w: compiled once per (shapes, impl), so the
    platforms that choose the same implementation share it (eager, one such call took ~10 s)."""
    rng = np.random.default_rng(0)  # not jax.random: threefry compiles for seconds per new shape
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    loss = lambda x, w: jnp.sum(jnp.sin(ops.conv2d(x, w, padding=padding, impl=impl)))  # noqa: E731
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
@pytest.mark.parametrize("x_shape,w_shape,padding,on_cpu", [
    ((2, 12, 12, 1), (5, 5, 1, 6), "SAME", "taps"), ((2, 10, 10, 6), (5, 5, 6, 16), "VALID", "col2im"),
    ((2, 8, 8, 32), (3, 3, 32, 64), "SAME", "lax"), ((2, 9, 9, 1), (3, 3, 1, 4), 1, "taps")])
def test_selected_conv_impl_agrees_with_lax(platform, x_shape, w_shape, padding, on_cpu):
    """The chosen impl (pinned: the cases cover more than lax) gives lax's value and gradients (reference's for lax)."""
    impl = auto.select_conv_impl(platform, x_shape, w_shape, padding=padding)
    assert impl == (on_cpu if platform == "cpu" else "lax")
    want = _conv_value_and_grad(x_shape, w_shape, padding, "lax" if impl != "lax" else "reference")
    got = _conv_value_and_grad(x_shape, w_shape, padding, impl)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("ties", ["first", "split", "all"])
@pytest.mark.parametrize("window,stride,dilation", [(2, None, 1), (3, 2, 1), (2, 1, 2)])
def test_selected_pool_impl_supports_what_is_asked(ties, window, stride, dilation):
    """The chosen impl's gradient of sum(sin(max_pool)) on a tie-heavy input: _pool_refs' routing for that policy."""
    x, wnd = np.round(np.random.default_rng(0).standard_normal((2, 9, 9, 3)) * 2) / 2, (window, window)
    want = np_max_pool_grad(x, np.cos(np_max_pool(x, wnd, stride, "VALID", dilation)), wnd, stride, "VALID", dilation, ties)
    impls = {auto.select_pool_impl(p, x.shape, window, stride=stride, dilation=dilation, ties=ties) for p in ("cpu", "gpu")}
    assert impls <= set(ops.POOL_IMPLS)
    for impl in impls:
        f = lambda x: jnp.sum(jnp.sin(ops.max_pool2d(x, window, stride=stride, dilation=dilation,  # noqa: E731
                                                     impl=impl, ties=ties)))
        np.testing.assert_allclose(jax.jit(jax.grad(f))(x), want, rtol=1e-12, atol=1e-12)


def _codes(a):  # 0 finite, 1 NaN, 2 +inf, 3 -inf (NaN and -inf apart)
    return np.select([np.isnan(a), np.isposinf(a), np.isneginf(a)], [1, 2, 3], 0)


def test_auto_never_selects_an_impl_with_other_nonfinite_behaviour(monkeypatch):
    """Over auto's whole table (platforms, every rank and layout, channels 1-300, groups, dtypes, a
    CPU with and without AMX), the chosen implementation is never fft, and a NaN or inf pixel gives
    it lax's non-finite pattern in z and in the gradients (fcnn/ops/conv.py's table; a non-finite
    kernel: tests/test_conv_nd.py::test_nonfinite_table)."""
    chosen = set()
    for amx, platform, dtype in itertools.product((False, True), ("cpu", "gpu", "tpu", None), (None, jnp.bfloat16)):
        monkeypatch.setattr(auto, "cpu_has_amx_bf16", lambda amx=amx: amx)
        for r in (1, 2, 3):
            for layout, cin, cout, groups in itertools.product(shapes.LAYOUTS_BY_RANK[r], (1, 2, 3, 8, 9, 64, 300),
                                                               (4, 300), (1, 2)):
                if cin % groups or cout % groups:
                    continue
                x = shapes.make_shape(2, (9,) * r, cin, layout)
                w = ((*(3,) * r, cin // groups, cout) if shapes.is_channels_last(layout)
                     else (cout, cin // groups, *(3,) * r))
                chosen.add(auto.select_conv_impl(platform, x, w, groups=groups, layout=layout, dtype=dtype))
    assert chosen == {"lax", "taps", "col2im", "im2col_vjp", "winograd"}
    rng = np.random.default_rng(0)
    x, w, ct = rng.normal(size=(2, 8, 8, 1)), rng.normal(size=(3, 3, 1, 3)), rng.normal(size=(2, 8, 8, 3))
    for bad in (np.nan, np.inf):
        xb = x.copy()
        xb[1, 3, 4, 0] = bad

        def codes(impl):
            z, pull = jax.vjp(lambda x, w: ops.conv2d(x, w, padding="SAME", impl=impl), xb, w)
            return [_codes(a) for a in (z, *pull(ct))]

        want = codes("lax")
        assert np.count_nonzero(want[0]) == 27  # 3x3 window x 3 output channels
        for impl in chosen:
            for a, b in zip(codes(impl), want):
                np.testing.assert_array_equal(a, b, err_msg=f"{impl} {bad}")


def test_auto_max_pool_keeps_the_nonfinite_gradient_of_custom_vjp():
    """Issue 17's case: a window of -inf cells next to a low-side pad (lax sends its gradient into the
    padding, dx[0, 0] = 0) and a window with two NaNs: auto's gradient is custom_vjp's, which
    the hand-computed values pin: the -inf input cell (0, 0) collects the gradient of every window
    whose only real cells are -inf and that it comes first in (3 windows of the 4x4 output)."""
    ninf = -np.inf
    x = np.array([[ninf, ninf, 1.0], [ninf, 2.0, 0.0], [0.5, ninf, ninf]]).reshape(1, 1, 3, 3)
    grad = lambda impl: np.asarray(jax.grad(lambda x: jnp.sum(ops.max_pool2d(  # noqa: E731
        x, 2, stride=1, padding=1, layout="NCHW", impl=impl)))(x))
    assert grad("auto")[0, 0, 0, 0] == 3.0 and grad("lax")[0, 0, 0, 0] == 0.0
    np.testing.assert_array_equal(grad("auto"), grad("custom_vjp"))
    xn = np.array([[np.nan, 5.0, np.nan, 2.0]]).reshape(1, 1, 1, 4)
    g = lambda impl: np.asarray(jax.grad(lambda x: jnp.sum(ops.max_pool2d(x, (1, 4), layout="NCHW", impl=impl)))(xn))  # noqa: E731,E501
    np.testing.assert_array_equal(g("auto"), g("custom_vjp"))
    assert g("auto")[0, 0, 0, 0] == 1.0  # the first NaN (PyTorch: the last; pool.py's table)
    assert g("lax")[0, 0, 0, 3] == 1.0  # XLA's >= scan: the last cell, 2.0 (why auto never picks lax)


# ----------------------------------------------------------------------------- transposed convolution
UNET_UP = ((8, 32, 32, 64), (2, 2, 32, 64))  # bench_decoder's ct-k2s2: 64 -> 32 channels, 32x32 -> 64x64


def test_conv_transpose_table():
    # CPU, stride > 1: custom_vjp (fwd+bwd 0.06-0.1x lax's on every measured shape: lax's gradient of the
    # lhs-dilated conv is slow on XLA:CPU, docs/benchmarks.md); stride 1, groups, GPU and TPU: lax
    sel = auto.select_conv_transpose_impl
    assert sel("cpu", *UNET_UP, stride=2) == "custom_vjp"
    assert sel("cpu", (8, 32, 32, 64), (4, 4, 32, 64), stride=2) == "custom_vjp"
    assert sel("cpu", (8, 2048, 64), (2, 32, 64), stride=2) == "custom_vjp"  # 1-D
    assert sel("cpu", (4, 8, 8, 8, 64), (2, 2, 2, 32, 64), stride=(1, 2, 2)) == "custom_vjp"  # 3-D, mixed
    assert sel("cpu", (8, 64, 32, 32), (64, 32, 2, 2), stride=2, layout="NCHW") == "custom_vjp"
    assert sel("cpu", *UNET_UP) == "lax"  # stride 1: no lhs dilation
    assert sel("cpu", (8, 32, 32, 64), (2, 2, 16, 64), stride=2, groups=2) == "lax"
    for p in ("gpu", "cuda", "tpu"):
        assert sel(p, *UNET_UP, stride=2) == "lax"
    with pytest.raises(TypeError, match="stride must be an int or a pair"):
        sel("cpu", *UNET_UP, stride=(2, 2, 2))


@functools.lru_cache(maxsize=None)
def _ct_value_and_grad(x_shape, w_shape, stride, padding, output_padding, impl):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[-2])
    loss = lambda x, w, b: jnp.sum(jnp.sin(ops.conv_transpose(  # noqa: E731
        x, w, b, stride=stride, padding=padding, output_padding=output_padding, impl=impl)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, w, b)


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,output_padding", [
    ((2, 5, 4, 6), (2, 2, 3, 6), 2, 0, 0), ((2, 5, 4, 6), (4, 4, 3, 6), 2, 1, 1),
    ((2, 7, 4), (3, 2, 4), 3, ((1, 0),), 2), ((1, 3, 2, 3, 4), (2, 3, 2, 2, 4), (1, 2, 2), 0, 0)])
def test_auto_conv_transpose_agrees_with_lax(x_shape, w_shape, stride, padding, output_padding):
    """conv_transpose(impl="auto") (custom_vjp on this CPU) gives lax's value and gradients (float64)."""
    want = _ct_value_and_grad(x_shape, w_shape, stride, padding, output_padding, "lax")
    got = _ct_value_and_grad(x_shape, w_shape, stride, padding, output_padding, "auto")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-10)


def test_auto_conv_transpose_never_changes_the_nonfinite_pattern():
    """Over the whole table (platforms, ranks, layouts, strides, groups) auto picks lax or custom_vjp,
    and custom_vjp has lax's NaN/inf pattern in z, dx, dw and db for a non-finite pixel of x and a
    non-finite kernel tap, with a crop (padding) and output_padding (the rows no input reaches)."""
    chosen = set()
    for platform in ("cpu", "gpu", "tpu", None):
        for r in (1, 2, 3):
            for layout, s, groups in itertools.product(shapes.LAYOUTS_BY_RANK[r], (1, 2, 3), (1, 2)):
                x = shapes.make_shape(2, (5,) * r, 4, layout)
                w = (*(3,) * r, 4 // groups, 4) if shapes.is_channels_last(layout) else (4, 4 // groups, *(3,) * r)
                chosen.add(auto.select_conv_transpose_impl(platform, x, w, stride=s, groups=groups, layout=layout))
    assert chosen == {"lax", "custom_vjp"}
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(2, 4, 5, 3)), rng.normal(size=(3, 3, 2, 3)), rng.normal(size=(2,))
    ct = rng.normal(size=(2, 8, 10, 2))  # out = (in-1)*2 - 2 + 3 + 1
    for bad, where in itertools.product((np.nan, np.inf, -np.inf), ("x", "w")):
        xb, wb = x.copy(), w.copy()
        if where == "x":
            xb[1, 2, 3, 0] = bad
        else:
            wb[0, 2, 1, 2] = bad

        def codes(impl):
            z, pull = jax.vjp(lambda x, w, b: ops.conv_transpose(x, w, b, stride=2, padding=1, output_padding=1,
                                                                 impl=impl), xb, wb, b)
            return [_codes(a) for a in (z, *pull(ct))]

        want = codes("lax")
        assert np.count_nonzero(want[0]) > 0
        for impl in chosen:
            for a, c in zip(codes(impl), want):
                np.testing.assert_array_equal(a, c, err_msg=f"{impl} {bad} in {where}")
        if where == "w":  # why auto never picks "reference" (the fastest in 3-D): its dx has more non-finite
            # cells (autodiff of the scatter multiplies the bad tap by the cropped rows' zero cotangent)
            assert np.count_nonzero(codes("reference")[1]) > np.count_nonzero(want[1])
