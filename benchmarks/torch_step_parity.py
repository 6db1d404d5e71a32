"""Ours and the PyTorch reference from the same start: the same initial weights, the same
batches, the same learning rates; do their train steps agree?

    python benchmarks/torch_step_parity.py [--config experiments/cifar10.py:resnet20] [--steps 30]
        [--bn-group-size 64]

`benchmarks/torch_cifar10.py` compares the two implementations by the accuracy of whole
runs, which differ by their random numbers (initial weights, augmentation) as well. This
takes the randomness out: our model's initial variables are copied into
`torch_reference.ResNet`, both train on the same fixed batches (random uint8 images and
labels, no augmentation, normalised as the recipe does) with the config's optimiser and
schedule, and the script prints each step's two losses and, at the end, the largest
relative difference of every parameter and BatchNorm statistic. Equal steps leave only
float32 rounding, which grows slowly over the steps; a defect in either (a layer, the
loss, weight decay, momentum, BatchNorm's update) shows from the first steps.
Our step is the training step's own maths (the platform's layers, CPU kernels included)
on one device. Torch's running variance uses the unbiased batch variance: a relative
difference of about 1 / (batch x height x width) in `var` is expected.
"""

from __future__ import annotations

import argparse
import os
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_cifar10  # noqa: E402  (beside this file: the reference's optimiser)
import torch_reference  # noqa: E402

from resnet_jax import backend, configs, parallel
from resnet_jax.training import optim, train  # noqa: E402


def corresponding_tensors(model: torch_reference.ResNet, params):
    """(our variable's path, the torch tensor that holds it, its layout) for every
    parameter and BN statistic of a CIFAR net: the one map both directions use."""
    def bn(module, name):
        yield ('params', name, 'scale'), module.weight, 'vector'
        yield ('params', name, 'bias'), module.bias, 'vector'
        yield ('batch_stats', name, 'mean'), module.running_mean, 'vector'
        yield ('batch_stats', name, 'var'), module.running_var, 'vector'

    yield ('params', 'stem_conv', 'kernel'), model.stem[0].weight, 'conv'
    yield from bn(model.stem[1], 'stem_bn')
    for block, name in zip(model.stages, block_names(params), strict=True):
        for i in (1, 2):
            yield ('params', name, f'conv{i}', 'kernel'), getattr(block, f'conv{i}').weight, 'conv'
            for path, tensor, layout in bn(getattr(block, f'bn{i}'), f'bn{i}'):
                yield (path[0], name, *path[1:]), tensor, layout
    yield ('params', 'head', 'kernel'), model.head.weight, 'dense'
    yield ('params', 'head', 'bias'), model.head.bias, 'vector'


# Our layout -> torch's: conv HWIO -> OIHW, dense [in, out] -> [out, in].
TO_TORCH = {'conv': (3, 2, 0, 1), 'dense': (1, 0), 'vector': (0,)}


def copy_into_torch(variables, model: torch_reference.ResNet) -> None:
    """Our CIFAR net's params and batch_stats into the torch modules of the same layers."""
    flat = flax.traverse_util.flatten_dict(variables)
    with torch.no_grad():
        for path, tensor, layout in corresponding_tensors(model, variables['params']):
            tensor.copy_(torch.from_numpy(np.array(flat[path]).transpose(TO_TORCH[layout])))


def torch_as_ours(model: torch_reference.ResNet, like) -> dict:
    """The torch model's state in our variables' layout, as numpy arrays."""
    flat = {}
    for path, tensor, layout in corresponding_tensors(model, like['params']):
        flat[path] = tensor.detach().numpy().transpose(np.argsort(TO_TORCH[layout]))
    return flax.traverse_util.unflatten_dict(flat)


