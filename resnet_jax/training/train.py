"""The training loop: `train_and_evaluate(config, workdir)`.

Everything that can fail fast (the config, the device count, the workdir, the data)
is checked before the first compilation. The loop keeps at most `steps_in_flight` steps
dispatched ahead of the device (it waits for a step's small metrics, never for the
state), and fetches metrics only every `log_every_steps`, for a progress line every
`log_every_seconds`, at evaluations and at checkpoints.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from resnet_jax import backend, configs, models, parallel
from resnet_jax.inputs import base, factory
from resnet_jax.pretrained import init_from
from resnet_jax.runs import checkpoint, metrics, preemption
from resnet_jax.runs.workdir import WorkdirError, check_free_space, prepare_workdir, save_config
from resnet_jax.training import optim, steps, train_state

__all__ = ['WorkdirError', 'NonFiniteError', 'train_and_evaluate']


class NonFiniteError(RuntimeError):
    """The loss or the parameters became NaN or infinite; the last good checkpoint is kept."""


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
    return {'model': models.architecture.record(config.model, model),
            'num_classes': model.num_classes}


def build_model(config: ml_collections.ConfigDict, num_classes: int, mesh,
                bn_axis_name: str | None = None) -> models.ResNet:
    """The model that `config.model`, `config.dtype` and `config.cpu_kernels` describe, with
    the building blocks of the platform of `mesh` (as its steps are compiled for)."""
    platform = parallel.platform(mesh)
    return models.from_config(
        config, num_classes, bn_axis_name=bn_axis_name,
        layers=backend.layers(config.cpu_kernels, platform),
        dtype=backend.compute_dtype(config.dtype, config.cpu_kernels, platform))


def build_model_and_optimizer(config: ml_collections.ConfigDict, num_classes: int,
                              steps_per_epoch: int, mesh):
    """The model, optimiser, schedule and run length in steps that `config` describes."""
    total_steps = optim.total_steps(config, steps_per_epoch)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch, total_steps)
    tx = optim.make_optimizer(config, schedule)
    bn_axis = parallel.DATA_AXIS if config.sync_batch_norm else None
    model = build_model(config, num_classes, mesh, bn_axis_name=bn_axis)
    return model, tx, schedule, total_steps


def check_batch_split(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Each device's share of the batch must split into grad_accum_steps micro-batches, and
    each of those into whole BatchNorm groups (a micro-batch of at most one group is
    normalised whole, as that one group)."""
    accum, per_device = config.grad_accum_steps, config.batch_size // num_devices
    if per_device % accum:
        raise configs.ConfigError(
            f'grad_accum_steps={accum} does not divide the {per_device} examples per device '
            f'(batch_size={config.batch_size} on {num_devices} devices): set batch_size to a '
            f'multiple of {num_devices * accum}')
    group, micro = config.model.bn_group_size, per_device // accum
    if group and micro > group and micro % group:
        raise configs.ConfigError(
            f'model.bn_group_size={group} does not divide the {micro} examples per device '
            f'and micro-batch (batch_size={config.batch_size} on {num_devices} devices, '
            f'grad_accum_steps={accum})')


