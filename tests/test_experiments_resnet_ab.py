"""experiments/resnet_ab.py --quick: a step variant and the per-layer part run on a tiny ResNet and write
their tables with the command; the ablated models really lose what they name; no timing is asserted."""
import jax
import pytest


@pytest.mark.slow  # a ResNet step and two conv programs to compile (5 s); the default suite is at its budget
def test_quick_step_and_layers_write_their_tables(experiment, tmp_path):
    ab = experiment("resnet_ab")
    out = tmp_path / "step.md"
    timed = ab.main(["--part", "step", "--quick", "--variants", "no_donate", "--out", str(out)])  # one compile
    assert list(timed) == ["no_donate"]
    text = out.read_text()
    assert "`python experiments/resnet_ab.py --part step --quick --variants no_donate --out " in text
    assert "| no_donate | " in text
    layers = ab.main(["--part", "layers", "--quick", "--impls", "lax,col2im"])
    assert list(layers) == ["s1 3x3 8"] and set(layers["s1 3x3 8"]) == {"lax", "col2im"}


def test_the_ablated_models_lose_exactly_what_they_name(experiment):
    """BatchNorm is the only rsqrt (and the only state); fcnn's relu, a select on x <= 0, is the only `le`."""
    ab = experiment("resnet_ab")
    x = jax.numpy.ones((2, 32, 32, 3))
    prims, states = {}, {}
    for v in ("full", "no_bn", "no_bn_relu", "jax_relu"):
        model = ab._model(v, True)
        _, p, s = model.init(jax.random.PRNGKey(0), x.shape)
        prims[v] = {e.primitive.name for e in jax.make_jaxpr(lambda x: model.apply(p, s, x)[0])(x).jaxpr.eqns}
        states[v] = len(jax.tree.leaves(s))
    assert {"rsqrt", "le", "conv_general_dilated"} <= prims["full"] and states["full"] > 0
    assert "rsqrt" not in prims["no_bn"] and "le" in prims["no_bn"] and states["no_bn"] == 0
    assert "le" not in prims["no_bn_relu"] and "conv_general_dilated" in prims["no_bn_relu"]
    assert "le" not in prims["jax_relu"] and "custom_jvp_call" in prims["jax_relu"] and "rsqrt" in prims["jax_relu"]


def test_an_unknown_step_variant_is_refused(experiment):
    with pytest.raises(SystemExit, match=r"--variants: unknown \['fast'\]; known: full, no_bn, no_bn_relu, no_donate, jax_relu"):
        experiment("resnet_ab").main(["--part", "step", "--quick", "--variants", "full,fast"])
