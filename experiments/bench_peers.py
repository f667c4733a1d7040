"""The two benchmark networks in fcnn and in each peer framework, for experiments/benchmark.py.

Every builder has one signature and returns a ``Bench``:

    build(net, n, dtype_policy, device, k) -> Bench(step, carry, batch, block, k)
    carry = bench.step(carry, batch)     # k training steps (k > 1 only for fcnn's multi-step)
    bench.block(carry)                   # waits for the device

net: "lenet" (28x28x1) or "vgg" (32x32x3), as docs/PERFORMANCE (shared) defines them; n: batch;
dtype_policy: "f32" or "bf16" (mixed: float32 master params and loss, bf16 forward/backward;
torch through ``autocast``). SGD with momentum 0.9, softmax cross-entropy, random inputs and
labels resident on the device. Each peer is written from its documented API, the way its
tutorials write a train step (jit or filter_jit or nnx.jit; buffers donated where the API allows).
A builder raises ImportError when its framework is not installed.

Here: fcnn's builders, the JAX peers (hand-written lax, stax, flax linen and nnx, equinox, haiku)
and the registry (``BUILDERS``, ``LABELS``, ``RESNET_FRAMEWORKS``). The networks (``NETS``), ``Bench``,
``forward_macs``, ``fcnn_bench`` and the JAX helpers live in bench_common.py, the PyTorch builders in bench_torch.py;
both are re-exported here, so every name other scripts and the tests read as ``bench_peers.X``
(``NETS``, ``LR``, ``_jax_data``, ``build_torch``, ...) is unchanged.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_resnet  # noqa: E402
from bench_common import (  # noqa: E402, F401  (re-exported: other scripts and the tests read them here)
    CLASSES, LENET, LR, MOMENTUM, NETS, VGG, Bench, _ce, _flat_dim, _half, _jax_block, _jax_data, _jit_step, _sgd,
    fcnn_bench, forward_macs,
)
from bench_torch import build_torch, build_torch_compile  # noqa: E402

# ResNet-18 (CIFAR stem, experiments/bench_resnet.py) is written for these frameworks only.
RESNET_FRAMEWORKS = ("fcnn", "fcnn_lax", "fcnn_ynn_off", "fcnn_one_block", "fcnn_glibc", "fcnn_xla", "linen", "torch",
                     "torch_compile", "torch_keep")


def supports(framework: str, net: str) -> bool:
    """Whether ``BUILDERS[framework]`` builds ``net`` (every framework builds lenet and vgg)."""
    return net != "resnet18" or framework in RESNET_FRAMEWORKS


# ----------------------------------------------------------------------------- fcnn
# XLA:CPU compile option that sends convolutions back to Eigen instead of YNNPACK (docs/perf_notes.md).
YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


def build_fcnn(net, n, dtype_policy, device, k=1, impl="auto", pool_impl="auto", unroll=1, options=None):
    """fcnn's own train step (``make_train_step``); k > 1 runs k steps per dispatch.

    ``impl``/``pool_impl`` "auto": ``fcnn.ops.auto`` picks each layer's implementation at trace
    time (``fcnn_model``). ``options``: XLA compile options
    for the step (``jit(...).lower(...).compile(options)``), e.g. ``YNN_OFF``.
    """
    if net == "resnet18":
        return bench_resnet.build_fcnn(n, dtype_policy, k, impl=impl, unroll=unroll, options=options)
    import jax
    import jax.numpy as jnp

    from fcnn.optim import make_optimizer
    from fcnn.step import make_train_step

    model = fcnn_model(net, impl, pool_impl)
    spec = NETS[net]
    _, params, state = model.init(jax.random.PRNGKey(0), (n, spec["hw"], spec["hw"], spec["cin"]))
    opt = make_optimizer("momentum", LR, momentum=MOMENTUM)
    train_step = make_train_step(model, opt, steps_per_call=k, dtype_policy=dtype_policy, unroll=unroll)
    return fcnn_bench(train_step, params, state, opt.init(params), _jax_data(n, spec, k), k, options)


def build_fcnn_unroll(net, n, dtype_policy, device, k=1):
    """fcnn's k-steps-per-dispatch step with the scan fully unrolled (``make_train_step(unroll=k)``).

    With ``unroll=1`` XLA runs a device while loop whose trip test syncs with the host every
    iteration; unrolled, the k steps are one straight sequence of kernels (longer compile).
    """
    return build_fcnn(net, n, dtype_policy, device, k=k, unroll=k)


def build_fcnn_ynn_off(net, n, dtype_policy, device, k=1):
    """fcnn's step compiled with ``YNN_OFF`` (XLA:CPU's Eigen convolutions instead of YNNPACK's)."""
    return build_fcnn(net, n, dtype_policy, device, k, options=YNN_OFF)


