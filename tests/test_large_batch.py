"""Large batches: the rate scaled with the batch, warm-up, LARS, label smoothing and
gradient accumulation, each against its formula or its equivalent computation."""

import logging
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from rounding import assert_equal_up_to_rounding, train_step_terms

from resnet_jax import configs, parallel, pyfiles
from resnet_jax.inputs.device_preprocessing import InMemoryPreprocessing
from resnet_jax.training import benchmark, optim, steps, train, train_state

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / 'experiments'


def _cifar_config(batch_size, **schedule):
    config = configs.get_base_config()
    config.batch_size = batch_size
    config.schedule.update(schedule)
    return config


def test_the_rate_scales_with_the_batch_and_says_why():
    config = _cifar_config(2048)
    assert optim.peak_learning_rate(config)[0] == pytest.approx(1.6, rel=1e-12)
    line = optim.describe_learning_rate(config)
    assert line.startswith('lr 1.6 = 0.1 x 2048/128 ')
    assert 'linear warm-up from 0 over 5 epochs' in line
    imagenet = pyfiles.import_file(EXPERIMENTS / 'imagenet.py').get_config('resnet50')
    imagenet.batch_size = 4096
    assert optim.describe_learning_rate(imagenet).startswith('lr 1.6 = 0.1 x 4096/256 ')
    imagenet.batch_size = 256  # the paper's batch: its rate, no warm-up
    assert optim.describe_learning_rate(imagenet).startswith('lr 0.1 = 0.1 x 256/256 ')
    assert optim.warmup_steps(imagenet, 5004) == 0


@pytest.mark.parametrize('name', ['step', 'cosine', 'polynomial'])
def test_scaled_rate_and_warmup_equal_the_formula_at_every_step(name):
    steps_per_epoch, total = 24, 240
    config = _cifar_config(2048, name=name, unit='epochs', boundaries=(5, 8), end_lr=1e-4)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch, total)
    peak, warmup = 0.1 * 2048 / 128, 5 * steps_per_epoch

    def formula(step):
        if step < warmup:
            return peak * step / warmup
        if name == 'step':
            return peak * 0.1 ** sum(step >= b * steps_per_epoch for b in (5, 8))
        t = (step - warmup) / (total - warmup)
        if name == 'cosine':
            return peak * 0.5 * (1 + math.cos(math.pi * t))
        return (peak - 1e-4) * (1 - t) ** 2 + 1e-4

    got = np.asarray(jax.vmap(schedule)(jnp.arange(total + 1)))
    want = np.array([formula(s) for s in range(total + 1)])
    # A few float32 operations on numbers of the peak's size.
    assert_equal_up_to_rounding(got, want, terms=8, scale=peak)


def test_a_rate_set_by_hand_is_exactly_that_rate():
    config = _cifar_config(2048, lr=0.37)
    assert optim.peak_learning_rate(config)[0] == 0.37
    assert optim.warmup_steps(config, 24) == 0  # not scaled: no automatic warm-up
    schedule = optim.learning_rate_schedule(config, 24, 100)
    assert float(schedule(0)) == np.float32(0.37)
    assert optim.describe_learning_rate(config).startswith('lr 0.37 (schedule.lr, as set)')


def test_steps_at_another_batch_are_called_out():
    config = _cifar_config(2048, boundaries=(32_000, 48_000))
    config.total_steps = 64_000
    assert 'Durations in steps count steps of 2048 images' in optim.describe_learning_rate(
        config)
    assert 'Durations' not in optim.describe_learning_rate(_cifar_config(128))


def _lars_config(weight_decay=0.01, momentum=0.9):
    config = configs.get_base_config()
    config.optim.name = 'lars'
    config.optim.momentum = momentum
    config.optim.weight_decay = weight_decay
    config.optim.weight_decay_params = 'kernels'
    return config


def _tiny_tree():
    params = {'conv': {'kernel': jnp.array([[3.0, 4.0]])},
              'bn': {'scale': jnp.array([2.0]), 'bias': jnp.array([-1.0])}}
    grads = {'conv': {'kernel': jnp.array([[0.5, -1.0]])},
             'bn': {'scale': jnp.array([0.25]), 'bias': jnp.array([0.5])}}
    return params, grads


