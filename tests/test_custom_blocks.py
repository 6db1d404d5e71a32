"""A block defined outside the package (experiments/se_resnet.py): found from the config,
trained by the main job, and rebuilt from the workdir wherever it goes."""

import json
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_dirs import REPO, run_module

from resnet_jax import configs, models, pretrained
from resnet_jax.paper import layer_responses, reproduce
from resnet_jax.training import train

SE = str(REPO / 'experiments' / 'se_resnet.py')
TINY = ['--config.dataset=synthetic', '--config.num_classes=4', '--config.image_size=8',
        '--config.synthetic.num_train_examples=32', '--config.synthetic.num_eval_examples=16',
        '--config.batch_size=16', '--config.eval_batch_size=16', '--config.total_steps=2',
        '--config.checkpoint_every_steps=2', '--config.eval_every_steps=0',
        '--config.model.name=cifar_resnet8']  # (a study sets the model: TINY[:-1])


def test_the_config_names_the_class_of_the_file_and_the_model_is_built_from_it():
    config = configs.load_config(f'{SE}:resnet20')
    configs.validate_config(config)
    model = models.from_config(config, 10)
    assert model.block.__name__ == 'SEBasicBlock' and model.block.reduction == 16
    assert issubclass(model.block, models.Block)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))['params']
    block = shapes['stage3_block1']
    assert block['se_reduce']['kernel'].shape == (64, 4)  # 64 channels / 16
    assert block['se_expand']['kernel'].shape == (4, 64)
    assert {'conv1', 'bn1', 'conv2', 'bn2'} <= set(block)  # the paper's names, reused


@pytest.mark.parametrize('block, message', [
    ('nowhere/missing.py:Block', 'no file'),
    (f'{SE}:NoSuchBlock', "defines no models.Block subclass 'NoSuchBlock'"),
    ('resnext', 'choose one of'),
])
def test_a_block_that_cannot_be_found_is_a_config_error(block, message):
    config = configs.load_config(f'{SE}:resnet20')
    with config.unlocked():
        config.model.block = block
    with pytest.raises(configs.ConfigError, match=message):
        configs.validate_config(config)


def test_a_study_runs_the_models_of_another_experiment_file(tmp_path):
    args, _ = reproduce.parse_args(['cifar10', '--workdir', str(tmp_path), '--experiment', SE,
                                    '--models', 'resnet20,resnet56', '--schedule', 'short'])
    assert [r.config.model.block for r in args.runs] == [f'{SE}:SEBasicBlock'] * 2
    assert [r.config.total_steps for r in args.runs] == [2500, 2500]
    with pytest.raises(SystemExit):
        reproduce.parse_args(['cifar10', '--workdir', str(tmp_path), '--experiment', SE,
                              '--models', 'plain20'])


@pytest.mark.slow
def test_a_study_trains_it_and_the_workdir_rebuilds_it_wherever_it_goes(tmp_path, caplog):
    """The study runs as a user runs it (a process that starts the main job's); the steps
    after it run in this process, each parsing its command line as the main job does."""
    study = run_module('resnet_jax.paper.reproduce', 'cifar10', '--experiment', SE, '--models',
                       'resnet20', '--workdir', str(tmp_path / 'study'), *TINY[:-1])
    assert study.returncode == 0, study.stderr[-3000:]
    assert 'resnet20' in (tmp_path / 'study' / 'results.md').read_text()
    workdir = tmp_path / 'study' / 'resnet20_paper_seed0'
    assert (workdir / 'blocks' / 'se_resnet.py').read_text() == (REPO / SE).read_text()
    caplog.set_level(logging.INFO)
    train.train_and_evaluate(main_config(*TINY[:-1], '--config.total_steps=4'), str(workdir))
    assert 'Resumed from the checkpoint of step 2' in caplog.text

    # Moved where the experiment file is not: the workdir's copy rebuilds the model.
    moved = tmp_path / 'moved'
    shutil.copytree(workdir, moved)
    config = json.loads((moved / 'config.json').read_text())
    config['model']['block'] = '/gone/se_resnet.py:SEBasicBlock'
    (moved / 'config.json').write_text(json.dumps(config))
    model, variables = pretrained.load(str(moved))
    assert model.block.__name__ == 'SEBasicBlock'
    assert 'se_reduce' in variables['params']['stage1_block1']
    images = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    original, _ = pretrained.load(str(workdir))
    np.testing.assert_array_equal(model.apply(variables, images, train=False),
                                  original.apply(variables, images, train=False))

    assert layer_responses.main([str(moved), '-o', str(tmp_path / 'responses.png'),
                                 '--json', str(tmp_path / 'r.json')]) == 0
    layers = json.loads((tmp_path / 'r.json').read_text())['runs'][0]['layers']
    assert len(layers) == 18  # ResNet-20: 9 blocks of 2 3x3 layers
    # The resume's length: the same train step, read from the compilation cache.
    fine_tune = main_config(*TINY[:-1], '--config.total_steps=4', f'--config.init_from={moved}')
    train.train_and_evaluate(fine_tune, str(tmp_path / 'fine_tuned'))
    assert 'Initialised from' in caplog.text


def main_config(*overrides: str):
    """The config of `python -m resnet_jax.main --config SE:resnet20 OVERRIDES...`."""
    return reproduce.build_config(f'{SE}:resnet20', overrides)


def test_a_study_run_saved_before_model_block_existed_is_the_same_config(tmp_path):
    args = ['cifar10', '--workdir', str(tmp_path), '--models', 'resnet20', '--schedule', 'short']
    (run,) = reproduce.parse_args(args)[0].runs
    saved = json.loads(run.config.to_json_best_effort())
    del saved['model']['block']  # as config.json was written before the field
    run.workdir.mkdir(parents=True)
    (run.workdir / 'config.json').write_text(json.dumps(saved))
    reproduce.parse_args(args)  # no "holds a run of another config"
    saved['model']['shortcut'] = 'B'
    (run.workdir / 'config.json').write_text(json.dumps(saved))
    with pytest.raises(SystemExit):
        reproduce.parse_args(args)
