"""The streaming input path: tf.data decodes and augments on the hosts (ImageNet, folders).

Importing this module imports TensorFlow; the training loop imports it only for
`config.pipeline = 'streaming'`, so the in-memory path never needs TensorFlow.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from resnet_jax import configs, evaluation, models, parallel, steps
from resnet_jax.data import sources, streaming


class StreamingInput:
    """The training loop's input for data sets streamed from files."""

    def __init__(self, config: ml_collections.ConfigDict, mesh):
        self.config = config
        self.mesh = mesh
        start = time.perf_counter()
        streaming.limit_threads(config.streaming.threads)
        self.source = sources.open_source(config.dataset, config.data_dir)
        self.num_classes = self.source.num_classes
        self.image_size = config.image_size
        self.eval_split = self.source.eval_split
        _check_source_fits(config, self.source)
        self.augmentation = streaming.HostAugmentation.from_config(config)
        stream = config.streaming
        self.train_stream = streaming.TrainStream(
            self.source, self.augmentation, seed=config.seed, global_batch=config.batch_size,
            process_index=jax.process_index(), process_count=jax.process_count(),
            shuffle_buffer=stream.shuffle_buffer, threads=stream.threads)
        self.steps_per_epoch = self.train_stream.steps_per_epoch
        self.eval_modes = tuple(stream.eval_modes)
        self.mean = jnp.asarray(stream.mean_rgb, jnp.float32)
        self.std = jnp.asarray(stream.std_rgb, jnp.float32)
        self.batch_sharding = parallel.batch_sharded(mesh)
        self.description = (
            f'{self.source.description}, {self.source.num_examples("train")} train / '
            f'{self.source.num_examples(self.eval_split)} {self.eval_split} examples, '
            f'{self.num_classes} classes, streamed at {self.image_size}px '
            f'({config.streaming.augment} augmentation; opened in '
            f'{time.perf_counter() - start:.1f} s)')
        self.predictor = None

    def make_train_step(self, model, tx, schedule, augment_key):
        """The jitted step; its arguments after the state are what `batches` yields."""
        lighting = steps.Lighting.from_config(self.config.streaming)
        self.predictor = evaluation.LocalPredictor(model, self.mean, self.std)
        return steps.make_batch_train_step(
            model, tx, schedule, self.mesh, mean=self.mean, std=self.std, lighting=lighting,
            augment_key=augment_key, skip_nonfinite=self.config.skip_nonfinite_steps)

    def batches(self, start_step: int):
        """Global (images, labels) from step `start_step` on, transferred ahead of use."""
        return streaming.prefetch_to_device(
            self.train_stream.batches(start_step),
            lambda batch: streaming.to_global(batch, self.batch_sharding))

    def evaluate(self, state, mode: str | None = None) -> dict[str, float]:
        """Exact evaluation of the eval split in `mode` (default: the first eval mode)."""
        mode = mode or self.eval_modes[0]
        start = time.perf_counter()
        index, count = jax.process_index(), jax.process_count()
        examples = streaming.eval_dataset(
            self.source, self.augmentation, mode, process_index=index, process_count=count,
            threads=self.config.streaming.threads)
        candidates = (streaming.eval_indices(self.source, index, count)
                      if self.source.random_access else None)
        variables = self.predictor.local_variables(state)
        local_batch = self.config.eval_batch_size // jax.process_count()
        totals = evaluation.evaluate_views(
            lambda views: self.predictor(variables, views),
            streaming.numpy_items(examples, self.source, self.eval_split, candidates),
            local_batch, pixels_per_batch=local_batch * self.image_size**2,
            multiple=self.predictor.num_devices)
        results = evaluation.as_metrics(evaluation.sum_over_processes(totals),
                                        self.source.num_examples(self.eval_split))
        logging.info('Evaluated %s (%s) in %.1f s.', self.eval_split, mode,
                     time.perf_counter() - start)
        return results


def _check_source_fits(config: ml_collections.ConfigDict, source) -> None:
    """The model, classes and batch size must suit the data set that was opened."""
    smallest = models.min_image_size(config.model.name)
    if config.image_size < smallest:
        raise configs.ConfigError(
            f'{config.model.name} needs images of at least {smallest}px; image_size is '
            f'{config.image_size}')
    if config.num_classes is not None and config.num_classes != source.num_classes:
        raise configs.ConfigError(
            f'num_classes={config.num_classes} but {source.description} has '
            f'{source.num_classes}; leave num_classes unset to take it from the data')
    train_examples = source.num_examples('train')
    if config.batch_size > train_examples:
        raise configs.ConfigError(
            f'batch_size={config.batch_size} exceeds the {train_examples} training examples')

