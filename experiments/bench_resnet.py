"""ResNet-18 with the CIFAR stem in fcnn, Flax linen and PyTorch, for experiments/benchmark.py.

The network (He et al. 2016's ResNet-18 with the 3x3 stride-1 stem and no max-pool that CIFAR
training uses, as in the torchvision-style CIFAR ports): 32x32x3 -> conv 64@3x3, BN, relu ->
4 stages of 2 basic blocks (64, 128, 256, 512 channels; stride 2 at the first block of stages
2-4, with a 1x1 stride-2 conv + BN projection shortcut) -> global average -> dense 10. Convs
have no bias (BN follows). BatchNorm in training mode, running statistics carried as state.

The builders have bench_peers' signature and return bench_common's ``Bench``; bench_peers dispatches
``net == "resnet18"`` here. fcnn's model is ``fcnn.models.resnet18(stem="cifar")`` when that
exists, else ``small_resnet(widths=(64, 128, 256, 512), blocks_per_stage=2)``, which is the
same network.
"""
from __future__ import annotations

import bench_common  # experiments/, on sys.path as for every script here

SPEC = bench_common.RESNET18


def fcnn_model(impl="auto"):
    from fcnn import models

    if hasattr(models, "resnet18"):
        return models.resnet18(stem="cifar", impl=impl)
    return models.small_resnet(widths=SPEC["widths"], blocks_per_stage=SPEC["blocks"], impl=impl)


def build_fcnn(n, dtype_policy, k=1, impl="auto", unroll=1, options=None):
    import jax

    from fcnn.optim import make_optimizer
    from fcnn.step import make_train_step

    model = fcnn_model(impl)
    _, params, state = model.init(jax.random.PRNGKey(0), (n, SPEC["hw"], SPEC["hw"], SPEC["cin"]))
    opt = make_optimizer("momentum", bench_common.LR, momentum=bench_common.MOMENTUM)
    train_step = make_train_step(model, opt, steps_per_call=k, dtype_policy=dtype_policy, unroll=unroll)
    return bench_common.fcnn_bench(train_step, params, state, opt.init(params), bench_common._jax_data(n, SPEC, k), k,
                                  options)


def build_linen(n, dtype_policy):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn


    dtype = jnp.bfloat16 if dtype_policy == "bf16" else jnp.float32
    norm = lambda: nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dtype)  # noqa: E731

    class Block(nn.Module):
        c: int
        stride: int

        @nn.compact
        def __call__(self, x):
            conv = lambda c, k, s: nn.Conv(c, (k, k), (s, s), padding="SAME", use_bias=False, dtype=dtype)  # noqa: E731
            y = nn.relu(norm()(conv(self.c, 3, self.stride)(x)))
            y = norm()(conv(self.c, 3, 1)(y))
            if self.stride != 1 or x.shape[-1] != self.c:
                x = norm()(conv(self.c, 1, self.stride)(x))
            return nn.relu(y + x)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = x.astype(dtype)
            x = nn.relu(norm()(nn.Conv(64, (3, 3), padding="SAME", use_bias=False, dtype=dtype)(x)))
            for i, c in enumerate(SPEC["widths"]):
                for b in range(SPEC["blocks"]):
                    x = Block(c, 2 if (i > 0 and b == 0) else 1)(x)
            return nn.Dense(bench_common.CLASSES, dtype=dtype)(jnp.mean(x, axis=(1, 2)))

    model = Net()
    data = bench_common._jax_data(n, SPEC)
    variables = model.init(jax.random.PRNGKey(0), data[0][:1])
    tx = bench_common._sgd()

    def loss(params, stats, x, y):
        logits, new = model.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return bench_common._ce(logits, y), new["batch_stats"]

    def step(carry, batch):
        params, stats, opt_state = carry
        grads, stats = jax.grad(loss, has_aux=True)(params, stats, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    carry = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    return bench_common.Bench(jax.jit(step, donate_argnums=0), carry, data, bench_common._jax_block)


def torch_model(norm=None, relu=None):
    """PyTorch's ResNet-18 (CIFAR stem). ``norm(c)`` and ``relu()`` build each BatchNorm and ReLU module
    (None: ``nn.BatchNorm2d`` and ``nn.ReLU``); resnet_ab.py's ablations pass ``nn.Identity`` ones."""
    from torch import nn

    norm = nn.BatchNorm2d if norm is None else norm
    relu = nn.ReLU if relu is None else relu

    class Block(nn.Module):
        def __init__(self, cin, c, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, c, 3, stride, 1, bias=False), norm(c), relu(),
                                      nn.Conv2d(c, c, 3, 1, 1, bias=False), norm(c))
            self.short = (nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), norm(c))
                          if stride != 1 or cin != c else nn.Identity())
            self.out = relu()

        def forward(self, x):
            return self.out(self.body(x) + self.short(x))

    mods, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), norm(64), relu()], 64
    for i, c in enumerate(SPEC["widths"]):
        for b in range(SPEC["blocks"]):
            mods.append(Block(cin, c, 2 if (i > 0 and b == 0) else 1))
            cin = c
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*mods)
