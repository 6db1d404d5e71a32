"""A model's evaluation preprocessing, for single image files (numpy and Pillow, no TF).

Two kinds, as the two input paths evaluate:

- streamed data sets (ImageNet, tfds, streamed image folders; converted torchvision
  models): the centre `image_size` square after resizing the shorter side to
  `streaming.eval_resize` (224 of 256), taken as the streaming evaluation takes it (the
  same window, bilinear and antialiased; Pillow's resampling may differ from
  TensorFlow's by a grey level), then (pixels - mean_rgb) / std_rgb;
- in-memory data sets (CIFAR-10, small image folders): the image as it is (resized,
  bicubic, to the data set's side only if it has another size, as an in-memory image
  folder with `image_size` set is loaded), minus the training set's per-pixel mean, / 255.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_jax import configs
from resnet_jax.inputs import in_memory


class ImageReadError(ValueError):
    """An image file that cannot be read or decoded; the message names it."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Image file -> float32 [image_size, image_size, 3], normalised as the model expects."""

    image_size: int
    resize: int | None  # shorter side before the centre crop; None: in-memory (as it is)
    mean: np.ndarray  # [3] per channel, or [H, W, 3] per pixel
    std: np.ndarray | float

    def __call__(self, path: str) -> np.ndarray:
        image = read_rgb(path)
        if self.resize is None:
            if image.size != (self.image_size, self.image_size):
                image = image.resize((self.image_size, self.image_size),
                                     Image.Resampling.BICUBIC)
        else:
            image = center_crop(image, self.image_size, self.resize)
        pixels = np.asarray(image, np.float32)
        return ((pixels - self.mean) / self.std).astype(np.float32)

    def describe(self) -> str:
        if self.resize is None:
            return (f'{self.image_size}px as they are (bicubic resize if another size), '
                    'minus the training set\'s per-pixel mean, / 255')
        return (f'shorter side {self.resize}, centre {self.image_size} crop, '
                'per-channel mean/std normalisation')


def read_rgb(path: str) -> Image.Image:
    """The image at `path` as RGB; ImageReadError naming it if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return image.convert('RGB')
    except (OSError, UnidentifiedImageError, ValueError) as error:
        reason = getattr(error, 'strerror', None) or str(error).splitlines()[0]
        raise ImageReadError(f'cannot read image {path}: {reason}') from error


def center_crop(image: Image.Image, crop_size: int, resize_size: int) -> Image.Image:
    """The centre crop_size square after resizing the shorter side to resize_size, as
    `host_augment.center_crop_window` takes it: the window is cut first, then resized."""
    width, height = image.size
    side = int(round(crop_size * min(width, height) / resize_size))
    side_y, side_x = min(side, height), min(side, width)
    top, left = (height - side_y) // 2, (width - side_x) // 2
    window = image.crop((left, top, left + side_x, top + side_y))
    return window.resize((crop_size, crop_size), Image.Resampling.BILINEAR)


def from_config(config: ml_collections.ConfigDict) -> Preprocessing:
    """The evaluation preprocessing of a model trained with `config`.

    For an in-memory data set the training images are loaded (from the data set's cache
    when there is one) for their per-pixel mean.
    """
    if configs.pipeline(config) == 'streaming':
        stream = config.streaming
        return Preprocessing(int(config.image_size), int(stream.eval_resize),
                             np.asarray(stream.mean_rgb, np.float32),
                             np.asarray(stream.std_rgb, np.float32))
    data = in_memory.load_dataset(config)
    mean = data.train_images.mean(axis=0, dtype=np.float64).astype(np.float32)
    return Preprocessing(data.image_size, None, mean, float(config.pixel_scale))
