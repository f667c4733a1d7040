"""experiments/unet_vs_lax.py: the hand-written lax U-Net computes fcnn's unet (same loss and gradients
at the same parameters, and its momentum step equals make_train_step's), and --quick writes the
table; no timing is asserted."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import tasks
from fcnn.models import unet
from fcnn.optim import make_optimizer
from fcnn.step import make_train_step


def _setup(bench, width=4, size=8, n=2):
    model = unet(2, depth=2, width=width)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, size, size, 1)).astype("float32")
    y = rng.integers(0, 2, (n, size, size)).astype("int32")
    _, params, state = model.init(jax.random.PRNGKey(0), x.shape)
    return model, params, state, x, y


@pytest.mark.slow  # its loss/gradient equality; the lax step's equality with make_train_step runs by default
def test_lax_net_is_the_unet(experiment):
    bench = experiment("unet_vs_lax")
    model, params, state, x, y = _setup(bench)
    lp = bench.lax_params(params)
    # every fcnn parameter is used exactly once by the lax net
    assert sum(a.size for a in jax.tree.leaves(lp)) == sum(a.size for a in jax.tree.leaves(params))

    def fcnn_loss(params):
        logits, _ = model.apply(params, state, x, train=True)
        return tasks.segment(2).loss(logits, y)

    want, want_g = jax.value_and_grad(fcnn_loss)(params)
    (got, _), got_g = jax.value_and_grad(bench.lax_loss, has_aux=True)(lp, x, y)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(bench.lax_params(want_g))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # the benchmark baseline's equality with fcnn's step
def test_lax_step_equals_make_train_step(experiment):
    """One SGD-momentum step: the same new parameters and loss, and the confusion counts of the batch."""
    bench = experiment("unet_vs_lax")
    model, params, state, x, y = _setup(bench)
    opt = make_optimizer("momentum", bench.LR, momentum=bench.MOMENTUM)
    step = make_train_step(model, opt, task=tasks.segment(2), donate=False)
    new, _, _, metrics = step(params, state, opt.init(params), (x, y), jax.random.PRNGKey(1))
    lp = bench.lax_params(params)
    lp_new, mom, loss, conf = bench.make_lax_step()(lp, jax.tree.map(jnp.zeros_like, lp), x, y)
    np.testing.assert_allclose(loss, metrics["loss"], rtol=1e-5)
    assert float(np.sum(conf)) == y.size
    for a, b in zip(jax.tree.leaves(lp_new), jax.tree.leaves(bench.lax_params(new))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # the timed table; the lax net's equality with the U-Net and its step runs by default
def test_quick_table(experiment, tmp_path):
    out = tmp_path / "unet.md"
    text = experiment("unet_vs_lax").main(["--quick", "--out", str(out), "--hlo", str(tmp_path / "hlo")])
    assert out.read_text() == text and "unet_vs_lax.py --quick" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "ms/step" not in line]
    assert [r[0].strip("| ") for r in rows] == ["fcnn lax", "fcnn auto", "lax"]
    assert all(float(r[1]) > 0 for r in rows) and rows[2][5] == "1.000x"
    assert sorted(p.name for p in (tmp_path / "hlo").iterdir()) == ["fcnn_auto.hlo.txt", "fcnn_lax.hlo.txt",
                                                                    "lax.hlo.txt"]
