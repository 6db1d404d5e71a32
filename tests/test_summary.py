"""Tests of resnet_jax.models.summary: multiply-adds against the paper and torchvision, and the
CLI."""

import re

import jax
import jax.numpy as jnp
import pytest

from resnet_jax.models import MODEL_NAMES, create_model
from resnet_jax.models.summary import ModelSummary, count_params, main, summarize

PAPER_TABLE1_GMACS = {  # v1: stride on the first 1x1 of a bottleneck
    'resnet18': 1.8, 'resnet34': 3.6, 'resnet50': 3.8, 'resnet101': 7.6, 'resnet152': 11.3,
}
TORCHVISION_GMACS = {  # v1.5: torchvision's documented GFLOPS (multiply-adds) at 224x224
    'resnet18': 1.81, 'resnet34': 3.66, 'resnet50': 4.09, 'resnet101': 7.80, 'resnet152': 11.51,
}


@pytest.mark.parametrize('name', PAPER_TABLE1_GMACS)
def test_v1_macs_match_paper_table1(name):
    summary = summarize(create_model(name, num_classes=1000, variant='v1'), 224)
    assert summary.macs / 1e9 == pytest.approx(PAPER_TABLE1_GMACS[name], rel=0.03)


@pytest.mark.parametrize('name', TORCHVISION_GMACS)
def test_v15_macs_match_torchvision(name):
    summary = summarize(create_model(name, num_classes=1000, variant='v1.5'), 224)
    assert summary.macs / 1e9 == pytest.approx(TORCHVISION_GMACS[name], rel=0.01)


def test_cifar_resnet20_by_hand():
    # 3x3 convs only: H*W * 9 * C_in * C_out per conv, 2 per block, 3 blocks per stage.
    def conv(side, c_in, c_out):
        return side * side * 9 * c_in * c_out

    stem = conv(32, 3, 16)
    stage1 = 6 * conv(32, 16, 16)
    stage2 = conv(16, 16, 32) + 5 * conv(16, 32, 32)
    stage3 = conv(8, 32, 64) + 5 * conv(8, 64, 64)
    summary = summarize(create_model('cifar_resnet20', num_classes=10), 32)
    assert [(r.part, r.output_shape, r.macs) for r in summary.rows] == [
        ('stem', (32, 32, 16), stem),
        ('stage1', (32, 32, 16), stage1),
        ('stage2', (16, 16, 32), stage2),
        ('stage3', (8, 8, 64), stage3),
        ('head', (10,), 64 * 10),
    ]
    assert summary.macs == 40_551_040
    assert summary.params == 269_722
    assert summary.rows[0].params == 3 * 3 * 3 * 16 + 2 * 16  # conv + BN scale and bias


def test_v1_and_v15_differ_only_by_the_first_1x1_of_each_downsampling_block():
    # v1.5 runs that 1x1 (C_in -> width) at the full input resolution instead of the halved.
    v1 = summarize(create_model('resnet50', num_classes=1000, variant='v1'), 224)
    v15 = summarize(create_model('resnet50', num_classes=1000, variant='v1.5'), 224)
    extra = {
        'stage2': (56 * 56 - 28 * 28) * 256 * 128,
        'stage3': (28 * 28 - 14 * 14) * 512 * 256,
        'stage4': (14 * 14 - 7 * 7) * 1024 * 512,
    }
    for a, b in zip(v1.rows, v15.rows, strict=True):
        assert (a.part, a.output_shape, a.params) == (b.part, b.output_shape, b.params)
        assert b.macs - a.macs == extra.get(a.part, 0)


def test_totals_equal_rows_and_real_parameter_count():
    model = create_model('resnet18', num_classes=10)
    summary = summarize(model, 64)
    assert isinstance(summary, ModelSummary)
    assert [r.part for r in summary.rows] == ['stem', 'stage1', 'stage2', 'stage3', 'stage4',
                                              'head']
    assert summary.params == sum(r.params for r in summary.rows)
    assert summary.macs == sum(r.macs for r in summary.rows)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    assert summary.params == count_params(shapes['params']) == 11_181_642
    assert summary.rows[-1].params == 512 * 10 + 10


def test_count_params():
    assert count_params({'a': jnp.zeros((2, 3)), 'b': [jnp.zeros(4), jnp.zeros(())]}) == 11


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_cli_resnet50(capsys):
    assert main(['--model', 'resnet50']) == 0
    line = _last_line(capsys)
    assert re.fullmatch(r'params=\d+ macs=\d+', line)
    expected = summarize(create_model('resnet50', num_classes=1000), 224)
    assert line == f'params=25557032 macs={expected.macs}'
    assert main(['--model', 'resnet50', '--variant', 'v1.5']) == 0
    assert _last_line(capsys) == 'params=25557032 macs=4089184256'


def test_cli_cifar_defaults_and_options(capsys):
    assert main(['--model', 'cifar_resnet20']) == 0  # 10 classes, 32x32, shortcut A
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == 'params=269722 macs=40551040'
    assert 'stage3' in out and '8x8x64' in out
    assert main(['--model', 'cifar_resnet20', '--shortcut', 'B', '--num-classes', '100',
                 '--image-size', '16']) == 0
    expected = summarize(create_model('cifar_resnet20', num_classes=100, shortcut='B'), 16)
    assert _last_line(capsys) == f'params={expected.params} macs={expected.macs}'


def test_cli_unknown_model_exits_2_with_the_names(capsys):
    with pytest.raises(SystemExit) as info:
        main(['--model', 'resnet51'])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    for name in MODEL_NAMES:
        assert name in err


def test_cli_plain_net_with_shortcut_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(['--model', 'plain18', '--shortcut', 'B'])
    assert info.value.code == 2
    assert 'plain' in capsys.readouterr().err


def test_cli_config_of_an_experiment(capsys):
    assert main(['--config', 'experiments/cifar10.py:resnet56']) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == 'params=853018 macs=125485696'
    assert main(['--config', 'experiments/r50.py']) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == 'params=25557032 macs=3857973248'


def test_cli_config_and_model_together_exits_2(capsys):
    with pytest.raises(SystemExit) as raised:
        main(['--config', 'experiments/r50.py', '--model', 'resnet18'])
    assert raised.value.code == 2
    assert 'not both' in capsys.readouterr().err
