"""A PyTorch reference trainer for the CIFAR nets: the recipe of our main job, on the same files.

    python benchmarks/torch_cifar10.py --config experiments/cifar10.py:resnet20,short \
        --workdir DIR --config.data_dir=PATH/TO/cifar10-jpeg [--config.FIELD=VALUE ...]

It takes the config file and overrides of `python -m resnet_jax.main` and trains the same
network (benchmarks/torch_reference.py, built from `resnet_jax.models.model_spec`) with
the same recipe, so that a run of ours and an independent implementation can be compared
side by side on the same data, budget and seeds (docs/reproduce.md, "Against PyTorch"):

- data: resnet_jax's own loader (`inputs.in_memory.open_dataset`), so the uint8 arrays are
  those our run sees; the same per-epoch permutation (`in_memory.BatchOrder`: the same
  examples in every batch of every step, the remainder dropped);
- input: `config.augment` (4-pixel pad, random crop, flip), (x - per-pixel train mean) /
  `config.pixel_scale`;
- model: He (fan-out, normal) convolutions, BN weight 1 / bias 0 with the config's
  momentum (Flax's 0.9 = torch's 0.1), epsilon and groups (`model.bn_group_size`), the
  head as Flax's Dense (LeCun truncated normal, zero bias);
- optimiser: torch SGD, which adds weight_decay * param to the gradient before the
  momentum, as our optax.add_decayed_weights then sgd; on all parameters or the kernels
  only (`optim.weight_decay_params`); the learning rate of every step from
  `resnet_jax.training.optim.learning_rate_schedule` (warm-up included);
- output: metrics.jsonl (resnet_jax.runs.metrics.MetricWriter, with TensorBoard events),
  config.json and final_eval.json in our runs' format, so `python -m resnet_jax.paper.plot`
  reads a torch run next to ours. final_eval.json adds `implementation` and
  `torch_version`, and is written whole or not at all.

What differs and cannot be matched: the random numbers (the initial weights and the
augmentation draw from torch's generator seeded with `config.seed`, not JAX's), and
BatchNorm's running variance, which torch updates with the unbiased batch variance (Flax
with the biased one: a factor n / (n - 1), n = batch x height x width >= 8,192 here).

Float32, channels-last, on the GPU when torch sees one (its default TF32 convolutions, as
XLA's default precision there), else on the CPU with one thread per core; one process, one
device (as `resnet_jax.main` without --cpu_devices). No checkpoints: SIGTERM stops it after the
current step (exit status 143) without a final_eval.json. Torch is optional
(`pip install 'resnet_jax[bench]'`): nothing in the package or its tests imports this.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference  # noqa: E402  (beside this file)

from resnet_jax import configs, models
from resnet_jax.inputs import (  # noqa: E402
    arrays,  # noqa: E402
    base,
    in_memory,
)
from resnet_jax.runs import metrics, preemption
from resnet_jax.runs.workdir import WorkdirError, prepare_workdir, save_config  # noqa: E402
from resnet_jax.training import optim, train  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally FILE:ARG (as resnet_jax.main).',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for metrics.jsonl, config.json, final_eval.json.')
flags.mark_flags_as_required(['config', 'workdir'])

IMPLEMENTATION = 'pytorch_reference (benchmarks/torch_cifar10.py)'


class NonFiniteError(RuntimeError):
    """The loss became NaN or infinite."""


def check_config(config) -> None:
    """ConfigError for a config that resnet_jax rejects or this reference does not cover."""
    configs.validate_config(config)
    train.check_batch_split(config, num_devices=1)
    if configs.pipeline(config) != 'memory':
        raise configs.ConfigError(
            f'dataset={config.dataset!r} is streamed: the PyTorch reference trains on the '
            f'in-memory data sets only ({", ".join(arrays.DATASETS)})')
    if models.model_spec(config.model.name).stem != 'cifar':
        raise configs.ConfigError(
            f'model.name={config.model.name!r} is not a CIFAR net: the PyTorch reference '
            'trains cifar_resnet* and cifar_plain* only')
    unsupported = {'dtype': config.dtype != 'float32', 'init_from': bool(config.init_from),
                   'frozen_stages': bool(config.frozen_stages),
                   'frozen_batch_norm': config.frozen_batch_norm,
                   'skip_nonfinite_steps': config.skip_nonfinite_steps,
                   'optim.name': config.optim.name != 'sgd',
                   'loss.label_smoothing': bool(config.loss.label_smoothing),
                   'grad_accum_steps': config.grad_accum_steps != 1}
    for field, set_ in unsupported.items():
        if set_:
            raise configs.ConfigError(
                f'{field}={config[field]!r} is not covered by the PyTorch reference '
                '(float32 SGD, from scratch, nothing frozen, no skipped steps, no label '
                'smoothing or accumulation)')


def make_optimizer(model: torch.nn.Module, config) -> torch.optim.SGD:
    """SGD with L2 weight decay added to the gradient, on the parameters our mask decays."""
    decayed, other = [], []
    for param in model.parameters():
        # 'kernels': conv and dense kernels (ndim > 1), as optim.weight_decay_mask.
        is_kernel = param.ndim > 1
        (decayed if config.optim.weight_decay_params == 'all' or is_kernel else other).append(
            param)
    groups = [{'params': decayed, 'weight_decay': config.optim.weight_decay}]
    if other:
        groups.append({'params': other, 'weight_decay': 0.0})
    return torch.optim.SGD(groups, lr=config.schedule.base_lr,
                           momentum=config.optim.momentum, nesterov=config.optim.nesterov)


def learning_rates(config, steps_per_epoch: int, total_steps: int) -> np.ndarray:
    """The learning rate of each step, from resnet_jax's own schedule (float32, as ours)."""
    import jax
    import jax.numpy as jnp

    schedule = optim.learning_rate_schedule(config, steps_per_epoch, total_steps)
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(total_steps)), np.float32)


