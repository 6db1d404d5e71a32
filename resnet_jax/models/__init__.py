"""Every ResNet of He et al. (2015), "Deep Residual Learning for Image Recognition", and the
pre-activation ResNets of He et al. (2016), "Identity Mappings in Deep Residual Networks".

- `blocks`: the residual blocks and the contract a block follows (a new block is one
  class, in a file of its own if need be: experiments/se_resnet.py);
- `resnet`: the network (stem, stages, pooling, head), given its block class;
- `depths`: the depth table, as data (ImageNet 18-200, CIFAR 6n+2 and 9n+2, plain twins);
- `architecture`: the config's `model` section derived from the model, its validation,
  and `create_model` / `from_config`.
"""

from resnet_jax.models.architecture import block_class, create_model, from_config
from resnet_jax.models.blocks import (
    BLOCKS,
    SHORTCUTS,
    VARIANTS,
    BasicBlock,
    Block,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
    he_normal,
)
from resnet_jax.models.depths import MODEL_NAMES, ModelSpec, model_parts, model_spec, part_of
from resnet_jax.models.resnet import STEMS, ResNet

__all__ = [
    'BLOCKS', 'MODEL_NAMES', 'SHORTCUTS', 'STEMS', 'VARIANTS', 'BasicBlock', 'Block',
    'BottleneckBlock', 'ModelSpec', 'PreActBasicBlock', 'PreActBottleneckBlock', 'ResNet',
    'block_class', 'create_model', 'from_config', 'he_normal', 'model_parts', 'model_spec',
    'part_of',
]
