"""A tiny synthetic run that exercises the whole system in well under a minute on a CPU.

    python -m resnet_jax.main --config experiments/smoke.py --workdir /tmp/smoke

It trains CIFAR ResNet-20 for 20 steps on random 32x32 images (random labels, so the
accuracy means nothing), evaluates, and writes checkpoints and metrics.
"""

from resnet_jax import configs


def get_config():
    config = configs.get_base_config()
    config.dataset = 'synthetic'
    config.image_size = 32
    config.num_classes = 10
    config.synthetic.num_train_examples = 512
    config.synthetic.num_eval_examples = 100
    config.model.name = 'cifar_resnet20'
    config.batch_size = 32
    config.eval_batch_size = 32
    config.total_steps = 20
    config.log_every_steps = 5
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 10
    return config