def check_intervals(config: ml_collections.ConfigDict, total_steps: int) -> None:
    """Intervals that can never trigger are mistakes (usually steps given for epochs)."""
    if config.eval_every_steps > total_steps:
        raise configs.ConfigError(
            f'eval_every_steps={config.eval_every_steps} is longer than the run '
            f'({total_steps} steps): it would never evaluate before the end; lower it or set 0')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains the model of `config`, resuming from `workdir`, and returns the final eval.

    Raises preemption.Preempted after saving when the process receives SIGTERM, also when
    the signal came while it loaded data or compiled (it stops after the first step).
    """
    configs.validate_config(config)
    logging.info('%s', optim.describe_learning_rate(config))
    with preemption.StopRequest() as stop:
        return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        stop: preemption.StopRequest) -> dict[str, float]:
    mesh = parallel.make_mesh()
    parallel.check_divisible(config.batch_size, mesh, 'batch_size')
    parallel.check_divisible(config.eval_batch_size, mesh, 'eval_batch_size')
    check_batch_split(config, mesh.devices.size)
    workdir_path = prepare_workdir(workdir)

    data = factory.open_dataset(config)
    model, tx, schedule, total_steps = build_model_and_optimizer(
        config, data.num_classes, base.steps_per_epoch(config, data), mesh)
    check_intervals(config, total_steps)
    init_key, augment_key = backend.run_keys(config.seed)
    run_input = factory.make_input(config, mesh, data, model.dtype)
    run_steps = steps.make_steps(config, mesh, model, tx, schedule, run_input.preprocessing,
                                 augment_key)
    logging.info('Data: %s.', run_input.description)
    # Orbax keeps `keep_checkpoints` and writes one more before deleting the oldest.
    check_free_space(workdir_path, (config.keep_checkpoints + 1)
                     * train_state.train_state_bytes(model, tx, run_input.image_size))

    state = train_state.create_train_state(model, tx, run_input.image_size, init_key, mesh)
    checkpointer = checkpoint.Checkpointer(
        workdir_path / 'checkpoints', config.keep_checkpoints, run_record(config, model))
    try:
        if checkpointer.latest_step() is None:  # a fresh run: maybe from config.init_from
            state = init_from.initialise(config, state, model)
        state = checkpointer.restore_latest(state)
    except Exception:
        checkpointer.close()
        raise
    start_step = int(state.step)
    if jax.process_count() > 1:
        # Tells JAX's preemption service where the job stands, so that a SIGTERM that
        # arrives before the first step (while compiling) stops it at the next step
        # instead of at a step already past, which would never be reached.
        checkpointer.reached_preemption(start_step)
    save_config(config, workdir_path)
    writer = metrics.MetricWriter(workdir_path, start_step)

    batches = run_input.batches(start_step)
    first_batch = next(batches)
    compile_start = time.perf_counter()
    train_step = run_steps.train.lower(state, *first_batch).compile()
    logging.info('Compiled the train step in %.1f s; %d devices; steps %d -> %d.',
                 time.perf_counter() - compile_start, mesh.devices.size, start_step, total_steps)

    loop = _Loop(config, workdir_path, total_steps, checkpointer, writer,
                 run_input.eval_split, start_step, run_input.steps_per_epoch)
    first_mode = run_input.eval_modes[0]

    def evaluate(state, mode: str = first_mode) -> dict[str, float]:
        return run_steps.evaluate(state, run_input.eval_data(mode))

    try:
        batch = first_batch
        for step in range(start_step, total_steps):
            if step != start_step:
                waited = time.perf_counter()
                batch = next(batches)
                loop.input_wait += time.perf_counter() - waited
            state, step_metrics = train_step(state, *batch)
            loop.after_step(step, state, step_metrics, stop)
            if config.eval_every_steps and (step + 1) % config.eval_every_steps == 0 \
                    and step + 1 != total_steps:
                loop.evaluate(step + 1, lambda s=state: evaluate(s))
        final = {}
        for mode in run_input.eval_modes:
            final[mode] = loop.evaluate(total_steps, lambda m=mode: evaluate(state, m),
                                        None if mode == first_mode else mode)
    finally:
        checkpointer.close()
        writer.close()
    first = final[first_mode]
    if jax.process_index() == 0:
        (workdir_path / 'final_eval.json').write_text(json.dumps(
            {'step': total_steps, 'split': run_input.eval_split, 'mode': first_mode,
             **first, 'modes': final,
             # What ran it, for the tables of resnet_jax.paper.reproduce.
             'data': run_input.description, 'num_devices': mesh.devices.size,
             'device_kind': jax.devices()[0].device_kind}, indent=2) + '\n')
    return first


class _Loop:
    """What happens between train steps: metrics, non-finite checks, saves, stops."""

    def __init__(self, config, workdir, total_steps, checkpointer, writer, eval_split,
                 start_step, steps_per_epoch):
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.workdir = workdir
        self.total_steps = total_steps
        self.checkpointer = checkpointer
        self.writer = writer
        self.eval_split = eval_split
        self.pending: list[tuple[int, dict]] = []  # metrics not yet fetched from the device
        # (steps done, metrics) of steps dispatched and not yet seen to finish; the step
        # about to be dispatched makes steps_in_flight.
        self.in_flight = parallel.InFlight(config.steps_in_flight - 1)
        self.finished = start_step  # steps known to have finished on the device
        self.input_wait = 0.0  # seconds spent waiting for input since the last log
        self.last_log = (start_step, time.perf_counter())  # the last metrics record
        self.last_line = self.last_log  # the last console line (record or progress)
        self.start_step = start_step
        self.params_finite = jax.jit(lambda tree: jnp.all(jnp.array(
            [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])))

    def after_step(self, step: int, state, step_metrics, stop: preemption.StopRequest):
        config, done = self.config, step + 1
        self.pending.append((step, step_metrics))
        self.wait_for_steps_in_flight(done, step_metrics)
        if done % config.log_every_steps == 0 or done == self.total_steps:
            self.flush_metrics(done)
        elif self.progress_due():
            self.log_progress()
        preempted = stop.requested or (
            jax.process_count() > 1 and self.checkpointer.reached_preemption(done))
        if done % config.checkpoint_every_steps == 0 or done == self.total_steps or preempted:
            self.save(done, state)
        if preempted:
            self.checkpointer.wait()
            error = preemption.Preempted(done, stop.seconds_since())
            logging.warning('%s', error)
            raise error

    def wait_for_steps_in_flight(self, done: int, step_metrics) -> None:
        """Blocks until at most `steps_in_flight` - 1 steps are still running on the device.

        Without a bound, dispatch runs dozens of steps ahead, and a SIGTERM (or a log line,
        or an evaluation) waits for all of them. Waiting on the metrics (a few scalars) of
        an older step costs nothing while a newer one keeps the device busy.
        """
        for finished, _ in self.in_flight.add((done, step_metrics)):
            self.finished = finished

    def progress_due(self) -> bool:
        """After the first finished step of this process, then every `log_every_seconds`."""
        period = self.config.log_every_seconds
        if not period or self.finished <= self.last_line[0]:
            return False
        return (self.last_line[0] == self.start_step
                or time.perf_counter() - self.last_line[1] >= period)

    def log_progress(self) -> None:
        """A console line from the steps that have finished: no wait on the device."""
        since, then = self.last_line
        values = jax.device_get([m for at, m in self.pending if since <= at < self.finished])
        now = time.perf_counter()
        images_per_sec = (self.finished - since) * self.config.batch_size / (now - then)
        eta = (self.total_steps - self.finished) * self.config.batch_size / images_per_sec
        logging.info('step %d/%d | loss %.4f | %.0f img/s | ETA %s', self.finished,
                     self.total_steps, _finite_mean([v['loss'] for v in values]),
                     images_per_sec, _format_duration(eta))
        self.last_line = (self.finished, now)

    def save(self, done: int, state) -> None:
        self.flush_metrics(done)  # never save a state that followed a non-finite loss
        if not bool(self.params_finite(state.params)):
            raise NonFiniteError(
                f'parameters became non-finite at step {done - 1}; the last good checkpoint '
                f'({self.checkpointer.latest_step()}) is kept in {self.workdir}.')
        self.checkpointer.save(done, state)

    def flush_metrics(self, step: int) -> None:
        """Fetches pending metrics, stops on a non-finite loss, logs their average."""
        if not self.pending:
            return
        fetched = jax.device_get([m for _, m in self.pending])
        self.in_flight.drain()  # all fetched above
        self.finished = step
        for (at, _), values in zip(self.pending, fetched, strict=True):
            if not np.isfinite(values['loss']) and not self.config.skip_nonfinite_steps:
                raise NonFiniteError(
                    f'loss is {values["loss"]} at step {at}; stopping. The last good '
                    f'checkpoint ({self.checkpointer.latest_step()}) is kept in '
                    f'{self.workdir}. Last metrics: {values}. '
                    '(--config.skip_nonfinite_steps=True skips such steps instead.)')
        self.pending = []
        means = {k: _finite_mean([v[k] for v in fetched]) for k in fetched[0]}
        if 'skipped' in means:
            means['skipped'] = float(np.sum([v['skipped'] for v in fetched]))
        now = time.perf_counter()
        elapsed = now - self.last_log[1]
        images_per_sec = (step - self.last_log[0]) * self.config.batch_size / elapsed
        # The share of the time the loop stood waiting for the input pipeline: near 0 when
        # the input keeps up with the device, large when the run is input-bound.
        input_wait = min(1.0, self.input_wait / elapsed)
        self.last_log, self.input_wait = (step, now), 0.0
        self.last_line = self.last_log
        eta = (self.total_steps - step) * self.config.batch_size / images_per_sec
        self.writer.write(step, {f'train/{k}': v for k, v in means.items()}
                          | {'train/images_per_sec': images_per_sec,
                             'train/input_wait_fraction': input_wait,
                             'train/epoch': step / self.steps_per_epoch})
        skipped = f' | skipped {means["skipped"]:.0f}' if means.get('skipped') else ''
        logging.info('step %d/%d | loss %.4f | acc %.2f%% | lr %.4g | %.0f img/s | '
                     'input wait %.0f%% | ETA %s%s',
                     step, self.total_steps, means['loss'], 100 * means['accuracy'],
                     means['learning_rate'], images_per_sec, 100 * input_wait,
                     _format_duration(eta), skipped)

    def evaluate(self, step: int, run_eval, mode: str | None = None) -> dict[str, float]:
        """Runs an evaluation and records it under the split (and the mode, if named)."""
        self.flush_metrics(step)
        start = time.perf_counter()
        results = run_eval()
        name = self.eval_split if mode is None else f'{self.eval_split}_{mode}'
        self.writer.write(step, {f'{name}/{k}': v for k, v in results.items()})
        logging.info('eval (%s) step %d: top-1 %.2f%%, top-5 %.2f%%, loss %.4f (%.1f s)',
                     name, step, 100 * results['top1_accuracy'],
                     100 * results['top5_accuracy'], results['loss'],
                     time.perf_counter() - start)
        # Keep evaluation out of the images/s and the input wait.
        self.last_log, self.input_wait = (step, time.perf_counter()), 0.0
        self.last_line = self.last_log
        return results