# XLA's own default for the per-heap limit: a call's temporaries in one block (fcnn.step's
# CPU_HEAP_OPTIONS splits them; docs/perf_notes.md item 65).
ONE_BLOCK = {"xla_multiheap_size_constraint_per_heap": -1}


def build_fcnn_one_block(net, n, dtype_policy, device, k=1):
    """fcnn's step with XLA's default of one block for each call's temporaries (``ONE_BLOCK``)."""
    return build_fcnn(net, n, dtype_policy, device, k, options=ONE_BLOCK)


def build_fcnn_lax(net, n, dtype_policy, device, k=1):
    """fcnn with the default implementations everywhere (conv "lax", max-pool "lax")."""
    return build_fcnn(net, n, dtype_policy, device, k, impl="lax", pool_impl="lax")


def fcnn_model(net, impl="lax", pool_impl="lax"):
    """The benchmark network from fcnn's layers, as ``fcnn.models`` builds it (NHWC).

    ``impl``/``pool_impl``: an implementation name for every layer, or "auto"; ``impl`` may also
    be a sequence of names (or "auto"), one per conv layer. "auto" reaches the layer as it is, so
    ``fcnn.ops.auto`` chooses at trace time from the real shapes, batch included (its CPU rule for
    kernel-heavy layers weighs the kernel against batch x positions), on the backend it runs on:
    what a user of ``impl="auto"`` gets.
    """
    from fcnn import layers, models
    from fcnn.combinators import serial

    if isinstance(impl, str):
        return (models.lenet5 if net == "lenet" else models.small_vgg)(impl=impl, pool_impl=pool_impl)
    spec, per_layer = NETS[net], list(impl)
    if len(per_layer) != len(spec["convs"]):
        raise ValueError(f"impl: {net} has {len(spec['convs'])} conv layers, got {len(per_layer)} names: {impl!r}")
    parts = []
    for (f, cout, pad, pool), ci in zip(spec["convs"], per_layer):
        parts += [layers.Conv2D(cout, f, padding=pad, impl=ci), layers.Relu()]
        if pool:
            parts.append(layers.MaxPool2D(2, impl=pool_impl))
    parts.append(layers.GlobalMaxPool2D() if spec["gmax"] else layers.Flatten())
    for d in spec["dense"]:
        parts += [layers.Dense(d), layers.Relu()]
    parts.append(layers.Dense(CLASSES))
    return serial(*parts)


