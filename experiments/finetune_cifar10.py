"""Fine-tunes an ImageNet ResNet (torchvision's weights, converted) on CIFAR-10.

Run (convert the weights once; the argument picks the network and the size):

    python -m resnet_jax.pretrained.convert --torchvision resnet50-0676ba61.pth --model resnet50 \
        --out converted/resnet50
    python -m resnet_jax.main --config experiments/finetune_cifar10.py:resnet50 \
        --workdir workdirs/finetune_r50 --config.init_from=converted/resnet50 \
        --config.data_dir=../shared/data/cifar10-jpeg

Arguments: resnet18 ... resnet152 (224x224 inputs, 3 epochs), each optionally followed by
`,cpu` (e.g. `resnet18,cpu`): 64x64 inputs, the stem and stage 1 frozen, 400 steps, for a
CPU. The 32x32 CIFAR images are streamed from the image folder and upscaled as the
ImageNet evaluation would see them: training views have a random shorter side in
[image_size, 9/8 image_size], a random image_size crop and a flip; evaluation resizes the
whole image to image_size (no centre crop: a CIFAR image has no margin to lose). Inputs
are normalised with ImageNet's per-channel mean and std, as torchvision's weights expect.
The 1000-class head is replaced by a fresh 10-class one (logged); everything else starts
from the checkpoint. SGD, momentum 0.9, batch 64, cosine decay from lr 0.01 after a
100-step linear warm-up, weight decay 1e-4 on kernels only.

Expected result: published fine-tuning results of ImageNet ResNet-50s on CIFAR-10 at
224px are around 97-98% top-1 (Kornblith et al. 2019, "Do Better ImageNet Models Transfer
Better?"); not yet measured here with real ImageNet weights. What was measured from a
converted random initialisation (the machinery and its speed): docs/pretrained.md.
"""

import pathlib

from resnet_jax import models, pyfiles

# Starts from the paper's ImageNet recipe, beside this file.
_IMAGENET = pyfiles.import_file(pathlib.Path(__file__).with_name('imagenet.py'))

FULL_SIZE = 224
CPU_SIZE = 64


def get_config(arg: str = 'resnet50'):
    name, _, variant = arg.partition(',')
    imagenet_nets = [n for n in models.MODEL_NAMES
                     if models.model_spec(n).stem == 'imagenet' and not models.model_spec(n).plain]
    if name not in imagenet_nets:
        raise ValueError(f'unknown network {name!r}; choose one of {", ".join(imagenet_nets)}')
    if variant not in ('', 'cpu'):
        raise ValueError(f"unknown variant {variant!r}: the only one is '{name},cpu'")
    config = _IMAGENET.get_config(name)
    config.pipeline = 'streaming'
    config.dataset = 'image_folder'
    config.num_classes = None  # from the folder: 10
    config.model.variant = 'v1.5'  # torchvision's architecture
    config.model.shortcut = 'B'
    size = CPU_SIZE if variant == 'cpu' else FULL_SIZE
    config.image_size = size
    stream = config.streaming
    stream.augment = 'scale'
    stream.scale_range = (size, size * 9 // 8)
    stream.lighting_std = 0.0
    stream.eval_modes = ('center_crop',)
    stream.eval_resize = size  # the whole (upscaled) image
    # init_from: pass --config.init_from=DIR (a converted model directory).
    config.init_from = ''
    config.batch_size = 64
    config.eval_batch_size = 200
    config.num_epochs = 3.0
    config.optim.weight_decay_params = 'kernels'
    config.schedule.name = 'cosine'
    config.schedule.base_lr = 0.01
    config.schedule.base_batch_size = 64
    config.schedule.unit = 'steps'
    config.schedule.boundaries = ()
    config.schedule.warmup = 100
    config.log_every_steps = 50
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 500
    if variant == 'cpu':
        config.total_steps = 400
        config.frozen_stages = ('stem', 'stage1')
    return config
