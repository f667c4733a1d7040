"""The PyTorch peers of bench_peers.py: eager and ``torch.compile``, channels_last, autocast bf16.

Moved out of bench_peers.py (which still lists them in ``BUILDERS`` under "torch" and
"torch_compile" and re-exports ``build_torch`` and ``build_torch_compile``); the builders have its
signature and return bench_common's ``Bench``. lenet and vgg are ``_torch_convnet``'s
``nn.Sequential``, resnet18 is ``bench_resnet.torch_model``. torch is imported inside the builders,
so this module loads without it (a builder raises ImportError then).
"""
from __future__ import annotations

import bench_resnet  # experiments/, on sys.path as for every script here
from bench_common import CLASSES, LR, MOMENTUM, NETS, Bench, _flat_dim


def _torch_build(net, n, dtype_policy, device, compiled, model=None, lr=LR):
    """The PyTorch step of ``net`` (``model``: this module instead of the net's own, same input; ``lr``:
    SGD's learning rate, the benchmarks' ``LR`` unless an ablation needs another)."""
    import torch
    from torch import nn

    spec = NETS[net]
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # as JAX's default float32 dot on GPU
        torch.backends.cudnn.allow_tf32 = True
    if model is None:
        model = bench_resnet.torch_model() if net == "resnet18" else _torch_convnet(spec)
    model = model.to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    fwd = torch.compile(model) if compiled else model
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(n, spec["cin"], spec["hw"], spec["hw"], device=dev, generator=g).to(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (n,), device=dev, generator=g)
    bf16 = dtype_policy == "bf16"

    def step(carry, batch):
        xb, yb = batch
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = fwd(xb)
        loss = nn.functional.cross_entropy(logits.float(), yb)
        loss.backward()
        opt.step()
        return carry

    def block(carry):
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return Bench(step, None, (x, y), block)


def _torch_convnet(spec):
    from torch import nn

    mods, cin = [], spec["cin"]
    for f, cout, pad, pool in spec["convs"]:
        mods += [nn.Conv2d(cin, cout, f, padding=(f // 2 if pad == "SAME" else 0)), nn.ReLU()]
        mods += [nn.MaxPool2d(2)] if pool else []
        cin = cout
    mods += [nn.AdaptiveMaxPool2d(1), nn.Flatten()] if spec["gmax"] else [nn.Flatten()]
    width = _flat_dim(spec)
    for d in spec["dense"]:
        mods += [nn.Linear(width, d), nn.ReLU()]
        width = d
    mods.append(nn.Linear(width, CLASSES))
    return nn.Sequential(*mods)


def build_torch(net, n, dtype_policy, device, k=1):
    """PyTorch eager, channels_last, autocast bf16."""
    return _torch_build(net, n, dtype_policy, device, compiled=False)


def build_torch_compile(net, n, dtype_policy, device, k=1):
    """torch.compile of the model (default mode); optimizer step eager (foreach)."""
    return _torch_build(net, n, dtype_policy, device, compiled=True)
