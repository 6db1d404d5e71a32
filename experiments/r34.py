"""ResNet-34 on ImageNet (ILSVRC 2012), the paper's recipe (sections 3.4, 4.1).

Run (on a host or pod with ImageNet prepared for tensorflow-datasets):

    python -m resnet_jax.main --config experiments/r34.py --workdir gs://BUCKET/r34 \
        --config.data_dir=gs://BUCKET/tensorflow_datasets

ImageNet is streamed by tf.data (README: "ImageNet" has the preparation steps). The
final evaluation reports centre-crop, 10-crop (the paper's Table 3) and multi-scale
fully-convolutional (Table 4) results. Without ImageNet, exercise the model and the
recipe on synthetic data in memory (images of the same shape, random labels):

    python -m resnet_jax.main --config experiments/r34.py --workdir /tmp/r34 \
        --config.dataset=synthetic --config.total_steps=20

Recipe: scale augmentation (shorter side in [256, 480], random 224 crop, flip, per-channel
normalisation, PCA lighting 0.1); SGD, batch 256, momentum 0.9, weight decay 1e-4, lr 0.1
divided by 10 at epochs 30 and 60, 90 epochs; option B shortcuts, stride on the first 1x1 (v1).
Expected (ImageNet validation), paper Table 3: top-1 error 24.52%, top-5 7.46%
(10-crop testing, option B);
Table 2 with option A: 25.03% (plain-34 28.54%).
Time on named hardware: not measured yet.
"""

from resnet_jax import configs


def get_config():
    return configs.paper_imagenet_config('resnet34')
