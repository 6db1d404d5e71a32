"""Fine-tuning: config.init_from, a re-initialised head, frozen stages (an optax mask) and
frozen BatchNorm statistics; a checkpoint of another model stops the run before compiling."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from model_dirs import assert_one_line_error, cifar_model_dir, random_variables, run_module

from resnet_jax import configs, models, pretrained
from resnet_jax.pretrained import init_from
from resnet_jax.training import optim


def variables_of(name: str, num_classes: int, seed: int) -> dict:
    return random_variables(models.create_model(name, num_classes=num_classes), seed)


def test_merge_loads_everything_but_a_head_of_another_size():
    fresh = variables_of('cifar_resnet8', 3, seed=0)
    source = variables_of('cifar_resnet8', 10, seed=1)
    fresh = jax.tree.map(jnp.asarray, fresh)
    merged, report = init_from.merge(fresh, source)
    flat = flax.traverse_util.flatten_dict(merged, sep='/')
    for path, value in flax.traverse_util.flatten_dict(source, sep='/').items():
        expected = (flax.traverse_util.flatten_dict(fresh, sep='/')[path]
                    if path.startswith('params/head/') else value)
        np.testing.assert_array_equal(flat[path], expected, err_msg=path)
    assert [line.split()[0] for line in report['fresh']] == ['params/head/bias',
                                                               'params/head/kernel']
    assert report['loaded'] == len(flat) - 2


def test_merge_of_another_depth_lists_the_differences():
    fresh = jax.tree.map(jnp.asarray, variables_of('cifar_resnet8', 10, seed=0))
    with pytest.raises(init_from.InitFromError, match='not in this model') as error:
        init_from.merge(fresh, variables_of('cifar_resnet20', 10, seed=1), 'r20')
    assert str(error.value).startswith('r20 does not fit this model: ')


def test_frozen_parts_get_no_update_and_no_weight_decay():
    params = jax.tree.map(jnp.asarray, variables_of('cifar_resnet8', 10, 0)['params'])
    config = configs.get_base_config()
    config.frozen_stages = ('stem', 'stage1')
    tx = optim.freeze(optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, 0.9)),
                          config.frozen_stages)
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    new = params
    for _ in range(2):
        updates, state = tx.update(grads, state, new)
        new = optax.apply_updates(new, updates)
    for module in params:
        changed = any(bool(jnp.any(a != b)) for a, b in zip(
            jax.tree.leaves(params[module]), jax.tree.leaves(new[module]), strict=True))
        assert changed == (models.part_of(module) not in ('stem', 'stage1')), module
    assert optim.freeze(tx, ()) is tx


def test_frozen_batch_norm_trains_with_the_running_statistics_and_keeps_them():
    model = models.create_model('cifar_resnet8', num_classes=10, frozen_batch_norm=True)
    variables = variables_of('cifar_resnet8', 10, 0)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), jnp.float32)
    train_out, state = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                                        mutable=['batch_stats']))(variables, x)
    eval_out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_array_equal(train_out, eval_out)
    for a, b in zip(jax.tree.leaves(state['batch_stats']),
                    jax.tree.leaves(variables['batch_stats']), strict=True):
        np.testing.assert_array_equal(a, b)


def test_validate_config_names_the_parts_that_can_be_frozen():
    config = configs.get_base_config()
    config.total_steps = 1
    config.frozen_stages = ('stage4',)  # CIFAR nets have three stages
    with pytest.raises(configs.ConfigError, match=r"choose among \('stem', 'stage1', "
                                                  r"'stage2', 'stage3', 'head'\)"):
        configs.validate_config(config)


SMOKE = ['--config', 'experiments/smoke.py', '--config.model.name=cifar_resnet8',
         '--config.total_steps=2', '--config.eval_every_steps=0', '--config.num_classes=3',
         '--config.checkpoint_every_steps=2', '--config.log_every_steps=1']


@pytest.mark.slow
def test_a_run_starts_from_the_checkpoint_with_a_new_head_and_frozen_stem(tmp_path):
    _, source = cifar_model_dir(tmp_path / 'source')
    result = run_module('resnet_jax.main', *SMOKE, '--workdir', str(tmp_path / 'run'),
                        f'--config.init_from={tmp_path / "source"}',
                        "--config.frozen_stages=('stem',)")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'Initialised from {tmp_path / "source"} (step 0): loaded ' in result.stderr
    assert ('initialised afresh: params/head/bias (3,) (the checkpoint has (10,)), '
            'params/head/kernel (64, 3) (the checkpoint has (64, 10)).') in result.stderr
    assert 'Frozen: stem.' in result.stderr
    variables, step, _ = pretrained.read_variables(str(tmp_path / 'run'))
    assert step == 2
    np.testing.assert_array_equal(variables['params']['stem_conv']['kernel'],
                                  source['params']['stem_conv']['kernel'])
    assert not np.array_equal(variables['params']['stage1_block1']['conv1']['kernel'],
                              source['params']['stage1_block1']['conv1']['kernel'])
    assert variables['params']['head']['kernel'].shape == (64, 3)


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_one_line_before_compiling(tmp_path):
    cifar_model_dir(tmp_path / 'source', name='cifar_resnet20')
    result = run_module('resnet_jax.main', *SMOKE, '--workdir', str(tmp_path / 'run'),
                        f'--config.init_from={tmp_path / "source"}')
    assert_one_line_error(result, "InitFromError: init_from='" + str(tmp_path / 'source')
                          + "' holds another model: model.name: checkpoint 'cifar_resnet20', "
                          "this run 'cifar_resnet8'")
    assert 'Compiled the train step' not in result.stderr
