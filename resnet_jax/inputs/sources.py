"""Where the streaming pipeline reads encoded examples from: image folders and tfds.

A source yields (encoded image bytes, label) and knows its splits' sizes and classes.
An image folder is read by index (any order, any share, resumable at no cost); a
tfds-prepared data set (ImageNet's usual TFRecord form) is read as a stream of
files, each process its own even share of every split.
"""

from __future__ import annotations

import os
import time

import tensorflow as tf

from resnet_jax import packages
from resnet_jax.inputs import arrays

DatasetNotFoundError = arrays.DatasetNotFoundError

IMAGENET_PREPARE_STEPS = """\
ImageNet (ILSVRC 2012) must be downloaded by hand and prepared once for tensorflow-datasets:
  1. Register at https://image-net.org/download-images and download
     ILSVRC2012_img_train.tar (138 GB) and ILSVRC2012_img_val.tar (6.3 GB) into a
     folder, say ~/imagenet_tars.
  2. pip install -e .  (in the repository; it installs tensorflow-datasets)
  3. tfds build imagenet2012 --manual_dir ~/imagenet_tars --data_dir DATA_DIR
     (a few hours; DATA_DIR may be a gs:// bucket, or copy the result there afterwards).
  4. Run with --config.data_dir=DATA_DIR."""


class ImageFolderSource:
    """`<root>/<split>/<class>/<image>`, any image sizes, read by index."""

    random_access = True

    def __init__(self, root: str):
        if not root:
            raise DatasetNotFoundError(
                'the image_folder data set needs --config.data_dir: a folder with train/ and '
                'val/ (or test/) subfolders of class folders')
        self.root = os.path.abspath(os.path.expanduser(root))
        listing = arrays.list_image_folder(self.root)
        self.class_names = listing.class_names
        self.num_classes = len(listing.class_names)
        self.eval_split = listing.eval_split
        self._files = {'train': (listing.train_paths, listing.train_labels),
                       self.eval_split: (listing.eval_paths, listing.eval_labels)}
        self.description = self.root

    def num_examples(self, split: str) -> int:
        return len(self._files[split][1])

    def read(self, split: str, indices: tf.data.Dataset) -> tf.data.Dataset:
        """Maps a dataset of example indices to (encoded, label), in the same order."""
        paths, labels = self._files[split]
        paths, labels = tf.constant(paths), tf.constant(labels, tf.int32)

        def read_one(index, *rest):
            return (tf.io.read_file(tf.gather(paths, index)), tf.gather(labels, index), *rest)

        return indices.map(read_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def find_undecodable(self, split: str, indices) -> str | None:
        """The first file among `indices` of `split` that TensorFlow cannot decode, if any."""
        paths = self._files[split][0]
        for index in indices:
            try:
                tf.io.decode_image(tf.io.read_file(paths[index]), channels=3,
                                   expand_animations=False)
            except tf.errors.OpError:
                return paths[index]
        return None


class TfdsSource:
    """A tfds-prepared image classification data set ('image' and 'label' features)."""

    random_access = False

    def __init__(self, name: str, data_dir: str):
        tfds = packages.import_for('tensorflow_datasets', f'the tfds data set {name!r}')
        self._tfds = tfds
        start = time.perf_counter()
        self.builder = tfds.builder(name, data_dir=data_dir or None)
        if not self.builder.is_prepared():
            raise DatasetNotFoundError(_not_prepared_message(name, self.builder.data_dir,
                                                             time.perf_counter() - start))
        info = self.builder.info
        splits = info.splits
        self.eval_split = 'validation' if 'validation' in splits else 'test'
        if 'train' not in splits or self.eval_split not in splits:
            raise DatasetNotFoundError(
                f'{name} in {self.builder.data_dir} has splits {sorted(splits)}; a train '
                'split and a validation (or test) split are needed')
        self.class_names = tuple(info.features['label'].names)
        self.num_classes = info.features['label'].num_classes
        self._sizes = {split: splits[split].num_examples for split in splits}
        self.description = f'tfds:{name} in {self.builder.data_dir}'

    def num_examples(self, split: str) -> int:
        return self._sizes[split]

    def process_share(self, split: str, process_index: int, process_count: int) -> str:
        """This process's part of `split`: an even share, disjoint from the others'."""
        return self._tfds.even_splits(split, process_count)[process_index]

    def stream(self, split: str, process_index: int, process_count: int,
               shuffle_seed: int | None) -> tf.data.Dataset:
        """(encoded, label) of this process's share; files in a seeded order if a seed is given."""
        tfds = self._tfds
        options = tf.data.Options()
        options.deterministic = True
        read_config = tfds.ReadConfig(options=options, shuffle_seed=shuffle_seed,
                                      interleave_cycle_length=16, interleave_block_length=1,
                                      try_autocache=False)
        dataset = self.builder.as_dataset(
            split=self.process_share(split, process_index, process_count),
            shuffle_files=shuffle_seed is not None, read_config=read_config,
            decoders={'image': tfds.decode.SkipDecoding()})
        return dataset.map(lambda example: (example['image'], tf.cast(example['label'], tf.int32)))


def read_error(source, split: str, candidates, error: tf.errors.OpError) -> arrays.DataError:
    """A one-line DataError for a failed read: the file's path where the source has files.

    tf.data's decode errors do not say which example failed. For an image folder the
    examples from `candidates` on (the order in which they were read) are decoded one by
    one to find it; this happens only after a failure.
    """
    reason = (error.message or type(error).__name__).splitlines()[0]
    path = (source.find_undecodable(split, candidates)
            if source.random_access and candidates is not None else None)
    if path is not None:
        return arrays.DataError(f'cannot decode image {path}: {reason}')
    return arrays.DataError(f'cannot read an example of the {split} split of '
                            f'{source.description}: {reason}')


def _not_prepared_message(name: str, looked_in: str, seconds: float) -> str:
    message = (f'the tfds data set {name!r} is not prepared: looked for {looked_in} '
               f'(checked in {seconds:.1f} s). Point --config.data_dir at the tfds data '
               'directory that holds it.')
    if name == 'imagenet2012':
        message += '\n' + IMAGENET_PREPARE_STEPS
    else:
        message += f' To prepare it: tfds build {name} --data_dir DATA_DIR'
    return message


Source = ImageFolderSource | TfdsSource


def open_source(dataset: str, data_dir: str) -> Source:
    """The source that `config.dataset` names: 'image_folder', 'imagenet2012' or 'tfds:NAME'."""
    if dataset == 'image_folder':
        return ImageFolderSource(data_dir)
    name = 'imagenet2012' if dataset == 'imagenet2012' else dataset.removeprefix('tfds:')
    return TfdsSource(name, data_dir)

