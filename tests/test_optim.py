"""Learning-rate schedules, the weight-decay mask and the SGD update."""

import jax.numpy as jnp
import pytest
from rounding import assert_equal_up_to_rounding

from resnet_jax import configs
from resnet_jax.training import optim


def _config(**schedule):
    config = configs.get_base_config()
    config.schedule.update(schedule)
    return config


def _lr(schedule, step):
    return float(schedule(jnp.asarray(step)))


def _assert_lr(schedule, step: int, want: float, peak: float = 0.1) -> None:
    """A schedule is its peak rate times factors of at most 1, in a few float32
    operations: its rounding is relative to the peak."""
    assert_equal_up_to_rounding(_lr(schedule, step), want, terms=4, scale=peak)


def test_paper_cifar_step_schedule():
    config = _config(boundaries=(32_000, 48_000))
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=390, total_steps=64_000)
    _assert_lr(schedule, 0, 0.1)
    _assert_lr(schedule, 31_999, 0.1)
    _assert_lr(schedule, 32_000, 0.01)
    _assert_lr(schedule, 47_999, 0.01)
    _assert_lr(schedule, 48_000, 0.001)
    _assert_lr(schedule, 63_999, 0.001)


def test_resnet110_constant_warmup_keeps_the_boundaries():
    config = _config(boundaries=(32_000, 48_000), warmup=400, warmup_lr=0.01)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=390, total_steps=64_000)
    _assert_lr(schedule, 0, 0.01)
    _assert_lr(schedule, 399, 0.01)
    _assert_lr(schedule, 400, 0.1)
    _assert_lr(schedule, 32_000, 0.01)


def test_boundaries_in_epochs():
    config = _config(unit='epochs', boundaries=(30, 60))
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=100, total_steps=9_000)
    _assert_lr(schedule, 2_999, 0.1)
    _assert_lr(schedule, 3_000, 0.01)
    _assert_lr(schedule, 6_000, 0.001)


def test_cosine_with_linear_warmup():
    config = _config(name='cosine', base_lr=0.4, warmup=10)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=10, total_steps=110)
    _assert_lr(schedule, 0, 0.0, peak=0.4)
    _assert_lr(schedule, 5, 0.2, peak=0.4)
    _assert_lr(schedule, 10, 0.4, peak=0.4)
    _assert_lr(schedule, 60, 0.2, peak=0.4)
    _assert_lr(schedule, 110, 0.0, peak=0.4)
    values = [_lr(schedule, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_weight_decay_mask():
    params = {'conv': {'kernel': 1}, 'bn': {'scale': 1, 'bias': 1},
              'head': {'kernel': 1, 'bias': 1}}
    assert optim.weight_decay_mask(params, 'all') == {
        'conv': {'kernel': True}, 'bn': {'scale': True, 'bias': True},
        'head': {'kernel': True, 'bias': True}}
    assert optim.weight_decay_mask(params, 'kernels') == {
        'conv': {'kernel': True}, 'bn': {'scale': False, 'bias': False},
        'head': {'kernel': True, 'bias': False}}


@pytest.mark.parametrize('which, decayed_bias', [('all', True), ('kernels', False)])
def test_sgd_update_matches_l2_decay_then_momentum(which, decayed_bias):
    config = _config()
    config.optim.weight_decay = 0.01
    config.optim.weight_decay_params = which
    tx = optim.make_optimizer(config, lambda step: 0.1)
    params = {'kernel': jnp.array([2.0]), 'bias': jnp.array([3.0])}
    grads = {'kernel': jnp.array([1.0]), 'bias': jnp.array([1.0])}
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    # A few float32 operations on each value.
    assert_equal_up_to_rounding(updates['kernel'], -0.1 * (1.0 + 0.01 * 2.0), terms=4)
    bias_grad = 1.0 + (0.01 * 3.0 if decayed_bias else 0.0)
    assert_equal_up_to_rounding(updates['bias'], -0.1 * bias_grad, terms=4)
    # Second step: the momentum buffer (0.9) carries the first gradient.
    updates, _ = tx.update(grads, state, params)
    assert_equal_up_to_rounding(updates['kernel'], -0.1 * 1.9 * 1.02, terms=4)
