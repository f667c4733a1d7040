"""Where ResNet-18's CPU train step spends its time: step ablations and per-layer convolutions
(docs/perf_notes.md, item 33).

    python experiments/resnet_ab.py --part step
    python experiments/resnet_ab.py --part layers
    python experiments/resnet_ab.py --part torch_layers      # PyTorch alone in its process
    python experiments/resnet_ab.py --part torch_step        # PyTorch's step, the same ablations
    python experiments/resnet_ab.py --part layers --layer-set vgg --dtype bf16 --impls lax,im2col_vjp

Parts:

- ``step``: ``make_train_step`` over ``models.resnet18(stem="cifar", impl="auto")`` at batch 16,
  interleaved (``_timing.side_by_side``): ``full``; ``no_bn`` (every BatchNorm the identity);
  ``no_bn_relu`` (BatchNorm and ReLU the identity: the convolutions, residual adds, pooling, dense
  layer and optimizer); ``no_donate`` (the full step with ``donate=False``); ``jax_relu`` (ReLU as
  ``jax.nn.relu`` instead of fcnn's select, docs/perf_notes.md item 40).
- ``layers``: forward + both gradients (at one random cotangent) of each distinct ResNet-18 conv
  layer (batch 16; ``--layer-set vgg``: the VGG net's four), jitted
  with ``fcnn.step.compiler_options()``, per ``--impls`` (interleaved per layer); ``--dtype bf16``
  casts x, w and the cotangent to bfloat16 (docs/perf_notes.md item 57).
- ``torch_step``: PyTorch's ResNet-18 step as benchmark.py times it (bench_torch, channels_last,
  SGD momentum) with the ablations ``full``, ``no_bn`` and ``no_bn_relu`` (``nn.Identity`` modules for
  BatchNorm / ReLU), interleaved, in its own process (docs/perf_notes.md item 61).
  Both step parts train at ``ABLATION_LR`` (1e-9), not the benchmarks' 0.01.
- ``torch_layers``: the same layers (and cotangent values) in PyTorch eager (channels_last, ``torch.set_num_threads``
  = the cores), run in its own process: next to XLA:CPU's thread pool PyTorch ran 20x slower
  (experiments/peer_ab.py).

``--keep`` calls ``fcnn.runtime.keep_cpu_memory()`` first (both frameworks: docs/perf_notes.md item 59).
``--quick`` runs a tiny ResNet (widths 8, 16) at batch 2 for the tests. Prints, and with
``--out`` writes, a markdown table with the command and the date.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import carrying, side_by_side  # noqa: E402
from step_ab import add_out, check_out, publish  # noqa: E402

# (name, spatial size, cin, cout, kernel, stride): every distinct conv of ResNet-18's CIFAR stages
LAYERS = [("s1 3x3 64", 32, 64, 64, 3, 1), ("s2 3x3 64->128", 32, 64, 128, 3, 2), ("s2 1x1 64->128", 32, 64, 128, 1, 2),
          ("s1 3x3 128", 16, 128, 128, 3, 1), ("s2 3x3 128->256", 16, 128, 256, 3, 2),
          ("s1 3x3 256", 8, 256, 256, 3, 1), ("s2 3x3 256->512", 8, 256, 512, 3, 2), ("s1 3x3 512", 4, 512, 512, 3, 1)]
# the VGG net's four convs (experiments/bench_common.py), for --layer-set vgg
VGG_LAYERS = [("vgg 3x3 3->64", 32, 3, 64, 3, 1), ("vgg 3x3 64->128", 32, 64, 128, 3, 1),
              ("vgg 3x3 128->256", 16, 128, 256, 3, 1), ("vgg 3x3 256->512", 8, 256, 512, 3, 1)]
QUICK_LAYERS = [("s1 3x3 8", 4, 8, 8, 3, 1)]
STEP_VARIANTS = ("full", "no_bn", "no_bn_relu", "no_donate", "jax_relu")
TORCH_STEP_VARIANTS = ("full", "no_bn", "no_bn_relu")
# Both step parts train at this learning rate (fcnn refuses 0), so every variant in either framework
# times the same finite network: at the benchmarks' 0.01 the variants without BatchNorm reach NaN by
# the third step, where fcnn's oneDNN guard then sends every conv to lax and PyTorch times NaN arithmetic.
ABLATION_LR = 1e-9


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="step", choices=["step", "layers", "torch_layers", "torch_step"])
    p.add_argument("--variants", default=None,
                   help=f"for --part step ({','.join(STEP_VARIANTS)}) and torch_step ({','.join(TORCH_STEP_VARIANTS)})")
    p.add_argument("--keep", action="store_true", help="fcnn.runtime.keep_cpu_memory() first")
    p.add_argument("--impls", default="lax,col2im", help="for --part layers: fcnn conv implementations")
    p.add_argument("--layer-set", default="resnet18", choices=["resnet18", "vgg"], help="for the layer parts")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"], help="the layer parts' x, w and dZ; the step parts' dtype policy (fcnn's dtype_policy, PyTorch's autocast)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--target-s", type=float, default=None, help="seconds per repeat (default 1.0 step, 0.2 layers)")
    p.add_argument("--quick", action="store_true", help="a tiny ResNet and layer, 2 repeats (for tests)")
    add_out(p)
    return p.parse_args(argv)


def _model(variant, quick):
    """ResNet-18 (CIFAR stem, impl="auto") with BatchNorm and/or ReLU replaced as ``variant`` says."""
    from fcnn import models
    from fcnn.combinators import identity

    def gone(**_):  # takes BatchNorm's keyword arguments
        return identity()

    with contextlib.ExitStack() as stack:
        if variant in ("no_bn", "no_bn_relu"):
            stack.enter_context(mock.patch.object(models, "BatchNorm", gone))
        if variant == "no_bn_relu":
            stack.enter_context(mock.patch.object(models, "Relu", gone))
        if variant == "jax_relu":
            import jax

            from fcnn.activations import Activation
            stack.enter_context(mock.patch.object(models, "Relu", lambda: Activation(jax.nn.relu, name="Relu")))
        if quick:
            return models.small_resnet(widths=(8, 16), impl="auto")
        return models.resnet18(stem="cifar", impl="auto")


def _variants(args, known):
    """The --variants names (default: every one of ``known``), refused by name if unknown."""
    names = list(known) if args.variants is None else [v for v in args.variants.split(",") if v]
    bad = [v for v in names if v not in known]
    if bad:
        raise SystemExit(f"--variants: unknown {bad}; known: {', '.join(known)}")
    return names


def _step_rows(names, timed):
    base = timed[names[0]].median_s
    rows = [f"| variant | median ms/step | min | vs {names[0]} |", "|---|---|---|---|"]
    return rows + [f"| {v} | {r.median_s * 1e3:.1f} | {r.best_s * 1e3:.1f} | {r.median_s / base:.2f}x |"
                   for v, r in timed.items()]


def step_part(args):
    import jax
    import jax.numpy as jnp

    from fcnn.optim import make_optimizer
    from fcnn.step import make_train_step

    names = _variants(args, STEP_VARIANTS)
    x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, 32, 32, 3))
    batch, key = (x, jnp.arange(args.batch) % 10), jax.random.PRNGKey(0)
    calls = {}
    for v in names:
        model = _model(v, args.quick)
        _, params, state = model.init(jax.random.PRNGKey(0), x.shape)
        opt = make_optimizer("momentum", ABLATION_LR, momentum=0.9)
        step = make_train_step(model, opt, donate=v != "no_donate", dtype_policy=args.dtype)
        calls[v] = carrying(lambda carry, step=step: step(*carry, batch, key)[:3], (params, state, opt.init(params)))
    t = side_by_side(calls, repeats=args.repeats, target_s=args.target_s, verbose=True)
    return f"ResNet-18 (CIFAR stem) b{args.batch} {args.dtype} train step, interleaved", _step_rows(names, t), t


def _torch_model(variant):
    """bench_resnet's PyTorch ResNet-18 with BatchNorm and/or ReLU as ``nn.Identity``, as ``variant`` says."""
    import bench_resnet
    from torch import nn

    norm = (lambda c: nn.Identity()) if variant in ("no_bn", "no_bn_relu") else None
    return bench_resnet.torch_model(norm=norm, relu=nn.Identity if variant == "no_bn_relu" else None)


