"""Datasets for every task from the real image datasets: the targets are derived from the images.

    load(task, dataset="digits", data_dir=None) -> fcnn.data.Dataset

    task         x (inputs)                               y (targets)                    outputs
    classify     as ``fcnn.data.load``                    (n,) int32 class               (n, 10)
    segment      the image, normalised (train stats)      (n, h, w) int32: 0 where the   (n, h, w, 11)
                                                          clean pixel is dark (< 0.5 of
                                                          [0, 1]), the digit's class + 1
                                                          where it is ink
    denoise      clean image in [0, 1] (train); clean +   (n, h, w, 1) the clean image   (n, h, w, 1)
                 N(0, sigma^2) noise (test, fixed by
                 ``noise_seed``)
    reconstruct  clean image in [0, 1]                    the same image                 (n, h, w, 1)
    regress      the image, normalised                    (n, 1) float32: the mean        (n, 1)
                                                          clean pixel value (ink mass)

``denoise``'s training noise is not in ``x_train``: it is drawn on the device inside the train
step, new at every step, by the dataset's ``augment`` hook (``add_noise`` with the step's key;
``fit`` applies ``data.augment``), so every epoch sees new noise. sigma is 0.5 of the [0, 1]
range (``DENOISE_SIGMA``); the noise is not clipped, so the noisy input's own PSNR is close to
``20 log10(1 / sigma)`` = 6.02 dB (``input_psnr`` measures it on the test set).
``Dataset.num_classes`` holds the size of the outputs' last axis the task needs (11, 1, 1, 1).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from fcnn import _checks, tasks
from fcnn import data as data_lib
from fcnn.types import Array

__all__ = ["DENSE_TASKS", "DENOISE_SIGMA", "INK_THRESHOLD", "load", "add_noise", "segment_labels", "input_psnr"]

DENSE_TASKS = ("classify", "segment", "denoise", "reconstruct", "regress")
DENOISE_SIGMA = 0.5  # of the [0, 1] pixel range
INK_THRESHOLD = 0.5  # a clean pixel >= this (in [0, 1]) is ink


def add_noise(key: Array, x: Array, *, sigma: float = DENOISE_SIGMA) -> Array:
    """``x + sigma * N(0, 1)`` elementwise (not clipped), in ``x``'s dtype; jittable, on device."""
    return x + jnp.asarray(sigma, x.dtype) * jax.random.normal(key, jnp.shape(x), x.dtype)


def segment_labels(clean: np.ndarray, labels: np.ndarray, *, threshold: float = INK_THRESHOLD) -> np.ndarray:
    """Per-pixel classes (n, h, w) int32 from clean images (n, h, w, 1) in [0, 1] and digit labels (n,):
    0 where the pixel is below ``threshold`` (background), ``label + 1`` where it is ink."""
    ink = np.asarray(clean)[..., 0] >= threshold
    return np.where(ink, np.asarray(labels, np.int32)[:, None, None] + 1, 0).astype(np.int32)


def load(task: str = "classify", dataset: str = "digits", *, data_dir: Optional[str] = None,
         sigma: float = DENOISE_SIGMA, noise_seed: int = 0) -> data_lib.Dataset:
    """The ``dataset``'s images with the targets of ``task`` (module docstring); never downloads.

    Args:
      task: one of ``DENSE_TASKS``.
      dataset: an image dataset of ``fcnn.data.DATASETS`` (one channel for the dense tasks).
      sigma: the denoising noise's standard deviation, of the [0, 1] range.
      noise_seed: fixes the test set's noise (``denoise``): the same noisy test images every run.
    """
    _checks.choice(task, DENSE_TASKS, "task")
    sigma = _checks.non_negative_float(sigma, "sigma", hint="of the [0, 1] range")
    _checks.int_in_range(noise_seed, "noise_seed", 0, 2**32)  # a PRNG seed: JAX takes 32 bits
    if task == "classify":
        return data_lib.load(dataset, data_dir=data_dir)
    base = data_lib.load(dataset, data_dir=data_dir, normalize=False)  # pixels in [0, 1]
    if base.x_train.shape[-1] != 1:
        raise ValueError(f"task {task!r} derives its targets from one-channel images; dataset {dataset!r} has "
                         f"{base.x_train.shape[-1]} channels")
    name = f"{base.name}-{task}"
    if task == "segment":
        y_tr, y_te = segment_labels(base.x_train, base.y_train), segment_labels(base.x_test, base.y_test)
        return data_lib.normalized(name, base.x_train, y_tr, base.x_test, y_te, base.num_classes + 1)
    if task == "regress":
        y_tr, y_te = (np.mean(x, axis=(1, 2, 3), dtype=np.float64).astype(np.float32)[:, None]
                      for x in (base.x_train, base.x_test))
        return data_lib.normalized(name, base.x_train, y_tr, base.x_test, y_te, 1)
    if task == "reconstruct":
        return base._replace(y_train=base.x_train, y_test=base.x_test, num_classes=1, name=name)
    key = jax.random.PRNGKey(noise_seed)
    x_test = np.asarray(jax.jit(functools.partial(add_noise, sigma=sigma))(key, jnp.asarray(base.x_test)))
    return base._replace(y_train=base.x_train, x_test=x_test, y_test=base.x_test, num_classes=1, name=name,
                         augment=functools.partial(add_noise, sigma=sigma))


def input_psnr(ds: data_lib.Dataset) -> float:
    """PSNR in dB of a denoising test set's noisy inputs against its clean targets (data range 1)."""
    return tasks.score(tasks.denoise(), ds.x_test, ds.y_test)["psnr"]