def test_lars_update_equals_a_hand_computation():
    lr, wd, eta, mu = 2.0, 0.01, 0.001, 0.9
    tx = optim.make_optimizer(_lars_config(wd, mu), lambda step: lr)
    params, grads = _tiny_tree()
    state = tx.init(params)
    first, state = tx.update(grads, state, params)
    second, _ = tx.update(grads, state, params)

    w, g = np.array([3.0, 4.0]), np.array([0.5, -1.0])
    decayed = g + wd * w
    trust = eta * np.linalg.norm(w) / np.linalg.norm(decayed)
    step = lr * trust * decayed
    # A few float32 operations on each value (two norms of two terms each).
    assert_equal_up_to_rounding(first['conv']['kernel'][0], -step, terms=8)
    assert_equal_up_to_rounding(second['conv']['kernel'][0], -(1 + mu) * step, terms=8)
    # BatchNorm parameters: no trust ratio, no decay; the rate and the momentum only.
    for name, grad in (('scale', 0.25), ('bias', 0.5)):
        assert_equal_up_to_rounding(first['bn'][name], -lr * grad, terms=4)
        assert_equal_up_to_rounding(second['bn'][name], -(1 + mu) * lr * grad, terms=4)


@pytest.mark.parametrize('name', ['sgd', 'lars'])
def test_excluded_parameters_get_no_decay(name):
    config = _lars_config(weight_decay=0.5)
    config.optim.name = name
    tx = optim.make_optimizer(config, lambda step: 0.1)
    params, grads = _tiny_tree()
    zero = jax.tree.map(jnp.zeros_like, grads)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates['bn']['scale']).max()) == 0.0
    assert float(jnp.abs(updates['bn']['bias']).max()) == 0.0
    assert float(jnp.abs(updates['conv']['kernel']).min()) > 0.0  # decayed


def test_label_smoothing_equals_its_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 6)
    s = 0.1
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = np.full((6, 10), s / 10) + (1 - s) * np.eye(10)[labels]
    want = -(targets * log_p).sum(-1)
    got = steps.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), s)
    # A sum of 10 terms and a log-sum-exp of 10.
    assert_equal_up_to_rounding(got, want, terms=20, scale=np.abs(targets * log_p).sum(-1))
    plain = steps.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.0)
    np.testing.assert_array_equal(
        plain, optax.softmax_cross_entropy_with_integer_labels(logits, labels))


_STEPS = {}


def _state_and_step(config, devices):
    """A fresh initial state and the compiled train step of `config` on `devices`."""
    key = (config.grad_accum_steps, config.model.bn_group_size, config.sync_batch_norm,
           devices)
    if key not in _STEPS:
        mesh = parallel.make_mesh(jax.devices()[:devices])
        model = train.build_model(config, config.num_classes, mesh, bn_axis_name=(
            parallel.DATA_AXIS if config.sync_batch_norm else None))
        schedule = optim.learning_rate_schedule(config, 8, config.total_steps)
        tx = optim.make_optimizer(config, schedule)
        state = train_state.create_train_state(model, tx, config.image_size,
                                               jax.random.key(0), mesh)
        preprocessing = InMemoryPreprocessing('none', 0, jnp.full((8, 8, 3), 127.0), 255.0,
                                              jnp.float32)
        step = steps.make_train_step(model, tx, schedule, mesh,
                                     preprocess=preprocessing.train,
                                     augment_key=jax.random.key(1),
                                     options=steps.StepOptions.from_config(config))
        _STEPS[key] = state, step
    state, step = _STEPS[key]
    return jax.tree.map(jnp.copy, state), step


def _two_steps(config, devices):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 8).astype(np.int32))
    state, step = _state_and_step(config, devices)
    for _ in range(2):
        state, metrics = step(state, images, labels, jnp.arange(8, dtype=jnp.int32))
    return state, metrics


def _assert_same_update(got, want, config, devices):
    terms = train_step_terms(config.batch_size, devices, config.image_size)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_equal_up_to_rounding(a, b, terms=terms, steps=2)