# ----------------------------------------------------------------------------- hand-written lax
def build_lax(net, n, dtype_policy, device, k=1):
    """The floor: lax.conv_general_dilated / reduce_window / dot on a dict of arrays."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    spec = NETS[net]
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 16))
    params, cin = [], spec["cin"]
    for f, cout, _, _ in spec["convs"]:
        w = jax.random.normal(next(keys), (f, f, cin, cout)) * (2.0 / (f * f * cin)) ** 0.5
        params.append((w, jnp.zeros(cout)))
        cin = cout
    width = _flat_dim(spec)
    for d in spec["dense"] + [CLASSES]:
        params.append((jax.random.normal(next(keys), (width, d)) * (1.0 / width) ** 0.5, jnp.zeros(d)))
        width = d

    def apply(params, x):
        nc = len(spec["convs"])
        for (w, b), (_, _, pad, pool) in zip(params[:nc], spec["convs"]):
            x = jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")) + b)
            if pool:
                x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        x = jnp.max(x, axis=(1, 2)) if spec["gmax"] else x.reshape(x.shape[0], -1)
        for i, (w, b) in enumerate(params[nc:]):
            x = x @ w + b
            x = jax.nn.relu(x) if i < len(params) - nc - 1 else x
        return x

    def loss(params, x, y):
        if dtype_policy == "bf16":
            params, x = _half(params), x.astype(jnp.bfloat16)
        return _ce(apply(params, x), y)

    tx = _sgd()
    return Bench(_jit_step(loss, tx), (params, tx.init(params)), _jax_data(n, spec), _jax_block)


# ----------------------------------------------------------------------------- stax
def build_stax(net, n, dtype_policy, device, k=1):
    """jax.example_libraries.stax + optimizers.momentum."""
    import jax
    import jax.numpy as jnp
    from jax.example_libraries import optimizers, stax

    spec = NETS[net]

    def global_max():
        return (lambda rng, s: ((s[0], s[3]), ())), (lambda params, x, **kw: jnp.max(x, axis=(1, 2)))

    parts = []
    for f, cout, pad, pool in spec["convs"]:
        parts += [stax.Conv(cout, (f, f), padding=pad), stax.Relu]
        if pool:
            parts.append(stax.MaxPool((2, 2), strides=(2, 2)))
    parts.append(global_max() if spec["gmax"] else stax.Flatten)
    for d in spec["dense"]:
        parts += [stax.Dense(d), stax.Relu]
    parts.append(stax.Dense(CLASSES))
    init_fun, apply_fun = stax.serial(*parts)
    _, params = init_fun(jax.random.PRNGKey(0), (n, spec["hw"], spec["hw"], spec["cin"]))
    opt_init, opt_update, get_params = optimizers.momentum(LR, MOMENTUM)

    def loss(params, x, y):
        if dtype_policy == "bf16":
            params, x = _half(params), x.astype(jnp.bfloat16)
        return _ce(apply_fun(params, x), y)

    def step(carry, batch):
        i, opt_state = carry
        grads = jax.grad(loss)(get_params(opt_state), *batch)
        return i + 1, opt_update(i, grads, opt_state)

    return Bench(jax.jit(step, donate_argnums=0), (jnp.zeros((), jnp.int32), opt_init(params)),
                 _jax_data(n, spec), _jax_block)


# ----------------------------------------------------------------------------- flax linen
def build_linen(net, n, dtype_policy, device, k=1):
    if net == "resnet18":
        return bench_resnet.build_linen(n, dtype_policy)
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    spec = NETS[net]
    dtype = jnp.bfloat16 if dtype_policy == "bf16" else jnp.float32

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = x.astype(dtype)
            for f, cout, pad, pool in spec["convs"]:
                x = nn.relu(nn.Conv(cout, (f, f), padding=pad, dtype=dtype)(x))
                if pool:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = jnp.max(x, axis=(1, 2)) if spec["gmax"] else x.reshape(x.shape[0], -1)
            for d in spec["dense"]:
                x = nn.relu(nn.Dense(d, dtype=dtype)(x))
            return nn.Dense(CLASSES, dtype=dtype)(x)

    model = Net()
    data = _jax_data(n, spec)
    params = model.init(jax.random.PRNGKey(0), data[0][:1])

    def loss(params, x, y):
        return _ce(model.apply(params, x), y)

    tx = _sgd()
    return Bench(_jit_step(loss, tx), (params, tx.init(params)), data, _jax_block)


# ----------------------------------------------------------------------------- flax nnx
def build_nnx(net, n, dtype_policy, device, k=1):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    spec = NETS[net]
    dtype = jnp.bfloat16 if dtype_policy == "bf16" else jnp.float32

    class Net(nnx.Module):
        def __init__(self, rngs):
            convs, cin = [], spec["cin"]
            for f, cout, pad, _ in spec["convs"]:
                convs.append(nnx.Conv(cin, cout, (f, f), padding=pad, dtype=dtype, rngs=rngs))
                cin = cout
            self.convs = nnx.List(convs) if hasattr(nnx, "List") else convs
            dense, width = [], _flat_dim(spec)
            for d in spec["dense"] + [CLASSES]:
                dense.append(nnx.Linear(width, d, dtype=dtype, rngs=rngs))
                width = d
            self.dense = nnx.List(dense) if hasattr(nnx, "List") else dense

        def __call__(self, x):
            x = x.astype(dtype)
            for conv, (_, _, _, pool) in zip(self.convs, spec["convs"]):
                x = nnx.relu(conv(x))
                if pool:
                    x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            x = jnp.max(x, axis=(1, 2)) if spec["gmax"] else x.reshape(x.shape[0], -1)
            for i, layer in enumerate(self.dense):
                x = layer(x)
                x = nnx.relu(x) if i < len(self.dense) - 1 else x
            return x

    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, _sgd(), wrt=nnx.Param)

    @nnx.jit(donate_argnums=(0, 1))
    def train_step(model, optimizer, x, y):
        grads = nnx.grad(lambda m: _ce(m(x), y))(model)
        optimizer.update(model, grads)

    def step(carry, batch):
        train_step(*carry, *batch)
        return carry

    def block(carry):
        jax.block_until_ready(nnx.state(carry[0]))

    return Bench(step, (model, optimizer), _jax_data(n, spec), block)


# ----------------------------------------------------------------------------- equinox
def build_equinox(net, n, dtype_policy, device, k=1):
    """Equinox layers are per-example and channels-first: the model is vmapped over the batch."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    spec = NETS[net]
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 16))

    class Net(eqx.Module):
        convs: list
        dense: list

        def __init__(self):
            convs, cin = [], spec["cin"]
            for f, cout, pad, _ in spec["convs"]:
                convs.append(eqx.nn.Conv2d(cin, cout, f, padding=pad, key=next(keys)))
                cin = cout
            self.convs = convs
            dense, width = [], _flat_dim(spec)
            for d in spec["dense"] + [CLASSES]:
                dense.append(eqx.nn.Linear(width, d, key=next(keys)))
                width = d
            self.dense = dense

        def __call__(self, x):  # x: (c, h, w)
            for conv, (_, _, _, pool) in zip(self.convs, spec["convs"]):
                x = jax.nn.relu(conv(x))
                if pool:
                    x = eqx.nn.MaxPool2d(2, 2)(x)
            x = jnp.max(x, axis=(1, 2)) if spec["gmax"] else jnp.transpose(x, (1, 2, 0)).reshape(-1)
            for i, layer in enumerate(self.dense):
                x = layer(x)
                x = jax.nn.relu(x) if i < len(self.dense) - 1 else x
            return x

    model = Net()
    tx = _sgd()

    def loss(model, x, y):
        if dtype_policy == "bf16":
            model = jax.tree.map(lambda a: a.astype(jnp.bfloat16) if eqx.is_inexact_array(a) else a, model)
            x = x.astype(jnp.bfloat16)
        return _ce(jax.vmap(model)(x), y)

    @eqx.filter_jit(donate="all-except-first")
    def train_step(batch, model, opt_state):
        grads = eqx.filter_grad(loss)(model, *batch)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state

    def step(carry, batch):
        return train_step(batch, *carry)

    opt_state = tx.init(eqx.filter(model, eqx.is_array))
    return Bench(step, (model, opt_state), _jax_data(n, spec, nchw=True), _jax_block)


