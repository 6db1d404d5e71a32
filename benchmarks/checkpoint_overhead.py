"""What asynchronous checkpointing costs the training loop.

Runs the real train step of a model on synthetic data, alternating blocks of steps
without saves and blocks with one asynchronous Orbax save at the start of the block, and
prints the median step time of each and their ratio, plus the time the loop is blocked
by the `save` call itself.

    python benchmarks/checkpoint_overhead.py [--model cifar_resnet56] [--batch-size 128]
        [--steps 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import configs, parallel
from resnet_jax.inputs.device_preprocessing import InMemoryPreprocessing
from resnet_jax.runs import checkpoint
from resnet_jax.training import optim, steps, train, train_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='cifar_resnet56')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--image-size', type=int, default=32)
    parser.add_argument('--steps', type=int, default=20, help='steps per timed block')
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()

    config = configs.get_base_config()
    config.model.name = args.model
    mesh = parallel.make_mesh()
    model = train.build_model(config, 10, mesh)
    schedule = optim.learning_rate_schedule(config, 100, 10_000)
    tx = optim.make_optimizer(config, schedule)
    state = train_state.create_train_state(
        model, tx, args.image_size, jax.random.key(0, impl='rbg'), mesh)
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.image_size, args.image_size, 3)
    images = jnp.asarray(rng.integers(0, 256, shape, dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, args.batch_size).astype(np.int32))
    indices = jnp.arange(args.batch_size, dtype=jnp.int32)
    preprocessing = InMemoryPreprocessing.from_config(config, np.zeros(shape, np.uint8),
                                                      model.dtype)
    step = steps.make_steps(config, mesh, model, tx, schedule, preprocessing,
                            jax.random.key(1)).train
    state, metrics = step(state, images, labels, indices)  # compile
    jax.block_until_ready(metrics)

    with tempfile.TemporaryDirectory() as directory:
        saver = checkpoint.Checkpointer(directory, keep=2, run_record={'model': args.model})
        plain, saving, blocked = [], [], []
        for _ in range(args.repeats):
            for with_save in (False, True):
                start = time.perf_counter()
                for i in range(args.steps):
                    if with_save and i == 0:
                        save_start = time.perf_counter()
                        saver.save(int(state.step), state)
                        blocked.append(time.perf_counter() - save_start)
                    state, metrics = step(state, images, labels, indices)
                jax.block_until_ready(metrics)
                saver.wait()  # a save must finish inside its block to be counted
                per_step = (time.perf_counter() - start) / args.steps
                (saving if with_save else plain).append(per_step)
        saver.close()

    state_mib = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
    print(f'{args.model}, batch {args.batch_size}, {args.image_size}px, state {state_mib:.1f} MiB, '
          f'{jax.device_count()} {jax.devices()[0].platform} device(s), '
          f'{args.repeats} x {args.steps}-step blocks')
    print(f'median step time without saves: {1e3 * statistics.median(plain):.1f} ms')
    print(f'median step time with one save per block: {1e3 * statistics.median(saving):.1f} ms')
    print(f'save call blocks the loop for (median): {1e3 * statistics.median(blocked):.1f} ms')
    print(f'overhead ratio (with / without): '
          f'{statistics.median(saving) / statistics.median(plain):.3f}')


if __name__ == '__main__':
    main()
