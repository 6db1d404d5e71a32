#!/bin/bash
# ResNet-20, 1000 steps (lr /10 at 500, 750), ours vs the PyTorch reference, seeds 0 and 1.
set -u
cd "$(dirname "$0")/../../.."  # the repository root
P=python
D=../shared/data/cifar10-jpeg
W=workdirs/gap_1k
O="--config.total_steps=1000 --config.schedule.boundaries=(500,750) --config.eval_every_steps=250 --config.data_dir=$D"
mkdir -p $W
for s in 0 1; do
  if [ $s != 0 ]; then
    /usr/bin/time -f "%e s wall" $P -m resnet_jax.main --config experiments/cifar10.py:resnet20,short --workdir $W/jax_$s --config.seed=$s $O > $W/jax_$s.log 2>&1
  fi
  /usr/bin/time -f "%e s wall" $P benchmarks/torch_cifar10.py --config experiments/cifar10.py:resnet20,short --workdir $W/torch_$s --config.seed=$s $O > $W/torch_$s.log 2>&1
done
echo done > $W/DONE
