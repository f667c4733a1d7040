"""``impl="auto"``: the fastest implementation per platform and shape, from measurements.

Every choice here is backed by a row of ``experiments/bench_ops.py``'s tables in
``docs/benchmarks.md`` (forward+backward time of each implementation on LeNet- and
VGG-sized layers, CPU and GPU) or of ``experiments/resnet_ab.py``'s (ResNet-18's layers);
``docs/perf_notes.md`` records the runs. The choice only
ever picks among implementations that compute the same function with the same gradient
for the arguments given, so ``impl="auto"`` changes speed, never results beyond rounding:

* conv: every implementation agrees with "lax" to rounding for every argument with finite
  values; with a NaN or inf in x or w, "fft" makes every output it mixes non-finite (the table in
  fcnn/ops/conv.py), so it is never chosen, and every implementation chosen below gives lax's
  non-finite pattern (tests/test_auto.py checks the whole table). Chosen:
  "lax" (cuDNN on GPU, XLA:CPU's convolution) except on CPU with groups=1 and few input channels:
  - one input channel: "taps" (the reference forward, one multiply-add per kernel tap that XLA
    fuses into one loop, materialised, with the hand-written backward). LeNet-5's first layer
    forward+backward ran 3x faster than XLA:CPU's convolution;
  - 2 to 8 input channels: "col2im" (lax forward; input gradient as one matmul to patch
    gradients plus the shifted-slice sum, materialised). LeNet-5's second layer fwd+bwd took
    0.69x lax's time per op (VGG's 3-channel first layer: 0.84x).
  LeNet-5 b64 f32 train step (experiments/step_ab.py, interleaved, median / 25th percentile):
  taps+col2im 4.89 / 4.11 ms, taps+lax 4.96 / 4.67, reference+lax (the previous table)
  6.33 / 5.86, lax everywhere 7.57 / 6.94; col2im's step gain on the second layer is small. Not chosen: "im2col"
  (even or slower in the CPU LeNet step), "fft" (far slower on wide layers), and "custom_vjp" or
  col2im on wide layers (VGG cin 64-256: 0.90-0.96x of lax's time per op, but the VGG b8 train
  step was the same, ~90 ms, with lax, custom_vjp or col2im everywhere), except two kinds of 2-D
  layer where lax's input gradient is at its worst:
  - a stride > 1 (kernel larger than 1x1): lax's dX convolves the stride-dilated dZ; ResNet-18's
    3x3 stride-2 layers at batch 16 took 0.84-0.93x of lax's time per op with col2im;
  - a kernel with at least ``CPU_COL2IM_MIN_KERNEL_RATIO`` = 8 times as many weights per input
    channel as the input has positions (``prod(k) * cout >= 8 * n * prod(spatial)``): XLA:CPU then
    spends more on the rotated, in/out-swapped kernel copy it makes for lax's dX than col2im
    spends on its patch gradients. ResNet-18's 4x4 512->512 layers at batch 16 (ratio 18):
    0.86-0.89x per op; VGG's 8x8 256->512 at batch 16 (ratio 4.5) was 0.95x per op but 1.02x in
    the VGG step, so the bound sits between them.
  Both together: the ResNet-18 b16 step 0.984x (40 interleaved rounds, 95% interval
  0.974-0.994; docs/perf_notes.md item 43). These were measured on an AVX2-only AMD EPYC; on an Intel
  Xeon with AVX-512 and AMX (items 51-52), ResNet-18 with lax everywhere ran as auto (327.0 vs
  331.4 ms) and auto's VGG b16 choice (col2im, lax, lax, lax) was the fastest of four per-layer
  configurations (108.9 ms against 112.5-118.5), so the rules stand there too.
  On a CPU with AMX (``cpu_has_amx_bf16``: the ``amx_bf16`` flag), a bfloat16 2-D convolution with
  groups=1 and enough input and output channels (``CPU_AMX_MIN_CHANNELS``: 64 for a 1x1 kernel,
  128 for a larger one at stride 1, 256 for a strided one) gets "im2col_vjp": its three products
  take bf16 operands into f32, the one form in which XLA:CPU reaches AMX (with ``fcnn.step``'s
  options there, YNNPACK's matmuls); its patch matrices cost memory traffic that only wide layers
  repay. Forward + both gradients at batch 16 (``experiments/resnet_ab.py --part layers --dtype
  bf16``, perf_notes item 57): VGG's 8x8 256->512 10.3 ms against lax's 26.2, ResNet-18's 3x3
  512 at 4x4 7.4 against 17.0, VGG's 32x32 64->128 50.9 against 40.7 (not chosen). That layer, a 3x3
  stride-1 one under im2col_vjp's bound with channel counts of at least 64 and 128
  (``CPU_AMX_WINOGRAD_MIN_CHANNELS``), gets "winograd", whose tile products are that AMX matmul:
  the VGG b16 bf16 step 77.8 against 84.0 ms in fresh processes (perf_notes item 58; ResNet-18's
  64->64 layers did not gain). 1-D and 3-D convolutions
  (``conv1d``/``conv3d``), experiments/bench_decoder.py, batch 8, fwd+bwd: 1-D (length 4096,
  32->64, k=5): nothing beat lax beyond the noise (col2im 0.91-1.86x, custom_vjp 0.97-1.14x, auto's
  own row = lax 1.03-1.07x): "lax". 3-D, CPU, groups 1, as in 2-D by input channels: one input
  channel "taps" (16^3 1->16: 0.10x lax; col2im 0.36x), 2 to ``CPU_COL2IM_MAX_CIN_3D`` = 32 "col2im"
  (16^3 16->32: 0.72x and 0.73x in two runs; 8^3 32->64: 0.62x, auto's lax row 0.90x); wider: "lax"
  (not measured).
  Where oneDNN is available (``fcnn.ops.onednn``: the ``fcnn[onednn]`` extra, a C++ compiler; not
  with ``FCNN_ONEDNN=0``), every 2-D groups-1 float32 or bfloat16 CPU convolution goes to "onednn"
  before the rules above, except kernel-heavy ones (``CPU_ONEDNN_MAX_KERNEL_RATIO``: prod(k) * cout
  >= 8 * n * prod(spatial), or >= 4 at a stride; bfloat16 ones only with AMX), which keep them, and bfloat16 ones with one input
  channel, which keep "taps" (the LeNet-5 b64 bf16 step, interleaved: taps + onednn 3.36 ms, onednn
  on both layers 4.35, taps + col2im 4.01; in f32 onednn on both 3.21 against 3.53 and 3.61). Forward + both gradients at batch
  16 on the AVX-512/AMX Xeon (perf_notes item 62), f32: VGG's 64->128 17.5 ms against lax's 26.7,
  ResNet-18's 3x3 64 9.4 against 15.3, LeNet-5's two layers at b64 1.39 / 1.10 against taps' 1.63 and
  col2im's 1.58; bf16 (oneDNN on AMX): VGG's 64->128 3.1 against 26.7, ResNet-18's 3x3 128 2.3 against
  im2col_vjp's 7.4; kept off: ResNet-18's 4x4 3x3 512 (ratio 18; f32 20.1 against col2im's 14.8, bf16
  12.7 against im2col_vjp's 7.2) and 8x8 stride-2 256->512 (ratio 4.5; f32 10.2 against 7.7).
  Its NaN/inf pattern is lax's (kernel guards; tests/test_onednn.py, in float32: the whole-table test
  below runs float64 inputs, which oneDNN leaves to lax). Measured on the AVX-512/AMX Xeon and on an
  AMD EPYC Zen 4 (AVX-512 with avx512_bf16, no AMX; perf_notes item 68), so the rule asks for their
  flags: float32 ``avx512f``, bfloat16 ``avx512_bf16``; an AVX2-only CPU keeps the table above
  (``impl="onednn"`` itself runs wherever oneDNN is available). Without AMX the kernel-heavy bound
  holds for float32 only: a bfloat16 layer has no faster XLA path there (Zen 4, batch 16, bf16:
  ResNet-18's 4x4 3x3 512 onednn 14.3 ms against col2im's 24.4, its 8x8 stride-2 256->512 10.8
  against 12.2-13.4; VGG's 64->128 19.6 against lax's 44.1).
* conv_transpose: "custom_vjp" on CPU when a stride is > 1 (``select_conv_transpose_impl``): the
  same forward as "lax"; its hand-derived backward took 0.06-0.1x of the time of lax's autodiff
  backward on the measured U-Net decoder shapes in 1-D and 2-D. In 3-D (8^3 -> 16^3) lax's forward
  itself (a 3-D lhs-dilated conv) is slow on XLA:CPU, so custom_vjp gains only 0.90x there; the
  "reference" scatter took 0.03x, but auto never picks it: for a non-finite kernel tap its
  autodiff dx has NaNs where lax's has none (tests/test_auto.py). "lax" elsewhere.
* max-pool: "custom_vjp" always: it implements every tie policy and dilation, was measured faster
  on tiled windows, and "lax" differs from it on NaN/-inf windows (fcnn/ops/pool.py's table).
  "reference" (ties "split") is never chosen.

Platforms: "cpu" and "gpu" ("cuda"/"rocm" mean "gpu"); any other (e.g. "tpu") gets the
library defaults, "lax", since nothing was measured there.

The hook in ``conv`` (and so ``conv2d``) / ``conv_transpose`` / ``max_pool2d`` (after argument validation, where shapes are known)::

    if impl == "auto":
        impl = auto.select_conv_impl(jax.default_backend(), x.shape, w.shape, stride=stride, padding=pads,
                                     dilation=dilation, groups=groups, layout=layout)
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

from fcnn import _checks, shapes
from fcnn.ops import pool_nd

__all__ = ["select_conv_impl", "select_conv_transpose_impl", "select_pool_impl", "normalize_platform",
           "CPU_TAPS_MAX_CIN", "CPU_COL2IM_MAX_CIN", "CPU_COL2IM_MAX_CIN_3D", "CPU_COL2IM_MIN_KERNEL_RATIO",
           "CPU_AMX_MIN_CHANNELS", "CPU_AMX_WINOGRAD_MIN_CHANNELS", "CPU_ONEDNN_MAX_KERNEL_RATIO", "parse_cpu_flags", "cpu_flags", "cpu_has_amx_bf16",
           "cpu_has_bf16_dot"]

# CPU: "taps" for convs with one input channel per group (XLA:CPU runs them at a few GFLOP/s).
# Measured: docs/benchmarks.md, "Ops ... CPU" tables (per op and LeNet-5 train step by impl).
CPU_TAPS_MAX_CIN = 1
# CPU: "col2im" up to this many input channels (measured: 3 and 6 faster than lax; 64-256 even in a step).
CPU_COL2IM_MAX_CIN = 8
# CPU, 3-D convolutions: "col2im" up to this many input channels (measured 16 and 32, bench_decoder.py).
CPU_COL2IM_MAX_CIN_3D = 32
# CPU, 2-D: "col2im" also when prod(kernel) * cout >= this * n * prod(spatial) (perf_notes item 43).
CPU_COL2IM_MIN_KERNEL_RATIO = 8
# CPU with AMX, bfloat16, 2-D, groups 1: "im2col_vjp" when input and output channels are both at
# least this, by kind of kernel: its patch matrices grow with the taps, and for a stride its dX
# convolves the stride-dilated dZ (forward + both gradients at batch 16, perf_notes item 57:
# ResNet-18's 1x1 stride-2 64->128 1.66 vs 2.76 ms; 3x3 stride 1 at 128 channels 8.1 vs 15.5, VGG's
# 128->256 26.5 vs 28.1, at 64 (VGG's 64->128) 50.9 vs 40.7; 3x3 stride 2 256->512 6.4 vs 8.1,
# 128->256 18.6 vs 8.1).
CPU_AMX_MIN_CHANNELS = {"1x1": 64, "stride 1": 128, "strided": 256}
# Below that, a 3x3 stride-1 layer gets "winograd" (F(2x2, 3x3), its tile products AMX matmuls) when
# the smaller channel count is at least the first and the larger at least the second of these
# (perf_notes item 58, bf16 b16 steps in fresh processes: VGG with its 64->128 layer on Winograd 77.8
# against 84.0 ms; ResNet-18 with its 64->64 ones 242.5 against 240.2, no gain for 2.1 s more compile).
CPU_AMX_WINOGRAD_MIN_CHANNELS = (64, 128)
# CPU where oneDNN is available (fcnn/ops/onednn.py), 2-D, groups 1, float32 or bfloat16: "onednn",
# except for kernel-heavy layers: prod(kernel) * cout >= the first of these times n * prod(spatial),
# or the second at a stride > 1, keep the choice above (forward + both gradients, perf_notes item 62:
# ResNet-18's 4x4 3x3 512 f32 20.1 against col2im's 14.8 ms, its 8x8 stride-2 256->512 10.2 against
# 7.7, while VGG's 8x8 stride-1 256->512 took 20.8 against lax's 23.8).
CPU_ONEDNN_MAX_KERNEL_RATIO = (8, 4)


def parse_cpu_flags(cpuinfo_text: str) -> frozenset:
    """The feature flags of the first CPU in the text of Linux's /proc/cpuinfo (``avx2``,
    ``avx512f``, ``amx_bf16``, ...); empty if it lists none."""
    for line in cpuinfo_text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset:
    """The host CPU's feature flags (``parse_cpu_flags`` of the file ``cpuinfo``); empty where it
    cannot be read (another OS: no CPU-specific choice is made)."""
    try:
        with open(cpuinfo) as f:
            return parse_cpu_flags(f.read())
    except OSError:
        return frozenset()


def cpu_has_amx_bf16() -> bool:
    """Whether this host's CPU has AMX tiles for bfloat16 (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


