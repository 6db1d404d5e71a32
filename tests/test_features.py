"""resnet_jax.pretrained.features: the stage outputs and pre-logits are the model's own
forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
from model_dirs import random_variables
from rounding import assert_equal_up_to_rounding

from resnet_jax import models
from resnet_jax.pretrained import features


def test_imagenet_net_gives_c2_to_c5_at_strides_4_to_32_and_the_pooled_features():
    model = models.ResNet(stage_sizes=(1, 1, 1, 1), stage_widths=(8, 16, 32, 64),
                          block=models.blocks.with_variant(models.BottleneckBlock, 'v1.5'),
                          stem='imagenet', num_classes=5, shortcut='B')
    variables = random_variables(model, image_size=64)
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 3)),
                         jnp.float32)
    out, logits = jax.jit(lambda v, x: (features.extract(model, v, x),
                                        model.apply(v, x, train=False)))(variables, images)
    assert {k: v.shape for k, v in out.items()} == {
        'stem': (2, 16, 16, 8), 'C2': (2, 16, 16, 32), 'C3': (2, 8, 8, 64),
        'C4': (2, 4, 4, 128), 'C5': (2, 2, 2, 256), 'pre_logits': (2, 256), 'logits': (2, 5)}
    assert_equal_up_to_rounding(out['pre_logits'], out['C5'].mean(axis=(1, 2)), terms=2 * 2)
    head = variables['params']['head']
    assert_equal_up_to_rounding(out['logits'], out['pre_logits'] @ head['kernel'] + head['bias'],
                                terms=256 + 1)
    np.testing.assert_array_equal(out['logits'], logits)


def test_cifar_net_has_three_stages():
    model = models.create_model('cifar_resnet8', num_classes=10)
    variables = random_variables(model)
    out = jax.jit(lambda v, x: features.extract(model, v, x))(variables,
                                                               jnp.zeros((1, 32, 32, 3)))
    assert [k for k in out if k.startswith('C')] == ['C2', 'C3', 'C4']
    assert out['pre_logits'].shape == (1, 64)
