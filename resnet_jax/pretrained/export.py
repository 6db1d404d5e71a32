"""Serialises a model's inference function as StableHLO (`jax.export`), weights inside.

    python -m resnet_jax.pretrained.export --checkpoint converted/resnet50 --out resnet50.jax_export

The file maps float32 NHWC images, normalised as the model's data set was (ImageNet
models: torchvision's normalisation), of a symbolic batch size, to float32 logits, in
inference mode (BatchNorm running statistics). Reading it needs only JAX, not this
codebase:

    exported = jax.export.deserialize(open('resnet50.jax_export', 'rb').read())
    logits = exported.call(images)            # images [B, 224, 224, 3], any B

After writing, the command reloads the file and compares it with the live model on a
batch of 2 random images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from resnet_jax import cli, pretrained

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', None,
                    'A model directory (resnet_jax.pretrained.convert) or a workdir.')
flags.DEFINE_string('out', None, 'The file to write.')
flags.DEFINE_integer('image_size', None, 'Side of the input images; default: the config\'s '
                     '(224 for ImageNet models, the data set\'s for in-memory ones).')
flags.DEFINE_list('platforms', None, 'Platforms to lower for (cpu, cuda, rocm, tpu); '
                  'default: the platform of this machine.')
flags.mark_flags_as_required(['checkpoint', 'out'])


def export_inference(model, variables: dict[str, Any], image_size: int,
                     platforms: Sequence[str] | None = None) -> jax.export.Exported:
    """`jax.export` of `images -> logits` with the variables as constants, batch symbolic."""
    variables = jax.tree.map(jnp.asarray, variables)

    def infer(images):
        return model.apply(variables, images, train=False)

    (batch,) = jax.export.symbolic_shape('batch')
    spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    return jax.export.export(jax.jit(infer), platforms=platforms)(spec)


def image_size_of(loaded: pretrained.Loaded) -> int:
    """The input side the model was trained and evaluated at, from its config."""
    config = loaded.config
    if config.image_size:
        return int(config.image_size)
    if config.dataset == 'cifar10':
        return 32
    raise ValueError('the config does not say the image size; pass --image_size')


def check_against_live(exported: jax.export.Exported, serialized: bytes, model, variables,
                       image_size: int, batch: int = 2) -> float:
    """Largest |exported - live| over the logits of `batch` random images, relative to
    the largest live logit."""
    images = np.random.default_rng(0).standard_normal(
        (batch, image_size, image_size, 3)).astype(np.float32)
    reloaded = jax.export.deserialize(bytearray(serialized))
    got = np.asarray(reloaded.call(images))
    live = np.asarray(jax.jit(lambda x: model.apply(variables, x, train=False))(images))
    return float(np.abs(got - live).max() / max(np.abs(live).max(), 1e-30))


def main(argv: list[str]) -> None:
    cli.quiet_orbax_logs()
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    try:
        loaded = pretrained.load_dir(FLAGS.checkpoint)
        image_size = FLAGS.image_size or image_size_of(loaded)
    except (pretrained.ModelDirError, ValueError) as error:
        cli.fail(f'{type(error).__name__}: {error}')
    start = time.perf_counter()
    exported = export_inference(loaded.model, loaded.variables, image_size, FLAGS.platforms)
    serialized = exported.serialize()
    try:
        with open(FLAGS.out, 'wb') as file:
            file.write(serialized)
    except OSError as error:
        cli.fail(f'cannot write --out={FLAGS.out}: {error.strerror or error}')
    seconds = time.perf_counter() - start
    if jax.default_backend() in exported.platforms:
        difference = check_against_live(exported, serialized, loaded.model, loaded.variables,
                                        image_size)
        checked = f'reloaded: logits within {difference:.1e} of the live model (relative)'
    else:
        checked = f'not reloaded here (this machine is {jax.default_backend()})'
    logging.info('Exported %s (step %d, %d classes) to %s: %.1f MB, input %s, '
                 'platforms %s, in %.1f s; %s.', FLAGS.checkpoint, loaded.step,
                 loaded.num_classes, FLAGS.out, len(serialized) / 1e6,
                 exported.in_avals[0].str_short(), ','.join(exported.platforms), seconds,
                 checked)


if __name__ == '__main__':
    app.run(main)
