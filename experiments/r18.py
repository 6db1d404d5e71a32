"""ResNet-18 on ImageNet (ILSVRC 2012), the paper's recipe (sections 3.4, 4.1).

Run (on a host or pod with ImageNet prepared for tensorflow-datasets):

    python -m resnet_jax.main --config experiments/r18.py --workdir gs://BUCKET/r18 \
        --config.data_dir=gs://BUCKET/tensorflow_datasets

Until the streaming ImageNet pipeline lands, exercise the model and the recipe on
synthetic data (images of the same shape, random labels):

    python -m resnet_jax.main --config experiments/r18.py --workdir /tmp/r18 \
        --config.dataset=synthetic --config.total_steps=20

Recipe: SGD, batch 256, momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at
epochs 30 and 60, 90 epochs; option A shortcuts (as Table 2), stride on the first 1x1 (v1).
Expected (ImageNet validation), paper Table 2: top-1 error 27.88%
(10-crop testing, option A; plain-18 27.94%).
Time on named hardware: not measured yet.
"""

from resnet_jax import configs


def get_config():
    config = configs.paper_imagenet_config('resnet18')
    config.model.shortcut = 'A'  # the paper's only ResNet-18 result (Table 2) is option A.
    return config
