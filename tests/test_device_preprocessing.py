"""The paper's CIFAR augmentation on the device: pad, random crop, flip; mean subtraction."""

import jax
import jax.numpy as jnp
import numpy as np
from rounding import BFLOAT16_ROUNDOFF, assert_equal_up_to_rounding

from resnet_jax.inputs import device_preprocessing as augment


def _images(n=40, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, (n, size, size, 3), dtype=np.uint8)


def _windows(image, pad):
    """Every crop of the zero-padded image and of its mirror image."""
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    size = image.shape[0]
    for source in (padded, padded[:, ::-1]):
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                yield source[dy:dy + size, dx:dx + size]


def test_each_output_is_a_crop_of_the_padded_or_flipped_image():
    images = _images()
    out = np.asarray(jax.jit(
        lambda key, x: augment.augment(key, x, 'pad_crop_flip', 2))(jax.random.key(0), images))
    assert out.shape == images.shape and out.dtype == np.uint8
    for image, result in zip(images, out, strict=True):
        assert any(np.array_equal(result, w) for w in _windows(image, 2))
    # Random: most images moved, and both flips and zero borders occur.
    assert np.mean([np.array_equal(a, b) for a, b in zip(images, out, strict=True)]) < 0.3
    assert (out == 0).any()


def test_flip_only_and_none():
    images = _images()
    flipped = np.asarray(augment.augment(jax.random.key(1), images, 'flip', 4))
    for image, result in zip(images, flipped, strict=True):
        assert np.array_equal(result, image) or np.array_equal(result, image[:, ::-1])
    assert not np.array_equal(flipped, images)
    np.testing.assert_array_equal(augment.augment(jax.random.key(1), images, 'none', 4), images)


def test_different_keys_give_different_crops():
    images = _images()
    a = augment.augment(jax.random.key(0), images, 'pad_crop_flip', 4)
    b = augment.augment(jax.random.key(1), images, 'pad_crop_flip', 4)
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_normalize_subtracts_the_per_pixel_mean():
    images = _images(4)
    mean = images.mean(axis=0).astype(np.float32)
    out = augment.normalize(jnp.asarray(images), jnp.asarray(mean), 255.0, jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    # Computed in float32 and rounded once to bfloat16.
    want = (images - mean) / 255.0
    assert_equal_up_to_rounding(np.asarray(out, np.float32), want, terms=1,
                                roundoff=BFLOAT16_ROUNDOFF, scale=np.abs(want))
