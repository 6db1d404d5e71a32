"""The training state: a pytree of arrays only, so that Orbax saves it as it is."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from resnet_jax import backend, parallel


@flax.struct.dataclass
class TrainState:
    """Step counter, parameters, BatchNorm statistics and optimiser state."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState


def _initializer(model: nn.Module, tx: optax.GradientTransformation, image_size: int):
    def init(key):
        dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        variables = model.init(key, dummy, train=False)
        params = variables['params']
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get('batch_stats', {}),
            opt_state=tx.init(params),
        )

    return init


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, image_size: int, key: jax.Array,
    mesh: Mesh,
) -> TrainState:
    """Initialises the model and optimiser, replicated over every device of `mesh`."""
    init = _initializer(model, tx, image_size)
    return jax.jit(init, out_shardings=parallel.replicated(mesh))(key)


def train_state_bytes(model: nn.Module, tx: optax.GradientTransformation,
                      image_size: int) -> int:
    """Size of one copy of the state (what a checkpoint writes), found without computing."""
    init_key, _ = backend.run_keys(0)
    shapes = jax.eval_shape(_initializer(model, tx, image_size), init_key)
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes))
