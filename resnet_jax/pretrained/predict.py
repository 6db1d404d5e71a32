"""Prints the top-5 classes of images, with their probabilities.

    python -m resnet_jax.pretrained.predict --checkpoint converted/resnet50 cat.jpg dog.png ...
    python -m resnet_jax.pretrained.predict --workdir workdirs/cifar10_resnet56 plane.png

`--checkpoint` is a model directory (resnet_jax.pretrained.convert) or a run's workdir, and so is
`--workdir`. Each image gets the model's own evaluation preprocessing
(resnet_jax/pretrained/eval_preprocessing.py: resize and centre crop for ImageNet models, as the
streaming evaluation; as-is for CIFAR), and the batches run on JAX's default device.
Class names are printed where the model's config says what they are (ImageNet's 1000,
CIFAR-10's, an image folder's), else class indices. An image that cannot be read is
named on stderr and the others are still predicted; the exit status is then 1.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from resnet_jax import cli, pretrained
from resnet_jax.inputs import arrays
from resnet_jax.pretrained import eval_preprocessing

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', None,
                    'A model directory (resnet_jax.pretrained.convert) or workdir.')
flags.DEFINE_string('workdir', None, 'A training run\'s workdir (the same as --checkpoint).')
flags.DEFINE_integer('batch_size', 32, 'Images per batch.')
flags.DEFINE_integer('top', 5, 'How many classes to print per image.')


def top_k_function(model, top: int) -> Callable:
    """jit: (variables, images [B, H, W, 3]) -> (probabilities [B, top], classes [B, top])."""
    def predict(variables, images):
        logits = model.apply(variables, images, train=False)
        return jax.lax.top_k(jax.nn.softmax(logits), top)
    return jax.jit(predict)


def batches(paths: Sequence[str], preprocess: Callable[[str], np.ndarray], batch_size: int,
            failures: list[str]) -> Iterator[tuple[list[str], np.ndarray]]:
    """(paths, images) batches of the readable images, the last one padded to batch_size
    (one compiled shape); each unreadable image's error line is appended to `failures`."""
    ready: list[tuple[str, np.ndarray]] = []
    for path in paths:
        try:
            ready.append((path, preprocess(path)))
        except eval_preprocessing.ImageReadError as error:
            failures.append(str(error))
        if len(ready) == batch_size:
            yield [p for p, _ in ready], np.stack([x for _, x in ready])
            ready = []
    if ready:
        images = np.stack([x for _, x in ready])
        padding = np.zeros((batch_size - len(ready), *images.shape[1:]), images.dtype)
        yield [p for p, _ in ready], np.concatenate([images, padding])


def format_prediction(path: str, probabilities: np.ndarray, classes: np.ndarray,
                      names: Sequence[str] | None) -> str:
    """The lines printed for one image: its path, then `probability  name (index)`."""
    lines = [path]
    for probability, index in zip(probabilities, classes, strict=True):
        name = f'{names[index]} ({index})' if names else f'class {index}'
        lines.append(f'  {probability:7.4f}  {name}')
    return '\n'.join(lines)


def predict(directory: str, paths: Sequence[str], batch_size: int = 32, top: int = 5,
            out=sys.stdout) -> tuple[list[str], dict[str, float]]:
    """Prints the predictions of the images in `paths`; returns (the error lines of the
    unreadable ones, timings: images, seconds, images_per_second after the first batch)."""
    loaded = pretrained.load_dir(directory)
    preprocess = eval_preprocessing.from_config(loaded.config)
    names = loaded.class_names()
    top = min(top, loaded.num_classes)
    logging.info('%s: %s, step %d, %d classes; preprocessing: %s; device %s.', directory,
                 loaded.config.model.name, loaded.step, loaded.num_classes,
                 preprocess.describe(), jax.devices()[0].device_kind)
    function = top_k_function(loaded.model, top)
    variables = jax.device_put(jax.tree.map(jnp.asarray, loaded.variables))
    failures: list[str] = []
    count, start, steady_start, steady_count = 0, time.perf_counter(), None, 0
    for batch_paths, images in batches(paths, preprocess, batch_size, failures):
        probabilities, classes = jax.device_get(function(variables, images))
        for i, path in enumerate(batch_paths):
            print(format_prediction(path, probabilities[i], classes[i], names), file=out)
        count += len(batch_paths)
        if steady_start is None:
            steady_start = time.perf_counter()  # after compiling and the first batch
        else:
            steady_count += len(batch_paths)
    seconds = time.perf_counter() - start
    steady = time.perf_counter() - steady_start if steady_start else 0.0
    timings = {'images': count, 'seconds': seconds,
               'images_per_second': steady_count / steady if steady_count else float('nan')}
    return failures, timings


def main(argv: list[str]) -> None:
    cli.quiet_orbax_logs()
    paths = argv[1:]
    directory = FLAGS.checkpoint or FLAGS.workdir
    if not directory or (FLAGS.checkpoint and FLAGS.workdir):
        cli.fail('give one of --checkpoint DIR or --workdir DIR')
    if not paths:
        cli.fail('give one or more image files after the flags')
    if FLAGS.batch_size < 1 or FLAGS.top < 1:
        cli.fail('--batch_size and --top must be >= 1')
    try:
        failures, timings = predict(directory, paths, FLAGS.batch_size, FLAGS.top)
    except (pretrained.ModelDirError, arrays.DatasetNotFoundError, arrays.DataError) as error:
        cli.fail(f'{type(error).__name__}: {error}')
    rate = timings['images_per_second']
    steady = (f'{rate:.1f} images/s after the first batch, ' if rate == rate  # not NaN
              else 'one batch, ')
    logging.info('Predicted %d images in %.1f s (%sbatch %d, reading and preprocessing '
                 'included).', timings['images'], timings['seconds'], steady, FLAGS.batch_size)
    if failures:
        sys.stderr.write(''.join(f'ERROR {line}\n' for line in failures))
        sys.exit(1)


if __name__ == '__main__':
    app.run(main)
