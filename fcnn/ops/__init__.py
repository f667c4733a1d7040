"""Array functions: convolution and pooling, each in several implementations.

``conv2d(..., impl=)`` and ``max_pool2d(..., impl=)`` select an implementation;
all implementations of an op take identical arguments and are cross-checked in
the tests.
"""
