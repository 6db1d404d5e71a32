"""In-memory data sets: CIFAR-10 (real data when present), image folders, synthetic."""

import collections
import concurrent.futures
import hashlib
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from resnet_jax import packages
from resnet_jax.inputs import arrays

NUM_CIFAR_TRAIN, NUM_CIFAR_TEST = 50_000, 10_000


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """No test may see the user's data, tfds dir or cache, nor write outside tmp_path."""
    home = tmp_path / 'home'
    home.mkdir()
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.delenv('RESNET_JAX_DATA_DIR', raising=False)
    monkeypatch.delenv('TFDS_DATA_DIR', raising=False)
    monkeypatch.setenv(arrays.CACHE_DIR_ENV, str(tmp_path / 'cache'))
    workdir = tmp_path / 'cwd'
    workdir.mkdir()
    monkeypatch.chdir(workdir)


# ----------------------------------------------------------------------------- helpers


def _write_image(path, size=(6, 4), value=0, mode='RGB'):
    """A solid image of `value` (per channel for RGB); size is (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {'RGB': (value, value // 2, 255 - value), 'L': value, 'RGBA': (value, 0, 0, 128)}
    Image.new(mode, size, colour[mode]).save(path)


def _make_folder(root, classes=('cat', 'ant', 'bee'), per_class=2, eval_folder='test',
                 size=(6, 4), ext='png'):
    """An image folder whose pixel value encodes (split, class, index)."""
    for split, offset in (('train', 0), (eval_folder, 100)):
        for c, name in enumerate(classes):
            for i in range(per_class):
                _write_image(root / split / name / f'{i:03d}.{ext}', size,
                             value=offset + 10 * c + i)
    return root


def _make_fake_cifar(root, size=(32, 32)):
    """A one-image-per-class stand-in for CIFAR-10, for the lookup tests."""
    return _make_folder(root, classes=arrays.CIFAR10_CLASSES, per_class=1, size=size)


def _row_hashes(images):
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in images]


def _no_decoding(*args, **kwargs):
    raise AssertionError('decoded images although a cache file was there')


# ----------------------------------------------------------------------------- real CIFAR-10


@pytest.fixture(scope='session')
def cifar10(cifar10_dir, cifar10_cache_dir):
    """The real CIFAR-10, decoded once per session (which also writes the cache)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(arrays.CACHE_DIR_ENV, str(cifar10_cache_dir))
        return arrays.load_dataset('cifar10', str(cifar10_dir))


@pytest.mark.slow
def test_cifar10_shapes_labels_and_class_order(cifar10, cifar10_dir):
    assert cifar10.train_images.shape == (NUM_CIFAR_TRAIN, 32, 32, 3)
    assert cifar10.eval_images.shape == (NUM_CIFAR_TEST, 32, 32, 3)
    assert cifar10.train_images.dtype == cifar10.eval_images.dtype == np.uint8
    assert cifar10.train_labels.dtype == cifar10.eval_labels.dtype == np.int32
    assert cifar10.class_names == ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                                   'frog', 'horse', 'ship', 'truck')
    assert cifar10.num_classes == 10
    assert np.bincount(cifar10.train_labels).tolist() == [5000] * 10
    assert np.bincount(cifar10.eval_labels).tolist() == [1000] * 10
    assert cifar10.eval_split == 'test'
    assert cifar10.source == os.path.abspath(cifar10_dir)
    # Images and labels line up: class folders in sorted order, files by name.
    first_automobile = np.asarray(Image.open(cifar10_dir / 'train' / 'automobile' / '0000.jpg'))
    np.testing.assert_array_equal(cifar10.train_images[5000], first_automobile)
    assert cifar10.train_labels[5000] == 1
    last_truck = np.asarray(Image.open(cifar10_dir / 'test' / 'truck' / '0999.jpg'))
    np.testing.assert_array_equal(cifar10.eval_images[-1], last_truck)