def block_names(params) -> list[str]:
    """stage1_block1, stage1_block2, ... in network order."""
    def order(name):
        stage, block = name.removeprefix('stage').split('_block')
        return int(stage), int(block)
    return sorted((k for k in params if k.startswith('stage')), key=order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='experiments/cifar10.py:resnet20')
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--bn-group-size', type=int, default=None,
                        help="model.bn_group_size (default: the config's)")
    args = parser.parse_args()
    config = configs.load_config(args.config)
    if args.bn_group_size is not None:
        with config.unlocked():
            config.model.bn_group_size = args.bn_group_size
    if config.model.shortcut not in (None, 'A') or not config.model.name.startswith('cifar'):
        sys.exit(f'{args.config}: this check covers the CIFAR nets with option A shortcuts')
    rng = np.random.default_rng(args.seed)
    batch, side = config.batch_size, config.image_size or 32  # CIFAR: set by the data
    images = rng.integers(0, 256, (args.steps, batch, side, side, 3), np.uint8)
    labels = rng.integers(0, 10, (args.steps, batch))
    pixel_mean = images.reshape(-1, side, side, 3).mean(0, dtype=np.float64).astype(np.float32)

    mesh = parallel.make_mesh(jax.devices()[:1])
    platform = parallel.platform(mesh)
    model = train.build_model(config, 10, mesh)
    variables = model.init(jax.random.key(args.seed), jnp.zeros((1, side, side, 3)), train=False)
    steps_per_epoch = 50_000 // batch
    schedule = optim.learning_rate_schedule(
        config, steps_per_epoch, optim.total_steps(config, steps_per_epoch))
    tx = optim.make_optimizer(config, schedule)
    # Two of ours: the platform's layers (CPU kernels where they run) and XLA's. They are
    # the same maths rounded differently: how fast they drift apart is the yardstick.
    ours = {'ours': OurTrainer(model, tx, variables, platform)}
    if platform == 'cpu' and config.cpu_kernels != 'xla':
        with config.unlocked():
            config.cpu_kernels = 'xla'
        ours['ours XLA'] = OurTrainer(train.build_model(config, 10, mesh), tx, variables,
                                     platform)

    torch.manual_seed(args.seed)
    torch_model = torch_reference.ResNet(
        config.model.name, 10, config.model.variant, 'A', bn_momentum=config.model.bn_momentum,
        bn_epsilon=config.model.bn_epsilon, bn_group_size=config.model.bn_group_size)
    copy_into_torch(variables, torch_model)
    optimizer = torch_cifar10.make_optimizer(torch_model, config)
    torch_step = torch_reference.make_train_step(
        torch_model, pixel_mean=torch.from_numpy(pixel_mean), pixel_scale=config.pixel_scale,
        optimizer=optimizer)

    print(f'{config.model.name}, batch {batch}, {args.steps} steps from the same weights on '
          f'random images and labels (jax {jax.__version__} on {jax.default_backend()}, torch '
          f'{torch.__version__}). Loss: each step\'s; d(loss): relative to torch\'s; '
          f'd(vars): the largest |a - b| / |b| of a parameter or BN statistic after the step')
    names = list(ours)
    print(f'{"step":>4s} {"lr":>7s}' + ''.join(f'{"loss, " + n:>24s}' for n in [*names, 'torch'])
          + ''.join(f'{"d(loss) " + n:>24s}{"d(vars) " + n:>24s}' for n in names)
          + (f'{"d(loss) ours, ours XLA":>24s}{"d(vars) ours, ours XLA":>24s}'
             if len(names) == 2 else ''))
    for step in range(args.steps):
        lr = float(schedule(step))
        for group in optimizer.param_groups:
            group['lr'] = lr
        x = jnp.asarray((images[step].astype(np.float32) - pixel_mean) / config.pixel_scale)
        losses = [trainer.step(x, jnp.asarray(labels[step])) for trainer in ours.values()]
        theirs = float(torch_step(torch.from_numpy(images[step]),
                                  torch.from_numpy(labels[step]).long(), torch.arange(batch)))
        theirs_vars = torch_as_ours(torch_model, ours['ours'].variables())
        drifts = [max(d for d, _ in worst_differences(t.variables(), theirs_vars).values())
                  for t in ours.values()]
        if len(ours) == 2:  # the yardstick: our two against each other
            pair = [t.variables() for t in ours.values()]
            drifts.append(max(d for d, _ in worst_differences(*pair).values()))
        print(f'{step + 1:4d} {lr:7.4f}' + ''.join(f'{v:24.6f}' for v in [*losses, theirs])
              + ''.join(f'{abs(v - theirs) / abs(theirs):24.2e}{d:24.2e}'
                        for v, d in zip(losses, drifts, strict=False))
              + (f'{abs(losses[0] - losses[1]) / abs(losses[1]):24.2e}{drifts[-1]:24.2e}'
                 if len(ours) == 2 else ''))
    for name, trainer in ours.items():
        print(f'after the last step, {name} against torch, per kind of variable:')
        for kind, (diff, where) in sorted(worst_differences(trainer.variables(),
                                                            theirs_vars).items()):
            print(f'  {kind:7s} {diff:.2e}  ({where})')


class OurTrainer:
    """Our train step's maths on one device, from `variables`."""

    def __init__(self, model, tx, variables, platform: str):
        self.params, self.batch_stats = variables['params'], variables['batch_stats']
        self.opt_state = tx.init(self.params)

        @jax.jit
        def step(params, batch_stats, opt_state, x, y):
            def loss_fn(params):
                with backend.training_context(platform):
                    logits, updates = model.apply(
                        {'params': params, 'batch_stats': batch_stats}, x, train=True,
                        mutable=['batch_stats'])
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
                return loss, updates
            (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            step_updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, step_updates), updates['batch_stats'],
                    opt_state, loss)

        self._step = step

    def step(self, x, y) -> float:
        self.params, self.batch_stats, self.opt_state, loss = self._step(
            self.params, self.batch_stats, self.opt_state, x, y)
        return float(loss)

    def variables(self) -> dict:
        return jax.tree.map(np.asarray, {'params': self.params, 'batch_stats': self.batch_stats})


def worst_differences(ours: dict, theirs: dict) -> dict[str, tuple[float, str]]:
    """Per kind of leaf (kernel, scale, bias, mean, var): the largest relative difference
    |a - b| / |b| (Euclidean norms of whole leaves; an element's own relative difference
    means nothing where its value is near 0, as a BN bias early on) and where."""
    worst = {}
    theirs = flax.traverse_util.flatten_dict(theirs)
    for path, a in flax.traverse_util.flatten_dict(ours).items():
        b = theirs[path]
        diff = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
        if diff > worst.get(path[-1], (0.0, ''))[0]:
            worst[path[-1]] = (diff, '/'.join(path[1:]))
    return worst


if __name__ == '__main__':
    main()
