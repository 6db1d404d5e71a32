"""The training loop: `train_and_evaluate(config, workdir)`.

Everything that can fail fast (the config, the device count, the workdir, the data)
is checked before the first compilation. The loop never waits on the device except
every `log_every_steps`, at evaluations and at checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from resnet_jax import (
    checkpoint,
    configs,
    metrics,
    optim,
    parallel,
    preemption,
    steps,
    train_state,
)
from resnet_jax.data import arrays
from resnet_jax.workdir import WorkdirError, check_free_space, prepare_workdir, save_config

__all__ = ['WorkdirError', 'NonFiniteLossError', 'train_and_evaluate']


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class BatchOrder:
    """Which examples form the global batch of each step: a new permutation every epoch.

    A function of (seed, step) alone, so a resumed run continues the same order.
    The examples left over at the end of an epoch are skipped (the next epoch's
    permutation covers them).
    """

    num_examples: int
    batch_size: int
    seed: int
    _epoch: int = -1
    _permutation: np.ndarray | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    def indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._permutation = rng.permutation(self.num_examples).astype(np.int32)
            self._epoch = epoch
        start = position * self.batch_size
        return self._permutation[start:start + self.batch_size]


def load_data(config: ml_collections.ConfigDict) -> arrays.ArrayDataset:
    """Loads the in-memory data set that the config names."""
    synthetic = config.synthetic
    return arrays.load_dataset(
        config.dataset,
        config.data_dir,
        validation_examples=config.validation_examples,
        image_size=config.image_size,
        num_classes=config.num_classes,
        num_train_examples=synthetic.num_train_examples,
        num_eval_examples=synthetic.num_eval_examples,
        seed=config.seed,
    )


def check_data_fits(config: ml_collections.ConfigDict, data: arrays.ArrayDataset) -> None:
    """The model and batch size must suit the data set that was loaded."""
    from resnet_jax import models

    image_size = data.train_images.shape[1]
    if config.image_size is not None and config.image_size != image_size:
        raise configs.ConfigError(
            f'image_size={config.image_size} but the data set holds {image_size}px images; '
            'leave image_size unset to take it from the data')
    smallest = models.min_image_size(config.model.name)
    if image_size < smallest:
        raise configs.ConfigError(
            f'{config.model.name} needs images of at least {smallest}px; the data has '
            f'{image_size}px')
    if config.num_classes is not None and config.num_classes != data.num_classes:
        raise configs.ConfigError(
            f'num_classes={config.num_classes} but the data set has {data.num_classes}')
    if config.batch_size > len(data.train_labels):
        raise configs.ConfigError(
            f'batch_size={config.batch_size} exceeds the {len(data.train_labels)} training '
            'examples')


def evaluate(eval_step, state, images, labels, batch_size: int, mesh) -> dict[str, float]:
    """Exact evaluation: the last batch is padded and masked, every example counts once."""
    num = int(labels.shape[0])
    replicated = parallel.replicated(mesh)
    totals = None
    for start in range(0, num, batch_size):
        real = min(batch_size, num - start)
        indices = np.zeros(batch_size, np.int32)
        indices[:real] = np.arange(start, start + real)
        mask = (np.arange(batch_size) < real).astype(np.float32)
        sums = eval_step(state, images, labels, parallel.global_array(indices, replicated),
                         parallel.global_array(mask, replicated))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals['count'])
    assert count == num, f'evaluated {count} examples of {num}'
    return {
        'loss': float(totals['loss']) / count,
        'top1_accuracy': float(totals['top1']) / count,
        'top5_accuracy': float(totals['top5']) / count,
    }


def _finite_mean(values) -> float:
    """Mean over the finite values (skipped steps report NaN losses); NaN if none."""
    finite = [float(v) for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float('nan')


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


def run_record(config: ml_collections.ConfigDict, model) -> dict:
    """What a checkpoint of this run holds; a resumed run must match it."""
    return {'model': {'name': config.model.name, 'shortcut': model.shortcut,
                      'variant': config.model.variant},
            'num_classes': model.num_classes}


def build_model_and_optimizer(config: ml_collections.ConfigDict, num_classes: int,
                              steps_per_epoch: int):
    """The model, optimiser, schedule and run length in steps that `config` describes."""
    total_steps = configs.total_steps(config, steps_per_epoch)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch, total_steps)
    tx = optim.make_optimizer(config, schedule)
    bn_axis = parallel.DATA_AXIS if config.sync_batch_norm else None
    model = configs.build_model(config, num_classes, bn_axis_name=bn_axis)
    return model, tx, schedule, total_steps


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """The initialisation key and the augmentation key of a run."""
    # 'rbg' keys make the initialiser compile several times faster on CPU than threefry;
    # the augmentation keeps threefry, whose numbers do not depend on the sharding.
    return jax.random.key(seed, impl='rbg'), jax.random.fold_in(jax.random.key(seed), 1)


def build_steps(config: ml_collections.ConfigDict, model, tx, schedule, mesh,
                augment_key: jax.Array, train_images: np.ndarray):
    """The jitted train and eval steps of a run; the per-pixel mean is the train set's."""
    pixel_mean = jnp.asarray(train_images.mean(axis=0, dtype=np.float64), jnp.float32)
    train_step = steps.make_train_step(
        model, tx, schedule, mesh, pixel_mean=pixel_mean, augment=config.augment,
        pad_pixels=config.pad_pixels, augment_key=augment_key,
        skip_nonfinite=config.skip_nonfinite_steps)
    return train_step, steps.make_eval_step(model, mesh, pixel_mean=pixel_mean)