@pytest.mark.slow
def test_accumulation_is_the_large_batch_with_batch_norm_per_micro_batch(tiny_config):
    accumulated, metrics = _two_steps(tiny_config(grad_accum_steps=2), devices=1)
    # The whole batch of 8 in one pass, BatchNorm over groups of 4: the same update.
    large, large_metrics = _two_steps(tiny_config(**{'model.bn_group_size': 4}), devices=1)
    _assert_same_update(accumulated, large, tiny_config(), devices=2)
    assert_equal_up_to_rounding(metrics['loss'], large_metrics['loss'], terms=64, steps=2)
    # And so the step of two devices, 4 examples each.
    two_devices, _ = _two_steps(tiny_config(), devices=2)
    _assert_same_update(accumulated, two_devices, tiny_config(), devices=2)
    # Not the whole batch normalised at once: BatchNorm per micro-batch is a real choice.
    whole, _ = _two_steps(tiny_config(), devices=1)
    assert not np.allclose(jax.tree.leaves(whole.batch_stats)[0],
                           jax.tree.leaves(accumulated.batch_stats)[0])


@pytest.mark.slow
def test_accumulation_with_synchronised_batch_norm_on_two_devices(tiny_config):
    """Micro-batch j normalises over the j-th quarter of both devices' shares together."""
    config = tiny_config(grad_accum_steps=2, sync_batch_norm=True)
    accumulated, metrics = _two_steps(config, devices=2)
    assert np.isfinite(float(metrics['loss']))
    whole, _ = _two_steps(tiny_config(sync_batch_norm=True), devices=2)
    assert not np.allclose(jax.tree.leaves(whole.batch_stats)[0],
                           jax.tree.leaves(accumulated.batch_stats)[0])


def test_the_run_logs_its_rate_first_and_accumulates(tiny_config, tmp_path, caplog):
    config = tiny_config(batch_size=16, grad_accum_steps=2, total_steps=2,
                         **{'optim.name': 'lars', 'loss.label_smoothing': 0.1})
    with caplog.at_level(logging.INFO):
        final = train.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(final['loss'])
    lines = [r.getMessage() for r in caplog.records if r.name == 'absl']
    assert lines[0].startswith('lr 0.2 = 0.1 x 16/8 (schedule.base_lr per 8 images')


@pytest.mark.parametrize('overrides, message', [
    ({'grad_accum_steps': 3}, 'grad_accum_steps=3 does not divide the 4 examples per device'),
    ({'batch_size': 16, 'grad_accum_steps': 2, 'model.bn_group_size': 3},
     'bn_group_size=3 does not divide the 4 examples per device and micro-batch'),
    ({'grad_accum_steps': 0}, 'grad_accum_steps must be >= 1'),
    ({'loss.label_smoothing': 1.0}, r'label_smoothing must be in \[0, 1\)'),
    ({'optim.name': 'adam'}, "optim.name='adam': choose one of"),
    ({'schedule.lr': -1.0}, 'schedule.lr must be positive'),
])
def test_bad_large_batch_settings_fail_before_compiling(tiny_config, tmp_path, overrides,
                                                        message):
    with pytest.raises(configs.ConfigError, match=message):
        train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / 'run'))
    assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_the_mlperf_recipe_is_the_reference_point():
    recipe = pyfiles.import_file(EXPERIMENTS / 'mlperf_r50.py')
    config = recipe.get_config('3264')
    configs.validate_config(config)
    assert (config.optim.name, config.schedule.lr, config.optim.weight_decay) == (
        'lars', 10.5, 5e-5)
    steps_per_epoch = 1_281_167 // 3264
    assert config.schedule.warmup == 2 * steps_per_epoch
    assert config.total_steps == 2 * steps_per_epoch + 14523
    assert config.model.bn_group_size == 204 and config.loss.label_smoothing == 0.1
    with pytest.raises(ValueError, match='unknown batch'):
        recipe.get_config('1000')


@pytest.mark.slow
def test_accumulation_holds_one_micro_batch_of_activations(tiny_config):
    """However the loop over micro-batches is compiled (on a CPU it is unrolled), they run
    one after the other: the step's temporary memory is about one micro-batch's."""
    temp = {}
    for accum in (1, 4):
        config = tiny_config(batch_size=32 * accum, grad_accum_steps=accum, image_size=16)
        compiled = benchmark.build_steps(config).train_compiled
        temp[accum] = compiled.memory_analysis().temp_size_in_bytes
    assert temp[4] < 1.5 * temp[1], temp