# ----------------------------------------------------------------------------- haiku
def build_haiku(net, n, dtype_policy, device, k=1):
    import haiku as hk
    import jax
    import jax.numpy as jnp

    spec = NETS[net]

    def forward(x):
        for f, cout, pad, pool in spec["convs"]:
            x = jax.nn.relu(hk.Conv2D(cout, f, padding=pad)(x))
            if pool:
                x = hk.max_pool(x, 2, 2, "VALID")
        x = jnp.max(x, axis=(1, 2)) if spec["gmax"] else hk.Flatten()(x)
        for d in spec["dense"]:
            x = jax.nn.relu(hk.Linear(d)(x))
        return hk.Linear(CLASSES)(x)

    model = hk.without_apply_rng(hk.transform(forward))
    data = _jax_data(n, spec)
    params = model.init(jax.random.PRNGKey(0), data[0][:1])

    def loss(params, x, y):
        if dtype_policy == "bf16":
            params, x = _half(params), x.astype(jnp.bfloat16)
        return _ce(model.apply(params, x), y)

    tx = _sgd()
    return Bench(_jit_step(loss, tx), (params, tx.init(params)), data, _jax_block)


def _kept_memory(build):
    """``build`` in a process that first called ``fcnn.runtime.keep_cpu_memory()``, whose glibc
    settings fcnn's ``make_train_step`` makes on CPU: for PyTorch, whose eager ops allocate on the
    calling thread, the same settings (docs/perf_notes.md items 59, 66). A worker that builds again
    (its second dtype) calls it again, which keeps the settings."""
    def builder(*args, **kwargs):
        from fcnn.runtime import keep_cpu_memory

        keep_cpu_memory()
        return build(*args, **kwargs)

    return builder


