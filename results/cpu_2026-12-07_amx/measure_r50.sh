#!/bin/bash
# ResNet-50 b32 after the kernel repacking and in-place 1x1 changes, against the tree before
# them (06b832c at $BEFORE) and PyTorch, bfloat16 and float32; more windows than measure.sh.
set -x
cd "$(dirname "$0")/../.."
OUT=results/cpu_2026-12-07_amx
BEFORE=${BEFORE:?set BEFORE to a checkout of 06b832c}
python benchmarks/cpu_vs_torch.py --case experiments/r50.py@32 \
  --contenders jax@$BEFORE:bfloat16,jax:bfloat16,torch:bfloat16,jax,torch --repeats 9 --steps 1 \
  --json $OUT/r50_after.json > $OUT/r50_after.txt 2> /tmp/amx3.err
