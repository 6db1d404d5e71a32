"""The streamed input: tf.data decodes and augments on the hosts (ImageNet, image folders).

Importing this module imports TensorFlow; the training loop imports it only for
`config.pipeline = 'streaming'`, so the in-memory path never needs TensorFlow.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from resnet_jax import parallel
from resnet_jax.inputs import base, sources, tf_pipelines
from resnet_jax.inputs.device_preprocessing import StreamedPreprocessing


def open_dataset(config: ml_collections.ConfigDict) -> sources.Source:
    """Opens the source that the config names (without reading it), and checks it fits."""
    tf_pipelines.limit_threads(config.streaming.threads)
    source = sources.open_source(config.dataset, config.data_dir)
    base.check_data_fits(config, source, config.image_size)
    return source


class StreamedInput:
    """The training loop's input (`base.Input`) for a data set streamed from files."""

    def __init__(self, config: ml_collections.ConfigDict, mesh, source: sources.Source,
                 dtype: Any):
        self.source = source
        self.num_classes = source.num_classes
        self.image_size = config.image_size
        self.eval_split = source.eval_split
        self.threads = config.streaming.threads
        self.augmentation = tf_pipelines.HostAugmentation.from_config(config)
        stream = config.streaming
        self.train_stream = tf_pipelines.TrainStream(
            source, self.augmentation, seed=config.seed, global_batch=config.batch_size,
            process_index=jax.process_index(), process_count=jax.process_count(),
            shuffle_buffer=stream.shuffle_buffer, threads=stream.threads)
        self.steps_per_epoch = self.train_stream.steps_per_epoch
        self.eval_modes = tuple(stream.eval_modes)
        self.batch_sharding = parallel.batch_sharded(mesh)
        self.preprocessing = StreamedPreprocessing.from_config(config, dtype)
        self.description = (
            f'{source.description}, {source.num_examples("train")} train / '
            f'{source.num_examples(self.eval_split)} {self.eval_split} examples, '
            f'{self.num_classes} classes, streamed at {self.image_size}px '
            f'({stream.augment} augmentation)')

    def batches(self, start_step: int):
        """Global (images, labels) from step `start_step` on, transferred ahead of use."""
        return tf_pipelines.prefetch_to_device(
            self.train_stream.batches(start_step),
            lambda batch: tf_pipelines.to_global(batch, self.batch_sharding))

    def eval_data(self, mode: str) -> base.EvalExamples:
        """This process's share of the eval split, decoded and cut into `mode`'s views."""
        index, count = jax.process_index(), jax.process_count()
        examples = tf_pipelines.eval_dataset(
            self.source, self.augmentation, mode, process_index=index, process_count=count,
            threads=self.threads)
        candidates = (tf_pipelines.eval_indices(self.source, index, count)
                      if self.source.random_access else None)
        return base.EvalExamples(
            tf_pipelines.numpy_items(examples, self.source, self.eval_split, candidates),
            self.source.num_examples(self.eval_split), self.image_size)
