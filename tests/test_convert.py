"""torchvision weights in: the file readers, the name mapping, parity with torchvision's
own logits (tests/fixtures, written by make_torchvision_fixtures.py; no torch needed
here), the `convert` command and its errors."""

import json
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest
from model_dirs import (
    FIXTURES,
    assert_one_line_error,
    run_module,
    shapes_only_state_dict,
    torchvision_state_dict,
)

from resnet_jax import models, pretrained
from resnet_jax.pretrained import eval_preprocessing, torch_files, torchvision_weights

NARROW = {  # the committed fixture's nets: torchvision's modules, widths / 8
    'narrow_resnet18': ('basic', (2, 2, 2, 2), 'pth'),
    'narrow_resnet50': ('bottleneck', (3, 4, 6, 3), 'safetensors'),
}


def narrow_model(name: str) -> models.ResNet:
    block, sizes, _ = NARROW[name]
    return models.ResNet(stage_sizes=sizes, stage_widths=(8, 16, 32, 64),
                         block=models.blocks.with_variant(models.BLOCKS[block], 'v1.5'),
                         stem='imagenet', num_classes=10, shortcut='B')


@pytest.mark.parametrize('name', sorted(NARROW))
def test_logits_equal_torchvisions_on_its_own_file(name):
    file = FIXTURES / f'{name}.{NARROW[name][2]}'
    model = narrow_model(name)
    variables = torchvision_weights.to_variables(torch_files.read_state_dict(str(file)), model)
    images = np.load(FIXTURES / f'{name}_input.npy')
    expected = np.load(FIXTURES / f'{name}_logits.npy')
    logits = np.asarray(model.apply(variables, images, train=False))
    assert logits.dtype == np.float32
    # The BatchNorm statistics are far from 0/1, so a wrong epsilon, padding or layout fails.
    assert np.abs(expected).max() > 1.0
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()
    assert (logits.argmax(-1) == expected.argmax(-1)).all()


def test_fixture_is_torchvisions_pickle_with_tensors_as_numpy():
    state_dict = torch_files.read_state_dict(str(FIXTURES / 'narrow_resnet18.pth'))
    assert state_dict['conv1.weight'].shape == (8, 3, 7, 7)
    assert state_dict['conv1.weight'].dtype == np.float32
    assert state_dict['bn1.num_batches_tracked'].dtype == np.int64
    assert state_dict['fc.bias'].shape == (10,)


def test_to_state_dict_inverts_to_variables():
    state_dict = torch_files.read_state_dict(str(FIXTURES / 'narrow_resnet50.safetensors'))
    variables = torchvision_weights.to_variables(state_dict, narrow_model('narrow_resnet50'))
    back = torchvision_weights.to_state_dict(variables)
    assert set(back) == {k for k in state_dict if not k.endswith('num_batches_tracked')}
    for name, value in back.items():
        np.testing.assert_array_equal(value, state_dict[name], err_msg=name)


def test_safetensors_round_trip_and_wrapped_checkpoints(tmp_path):
    tensors = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3),
               'module.b': np.array([1, 2], np.int64)}
    torch_files.write_safetensors(str(tmp_path / 'x.safetensors'), tensors)
    read = torch_files.read_state_dict(str(tmp_path / 'x.safetensors'))
    assert sorted(read) == ['a.weight', 'b']  # DataParallel's 'module.' prefix removed
    np.testing.assert_array_equal(read['a.weight'], tensors['a.weight'])
    assert read['b'].dtype == np.int64
    halves = {'w': np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16)}
    torch_files.write_safetensors(str(tmp_path / 'h.safetensors'), halves)
    read = torch_files.read_state_dict(str(tmp_path / 'h.safetensors'))
    assert read['w'].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(read['w'], halves['w'])
    data = (tmp_path / 'x.safetensors').read_bytes()
    (tmp_path / 'cut.safetensors').write_bytes(data[:-4])  # as a full disk leaves it
    with pytest.raises(torch_files.StateDictError,
                       match=r'cut\.safetensors: not a readable safetensors file'):
        torch_files.read_state_dict(str(tmp_path / 'cut.safetensors'))


