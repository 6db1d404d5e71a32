"""A short training run on the real CIFAR-10 JPEGs: the whole system learns.

ResNet-20 with the paper's recipe for 40 steps (about 5k images, a tenth of an epoch)
on the 2 simulated CPU devices, evaluated on 2,000 training images held out of the
training (`validation_examples`; the test split's evaluation of real data is the README
job's). Chance is 10%; an untrained network stays near it, and the standard deviation of
an accuracy of 25% on 2,000 images is 1%, so 20% can only be reached by a network that
learned (docs/performance.md has the measured accuracies).
"""

import pathlib
import time

import pytest

from resnet_jax import configs
from resnet_jax.inputs import arrays
from resnet_jax.training import train

CONFIG = pathlib.Path(__file__).resolve().parent.parent / 'experiments' / 'cifar10.py'


@pytest.mark.slow
def test_resnet20_learns_from_real_cifar10(cifar10_dir, cifar10_cache_dir, tmp_path,
                                          monkeypatch):
    monkeypatch.setenv(arrays.CACHE_DIR_ENV, str(cifar10_cache_dir))
    config = configs.load_config(f'{CONFIG}:resnet20')
    with config.unlocked():
        config.data_dir = str(cifar10_dir)
        config.total_steps = 40
        config.log_every_steps = 20
        config.eval_every_steps = 0
        config.checkpoint_every_steps = 40
        config.validation_examples = 2000
        config.eval_batch_size = 1000
    start = time.perf_counter()
    final = train.train_and_evaluate(config, str(tmp_path))
    elapsed = time.perf_counter() - start
    print(f'{config.total_steps} steps of ResNet-20 on real CIFAR-10: {elapsed:.0f} s, '
          f'held-out top-1 {100 * final["top1_accuracy"]:.2f}%')
    assert final['top1_accuracy'] > 0.20
