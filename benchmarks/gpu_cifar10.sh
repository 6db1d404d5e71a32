#!/usr/bin/env bash
# On one GPU: the paper's full CIFAR-10 ResNet-20 recipe (64k steps, in-memory input
# path, no TensorFlow needed), then ResNet-50 training throughput on synthetic 224px data.
#
#   OUTPUT=results/gpu DATA_DIR=path/to/cifar10-jpeg benchmarks/gpu_cifar10.sh
#
# DATA_DIR may instead come as data/cifar10-jpeg.tar.gz (unpacked to /tmp). SMALL=1
# shrinks every run to a few steps, to check the script on a CPU.
set -uo pipefail
out=${OUTPUT:-results/gpu}
mkdir -p "$out"
if [[ -z "${DATA_DIR:-}" ]]; then
  mkdir -p /tmp/resnet_jax_data
  tar -xzf data/cifar10-jpeg.tar.gz -C /tmp/resnet_jax_data
  DATA_DIR=/tmp/resnet_jax_data/cifar10-jpeg
fi
if [[ "${SMALL:-0}" == 1 ]]; then
  cifar=(--config.total_steps=6 --config.log_every_steps=3 --config.eval_every_steps=3
         --config.checkpoint_every_steps=3 --config.model.name=cifar_resnet8)
  r50=(--config.total_steps=4 --config.batch_size=8 --config.eval_batch_size=8
       --config.image_size=64 --config.synthetic.num_train_examples=32
       --config.synthetic.num_eval_examples=16 --config.log_every_steps=2)
else
  cifar=()
  r50=(--config.total_steps=100 --config.log_every_steps=20 --config.dtype=bfloat16
       --config.synthetic.num_train_examples=2560 --config.checkpoint_every_steps=1000)
fi
(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true) | tee "$out/device.txt"
python3 -c 'import jax, flax, optax, orbax.checkpoint as o; print("jax", jax.__version__,
  "flax", flax.__version__, "optax", optax.__version__, jax.devices())' | tee -a "$out/device.txt"

echo "== CIFAR-10 ResNet-20, the paper's recipe =="
time timeout "${CIFAR_TIMEOUT:-420}" python3 -m resnet_jax.main \
  --config experiments/cifar10.py:resnet20 --workdir /tmp/resnet_jax_runs/cifar10_resnet20 \
  --config.data_dir="$DATA_DIR" "${cifar[@]}" 2>&1 | grep -v '^W' | tee "$out/cifar10_resnet20.log"
cp /tmp/resnet_jax_runs/cifar10_resnet20/metrics.jsonl "$out/cifar10_resnet20_metrics.jsonl"

echo "== ResNet-50 training throughput, synthetic 224px, bfloat16, batch 256 =="
time timeout "${R50_TIMEOUT:-150}" python3 -m resnet_jax.main \
  --config experiments/r50.py --workdir /tmp/resnet_jax_runs/r50_synthetic \
  --config.dataset=synthetic "${r50[@]}" 2>&1 | grep -v '^W' | tee "$out/r50_synthetic.log"
