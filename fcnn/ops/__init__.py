"""Array functions: convolution and pooling, each in several implementations.

``conv2d(..., impl=)`` and ``max_pool2d(..., impl=)`` select an implementation;
all implementations of an op take identical arguments and are cross-checked in
the tests (tests/test_conv.py, tests/test_pool_forward.py, tests/test_pool.py).
"""
from fcnn.ops.conv import CONV_CHOICES, CONV_IMPLS, conv2d
# the N-d function: from here on ``fcnn.ops.conv`` names it, not the module fcnn/ops/conv.py (reach
# that one with ``from fcnn.ops.conv import ...`` or ``importlib.import_module("fcnn.ops.conv")``)
from fcnn.ops.conv_nd import PADDING_MODES, RESTRICTED_IMPLS, conv, conv1d, conv3d, conv_impls_for
from fcnn.ops.conv_transpose import (CONV_TRANSPOSE_IMPLS, conv_transpose, conv_transpose1d, conv_transpose2d,
                                     conv_transpose3d)
from fcnn.ops.pool import (
    POOL_CHOICES,
    POOL_IMPLS,
    TIE_POLICIES,
    adaptive_avg_pool,
    adaptive_max_pool,
    avg_pool,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    global_avg_pool,
    global_avg_pool2d,
    global_max_pool,
    global_max_pool2d,
    max_pool,
    max_pool1d,
    max_pool2d,
    max_pool3d,
)
from fcnn.ops.upsample import UPSAMPLE_METHODS, upsample, upsample_adjoint

__all__ = [
    "conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "CONV_TRANSPOSE_IMPLS",
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "PADDING_MODES",
    "CONV_IMPLS",
    "CONV_CHOICES",
    "RESTRICTED_IMPLS",
    "conv_impls_for",
    "max_pool",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "global_max_pool",
    "global_max_pool2d",
    "global_avg_pool",
    "global_avg_pool2d",
    "adaptive_max_pool",
    "adaptive_avg_pool",
    "upsample",
    "upsample_adjoint",
    "UPSAMPLE_METHODS",
    "POOL_IMPLS",
    "POOL_CHOICES",
    "TIE_POLICIES",
]
