"""The streaming pipeline: host crops, determinism, per-process shares, resume, evaluation."""

import json
import time

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from streaming_helpers import (  # noqa: E402
    assert_deterministic_and_resumable,
    augmentation,
    final_state,
    streaming_config,
    take,
    write_folder,
)

from resnet_jax import configs  # noqa: E402
from resnet_jax.inputs import arrays, host_augment, sources, tf_pipelines  # noqa: E402
from resnet_jax.training import evaluation  # noqa: E402


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp('folder'))


def train_stream(folder, process_index=0, process_count=1, kind='scale', batch=6):
    return tf_pipelines.TrainStream(
        sources.ImageFolderSource(str(folder)), augmentation(kind), seed=3,
        global_batch=batch, process_index=process_index, process_count=process_count,
        shuffle_buffer=64)


@pytest.mark.parametrize('kind', ['scale', 'inception', 'none'])
def test_train_batches_have_the_crop_size_and_labels(folder, kind):
    stream = train_stream(folder, kind=kind)
    assert stream.steps_per_epoch == 3  # 18 examples, batches of 6
    images, labels = next(stream.batches(0))
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and set(labels) <= {0, 1, 2}
    # The red channel carries the class: crops and resizes keep it (up to JPEG error).
    np.testing.assert_allclose(images[..., 0].mean(axis=(1, 2)), 40 + 80 * labels, atol=6)


def test_train_order_is_deterministic_and_resumes_at_any_step(folder):
    assert_deterministic_and_resumable(lambda: train_stream(folder))


def test_an_undecodable_training_image_is_named(tmp_path):
    """The training stream's read error names the file (the main job prints it as its one
    line: tests/test_errors.py, there for an image of the eval split)."""
    folder = write_folder(tmp_path / 'folder')
    broken = sorted((folder / 'train' / 'bee').iterdir())[1]
    broken.write_bytes(b'\xff\xd8\xff\xe0 this is no JPEG')
    with pytest.raises(arrays.DataError, match=f'^cannot decode image {broken}: '):
        take(train_stream(folder).batches(0), 3)  # the epoch: every example


def test_two_processes_read_disjoint_halves_of_the_same_global_batches(folder):
    whole = take(train_stream(folder).batches(0), 4)
    halves = [take(train_stream(folder, p, 2).batches(0), 4) for p in (0, 1)]
    for step in range(4):
        images = np.concatenate([halves[0][step][0], halves[1][step][0]])
        np.testing.assert_array_equal(images, whole[step][0])


def test_eval_shares_cover_the_split_once(folder):
    source = sources.ImageFolderSource(str(folder))
    seen = []
    for p in range(2):
        dataset = tf_pipelines.eval_dataset(source, augmentation(), 'center_crop',
                                         process_index=p, process_count=2)
        seen += [(p, int(e['id']), int(e['label'])) for e in dataset.as_numpy_iterator()]
    assert len(seen) == source.num_examples('validation') == 9
    assert sorted(label for *_, label in seen) == [0] * 3 + [1] * 3 + [2] * 3


def _encoded(image, fmt='png'):
    return tf.io.encode_png(image) if fmt == 'png' else tf.io.encode_jpeg(image, quality=100)


def test_center_crop_and_ten_crop_take_the_right_windows():
    # A 40x60 image whose pixels encode their coordinates; resize to 40 keeps it as is.
    y, x = np.mgrid[0:40, 0:60]
    image = np.stack([y * 5, x * 4, np.zeros_like(y)], -1).astype(np.uint8)
    center = host_augment.center_crop(_encoded(image), 32, 40).numpy()
    np.testing.assert_array_equal(center[0], image[4:36, 14:46])
    crops = host_augment.ten_crop(_encoded(image), 32, 40).numpy()
    assert crops.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(crops[0], image[:32, :32])
    np.testing.assert_array_equal(crops[3], image[8:, 28:])
    np.testing.assert_array_equal(crops[4], image[4:36, 14:46])
    np.testing.assert_array_equal(crops[5:], crops[:5, :, ::-1])


def test_multi_scale_views_keep_the_shorter_side_and_snap_the_aspect_ratio():
    image = np.full((40, 70, 3), 128, np.uint8)  # aspect 1.75 -> 1.5 with (1, 1.5, 2)
    views = host_augment.multi_scale_views(_encoded(image), (32, 48), (1.0, 1.5, 2.0))
    assert views['size32'].shape == (1, 32, 48, 3)
    assert views['size48'].shape == (1, 48, 72, 3)
    portrait = host_augment.multi_scale_views(_encoded(image.transpose(1, 0, 2)), (32,),
                                              (1.0, 1.5, 2.0))
    assert portrait['size32'].shape == (1, 48, 32, 3)


def test_scale_augmentation_window_spans_the_configured_scales():
    # Resizing the shorter side (100) to S and cropping 32 is a window of 3200/S pixels.
    sides = set()
    for i in range(200):
        window_fn = host_augment.scale_crop_window(tf.constant([1, i], tf.int64), 32, (40, 80))
        y, x, h, w = (int(v) for v in window_fn(tf.constant(100), tf.constant(150)))
        assert h == w and 0 <= y <= 100 - h and 0 <= x <= 150 - w
        sides.add(h)
    assert min(sides) == 40 and max(sides) == 80  # 3200/80 and 3200/40


