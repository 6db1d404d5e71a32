"""Decoding, cropping and resizing of single images on the host, as TensorFlow ops.

These are the map functions of the streaming pipeline. Every random choice is a stateless
function of a per-example seed, so an example's crop and flip depend only on the run's
seed and the example's position in the data order: the same on any number of processes
and after a resume. JPEGs are decoded only inside the crop window where the crop does not
need the whole image (`decode_and_crop_jpeg`); other formats are decoded whole.

All outputs are uint8; the mean subtraction and the colour (lighting) augmentation run on
the device, on the batch (see `device_preprocessing.py`), which keeps host work and transfers small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from resnet_jax.inputs import streaming_choices

# A window is (offset_y, offset_x, height, width) in pixels of the original image.
Window = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]


def _decode_whole(encoded: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def decode_window(encoded: tf.Tensor, window_fn: Callable[[tf.Tensor, tf.Tensor], Window]
                  ) -> tf.Tensor:
    """Decodes the window `window_fn(height, width)` of an image, uint8 [h, w, 3]."""
    def jpeg():
        shape = tf.image.extract_jpeg_shape(encoded)
        window = tf.stack(window_fn(shape[0], shape[1]))
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)

    def other():
        image = _decode_whole(encoded)
        shape = tf.shape(image)
        y, x, h, w = window_fn(shape[0], shape[1])
        return image[y:y + h, x:x + w]

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    return tf.ensure_shape(image, [None, None, 3])


def resize_to(image: tf.Tensor, height, width) -> tf.Tensor:
    """Resizes (bilinear, antialiased when shrinking) and returns uint8."""
    size = tf.stack([height, width])
    # Antialiasing changes nothing when enlarging but runs a kernel several times slower
    # (half the scale-augmentation crops and most multi-scale views enlarge).
    resized = tf.cond(
        tf.reduce_any(size < tf.shape(image)[:2]),
        lambda: tf.image.resize(image, size, method='bilinear', antialias=True),
        lambda: tf.image.resize(image, size, method='bilinear'))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _uniform_int(seed: tf.Tensor, low, high_inclusive) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high_inclusive + 1,
                                       dtype=tf.int32)


def scale_crop_window(seed: tf.Tensor, crop_size: int, scale_range: Sequence[int]):
    """The paper's scale augmentation as a window of the original image.

    Resizing the shorter side to S ~ U[scale_range] and taking a random crop_size square
    equals taking a random square of crop_size * shorter / S original pixels and resizing
    that to crop_size, which lets a JPEG decode only the window.
    """
    size_seed, y_seed, x_seed = (tf.random.experimental.stateless_fold_in(seed, i)
                                 for i in range(3))

    def window_fn(height, width):
        scale = _uniform_int(size_seed, scale_range[0], scale_range[1])
        shorter = tf.minimum(height, width)
        side = tf.cast(tf.round(crop_size * tf.cast(shorter, tf.float32)
                                / tf.cast(scale, tf.float32)), tf.int32)
        side_y, side_x = tf.minimum(side, height), tf.minimum(side, width)
        return (_uniform_int(y_seed, 0, height - side_y), _uniform_int(x_seed, 0, width - side_x),
                side_y, side_x)

    return window_fn


def inception_crop_window(seed: tf.Tensor, area_range: Sequence[float],
                          aspect_range: Sequence[float]):
    """The Inception (GoogLeNet) random-resized crop: a random area and aspect ratio."""
    def window_fn(height, width):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.stack([height, width, 3]), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
            min_object_covered=0.0, aspect_ratio_range=tuple(aspect_range),
            area_range=tuple(area_range), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        return begin[0], begin[1], size[0], size[1]

    return window_fn


def center_crop_window(crop_size: int, resize_size: int):
    """The centre crop_size square after resizing the shorter side to resize_size."""
    def window_fn(height, width):
        shorter = tf.cast(tf.minimum(height, width), tf.float32)
        side = tf.cast(tf.round(crop_size * shorter / resize_size), tf.int32)
        side_y, side_x = tf.minimum(side, height), tf.minimum(side, width)
        return (height - side_y) // 2, (width - side_x) // 2, side_y, side_x

    return window_fn


def train_image(encoded: tf.Tensor, seed: tf.Tensor, *, kind: str, crop_size: int,
                scale_range: Sequence[int], area_range: Sequence[float],
                aspect_range: Sequence[float]) -> tf.Tensor:
    """A training view: 'scale' (the paper), 'inception' or 'none' (centre crop); flipped."""
    crop_seed, flip_seed = (tf.random.experimental.stateless_fold_in(seed, i) for i in (7, 8))
    if kind == 'scale':
        window_fn = scale_crop_window(crop_seed, crop_size, scale_range)
    elif kind == 'inception':
        window_fn = inception_crop_window(crop_seed, area_range, aspect_range)
    elif kind == 'none':
        window_fn = center_crop_window(crop_size, crop_size)
    else:
        raise ValueError(f'unknown host augmentation {kind!r}; choose one of '
                         f'{streaming_choices.HOST_AUGMENTATIONS}')
    image = resize_to(decode_window(encoded, window_fn), crop_size, crop_size)
    if kind != 'none':
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return image


def center_crop(encoded: tf.Tensor, crop_size: int, resize_size: int) -> tf.Tensor:
    """[1, crop, crop, 3]: the single centre crop of the standard evaluation."""
    window_fn = center_crop_window(crop_size, resize_size)
    return resize_to(decode_window(encoded, window_fn), crop_size, crop_size)[None]


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes so that the shorter side is `size`, keeping the aspect ratio."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    return resize_to(image, tf.maximum(new[0], size), tf.maximum(new[1], size))


def ten_crop(encoded: tf.Tensor, crop_size: int, resize_size: int) -> tf.Tensor:
    """[10, crop, crop, 3]: the four corners and the centre, and their mirror images.

    The 10-crop testing of AlexNet that the paper uses for its comparisons (Table 3),
    after resizing the shorter side to resize_size.
    """
    image = resize_shorter_side(_decode_whole(encoded), resize_size)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    c = crop_size
    offsets = [(0, 0), (0, width - c), (height - c, 0), (height - c, width - c),
               ((height - c) // 2, (width - c) // 2)]
    crops = tf.stack([image[y:y + c, x:x + c] for y, x in offsets])
    # tf.reverse, not a ::-1 slice: the same result about ten times faster.
    return tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)


def multi_scale_views(encoded: tf.Tensor, sizes: Sequence[int],
                      aspect_ratios: Sequence[float]) -> dict[str, tf.Tensor]:
    """The whole image at each shorter side of `sizes`, for fully-convolutional testing.

    The paper (Table 4) averages the scores of the fully-convolutional network over
    shorter sides {224, 256, 384, 480, 640}. To batch images of different shapes, the
    longer side's ratio is rounded down to the nearest of `aspect_ratios` by cutting the
    longer side equally on both ends (no distortion), so a few shapes per size occur.
    """
    image = _decode_whole(encoded)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    shorter, longer = tf.minimum(height, width), tf.maximum(height, width)
    ratio = tf.cast(longer, tf.float32) / tf.cast(shorter, tf.float32)
    ratios = tf.constant(sorted(aspect_ratios), tf.float32)
    # The largest allowed ratio not above the image's own (the smallest if all are above).
    snapped = tf.reduce_max(tf.where(ratios <= ratio + 1e-6, ratios, ratios[0]))
    keep = tf.minimum(longer, tf.cast(tf.round(tf.cast(shorter, tf.float32) * snapped),
                                      tf.int32))
    cut = (longer - keep) // 2
    image = tf.cond(height >= width, lambda: image[cut:cut + keep],
                    lambda: image[:, cut:cut + keep])
    views = {}
    for size in sizes:
        target_long = tf.cast(tf.round(size * snapped), tf.int32)
        views[f'size{size}'] = tf.cond(
            height >= width,
            lambda s=size, t=target_long: resize_to(image, t, s),
            lambda s=size, t=target_long: resize_to(image, s, t))[None]
    return views
