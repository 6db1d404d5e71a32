#!/bin/bash
# All timing of this session, run on a quiet machine, one after the other.
set -x
cd "$(dirname "$0")/../../.."  # the repository root
OUT=results/cpu_2026-12-02
grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u > $OUT/bfloat16/cpu_flags.txt
grep -m1 -E 'model name|vendor_id' /proc/cpuinfo >> $OUT/bfloat16/cpu_flags.txt
python benchmarks/cpu_vs_torch.py --case experiments/cifar10.py:resnet20@128 \
  --case experiments/cifar10.py:resnet56@128 --contenders jax,jax:bfloat16,torch,torch:bfloat16 \
  --repeats 5 --steps 2 --json $OUT/bfloat16/cifar.json > $OUT/bfloat16/cifar.txt 2> /tmp/m1.err
python benchmarks/accumulation_cost.py --config experiments/cifar10.py:resnet20 \
  --micro-batch 512 --accum 4 --repeats 5 > $OUT/large_batch/accumulation_cost.txt 2> /tmp/m2.err
python benchmarks/cpu_vs_torch.py --case experiments/r50.py@32 \
  --contenders jax,jax:bfloat16,jax-xla,torch,torch:bfloat16 --repeats 3 --steps 1 \
  --json $OUT/bfloat16/r50.json > $OUT/bfloat16/r50.txt 2> /tmp/m3.err
echo done