def cpu_has_bf16_dot() -> bool:
    """Whether this host's CPU has bfloat16 dot-product instructions: ``avx512_bf16`` (Intel Cooper
    Lake and later, AMD Zen 4 and later) or AMX tiles (``cpu_has_amx_bf16``)."""
    return "avx512_bf16" in cpu_flags() or cpu_has_amx_bf16()


def _is_bfloat16(dtype) -> bool:
    """Whether ``dtype`` (None: float32) is bfloat16; TypeError naming ``dtype`` if it is not one."""
    if dtype is None:
        return False
    import jax.numpy as jnp

    try:
        return jnp.dtype(dtype) == jnp.bfloat16
    except TypeError:
        raise TypeError(f"dtype must be None or a dtype such as jnp.bfloat16 or 'float32', got {dtype!r}") from None


def normalize_platform(platform: Optional[str] = None) -> str:
    """"cpu", "gpu" or another backend name; None means ``jax.default_backend()``."""
    if platform is None:
        import jax

        platform = jax.default_backend()
    if not isinstance(platform, str):
        raise TypeError(f"platform must be a string such as 'cpu' or 'gpu', got {platform!r}")
    p = platform.lower()
    return "gpu" if p in ("gpu", "cuda", "rocm") else p


def select_conv_impl(platform: Optional[str], x_shape: Sequence[int], w_shape: Sequence[int], *, stride=1,
                     padding="VALID", dilation=1, groups: int = 1, layout: Optional[str] = None,
                     dtype=None) -> str:
    """The conv implementation to use for these shapes on ``platform`` (``conv``, ``conv2d``).

    Args:
      platform: "cpu", "gpu" (or "cuda"/"rocm"), another backend name, or None for the default backend.
      x_shape: input shape, channels-last (n, *spatial, cin) or channels-first (n, cin, *spatial).
      w_shape: kernel shape in ``shapes.kernel_layout(layout)`` (HWIO for NHWC, OIHW for NCHW, ...).
      stride, padding, dilation, groups, layout: as in ``conv`` (layout None: channels-last of x's
        rank; padding and padding_mode do not change the choice).
      dtype: the convolution's dtype (None: float32).

    Returns:
      "onednn" for 2-D groups-1 float32/bfloat16 convolutions on a CPU where oneDNN runs and was
      measured (``_onednn_takes``, with its exceptions); else
      "lax", "taps" or "col2im" (CPU, 2-D and 3-D, by input channels; 2-D also by stride and by
      kernel size against input size); "im2col_vjp" for wide bfloat16 2-D convolutions on a CPU
      with AMX, "winograd" for its 3x3 stride-1 ones of 64-127 and 128+ channels; 1-D convolutions
      and empty operands (a zero in either shape) get "lax".
    """
    p = normalize_platform(platform)
    bf16 = _is_bfloat16(dtype)  # checked on every platform, before the shapes
    layout = shapes.normalize_layout(layout, len(x_shape))
    kernel, cin_g, cout = shapes.kernel_parts(tuple(w_shape), layout)
    rank = shapes.layout_rank(layout)
    stride = shapes.normalize_tuple(stride, "stride", rank)
    dilation = shapes.normalize_tuple(dilation, "dilation", rank)  # checked on every platform, as stride
    # every argument as conv checks it (groups, channels, padding: the latter does not change the choice)
    shapes.conv_output_shape(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
                             layout=layout)
    if 0 in tuple(x_shape) or 0 in tuple(w_shape):  # nothing to compute: conv runs lax (conv_nd's docstring)
        return "lax"
    if p == "cpu" and groups == 1 and rank in (2, 3):  # grouped convs were not measured
        if rank == 2 and _onednn_takes(x_shape, kernel, cin_g, cout, stride, layout, dtype):
            return "onednn"
        if rank == 2 and bf16 and cpu_has_amx_bf16():
            from fcnn.ops import winograd

            kind = "1x1" if math.prod(kernel) == 1 else "stride 1" if max(stride) == 1 else "strided"
            if min(cin_g, cout) >= CPU_AMX_MIN_CHANNELS[kind]:
                return "im2col_vjp"
            smaller, larger = CPU_AMX_WINOGRAD_MIN_CHANNELS
            if (min(cin_g, cout) >= smaller and max(cin_g, cout) >= larger
                    and winograd.supports(kernel, stride, dilation)):
                return "winograd"
        if cin_g <= CPU_TAPS_MAX_CIN:
            return "taps"
        if cin_g <= (CPU_COL2IM_MAX_CIN if rank == 2 else CPU_COL2IM_MAX_CIN_3D):
            return "col2im"
        taps = math.prod(kernel)
        if rank == 2 and taps > 1:
            positions = x_shape[0] * math.prod(shapes.spatial_dims(x_shape, layout))
            if max(stride) > 1 or taps * cout >= CPU_COL2IM_MIN_KERNEL_RATIO * positions:
                return "col2im"
    return "lax"


