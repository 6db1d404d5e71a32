"""What the device does to a batch before the model, for each input path.

In memory, a batch is the indices of its examples in the device-resident uint8 data set:
gather, augment (`config.augment`) and normalise by the training set's per-pixel mean
(the paper's CIFAR input). Streamed batches arrive cropped and flipped by the hosts: add
the lighting shift and normalise per channel. Pure JAX without TensorFlow, so that the
benchmark builds exactly the steps that training runs, without the input pipeline.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax.data import device_augment


@dataclasses.dataclass(frozen=True)
class InMemoryPreprocessing:
    """In-memory batches: (x - per-pixel train mean) / pixel_scale, after the augmentation."""

    augment: str
    pad_pixels: int
    pixel_mean: jax.Array  # float32 [H, W, 3], the training images' mean
    pixel_scale: float
    dtype: Any

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, train_images: np.ndarray,
                    dtype: Any) -> InMemoryPreprocessing:
        mean = jnp.asarray(train_images.mean(axis=0, dtype=np.float64), jnp.float32)
        return cls(config.augment, config.pad_pixels, mean, config.pixel_scale, dtype)

    def train(self, key: jax.Array, images: jax.Array, labels: jax.Array,
              indices: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The augmented, normalised images and the labels of the examples `indices`."""
        batch = device_augment.augment(key, images[indices], self.augment, self.pad_pixels)
        return self.normalize(batch), labels[indices]

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 images to the model's input (evaluation uses this alone)."""
        return device_augment.normalize(images, self.pixel_mean, self.pixel_scale, self.dtype)


@dataclasses.dataclass(frozen=True)
class StreamedPreprocessing:
    """Streamed batches: (x + lighting - mean) / std, per channel."""

    mean: jax.Array  # float32 [3]
    std: jax.Array  # float32 [3]
    lighting: device_augment.Lighting
    dtype: Any

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, dtype: Any) -> StreamedPreprocessing:
        stream = config.streaming
        return cls(jnp.asarray(stream.mean_rgb, jnp.float32),
                   jnp.asarray(stream.std_rgb, jnp.float32),
                   device_augment.Lighting.from_config(stream), dtype)

    def train(self, key: jax.Array, images: jax.Array,
              labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The normalised images, shifted by a random lighting offset, and the labels."""
        offset = self.lighting.offset(key, images.shape[0])
        return device_augment.normalize(images, self.mean, self.std, self.dtype, offset), labels

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 views to the model's input (evaluation uses this alone)."""
        return device_augment.normalize(images, self.mean, self.std, self.dtype)
