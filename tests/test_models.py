"""Reference models: shapes, parameter counts, option propagation, registry.

Shapes are checked by tracing (``jax.eval_shape``); what runs is jitted (at the suite's
fast-compile XLA options, tests/conftest.py: these tests spend their time compiling), and each
model's compiled forward and gradient is cached so the lax baseline is compiled once for every
comparison.
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import models
from fcnn.summary import count_params

KEY = jax.random.PRNGKey(0)


def abstract_init(model, in_shape):
    """``model.init`` traced, not run: (out_shape, params, state) of ShapeDtypeStructs (fast on CPU)."""
    box = {}

    def init(key):
        box["out"], params, state = model.init(key, in_shape)
        return params, state

    params, state = jax.eval_shape(init, KEY)
    return box["out"], params, state


@pytest.fixture(scope="module")
def lenet_small():
    """LeNet-5 params for a 12x12 input (it takes any size; flatten is then 1x1x16), float64.

    The shapes come from ``init`` (traced), the values from NumPy (N(0, 0.3^2)): these tests
    compare implementations on the same params, and drawing ten kernels with jax.random would
    compile ten programs.
    """
    x = jnp.asarray(np.random.RandomState(3).randn(2, 12, 12, 1), jnp.float64)
    _, params, state = abstract_init(models.lenet5(), x.shape)
    rs = np.random.RandomState(4)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(rs.randn(*a.shape) * 0.3, jnp.float64), params)
    return x, params, state


@functools.lru_cache(maxsize=None)
def _lenet_forward_and_grad(impl):
    """Compiled ``(params, state, x) -> (logits, d sum(logits^2) / d params)`` of ``lenet5(impl=impl)``."""
    model = models.lenet5(impl=impl)

    def loss(p, state, x):
        return jnp.sum(model.apply(p, state, x)[0] ** 2)

    return jax.jit(lambda p, state, x: (model.apply(p, state, x)[0], jax.grad(loss)(p, state, x)))


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_init_shape_equals_apply_shape(name):
    model = models.get_model(name, num_classes=7)
    in_shape = models.input_shape(name, batch=2)
    out_shape, params, state = abstract_init(model, in_shape)
    # the exact shape and dtype apply produces, traced without running (values: the other tests)
    y = jax.eval_shape(model.apply, params, state, jax.ShapeDtypeStruct(in_shape, jnp.float32))[0]
    want = in_shape[:-1] + (7,) if name == "unet" else (2, 7)  # unet: per-pixel logits
    assert out_shape == y.shape == want and y.dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_takes_an_empty_batch_in_eval(name):
    """A batch of 0 gives 0 outputs of the usual shape (before, Flatten's and the global max pool's
    reshape to (0, -1) and auto's conv cost rule raised; traced only)."""
    model = models.get_model(name, num_classes=7)
    in_shape = models.input_shape(name, batch=2)
    _, params, state = abstract_init(model, in_shape)
    y = jax.eval_shape(model.apply, params, state, jax.ShapeDtypeStruct((0,) + in_shape[1:], jnp.float32))[0]
    assert y.shape == ((0,) + in_shape[1:-1] + (7,) if name == "unet" else (0, 7))


def test_lenet5_parameters_by_hand():
    _, params, _ = abstract_init(models.lenet5(), (1, 28, 28, 1))
    shapes = [{k: v.shape for k, v in p.items()} for p in params if p]
    assert shapes == [
        {"w": (5, 5, 1, 6), "b": (6,)}, {"w": (5, 5, 6, 16), "b": (16,)},
        {"w": (400, 120), "b": (120,)}, {"w": (120, 84), "b": (84,)}, {"w": (84, 10), "b": (10,)},
    ]
    assert count_params(params) == 156 + 2416 + 48120 + 10164 + 850 == 61706
    assert all(v.dtype == jnp.float32 for p in params for v in p.values())


def test_example_net_and_vgg_shapes_by_hand():
    out, params, _ = abstract_init(models.example_net(), (3, 64, 64, 3))
    assert out == (3, 10) and params[4]["w"].shape == (31 * 31 * 32, 10)
    _, params, _ = abstract_init(models.small_vgg(), (1, 32, 32, 3))
    convs = [p["w"].shape for p in params if p and len(p["w"].shape) == 4]
    assert convs == [(3, 3, 3, 64), (3, 3, 64, 128), (3, 3, 128, 256), (3, 3, 256, 512)]
    assert params[-1]["w"].shape == (512, 10)


def test_small_resnet_batchnorm_state_and_projection():
    _, p_full, _ = abstract_init(models.small_resnet(), (1, 32, 32, 3))
    # stage 2's first block: residual with a 1x1 stride-2 projection (+ BN) from 16 to 32 channels
    assert p_full[4][0]["shortcut"][0]["w"].shape == (1, 1, 16, 32)
    assert p_full[3][0]["shortcut"] == {}  # stage 1 keeps the shape: identity
    model = models.small_resnet(widths=(4, 8))  # same structure, small enough to run fast
    out, params, state = jax.jit(model.init, static_argnums=1)(KEY, (4, 8, 8, 3))
    assert out == (4, 10) and params[4][0]["shortcut"][0]["w"].shape == (1, 1, 4, 8)
    x = jnp.asarray(np.random.RandomState(2).randn(4, 8, 8, 3) * 3 + 1, jnp.float32)

    @jax.jit
    def train_and_eval(params, state, x):
        _, new_state = model.apply(params, state, x, train=True)
        _, same = model.apply(params, state, x, train=False)
        conv_out = jax.lax.conv_general_dilated(x, params[0]["w"], (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return new_state, same, conv_out

    new_state, same, conv_out = train_and_eval(params, state, x)
    # stem BN: running mean = 0.9 * 0 + 0.1 * batch mean of the stem conv's output
    np.testing.assert_allclose(np.asarray(new_state[1]["mean"]), 0.1 * np.asarray(conv_out).mean((0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), same, state))


@pytest.mark.parametrize("impl", ["reference", "custom_vjp"])
def test_conv_impl_propagates_and_agrees_with_lax_inside_a_model(impl, lenet_small):
    x, params, state = lenet_small
    y_lax, g_lax = _lenet_forward_and_grad("lax")(params, state, x)
    y_other, g_other = _lenet_forward_and_grad(impl)(params, state, x)
    np.testing.assert_allclose(np.asarray(y_other), np.asarray(y_lax), rtol=1e-9, atol=1e-10)
    for a, b in zip(jax.tree_util.tree_leaves(g_lax), jax.tree_util.tree_leaves(g_other)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-8, atol=1e-9)


def test_pool_impl_and_ties_propagate(lenet_small):
    with pytest.raises(ValueError, match="ties"):  # "reference" max-pool only implements "split"
        models.lenet5(pool_impl="reference", ties="first")
    models.lenet5(pool_impl="reference")  # ties=None: the impl's own policy ("split")
    _, params, state = lenet_small
    x = jnp.ones((1, 12, 12, 1))  # constant input: every interior pooling window is a tie

    def input_grad(model):
        return jax.jit(jax.grad(lambda x: jnp.sum(model.apply(params, state, x)[0])))(x)

    g_first = input_grad(models.lenet5(pool_impl="custom_vjp", ties="first"))
    g_lax = input_grad(models.lenet5())
    g_all = input_grad(models.lenet5(pool_impl="custom_vjp", ties="all"))
    np.testing.assert_allclose(np.asarray(g_first), np.asarray(g_lax), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(g_all), np.asarray(g_first))


def test_registry():
    assert set(models.MODELS) == {"lenet5", "example_net", "small_vgg", "small_resnet", "resnet18",
                                  "resnet34", "unet"}
    assert models.input_shape("lenet5") == (1, 28, 28, 1)
    assert models.input_shape("small_vgg", batch=8) == (8, 32, 32, 3)
    with pytest.raises(ValueError, match="name must be one of"):
        models.get_model("resnet50")
    with pytest.raises(TypeError, match="unexpected keyword argument 'dropout'"):
        models.get_model("lenet5", dropout=0.5)
    with pytest.raises(ValueError, match="widths"):
        models.small_resnet(widths=())


@pytest.mark.parametrize("make", [models.lenet5, models.example_net, models.small_vgg, models.small_resnet,
                                  models.resnet18, models.resnet34, models.unet, models.cnn1d])
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_every_classifier_names_num_classes_when_it_is_bad(make, bad):
    """lenet5(0), small_vgg(2.5), example_net and small_resnet raised "out_features must be a positive int"
    (the last Dense's argument, which the caller never wrote); resnet18 and get_model named num_classes."""
    with pytest.raises(ValueError, match=rf"^num_classes must be a positive int, got {re.escape(repr(bad))}$"):
        make(bad)


# torchvision's published parameter counts (pytorch.org/vision/stable/models/generated/torchvision.models.resnet18
# and .resnet34: ResNet18_Weights.IMAGENET1K_V1 "num_params 11689512", ResNet34_Weights.IMAGENET1K_V1 "num_params
# 21797672"), 1,000 classes, ImageNet stem;
# they count BatchNorm weight and bias, not running_mean/running_var (buffers: fcnn's state)
@pytest.mark.parametrize("make, want", [(models.resnet18, 11_689_512), (models.resnet34, 21_797_672)])
def test_resnet_parameter_counts_match_torchvision(make, want):
    out, params, state = abstract_init(make(1000), (1, 224, 224, 3))
    assert out == (1, 1000)
    assert count_params(params) == want
    # every BatchNorm keeps (mean, var) of its c channels as state and learns (scale, offset): equal counts
    n_state = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(state))
    n_bn = sum(int(np.prod(a.shape)) for p in jax.tree_util.tree_leaves(params, is_leaf=lambda d: isinstance(d, dict) and "scale" in d)
               if isinstance(p, dict) and "scale" in p for a in p.values())
    assert n_state == n_bn > 0


def test_resnet18_cifar_stem():
    """3x3 stride-1 stem, no max-pool: 32x32 stays 32x32 into stage 1. Count by hand from the ImageNet figure:
    11,689,512 - 7*7*3*64 (7x7 stem) + 3*3*3*64 (3x3 stem) - (512*1000 + 1000) + (512*10 + 10) = 11,173,962."""
    out, params, _ = abstract_init(models.resnet18(10, stem="cifar"), (2, 32, 32, 3))
    assert out == (2, 10)
    assert count_params(params) == 11_689_512 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64 - 513_000 + 5_130 == 11_173_962
    with pytest.raises(ValueError, match="stem must be one of imagenet, cifar; got 'tiny'"):
        models.resnet18(stem="tiny")
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        models.resnet34(0)


def test_an_input_of_another_size_than_init_saw_is_refused_naming_a_layer_and_both_shapes():
    """lenet5 at 32x32 after init at 28x28: the convs take it, the first Dense gets 576 features, not 400."""
    model = models.lenet5()
    _, params, state = abstract_init(model, (1, 28, 28, 1))

    def apply(shape):
        return jax.eval_shape(model.apply, params, state, jax.ShapeDtypeStruct(shape, jnp.float32))[0]

    assert apply((5, 28, 28, 1)).shape == (5, 10)  # any batch size
    with pytest.raises(ValueError) as err:
        apply((1, 32, 32, 1))
    msg = str(err.value)
    assert msg.startswith("Dense: apply got inputs of shape (n, 576) but init was given (n, 400)")
    assert "(layer 7 in `fcnn summary`)" in msg and "Flatten before it" in msg
    assert "serial: init was last given inputs of shape (n, 28, 28, 1), apply got (n, 32, 32, 1)" in msg
    with pytest.raises(ValueError, match=re.escape("Conv2D: apply got inputs of shape (n, 28, 28, 3) but init was "
                                                   "given (n, 28, 28, 1)") + r".*\(layer 0 in `fcnn summary`\)"):
        apply((1, 28, 28, 3))


def test_a_fully_convolutional_model_takes_other_image_sizes():
    """small_resnet ends in a global average pool: 16x16 or 40x40 after init at 32x32 is a correct input."""
    model = models.small_resnet(widths=(4, 8))
    _, params, state = abstract_init(model, (1, 32, 32, 3))
    for shape in [(2, 16, 16, 3), (3, 40, 40, 3)]:
        y = jax.eval_shape(model.apply, params, state, jax.ShapeDtypeStruct(shape, jnp.float32))[0]
        assert y.shape == (shape[0], 10)
    with pytest.raises(ValueError, match=re.escape("Conv2D: apply got inputs of shape (n, 32, 32, 4) but init was "
                                                   "given (n, 32, 32, 3)") + r".*\(layer 0 in `fcnn summary`\)"):
        jax.eval_shape(model.apply, params, state, jax.ShapeDtypeStruct((2, 32, 32, 4), jnp.float32))


# ----------------------------------------------------------------------------- unet, conv_autoencoder, cnn1d
def test_unet_parameters_by_hand_and_shapes_in_every_rank():
    # depth 1, width 4, 1 input channel, 2 classes (3x3 convs: 9*cin*cout + cout):
    #   down 1->4: 40, 4->4: 148; bottom 4->8: 296, 8->8: 584; up ConvTranspose 2x2 8->4: 4*4*8 + 4 = 132;
    #   after the concat (4 + 4 channels) 8->4: 292, 4->4: 148; final 1x1 4->2: 10
    _, params, _ = abstract_init(models.unet(2, depth=1, width=4), (1, 8, 8, 1))
    assert count_params(params) == 40 + 148 + 296 + 584 + 132 + 292 + 148 + 10 == 1650
    # decoder="upsample": Upsample (no params) + 1x1 conv 8->4 (36) in place of the 132
    _, params, _ = abstract_init(models.unet(2, depth=1, width=4, decoder="upsample"), (1, 8, 8, 1))
    assert count_params(params) == 1650 - 132 + 36
    for rank, size in ((1, (12,)), (2, (8, 12)), (3, (4, 8, 4))):
        for decoder in ("transpose", "upsample"):
            out, _, _ = abstract_init(models.unet(3, depth=2, width=2, rank=rank, decoder=decoder), (2, *size, 2))
            assert out == (2, *size, 3)


def test_unet_refuses_sizes_the_decoder_cannot_give_back():
    model = models.unet(2, depth=2, width=2)
    with pytest.raises(ValueError, match=r"every spatial size a multiple of 4 \(unet: 2 2x poolings.*\(n, 7, 8, 1\)"):
        abstract_init(model, (1, 7, 8, 1))
    _, params, state = abstract_init(model, (1, 8, 8, 1))
    with pytest.raises(ValueError, match="SizeRule: x must have rank 4"):
        jax.eval_shape(model.apply, params, state, jax.ShapeDtypeStruct((1, 10, 8, 1), jnp.float32))
    with pytest.raises(ValueError, match="decoder must be one of transpose, upsample"):
        models.unet(decoder="bilinear")
    with pytest.raises(ValueError, match="rank must be an int in"):
        models.unet(rank=4)


def _np_conv_same(x, w, b):
    """NumPy float64 'SAME' correlation, stride 1, odd kernel (k, k, cin, cout), NHWC: the sum over taps written out."""
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    h, wd = x.shape[1:3]
    return sum(np.einsum("nhwc,co->nhwo", xp[:, a:a + h, e:e + wd], w[a, e]) for a in range(k) for e in range(k)) + b


def _np_unet_depth1(p, x):
    """unet(depth=1) from its definition (module docstring; Ronneberger et al. 2015 with SAME convs): two 3x3
    conv+ReLU, [2x2 max pool, two 3x3 conv+ReLU, 2x2 stride-2 transposed conv] concatenated after the skip's
    channels, two 3x3 conv+ReLU, a 1x1 conv. The transposed conv stamps w[a, e, o, c] * x[i, j, c] into output
    pixel (2i + a, 2j + e): the adjoint of the stride-2 correlation whose kernel is (2, 2, o, c)."""
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    lv = p[1]
    down = relu(_np_conv_same(relu(_np_conv_same(x, lv[0]["w"], lv[0]["b"])), lv[2]["w"], lv[2]["b"]))
    n, h, w, c = down.shape
    pooled = down.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    bottom = lv[4][1]
    deep = relu(_np_conv_same(relu(_np_conv_same(pooled, bottom[1][0]["w"], bottom[1][0]["b"])),
                              bottom[1][2]["w"], bottom[1][2]["b"]))
    wt, bt = bottom[2]["w"], bottom[2]["b"]
    upsampled = np.zeros((n, h, w, wt.shape[2]))
    for a in range(2):
        for e in range(2):
            upsampled[:, a::2, e::2] = np.einsum("nijc,oc->nijo", deep, wt[a, e])
    cat = np.concatenate([down, upsampled + bt], axis=-1)
    top = relu(_np_conv_same(relu(_np_conv_same(cat, lv[5]["w"], lv[5]["b"])), lv[7]["w"], lv[7]["b"]))
    return np.einsum("nhwc,co->nhwo", top, p[2]["w"][0, 0]) + p[2]["b"]


def test_unet_forward_equals_numpy_of_its_definition():
    """unet(depth=1) compiled on a small input against a float64 NumPy forward written from the architecture
    (before: only "finite, and a 1-pixel change moves the logits at that pixel"). Random biases, so a
    missing bias, a swapped concat order, a wrong transposed-conv placement or pool would all show."""
    model = models.unet(2, depth=1, width=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 6, 1))
    _, params, state = abstract_init(model, x.shape)
    params = jax.tree.map(lambda a: rng.normal(size=a.shape) * 0.7, params)
    y = np.asarray(jax.jit(lambda p, x: model.apply(p, state, x)[0])(params, x))
    assert y.shape == (2, 4, 6, 2)
    np.testing.assert_allclose(y, _np_unet_depth1(params, x), rtol=1e-10, atol=1e-12)


def test_conv_autoencoder_and_cnn1d_by_hand():
    # encoder 1->4 (40), 4->8 (296); decoder ConvTranspose 8->4: kernel (3, 3, 4, 8) + 4 = 292, 4->1: 36 + 1 = 37
    out, params, _ = abstract_init(models.conv_autoencoder(1, widths=(4, 8)), (2, 12, 8, 1))
    assert out == (2, 12, 8, 1) and count_params(params) == 40 + 296 + 292 + 37
    out, params, _ = abstract_init(models.conv_autoencoder(3, widths=(4, 8), decoder="upsample", rank=1), (2, 12, 3))
    assert out == (2, 12, 3) and count_params(params) == (9 * 4 + 4) + (3 * 4 * 8 + 8) + (3 * 8 * 4 + 4) + (3 * 4 * 3 + 3)
    with pytest.raises(ValueError, match="multiple of 4"):
        abstract_init(models.conv_autoencoder(1, widths=(4, 8)), (2, 10, 8, 1))
    # cnn1d: Conv1D 5x3->32 (512), 5x32->64 (10,304), Dense 64->5 (325); 64 -> 32 -> 16 then global pool
    out, params, _ = abstract_init(models.cnn1d(5), (2, 64, 3))
    assert out == (2, 5) and count_params(params) == 512 + 10304 + 325
