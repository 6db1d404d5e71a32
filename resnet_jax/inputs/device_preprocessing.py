"""What the device does to a batch before the model, inside the jitted train step.

The paper's CIFAR augmentation (pad, crop, flip) of in-memory images, AlexNet's lighting
(PCA colour) shift of streamed batches, and the normalisation of both: pure functions,
vectorised over the batch, on uint8 images already on the device. Each input path's
`Preprocessing` applies them to its batches: in memory, a batch is the indices of its
examples in the device-resident uint8 data set (gather, augment as `config.augment` says,
normalise by the training set's per-pixel mean, the paper's CIFAR input); streamed
batches arrive cropped and flipped by the hosts (add the lighting shift, normalise per
channel). Pure JAX without TensorFlow, so that the benchmark builds exactly the steps that
training runs, without the input pipeline.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# `config.augment`, the in-memory data's augmentation (streamed data: host_augment.py).
AUGMENTATIONS = ('pad_crop_flip', 'flip', 'none')


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Flips each image of [B, H, W, C] horizontally with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def random_pad_crop(key: jax.Array, images: jax.Array, pad: int) -> jax.Array:
    """Zero-pads each side by `pad` pixels and takes a random crop of the original size."""
    if pad == 0:
        return images
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * pad + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(
            image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def augment(key: jax.Array, images: jax.Array, kind: str, pad: int) -> jax.Array:
    """Applies the augmentation named by `config.augment` to a uint8 batch."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f'unknown augmentation {kind!r}; choose one of {AUGMENTATIONS}')
    if kind == 'none':
        return images
    crop_key, flip_key = jax.random.split(key)
    if kind == 'pad_crop_flip':
        images = random_pad_crop(crop_key, images, pad)
    return random_flip(flip_key, images)


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array | float, dtype,
              offset: jax.Array | None = None) -> jax.Array:
    """(images + offset - mean) / std, cast to `dtype`.

    `mean` is per pixel [H, W, 3] (the paper's CIFAR input) or per channel [3]; `offset`
    [B, 3] is a per-image colour shift (the lighting augmentation), in pixel units.
    """
    images = images.astype(jnp.float32)
    if offset is not None:
        images = images + offset[:, None, None, :]
    return ((images - mean) / std).astype(dtype)


def lighting_offset(key: jax.Array, batch: int, std: float, eigenvalues: jax.Array,
                    eigenvectors: jax.Array) -> jax.Array:
    """AlexNet's PCA colour augmentation, as a per-image RGB shift [B, 3] in pixel units.

    Adds eigenvectors @ (alpha * eigenvalues) with alpha ~ N(0, std) per image to every
    pixel; the eigen-decomposition is of the RGB covariance of the training set, with
    pixels in [0, 1] (the values in the config are ImageNet's, from fb.resnet.torch).
    """
    alpha = std * jax.random.normal(key, (batch, 3))
    return 255.0 * (alpha * eigenvalues) @ eigenvectors.T


@dataclasses.dataclass(frozen=True)
class Lighting:
    """The lighting augmentation's strength and the data's RGB eigen-decomposition."""

    std: float
    eigenvalues: tuple[float, ...]
    eigenvectors: tuple[tuple[float, ...], ...]

    @classmethod
    def from_config(cls, stream: ml_collections.ConfigDict) -> Lighting:
        """From the `config.streaming` section."""
        return cls(stream.lighting_std, tuple(stream.lighting_eigenvalues),
                   tuple(map(tuple, stream.lighting_eigenvectors)))

    def offset(self, key: jax.Array, batch: int) -> jax.Array | None:
        """The per-image RGB shift [batch, 3] (`lighting_offset`); None when std is 0."""
        if self.std <= 0:
            return None
        return lighting_offset(key, batch, self.std, jnp.asarray(self.eigenvalues),
                               jnp.asarray(self.eigenvectors))


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
        batch = augment(key, images[indices], self.augment, self.pad_pixels)
        return self.normalize(batch), labels[indices]

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 images to the model's input (evaluation uses this alone)."""
        return normalize(images, self.pixel_mean, self.pixel_scale, self.dtype)


@dataclasses.dataclass(frozen=True)
class StreamedPreprocessing:
    """Streamed batches: (x + lighting - mean) / std, per channel."""

    mean: jax.Array  # float32 [3]
    std: jax.Array  # float32 [3]
    lighting: Lighting
    dtype: Any

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, dtype: Any) -> StreamedPreprocessing:
        stream = config.streaming
        return cls(jnp.asarray(stream.mean_rgb, jnp.float32),
                   jnp.asarray(stream.std_rgb, jnp.float32),
                   Lighting.from_config(stream), dtype)

    def train(self, key: jax.Array, images: jax.Array,
              labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The normalised images, shifted by a random lighting offset, and the labels."""
        offset = self.lighting.offset(key, images.shape[0])
        return normalize(images, self.mean, self.std, self.dtype, offset), labels

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 views to the model's input (evaluation uses this alone)."""
        return normalize(images, self.mean, self.std, self.dtype)
