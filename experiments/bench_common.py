"""What every benchmark builder shares: the networks, the ``Bench`` record and the JAX helpers.

bench_peers.py (fcnn and the JAX peers, the ``BUILDERS`` registry) and bench_torch.py (the PyTorch
builders) both build on this module, so neither imports the other's builders' file for its helpers;
bench_resnet.py (ResNet-18's builders) builds on it too, and it imports none of them: the bottom of the
benchmark scripts. bench_peers re-exports every name here that other scripts read through it
(``bench_peers.NETS``, ``LR``, ``MOMENTUM``, ``Bench``, ``fcnn_bench``, ``forward_macs``, ``_jax_data``, ...).

NETS: "lenet" (28x28x1) and "vgg" (32x32x3), as docs/PERFORMANCE (shared) defines them, and
"resnet18" (its spec and MAC count here, its builders in bench_resnet.py). SGD with momentum 0.9
(``LR``, ``MOMENTUM``), softmax cross-entropy, random inputs and labels resident on the device.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

LR = 0.01
MOMENTUM = 0.9
CLASSES = 10
# (kernel, cout, padding, pool after) per conv layer, then dense widths.
LENET = dict(hw=28, cin=1, convs=[(5, 6, "SAME", True), (5, 16, "VALID", True)], dense=[120, 84], gmax=False)
VGG = dict(hw=32, cin=3, convs=[(3, 64, "SAME", False), (3, 128, "SAME", True), (3, 256, "SAME", True),
                                (3, 512, "SAME", True)], dense=[], gmax=True)
# ResNet-18 with the CIFAR stem (experiments/bench_resnet.py): stage widths and basic blocks per stage.
RESNET18 = dict(hw=32, cin=3, widths=(64, 128, 256, 512), blocks=2)
NETS = {"lenet": LENET, "vgg": VGG, "resnet18": RESNET18}


class Bench(NamedTuple):
    step: Callable
    carry: Any
    batch: Any
    block: Callable
    k: int = 1


def forward_macs(net: str) -> int:
    """Multiply-adds of one image's forward pass (convs and dense layers)."""
    if net == "resnet18":
        return _resnet_macs(RESNET18)
    spec = NETS[net]
    hw, cin, macs = spec["hw"], spec["cin"], 0
    for f, cout, pad, pool in spec["convs"]:
        hw = hw if pad == "SAME" else hw - f + 1
        macs += hw * hw * cout * f * f * cin
        cin = cout
        hw = hw // 2 if pool else hw
    width = cin if spec["gmax"] else hw * hw * cin
    for d in spec["dense"] + [CLASSES]:
        macs += width * d
        width = d
    return macs


def _resnet_macs(spec) -> int:
    """ResNet-18's multiply-adds per image: the stem, every block's convs and 1x1 projections, the dense layer."""
    hw, cin = spec["hw"], spec["cin"]
    macs = hw * hw * 64 * 9 * cin
    cin = 64
    for i, c in enumerate(spec["widths"]):
        for b in range(spec["blocks"]):
            stride = 2 if (i > 0 and b == 0) else 1
            hw //= stride
            macs += hw * hw * c * 9 * cin + hw * hw * c * 9 * c
            if stride != 1 or c != cin:
                macs += hw * hw * c * cin
            cin = c
    return macs + cin * 10


def _flat_dim(spec) -> int:
    hw, cin = spec["hw"], spec["cin"]
    for f, cout, pad, pool in spec["convs"]:
        hw = hw if pad == "SAME" else hw - f + 1
        hw, cin = (hw // 2 if pool else hw), cout
    return cin if spec["gmax"] else hw * hw * cin


# ----------------------------------------------------------------------------- JAX helpers
def _jax_data(n, spec, k=1, nchw=False):
    import jax
    import jax.numpy as jnp

    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    lead = (k, n) if k > 1 else (n,)
    shape = (spec["cin"], spec["hw"], spec["hw"]) if nchw else (spec["hw"], spec["hw"], spec["cin"])
    x = jax.random.normal(kx, lead + shape, jnp.float32)
    y = jax.random.randint(ky, lead, 0, CLASSES)
    return jax.block_until_ready((x, y))


def _jax_block(carry):
    import jax

    jax.block_until_ready(carry)


def _ce(logits, y):
    import jax.numpy as jnp
    import optax

    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y))


def _half(tree):
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _sgd():
    import optax

    return optax.sgd(LR, momentum=MOMENTUM)


def _jit_step(loss_fn, tx):
    """The standard optax step over a params pytree, params and opt_state donated."""
    import jax
    import optax

    def step(carry, batch):
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=0)


def fcnn_bench(train_step, params, state, opt_state, batch, k=1, options=None):
    """A ``Bench`` of a ``make_train_step`` step; ``options`` compiles it ahead of time with them.

    oneDNN's handlers (``impl="onednn"``, which auto picks on CPU) are loaded here, in the build: on a
    machine where they are not cached yet that is their one-time C++ build (~3 s), which would
    otherwise land in the first step's compile time."""
    import jax
    import jax.numpy as jnp

    from fcnn.ops import onednn

    onednn.available()
    key = jax.random.PRNGKey(1)
    keys = jnp.asarray(jax.random.split(key, k) if k > 1 else key)
    if options is not None:
        train_step = train_step.lower(params, state, opt_state, batch, keys).compile(options)

    def step(carry, batch):
        return train_step(*carry, batch, keys)[:3]

    return Bench(step, (params, state, opt_state), batch, _jax_block, k)
