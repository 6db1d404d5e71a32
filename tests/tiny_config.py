"""The suite's one tiny run, as an experiment config: a CIFAR ResNet-8 on 8x8 synthetic
images compiles and steps in seconds. Tests that train use it (in process through
conftest's `tiny_config` fixture, in subprocesses as `--config tests/tiny_config.py`) and
change only what they test, so that their compiled steps are shared through the
compilation cache."""

from ml_collections import ConfigDict

from resnet_jax import configs

FIELDS = {
    'model.name': 'cifar_resnet8', 'dataset': 'synthetic', 'image_size': 8, 'num_classes': 10,
    'synthetic.num_train_examples': 64, 'synthetic.num_eval_examples': 30, 'batch_size': 8,
    'eval_batch_size': 8, 'total_steps': 4, 'log_every_steps': 2, 'checkpoint_every_steps': 2,
    'schedule.base_batch_size': 8,  # the base config's rate, 0.1, for the tiny batch
}


def get_config(**overrides) -> ConfigDict:
    """The base config with FIELDS and `overrides` ('schedule.boundaries': (3,), ...)."""
    config = configs.get_base_config()
    for key, value in (FIELDS | overrides).items():
        target = config
        *parents, leaf = key.split('.')
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config
