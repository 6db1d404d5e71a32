"""`python -m resnet_jax.pretrained.predict`: top-5 with probabilities and class names, the
model's own evaluation preprocessing, and an unreadable image named while the others are
predicted."""

import re

import numpy as np
import pytest
from model_dirs import assert_one_line_error, cifar_model_dir, imagenet_model_dir, run_module
from PIL import Image

from resnet_jax import pretrained
from resnet_jax.pretrained import class_names, eval_preprocessing


def predictions(stdout: str) -> dict[str, list[tuple[float, str]]]:
    """{image path: [(probability, 'name (index)'), ...]} of predict's output."""
    result, current = {}, None
    for line in stdout.splitlines():
        match = re.fullmatch(r'\s+([0-9.]+)\s+(.+)', line)
        if match:
            result[current].append((float(match.group(1)), match.group(2)))
        elif line.strip():
            current = line
            result[current] = []
    return result


@pytest.mark.slow
def test_imagenet_model_predicts_with_names_and_names_a_broken_image(tmp_path):
    model, variables = imagenet_model_dir(tmp_path / 'model', 'resnet18')
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(300, 200), (224, 224), (180, 260)]):
        paths.append(tmp_path / f'image{i}.png')
        Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(paths[-1])
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'\xff\xd8\xff\xe0 this is no JPEG')
    result = run_module('resnet_jax.pretrained.predict', '--checkpoint', str(tmp_path / 'model'),
                        '--batch_size=2', str(paths[0]), str(broken), *map(str, paths[1:]))
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert f'ERROR cannot read image {broken}: ' in result.stderr
    got = predictions(result.stdout)
    assert list(got) == [str(p) for p in paths]
    names = class_names.imagenet()
    preprocess = eval_preprocessing.from_config(pretrained.read_config(str(tmp_path / 'model')))
    logits = model.apply(variables, np.stack([preprocess(str(p)) for p in paths]), train=False)
    expected = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
    for row, path in zip(expected, paths, strict=True):
        top = got[str(path)]
        assert [name for _, name in top] == [f'{names[i]} ({i})' for i in row]
        probabilities = [p for p, _ in top]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1


def test_in_memory_folder_model_uses_folder_names_and_pixel_mean(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (('train', 4), ('test', 2)):
        for name in ('cat', 'dog', 'emu'):
            (tmp_path / 'data' / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
                    tmp_path / 'data' / split / name / f'{i}.png')
    cifar_model_dir(tmp_path / 'run', num_classes=3, dataset='image_folder',
                    data_dir=str(tmp_path / 'data'), pipeline='memory')
    loaded = pretrained.load_dir(str(tmp_path / 'run'))
    assert loaded.class_names() == ['cat', 'dog', 'emu']
    preprocess = eval_preprocessing.from_config(loaded.config)
    assert preprocess.resize is None and preprocess.mean.shape == (32, 32, 3)
    image = str(tmp_path / 'data' / 'test' / 'dog' / '0.png')
    result = run_module('resnet_jax.pretrained.predict', '--workdir', str(tmp_path / 'run'), image)
    assert result.returncode == 0, result.stderr[-3000:]
    top = predictions(result.stdout)[image]
    assert len(top) == 3  # top-5 of 3 classes
    assert {name for _, name in top} == {'cat (0)', 'dog (1)', 'emu (2)'}


def test_center_crop_takes_the_streaming_evaluations_window():
    image = Image.fromarray(np.arange(400 * 300 * 3, dtype=np.uint32).astype(np.uint8)
                            .reshape(300, 400, 3))
    crop = eval_preprocessing.center_crop(image, 224, 256)
    assert crop.size == (224, 224)
    # The window: round(224 * 300 / 256) = 262 square, centred: rows 19..281, cols 69..331.
    window = image.crop((69, 19, 331, 281)).resize((224, 224), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(np.asarray(crop), np.asarray(window))


def test_predict_without_a_model_is_one_line(tmp_path):
    result = run_module('resnet_jax.pretrained.predict', '--checkpoint', str(tmp_path), 'x.png')
    assert_one_line_error(result, f'{tmp_path} is not a model directory or workdir '
                                  '(no config.json)')
