"""A short training run on the real CIFAR-10 JPEGs: the whole system learns.

ResNet-20 with the paper's recipe for 80 steps (about 10k images, a fifth of an epoch)
on 2 simulated CPU devices, evaluated on 2,000 training images held out of the
training (`validation_examples`; the test split's evaluation of real data is the README
job's). Chance is 10%; an untrained network stays near it, and the standard deviation of
an accuracy of 30% on 2,000 images is 1%, so 20% can only be reached by a network that
learned. (After 40 steps the accuracy varied from 20.3% to 28.0% with the seed and the
XLA flags: too close to the bar; docs/performance.md has the measurements.)

The main job runs in a process of its own with XLA's default flags: the suite's
fast-compile flags (tests/suite_flags.py) would slow this test, which computes more
than it compiles.
"""

import json
import time

import pytest
from model_dirs import run_module
from suite_flags import user_environment

from resnet_jax.inputs import arrays


@pytest.mark.slow
def test_resnet20_learns_from_real_cifar10(cifar10_dir, cifar10_cache_dir, tmp_path):
    env = {**user_environment(devices=2), arrays.CACHE_DIR_ENV: str(cifar10_cache_dir)}
    start = time.perf_counter()
    result = run_module(
        'resnet_jax.main', '--config', 'experiments/cifar10.py:resnet20', '--workdir',
        str(tmp_path), f'--config.data_dir={cifar10_dir}', '--config.total_steps=80',
        '--config.log_every_steps=40', '--config.eval_every_steps=0',
        '--config.checkpoint_every_steps=80', '--config.validation_examples=2000',
        '--config.eval_batch_size=1000', timeout=600, env=env)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((tmp_path / 'final_eval.json').read_text())
    assert final['split'] == 'validation'
    print(f'80 steps of ResNet-20 on real CIFAR-10: {elapsed:.0f} s, '
          f'held-out top-1 {100 * final["top1_accuracy"]:.2f}%')
    assert final['top1_accuracy'] > 0.20