def torch_step_part(args):
    names = _variants(args, TORCH_STEP_VARIANTS)  # refused before torch is needed
    import bench_torch
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    calls = {}
    for v in names:
        bench = bench_torch._torch_build("resnet18", args.batch, args.dtype, "cpu", False, model=_torch_model(v),
                                         lr=ABLATION_LR)
        calls[v] = lambda bench=bench: bench.step(None, bench.batch)
    t = side_by_side(calls, repeats=args.repeats, target_s=args.target_s, block=lambda out: None, verbose=True)
    return (f"ResNet-18 (CIFAR stem) b{args.batch} {args.dtype} train step in PyTorch {torch.__version__} eager "
            f"(channels_last), interleaved"), _step_rows(names, t), t


def _layer_rows(timed, impls):
    rows = ["| layer | " + " | ".join(f"{i} ms" for i in impls) + " |", "|---|" + "---|" * len(impls)]
    rows += [f"| {name} | " + " | ".join(f"{ts[i].median_s * 1e3:.2f}" for i in impls) + " |" for name, ts in timed.items()]
    return rows


def _pad(k):
    """Both layer parts' padding on each side: 1 for k=3, 0 for k=1 (the layers ResNet-18 has)."""
    return k // 2


def _cotangent(batch, hw, cout, k, s):
    """The output gradient both layer parts take, NHWC float32, the same values in both: random,
    as a train step's is (XLA simplifies a constant one, a broadcast, which once made the fcnn rows
    25-45% faster than in any step; docs/perf_notes.md item 55)."""
    import numpy as np

    out = (hw + 2 * _pad(k) - k) // s + 1
    return np.random.default_rng(2).standard_normal((batch, out, out, cout), dtype=np.float32) * 0.01


