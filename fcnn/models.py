"""Reference models, built only from public layers and combinators.

Every classifier returns a ``Layer`` whose ``apply`` gives *logits* (n, num_classes) (``unet``: per
pixel, (n, h, w, num_classes); ``conv_autoencoder``: an image); softmax
is applied by the loss (``losses.softmax_cross_entropy``) or by ``train.predict``. Every
model takes ``impl=`` (the ``Conv2D`` implementation), ``pool_impl=`` and ``ties=`` (the
``MaxPool2D`` implementation and gradient tie policy), passed to each of its layers.
``ties=None`` (default) means the policy ``pool_impl`` implements natively: "split" for
"reference", "first" otherwise; an explicit policy the impl lacks raises ``ValueError``.

    name           input (NHWC)   layers
    lenet5         (n, 28, 28, 1) conv 6@5x5 SAME, relu, maxpool 2 -> conv 16@5x5 VALID, relu,
                                  maxpool 2 -> flatten (400) -> dense 120, relu -> dense 84,
                                  relu -> dense 10                          61,706 params
    example_net    (n, 64, 64, 3) conv 32@3x3 VALID, relu (62x62x32) -> maxpool 2 (31x31x32)
                                  -> flatten (30,752) -> dense 10
    small_vgg      (n, 32, 32, 3) conv 64, relu -> conv 128, relu, maxpool 2 -> conv 256, relu,
                                  maxpool 2 -> conv 512, relu, maxpool 2 -> global max -> dense 10
                                  (3x3 convs, all SAME)
    small_resnet   (n, 32, 32, 3) conv 16@3x3, BN, relu -> stages of basic blocks (widths 16, 32,
                                  64; stride 2 at each new stage) -> global avg -> dense 10.
                                  Basic block: relu(conv3x3-BN-relu-conv3x3-BN + shortcut); the
                                  shortcut is the identity, or a 1x1 stride-2 conv + BN where the
                                  shape changes.
    resnet18/34    (n, 224, 224, 3) torchvision's BasicBlock ResNets, blocks (2, 2, 2, 2) / (3, 4, 6, 3)
                                  at 64-512 channels; stem="imagenet" (7x7 s2 conv, BN, relu, 3x3 s2
                                  max-pool) or "cifar" (3x3 s1 conv, BN, relu; for (n, 32, 32, 3))
                                  11,689,512 / 21,797,672 params at 1,000 classes (ImageNet stem)

Encoder-decoder and sequence models (any rank: ``rank=1, 2, 3`` picks Conv1D/2D/3D and their pools):

    unet              (n, *S, c) -> (n, *S, num_classes) per-pixel logits. Level d (0 <= d < depth,
                      width*2^d channels): two 3x3 SAME convs + relu, then a skip_concat around
                      [maxpool 2 -> level d+1 -> up to width*2^d channels], then two 3x3 convs on the
                      concatenation; the bottom level is the two convs alone; a final 1x1 conv.
                      up: decoder="transpose" a 2x2 stride-2 ConvTranspose, "upsample" an
                      Upsample(2, (bi/tri)linear) + 1x1 conv. Every spatial size must be a multiple
                      of 2**depth (a 2-pool floors an odd size, which the decoder cannot give back
                      to the skip); the first layer, ``SizeRule``, refuses other sizes at init and apply.
    conv_autoencoder  (n, *S, c) -> (n, *S, out_channels): per width a 3x3 stride-2 conv (padding 1,
                      ceil(S/2)) + relu; back up with 3x3 stride-2 ConvTranspose (padding 1,
                      output_padding 1: 2x) + relu, or Upsample(2, nearest) + 3x3 SAME conv; the last
                      layer linear. Sizes: multiples of 2**len(widths) (SizeRule).
    cnn1d             (n, L, c) -> (n, num_classes): per width a Conv1D (kernel 5 SAME) + relu +
                      maxpool 2, then global average pool and a Dense.

``get_model(name, **opts)`` builds one by name (``MODELS``; ``unet`` is registered, per-pixel logits
for the segment task; the autoencoder has no ``num_classes`` and cnn1d no dataset of sequences, so
they are not); ``input_shape(name)`` gives its default input shape with batch 1.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax.numpy as jnp

from fcnn import _checks, shapes
from fcnn.combinators import residual, serial, skip_concat
from fcnn.decoder import ConvTranspose1D, ConvTranspose2D, ConvTranspose3D, Upsample
from fcnn.layers import (BatchNorm, Conv2D, Dense, Flatten, GlobalAvgPool2D, GlobalMaxPool2D, MaxPool2D,
                         Relu)
from fcnn.layers_nd import Conv1D, Conv3D, GlobalAvgPool, MaxPool1D, MaxPool3D
from fcnn.ops.conv_transpose import CONV_TRANSPOSE_CHOICES
from fcnn.types import InputShapeError, Layer, LayerInfo, check_shape, describe, shape_text

__all__ = ["lenet5", "example_net", "small_vgg", "small_resnet", "resnet18", "resnet34", "unet", "conv_autoencoder",
           "cnn1d", "MODELS", "get_model", "input_shape"]


def _pool(window, pool_impl, ties, **kw):
    if ties is None:
        ties = "split" if pool_impl == "reference" else "first"
    return MaxPool2D(window, impl=pool_impl, ties=ties, **kw)


def lenet5(num_classes: int = 10, *, impl: str = "lax", pool_impl: str = "lax", ties: Optional[str] = None) -> Layer:
    """LeNet-5 for (n, 28, 28, 1) inputs -> (n, num_classes) logits."""
    num_classes = _checks.positive_int(num_classes, "num_classes")
    return serial(
        Conv2D(6, 5, padding="SAME", impl=impl), Relu(), _pool(2, pool_impl, ties),  # (n, 14, 14, 6)
        Conv2D(16, 5, padding="VALID", impl=impl), Relu(), _pool(2, pool_impl, ties),  # (n, 5, 5, 16)
        Flatten(),  # (n, 400)
        Dense(120), Relu(),
        Dense(84), Relu(),
        Dense(num_classes),
    )


def example_net(num_classes: int = 10, *, impl: str = "lax", pool_impl: str = "lax",
                ties: Optional[str] = None) -> Layer:
    """Conv 32@3x3 + relu + maxpool 2 + dense on (n, 64, 64, 3) -> (n, num_classes) logits."""
    num_classes = _checks.positive_int(num_classes, "num_classes")
    return serial(
        Conv2D(32, 3, impl=impl), Relu(),  # (n, 62, 62, 32)
        _pool(2, pool_impl, ties),  # (n, 31, 31, 32)
        Flatten(),  # (n, 30752)
        Dense(num_classes),
    )


def small_vgg(num_classes: int = 10, *, impl: str = "lax", pool_impl: str = "lax",
              ties: Optional[str] = None) -> Layer:
    """VGG-style net on (n, 32, 32, 3) -> (n, num_classes) logits (all convs 3x3 SAME)."""
    num_classes = _checks.positive_int(num_classes, "num_classes")

    def conv(c):
        return Conv2D(c, 3, padding="SAME", impl=impl)

    return serial(
        conv(64), Relu(),  # (n, 32, 32, 64)
        conv(128), Relu(), _pool(2, pool_impl, ties),  # (n, 16, 16, 128)
        conv(256), Relu(), _pool(2, pool_impl, ties),  # (n, 8, 8, 256)
        conv(512), Relu(), _pool(2, pool_impl, ties),  # (n, 4, 4, 512)
        GlobalMaxPool2D(),  # (n, 512)
        Dense(num_classes),
    )


def _basic_block(channels: int, stride: int, project: bool, impl: str, bn, padding="SAME") -> Layer:
    block = serial(
        Conv2D(channels, 3, stride=stride, padding=padding, use_bias=False, impl=impl), bn(),
        Relu(),
        Conv2D(channels, 3, padding=padding, use_bias=False, impl=impl), bn(),
    )
    shortcut = None
    if project:
        shortcut = serial(Conv2D(channels, 1, stride=stride, use_bias=False, impl=impl), bn())
    return serial(residual(block, shortcut), Relu())


def small_resnet(num_classes: int = 10, *, widths: Sequence[int] = (16, 32, 64), blocks_per_stage: int = 1,
                 impl: str = "lax", pool_impl: str = "lax", ties: Optional[str] = None, momentum: float = 0.9,
                 bn_axis_name: Optional[str] = None) -> Layer:
    """A small ResNet on (n, 32, 32, 3) -> (n, num_classes) logits.

    Stage i has ``blocks_per_stage`` basic blocks of ``widths[i]`` channels; the first block
    of every stage after the first has stride 2 and a projection shortcut (1x1 conv stride 2
    + BN). The stem has no max-pool, so ``pool_impl``/``ties`` are accepted for a uniform
    interface and unused. BatchNorm state must be threaded through training (``train.fit`` does).
    ``bn_axis_name``: every BatchNorm's ``axis_name`` (global batch statistics under
    ``pmap`` / ``shard_map`` over that axis; ``fcnn train --parallel pmap`` sets it).
    """
    num_classes = _checks.positive_int(num_classes, "num_classes")
    if not widths or not all(_checks.is_int(w) and w > 0 for w in widths):
        raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
    blocks_per_stage = _checks.positive_int(blocks_per_stage, "blocks_per_stage")
    _pool(2, pool_impl, ties)  # validate the pooling options all models accept
    bn = functools.partial(BatchNorm, momentum=momentum, axis_name=bn_axis_name)
    layers = [Conv2D(widths[0], 3, padding="SAME", use_bias=False, impl=impl), bn(), Relu()]
    in_c = widths[0]
    for i, c in enumerate(widths):
        for b in range(blocks_per_stage):
            stride = 2 if (i > 0 and b == 0) else 1
            layers.append(_basic_block(c, stride, stride != 1 or c != in_c, impl, bn))
            in_c = c
    layers += [GlobalAvgPool2D(), Dense(num_classes)]
    return serial(*layers)


def _resnet(blocks: Sequence[int], num_classes, stem, impl, pool_impl, ties, momentum, bn_axis_name) -> Layer:
    """torchvision's BasicBlock ResNet: a stem, four stages of ``blocks[i]`` basic blocks of 64, 128, 256,
    512 channels (stride 2 and a 1x1 projection + BN at the first block of stages 2-4), global average
    pool, Dense. Explicit padding 3 (stem) and 1 (3x3 convs, max-pool) as torchvision's, not SAME (whose
    odd extra pad at stride 2 goes at the end only)."""
    num_classes = _checks.positive_int(num_classes, "num_classes")
    stem = _checks.choice(stem, ("imagenet", "cifar"), "stem")
    pool = _pool(3, pool_impl, ties, stride=2, padding=1)  # validates pool_impl/ties for both stems
    bn = functools.partial(BatchNorm, momentum=momentum, axis_name=bn_axis_name)
    if stem == "imagenet":  # (n, 224, 224, 3) -> (n, 112, 112, 64) -> (n, 56, 56, 64)
        layers = [Conv2D(64, 7, stride=2, padding=3, use_bias=False, impl=impl), bn(), Relu(), pool]
    else:  # (n, 32, 32, 3) -> (n, 32, 32, 64), no max-pool
        layers = [Conv2D(64, 3, padding=1, use_bias=False, impl=impl), bn(), Relu()]
    for i, (c, n_blocks) in enumerate(zip((64, 128, 256, 512), blocks)):
        for b in range(n_blocks):
            stride = 2 if (i > 0 and b == 0) else 1
            layers.append(_basic_block(c, stride, stride != 1, impl, bn, padding=1))
    layers += [GlobalAvgPool2D(), Dense(num_classes)]  # (n, 512) -> (n, num_classes)
    return serial(*layers)


def resnet18(num_classes: int = 10, *, stem: str = "imagenet", impl: str = "lax", pool_impl: str = "lax",
             ties: Optional[str] = None, momentum: float = 0.9, bn_axis_name: Optional[str] = None) -> Layer:
    """ResNet-18 (He et al. 2016; torchvision.models.resnet18): blocks (2, 2, 2, 2).

    ``stem="imagenet"``: 7x7 stride-2 conv 64, BN, ReLU, 3x3 stride-2 max-pool (for 224x224 inputs);
    ``stem="cifar"``: 3x3 stride-1 conv 64, BN, ReLU, no max-pool (for 32x32 inputs). 11,689,512
    params for 1,000 classes with the ImageNet stem (BN scale/offset counted, running stats in state).
    ``momentum``/``bn_axis_name``: every BatchNorm's (see ``small_resnet``).
    """
    return _resnet((2, 2, 2, 2), num_classes, stem, impl, pool_impl, ties, momentum, bn_axis_name)


def resnet34(num_classes: int = 10, *, stem: str = "imagenet", impl: str = "lax", pool_impl: str = "lax",
             ties: Optional[str] = None, momentum: float = 0.9, bn_axis_name: Optional[str] = None) -> Layer:
    """ResNet-34 (torchvision.models.resnet34): blocks (3, 4, 6, 3), stems as ``resnet18``; 21,797,672
    params for 1,000 classes with the ImageNet stem."""
    return _resnet((3, 4, 6, 3), num_classes, stem, impl, pool_impl, ties, momentum, bn_axis_name)


# ----------------------------------------------------------------------------- encoder-decoder, 1-D
_BY_RANK = {1: (Conv1D, MaxPool1D, ConvTranspose1D, "linear"), 2: (Conv2D, MaxPool2D, ConvTranspose2D, "bilinear"),
            3: (Conv3D, MaxPool3D, ConvTranspose3D, "trilinear")}


def _size_rule(multiple: int, rank: int, why: str) -> Layer:
    """Identity that refuses an input whose spatial sizes are not multiples of ``multiple`` (channels-last)."""
    layout = shapes.LAYOUTS_BY_RANK[rank][0]

    def bad(shape):
        return len(shape) != rank + 2 or any(d % multiple for d in shapes.spatial_dims(shape, layout))

    def rule(shape):
        return (f"x must have rank {rank + 2} ({layout}) and every spatial size a multiple of {multiple} ({why}), "
                f"got {shape_text(shape)}")

    def init(key, in_shape):
        in_shape = check_shape(in_shape)
        if bad(in_shape):
            raise ValueError(rule(in_shape))
        return in_shape, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if bad(jnp.shape(x)):
            raise InputShapeError(f"SizeRule: {rule(jnp.shape(x))}")
        return x, state

    return describe(Layer(init, apply), LayerInfo("SizeRule", "reshape", f"sizes % {multiple} == 0",
                                                  flops=lambda i, o: 0))


def _decoder_options(rank, decoder):
    return _checks.int_in_range(rank, "rank", 1, 4), _checks.choice(decoder, ("transpose", "upsample"), "decoder")


def unet(num_classes: int = 2, *, depth: int = 2, width: int = 16, decoder: str = "transpose", rank: int = 2,
         impl: str = "lax", pool_impl: str = "lax", ties: Optional[str] = None) -> Layer:
    """A small U-Net (Ronneberger et al. 2015; SAME convs, so no cropping): (n, *S, c) -> (n, *S, num_classes).

    The module docstring gives the structure. ``depth``: number of 2x downsamplings (every spatial size
    must be a multiple of 2**depth); ``width``: channels at the top level (doubled per level);
    ``decoder``: "transpose" or "upsample"; ``rank``: 1, 2 or 3 spatial dims (channels-last).
    ``impl`` also sets the transposed conv's implementation where it has one of that name (lax,
    reference, custom_vjp, auto), else "lax".
    """
    num_classes = _checks.positive_int(num_classes, "num_classes")
    depth = _checks.positive_int(depth, "depth")
    width = _checks.positive_int(width, "width")
    rank, decoder = _decoder_options(rank, decoder)
    conv, pool, conv_t, interp = _BY_RANK[rank]
    if ties is None:
        ties = "split" if pool_impl == "reference" else "first"

    def double(c):
        return [conv(c, 3, padding="SAME", impl=impl), Relu(), conv(c, 3, padding="SAME", impl=impl), Relu()]

    def up(c):
        if decoder == "transpose":
            return conv_t(c, 2, stride=2, impl=impl if impl in CONV_TRANSPOSE_CHOICES else "lax")
        return serial(Upsample(2, method=interp), conv(c, 1, impl=impl))

    def level(d):
        c = width * 2 ** d
        if d == depth:
            return serial(*double(c))
        return serial(*double(c), skip_concat(serial(pool(2, impl=pool_impl, ties=ties), level(d + 1), up(c))),
                      *double(c))

    return serial(_size_rule(2 ** depth, rank, f"unet: {depth} 2x poolings, undone by the decoder"), level(0),
                  conv(num_classes, 1, impl=impl))


def conv_autoencoder(out_channels: int = 1, *, widths: Sequence[int] = (16, 32), decoder: str = "transpose",
                     rank: int = 2, impl: str = "lax") -> Layer:
    """A convolutional autoencoder: (n, *S, c) -> (n, *S, out_channels) (module docstring).

    ``widths``: channels of the stride-2 encoder convs (the last is the code); spatial sizes must be
    multiples of 2**len(widths). The output is linear (pair it with MSE/L1: the reconstruct task).
    """
    out_channels = _checks.positive_int(out_channels, "out_channels")
    if not widths or not all(_checks.is_int(w) and w > 0 for w in widths):
        raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
    rank, decoder = _decoder_options(rank, decoder)
    conv, _, conv_t, _ = _BY_RANK[rank]
    layers = [_size_rule(2 ** len(widths), rank, f"conv_autoencoder: {len(widths)} stride-2 convs")]
    for w in widths:  # S -> S/2 per conv
        layers += [conv(w, 3, stride=2, padding=1, impl=impl), Relu()]
    outs = list(widths[-2::-1]) + [out_channels]
    for i, w in enumerate(outs):  # S/2 -> S per step
        if decoder == "transpose":
            layers.append(conv_t(w, 3, stride=2, padding=1, output_padding=1))
        else:
            layers += [Upsample(2), conv(w, 3, padding="SAME", impl=impl)]
        if i < len(outs) - 1:
            layers.append(Relu())
    return serial(*layers)


def cnn1d(num_classes: int = 10, *, widths: Sequence[int] = (32, 64), kernel: int = 5, impl: str = "lax") -> Layer:
    """A 1-D CNN for sequences (n, L, c) -> (n, num_classes) logits (module docstring); L >= 2**len(widths)."""
    num_classes = _checks.positive_int(num_classes, "num_classes")
    if not widths or not all(_checks.is_int(w) and w > 0 for w in widths):
        raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
    layers = []
    for w in widths:
        layers += [Conv1D(w, kernel, padding="SAME", impl=impl), Relu(), MaxPool1D(2)]
    return serial(*layers, GlobalAvgPool(), Dense(num_classes))


MODELS = {
    "lenet5": (lenet5, (1, 28, 28, 1)),
    "example_net": (example_net, (1, 64, 64, 3)),
    "small_vgg": (small_vgg, (1, 32, 32, 3)),
    "small_resnet": (small_resnet, (1, 32, 32, 3)),
    "resnet18": (resnet18, (1, 224, 224, 3)),
    "resnet34": (resnet34, (1, 224, 224, 3)),
    "unet": (unet, (1, 32, 32, 1)),
}


def _entry(name: str):
    return MODELS[_checks.choice(name, sorted(MODELS), "name")]


def get_model(name: str, **opts) -> Layer:
    """``MODELS[name]`` built with keyword options (``num_classes``, ``impl``, ``pool_impl``, ``ties``...)."""
    entry = _entry(name)
    if "num_classes" in opts:  # checked here so the error names it, not the last Dense's out_features
        _checks.positive_int(opts["num_classes"], "num_classes")
    return entry[0](**opts)


def input_shape(name: str, batch: int = 1) -> tuple:
    """The default NHWC input shape of a model, with batch size ``batch``."""
    return (batch,) + _entry(name)[1][1:]
