"""The paper's CIFAR augmentation and input normalisation, run on the device.

All functions are pure and vectorised over the batch, so they run inside the jitted
train step on the uint8 images that stay on the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
