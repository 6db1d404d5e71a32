"""ImageNet (ILSVRC 2012) with the paper's recipe (sections 3.4, 4.1), for any model name.

experiments/r18.py ... r152.py are this recipe for the paper's five depths, each with the
paper's result. Run (on a host or pod with ImageNet prepared for tensorflow-datasets):

    python -m resnet_jax.main --config experiments/imagenet.py:resnet50 \
        --workdir gs://BUCKET/r50 --config.data_dir=gs://BUCKET/tensorflow_datasets

ImageNet is streamed by tf.data (README: "Data" links the preparation steps). The final
evaluation reports centre-crop, 10-crop (the paper's Table 3) and multi-scale fully
convolutional (Table 4) results. Without ImageNet, exercise the model and the recipe on
synthetic data in memory (images of the same shape, random labels):

    python -m resnet_jax.main --config experiments/imagenet.py:resnet50 --workdir /tmp/r50 \
        --config.dataset=synthetic --config.total_steps=20

Recipe: scale augmentation (shorter side in [256, 480], random 224 crop, flip, per-channel
normalisation, PCA lighting 0.1); SGD, batch 256, momentum 0.9, weight decay 1e-4, lr 0.1
divided by 10 "when the error plateaus", fixed here at epochs 30 and 60 of 90 (the schedule
of fb.resnet.torch that reproduces the paper's numbers); option B shortcuts, stride on the
first 1x1 (v1). Another global batch scales the rate linearly, 0.1 per 256 images, and
above 256 warms it up over 5 epochs (Goyal et al. 2017); from a few thousand images on,
experiments/mlperf_r50.py (LARS) is the recipe.
"""

from resnet_jax import configs, models


def get_config(arg: str = 'resnet50'):
    """The paper's ImageNet recipe for the model named `arg` (one of models.MODEL_NAMES)."""
    if arg not in models.MODEL_NAMES:
        raise ValueError(f'unknown model {arg!r}; choose one of {", ".join(models.MODEL_NAMES)}')
    config = configs.get_base_config()
    config.dataset = 'imagenet2012'  # streamed ('auto'); 'synthetic' runs in memory.
    config.image_size = 224
    config.num_classes = 1000
    config.augment = 'flip'  # only for --config.dataset=synthetic (in memory).
    config.streaming.augment = 'scale'  # shorter side in [256, 480], random 224 crop, flip.
    config.streaming.lighting_std = 0.1
    config.streaming.eval_modes = ('center_crop', 'ten_crop', 'multi_scale')
    config.model.name = arg
    config.model.variant = 'v1'
    config.model.shortcut = 'B'
    config.batch_size = 256
    config.schedule.base_batch_size = 256  # lr 0.1 per 256 images, scaled with the batch.
    config.eval_batch_size = 250
    config.num_epochs = 90.0
    config.schedule.unit = 'epochs'
    config.schedule.boundaries = (30, 60)
    config.log_every_steps = 100
    config.eval_every_steps = 5000
    config.checkpoint_every_steps = 2000
    return config
