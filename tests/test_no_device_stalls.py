"""No simulated CPU device waits forever on another, however slow the kernels are.

With 2 simulated devices on 2 cores, XLA:CPU runs both devices' computations and their
launches on one pool of 2 threads. A loop that queued dozens of computations ahead (the
in-memory evaluation did: an eval step and 4 additions per batch) let a device wait in a
collective while the other's launches, blocked on its full queue, held the last thread:
XLA aborted the process after its collective timeout. The loops now keep a couple of
steps in flight (`parallel.InFlight`).
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import suite_flags

from resnet_jax import parallel

# Evaluation of 20 batches with every kernel call 20 ms slower than it need be: before the
# fix this aborted in 2 runs of 2 (ResNet-8, 32x32 images, batches of 250).
SLOW_KERNELS_RUN = '''
import sys
from resnet_jax import configs
from resnet_jax.training import train

config = configs.get_base_config()
config.model.name = 'cifar_resnet8'
config.dataset = 'synthetic'
config.image_size = 32
config.num_classes = 10
config.synthetic.num_train_examples = 256
config.synthetic.num_eval_examples = 5000
config.batch_size = 128
config.eval_batch_size = 250
config.total_steps = 2
config.checkpoint_every_steps = 2
config.log_every_steps = 2
config.eval_every_steps = 0
config.cpu_kernels = 'kernels'
final = train.train_and_evaluate(config, sys.argv[1])
print('evaluated', final['top1_accuracy'])
'''


@pytest.mark.slow
def test_slow_kernels_on_two_devices_finish(tmp_path):
    env = {**os.environ, 'RESNET_JAX_KERNEL_DELAY_MS': '20',
           # A stall then fails in 20 s instead of XLA's default 40.
           'XLA_FLAGS': f'{suite_flags.xla_flags(2)} '
                        '--xla_cpu_collective_call_terminate_timeout_seconds=20'}
    result = subprocess.run([sys.executable, '-c', SLOW_KERNELS_RUN, str(tmp_path / 'run')],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'evaluated' in result.stdout


def test_in_flight_waits_for_the_oldest_beyond_its_limit():
    in_flight = parallel.InFlight(limit=2)
    values = [jax.numpy.full((), i) for i in range(5)]
    assert in_flight.add(values[0]) == [] and in_flight.add(values[1]) == []
    for i in range(2, 5):
        (done,) = in_flight.add(values[i])
        assert isinstance(done, np.ndarray) and int(done) == i - 2
    assert [int(v) for v in in_flight.drain()] == [3, 4]
    assert in_flight.drain() == []


def test_in_flight_with_limit_zero_waits_for_each_result():
    in_flight = parallel.InFlight(limit=0)
    assert [int(v) for v in in_flight.add(jax.numpy.full((), 7))] == [7]
    assert in_flight.drain() == []


def test_in_flight_rejects_a_negative_limit():
    with pytest.raises(ValueError, match='at least 0'):
        parallel.InFlight(-1)
