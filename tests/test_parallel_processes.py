"""fcnn.parallel across two processes: jax.distributed with each process feeding its own rows equals one
process with all four devices (a subprocess each; XLA_FLAGS must ask for the devices before JAX starts)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from _children import ROOT, child_env, child_result

_MULTI_PROCESS = textwrap.dedent(r"""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from fcnn import parallel
    from fcnn.combinators import serial
    from fcnn.layers import BatchNorm, Conv2D, Dense, Flatten, Relu

    mode = sys.argv[1]
    if mode == "worker":
        parallel.initialize_distributed(sys.argv[2], 2, int(sys.argv[3]), initialization_timeout=60)
    assert jax.device_count() == 4, jax.devices()
    model = serial(Conv2D(4, 3, padding="SAME"), BatchNorm(), Relu(), Flatten(), Dense(5))
    _, params, state = model.init(jax.random.PRNGKey(0), (1, 6, 6, 2))
    opt = optax.sgd(0.1, momentum=0.9)
    opt_state = opt.init(params)
    mesh = parallel.make_mesh()
    step = parallel.make_sharded_train_step(model, opt, mesh)
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rng = np.random.default_rng(0)
    N = 8
    for t in range(3):
        x = (rng.normal(size=(N, 6, 6, 2)) + np.linspace(-2, 2, N)[:, None, None, None]).astype(np.float32)
        y = rng.integers(0, 5, N).astype(np.int32)
        if mode == "worker":  # each process feeds only its own rows
            lo, hi = jax.process_index() * N // 2, (jax.process_index() + 1) * N // 2
            x = jax.make_array_from_process_local_data(data, x[lo:hi], (N, 6, 6, 2))
            y = jax.make_array_from_process_local_data(data, y[lo:hi], (N,))
        params, state, opt_state, m = step(params, state, opt_state, (x, y), jax.random.PRNGKey(1))
    flat = np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves((params, state))])
    print("RESULT " + json.dumps({"process": jax.process_index(), "flat": flat.astype(float).tolist(),
                                  "loss": float(m["loss"])}), flush=True)
    if mode == "worker":
        jax.distributed.shutdown()
""")


@pytest.mark.slow  # two processes plus a reference; the in-process modes run by default
def test_two_processes_equal_one_process_with_four_devices():
    one = subprocess.run([sys.executable, "-c", _MULTI_PROCESS, "single"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=child_env(4))
    assert one.returncode == 0, one.stderr[-4000:]
    coordinator = f"127.0.0.1:{free_port()}"
    env2 = child_env(2)
    procs = [subprocess.Popen([sys.executable, "-c", _MULTI_PROCESS, "worker", coordinator, str(i)], cwd=ROOT,
                              env=env2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=150)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    for rc, out, err in outs:
        assert rc == 0, err[-4000:]
    ref = child_result(one.stdout)
    for i, (_, out, _) in enumerate(outs):
        r = child_result(out)
        assert r["process"] == i
        a, b = np.array(r["flat"]), np.array(ref["flat"])
        assert np.linalg.norm(a - b) / np.linalg.norm(b) <= 1e-6
        np.testing.assert_allclose(r["loss"], ref["loss"], rtol=1e-6)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