def _layers(args):
    """The (name, spatial size, cin, cout, kernel, stride) rows the layer parts time."""
    return QUICK_LAYERS if args.quick else VGG_LAYERS if args.layer_set == "vgg" else LAYERS


def _layers_title(args, who):
    net = "VGG" if args.layer_set == "vgg" and not args.quick else "ResNet-18"
    return f"{net} conv layers{who}, forward + both gradients, batch {args.batch}, {args.dtype}"


def layers_part(args):
    import jax

    from fcnn.ops import conv2d
    from fcnn.step import compiler_options

    impls = [i for i in args.impls.split(",") if i]
    dtype = jax.numpy.bfloat16 if args.dtype == "bf16" else jax.numpy.float32
    timed = {}
    for name, hw, cin, cout, k, s in _layers(args):
        x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, hw, hw, cin)).astype(dtype)
        w = (jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout)) * 0.05).astype(dtype)
        pad = _pad(k)
        dz = jax.numpy.asarray(_cotangent(args.batch, hw, cout, k, s), dtype)
        calls = {}
        for impl in impls:
            def fwd_bwd(x, w, dz, impl=impl):
                z, vjp = jax.vjp(lambda x, w: conv2d(x, w, stride=s, padding=pad, impl=impl), x, w)
                return z, vjp(dz)
            f = jax.jit(fwd_bwd).lower(x, w, dz).compile(compiler_options())
            calls[impl] = lambda f=f, dz=dz: f(x, w, dz)
        timed[name] = side_by_side(calls, repeats=args.repeats, target_s=args.target_s, verbose=True)
    return _layers_title(args, "") + ", interleaved", _layer_rows(timed, impls), timed


def torch_layers_part(args):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    timed = {}
    for name, hw, cin, cout, k, s in _layers(args):
        x = torch.randn(args.batch, cin, hw, hw).to(dtype, memory_format=torch.channels_last).requires_grad_()
        conv = torch.nn.Conv2d(cin, cout, k, stride=s, padding=_pad(k), bias=False)
        conv = conv.to(dtype, memory_format=torch.channels_last)
        # NCHW view of the NHWC values: channels_last
        dz = torch.from_numpy(_cotangent(args.batch, hw, cout, k, s)).permute(0, 3, 1, 2).to(dtype)

        def call():
            z = conv(x)
            z.backward(dz)

        timed[name] = {"torch": side_by_side({"torch": call}, repeats=args.repeats, target_s=args.target_s,
                                             block=lambda out: None, verbose=True)["torch"]}
    return _layers_title(args, f" in PyTorch {torch.__version__} eager (channels_last)"), \
        _layer_rows(timed, ["torch"]), timed


def main(argv=None):
    args = parse_args(argv)
    if args.part not in ("step", "torch_step") and args.variants is not None:
        raise SystemExit("--variants: for --part step or torch_step only")
    if not args.part.startswith("torch"):
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    check_out(args)
    if args.part == "layers":
        from fcnn import ops

        bad = [i for i in args.impls.split(",") if i not in ops.CONV_IMPLS]
        if bad:
            raise SystemExit(f"--impls: unknown {bad}; known: {', '.join(ops.CONV_IMPLS)}")
    if args.keep:
        from fcnn.runtime import keep_cpu_memory

        keep_cpu_memory()
    if args.quick:
        args.batch, args.repeats = 2, 2
        args.target_s = 0.01
    if args.target_s is None:
        args.target_s = 1.0 if args.part.endswith("step") else 0.2
    parts = {"step": step_part, "layers": layers_part, "torch_layers": torch_layers_part, "torch_step": torch_step_part}
    what, rows, timed = parts[args.part](args)
    publish("resnet_ab.py", argv, what, rows, args.out)
    return timed


if __name__ == "__main__":
    main()
