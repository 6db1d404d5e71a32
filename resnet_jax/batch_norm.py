"""BatchNorm together with the residual addition and ReLU that follow it in a ResNet."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.kernels import batchnorm


class BatchNorm(nn.BatchNorm):
    """`flax.linen.BatchNorm`, and after it the residual addition and ReLU of a ResNet.

    `module(x, residual, relu=True)` is `relu(BatchNorm(x) + residual)`. With `kernels`, the
    three run as one op in `resnet_jax.kernels.batchnorm`'s CPU kernels where those apply
    (float32, a multiple of 16 channels, statistics per device); otherwise as flax's
    BatchNorm followed by the addition and ReLU in XLA. The parameters, batch statistics and
    results are the same either way (to float32 rounding).
    """

    kernels: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array | None = None, *,
                 relu: bool = False) -> jax.Array:
        if not self._in_kernels(x, residual):
            y = nn.BatchNorm.__call__(self, x)
            if residual is not None:
                y = y + residual
            return nn.relu(y) if relu else y
        # The variables of nn.BatchNorm, made the same way.
        features = (x.shape[-1],)
        scale = self.param('scale', self.scale_init, features, self.param_dtype)
        bias = self.param('bias', self.bias_init, features, self.param_dtype)
        ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
        ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
        if self.use_running_average:
            return batchnorm.infer(x, ra_mean.value, ra_var.value, scale, bias, residual,
                                   relu=relu, epsilon=self.epsilon)
        y, mean, var = batchnorm.train(x, scale, bias, residual, relu=relu,
                                       epsilon=self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y

    def _in_kernels(self, x: jax.Array, residual: jax.Array | None) -> bool:
        return (self.kernels and batchnorm.covers(x)
                and (residual is None or residual.dtype == jnp.float32)
                and self.use_running_average is not None
                and self.axis in (-1, x.ndim - 1) and self.axis_name is None
                and self.use_scale and self.use_bias
                and self.param_dtype == jnp.float32 and self.dtype in (None, jnp.float32))