def evaluate(eval_fn, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int) -> dict[str, float]:
    """loss / top-1 / top-5 over the whole eval split, every example once."""
    loss = top1 = top5 = 0.0
    for start in range(0, len(labels), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(labels)),
                               device=labels.device)
        logits, target = eval_fn(images, indices), labels[indices]
        loss += float(F.cross_entropy(logits, target, reduction='sum'))
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        top1 += float((top[:, 0] == target).sum())
        top5 += float((top == target[:, None]).any(-1).sum())
    n = len(labels)
    return {'loss': loss / n, 'top1_accuracy': top1 / n, 'top5_accuracy': top5 / n}


def write_json_atomically(path, record: dict) -> None:
    """Writes `record` whole or not at all (a stop mid-write leaves no partial file)."""
    temporary = path.with_name(path.name + '.tmp')
    temporary.write_text(json.dumps(record, indent=2) + '\n')
    os.replace(temporary, path)


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Trains as `resnet_jax.training.train.train_and_evaluate` would, in PyTorch; the final
    eval."""
    check_config(config)
    torch.set_num_threads(os.cpu_count())
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    workdir_path = prepare_workdir(workdir)
    data = in_memory.open_dataset(config)
    order = in_memory.BatchOrder(len(data.train_labels), config.batch_size, config.seed)
    steps_per_epoch = base.steps_per_epoch(config, data)
    total_steps = optim.total_steps(config, steps_per_epoch)
    if config.eval_every_steps > total_steps:  # as train.check_intervals
        raise configs.ConfigError(
            f'eval_every_steps={config.eval_every_steps} is longer than the run '
            f'({total_steps} steps): it would never evaluate before the end; lower it or set 0')
    lrs = learning_rates(config, steps_per_epoch, total_steps)

    torch.manual_seed(config.seed)  # the initial weights
    model = torch_reference.ResNet(
        config.model.name, data.num_classes, config.model.variant, config.model.shortcut,
        bn_momentum=config.model.bn_momentum, bn_epsilon=config.model.bn_epsilon,
        zero_init_residual=config.model.zero_init_residual,
        bn_group_size=config.model.bn_group_size).to(device)
    optimizer = make_optimizer(model, config)
    pixel_mean = torch.from_numpy(
        data.train_images.mean(axis=0, dtype=np.float64).astype(np.float32)).to(device)
    pad = {'pad_crop_flip': config.pad_pixels, 'flip': 0, 'none': None}[config.augment]
    train_step = torch_reference.make_train_step(
        model, augment_pad=pad, pixel_mean=pixel_mean, pixel_scale=config.pixel_scale,
        optimizer=optimizer, generator=torch.Generator(device).manual_seed(config.seed),
        with_accuracy=True)
    eval_fn = torch_reference.make_eval_step(model, pixel_mean=pixel_mean,
                                             pixel_scale=config.pixel_scale)
    images = torch.from_numpy(data.train_images).to(device)
    labels = torch.from_numpy(data.train_labels).long().to(device)
    eval_images = torch.from_numpy(data.eval_images).to(device)
    eval_labels = torch.from_numpy(data.eval_labels).long().to(device)
    device_kind = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    description = (f'{data.source}, {len(data.train_labels)} train / {len(data.eval_labels)} '
                   f'{data.eval_split} examples, {data.num_classes} classes, in memory (torch)')
    print(f'Data: {description}. torch {torch.__version__} on {device_kind}, '
          f'{torch.get_num_threads()} threads; steps 0 -> {total_steps}.', flush=True)

    save_config(config, workdir_path)
    writer = metrics.MetricWriter(workdir_path, 0)  # a fresh history: no resume
    split = data.eval_split

    def record_eval(step: int) -> dict[str, float]:
        results = evaluate(eval_fn, eval_images, eval_labels, config.eval_batch_size)
        writer.write(step, {f'{split}/{k}': v for k, v in results.items()})
        print(f'eval ({split}) step {step}: top-1 {100 * results["top1_accuracy"]:.2f}%, '
              f'top-5 {100 * results["top5_accuracy"]:.2f}%, loss {results["loss"]:.4f}',
              flush=True)
        return results

    window, since = [], time.perf_counter()
    try:
        with preemption.StopRequest() as stop:
            for step in range(total_steps):
                for group in optimizer.param_groups:
                    group['lr'] = float(lrs[step])
                indices = torch.from_numpy(order.indices(step)).long().to(device)
                loss, accuracy = train_step(images, labels, indices)
                loss = float(loss)
                if not np.isfinite(loss):
                    raise NonFiniteError(f'loss is {loss} at step {step}; stopping')
                window.append((loss, float(accuracy), float(lrs[step])))
                done = step + 1
                if done % config.log_every_steps == 0 or done == total_steps:
                    elapsed = time.perf_counter() - since
                    loss_, acc, lr = np.mean(window, axis=0)
                    rate = len(window) * config.batch_size / elapsed
                    writer.write(done, {'train/loss': loss_, 'train/accuracy': acc,
                                        'train/learning_rate': lr,
                                        'train/images_per_sec': rate})
                    print(f'step {done}/{total_steps} | loss {loss_:.4f} | acc {100 * acc:.2f}% '
                          f'| lr {lr:.4g} | {rate:.0f} img/s | '
                          f'{1e3 * elapsed / len(window):.0f} ms/step', flush=True)
                    window = []
                    since = time.perf_counter()
                if config.eval_every_steps and done % config.eval_every_steps == 0 \
                        and done != total_steps:
                    record_eval(done)
                    since = time.perf_counter()  # keep evaluation out of img/s
                if stop.requested:
                    raise preemption.Preempted(done, stop.seconds_since())
            final = record_eval(total_steps)
    finally:
        writer.close()
    write_json_atomically(workdir_path / 'final_eval.json', {
        'step': total_steps, 'split': split, 'mode': 'whole_image', **final,
        'modes': {'whole_image': final}, 'data': description, 'num_devices': 1,
        'device_kind': device_kind, 'implementation': IMPLEMENTATION,
        'torch_version': torch.__version__, 'torch_threads': torch.get_num_threads()})
    return final


def _one_line(error: BaseException, last_only: bool = False) -> str:
    """An error's message on one line; `last_only`: just its last line (a traceback's)."""
    while error.args and isinstance(error.args[0], Exception):  # ml_collections wraps
        error = error.args[0]
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if last_only and not isinstance(error, KeyError) else ' '.join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing; a config file or override that fails is one line, exit status 1."""
    try:
        argv = FLAGS(argv)
        FLAGS.config.keys()  # config_flags defers loading the file to the first read
    except Exception as error:  # noqa: BLE001 - whatever the config file raises
        sys.stderr.write(f'FATAL Flags parsing error: {_one_line(error, last_only=True)}\n')
        sys.exit(1)
    return argv


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except preemption.Preempted as error:
        sys.stderr.write(f'stopped by SIGTERM after step {error.step}: no checkpoint and no '
                         'final_eval.json (this reference does not resume)\n')
        sys.exit(preemption.PREEMPTED_EXIT_CODE)
    except (configs.ConfigError, arrays.DatasetNotFoundError, arrays.DataError, WorkdirError,
            NonFiniteError) as error:
        sys.stderr.write(f'{type(error).__name__}: {_one_line(error)}\n')
        sys.exit(1)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
