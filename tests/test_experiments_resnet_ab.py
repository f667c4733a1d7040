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


def test_the_vgg_layer_set_is_the_benchmarked_vgg_net(experiment):
    """--layer-set vgg times the convs of bench_common.VGG: their sizes, channels and kernels, walked
    through its pools by hand (SAME convs keep the size; a pool after the conv halves it)."""
    bench_common = experiment("bench_common")
    ab = experiment("resnet_ab")
    hw, cin, want = bench_common.VGG["hw"], bench_common.VGG["cin"], []
    for f, cout, pad, pool in bench_common.VGG["convs"]:
        assert pad == "SAME"
        want.append((hw, cin, cout, f, 1))
        hw, cin = (hw // 2 if pool else hw), cout
    assert [row[1:] for row in ab.VGG_LAYERS] == want
    assert [row[1:] for row in ab._layers(ab.parse_args(["--layer-set", "vgg"]))] == want


def test_quick_bf16_layers_take_bfloat16(experiment, monkeypatch):
    """--dtype bf16 gives the timed conv bfloat16 x, w and cotangent (the layer part's title says so)."""
    import fcnn.ops

    ab = experiment("resnet_ab")
    seen = []
    real = fcnn.ops.conv2d
    monkeypatch.setattr(fcnn.ops, "conv2d", lambda x, w, **kw: seen.append((x.dtype, w.dtype)) or real(x, w, **kw))
    what, rows, timed = ab.layers_part(ab.parse_args(["--part", "layers", "--quick", "--dtype", "bf16",
                                                      "--impls", "im2col_vjp", "--repeats", "1", "--target-s", "0.01"]))
    assert what.startswith("ResNet-18 conv layers, forward + both gradients, batch 16, bf16")
    bf16 = jax.numpy.dtype(jax.numpy.bfloat16)
    assert set(seen) == {(bf16, bf16)} and list(timed) == ["s1 3x3 8"]


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


def test_the_torch_ablations_lose_exactly_what_they_name(experiment):
    """PyTorch's ResNet-18 (CIFAR stem) has 20 BatchNorms (stem, two per block, three projections) and 17
    ReLUs (stem, two per block); the ablations keep its 20 convs (as many as BatchNorms) and drop those modules only."""
    torch = pytest.importorskip("torch")
    ab = experiment("resnet_ab")

    def count(model, kind):
        return sum(isinstance(m, kind) for m in model.modules())

    nn = torch.nn
    got = {v: ab._torch_model(v) for v in ab.TORCH_STEP_VARIANTS}
    assert [count(got[v], nn.Conv2d) for v in got] == [20, 20, 20]
    assert [count(got[v], nn.BatchNorm2d) for v in got] == [20, 0, 0]
    assert [count(got[v], nn.ReLU) for v in got] == [17, 17, 0]
    # without BatchNorm and ReLU the net is linear in its input (up to the dense layer's bias)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = got["no_bn_relu"]
        assert torch.allclose(f(2 * x) - f(torch.zeros_like(x)), 2 * (f(x) - f(torch.zeros_like(x))), atol=1e-4)


def test_torch_step_variants_and_keep_are_refused_where_they_do_not_apply(experiment):
    ab = experiment("resnet_ab")
    with pytest.raises(SystemExit, match=r"--variants: unknown \['no_donate'\]; known: full, no_bn, no_bn_relu"):
        ab.main(["--part", "torch_step", "--quick", "--variants", "full,no_donate"])
    with pytest.raises(SystemExit, match=r"--variants: for --part step or torch_step only"):
        ab.main(["--part", "layers", "--quick", "--variants", "full"])


@pytest.mark.slow  # three PyTorch ResNet-18 steps at batch 2
def test_quick_torch_step_writes_its_table(experiment, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "torch_step.md"
    timed = experiment("resnet_ab").main(["--part", "torch_step", "--quick", "--out", str(out)])
    assert list(timed) == ["full", "no_bn", "no_bn_relu"]
    text = out.read_text()
    assert "`python experiments/resnet_ab.py --part torch_step --quick --out " in text and "| no_bn_relu | " in text


def test_both_step_parts_train_at_the_ablation_learning_rate(experiment, monkeypatch):
    """The PyTorch step moves each parameter by ``lr * grad`` on its first SGD-momentum step (the
    momentum buffer starts as the gradient), with the ``lr`` it is given; torch_step hands it
    ABLATION_LR, as step hands fcnn's optimizer (a 0.01 step sent the no-BatchNorm variants to NaN)."""
    torch = pytest.importorskip("torch")
    ab = experiment("resnet_ab")
    bench_torch = experiment("bench_torch")
    model = ab._torch_model("no_bn")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bench = bench_torch._torch_build("resnet18", 2, "f32", "cpu", False, model=model, lr=0.5)
    x, y = bench.batch
    ref = ab._torch_model("no_bn").to(memory_format=torch.channels_last)
    ref.load_state_dict(before)
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    bench.step(None, bench.batch)
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] - 0.5 * grads[name].grad, rtol=1e-4, atol=1e-5)
    seen = []
    monkeypatch.setattr(bench_torch, "_torch_build", lambda *a, lr, **kw: seen.append(lr) or bench)
    monkeypatch.setattr(ab, "side_by_side", lambda calls, **kw: seen.append(sorted(calls)) or {})
    monkeypatch.setattr(ab, "_step_rows", lambda names, timed: [])
    ab.torch_step_part(ab.parse_args(["--part", "torch_step", "--quick", "--variants", "no_bn"]))
    assert seen == [ab.ABLATION_LR, ["no_bn"]]
