"""ResNet-34 on ImageNet (ILSVRC 2012), the paper's recipe (sections 3.4, 4.1).

Run (on a host or pod with ImageNet prepared for tensorflow-datasets):

    python -m resnet_jax.main --config experiments/r34.py --workdir gs://BUCKET/r34 \
        --config.data_dir=gs://BUCKET/tensorflow_datasets

Until the streaming ImageNet pipeline lands, exercise the model and the recipe on
synthetic data (images of the same shape, random labels):

    python -m resnet_jax.main --config experiments/r34.py --workdir /tmp/r34 \
        --config.dataset=synthetic --config.total_steps=20

Recipe: SGD, batch 256, momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at
epochs 30 and 60, 90 epochs; option B shortcuts, stride on the first 1x1 (v1).
Expected (ImageNet validation), paper Table 3: top-1 error 24.52%, top-5 7.46%
(10-crop testing, option B);
Table 2 with option A: 25.03% (plain-34 28.54%).
Time on named hardware: not measured yet.
"""

from resnet_jax import configs


def get_config():
    return configs.paper_imagenet_config('resnet34')
