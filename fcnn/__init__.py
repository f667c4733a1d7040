"""fcnn: functional convolutional networks in JAX.

Every layer is a pure ``Layer(init, apply)`` pair over parameter pytrees
(the contract is stated in ``fcnn.types``); every convolution and pooling
exists in several implementations (``fcnn.ops``) that are checked against each
other, and the hand-derived backward passes are checked against ``jax.grad``
and finite differences (``fcnn.gradcheck``).

Array functions (``conv2d``, ``max_pool2d``, ...) live in ``fcnn.ops``; formulas
in ``fcnn.shapes``; datasets in ``fcnn.data``; checkpoints in ``fcnn.checkpoint``.
"""
__version__ = "0.1.0"

from fcnn import checkpoint, data, ops, shapes  # noqa: E402
from fcnn import init  # noqa: E402  (initialisers: fcnn.init.he_normal(), ...)
from fcnn.combinators import branches, residual, serial  # noqa: E402
from fcnn.layers import (  # noqa: E402
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
from fcnn.losses import accuracy, l2_penalty, mse, softmax_cross_entropy  # noqa: E402
from fcnn.models import MODELS, example_net, get_model, lenet5, small_resnet, small_vgg  # noqa: E402
from fcnn.optim import make_optimizer  # noqa: E402
from fcnn.summary import Summary, summary  # noqa: E402
from fcnn.train import (  # noqa: E402
    FitResult,
    TrainConfig,
    TrainingDivergedError,
    evaluate,
    fit,
    make_train_step,
    predict,
)
from fcnn.types import Layer  # noqa: E402

__all__ = [
    "__version__",
    # the contract
    "Layer",
    # layers
    "Conv2D", "Dense", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "GlobalMaxPool2D", "Flatten",
    "Dropout", "BatchNorm", "Activation", "Lambda", "Relu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "Gelu", "Elu", "LeakyRelu", "Silu", "Softplus",
    # combinators
    "serial", "residual", "branches",
    # models and inspection
    "lenet5", "example_net", "small_vgg", "small_resnet", "get_model", "MODELS", "summary", "Summary",
    # training
    "softmax_cross_entropy", "mse", "l2_penalty", "accuracy", "make_optimizer", "make_train_step",
    "evaluate", "predict", "fit", "TrainConfig", "FitResult", "TrainingDivergedError",
    # modules
    "ops", "shapes", "init", "data", "checkpoint",
]
