"""fcnn: functional convolutional networks in JAX.

Every layer is a pure ``Layer(init, apply)`` pair over parameter pytrees
(the contract is stated in ``fcnn.types``); every convolution and pooling
exists in several implementations (``fcnn.ops``) that are checked against each
other, and the hand-derived backward passes are checked against ``jax.grad``
and finite differences (``fcnn.gradcheck``).

Array functions (``conv2d``, ``max_pool2d``, ...) live in ``fcnn.ops``; formulas
in ``fcnn.shapes``; datasets in ``fcnn.data``; the device step in ``fcnn.step``; a run's
config and directory in ``fcnn.run``; the epoch loop in ``fcnn.train``; checkpoints in
``fcnn.checkpoint``. The README's layout section lists every module with its one concern.
"""
from fcnn._version import __version__
from fcnn import checkpoint, data, metrics, ops, runtime, shapes, tasks
from fcnn import init  # initialisers: fcnn.init.he_normal(), ...
from fcnn.combinators import branches, identity, residual, serial, skip_concat
from fcnn.layers import (
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Elu,
    Flatten,
    Gelu,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    Lambda,
    LeakyRelu,
    LogSoftmax,
    MaxPool2D,
    Relu,
    Sigmoid,
    Silu,
    Softmax,
    Softplus,
    Tanh,
)
from fcnn.layers_nd import (AdaptiveAvgPool, AdaptiveMaxPool, AvgPool1D, AvgPool3D, Conv1D, Conv3D, GlobalAvgPool,
                             GlobalMaxPool, MaxPool1D, MaxPool3D, SpatialDropout)
from fcnn.decoder import ConvTranspose1D, ConvTranspose2D, ConvTranspose3D, Upsample
from fcnn.norms import GroupNorm, InstanceNorm, LayerNorm
from fcnn.losses import accuracy, l2_penalty, mse, softmax_cross_entropy
from fcnn.models import (MODELS, cnn1d, conv_autoencoder, example_net, get_model, lenet5, resnet18, resnet34,
                         small_resnet, small_vgg, unet)
from fcnn.optim import make_optimizer
from fcnn.summary import Summary, summary
from fcnn.run import TrainConfig
from fcnn.step import evaluate, make_train_step, plain_train_step, predict
from fcnn.train import FitResult, TrainingDivergedError, fit
from fcnn.types import Layer

__all__ = [
    "__version__",
    # the contract
    "Layer",
    # layers
    "Conv2D", "Dense", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "GlobalMaxPool2D", "Flatten",
    "Dropout", "BatchNorm", "Activation", "Lambda", "Relu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "Gelu", "Elu", "LeakyRelu", "Silu", "Softplus", "LayerNorm", "GroupNorm", "InstanceNorm",
    "Conv1D", "Conv3D", "MaxPool1D", "MaxPool3D", "AvgPool1D", "AvgPool3D", "GlobalAvgPool", "GlobalMaxPool",
    "AdaptiveAvgPool", "AdaptiveMaxPool", "SpatialDropout",
    "ConvTranspose1D", "ConvTranspose2D", "ConvTranspose3D", "Upsample",
    # combinators
    "serial", "residual", "branches", "identity", "skip_concat",
    # models and inspection
    "lenet5", "example_net", "small_vgg", "small_resnet", "resnet18", "resnet34", "get_model", "MODELS", "summary",
    "unet", "conv_autoencoder", "cnn1d",
    "Summary",
    # training
    "softmax_cross_entropy", "mse", "l2_penalty", "accuracy", "make_optimizer", "make_train_step",
    "plain_train_step", "evaluate", "predict", "fit", "TrainConfig", "FitResult", "TrainingDivergedError",
    # modules
    "ops", "shapes", "init", "data", "checkpoint", "metrics", "tasks", "runtime",
]