@pytest.mark.slow
def test_cifar10_cache_round_trip(cifar10, cifar10_dir, cifar10_cache_dir, monkeypatch):
    assert list(cifar10_cache_dir.glob('cifar10-jpeg-*.npz')), 'the first load writes a cache'
    monkeypatch.setenv(arrays.CACHE_DIR_ENV, str(cifar10_cache_dir))
    monkeypatch.setattr(arrays, '_decode_images', _no_decoding)
    again = arrays.load_dataset('cifar10', str(cifar10_dir))
    for field in ('train_images', 'train_labels', 'eval_images', 'eval_labels'):
        # np.array_equal: assert_array_equal takes seconds on arrays this large.
        assert np.array_equal(getattr(again, field), getattr(cifar10, field)), field
    assert again.class_names == cifar10.class_names
    assert again.source == cifar10.source


@pytest.mark.slow
def test_cifar10_validation_split_is_fixed_and_disjoint(cifar10, cifar10_dir, cifar10_cache_dir,
                                                        monkeypatch):
    monkeypatch.setenv(arrays.CACHE_DIR_ENV, str(cifar10_cache_dir))
    split = {seed: arrays.load_dataset('cifar10', str(cifar10_dir), validation_examples=5000,
                                       seed=seed)
             for seed in (0, 1)}
    data = split[0]
    assert data.eval_split == 'validation'
    assert data.train_images.shape == (45_000, 32, 32, 3)
    assert data.eval_images.shape == (5000, 32, 32, 3)
    for field in ('train_labels', 'eval_labels', 'eval_images'):
        assert np.array_equal(getattr(split[1], field), getattr(data, field)), field
    # A random split: every class is represented, about 500 each.
    assert all(400 < n < 600 for n in np.bincount(data.eval_labels, minlength=10))
    # Train and validation partition the original training set.
    parts = collections.Counter(_row_hashes(data.train_images) + _row_hashes(data.eval_images))
    assert parts == collections.Counter(_row_hashes(cifar10.train_images))


# ----------------------------------------------------------------------------- CIFAR lookup


def _assert_fails_fast(call, *expected_in_message):
    start = time.perf_counter()
    with pytest.raises(arrays.DatasetNotFoundError) as raised:
        call()
    assert time.perf_counter() - start < 5
    message = str(raised.value)
    for expected in expected_in_message:
        assert str(expected) in message
    return message


def test_cifar10_missing_data_dir_fails_fast(tmp_path):
    nowhere = tmp_path / 'nowhere'
    message = _assert_fails_fast(lambda: arrays.load_dataset('cifar10', str(nowhere)), nowhere)
    assert '--config.data_dir' in message and 'tensorflow-datasets' in message


def test_cifar10_search_lists_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.setenv('RESNET_JAX_DATA_DIR', str(tmp_path / 'from_env'))
    message = _assert_fails_fast(
        lambda: arrays.load_dataset('cifar10'),
        tmp_path / 'from_env', tmp_path / 'cwd' / 'data' / 'cifar10-jpeg',
        tmp_path / 'home' / 'tensorflow_datasets')
    assert 'RESNET_JAX_DATA_DIR' in message


def test_cifar10_search_uses_tfds_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
    _assert_fails_fast(lambda: arrays.load_dataset('cifar10'), tmp_path / 'tfds')


def test_cifar10_found_through_env_then_cwd(tmp_path, monkeypatch):
    in_cwd = _make_fake_cifar(tmp_path / 'cwd' / 'data' / 'cifar10-jpeg')
    assert arrays.load_dataset('cifar10').source == str(in_cwd)
    from_env = _make_fake_cifar(tmp_path / 'elsewhere')
    monkeypatch.setenv('RESNET_JAX_DATA_DIR', str(from_env))
    data = arrays.load_dataset('cifar10')
    assert data.source == str(from_env)
    assert data.train_labels.tolist() == list(range(10))


def test_cifar10_rejects_a_folder_that_is_not_cifar(tmp_path):
    with pytest.raises(ValueError, match='not CIFAR-10'):
        arrays.load_dataset('cifar10', str(_make_fake_cifar(tmp_path / 'big', size=(8, 8))))
    with pytest.raises(ValueError, match='not CIFAR-10'):
        arrays.load_dataset('cifar10', str(_make_folder(tmp_path / 'few', size=(32, 32))))


