#!/bin/bash
# bfloat16 on AMX tiles against the tree before them (9e6813c, checked out at $BEFORE: its
# bfloat16 convolutions are vdpbf16ps only, and `auto` computed float32 on Intel, hence
# `-kernels`), PyTorch's bfloat16 autocast and float32; 2-core Intel Xeon with AMX, one run
# at a time.
set -x
cd "$(dirname "$0")/../.."  # the repository root
OUT=results/cpu_2026-12-07_amx
BEFORE=${BEFORE:?set BEFORE to a checkout of 9e6813c}
grep -o -w -E 'avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u > $OUT/cpu_flags.txt
python benchmarks/conv_kernels.py --repeats 51 > $OUT/conv_kernels.txt 2> /tmp/amx0.err
python benchmarks/cpu_vs_torch.py --case experiments/cifar10.py:resnet20@128 \
  --case experiments/cifar10.py:resnet56@128 \
  --contenders jax-kernels@$BEFORE:bfloat16,jax:bfloat16,torch:bfloat16,jax,torch \
  --repeats 7 --steps 2 --json $OUT/cifar.json > $OUT/cifar.txt 2> /tmp/amx1.err
python benchmarks/cpu_vs_torch.py --case experiments/r50.py@32 \
  --contenders jax-kernels@$BEFORE:bfloat16,jax:bfloat16,torch:bfloat16,jax,jax-xla,torch \
  --repeats 5 --steps 1 --json $OUT/r50.json > $OUT/r50.txt 2> /tmp/amx2.err
# Accuracy: ResNet-20, short schedule, bfloat16 on AMX, seeds 0 and 1 (run from a checkout of
# 06b832c; the workdirs' config, metrics and final evaluation are in accuracy/).
for seed in 0 1; do
  python -m resnet_jax.main --config experiments/cifar10.py:resnet20,short \
    --workdir workdirs/bf16_$seed --config.data_dir=../shared/data/cifar10-jpeg \
    --config.dtype=bfloat16 --config.seed=$seed > workdirs/bf16_$seed.log 2>&1
done
