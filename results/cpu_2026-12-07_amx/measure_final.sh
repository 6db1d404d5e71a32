#!/bin/bash
# The three cases after every AMX change of 2026-12-07, against PyTorch (and XLA's ops for
# ResNet-50 in float32); more windows than measure.sh, the machine being noisy.
set -x
cd "$(dirname "$0")/../.."
OUT=results/cpu_2026-12-07_amx
python -c 'import torch; print("torch", torch.__version__)' > $OUT/final_versions.txt
python -c 'import jax; print("jax", jax.__version__)' >> $OUT/final_versions.txt
python benchmarks/cpu_vs_torch.py --case experiments/cifar10.py:resnet20@128 \
  --case experiments/cifar10.py:resnet56@128 \
  --contenders jax:bfloat16,torch:bfloat16,jax,torch \
  --repeats 9 --steps 2 --json $OUT/final_cifar.json > $OUT/final_cifar.txt 2> /tmp/amx4.err
python benchmarks/cpu_vs_torch.py --case experiments/r50.py@32 \
  --contenders jax:bfloat16,torch:bfloat16,jax,jax-xla,torch --repeats 9 --steps 1 \
  --json $OUT/final_r50.json > $OUT/final_r50.txt 2> /tmp/amx5.err