def _onednn_takes(x_shape, kernel, cin_g, cout, stride, layout, dtype) -> bool:
    """Whether a 2-D groups-1 CPU convolution goes to "onednn" (only on the CPUs it was measured on:
    float32 with avx512f, bfloat16 with bf16 dot instructions, ``cpu_has_bf16_dot``; a bfloat16 one with one input channel keeps
    "taps"; CPU_ONEDNN_MAX_KERNEL_RATIO's kernel-heavy ones keep the XLA rules in float32, and in
    bfloat16 where AMX gives those rules a faster path)."""
    from fcnn.ops import onednn

    if not onednn.computes("float32" if dtype is None else dtype, 1):
        return False
    bf16 = _is_bfloat16(dtype)
    if not (cpu_has_bf16_dot() if bf16 else "avx512f" in cpu_flags()):  # measured there only
        return False
    if bf16 and cin_g <= CPU_TAPS_MAX_CIN:
        return False
    positions = x_shape[0] * math.prod(shapes.spatial_dims(x_shape, layout))
    heavy, heavy_strided = CPU_ONEDNN_MAX_KERNEL_RATIO
    ratio = math.prod(kernel) * cout / positions
    kernel_heavy = ratio >= heavy or (max(stride) > 1 and ratio >= heavy_strided)
    if kernel_heavy and (not bf16 or cpu_has_amx_bf16()):  # the XLA rules have a faster path there
        return False
    return onednn.available()