def build_fcnn_glibc(net, n, dtype_policy, device, k=1):
    """fcnn's step with glibc's allocator defaults: ``FCNN_KEEP_CPU_MEMORY=0`` in this worker, so
    ``make_train_step`` does not call ``keep_cpu_memory()`` (perf_notes item 66)."""
    os.environ["FCNN_KEEP_CPU_MEMORY"] = "0"
    return build_fcnn(net, n, dtype_policy, device, k)


def build_fcnn_xla(net, n, dtype_policy, device, k=1):
    """fcnn's step with XLA's own convolutions only: ``FCNN_ONEDNN=0`` in this worker, so
    ``impl="auto"`` never picks "onednn" (what a user without ``fcnn[onednn]`` gets; perf_notes item 62)."""
    os.environ["FCNN_ONEDNN"] = "0"
    return build_fcnn(net, n, dtype_policy, device, k)


BUILDERS = {
    "fcnn": build_fcnn,
    "fcnn_xla": build_fcnn_xla,
    "fcnn_glibc": build_fcnn_glibc,
    "fcnn_k": build_fcnn,  # multi-step: k steps per dispatch, reported per step
    "fcnn_unroll": build_fcnn_unroll,  # k steps per dispatch, scan fully unrolled
    "fcnn_lax": build_fcnn_lax,
    "fcnn_ynn_off": build_fcnn_ynn_off,
    "fcnn_one_block": build_fcnn_one_block,
    "lax": build_lax,
    "stax": build_stax,
    "linen": build_linen,
    "nnx": build_nnx,
    "equinox": build_equinox,
    "haiku": build_haiku,
    "torch": build_torch,
    "torch_compile": build_torch_compile,
    "torch_keep": _kept_memory(build_torch),
}
LABELS = {
    "fcnn": "fcnn", "fcnn_k": "fcnn (k steps/dispatch)", "fcnn_lax": "fcnn, impl=lax", "fcnn_ynn_off": "fcnn, YNNPACK conv off",
    "fcnn_one_block": "fcnn, temporaries in one block", "fcnn_unroll": "fcnn (k steps, unrolled)",
    "fcnn_glibc": "fcnn, glibc's allocator defaults", "fcnn_xla": "fcnn, XLA's convs only (no oneDNN)",
    "lax": "hand-written lax", "stax": "stax",
    "linen": "flax linen", "nnx": "flax nnx", "equinox": "equinox", "haiku": "haiku",
    "torch": "torch eager (channels_last)", "torch_compile": "torch.compile", "torch_keep": "torch eager, keep_cpu_memory()",
}
