#!/bin/bash
# The bfloat16 weight-gradient change (8822fab) side by side with the tree before it (6a97f79,
# checked out at $BEFORE), against PyTorch; one run at a time on a quiet machine.
set -x
cd "$(dirname "$0")/../.."  # the repository root
OUT=results/cpu_2026-12-07
BEFORE=${BEFORE:-/tmp/oldk}
python benchmarks/cpu_vs_torch.py --case experiments/cifar10.py:resnet20@128 \
  --case experiments/cifar10.py:resnet56@128 \
  --contenders jax@$BEFORE:bfloat16,jax:bfloat16,torch:bfloat16,jax,torch \
  --repeats 7 --steps 2 --json $OUT/cifar.json > $OUT/cifar.txt 2> /tmp/m1.err
python benchmarks/cpu_vs_torch.py --case experiments/r50.py@32 \
  --contenders jax@$BEFORE:bfloat16,jax:bfloat16,torch:bfloat16,jax,torch --repeats 3 --steps 1 \
  --json $OUT/r50.json > $OUT/r50.txt 2> /tmp/m2.err
