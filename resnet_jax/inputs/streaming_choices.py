"""The names a config may give the streaming pipeline's data sets, augmentations and evaluations.

They live here, apart from the tf.data code that implements them (sources.py,
host_augment.py, tf_pipelines.py), so that a config can be validated without importing
TensorFlow.
"""

# `config.dataset` with the streaming pipeline ('tfds:NAME' for any tfds image
# classification data set).
STREAMING_DATASETS = ('image_folder', 'imagenet2012', 'tfds:NAME')
# `config.streaming.augment`: the host augmentation of the training images.
HOST_AUGMENTATIONS = ('scale', 'inception', 'none')
# `config.streaming.eval_modes`: the ways of evaluating an image.
EVAL_MODES = ('center_crop', 'ten_crop', 'multi_scale')


def is_streaming_only(dataset: str) -> bool:
    """Whether `config.dataset` names a data set only the streaming pipeline reads."""
    return dataset == 'imagenet2012' or dataset.startswith('tfds:')
