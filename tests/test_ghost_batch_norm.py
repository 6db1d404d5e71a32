"""Ghost BatchNorm (`model.bn_group_size`): statistics over groups of the device's batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rounding import assert_equal_up_to_rounding

from resnet_jax import configs
from resnet_jax.models import create_model
from resnet_jax.models.layers import FusingBatchNorm
from resnet_jax.training import train


def _train_bn(module, x, residual=None):
    variables = module.init(jax.random.key(0), x, residual, relu=True)
    variables = {'params': {'scale': jnp.full(x.shape[-1], 1.5),
                            'bias': jnp.full(x.shape[-1], -0.25)},
                 'batch_stats': variables['batch_stats']}
    y, updates = module.apply(variables, x, residual, relu=True, mutable=['batch_stats'])
    return y, updates['batch_stats']


def test_each_group_is_normalised_as_a_batch_of_its_own():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(2.0, 3.0, (8, 5, 5, 4)), jnp.float32)
    residual = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    ghost = FusingBatchNorm(use_running_average=False, momentum=0.9, group_size=4)
    plain = FusingBatchNorm(use_running_average=False, momentum=0.9)
    y, stats = _train_bn(ghost, x, residual)
    halves = [_train_bn(plain, x[i:i + 4], residual[i:i + 4]) for i in (0, 4)]
    terms = 4 * 5 * 5  # a group's statistics sum its N*H*W values, two sums in sequence
    assert_equal_up_to_rounding(y, jnp.concatenate([h[0] for h in halves]), terms=terms,
                                steps=2)
    for name in ('mean', 'var'):  # the running averages take the mean of the groups'
        assert_equal_up_to_rounding(stats[name], (halves[0][1][name] + halves[1][1][name]) / 2,
                                    terms=terms, steps=2, err_msg=name)
    whole, _ = _train_bn(plain, x, residual)
    assert not np.allclose(y, whole, atol=1e-3)  # and it is not the whole batch's statistic


@pytest.mark.slow
def test_a_model_with_groups_differs_in_training_only():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 8, 8, 3)), jnp.float32)
    grouped = create_model('cifar_resnet8', num_classes=10, bn_group_size=2)
    whole = create_model('cifar_resnet8', num_classes=10)
    variables = whole.init(jax.random.key(0), x, train=False)
    assert jax.tree.structure(variables) == jax.tree.structure(
        grouped.init(jax.random.key(0), x, train=False))
    train_outputs = [m.apply(variables, x, train=True, mutable=['batch_stats'])[0]
                     for m in (grouped, whole)]
    assert not np.allclose(*train_outputs, atol=1e-3)
    np.testing.assert_array_equal(grouped.apply(variables, x, train=False),
                                  whole.apply(variables, x, train=False))


def test_groups_must_divide_each_devices_batch_and_exclude_sync_batch_norm():
    config = configs.get_base_config()
    config.model.bn_group_size = 48
    with pytest.raises(configs.ConfigError, match='does not divide the 64 examples per device'):
        train.check_batch_split(config, num_devices=2)
    config.model.bn_group_size = 64
    train.check_batch_split(config, num_devices=2)
    train.check_batch_split(config, num_devices=4)  # 32 per device: one group, the whole
    config.sync_batch_norm = True
    config.total_steps = 10
    with pytest.raises(configs.ConfigError, match='exclude each other'):
        configs.validate_config(config)


def test_the_fused_cpu_path_is_bypassed_for_groups():
    # The CPU kernels' fused op normalises the whole batch; with groups the layer must not
    # use it (this fake one would fail the test if called).
    class Fused:
        def covers(self, x):
            return True

        def train(self, *args, **kwargs):
            raise AssertionError('the fused op ran with bn_group_size set')

    x = jnp.ones((4, 3, 3, 2))
    module = FusingBatchNorm(use_running_average=False, fused=Fused(), group_size=2)
    variables = module.init(jax.random.key(0), x)
    y, _ = module.apply(variables, x, mutable=['batch_stats'])
    np.testing.assert_allclose(y, 0.0)  # constant groups normalise to the bias, 0
