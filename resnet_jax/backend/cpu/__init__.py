"""What a run on XLA:CPU does differently, all of it here (`resnet_jax.backend` is the seam):

- `kernels/`: C++ kernels for the convolutions, BatchNorms and max pooling, through XLA's
  FFI; `kernel_layers` builds the model's layers from them where they are measured to win;
- `compiler`: XLA:CPU compiler options, and the optimization barriers around convolutions
  that those options keep;
- `host_memory`: glibc malloc settings that keep the memory XLA frees after each step;
  `process`: those and the CPU's JAX devices, set before JAX starts, and their flags.
"""

# `config.cpu_kernels` (see kernel_layers), here so that validation names them without
# importing the kernels.
KERNEL_CHOICES = ('auto', 'kernels', 'conv', 'xla')
