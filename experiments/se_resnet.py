"""Squeeze-and-excitation ResNets on CIFAR-10 (Hu et al. 2018, "Squeeze-and-Excitation
Networks"): a block defined in this file alone, trained by the paper's CIFAR recipe.

    python -m resnet_jax.main --config experiments/se_resnet.py:resnet20 \
        --workdir workdirs/se_resnet20 --config.data_dir=PATH/TO/cifar10-jpeg

Arguments: resnet20 ... resnet110 (experiments/cifar10.py's depths), each optionally
followed by `,short` (2,500 steps). `config.model.block` names `SEBasicBlock` in this file;
a run copies the file into its workdir (WORKDIR/blocks/), from which every tool that reads
the workdir rebuilds the model (predict, export, features, init_from, layer responses);
`python -m resnet_jax.models.summary --config experiments/se_resnet.py:resnet20` prints it.

A block is a `models.Block` (the contract: resnet_jax/models/blocks.py): the network gives
it its width, stride, shortcut kind, the injected layers and the compute dtype; this one
reuses the basic block's branch. The file is imported to find the class, so its top level
only defines things.
"""

from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import models, pyfiles


class SEBasicBlock(models.BasicBlock):
    """The paper's basic block with squeeze-and-excitation on the branch: relu(SE(BN(y)) +
    shortcut), SE(z) = z * sigmoid(W2 relu(W1 mean_hw(z))), W1 reducing by `reduction`."""

    reduction: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.last_norm('bn2')(self.branch(x))
        y = y * self.excitation(y)
        skip = self.skip(x)  # None in a plain net
        return nn.relu(y if skip is None else y + skip)

    def excitation(self, y: jax.Array) -> jax.Array:
        """Per-channel weights in (0, 1) from the channels' means, [B, 1, 1, C]."""
        channels = y.shape[-1]
        dense = lambda features, name: self.layers.dense(  # noqa: E731
            features, dtype=jnp.float32, param_dtype=jnp.float32, name=name)
        squeezed = jnp.mean(y.astype(jnp.float32), axis=(1, 2))
        hidden = nn.relu(dense(max(1, channels // self.reduction), 'se_reduce')(squeezed))
        weights = nn.sigmoid(dense(channels, 'se_expand')(hidden))
        return weights[:, None, None, :].astype(y.dtype)


MODELS = ('resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110')


def get_config(arg: str = 'resnet20'):
    here = pathlib.Path(__file__).resolve()
    cifar10 = pyfiles.import_file(here.with_name('cifar10.py'))
    name, short = cifar10.parse_arg(arg, MODELS)
    config = cifar10.recipe(f'cifar_{name}', short)
    config.model.block = f'{here}:SEBasicBlock'
    return config
