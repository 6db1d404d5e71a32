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


def normalize(images: jax.Array, pixel_mean: jax.Array, dtype) -> jax.Array:
    """Per-pixel mean subtraction (the paper), in units of 1/255, cast to `dtype`."""
    return ((images.astype(jnp.float32) - pixel_mean) / 255.0).astype(dtype)
