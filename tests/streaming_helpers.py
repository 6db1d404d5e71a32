"""Helpers of the streaming tests (test_streaming, test_streaming_tfds, the streamed kill
test): a small image folder, its host augmentation, a tiny streamed config, and the resume
check."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from resnet_jax import configs
from resnet_jax.inputs import tf_pipelines

CLASSES = ('ant', 'bee', 'cat')


def write_folder(root, per_class=(6, 3), seed=0, png_every=5):
    """<root>/{train,val}/<class>/*.jpg of assorted sizes; the class is in the red channel."""
    rng = np.random.default_rng(seed)
    count = 0
    for split, n in zip(('train', 'val'), per_class, strict=True):
        for label, name in enumerate(CLASSES):
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(n):
                height, width = rng.integers(36, 80, 2)
                image = rng.integers(0, 256, (height, width, 3), np.uint8)
                image[..., 0] = 40 + 80 * label
                ext = 'png' if count % png_every == 0 else 'jpg'
                Image.fromarray(image).save(root / split / name / f'{i}.{ext}')
                count += 1
    return root


def augmentation(kind='scale'):
    return tf_pipelines.HostAugmentation(kind, 32, (36, 48), (0.3, 1.0), (0.75, 1.333), 36,
                                      (32, 40), (1.0, 1.5, 2.0))


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_deterministic_and_resumable(make_stream):
    """7 steps (3 per epoch) twice, and resumed at step 4 (mid-epoch): the same batches."""
    straight = take(make_stream().batches(0), 7)  # crosses two epoch boundaries
    again = take(make_stream().batches(0), 7)
    resumed = take(make_stream().batches(4), 3)
    for a, b in zip(straight, again, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    for a, b in zip(straight[4:], resumed, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # A new order and new crops each epoch.
    assert not np.array_equal(straight[0][0], straight[3][0])


def streaming_config(folder, **overrides):
    config = configs.get_base_config()
    config.pipeline = 'streaming'
    config.dataset = 'image_folder'
    config.data_dir = str(folder)
    config.image_size = 32
    config.model.name = 'cifar_resnet8'
    config.batch_size = 6
    config.eval_batch_size = 4
    config.total_steps = 4
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    stream = config.streaming
    stream.scale_range = (36, 48)
    stream.eval_resize = 36
    stream.lighting_std = 0.1
    stream.multi_scale_sizes = (32, 40)
    stream.multi_scale_aspect_ratios = (1.0, 1.5, 2.0)
    stream.eval_modes = ('center_crop', 'ten_crop', 'multi_scale')
    for key, value in overrides.items():
        config[key] = value
    return config


def final_state(workdir, step):
    return jax.tree.leaves(ocp.StandardCheckpointer().restore(
        workdir / 'checkpoints' / str(step) / 'state'))
