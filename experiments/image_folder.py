"""Your own images: any image-folder data set, streamed, images of any size.

Run (the argument picks the network; an ImageNet-style one by default):

    python -m resnet_jax.main --config experiments/image_folder.py:resnet50 \
        --workdir workdirs/mine --config.data_dir=/path/to/folder

The folder holds DIR/train/<class>/<image> and DIR/val/<class>/<image> (or test/ or
validation/ instead of val/); classes are the sorted train folder names. JPEGs are
decoded only inside the crop window; PNG and other formats are decoded whole.

Recipe: Inception-style random-resized crops at 224 with flips (more robust to images
far from ImageNet's than the paper's fixed scale range), per-channel ImageNet
normalisation, SGD with momentum 0.9, batch 256, cosine decay from lr 0.1 over 90
epochs with a 5-epoch warm-up, weight decay 1e-4 on kernels only; centre-crop and
10-crop evaluation at the end (--config.eval_every_steps=N adds centre-crop evaluations
on the way). Shrink it for small data sets, e.g. --config.num_epochs=30
--config.batch_size=64.

Expected: depends on the data. Time: docs/performance.md ("Host input pipeline") gives how
many images per second and core the pipeline decodes, to size the machine.
"""

import pathlib

from resnet_jax import pyfiles

# Starts from the paper's ImageNet recipe, beside this file.
_IMAGENET = pyfiles.import_file(pathlib.Path(__file__).with_name('imagenet.py'))


def get_config(arg: str = 'resnet50'):
    config = _IMAGENET.get_config(arg)
    config.pipeline = 'streaming'
    config.dataset = 'image_folder'
    config.num_classes = None  # from the folder.
    config.model.variant = 'v1.5'
    config.streaming.augment = 'inception'
    config.streaming.lighting_std = 0.0
    config.streaming.eval_modes = ('center_crop', 'ten_crop')
    config.optim.weight_decay_params = 'kernels'
    config.schedule.name = 'cosine'
    config.schedule.boundaries = ()
    config.schedule.warmup = 5
    config.eval_every_steps = 0
    return config
