#!/bin/bash
# ResNet-20 on the short schedule (2,500 steps), ours vs the PyTorch reference, seeds 0-2;
# then ours with XLA's layers and with BatchNorm in groups of 64 (seeds 0-2).
# Ours with seed 0 is the degradation study's ResNet-20 run (../degradation_short/resnet20/).
set -u
cd "$(dirname "$0")/../../.."  # the repository root
P=python
D=../shared/data/cifar10-jpeg
W=workdirs/gap_short
mkdir -p $W
python -m resnet_jax.reproduce degradation --workdir workdirs/degradation_short --models resnet20 \
  --schedule short --config.data_dir=$D
for s in 0 1 2; do
  if [ $s != 0 ]; then
    /usr/bin/time -f "%e s wall" $P -m resnet_jax.main --config experiments/cifar10.py:resnet20,short --workdir $W/jax_$s --config.seed=$s --config.data_dir=$D > $W/jax_$s.log 2>&1
  fi
  /usr/bin/time -f "%e s wall" $P benchmarks/torch_cifar10.py --config experiments/cifar10.py:resnet20,short --workdir $W/torch_$s --config.seed=$s --config.data_dir=$D > $W/torch_$s.log 2>&1
done
# Ours with XLA's layers instead of the CPU kernels, and BatchNorm in groups of 64, the same seeds.
for s in 0 1 2; do
  $P -m resnet_jax.main --config experiments/cifar10.py:resnet20,short --workdir $W/jax_xla_$s --config.seed=$s --config.cpu_kernels=xla --config.data_dir=$D > $W/jax_xla_$s.log 2>&1
done
for s in 0 1 2; do
  $P -m resnet_jax.main --config experiments/cifar10.py:resnet20,short --workdir $W/jax_bn64_$s --config.seed=$s --config.model.bn_group_size=64 --config.data_dir=$D > $W/jax_bn64_$s.log 2>&1
done
python -m resnet_jax.plot workdirs/degradation_short/resnet20_short_seed0 $W/jax_1 $W/jax_2 $W/torch_0 $W/torch_1 $W/torch_2 -o $W/gap.png