def _make_tfds_cifar10(data_dir):
    version = data_dir / 'cifar10' / '3.0.2'
    version.mkdir(parents=True)
    (version / 'dataset_info.json').write_text('{}')
    return data_dir


def test_tfds_cifar10_without_tfds_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # as if not installed.
    explicit = _make_tfds_cifar10(tmp_path / 'tfds_explicit')
    with pytest.raises(packages.MissingPackageError,
                       match=r"needs the package 'tensorflow_datasets'.*pip install -e \."):
        arrays.load_dataset('cifar10', str(explicit))
    # Found in tfds's default data dir too, after the image-folder places.
    _make_tfds_cifar10(tmp_path / 'home' / 'tensorflow_datasets')
    with pytest.raises(ImportError, match='tensorflow_datasets'):
        arrays.load_dataset('cifar10')


def test_module_does_not_import_tensorflow():
    code = ('import sys, resnet_jax.inputs.arrays; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("tensorflow", "tensorflow_datasets")))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == '[]'


# ----------------------------------------------------------------------------- image folders


def test_image_folder_labels_follow_sorted_class_names(tmp_path):
    root = _make_folder(tmp_path / 'folder')
    (root / 'train' / 'ant' / 'README.txt').write_text('not an image')
    data = arrays.load_dataset('image_folder', str(root))
    assert data.class_names == ('ant', 'bee', 'cat')
    assert data.num_classes == 3
    assert data.train_images.shape == (6, 4, 6, 3) and data.train_images.dtype == np.uint8
    assert data.eval_images.shape == (6, 4, 6, 3)
    assert data.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.train_labels.dtype == np.int32
    assert data.eval_split == 'test'
    assert data.source == str(root)
    # _make_folder wrote class 'cat' (index 0 there) image 1 with value 1: now label 2.
    np.testing.assert_array_equal(data.train_images[5, 0, 0], [1, 0, 254])
    np.testing.assert_array_equal(data.eval_images[0, 0, 0], [110, 55, 145])


@pytest.mark.parametrize('folder', ['val', 'validation'])
def test_image_folder_accepts_val_folders(tmp_path, folder):
    root = _make_folder(tmp_path / 'folder', eval_folder=folder)
    data = arrays.load_dataset('image_folder', str(root))
    assert data.eval_split == 'validation'
    assert len(data.eval_labels) == 6


def test_image_folder_converts_grey_and_rgba_to_rgb(tmp_path):
    root = _make_folder(tmp_path / 'folder')
    _write_image(root / 'train' / 'ant' / 'grey.png', value=77, mode='L')
    _write_image(root / 'test' / 'bee' / 'alpha.png', value=50, mode='RGBA')
    data = arrays.load_dataset('image_folder', str(root))
    assert data.train_images.shape == (7, 4, 6, 3)
    np.testing.assert_array_equal(data.train_images[2, 0, 0], [77, 77, 77])  # after 000, 001
    np.testing.assert_array_equal(data.eval_images[4, 0, 0], [50, 0, 0])  # after ant, bee/00*


def test_image_folder_mixed_sizes_need_image_size(tmp_path):
    root = _make_folder(tmp_path / 'folder', ext='jpg')
    _write_image(root / 'train' / 'bee' / 'wide.jpg', size=(9, 4))
    with pytest.raises(ValueError, match='image_size'):
        arrays.load_dataset('image_folder', str(root))
    data = arrays.load_dataset('image_folder', str(root), image_size=5)
    assert data.train_images.shape == (7, 5, 5, 3)
    assert data.eval_images.shape == (6, 5, 5, 3)


def test_image_folder_missing_is_not_found(tmp_path):
    with pytest.raises(arrays.DatasetNotFoundError, match='nowhere'):
        arrays.load_dataset('image_folder', str(tmp_path / 'nowhere'))
    with pytest.raises(arrays.DatasetNotFoundError, match='data_dir'):
        arrays.load_dataset('image_folder', '')
    (tmp_path / 'only_train' / 'train' / 'a').mkdir(parents=True)
    with pytest.raises(arrays.DatasetNotFoundError, match='test/'):
        arrays.load_dataset('image_folder', str(tmp_path / 'only_train'))


def test_image_folder_eval_class_unknown_to_train(tmp_path):
    root = _make_folder(tmp_path / 'folder')
    _write_image(root / 'test' / 'wasp' / '000.png')
    with pytest.raises(ValueError, match='wasp'):
        arrays.load_dataset('image_folder', str(root))


# ----------------------------------------------------------------------------- cache


@pytest.fixture
def cache_small_folders(monkeypatch):
    monkeypatch.setattr(arrays, '_CACHE_MIN_FILES', 0)


def test_small_folders_are_not_cached(tmp_path):
    arrays.load_dataset('image_folder', str(_make_folder(tmp_path / 'folder')))
    assert not (tmp_path / 'cache').exists()


def test_cache_is_read_back_and_follows_changes(tmp_path, monkeypatch, cache_small_folders):
    root = _make_folder(tmp_path / 'folder')
    first = arrays.load_dataset('image_folder', str(root))
    assert len(list((tmp_path / 'cache').glob('*.npz'))) == 1
    with monkeypatch.context() as patch:
        patch.setattr(arrays, '_decode_images', _no_decoding)
        again = arrays.load_dataset('image_folder', str(root))
    np.testing.assert_array_equal(again.train_images, first.train_images)
    np.testing.assert_array_equal(again.eval_images, first.eval_images)
    # A new file changes the fingerprint: decoded afresh, not served stale from the cache.
    _write_image(root / 'train' / 'bee' / '002.png')
    assert len(arrays.load_dataset('image_folder', str(root)).train_labels) == 7


def test_corrupt_cache_is_rebuilt(tmp_path, caplog, cache_small_folders):
    root = _make_folder(tmp_path / 'folder')
    first = arrays.load_dataset('image_folder', str(root))
    (cache_file,) = (tmp_path / 'cache').glob('*.npz')
    cache_file.write_bytes(b'not a zip file')
    with caplog.at_level(logging.WARNING):
        again = arrays.load_dataset('image_folder', str(root))
    assert 'unreadable cache' in caplog.text
    np.testing.assert_array_equal(again.train_images, first.train_images)
    with np.load(cache_file) as rebuilt:
        np.testing.assert_array_equal(rebuilt['train_images'], first.train_images)


def test_loads_of_one_folder_at_once_decode_it_once(tmp_path, monkeypatch, cache_small_folders):
    """As `reproduce --parallel` starts several runs on one data set: the first load
    decodes and caches, the others wait for its cache instead of decoding too."""
    root = _make_folder(tmp_path / 'folder')
    decode, decoded = arrays._decode_images, []

    def slow_decode(paths, image_size):
        decoded.append(len(paths))
        time.sleep(0.5)  # long enough that the other load starts meanwhile
        return decode(paths, image_size)

    monkeypatch.setattr(arrays, '_decode_images', slow_decode)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        loads = [pool.submit(arrays.load_dataset, 'image_folder', str(root)) for _ in range(2)]
        first, second = (load.result() for load in loads)
    assert decoded == [6, 6]  # the train and the test images, once
    np.testing.assert_array_equal(first.train_images, second.train_images)


def test_unwritable_cache_only_warns(tmp_path, monkeypatch, caplog, cache_small_folders):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    # Under a regular file no directory can be made, even as root (unlike chmod).
    monkeypatch.setenv(arrays.CACHE_DIR_ENV, str(blocker / 'cache'))
    with caplog.at_level(logging.WARNING):
        data = arrays.load_dataset('image_folder', str(_make_folder(tmp_path / 'folder')))
    assert len(data.train_labels) == 6
    assert 'Could not write the data cache' in caplog.text


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_defaults():
    data = arrays.load_dataset('synthetic', image_size=8, num_classes=5)
    assert data.train_images.shape == (1024, 8, 8, 3) and data.train_images.dtype == np.uint8
    assert data.eval_images.shape == (256, 8, 8, 3)
    assert data.train_labels.dtype == np.int32
    assert set(data.train_labels.tolist()) == set(range(5))
    assert data.num_classes == 5 and len(data.class_names) == 5
    assert data.source == 'synthetic' and data.eval_split == 'test'
    small = arrays.load_dataset('synthetic', image_size=4, num_classes=2, num_train_examples=10,
                                num_eval_examples=3)
    assert small.train_images.shape == (10, 4, 4, 3) and small.eval_images.shape == (3, 4, 4, 3)


def test_synthetic_is_deterministic_in_the_seed():
    def load(seed):
        return arrays.load_dataset('synthetic', image_size=4, num_classes=3, seed=seed)

    a, b, c = load(0), load(0), load(1)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.eval_labels, b.eval_labels)
    assert not np.array_equal(a.train_images, c.train_images)


