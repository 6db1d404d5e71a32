"""A ResNet as a backbone: the stage outputs (C2-C5) and the pooled pre-logits features.

    from resnet_jax import pretrained
    from resnet_jax.pretrained import features
    model, variables = pretrained.load('converted/resnet50')
    out = features.extract(model, variables, images)   # float32 NHWC, normalised
    out['C5'].shape      # [B, H/32, W/32, 2048]
    out['pre_logits']    # [B, 2048], what the classifier head reads

It is the model's own forward pass in inference mode (BatchNorm running statistics): the
stages are what `ResNet.__call__(..., return_stages=True)` returns, the pre-logits what
the module sows into 'intermediates' before its head.
"""

from __future__ import annotations

from typing import Any

import jax

from resnet_jax import models

# Names of the FPN/detection literature: C2..C5 are the outputs of stages 1..4, at strides
# 4, 8, 16 and 32 of an ImageNet net. A CIFAR net's three stages are C2..C4 (strides 1, 2, 4).
STAGE_NAMES = {'stage1': 'C2', 'stage2': 'C3', 'stage3': 'C4', 'stage4': 'C5'}


def extract(model: models.ResNet, variables: dict[str, Any], images: jax.Array,
            ) -> dict[str, jax.Array]:
    """{'C2', 'C3', 'C4', 'C5' (as many as the net has stages), 'stem', 'pre_logits',
    'logits'} for a batch of images [B, H, W, 3], in inference mode.

    The stage outputs are in the model's compute dtype; pre-logits and logits float32.
    Wrap it in `jax.jit` (with `model` static, e.g. a closure) to run it repeatedly.
    """
    (logits, stages), state = model.apply(variables, images, train=False,
                                          return_stages=True, mutable=['intermediates'])
    out = {STAGE_NAMES.get(name, name): value for name, value in stages.items()}
    (out['pre_logits'],) = state['intermediates']['pre_logits']
    out['logits'] = logits
    return out