def test_a_pickle_with_code_is_refused(tmp_path):
    import os
    path = tmp_path / 'evil.pth'
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('evil/data.pkl', pickle.dumps({'x': os.getcwd}))
    with pytest.raises(torch_files.StateDictError, match='posix.getcwd'):
        torch_files.read_state_dict(str(path))


def test_a_resnet34_file_for_resnet50_lists_the_first_differences():
    model = pretrained.build_model(pretrained.imagenet_config('resnet50', 1000), 1000)
    with pytest.raises(torchvision_weights.StateDictMismatchError) as error:
        torchvision_weights.to_variables(shapes_only_state_dict('resnet34'), model, 'r34.pth')
    message = str(error.value)
    assert '\n' not in message
    assert message.startswith('r34.pth does not match resnet50 (1000 classes): 32 of other '
                              'shapes, 85 missing, 0 unexpected: ')
    assert 'missing layer1.0.conv3.weight (256, 64, 1, 1)' in message
    assert 'layer1.0.conv1.weight: file (64, 64, 3, 3), model (64, 64, 1, 1)' in message
    assert '... ' in message and 'more' in message


def test_the_paper_architecture_is_refused_for_torchvision_weights():
    model = models.create_model('resnet50', num_classes=1000, variant='v1')
    with pytest.raises(torchvision_weights.StateDictMismatchError, match="variant 'v1'"):
        torchvision_weights.to_variables({}, model)


@pytest.mark.slow
def test_convert_writes_a_model_directory_that_loads(tmp_path):
    state_dict = torchvision_state_dict('resnet18', num_classes=7)
    file = tmp_path / 'r18.safetensors'
    torch_files.write_safetensors(str(file), state_dict)
    result = run_module('resnet_jax.pretrained.convert', '--torchvision', str(file), '--model',
                        'resnet18', '--out', str(tmp_path / 'out'))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Converted' in result.stderr
    model, variables = pretrained.load(str(tmp_path / 'out'))
    assert (model.num_classes, model.block, model.shortcut) == (7, models.BasicBlock, 'B')
    np.testing.assert_array_equal(torchvision_weights.to_state_dict(variables)['fc.weight'],
                                  state_dict['fc.weight'])
    loaded = pretrained.load_dir(str(tmp_path / 'out'))
    assert loaded.class_names() is None  # 7 classes: not ImageNet's
    assert eval_preprocessing.from_config(loaded.config).resize == 256
    source = json.loads((tmp_path / 'out' / 'converted_from.json').read_text())
    assert source['num_classes'] == 7 and len(source['sha256']) == 64
    # A second conversion into the same directory would mix checkpoints: refused.
    again = run_module('resnet_jax.pretrained.convert', '--torchvision', str(file), '--model',
                       'resnet18', '--out', str(tmp_path / 'out'))
    assert_one_line_error(again, 'already holds checkpoints')


@pytest.mark.parametrize('args, expected', [
    (['--model', 'resnet50'], 'StateDictMismatchError: ')
    , (['--model', 'resnet99'], "--model='resnet99' is unknown")
])
def test_convert_errors_are_one_line(tmp_path, args, expected):
    file = str(FIXTURES / 'narrow_resnet18.pth')
    result = run_module('resnet_jax.pretrained.convert', '--torchvision', file, *args, '--out',
                        str(tmp_path / 'out'))
    assert_one_line_error(result, expected)
    assert not (tmp_path / 'out').exists()


def test_convert_names_a_file_that_is_no_state_dict(tmp_path):
    (tmp_path / 'x.pth').write_bytes(b'not a zip')
    result = run_module('resnet_jax.pretrained.convert', '--torchvision', str(tmp_path / 'x.pth'),
                        '--model', 'resnet18', '--out', str(tmp_path / 'out'))
    assert_one_line_error(result, f'{tmp_path / "x.pth"} is neither a .safetensors file')
