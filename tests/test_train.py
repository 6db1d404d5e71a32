"""The train step, data parallelism, evaluation, checkpoints and resume, on tiny models.

conftest.py gives this process 2 simulated CPU devices.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from rounding import assert_equal_up_to_rounding, train_step_terms

from resnet_jax import configs, parallel
from resnet_jax.inputs import arrays, in_memory
from resnet_jax.inputs.device_preprocessing import InMemoryPreprocessing
from resnet_jax.training import evaluation, optim, steps, train, train_state

_COMPILED = {}


def _state_and_step(config, mesh, augment='none'):
    """A fresh initial state and the train step; compiled once per kind of step."""
    key = (config.sync_batch_norm, mesh.devices.size, augment)
    if key not in _COMPILED:
        _COMPILED[key] = _build_state_and_step(config, mesh, augment)
    state, step = _COMPILED[key]
    return jax.tree.map(jnp.copy, state), step


def _build_state_and_step(config, mesh, augment):
    model = train.build_model(
        config, config.num_classes, mesh,
        bn_axis_name=parallel.DATA_AXIS if config.sync_batch_norm else None)
    schedule = optim.learning_rate_schedule(config, 8, config.total_steps)
    tx = optim.make_optimizer(config, schedule)
    state = train_state.create_train_state(
        model, tx, config.image_size, jax.random.key(0), mesh)
    preprocessing = InMemoryPreprocessing(augment, 2, jnp.full((8, 8, 3), 127.0), 255.0,
                                          jnp.float32)
    step = steps.make_train_step(model, tx, schedule, mesh, preprocess=preprocessing.train,
                                 augment_key=jax.random.key(1))
    return state, step


def _batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (size, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size).astype(np.int32)
    return jnp.asarray(images), jnp.asarray(labels), jnp.arange(size, dtype=jnp.int32)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_two_simulated_devices():
    assert jax.device_count() == 2, 'conftest.py should force 2 CPU devices'


def test_one_train_step_updates_everything(tiny_config):
    mesh = parallel.make_mesh()
    state, step = _state_and_step(tiny_config(), mesh, augment='pad_crop_flip')
    before = jax.device_get(state)
    new_state, metrics = step(state, *_batch())
    assert int(new_state.step) == 1
    assert np.isfinite(float(metrics['loss']))
    assert 0.0 <= float(metrics['accuracy']) <= 1.0
    assert_equal_up_to_rounding(float(metrics['learning_rate']), 0.1, terms=1)
    for old, new in zip(_leaves(before.params), _leaves(new_state.params), strict=True):
        assert not np.array_equal(old, new)
    means = [x for x in jax.tree_util.tree_leaves_with_path(new_state.batch_stats)
             if 'mean' in jax.tree_util.keystr(x[0])]
    assert any(np.abs(np.asarray(v)).max() > 0 for _, v in means)


@pytest.mark.slow
def test_sync_batch_norm_on_two_devices_equals_one_device(tiny_config):
    config = tiny_config(sync_batch_norm=True)
    one = parallel.make_mesh(jax.devices()[:1])
    two = parallel.make_mesh(jax.devices()[:2])
    state1, step1 = _state_and_step(config, one)
    state2, step2 = _state_and_step(config, two)
    new1, m1 = step1(state1, *_batch())
    new2, m2 = step2(state2, *_batch())
    # Synchronised: the whole batch's sums, as on one device.
    terms = train_step_terms(config.batch_size, 1, config.image_size)
    for a, b in zip(_leaves(new1), _leaves(new2), strict=True):
        assert_equal_up_to_rounding(a, b, terms=terms)
    assert_equal_up_to_rounding(float(m1['loss']), float(m2['loss']), terms=terms)


@pytest.mark.slow
def test_per_device_batch_norm_is_the_mean_of_two_half_batch_steps(tiny_config):
    """Per-device BN on 2 devices = averaging two 1-device steps on the batch halves.

    The first SGD step is affine in the gradient, and the running statistics are affine in
    the batch statistics, so the exact relation holds for parameters and BN statistics.
    """
    config = tiny_config()
    one = parallel.make_mesh(jax.devices()[:1])
    two = parallel.make_mesh(jax.devices()[:2])
    images, labels, indices = _batch()
    state2, step2 = _state_and_step(config, two)
    combined, _ = step2(state2, images, labels, indices)
    halves = []
    for half in (indices[:4], indices[4:]):
        state1, step1 = _state_and_step(config, one)
        halves.append(step1(state1, images, labels, half)[0])
    for got, a, b in zip(_leaves(combined), _leaves(halves[0]), _leaves(halves[1]),
                         strict=True):
        assert_equal_up_to_rounding(got, (a.astype(np.float64) + b) / 2,
                                    terms=train_step_terms(config.batch_size, 2,
                                                           config.image_size))
    # And it is not the full-batch (synchronised) statistic.
    state_sync, step_sync = _state_and_step(tiny_config(sync_batch_norm=True), two)
    synced, _ = step_sync(state_sync, images, labels, indices)
    assert not np.allclose(_leaves(synced.batch_stats)[0], _leaves(combined.batch_stats)[0])


def test_evaluation_is_exact_with_a_padded_last_batch(tiny_config):
    config = tiny_config()
    mesh = parallel.make_mesh()
    state, _ = _state_and_step(config, mesh)
    model = train.build_model(config, 10, mesh)
    preprocessing = InMemoryPreprocessing('none', 0, jnp.full((8, 8, 3), 127.0), 255.0,
                                          jnp.float32)
    eval_step = evaluation.make_in_memory_eval_step(model, mesh, preprocessing.normalize)
    images, labels, _ = _batch(30, seed=3)
    padded = evaluation.evaluate_in_memory(eval_step, state, images, labels, batch_size=8,
                                           mesh=mesh)
    whole = evaluation.evaluate_in_memory(eval_step, state, images, labels, batch_size=30,
                                          mesh=mesh)
    # Another batch size may sum each example's layers in another order: at most a 3x3
    # window of 64 channels, one sum per layer of the 8, and the sum over the 30 examples.
    for key in whole:
        assert_equal_up_to_rounding(padded[key], whole[key], terms=3 * 3 * 64, steps=8 + 1,
                                    err_msg=key)
    # Reference computed example by example, without padding.
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    logits = model.apply(variables, (images.astype(jnp.float32) - 127.0) / 255.0, train=False)
    assert padded['top1_accuracy'] == pytest.approx(
        float(jnp.mean(jnp.argmax(logits, -1) == labels)))


def test_batch_order_is_a_fresh_permutation_each_epoch_and_resumable():
    order = in_memory.BatchOrder(num_examples=10, batch_size=3, seed=5)
    assert order.steps_per_epoch == 3
    epoch0 = np.concatenate([order.indices(s) for s in range(3)])
    epoch1 = np.concatenate([order.indices(s) for s in range(3, 6)])
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9
    assert not np.array_equal(epoch0, epoch1)
    fresh = in_memory.BatchOrder(num_examples=10, batch_size=3, seed=5)
    np.testing.assert_array_equal(fresh.indices(4), order.indices(4))


def _checkpoint_arrays(workdir, step):
    path = workdir / 'checkpoints' / str(step) / 'state'
    return ocp.StandardCheckpointer().restore(path)


@pytest.mark.slow
def test_train_and_evaluate_writes_outputs_and_resumes_exactly(tiny_config, tmp_path):
    straight = tmp_path / 'straight'
    final = train.train_and_evaluate(tiny_config(total_steps=6), str(straight))
    assert 0.0 <= final['top1_accuracy'] <= 1.0
    for name in ('config.json', 'metrics.jsonl', 'final_eval.json'):
        assert (straight / name).is_file(), name
    assert any((straight / 'tensorboard').iterdir())
    assert json.loads((straight / 'config.json').read_text())['total_steps'] == 6
    records = [json.loads(line) for line in (straight / 'metrics.jsonl').read_text().split('\n')
               if line]
    assert [r['step'] for r in records if 'train/loss' in r] == [2, 4, 6]
    assert any('test/top1_accuracy' in r for r in records)
    assert sorted(int(p.name) for p in (straight / 'checkpoints').iterdir()) == [2, 4, 6]

    # Stop after 4 steps, then run the 6-step command again on the same workdir.
    resumed = tmp_path / 'resumed'
    train.train_and_evaluate(tiny_config(total_steps=4), str(resumed))
    again = train.train_and_evaluate(tiny_config(total_steps=6), str(resumed))
    assert again == final
    for a, b in zip(jax.tree.leaves(_checkpoint_arrays(straight, 6)),
                    jax.tree.leaves(_checkpoint_arrays(resumed, 6)), strict=True):
        np.testing.assert_array_equal(a, b)
    steps_logged = [json.loads(line)['step'] for line in
                    (resumed / 'metrics.jsonl').read_text().split('\n') if 'train/loss' in line]
    assert steps_logged == [2, 4, 6]  # the resumed run started at step 4


@pytest.mark.slow
def test_keeps_only_the_newest_checkpoints(tiny_config, tmp_path):
    train.train_and_evaluate(
        tiny_config(total_steps=8, checkpoint_every_steps=1, keep_checkpoints=2), str(tmp_path))
    assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()) == [7, 8]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
    config = tiny_config(total_steps=30, checkpoint_every_steps=1, log_every_steps=1)
    config.schedule.base_lr = 1e30
    with pytest.raises(train.NonFiniteError, match=r'at step \d+') as raised:
        train.train_and_evaluate(config, str(tmp_path))
    saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir())
    bad_step = int(str(raised.value).split('at step ')[1].split(';')[0])
    assert saved and max(saved) <= bad_step
    for leaf in jax.tree.leaves(_checkpoint_arrays(tmp_path, max(saved))):
        assert np.all(np.isfinite(leaf))


@pytest.mark.parametrize('overrides, message', [
    ({'batch_size': 7}, 'does not divide among 2 devices'),
    ({'eval_batch_size': 9}, 'eval_batch_size=9 does not divide'),
    ({'model.name': 'resnet19'}, 'valid names: resnet18'),
    ({'batch_size': 0}, 'batch_size=0 must be positive'),
    ({'schedule.base_lr': -0.1}, 'base_lr=-0.1 must be positive'),
    ({'total_steps': None}, 'set total_steps or num_epochs'),
    ({'dataset': 'mnist'}, "dataset='mnist'"),
    ({'batch_size': 128}, 'exceeds the 64 training examples'),
    ({'image_size': 0}, 'image_size must be positive'),
])
def test_bad_configs_fail_before_compiling(tiny_config, tmp_path, overrides, message):
    with pytest.raises(configs.ConfigError, match=message):
        train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
    assert not (tmp_path / 'checkpoints').exists()


def test_missing_data_set_is_a_clear_error(tiny_config, tmp_path, monkeypatch):
    monkeypatch.delenv('RESNET_JAX_DATA_DIR', raising=False)
    config = tiny_config(dataset='cifar10', data_dir=str(tmp_path / 'nowhere'), image_size=None)
    with pytest.raises(arrays.DatasetNotFoundError, match='nowhere'):
        train.train_and_evaluate(config, str(tmp_path / 'work'))


def test_unwritable_workdir_is_found_first(tiny_config, tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    with pytest.raises(train.WorkdirError, match='not writable'):
        train.train_and_evaluate(tiny_config(), str(blocker / 'workdir'))
