"""The training loop: `train_and_evaluate(config, workdir)`.

Everything that can fail fast (the config, the device count, the workdir, the data)
is checked before the first compilation. The loop never waits on the device except
every `log_every_steps`, at evaluations and at checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from resnet_jax import checkpoint, configs, metrics, optim, parallel, steps, train_state
from resnet_jax.data import arrays


class WorkdirError(OSError):
    """The workdir cannot be created or written."""


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


def prepare_workdir(workdir: str) -> pathlib.Path:
    """Creates the workdir and proves it is writable, before anything expensive."""
    path = pathlib.Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f'.write_test_{jax.process_index()}'
        probe.write_text('ok')
        probe.unlink()
    except OSError as error:
        raise WorkdirError(
            f'workdir {workdir!r} is not writable ({error.strerror}); choose another --workdir '
            'or fix its permissions / free space') from error
    return path


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
        sums = eval_step(state, images, labels, jax.device_put(indices, replicated),
                         jax.device_put(mask, replicated))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals['count'])
    assert count == num, f'evaluated {count} examples of {num}'
    return {
        'loss': float(totals['loss']) / count,
        'top1_accuracy': float(totals['top1']) / count,
        'top5_accuracy': float(totals['top5']) / count,
    }


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


def _save_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    if jax.process_index() == 0:
        (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains the model of `config`, resuming from `workdir`, and returns the final eval."""
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
    total_steps = configs.total_steps(config, order.steps_per_epoch)
    schedule = optim.learning_rate_schedule(config, order.steps_per_epoch, total_steps)
    tx = optim.make_optimizer(config, schedule)
    bn_axis = parallel.DATA_AXIS if config.sync_batch_norm else None
    model = configs.build_model(config, data.num_classes, bn_axis_name=bn_axis)
    init_key, augment_key = jax.random.split(jax.random.key(config.seed))
    state = train_state.create_train_state(model, tx, image_size, init_key, mesh)

    checkpointer = checkpoint.Checkpointer(workdir_path / 'checkpoints', config.keep_checkpoints)
    state = checkpointer.restore_latest(state)
    start_step = int(state.step)
    _save_config(config, workdir_path)
    writer = metrics.MetricWriter(workdir_path)

    replicated = parallel.replicated(mesh)
    train_images = jax.device_put(data.train_images, replicated)
    train_labels = jax.device_put(data.train_labels, replicated)
    eval_images = jax.device_put(data.eval_images, replicated)
    eval_labels = jax.device_put(data.eval_labels, replicated)
    pixel_mean = jnp.asarray(data.train_images.mean(axis=0, dtype=np.float64), jnp.float32)
    train_step = steps.make_train_step(
        model, tx, schedule, mesh, pixel_mean=pixel_mean, augment=config.augment,
        pad_pixels=config.pad_pixels, augment_key=augment_key)
    eval_step = steps.make_eval_step(model, mesh, pixel_mean=pixel_mean)

    compile_start = time.perf_counter()
    train_step = train_step.lower(
        state, train_images, train_labels,
        jax.device_put(order.indices(start_step), replicated)).compile()
    logging.info('Compiled the train step in %.1f s; %d devices; steps %d -> %d.',
                 time.perf_counter() - compile_start, mesh.devices.size, start_step, total_steps)

    def run_eval(step: int) -> dict[str, float]:
        nonlocal last_log
        flush_metrics(step)
        results = evaluate(eval_step, state, eval_images, eval_labels,
                           config.eval_batch_size, mesh)
        writer.write(step, {f'{data.eval_split}/{k}': v for k, v in results.items()})
        logging.info('eval (%s) step %d: top-1 %.2f%%, top-5 %.2f%%, loss %.4f',
                     data.eval_split, step, 100 * results['top1_accuracy'],
                     100 * results['top5_accuracy'], results['loss'])
        last_log = (step, time.perf_counter())  # keep evaluation out of the images/s
        return results

    params_finite = jax.jit(
        lambda tree: jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])))
    pending: list[tuple[int, dict]] = []  # metrics of steps not yet fetched from the device
    last_log = (start_step, time.perf_counter())

    def flush_metrics(step: int) -> None:
        """Fetches pending metrics, stops on a non-finite loss, logs their average."""
        nonlocal pending, last_log
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        for (at, _), values in zip(pending, fetched, strict=True):
            if not np.isfinite(values['loss']):
                raise NonFiniteLossError(
                    f'loss is {values["loss"]} at step {at}; stopping. The last good '
                    f'checkpoint ({checkpointer.latest_step()}) is kept in {workdir}. '
                    f'Last metrics: {values}')
        means = {k: float(np.mean([v[k] for v in fetched])) for k in fetched[0]}
        pending = []
        now = time.perf_counter()
        images_per_sec = (step - last_log[0]) * config.batch_size / (now - last_log[1])
        last_log = (step, now)
        eta = (total_steps - step) * config.batch_size / images_per_sec
        writer.write(step, {f'train/{k}': v for k, v in means.items()}
                     | {'train/images_per_sec': images_per_sec})
        logging.info('step %d/%d | loss %.4f | acc %.2f%% | lr %.4g | %.0f img/s | ETA %s',
                     step, total_steps, means['loss'], 100 * means['accuracy'],
                     means['learning_rate'], images_per_sec, _format_duration(eta))

    final: dict[str, float] = {}
    try:
        for step in range(start_step, total_steps):
            indices = jax.device_put(order.indices(step), replicated)
            state, step_metrics = train_step(state, train_images, train_labels, indices)
            pending.append((step, step_metrics))
            done = step + 1
            if done % config.log_every_steps == 0 or done == total_steps:
                flush_metrics(done)
            if done % config.checkpoint_every_steps == 0 or done == total_steps:
                flush_metrics(done)  # never save a state that followed a non-finite loss
                if not bool(params_finite(state.params)):
                    raise NonFiniteLossError(
                        f'parameters became non-finite at step {step}; the last good '
                        f'checkpoint ({checkpointer.latest_step()}) is kept in {workdir}.')
                checkpointer.save(done, state)
            if config.eval_every_steps and done % config.eval_every_steps == 0 \
                    and done != total_steps:
                run_eval(done)
        final = run_eval(total_steps)
    finally:
        checkpointer.close()
        writer.close()
    if jax.process_index() == 0:
        (workdir_path / 'final_eval.json').write_text(
            json.dumps({'step': total_steps, 'split': data.eval_split, **final}, indent=2) + '\n')
    return final
