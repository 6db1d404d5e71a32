"""Data sets that fit in memory, loaded once as numpy arrays: CIFAR-10, image folders, synthetic.

The in-memory input path keeps these uint8 arrays on the device and augments inside the
jitted step, so this module needs neither TensorFlow nor tensorflow-datasets; tfds is
imported lazily, only to read a tfds-prepared cifar10.

Decoding the 60,000 CIFAR-10 JPEGs takes several seconds (the cost is PIL's per-file
Python overhead, not the decode, so a thread pool does not help). Large image folders
are therefore cached once as an uncompressed .npz under $RESNET_JAX_CACHE_DIR (default:
the user cache, `~/.cache/resnet_jax`), keyed by the folder's path and a cheap fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_jax import file_lock, packages, user_cache

logger = logging.getLogger(__name__)

DATASETS = ('cifar10', 'image_folder', 'synthetic')
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                   'ship', 'truck')
CIFAR10_IMAGE_SHAPE = (32, 32, 3)
DATA_DIR_ENV = 'RESNET_JAX_DATA_DIR'
CACHE_DIR_ENV = 'RESNET_JAX_CACHE_DIR'
EVAL_SPLIT_FOLDERS = ('test', 'val', 'validation')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.ppm', '.tif', '.tiff', '.webp')

# Folders with fewer files decode in well under a second: caching them would only litter
# the cache directory (tests, for one, make many small folders).
_CACHE_MIN_FILES = 5000
# Bump when the cached arrays change meaning, so that old cache files are not read.
_CACHE_VERSION = 1
# The held-out validation examples must be the same in every run, whatever its seed.
_VALIDATION_SPLIT_SEED = 20151210  # the ResNet paper's arXiv date.
# Telling Image.open the format skips probing every other plugin (a large per-file cost).
_PIL_FORMATS = {'.jpg': ['JPEG'], '.jpeg': ['JPEG'], '.png': ['PNG']}


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """A whole data set in host memory: uint8 images and int32 labels, train and eval."""

    train_images: np.ndarray  # uint8 [N, H, W, 3]
    train_labels: np.ndarray  # int32 [N]
    eval_images: np.ndarray  # uint8 [M, H, W, 3]
    eval_labels: np.ndarray  # int32 [M]
    num_classes: int
    class_names: tuple[str, ...]
    eval_split: str  # 'test' or 'validation' (held out from train)
    source: str  # where it was read from: a path, 'tfds:cifar10' or 'synthetic'

    def __post_init__(self):
        # Every loader ends here: a wrong dtype or label would otherwise surface much later,
        # inside a jitted step, as a confusing shape or gather error.
        if len(self.class_names) != self.num_classes:
            raise ValueError(f'{len(self.class_names)} class names for {self.num_classes} classes')
        for split in ('train', 'eval'):
            images = getattr(self, f'{split}_images')
            labels = getattr(self, f'{split}_labels')
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f'{split}_images must be uint8 [N, H, W, 3], got '
                                 f'{images.dtype} {images.shape}')
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise ValueError(f'{split}_labels must be int32 [{images.shape[0]}], got '
                                 f'{labels.dtype} {labels.shape}')
            if labels.size and not 0 <= labels.min() <= labels.max() < self.num_classes:
                raise ValueError(f'{split}_labels outside [0, {self.num_classes})')
        if self.train_images.shape[1:] != self.eval_images.shape[1:]:
            raise ValueError(f'train images {self.train_images.shape[1:]} and eval images '
                             f'{self.eval_images.shape[1:]} differ in shape')

    @property
    def description(self) -> str:
        return self.source

    @property
    def image_size(self) -> int:
        return self.train_images.shape[1]

    def num_examples(self, split: str) -> int:
        """Examples in 'train' or in the eval split."""
        return len(self.train_labels if split == 'train' else self.eval_labels)


class DatasetNotFoundError(FileNotFoundError):
    """No data set where it was looked for; the message lists the paths and how to fix it."""


class DataError(ValueError):
    """The data set is there but cannot be used as it is; the message names the file or part.

    An image that cannot be decoded, images of mixed sizes, a folder that is not the data
    set it claims to be, or too few examples for what the config asks of it.
    """


def load_dataset(name: str, data_dir: str = '', *, validation_examples: int = 0,
                 image_size: int | None = None, num_classes: int | None = None,
                 num_train_examples: int | None = None, num_eval_examples: int | None = None,
                 seed: int = 0) -> ArrayDataset:
    """Loads a whole data set into memory.

    Args:
      name: 'cifar10', 'image_folder' or 'synthetic'.
      data_dir: cifar10: an image folder with train/ and test/, or a directory holding a
        tfds-prepared cifar10/ ('' searches $RESNET_JAX_DATA_DIR, ./data/cifar10-jpeg
        and tfds's default data dir). image_folder: the folder, required.
      validation_examples: if > 0, hold out this many training examples (the same ones in
        every run, whatever the seed) and evaluate on them instead of the test split.
      image_size: synthetic: the side of the images (required). image_folder: resize every
        image to image_size x image_size (None: the images must all share one size).
        cifar10: not used (the caller checks it against the data).
      num_classes: synthetic: required. Otherwise not used (it comes from the data).
      num_train_examples: synthetic only (default 1024).
      num_eval_examples: synthetic only (default 256).
      seed: synthetic only; the validation split never depends on it.

    Raises:
      DatasetNotFoundError: the data is not where it was looked for.
      ValueError: an unknown name, missing or inconsistent arguments, or malformed data.
    """
    if name == 'cifar10':
        data = _load_cifar10(data_dir)
    elif name == 'image_folder':
        data = _load_image_folder(data_dir, image_size)
    elif name == 'synthetic':
        data = _make_synthetic(image_size, num_classes, num_train_examples, num_eval_examples,
                               seed)
    else:
        raise ValueError(f'unknown dataset {name!r}; choose one of {", ".join(DATASETS)}')
    if validation_examples:
        data = hold_out_validation(data, validation_examples)
    logger.info('Loaded %s from %s: %d train, %d %s examples of %s, %d classes.', name,
                data.source, len(data.train_labels), len(data.eval_labels), data.eval_split,
                'x'.join(map(str, data.train_images.shape[1:])), data.num_classes)
    return data


def hold_out_validation(data: ArrayDataset, validation_examples: int) -> ArrayDataset:
    """Moves `validation_examples` training examples, the same ones every run, to eval."""
    num_train = len(data.train_labels)
    if not 0 <= validation_examples < num_train:
        raise DataError(f'validation_examples={validation_examples} must be >= 0 and less '
                         f'than the {num_train} training examples')
    order = np.random.default_rng(_VALIDATION_SPLIT_SEED).permutation(num_train)
    # Sorted indices keep each side in the data set's own order.
    held_out = np.sort(order[:validation_examples])
    kept = np.sort(order[validation_examples:])
    return dataclasses.replace(
        data,
        train_images=data.train_images[kept], train_labels=data.train_labels[kept],
        eval_images=data.train_images[held_out], eval_labels=data.train_labels[held_out],
        eval_split='validation')


# ----------------------------------------------------------------------------- synthetic


def _make_synthetic(image_size: int | None, num_classes: int | None,
                    num_train_examples: int | None, num_eval_examples: int | None,
                    seed: int) -> ArrayDataset:
    """Random images and labels, the same for the same seed."""
    if image_size is None or num_classes is None:
        raise ValueError('the synthetic data set needs image_size and num_classes '
                         f'(got image_size={image_size}, num_classes={num_classes})')
    if image_size <= 0 or num_classes <= 0:
        raise ValueError(f'image_size={image_size} and num_classes={num_classes} must be '
                         'positive')
    num_train = 1024 if num_train_examples is None else num_train_examples
    num_eval = 256 if num_eval_examples is None else num_eval_examples
    if num_train <= 0 or num_eval <= 0:
        raise ValueError(f'num_train_examples={num_train} and num_eval_examples={num_eval} '
                         'must be positive')
    rng = np.random.default_rng(seed)

    def split(num: int) -> tuple[np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, (num, image_size, image_size, 3), dtype=np.uint8)
        return images, rng.integers(0, num_classes, num, dtype=np.int32)

    train_images, train_labels = split(num_train)
    eval_images, eval_labels = split(num_eval)
    return ArrayDataset(train_images, train_labels, eval_images, eval_labels, num_classes,
                        tuple(f'class_{i}' for i in range(num_classes)), 'test', 'synthetic')


# ----------------------------------------------------------------------------- cifar10


def _load_cifar10(data_dir: str) -> ArrayDataset:
    """CIFAR-10 from an image folder or a tfds-prepared copy; never downloads."""
    tried = []
    for candidate in _cifar10_candidates(data_dir):
        kind, path = _classify_cifar10_dir(candidate)
        if kind == 'image_folder':
            return _check_cifar10(_load_image_folder(path, image_size=None))
        if kind == 'tfds':
            return _check_cifar10(_load_tfds_cifar10(path))
        tried.append(candidate)
    raise DatasetNotFoundError(_cifar10_not_found_message(tried))


def _cifar10_candidates(data_dir: str) -> list[str]:
    """Where to look, in order: an explicit data_dir is the only place looked at."""
    if data_dir:
        return [data_dir]
    candidates = []
    if os.environ.get(DATA_DIR_ENV):
        candidates.append(os.environ[DATA_DIR_ENV])
    candidates.append(os.path.join('.', 'data', 'cifar10-jpeg'))
    candidates.append(os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')
    return candidates


def _classify_cifar10_dir(path: str) -> tuple[str, str]:
    """('image_folder' | 'tfds' | 'missing', path) for one candidate directory.

    Only looks at the file system, so that a missing data set fails in milliseconds; a
    remote path (gs://...) can only be a tfds data dir and is handed to tfds as it is.
    """
    if '://' in path:
        return 'tfds', path
    path = os.path.abspath(os.path.expanduser(path))
    if _find_split_dirs(path) is not None:
        return 'image_folder', path
    tfds_cifar10 = os.path.join(path, 'cifar10')
    if os.path.isdir(tfds_cifar10) and any(
            os.path.isfile(os.path.join(tfds_cifar10, version, 'dataset_info.json'))
            for version in os.listdir(tfds_cifar10)):
        return 'tfds', path
    return 'missing', path


def _cifar10_not_found_message(tried: Sequence[str]) -> str:
    paths = '\n'.join(f'  - {os.path.abspath(os.path.expanduser(p))}' if '://' not in p
                      else f'  - {p}' for p in tried)
    return (
        'CIFAR-10 not found. Looked for an image folder (train/<class>/*.jpg and '
        'test/<class>/*.jpg) or a tfds-prepared cifar10/ in:\n'
        f'{paths}\n'
        'To provide it, either:\n'
        '  - point --config.data_dir (or $RESNET_JAX_DATA_DIR) at an image-folder copy with '
        'train/ and test/ class folders, or\n'
        '  - prepare it with tensorflow-datasets on a machine with internet access '
        "(python -c \"import tensorflow_datasets as tfds; tfds.builder('cifar10')"
        '.download_and_prepare()") and copy its cifar10/ folder into --config.data_dir '
        '(tensorflow-datasets, which `pip install -e .` installs, reads it).\n'
        'Nothing is downloaded automatically.')


def _check_cifar10(data: ArrayDataset) -> ArrayDataset:
    """The folder must really be CIFAR-10: 32x32 RGB, the ten classes in the usual order."""
    if data.class_names != CIFAR10_CLASSES:
        raise DataError(f'{data.source} is not CIFAR-10: its classes are {data.class_names}, '
                         f'expected {CIFAR10_CLASSES}')
    if data.train_images.shape[1:] != CIFAR10_IMAGE_SHAPE:
        raise DataError(f'{data.source} is not CIFAR-10: its images are '
                         f'{data.train_images.shape[1:]}, expected {CIFAR10_IMAGE_SHAPE}')
    return data


def _load_tfds_cifar10(data_dir: str) -> ArrayDataset:
    """Reads a tfds-prepared cifar10 from data_dir, with download=False."""
    # Heavy: imported only here, so that the in-memory path never loads TensorFlow.
    tfds = packages.import_for(
        'tensorflow_datasets', f'reading the tfds-prepared cifar10 in {data_dir} (an '
        'image-folder copy needs neither TensorFlow nor tensorflow-datasets)')
    (train, test), info = tfds.load('cifar10', split=['train', 'test'], data_dir=data_dir,
                                    download=False, batch_size=-1, with_info=True)
    train, test = tfds.as_numpy(train), tfds.as_numpy(test)
    names = tuple(info.features['label'].names)
    return ArrayDataset(
        np.ascontiguousarray(train['image'], np.uint8), train['label'].astype(np.int32),
        np.ascontiguousarray(test['image'], np.uint8), test['label'].astype(np.int32),
        len(names), names, 'test', f'tfds:cifar10 ({data_dir})')


# ----------------------------------------------------------------------------- image folders


@dataclasses.dataclass(frozen=True)
class ImageFolderListing:
    """The files of an image folder, and what identifies this version of it."""

    class_names: tuple[str, ...]
    eval_split: str
    train_paths: list[str]
    train_labels: np.ndarray
    eval_paths: list[str]
    eval_labels: np.ndarray
    fingerprint: dict


def _load_image_folder(data_dir: str, image_size: int | None) -> ArrayDataset:
    """Reads <data_dir>/train/<class>/* and <data_dir>/<test|val|validation>/<class>/*."""
    if not data_dir:
        raise DatasetNotFoundError(
            'the image_folder data set needs --config.data_dir: a folder with train/ and '
            'test/ (or val/) subfolders of class folders')
    if image_size is not None and image_size <= 0:
        raise ValueError(f'image_size={image_size} must be positive')
    root = os.path.abspath(os.path.expanduser(data_dir))
    listing = list_image_folder(root)
    cache_path = _cache_path(root, listing, image_size)
    with _one_decoder_at_a_time(cache_path):
        arrays = _read_cache(cache_path, listing) if cache_path else None
        if arrays is None:
            arrays = (_decode_images(listing.train_paths, image_size),
                      _decode_images(listing.eval_paths, image_size))
            if cache_path:
                _write_cache(cache_path, *arrays)
        else:
            logger.info('Read the decoded images of %s from the cache %s.', root, cache_path)
    train_images, eval_images = arrays
    if train_images.shape[1:] != eval_images.shape[1:]:
        raise DataError(f'{root}: train images are {train_images.shape[1:3]} but '
                         f'{listing.eval_split} images are {eval_images.shape[1:3]}; pass '
                         'image_size to resize both')
    return ArrayDataset(train_images, listing.train_labels, eval_images, listing.eval_labels,
                        len(listing.class_names), listing.class_names, listing.eval_split, root)


def _find_split_dirs(root: str) -> tuple[str, str] | None:
    """(train dir, eval dir) of an image folder, or None if root is not one."""
    train = os.path.join(root, 'train')
    if not os.path.isdir(train):
        return None
    for split in EVAL_SPLIT_FOLDERS:
        if os.path.isdir(os.path.join(root, split)):
            return train, os.path.join(root, split)
    return None


def list_image_folder(root: str) -> ImageFolderListing:
    """Lists every image once; labels are the sorted train class-folder names."""
    split_dirs = _find_split_dirs(root)
    if split_dirs is None:
        raise DatasetNotFoundError(
            f'no image folder at {root}: expected {root}/train/<class>/<image> and '
            f'{root}/test/<class>/<image> (or val/ or validation/ instead of test/); '
            'point --config.data_dir at such a folder')
    train_dir, eval_dir = split_dirs
    class_names = tuple(sorted(_subdirs(train_dir)))
    if not class_names:
        raise DataError(f'{train_dir} holds no class folders')
    unknown = sorted(set(_subdirs(eval_dir)) - set(class_names))
    if unknown:
        raise DataError(f'{eval_dir} has classes that {train_dir} lacks: {unknown}')
    stats = {'files': 0, 'bytes': 0, 'newest_mtime_ns': 0}
    train_paths, train_labels = _list_split(train_dir, class_names, stats)
    eval_paths, eval_labels = _list_split(eval_dir, class_names, stats)
    eval_split = 'test' if os.path.basename(eval_dir) == 'test' else 'validation'
    return ImageFolderListing(class_names, eval_split, train_paths, train_labels, eval_paths,
                              eval_labels, stats)


def _subdirs(path: str) -> list[str]:
    with os.scandir(path) as entries:
        return [e.name for e in entries if e.is_dir() and not e.name.startswith('.')]


def _list_split(split_dir: str, class_names: Sequence[str],
                stats: dict) -> tuple[list[str], np.ndarray]:
    """Image paths of one split in (class, file name) order, and their labels.

    Also accumulates the fingerprint in `stats`; the stat calls cost little next to decoding.
    """
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        if not os.path.isdir(class_dir):
            continue  # an eval split may lack a class.
        with os.scandir(class_dir) as entries:
            files = sorted((e for e in entries if e.is_file() and not e.name.startswith('.')
                            and e.name.lower().endswith(IMAGE_EXTENSIONS)),
                           key=lambda e: e.name)
        for entry in files:
            stat = entry.stat()
            stats['files'] += 1
            stats['bytes'] += stat.st_size
            stats['newest_mtime_ns'] = max(stats['newest_mtime_ns'], stat.st_mtime_ns)
        paths.extend(e.path for e in files)
        labels.extend([label] * len(files))
    if not paths:
        raise DataError(f'{split_dir} holds no images (looked for {", ".join(IMAGE_EXTENSIONS)} '
                         'files in its class folders)')
    return paths, np.asarray(labels, np.int32)


def _decode_images(paths: Sequence[str], image_size: int | None) -> np.ndarray:
    """Decodes the images into one uint8 [N, H, W, 3] array, resizing if image_size is set.

    A plain loop: at CIFAR's size PIL holds the GIL for most of each file (header parsing
    in Python), so threads measured slower than one thread on a 2-core machine.
    """
    first = _decode_image(paths[0], image_size)
    images = np.empty((len(paths), *first.shape), np.uint8)
    images[0] = first
    for i in range(1, len(paths)):
        image = _decode_image(paths[i], image_size)
        if image.shape != first.shape:
            raise DataError(
                f'images differ in size: {paths[0]} is {first.shape[1]}x{first.shape[0]} but '
                f'{paths[i]} is {image.shape[1]}x{image.shape[0]}; pass image_size to resize '
                'them all to one size')
        images[i] = image
    return images


def _decode_image(path: str, image_size: int | None) -> np.ndarray:
    """One image as uint8 [H, W, 3]; resized to image_size x image_size if that is set."""
    with open(path, 'rb') as f:
        data = f.read()  # one read: PIL's many small reads on a file cost more.
    formats = _PIL_FORMATS.get(os.path.splitext(path)[1].lower())
    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            if image.mode != 'RGB':
                image = image.convert('RGB')
            if image_size is not None and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(image)
    except (OSError, ValueError) as error:
        # PIL names neither the file nor the reason in this one ("cannot identify image
        # file <_io.BytesIO ...>").
        reason = ('not an image in a format PIL reads' if isinstance(
            error, UnidentifiedImageError) else str(error))
        raise DataError(f'cannot decode image {path}: {reason}') from error


# ----------------------------------------------------------------------------- cache


def _cache_path(root: str, listing: ImageFolderListing, image_size: int | None) -> str | None:
    """Where the decoded arrays of this version of the folder are cached (None: no cache)."""
    if listing.fingerprint['files'] < _CACHE_MIN_FILES:
        return None
    cache_dir = os.path.expanduser(os.environ.get(CACHE_DIR_ENV) or user_cache.root())
    key = json.dumps([_CACHE_VERSION, root, listing.fingerprint, image_size], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(os.path.abspath(cache_dir), f'{os.path.basename(root)}-{digest}.npz')


def _one_decoder_at_a_time(cache_path: str | None):
    """Processes loading the same folder at once (`reproduce --parallel`, several runs
    started together) decode it once: the first writes the cache and the others wait for
    it and read it. Without a cache there is no lock and each decodes."""
    if cache_path is None:
        return contextlib.nullcontext()
    return file_lock.exclusive(cache_path + '.lock')


def _read_cache(path: str, listing: ImageFolderListing) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (train, eval) images, or None if absent or unusable (then rebuilt)."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            train, evals = cached['train_images'], cached['eval_images']
    except Exception as error:  # any unreadable cache is rebuilt, never fatal.
        logger.warning('Ignoring the unreadable cache file %s (%s); decoding again.', path, error)
        return None
    expected = (len(listing.train_paths), len(listing.eval_paths))
    if (train.dtype != np.uint8 or evals.dtype != np.uint8 or train.ndim != 4
            or (len(train), len(evals)) != expected):
        logger.warning('Ignoring the cache file %s: it does not match the folder; decoding '
                       'again.', path)
        return None
    return train, evals


def _write_cache(path: str, train_images: np.ndarray, eval_images: np.ndarray) -> None:
    """Writes the cache atomically; a failure (read-only, disk full) only warns."""
    directory = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        # A temporary name and a rename: a concurrent reader never sees a partial file.
        fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix='.npz', dir=directory)
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, train_images=train_images, eval_images=eval_images)
        os.replace(tmp, path)
        logger.info('Cached the decoded images in %s (set $%s to move it).', path,
                    CACHE_DIR_ENV)
    except OSError as error:
        logger.warning('Could not write the data cache %s (%s); the next load will decode '
                       'again. Set $%s to a writable directory to cache.', path, error,
                       CACHE_DIR_ENV)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
