"""The streaming pipeline on a tfds-prepared data set (TFRecord files, read as a stream)."""

import json
import shutil

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from streaming_helpers import (  # noqa: E402
    assert_deterministic_and_resumable,
    augmentation,
    final_state,
    streaming_config,
    take,
)

from resnet_jax.inputs import sources, tf_pipelines  # noqa: E402
from resnet_jax.training import train  # noqa: E402

NAME = 'tiny_images'


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
    """A prepared tfds data set of 20 train and 7 validation JPEGs of assorted sizes."""
    data_dir = tmp_path_factory.mktemp('tfds')
    rng = np.random.default_rng(0)

    def examples(n):
        for i in range(n):
            height, width = rng.integers(36, 80, 2)
            image = rng.integers(0, 256, (height, width, 3), np.uint8)
            image[..., 0] = 40 + 80 * (i % 3)
            yield str(i), {'image': image, 'label': i % 3}

    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
        'label': tfds.features.ClassLabel(names=['ant', 'bee', 'cat'])})
    tfds.dataset_builders.store_as_tfds_dataset(
        name=NAME, version='1.0.0', features=features, data_dir=data_dir,
        split_datasets={'train': list(examples(20)), 'validation': list(examples(7))})
    return data_dir


def tfds_stream(tfds_dir, process_index=0, process_count=1, kind='scale'):
    return tf_pipelines.TrainStream(
        sources.open_source(f'tfds:{NAME}', str(tfds_dir)), augmentation(kind), seed=3,
        global_batch=6, process_index=process_index, process_count=process_count,
        shuffle_buffer=8)


def test_tfds_source_knows_its_splits_and_classes(tfds_dir):
    source = sources.open_source(f'tfds:{NAME}', str(tfds_dir))
    assert source.num_examples('train') == 20 and source.num_examples('validation') == 7
    assert source.class_names == ('ant', 'bee', 'cat') and source.eval_split == 'validation'


def test_tfds_stream_is_deterministic_and_resumes_mid_epoch(tfds_dir):
    assert_deterministic_and_resumable(lambda: tfds_stream(tfds_dir))


def test_tfds_processes_read_disjoint_shares(tfds_dir):
    # Centre crops (no randomness) of one epoch of each process: no image in both.
    epochs = [np.concatenate([b[0] for b in take(tfds_stream(tfds_dir, p, 2, 'none')
                                                 .batches(0), 3)]) for p in (0, 1)]
    assert epochs[0].shape == epochs[1].shape == (9, 32, 32, 3)
    flat = [e.reshape(len(e), -1) for e in epochs]
    assert not (flat[0][:, None] == flat[1][None]).all(-1).any()


def test_tfds_eval_shares_cover_the_split_once(tfds_dir):
    source = sources.open_source(f'tfds:{NAME}', str(tfds_dir))
    labels = []
    for p in range(2):
        dataset = tf_pipelines.eval_dataset(source, augmentation(), 'ten_crop', process_index=p,
                                         process_count=2)
        for example in dataset.as_numpy_iterator():
            assert example['views']['ten_crop'].shape == (10, 32, 32, 3)
            labels.append(int(example['label']))
    assert sorted(labels) == [0, 0, 0, 1, 1, 2, 2]


def test_tfds_training_resumes_exactly(tfds_dir, tmp_path):
    config = streaming_config(tfds_dir)
    config.dataset = f'tfds:{NAME}'
    config.streaming.shuffle_buffer = 8
    config.streaming.eval_modes = ('center_crop',)
    straight = tmp_path / 'straight'
    train.train_and_evaluate(config, str(straight))
    resumed = tmp_path / 'resumed'
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / 'checkpoints' / '4')  # as if killed after the save at step 2
    train.train_and_evaluate(config, str(resumed))
    for a, b in zip(final_state(straight, 4), final_state(resumed, 4), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (json.loads((straight / 'final_eval.json').read_text())
            == json.loads((resumed / 'final_eval.json').read_text()))

