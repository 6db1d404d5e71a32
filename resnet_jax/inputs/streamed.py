"""The streamed input: tf.data decodes and augments on the hosts (ImageNet, image folders).

Importing this module imports TensorFlow; the training loop imports it only for
`config.pipeline = 'streaming'`, so the in-memory path never needs TensorFlow.
"""

from __future__ import annotations

import time

import jax
import ml_collections
import optax
from absl import logging

from resnet_jax import evaluation, parallel, steps
from resnet_jax.data import sources, tf_pipelines
from resnet_jax.inputs import base
from resnet_jax.inputs.preprocess import StreamedPreprocessing


def open_dataset(config: ml_collections.ConfigDict) -> sources.Source:
    """Opens the source that the config names (without reading it), and checks it fits."""
    tf_pipelines.limit_threads(config.streaming.threads)
    source = sources.open_source(config.dataset, config.data_dir)
    base.check_data_fits(config, source, config.image_size)
    return source


class StreamedInput:
    """The training loop's input (`base.Input`) for a data set streamed from files."""

    def __init__(self, config: ml_collections.ConfigDict, mesh, source, model,
                 tx: optax.GradientTransformation, schedule: optax.Schedule,
                 augment_key: jax.Array):
        self.config = config
        self.source = source
        self.num_classes = source.num_classes
        self.image_size = config.image_size
        self.eval_split = source.eval_split
        self.augmentation = tf_pipelines.HostAugmentation.from_config(config)
        stream = config.streaming
        self.train_stream = tf_pipelines.TrainStream(
            source, self.augmentation, seed=config.seed, global_batch=config.batch_size,
            process_index=jax.process_index(), process_count=jax.process_count(),
            shuffle_buffer=stream.shuffle_buffer, threads=stream.threads)
        self.steps_per_epoch = self.train_stream.steps_per_epoch
        self.eval_modes = tuple(stream.eval_modes)
        self.batch_sharding = parallel.batch_sharded(mesh)
        preprocessing = StreamedPreprocessing.from_config(config, model.dtype)
        self.train_step = steps.make_train_step(
            model, tx, schedule, mesh, preprocess=preprocessing.train,
            augment_key=augment_key, options=steps.StepOptions.from_config(config))
        self.predictor = evaluation.LocalPredictor(model, preprocessing.normalize)
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

    def evaluate(self, state, mode: str | None = None) -> dict[str, float]:
        """Exact evaluation of the eval split in `mode` (default: the first eval mode)."""
        mode = mode or self.eval_modes[0]
        start = time.perf_counter()
        index, count = jax.process_index(), jax.process_count()
        examples = tf_pipelines.eval_dataset(
            self.source, self.augmentation, mode, process_index=index, process_count=count,
            threads=self.config.streaming.threads)
        candidates = (tf_pipelines.eval_indices(self.source, index, count)
                      if self.source.random_access else None)
        variables = self.predictor.local_variables(state)
        local_batch = self.config.eval_batch_size // jax.process_count()
        totals = evaluation.evaluate_views(
            lambda views: self.predictor(variables, views),
            tf_pipelines.numpy_items(examples, self.source, self.eval_split, candidates),
            local_batch, pixels_per_batch=local_batch * self.image_size**2,
            multiple=self.predictor.num_devices)
        results = evaluation.as_metrics(evaluation.sum_over_processes(totals),
                                        self.source.num_examples(self.eval_split))
        logging.info('Evaluated %s (%s) in %.1f s.', self.eval_split, mode,
                     time.perf_counter() - start)
        return results