@pytest.mark.parametrize('kwargs', [{'num_classes': 10}, {'image_size': 32}, {}])
def test_synthetic_requires_image_size_and_num_classes(kwargs):
    with pytest.raises(ValueError, match='image_size and num_classes'):
        arrays.load_dataset('synthetic', **kwargs)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="'mnist'.*cifar10, image_folder, synthetic"):
        arrays.load_dataset('mnist')


# ----------------------------------------------------------------------------- validation split


def _indexed_dataset(num):
    """Images whose first two bytes hold their index, to follow examples through a split."""
    images = np.zeros((num, 2, 2, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(num) % 256, np.arange(num) // 256
    labels = (np.arange(num) % 4).astype(np.int32)
    return arrays.ArrayDataset(images, labels, images[:1], labels[:1], 4, tuple('abcd'), 'test',
                               'test')


def _indices(images):
    return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)


def test_validation_split_partitions_train():
    data = arrays.hold_out_validation(_indexed_dataset(1000), 100)
    train, held_out = _indices(data.train_images), _indices(data.eval_images)
    assert data.eval_split == 'validation'
    assert len(train) == 900 and len(held_out) == 100
    assert sorted(np.concatenate([train, held_out]).tolist()) == list(range(1000))
    np.testing.assert_array_equal(data.eval_labels, held_out % 4)
    np.testing.assert_array_equal(data.train_labels, train % 4)
    assert held_out.max() > 500, 'held out at random, not the first examples'


def test_validation_split_does_not_depend_on_the_seed(tmp_path):
    root = str(_make_folder(tmp_path / 'folder', per_class=10))
    one, two = (arrays.load_dataset('image_folder', root, validation_examples=6, seed=seed)
                for seed in (0, 1))
    assert one.eval_split == 'validation' and len(one.eval_labels) == 6
    np.testing.assert_array_equal(one.eval_images, two.eval_images)
    np.testing.assert_array_equal(one.train_images, two.train_images)


@pytest.mark.parametrize('count', [-1, 64, 65])
def test_validation_examples_out_of_range(count):
    with pytest.raises(ValueError, match=f'validation_examples={count}'):
        arrays.load_dataset('synthetic', image_size=2, num_classes=2, num_train_examples=64,
                            validation_examples=count)


def test_array_dataset_checks_its_arrays():
    images = np.zeros((2, 2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match='int32'):
        arrays.ArrayDataset(images, np.zeros(2, np.int64), images, np.zeros(2, np.int32), 1,
                            ('a',), 'test', 'test')
    with pytest.raises(ValueError, match='outside'):
        arrays.ArrayDataset(images, np.array([0, 3], np.int32), images, np.zeros(2, np.int32),
                            2, ('a', 'b'), 'test', 'test')


def test_never_writes_into_the_data_folder(tmp_path, cache_small_folders):
    root = _make_folder(tmp_path / 'folder')
    before = sorted(os.path.relpath(p, root) for p in root.rglob('*'))
    arrays.load_dataset('image_folder', str(root), validation_examples=2)
    assert sorted(os.path.relpath(p, root) for p in root.rglob('*')) == before
