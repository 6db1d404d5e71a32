"""Converts torchvision ResNet weights into a model directory of this codebase.

    python -m resnet_jax.pretrained.convert --torchvision resnet50-0676ba61.pth --model resnet50 \\
        --out converted/resnet50

Reads a torchvision ResNet state dict (`.pth` as torch.save writes it, or `.safetensors`;
PyTorch is not needed) of any depth 18-152 (torchvision's architecture: shortcut B,
v1.5), checks every name and shape against `--model`, and writes `--out` as a model
directory (resnet_jax/pretrained/__init__.py): `pretrained.load`, `predict`, `export` and a
fine-tuning run's `--config.init_from` read it. The number of classes is taken from the
file's `fc.weight`.
"""

from __future__ import annotations

import hashlib
import json
import time

import jax
from absl import app, flags, logging

from resnet_jax import cli, models, pretrained
from resnet_jax.pretrained import torch_files, torchvision_weights

FLAGS = flags.FLAGS
flags.DEFINE_string('torchvision', None, 'torchvision ResNet state dict: .pth or .safetensors.')
flags.DEFINE_string('model', None, 'Model name: resnet18, resnet34, resnet50, resnet101, '
                    'resnet152 (or another ImageNet ResNet of resnet_jax.models).')
flags.DEFINE_string('out', None, 'The model directory to write (must not hold checkpoints).')
flags.mark_flags_as_required(['torchvision', 'model', 'out'])

USER_ERRORS = (torch_files.StateDictError, torchvision_weights.StateDictMismatchError,
               pretrained.ModelDirError, ValueError, OSError)


def convert(torchvision_file: str, model_name: str, out: str) -> pretrained.Loaded:
    """Converts `torchvision_file` for `model_name` into the model directory `out`."""
    state_dict = torch_files.read_state_dict(torchvision_file)
    num_classes = torchvision_weights.num_classes_of(state_dict, torchvision_file)
    config = pretrained.imagenet_config(model_name, num_classes)
    if num_classes != 1000:
        config.dataset = 'image_folder'  # not ImageNet-1k: no class names are known
        config.data_dir = ''
    model = pretrained.build_model(config, num_classes)
    variables = torchvision_weights.to_variables(state_dict, model, torchvision_file)
    pretrained.save(out, config, model, variables)
    with open(torchvision_file, 'rb') as file:
        digest = hashlib.sha256(file.read()).hexdigest()
    (pretrained.checkpoints_dir(out).parent / 'converted_from.json').write_text(json.dumps(
        {'torchvision_file': torchvision_file, 'sha256': digest, 'model': model_name,
         'num_classes': num_classes}, indent=2) + '\n')
    return pretrained.Loaded(model, variables, config, 0, {})


def main(argv: list[str]) -> None:
    cli.quiet_orbax_logs()
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    if FLAGS.model not in models.MODEL_NAMES:
        cli.fail(f'--model={FLAGS.model!r} is unknown; valid names: '
                 f'{", ".join(models.MODEL_NAMES)}')
    start = time.perf_counter()
    try:
        loaded = convert(FLAGS.torchvision, FLAGS.model, FLAGS.out)
    except USER_ERRORS as error:
        cli.fail(f'{type(error).__name__}: {error}')
    count = sum(v.size for v in jax.tree.leaves(loaded.variables['params']))
    logging.info('Converted %s (%s, %d classes, %d parameters) into %s in %.1f s.',
                 FLAGS.torchvision, FLAGS.model, loaded.num_classes, count, FLAGS.out,
                 time.perf_counter() - start)


if __name__ == '__main__':
    app.run(main)
