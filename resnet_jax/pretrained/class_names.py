"""The names of a model's classes, from what its config says it was trained on.

ImageNet's 1000 names ship with the package (`resnet_jax/pretrained/imagenet_classes.txt`, in
the order of the labels of torchvision's weights and of tfds' imagenet2012, which is the
sorted WordNet ids); CIFAR-10's are fixed; an image folder's are its sorted class
folders, read again from the config's `data_dir` when it is still there.
"""

from __future__ import annotations

import importlib.resources
import os

import ml_collections

from resnet_jax.inputs import arrays


def imagenet() -> list[str]:
    """ImageNet-1k's class names, label order (index 0: 'tench')."""
    text = importlib.resources.files('resnet_jax.pretrained').joinpath('imagenet_classes.txt')
    return text.read_text(encoding='utf-8').splitlines()


def for_config(config: ml_collections.ConfigDict, num_classes: int) -> list[str] | None:
    """The class names of a model trained with `config`, or None when they are unknown."""
    names: list[str] | None = None
    if config.dataset == 'imagenet2012':
        names = imagenet()
    elif config.dataset == 'cifar10':
        names = list(arrays.CIFAR10_CLASSES)
    elif config.dataset == 'image_folder' and config.data_dir:
        train = os.path.join(os.path.expanduser(config.data_dir), 'train')
        if os.path.isdir(train):  # labels are the sorted train class folders (arrays.py)
            names = sorted(entry.name for entry in os.scandir(train)
                           if entry.is_dir() and not entry.name.startswith('.'))
    return names if names is not None and len(names) == num_classes else None