def test_evaluate_views_averages_probabilities_over_views_and_counts_once():
    # Three examples with 2, 2 and 1 views of two shapes; the "model" reads the class
    # probabilities off the first pixel.
    def view(shape, p):
        v = np.zeros(shape, np.uint8)
        v[0, 0, :3] = np.round(np.asarray(p) * 100)
        return v

    examples = [
        {'id': 0, 'label': 0, 'views': {'a': np.stack([view((4, 4, 3), [.9, .1, 0])]),
                                         'b': np.stack([view((6, 4, 3), [.2, .8, 0])])}},
        {'id': 1, 'label': 1, 'views': {'a': np.stack([view((4, 4, 3), [.3, .7, 0]),
                                                       view((4, 4, 3), [.1, .9, 0])])}},
        {'id': 2, 'label': 2, 'views': {'a': np.stack([view((6, 4, 3), [.6, .0, .4])])}},
    ]

    def predict(images):
        p = images[:, 0, 0, :3].astype(np.float64) / 100
        return np.where(p.sum(1, keepdims=True) > 0, p, 1 / 3)

    totals = evaluation.evaluate_views(predict, examples, batch_size=2)
    metrics = evaluation.as_metrics(totals, 3)
    # Example 0: mean (.55, .45, 0) -> right; 1: (.2, .8, 0) -> right; 2: (.6, 0, .4) wrong.
    assert metrics['top1_accuracy'] == pytest.approx(2 / 3)
    assert metrics['top5_accuracy'] == 1.0
    expected_loss = -(np.log(.55) + np.log(.8) + np.log(.4)) / 3
    assert metrics['loss'] == pytest.approx(expected_loss)
    with pytest.raises(AssertionError, match='evaluated 3 examples of 4'):
        evaluation.as_metrics(totals, 4)


def test_missing_imagenet_is_a_quick_error_with_the_steps(tmp_path):
    start = time.perf_counter()
    with pytest.raises(sources.DatasetNotFoundError) as error:
        sources.open_source('imagenet2012', str(tmp_path))
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert str(tmp_path / 'imagenet2012') in message
    assert 'ILSVRC2012_img_train.tar' in message and 'tfds build imagenet2012' in message


@pytest.mark.parametrize('field, value, match', [
    ('augment', 'pad_crop_flip', 'streaming.augment'),
    ('eval_modes', ('five_crop',), 'eval_modes'),
    ('scale_range', (30, 48), 'scale_range'),
    ('eval_resize', 16, 'eval_resize'),
])
def test_bad_streaming_fields_are_config_errors(folder, field, value, match):
    config = streaming_config(folder)
    config.streaming[field] = value
    with pytest.raises(configs.ConfigError, match=match):
        configs.validate_config(config)


@pytest.mark.slow
def test_streaming_training_resumes_exactly_and_evaluates_in_every_mode(folder, tmp_path):
    import json
    import shutil

    from resnet_jax.training import train

    config = streaming_config(folder)
    straight = tmp_path / 'straight'
    final = train.train_and_evaluate(config, str(straight))
    record = json.loads((straight / 'final_eval.json').read_text())
    assert set(record['modes']) == {'center_crop', 'ten_crop', 'multi_scale'}
    assert record['top1_accuracy'] == final['top1_accuracy']
    for metrics in record['modes'].values():
        assert 0 <= metrics['top1_accuracy'] <= metrics['top5_accuracy'] == 1.0  # 3 classes
    log = (straight / 'metrics.jsonl').read_text()
    assert 'train/input_wait_fraction' in log and 'validation_ten_crop/top1_accuracy' in log

    # Resume from step 2 (mid-epoch: 3 steps per epoch) as if killed after that save.
    resumed = tmp_path / 'resumed'
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / 'checkpoints' / '4')
    (resumed / 'final_eval.json').unlink()
    train.train_and_evaluate(config, str(resumed))
    for a, b in zip(final_state(straight, 4), final_state(resumed, 4), strict=True):
        np.testing.assert_array_equal(a, b)
    assert json.loads((resumed / 'final_eval.json').read_text()) == record


@pytest.mark.slow
def test_the_image_folder_experiment_trains_on_a_folder(folder, tmp_path):
    from resnet_jax.training import train

    config = configs.load_config('experiments/image_folder.py:cifar_resnet8')
    config.unlock()
    config.data_dir = str(folder)
    config.image_size, config.streaming.eval_resize = 32, 36
    config.batch_size, config.eval_batch_size, config.total_steps = 6, 4, 2
    final = train.train_and_evaluate(config, str(tmp_path))
    assert 0 <= final['top1_accuracy'] <= 1
    assert set(json.loads((tmp_path / 'final_eval.json').read_text())['modes']) == {
        'center_crop', 'ten_crop'}


def test_large_views_batch_fewer_at_a_time():
    assert evaluation.batch_size_for((224, 224, 3), 250, 250 * 224**2, 2) == 250
    assert evaluation.batch_size_for((640, 853, 3), 250, 250 * 224**2, 2) == 22
    assert evaluation.batch_size_for((4000, 4000, 3), 250, 250 * 224**2, 2) == 2
    assert evaluation.batch_size_for((640, 853, 3), 250, None, 2) == 250
