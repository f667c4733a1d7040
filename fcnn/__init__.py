"""fcnn: functional convolutional networks in JAX."""
__version__ = "0.1.0"