def select_conv_transpose_impl(platform: Optional[str], x_shape: Sequence[int], w_shape: Sequence[int], *,
                               stride=1, dilation=1, groups: int = 1, layout: Optional[str] = None) -> str:
    """The transposed-conv implementation to use on ``platform`` (``conv_transpose(impl="auto")``).

    "custom_vjp" on CPU when a stride is > 1 (groups 1), else "lax". Both run the same forward (lax's
    lhs-dilated convolution); custom_vjp's backward is a plain strided conv (dx) and a correlation (dw),
    while autodiff of lax's lhs-dilated conv is 10-16x slower on XLA:CPU (experiments/bench_decoder.py,
    docs/benchmarks.md: U-Net decoder shapes, 2-D k=2/s=2 and k=4/s=2/p=1, 1-D and 3-D k=2/s=2).
    Its non-finite pattern is lax's (tests/test_auto.py). Stride 1 has no lhs dilation (lax's gradient
    is then plain convs too), grouped and GPU transposed convs were not measured: "lax".

    Args:
      platform: as ``select_conv_impl``. x_shape: the transposed conv's input, (n, *spatial, cout)
        channels-last or (n, cout, *spatial). w_shape: its kernel in ``shapes.kernel_layout(layout)``.
      stride, dilation, groups, layout: as in ``conv_transpose`` (padding does not change the choice).
    """
    p = normalize_platform(platform)
    layout = shapes.normalize_layout(layout, len(x_shape))
    rank = shapes.layout_rank(layout)
    shapes.kernel_parts(tuple(w_shape), layout)
    stride = shapes.normalize_tuple(stride, "stride", rank)
    # every argument as conv_transpose checks it (padding 0 crops nothing, so only it is left out)
    shapes.conv_transpose_output_shape(x_shape, w_shape, stride=stride, dilation=dilation, groups=groups,
                                       layout=layout)
    if p == "cpu" and groups == 1 and max(stride) > 1:
        return "custom_vjp"
    return "lax"


def select_pool_impl(platform: Optional[str], x_shape: Sequence[int], window, *, stride=None, padding="VALID",
                     dilation=1, layout: str = "NHWC", ties: str = "first") -> str:
    """The max-pool implementation to use on ``platform``: "custom_vjp", for every shape.

    It was measured faster than "lax" where windows tile the input (GPU and CPU, docs/benchmarks.md);
    it implements every tie policy and window dilation; and where windows overlap or meet low-side
    padding "lax" differs from it on non-finite inputs (a window of -inf cells after a low pad loses
    its gradient into the padding; NaN windows route the gradient elsewhere: pool.py's table), which
    ``impl="auto"`` must never do. The arguments are validated and kept for a future measured choice.
    """
    normalize_platform(platform)
    window = shapes.normalize_pair(window, "window")
    stride = window if stride is None else shapes.normalize_pair(stride, "stride")
    dilation = shapes.normalize_pair(dilation, "dilation")
    in_hw = shapes.spatial_dims(tuple(x_shape), shapes.normalize_layout(layout))
    shapes.normalize_padding(padding, in_hw, window, stride, dilation)
    _checks.choice(ties, pool_nd.TIE_POLICIES, "ties")
    return "custom_vjp"