def check_intervals(config: ml_collections.ConfigDict, total_steps: int) -> None:
    """Intervals that can never trigger are mistakes (usually steps given for epochs)."""
    if config.eval_every_steps > total_steps:
        raise configs.ConfigError(
            f'eval_every_steps={config.eval_every_steps} is longer than the run '
            f'({total_steps} steps): it would never evaluate before the end; lower it or set 0')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains the model of `config`, resuming from `workdir`, and returns the final eval.

    Raises preemption.Preempted after saving when the process receives SIGTERM.
    """
    configs.validate_config(config)
    mesh = parallel.make_mesh()
    parallel.check_divisible(config.batch_size, mesh, 'batch_size')
    parallel.check_divisible(config.eval_batch_size, mesh, 'eval_batch_size')
    workdir_path = prepare_workdir(workdir)

    data = load_data(config)
    check_data_fits(config, data)
    image_size = data.train_images.shape[1]
    logging.info('Data: %s, %d train / %d %s examples of %dpx, %d classes.', data.source,
                 len(data.train_labels), len(data.eval_labels), data.eval_split, image_size,
                 data.num_classes)

    order = BatchOrder(len(data.train_labels), config.batch_size, config.seed)
    model, tx, schedule, total_steps = build_model_and_optimizer(
        config, data.num_classes, order.steps_per_epoch)
    check_intervals(config, total_steps)
    # Orbax keeps `keep_checkpoints` and writes one more before deleting the oldest.
    check_free_space(workdir_path, (config.keep_checkpoints + 1)
                     * train_state.train_state_bytes(model, tx, image_size))

    init_key, augment_key = run_keys(config.seed)
    state = train_state.create_train_state(model, tx, image_size, init_key, mesh)
    checkpointer = checkpoint.Checkpointer(
        workdir_path / 'checkpoints', config.keep_checkpoints, run_record(config, model))
    try:
        state = checkpointer.restore_latest(state)
    except Exception:
        checkpointer.close()
        raise
    start_step = int(state.step)
    save_config(config, workdir_path)
    writer = metrics.MetricWriter(workdir_path, start_step)

    replicated = parallel.replicated(mesh)
    # In-memory data sets are small: every process holds the whole of them (loaded
    # identically from the seed or the files), and every device a replica. The batch
    # indices are the same on every process too (a function of seed and step).
    device_data = {name: parallel.global_array(value, replicated) for name, value in (
        ('train_images', data.train_images), ('train_labels', data.train_labels),
        ('eval_images', data.eval_images), ('eval_labels', data.eval_labels))}
    train_step, eval_step = build_steps(
        config, model, tx, schedule, mesh, augment_key, data.train_images)

    compile_start = time.perf_counter()
    train_step = train_step.lower(
        state, device_data['train_images'], device_data['train_labels'],
        parallel.global_array(order.indices(start_step), replicated)).compile()
    logging.info('Compiled the train step in %.1f s; %d devices; steps %d -> %d.',
                 time.perf_counter() - compile_start, mesh.devices.size, start_step, total_steps)

    loop = _Loop(config, workdir_path, total_steps, checkpointer, writer, data.eval_split,
                 start_step)
    try:
        with preemption.StopRequest() as stop:
            for step in range(start_step, total_steps):
                indices = parallel.global_array(order.indices(step), replicated)
                state, step_metrics = train_step(
                    state, device_data['train_images'], device_data['train_labels'], indices)
                loop.after_step(step, state, step_metrics, stop)
                if config.eval_every_steps and (step + 1) % config.eval_every_steps == 0 \
                        and step + 1 != total_steps:
                    loop.evaluate(step + 1, lambda s=state: evaluate(
                        eval_step, s, device_data['eval_images'], device_data['eval_labels'],
                        config.eval_batch_size, mesh))
        final = loop.evaluate(total_steps, lambda: evaluate(
            eval_step, state, device_data['eval_images'], device_data['eval_labels'],
            config.eval_batch_size, mesh))
    finally:
        checkpointer.close()
        writer.close()
    if jax.process_index() == 0:
        (workdir_path / 'final_eval.json').write_text(json.dumps(
            {'step': total_steps, 'split': data.eval_split, **final}, indent=2) + '\n')
    return final


class _Loop:
    """What happens between train steps: metrics, non-finite checks, saves, stops."""

    def __init__(self, config, workdir, total_steps, checkpointer, writer, eval_split,
                 start_step):
        self.config = config
        self.workdir = workdir
        self.total_steps = total_steps
        self.checkpointer = checkpointer
        self.writer = writer
        self.eval_split = eval_split
        self.pending: list[tuple[int, dict]] = []  # metrics not yet fetched from the device
        self.last_log = (start_step, time.perf_counter())
        self.params_finite = jax.jit(lambda tree: jnp.all(jnp.array(
            [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])))

    def after_step(self, step: int, state, step_metrics, stop: preemption.StopRequest):
        config, done = self.config, step + 1
        self.pending.append((step, step_metrics))
        if done % config.log_every_steps == 0 or done == self.total_steps:
            self.flush_metrics(done)
        preempted = stop.requested or (
            jax.process_count() > 1 and self.checkpointer.reached_preemption(done))
        if done % config.checkpoint_every_steps == 0 or done == self.total_steps or preempted:
            self.save(done, state)
        if preempted:
            self.checkpointer.wait()
            error = preemption.Preempted(done, stop.seconds_since())
            logging.warning('%s', error)
            raise error

    def save(self, done: int, state) -> None:
        self.flush_metrics(done)  # never save a state that followed a non-finite loss
        if not bool(self.params_finite(state.params)):
            raise NonFiniteLossError(
                f'parameters became non-finite at step {done - 1}; the last good checkpoint '
                f'({self.checkpointer.latest_step()}) is kept in {self.workdir}.')
        self.checkpointer.save(done, state)

    def flush_metrics(self, step: int) -> None:
        """Fetches pending metrics, stops on a non-finite loss, logs their average."""
        if not self.pending:
            return
        fetched = jax.device_get([m for _, m in self.pending])
        for (at, _), values in zip(self.pending, fetched, strict=True):
            if not np.isfinite(values['loss']) and not self.config.skip_nonfinite_steps:
                raise NonFiniteLossError(
                    f'loss is {values["loss"]} at step {at}; stopping. The last good '
                    f'checkpoint ({self.checkpointer.latest_step()}) is kept in '
                    f'{self.workdir}. Last metrics: {values}. '
                    '(--config.skip_nonfinite_steps=True skips such steps instead.)')
        self.pending = []
        means = {k: _finite_mean([v[k] for v in fetched]) for k in fetched[0]}
        if 'skipped' in means:
            means['skipped'] = float(np.sum([v['skipped'] for v in fetched]))
        now = time.perf_counter()
        images_per_sec = ((step - self.last_log[0]) * self.config.batch_size
                          / (now - self.last_log[1]))
        self.last_log = (step, now)
        eta = (self.total_steps - step) * self.config.batch_size / images_per_sec
        self.writer.write(step, {f'train/{k}': v for k, v in means.items()}
                          | {'train/images_per_sec': images_per_sec})
        skipped = f' | skipped {means["skipped"]:.0f}' if means.get('skipped') else ''
        logging.info('step %d/%d | loss %.4f | acc %.2f%% | lr %.4g | %.0f img/s | ETA %s%s',
                     step, self.total_steps, means['loss'], 100 * means['accuracy'],
                     means['learning_rate'], images_per_sec, _format_duration(eta), skipped)

    def evaluate(self, step: int, run_eval) -> dict[str, float]:
        self.flush_metrics(step)
        results = run_eval()
        self.writer.write(step, {f'{self.eval_split}/{k}': v for k, v in results.items()})
        logging.info('eval (%s) step %d: top-1 %.2f%%, top-5 %.2f%%, loss %.4f',
                     self.eval_split, step, 100 * results['top1_accuracy'],
                     100 * results['top5_accuracy'], results['loss'])
        self.last_log = (step, time.perf_counter())  # keep evaluation out of the images/s
        return results
