"""Trains and evaluates a ResNet from an experiment config.

    python -m resnet_jax.main --config experiments/cifar10.py:resnet56 --workdir DIR \\
        [--config.field=value ...]

Running the same command again on the same workdir resumes from its last checkpoint.

Several processes (one job over several hosts, or several processes on one machine) start
JAX's distributed runtime first: detected under SLURM `srun`, Open MPI and on Cloud TPU
VMs, or given explicitly with `--num_processes`, `--process_id` and
`--coordinator_address` (see resnet_jax/parallel/distributed.py).
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import backend, cli, configs, packages, user_cache
from resnet_jax.inputs import arrays
from resnet_jax.parallel import distributed
from resnet_jax.pretrained import init_from
from resnet_jax.runs import checkpoint, preemption
from resnet_jax.training import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally FILE:ARG.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the config.')
flags.mark_flags_as_required(['config', 'workdir'])
flags.DEFINE_string('coordinator_address', None,
                    'HOST:PORT of process 0, the same on every process of a multi-process job.')
flags.DEFINE_integer('num_processes', None,
                     'Processes in the job; 1 forces a single process. Default: detected.')
flags.DEFINE_integer('process_id', None, 'This process: 0 .. num_processes-1.')
backend.define_process_flags(FLAGS)  # --cpu_devices, --keep_freed_memory
flags.DEFINE_string(
    'compilation_cache_dir',
    # JAX's own variable where it is set (tests share one cache with the jobs they start).
    os.environ.get('JAX_COMPILATION_CACHE_DIR') or str(user_cache.root() / 'jax_compilation'),
    "JAX's persistent compilation cache, so that a second start of the same experiment "
    'skips compiling; empty disables it.')


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a config file that fails to load as a one-line error.

    config_flags puts the config file's traceback into its error message, and defers a
    missing file or a misspelt override to the first read of the config; both are read
    here, before JAX starts, and reported in one line.
    """
    try:
        argv = FLAGS(argv)
        FLAGS.config.keys()
    except flags.Error as error:
        _fail(f'FATAL Flags parsing error: {cli.error_line(error)}')
    except Exception as error:  # noqa: BLE001 - whatever the config file raises
        _fail(f'FATAL Flags parsing error: --config: {cli.error_line(error)}')
    return argv


def _fail(line: str) -> None:
    sys.stderr.write(f'{line}\nPass --helpshort or --helpfull to see help on flags.\n')
    sys.exit(1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    cli.quiet_orbax_logs()
    # Before any other JAX call: the backends start with the first device query.
    backend.configure_process(FLAGS.keep_freed_memory, FLAGS.cpu_devices)
    try:
        multi_process = distributed.initialize(distributed.ProcessFlags(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id))
    except distributed.DistributedSetupError as error:
        raise app.UsageError(str(error)) from error
    if FLAGS.compilation_cache_dir:
        jax.config.update('jax_compilation_cache_dir',
                          os.path.expanduser(FLAGS.compilation_cache_dir))
    if multi_process and jax.process_index() > 0:
        logging.set_verbosity(logging.WARNING)  # the job's log is process 0's; others warn
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except preemption.Preempted:
        sys.exit(preemption.PREEMPTED_EXIT_CODE)  # the checkpoint is committed; rerun to go on
    except (configs.ConfigError, arrays.DatasetNotFoundError, arrays.DataError,
            packages.MissingPackageError, train.NonFiniteError, train.WorkdirError,
            checkpoint.IncompatibleCheckpointError, init_from.InitFromError,
            checkpoint.UnreadableCheckpointsError) as error:
        # Errors of the user's making: the message says what to fix; no traceback.
        logging.error('%s: %s', type(error).__name__, error)
        sys.exit(1)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
